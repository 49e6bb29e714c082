"""Benchmark: mlxtriton's generated CUDA kernels timed alone, the way Triton times its own, next to
the Triton tutorial softmax and a PyTorch copy, on the same GPU in one run.

benchmarks/row_kernels.py times whole MLX calls pipelined; its Triton figure comes from
``triton.testing.do_bench`` (CUDA events around each launch, the L2 flushed between launches),
and MLX's own copy (`x + 0`) reaches ~9% less bandwidth than PyTorch's clone on the H200
(shared/device/README.md). This benchmark separates the kernel from the framework: it compiles
the exact source mlxtriton renders (``optimize(fn).trace(...).lower("cuda")``, wrapped the way
``mx.fast.cuda_kernel`` wraps it, minus MLX's utility include, which generated code never uses)
with NVRTC, launches it through the CUDA driver API on PyTorch tensors, checks its outputs
against ``mlxtriton.optimize(fn)`` run by MLX on the same data, and times it with the same
``do_bench`` as Triton. Other schedules of the same kernel: benchmarks/sweep.py.
The Triton kernel is also timed pipelined in PyTorch (launches queued back to back, one
synchronize), the method row_kernels.py uses for MLX.

Run on the H200: python benchmarks/kernel_only.py --out results.json [--families softmax,...]
[--dtypes float32,...] [--shapes 32768x4096,...]
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import sys

import mlx.core as mx
import numpy as np

import mlxtriton

sys.path.insert(0, os.path.dirname(__file__))
from harness import (Driver, family_arguments, family_cases, generated_kernel, pipelined_torch,  # noqa: E402
                     summary, to_torch, triton_softmax_gbs)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--out", default="kernel_only.json")
    family_arguments(ap, shapes="32768x4096,4096x16384")
    opts = ap.parse_args()
    import torch
    import triton

    drv = Driver()
    rows_out = []
    result = {"benchmark": "kernel_only", "date": datetime.date.today().isoformat(),
              "device": torch.cuda.get_device_name(), "mlx_version": mx.__version__,
              "torch": torch.__version__, "triton": triton.__version__,
              "method": "triton.testing.do_bench (CUDA events, L2 flushed between launches) for every "
                        "kernel; triton_pipelined: launches queued back to back in PyTorch, one synchronize",
              "rows": rows_out}

    def save():
        with open(opts.out, "w") as fh:
            json.dump(result, fh, indent=1)

    for dtype_name, name, composed, _native, rows, cols, args in family_cases(opts, []):
        want = mlxtriton.optimize(composed)(*args)
        want = [want] if isinstance(want, mx.array) else list(want)
        mx.eval(want)
        torch.cuda.synchronize()  # a fault in MLX's own launch surfaces here, not in a variant
        row = {"family": name, "dtype": dtype_name, "rows": rows, "cols": cols}
        try:
            variants = [("mlxtriton", *generated_kernel(composed, args))]
        except Exception as err:  # noqa: BLE001
            row["error"] = f"{type(err).__name__}: {err}"[:300]
            rows_out.append(row)
            save()
            continue
        moved = sum(a.nbytes for a in args) + sum(w.nbytes for w in want)
        row["bytes"] = moved
        for label, k, extra in variants:
            try:
                launch, outs, _, _ = drv.bind(k, [to_torch(a) for a in (*args, *extra)])
                err = max(float(np.max(np.abs(o.float().cpu().numpy().reshape(w.shape)
                                              - np.array(w.astype(mx.float32)))))
                          for o, w in zip(outs, want))
                ms = triton.testing.do_bench(launch, warmup=25, rep=100)
                row[f"{label}_gbs"] = moved / (ms * 1e-3) / 1e9
                row[f"{label}_maxerr"] = err
                row[f"{label}_threads"] = k.threadgroup[0]
                row[f"{label}_schedule"] = k.kernel.arg.describe()
            except Exception as e:  # noqa: BLE001
                row[f"{label}_error"] = f"{type(e).__name__}: {e}"[:500]
                if "CUDA error" in str(e) or "illegal" in str(e):
                    # a fault poisons the CUDA context: every later call fails. Keep the record of
                    # which kernel faulted (its schedule and source) and stop.
                    row[f"{label}_schedule"] = k.kernel.arg.describe()
                    row[f"{label}_source"] = k.source
                    rows_out.append(row)
                    save()
                    sys.exit(f"{name} {dtype_name} {rows}x{cols} {label}: {row[f'{label}_error']}")
        x = torch.randn(rows, cols, device="cuda", dtype=getattr(torch, dtype_name))
        row["torch_clone_gbs"] = 2 * x.numel() * x.element_size() / (
            triton.testing.do_bench(lambda: x.clone(), warmup=25, rep=100) * 1e-3) / 1e9
        if name == "softmax":
            row["triton_gbs"] = triton_softmax_gbs(rows, cols, dtype_name)
            row["triton_pipelined_gbs"] = triton_softmax_gbs(rows, cols, dtype_name, timer=pipelined_torch)
        rows_out.append(row)
        save()
        print(summary(f"{name:14s} {dtype_name:8s} {rows}x{cols}", row), flush=True)
    print("wrote", opts.out)


if __name__ == "__main__":
    main()
