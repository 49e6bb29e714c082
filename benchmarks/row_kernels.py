"""Benchmark: fused row kernels and pointwise chains on a GPU, side by side in one run.

For each family (softmax, log-softmax, layer norm, RMS norm, RMS norm x SiLU gate, cross-entropy)
and dtype, over 32768 x 4096 and row lengths 512..16384, it times: MLX eager, ``mx.compile`` of the
same composed function, MLX's own op where one exists (mx.softmax, mx.fast.rms_norm,
mx.fast.layer_norm), ``mlxtriton.optimize``, and, for softmax, the Triton tutorial kernel through
PyTorch when Triton is installed; plus MLX's ``x + 0`` copy as the bandwidth ceiling MLX reaches.

Method: pipelined timing (shared/device/README.md): after 3 warm-ups, queue ``reps`` calls with
``mx.async_eval`` keeping the last two outputs alive, ``mx.synchronize()`` once, divide by
``reps``; the median of 5 such runs. Effective bandwidth = bytes the function must move (each
input read once, each output written once) / time.

Run: python benchmarks/row_kernels.py --out results.json [--quick] [--families softmax,...]
[--dtypes bfloat16,...] [--shapes 32768x4096,...] [--autotune]
"""

from __future__ import annotations

import argparse
import os
import sys

import mlx.core as mx

import mlxtriton

sys.path.insert(0, os.path.dirname(__file__))
from harness import (SUITE_SHAPES, family_arguments, family_cases, nbytes, results_file,  # noqa: E402
                     time_mlx, triton_softmax_gbs)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--out", default="row_kernels.json")
    ap.add_argument("--quick", action="store_true", help="fewer sizes (smoke run)")
    family_arguments(ap)
    ap.add_argument("--autotune", action="store_true",
                    help="also time mlxtriton.optimize(fn, autotune=True) (mlxtriton/autotuned)")
    opts = ap.parse_args()
    chosen = set(filter(None, opts.families.split(",")))
    shapes = SUITE_SHAPES[:1] if opts.quick else SUITE_SHAPES
    result, save = results_file("row_kernels", __doc__, opts.out)
    rows_out = result["rows"]

    for dtype_name, name, composed, native, rows, cols, args in family_cases(opts, shapes):
        opt = mlxtriton.optimize(composed)
        compiled = mx.compile(composed)
        out = opt(*args)
        moved = nbytes(args, out)
        row = {"family": name, "dtype": dtype_name, "rows": rows, "cols": cols, "bytes": moved}
        variants = {"eager": composed, "mx.compile": compiled, "mlxtriton": opt}
        if native is not None:
            variants["mlx_native"] = native
        if opts.autotune:  # its kernels are tuned on the first call, before the timing
            variants["mlxtriton/autotuned"] = tuned = mlxtriton.optimize(composed, autotune=True)
            mx.eval(tuned(*args))
        for vname, fn in variants.items():
            t = time_mlx(fn, args)
            row[vname + "_us"] = 1e6 * t
            row[vname + "_gbs"] = moved / t / 1e9
        if name == "softmax":
            row["triton_gbs"] = triton_softmax_gbs(rows, cols, dtype_name)
        x = args[0]
        t = time_mlx(lambda a: a + 0, (x,))
        row["copy_gbs"] = 2 * x.nbytes / t / 1e9
        row["speedup_vs_compile"] = row["mx.compile_us"] / row["mlxtriton_us"]
        rows_out.append(row)
        save()
        print(f"{name:14s} {dtype_name:8s} {rows:6d}x{cols:<6d} mlxtriton {row['mlxtriton_gbs']:7.0f} GB/s "
              f"compile {row['mx.compile_gbs']:7.0f} eager {row['eager_gbs']:7.0f} "
              + (f"native {row['mlx_native_gbs']:7.0f} " if native else "")
              + (f"triton {row['triton_gbs']:7.0f} " if row.get("triton_gbs") else "")
              + f"copy {row['copy_gbs']:7.0f}  x{row['speedup_vs_compile']:.2f} vs compile"
              + "".join(f"  {v[len('mlxtriton/'):-4]} {row[v]:.0f}" for v in row
                        if v.startswith("mlxtriton/") and v.endswith("_gbs")), flush=True)
        del args, out
    # pointwise chains: at least mx.compile's bandwidth
    for dtype_name in opts.dtypes.split(","):
        if chosen and "pointwise_chain" not in chosen:
            break
        dtype = getattr(mx, dtype_name)
        chain = lambda x, y: mx.maximum(mx.exp(x * 0.5) * y + 1.0, 0.0)  # noqa: E731
        x = mx.random.normal((8192, 8192)).astype(dtype)
        y = mx.random.normal((8192,)).astype(dtype)
        mx.eval(x, y)
        row = {"family": "pointwise_chain", "dtype": dtype_name, "rows": 8192, "cols": 8192}
        moved = x.nbytes * 2 + y.nbytes
        for vname, fn in {"eager": chain, "mx.compile": mx.compile(chain), "mlxtriton": mlxtriton.optimize(chain)}.items():
            t = time_mlx(fn, (x, y))
            row[vname + "_us"], row[vname + "_gbs"] = 1e6 * t, moved / t / 1e9
        rows_out.append(row)
        save()
        print(f"pointwise {dtype_name}: mlxtriton {row['mlxtriton_gbs']:.0f} GB/s, compile {row['mx.compile_gbs']:.0f}, eager {row['eager_gbs']:.0f}", flush=True)
    # small inputs: per-call cost against a native op
    small = mx.random.normal((8, 64))
    mx.eval(small)
    per_call = {}
    for vname, fn in {"mx.softmax": lambda x: mx.softmax(x, axis=-1),
                      "x*2": lambda x: x * 2,
                      "mlxtriton softmax": mlxtriton.optimize(lambda x: mx.softmax(x, axis=-1))}.items():
        per_call[vname] = 1e6 * time_mlx(fn, (small,), reps=500)
    print("per-call us:", {k: round(v, 1) for k, v in per_call.items()}, flush=True)
    result["small_input_per_call_us"] = per_call
    save()
    print("wrote", opts.out)


if __name__ == "__main__":
    main()
