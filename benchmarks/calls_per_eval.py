"""Benchmark: the same fused calls through MLX, one per evaluation and several per evaluation.

benchmarks/row_kernels.py queues one call per ``mx.async_eval`` (the issue's method). Where a
kernel takes ~20 us (64 MB of bfloat16 rows), what MLX does per evaluation weighs on the figure:
mlxtriton's bfloat16 cross-entropy kernel timed alone, launches queued back to back in
PyTorch, moves 3309-3555 GB/s over rows of 512-2048 (`ce_rows_h200_pipelined.json`),
against 2645-2847 through MLX one call per evaluation.

Method: each variant timed both ways in one run: one call per evaluation (row_kernels.py's
pipelined timing, 50 queued), and ``K`` calls on ``K`` different inputs evaluated together (one
``mx.async_eval`` of all outputs, 20 such rounds queued, synchronised once); median of 5 runs.
GB/s counts every call's bytes. MLX's own ``x + 0`` copy is timed the same two ways; for
softmax the Triton tutorial kernel on the same shape (``triton.testing.do_bench``, and its
launches queued back to back in PyTorch: kernel_only.py's `pipelined_torch`).

Run on the H200: python benchmarks/calls_per_eval.py --out results.json [--calls 8]
"""

from __future__ import annotations

import argparse
import os
import sys

import mlx.core as mx

sys.path.insert(0, os.path.dirname(__file__))
from harness import families, make_args, nbytes, queued, results_file, triton_softmax_gbs  # noqa: E402

import mlxtriton  # noqa: E402


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--out", default="calls_per_eval.json")
    ap.add_argument("--calls", type=int, default=8)
    ap.add_argument("--families", default="softmax,log_softmax,layer_norm,rms_norm,rms_norm_gate,cross_entropy")
    ap.add_argument("--dtypes", default="float32,bfloat16")
    ap.add_argument("--shapes", default="65536x512,32768x1024,16384x2048,32768x4096,8192x8192,4096x16384")
    opts = ap.parse_args()
    result, save = results_file("calls_per_eval", __doc__, opts.out)
    for dtype_name in opts.dtypes.split(","):
        dtype = getattr(mx, dtype_name)
        for name in opts.families.split(","):
            composed, _native, spec = families(dtype)[name]
            opt, compiled = mlxtriton.optimize(composed), mx.compile(composed)
            for shape in opts.shapes.split(","):
                rows, cols = (int(n) for n in shape.split("x"))
                sets = [make_args(spec, rows, cols, dtype) for _ in range(opts.calls)]
                moved = nbytes(sets[0], opt(*sets[0]))
                row = {"family": name, "dtype": dtype_name, "rows": rows, "cols": cols, "bytes": moved,
                       "calls_per_eval": opts.calls}
                copy = lambda x, *_: x + 0  # noqa: E731
                for vname, fn, size in (("mlxtriton", opt, moved), ("mx.compile", compiled, moved),
                                        ("copy", copy, 2 * sets[0][0].nbytes)):
                    row[f"{vname}_1_gbs"] = size / queued(fn, sets[:1], 1)[0] / 1e9
                    row[f"{vname}_{opts.calls}_gbs"] = size / queued(fn, sets, len(sets), reps=20)[0] / 1e9
                if name == "softmax":
                    from kernel_only import pipelined_torch  # needs PyTorch and Triton on the device
                    row["triton_gbs"] = triton_softmax_gbs(rows, cols, dtype_name)
                    row["triton_pipelined_gbs"] = triton_softmax_gbs(rows, cols, dtype_name, timer=pipelined_torch)
                result["rows"].append(row)
                save()
                print(f"{name:14s} {dtype_name:8s} {shape:11s} " + "  ".join(
                    f"{k[:-4]} {v:.0f}" for k, v in row.items() if k.endswith("_gbs") and v), flush=True)
                del sets
    print("wrote", opts.out)


if __name__ == "__main__":
    main()
