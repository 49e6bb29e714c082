"""Benchmark: how fast any kernel could make a fused call one call per evaluation through MLX.

The issue's 2.5x-over-``mx.compile`` target is timed one call per ``mx.async_eval``
(row_kernels.py). benchmarks/per_eval.py showed what one evaluation costs on MLX's
CUDA backend besides its kernels: each evaluation is one CUDA graph launched after a host
callback (``cudaLaunchHostFunc``) of the one before, and the GPU idles ~5 us between them, for
MLX's own copy as for our kernels. This benchmark bounds, per case, the best ratio to
``mx.compile`` any kernel could reach that way: the fastest kernel time measured for the bytes
the function must move, plus the idle gap MLX's own copy leaves between evaluations.

Method: per case, in one run: ``mx.compile`` of the composed function and ``mlxtriton.optimize``
of it timed one call per evaluation (row_kernels.py's pipelined method, median of 5 runs of 50);
a CUPTI timeline (per_eval.py's ``timeline``: 40 evaluations) of ``mlxtriton.optimize`` and of
MLX's ``x + 0`` on the same input, giving our kernel's GPU time and the median idle gap between
evaluations; PyTorch's fastest kernel moving the same bytes (a copy into a preallocated tensor
for functions writing whole rows, ``sum`` over the rows for cross-entropy, which only reads),
timed with ``triton.testing.do_bench`` and queued back to back, both scaled to the function's
bytes. Best kernel time = the least of these; bound = mx.compile's time / (best kernel time +
copy's gap).
Run: python benchmarks/eval_bound.py --out results.json [--families ...] [--dtypes ...] [--shapes ...]
"""

from __future__ import annotations

import argparse
import os
import sys

import mlx.core as mx

sys.path.insert(0, os.path.dirname(__file__))
from harness import (family_arguments, family_cases, nbytes, pipelined_torch, queued,  # noqa: E402
                     results_file, timeline)

import mlxtriton  # noqa: E402

SHAPES = [(65536, 512), (32768, 1024), (16384, 2048), (32768, 4096), (8192, 8192), (4096, 16384)]


def torch_kernel_us(family: str, rows: int, cols: int, dtype_name: str, moved: int) -> dict:
    """PyTorch's kernel for the same bytes, scaled to ``moved``: {method: microseconds}."""
    import torch
    import triton

    dtype = getattr(torch, dtype_name)
    x = torch.randn(rows, cols, device="cuda").to(dtype)
    if family == "cross_entropy":
        out = torch.empty(rows, device="cuda", dtype=dtype)
        launch = lambda: torch.sum(x, dim=-1, out=out)  # noqa: E731
        own = x.nbytes + out.nbytes
    else:
        out = torch.empty_like(x)
        launch = lambda: out.copy_(x)  # noqa: E731
        own = 2 * x.nbytes
    scale = moved / own
    return {"do_bench": 1e3 * triton.testing.do_bench(launch) * scale,
            "queued": 1e6 * pipelined_torch(launch) * scale}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", default="eval_bound.json")
    family_arguments(ap, families="log_softmax,rms_norm_gate,cross_entropy")
    opts = ap.parse_args()
    result, save = results_file("eval_bound", __doc__, opts.out)
    for dtype_name, name, composed, _native, rows, cols, args in family_cases(opts, SHAPES):
        opt, compiled = mlxtriton.optimize(composed), mx.compile(composed)
        moved = nbytes(args, opt(*args))
        compile_us = 1e6 * queued(compiled, [args], 1)[0]
        ours_us = 1e6 * queued(opt, [args], 1)[0]
        lines = timeline({"copy": lambda x, *_: x + 0, "mlxtriton": opt}, args, evaluations=40)
        torch_us = torch_kernel_us(name, rows, cols, dtype_name, moved)
        gap = lines["copy"]["gap_us_median"]
        best = min(lines["mlxtriton"]["kernel_us_median"], *torch_us.values())
        row = {"family": name, "dtype": dtype_name, "rows": rows, "cols": cols, "bytes": moved,
               "mx.compile_us": compile_us, "mlxtriton_us": ours_us,
               "speedup_vs_compile": compile_us / ours_us,
               "mlxtriton_kernel_us": lines["mlxtriton"]["kernel_us_median"],
               "mlxtriton_gap_us": lines["mlxtriton"]["gap_us_median"],
               "copy_gap_us": gap, "torch_kernel_us": torch_us, "best_kernel_us": best,
               "best_kernel_gbs": moved / best / 1e3,
               "bound_vs_compile": compile_us / (best + gap)}
        result["rows"].append(row)
        save()
        print(f"{dtype_name:8s} {name:13s} {rows}x{cols}: compile {compile_us:7.1f} us  ours "
              f"{ours_us:7.1f} ({row['speedup_vs_compile']:.2f}x)  kernel "
              f"{row['mlxtriton_kernel_us']:.1f} gap {row['mlxtriton_gap_us']:.1f}  copy gap "
              f"{gap:.1f}  torch {torch_us['do_bench']:.1f}/{torch_us['queued']:.1f}  bound "
              f"{row['bound_vs_compile']:.2f}x", flush=True)


if __name__ == "__main__":
    main()
