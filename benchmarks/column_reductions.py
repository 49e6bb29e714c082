"""Benchmark: reductions that are not over the last axis, on the local GPU, against mx.compile and
MLX's copy: NHWC batch-norm statistics (mean and variance over axes 0, 1, 2), softmax over axis 0,
and softmax of a transposed input.

Variants: ``mlxtriton.optimize(fn)``; ``mlxtriton.kernel(fn)`` (one kernel, never split; a refusal
is recorded as its reason); ``mx.compile(fn)``; eager MLX. ``copy`` is MLX's ``x + 0`` over the
case's input (read + write), the bandwidth MLX itself reaches; ``of_copy`` is a variant's GB/s
over it and ``vs_compile`` mx.compile's time over the variant's.

Method: pipelined timing (benchmarks/harness.py `time_mlx`): 50 queued calls per run, one
synchronise, median of 5 runs. Effective bandwidth = bytes of the inputs and outputs / time
(each read or written once). Each variant's error is its largest difference from the function
in float64 on the CPU, over the largest magnitude of the result.
Run: python benchmarks/column_reductions.py --out benchmarks/results/column_reductions_<device>.json
"""

from __future__ import annotations

import json
import os
import sys

import mlx.core as mx
import numpy as np

sys.path.insert(0, os.path.dirname(__file__))
from harness import COLUMN_CASES, results_file, time_mlx  # noqa: E402

import mlxtriton  # noqa: E402


CASES = {name: case[:3] for name, case in COLUMN_CASES.items()}


def _flat(out):
    return out if isinstance(out, (tuple, list)) else (out,)


def main() -> None:
    result, save = results_file("column_reductions", __doc__)
    for name, (fn, shape, dtype) in CASES.items():
        x = mx.random.normal(shape).astype(dtype)
        mx.eval(x)
        with mx.stream(mx.cpu):  # float64 exists on the CPU only
            want = [np.array(o) for o in _flat(fn(x.astype(mx.float64)))]
        nbytes = x.nbytes + sum(o.nbytes for o in _flat(fn(x)))
        t_copy = time_mlx(lambda a: a + 0, [x])
        copy_gbps = 2 * x.nbytes / t_copy / 1e9
        row = {"case": name, "dtype": str(dtype).split(".")[-1], "bytes": nbytes,
               "copy": {"us": round(1e6 * t_copy, 1), "GB/s": round(copy_gbps, 1)}}
        opt = mlxtriton.optimize(fn)
        row["kernels"] = len(opt.lower(x))
        variants = {"mlxtriton": opt, "@kernel": mlxtriton.kernel(fn), "mx.compile": mx.compile(fn),
                    "eager": fn}
        times = {}
        for vname, f in variants.items():
            try:
                got = [np.array(o.astype(mx.float32)).astype(np.float64) for o in _flat(f(x))]
            except Exception as e:  # @kernel refuses what it cannot make one kernel of
                row[vname] = {"refused": f"{type(e).__name__}: {e}"}
                continue
            err = max(float(np.max(np.abs(g - w)) / max(float(np.max(np.abs(w))), 1e-30))
                      for g, w in zip(got, want))
            times[vname] = t = time_mlx(f, [x])
            gbps = nbytes / t / 1e9
            row[vname] = {"us": round(1e6 * t, 1), "GB/s": round(gbps, 1),
                          "of_copy": round(gbps / copy_gbps, 3), "max_err": err}
        for vname, t in times.items():
            row[vname]["vs_compile"] = round(times["mx.compile"] / t, 2)
        print(json.dumps(row), flush=True)
        result["rows"].append(row)
        save()


if __name__ == "__main__":
    main()
