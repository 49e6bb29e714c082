"""Benchmark: reductions over too few rows for the chip (a loss's mean, a gradient norm, per-row
statistics of a few long rows): mlxtriton's two-level split against the one-threadgroup-per-row
kernel (`@mlxtriton.kernel`, which never splits), `mx.compile` and eager MLX, on the local device.

Method: pipelined timing (benchmarks/row_kernels.py `time_mlx`): 50 queued calls per run, one
synchronise, median of 5 runs. Effective bandwidth = bytes of the inputs and outputs / time
(every case reads its inputs once; softmax also writes a row-sized output). Each variant's error is measured against the same
function in float64 on the CPU.
Run: python benchmarks/long_reductions.py --out benchmarks/results/long_reductions_<device>.json
"""

from __future__ import annotations

import json
import os
import sys

import mlx.core as mx
import numpy as np

sys.path.insert(0, os.path.dirname(__file__))
from harness import results_file, time_mlx  # noqa: E402

import mlxtriton  # noqa: E402

N = 1 << 24  # 64 MB of float32


def cases(dtype):
    a = mx.random.normal((N,)).astype(dtype)
    b = mx.random.normal((N,)).astype(dtype)
    mx.eval(a, b)
    return {
        "grad norm sqrt(sum(x*x)), 1 x 16M": (lambda x: mx.sqrt(mx.sum(x * x)), (a,), True),
        "mse mean((x-y)^2), 1 x 16M": (lambda x, y: mx.mean((x - y) ** 2), (a, b), True),
        "max, 1 x 16M": (lambda x: mx.max(x), (a,), True),
        "argmax, 1 x 16M": (lambda x: mx.argmax(x), (a,), True),
        "row sum, 8 x 2M": (lambda x: mx.sum(x.reshape(8, -1), axis=-1), (a,), True),
        "row variance, 32 x 512K": (lambda x: mx.var(x.reshape(32, -1), axis=-1), (a,), True),
        "row logsumexp, 8 x 2M": (lambda x: mx.logsumexp(x.reshape(8, -1), axis=-1), (a,), True),
        "row softmax, 8 x 2M": (lambda x: mx.softmax(x.reshape(8, -1), axis=-1), (a,), True),
    }


def main() -> None:
    result, save = results_file("long_reductions", __doc__)
    for dtype in (mx.float32, mx.bfloat16):
        for name, (fn, args, one_kernel) in cases(dtype).items():
            nbytes = sum(x.nbytes for x in args) + fn(*args).nbytes
            with mx.stream(mx.cpu):  # float64 exists on the CPU only
                want = np.array(fn(*(x.astype(mx.float64) for x in args)))
            variants = {"mlxtriton": mlxtriton.optimize(fn), "mx.compile": mx.compile(fn), "eager": fn}
            if one_kernel:
                variants["one threadgroup per row (@kernel)"] = mlxtriton.kernel(fn)
            row = {"case": name, "dtype": str(dtype).split(".")[-1], "bytes": nbytes,
                   "kernels": len(variants["mlxtriton"].lower(*args))}
            for vname, f in variants.items():
                got = np.array(f(*args).astype(mx.float32)).astype(np.float64)
                err = float(np.max(np.abs(got - want) / (np.abs(want) + 1e-6)))
                t = time_mlx(f, args)
                row[vname] = {"us": round(1e6 * t, 1), "GB/s": round(nbytes / t / 1e9, 1),
                              "max_rel_err_vs_float64": err}
            print(json.dumps(row), flush=True)
            result["rows"].append(row)
            save()


if __name__ == "__main__":
    main()
