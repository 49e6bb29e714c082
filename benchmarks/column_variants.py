"""Benchmark: schedules of a generated column reduction on a GPU (CUDA), against MLX.

A weight or bias gradient sums over the rows: ``dw = sum(g * x * rstd[:, None], axis=0)``. The
generated kernel walks each column with neighbouring threads on neighbouring columns; this sweep
measures how many threads should share a column (T, combined through threadgroup memory) and how
many neighbouring columns a threadgroup takes (G), so that the rule in codegen/builder.py
(``_column_threads``) follows figures rather than guesses. Rows:
  variant "T{T}xG{G}"   the kernel of ``mlxtriton.optimize(fn)`` under that schedule
                         (``with_schedule``); maxerr: largest difference from ``fn`` of the
                         arguments in float32, over the largest magnitude (the first recorded
                         run compared bfloat16 with MLX's own bfloat16 sums instead: 1-4%);
  variant "chosen"      the schedule mlxtriton picks;
  variant "mx.compile"  ``mx.compile(fn)``: MLX's own column reduction.
Functions: ``sum`` (x.sum(0)) and ``weight_grad`` (the expression above).

Method: benchmarks/row_kernels.py's pipelined timing (median of 5 runs of 50 calls); bandwidth
counts each input read once and the output written once.

Run: python benchmarks/column_variants.py --out results.json [--shapes 32768x4096,...]
[--chosen-only]
"""

from __future__ import annotations

import argparse
import os
import sys

import mlx.core as mx

import mlxtriton
from mlxtriton.codegen.builder import with_schedule
from mlxtriton.codegen.render import render
from mlxtriton.runtime.launch import launcher

sys.path.insert(0, os.path.dirname(__file__))
from row_kernels import results_file, time_mlx  # noqa: E402


def column_sum(x):
    return x.sum(axis=0)


def weight_grad(g, x, r):
    return (g * x * r[:, None]).sum(axis=0)


FUNCTIONS = {"sum": (column_sum, 1), "weight_grad": (weight_grad, 2)}


def arguments(name, rows, cols, dtype):
    fn, n = FUNCTIONS[name]
    args = [mx.random.normal((rows, cols)).astype(dtype) for _ in range(n)]
    if name == "weight_grad":
        args.append(mx.random.uniform(0.5, 2.0, (rows,)).astype(mx.float32))
    mx.eval(args)
    return fn, args


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--out", required=True)
    ap.add_argument("--shapes", default="32768x4096,8192x4096,4096x1024,65536x512")
    ap.add_argument("--dtypes", default="float32,bfloat16")
    ap.add_argument("--functions", default="sum,weight_grad")
    ap.add_argument("--chosen-only", action="store_true", help="no schedule sweep")
    a = ap.parse_args()
    result, save = results_file("column_variants", __doc__, a.out)
    for name in a.functions.split(","):
        for dname in a.dtypes.split(","):
            dtype = getattr(mx, dname)
            for shape in a.shapes.split(","):
                rows, cols = map(int, shape.split("x"))
                fn, args = arguments(name, rows, cols, dtype)
                want = fn(*[x.astype(mx.float32) for x in args])
                mx.eval(want)
                nbytes = sum(x.nbytes for x in args) + want.size * args[0].itemsize
                scale = max(1.0, mx.abs(want.astype(mx.float32)).max().item())
                (lowered,) = mlxtriton.optimize(fn).trace(*args).lower("cuda")
                base = lowered.kernel
                s = base.arg
                variants = [("chosen", base)]
                for G in () if a.chosen_only else (8, 16, 32):
                    for T in (1, 2, 4, 8, 16, 32, 64, 128):
                        if T * G > 1024 or T > s.row_length:
                            continue
                        variants.append((f"T{T}xG{G}", with_schedule(
                            base, threads_per_row=T, rows_per_group=G, threadgroup_size=T * G,
                            chunks=-(-s.row_length // T), interleaved=T > 1)))
                row0 = {"function": name, "dtype": dname, "shape": [rows, cols]}
                t = time_mlx(mx.compile(fn), args)
                result["rows"].append({**row0, "variant": "mx.compile", "us": t * 1e6,
                                       "gbs": nbytes / t / 1e9})
                save()
                print(result["rows"][-1], flush=True)
                for vname, kernel in variants:
                    row = {**row0, "variant": vname,
                           "schedule": kernel.arg.describe()}
                    try:
                        run = launcher(render(kernel, "cuda"))
                        got = run(*args)[0]
                        err = (mx.abs(got.astype(mx.float32) - want.astype(mx.float32)).max().item()
                               / scale)
                        t = time_mlx(lambda *xs: run(*xs)[0], args)
                        row.update(us=t * 1e6, gbs=nbytes / t / 1e9, maxerr=err)
                    except Exception as e:  # a schedule the device refuses is a result too
                        row["error"] = f"{type(e).__name__}: {e}"[:300]
                    result["rows"].append(row)
                    save()
                    print(row, flush=True)


if __name__ == "__main__":
    main()
