"""Benchmark: where splitting a reduction over few rows starts to pay (`fusion/split.py`'s
MIN_SPLIT_BYTES and MIN_ARG_SPLIT_BYTES): one row of n float32 elements, split in two levels (the
thresholds forced to 0)
against one threadgroup (`@mlxtriton.kernel`, which never splits) and `mx.compile`, for a sum of
squares and an argmax.

Method: pipelined timing (benchmarks/row_kernels.py `time_mlx`, 200 calls per run, median of 5
runs); microseconds per call.
Run: python benchmarks/split_threshold.py --out benchmarks/results/split_threshold_<device>.json
"""

from __future__ import annotations

import json
import os
import sys

import mlx.core as mx

sys.path.insert(0, os.path.dirname(__file__))
from row_kernels import results_file, time_mlx  # noqa: E402

import mlxtriton  # noqa: E402
from mlxtriton.fusion import split  # noqa: E402


def main() -> None:
    result, save = results_file("split_threshold", __doc__)
    fns = {"sum of squares": lambda x: mx.sum(x * x), "argmax": lambda x: mx.argmax(x)}
    for n in (1 << 14, 1 << 15, 1 << 16, 1 << 17, 1 << 18, 1 << 19, 1 << 20):
        x = mx.random.normal((n,))
        mx.eval(x)
        for name, fn in fns.items():
            saved = split.MIN_SPLIT_BYTES, split.MIN_ARG_SPLIT_BYTES
            split.MIN_SPLIT_BYTES = split.MIN_ARG_SPLIT_BYTES = 0
            try:
                f = mlxtriton.optimize(fn)
                row = {"case": name, "elements": n, "bytes": x.nbytes,
                       "kernels": len(f.lower(x)),
                       "split_us": round(1e6 * time_mlx(f, (x,), reps=200), 2)}
            finally:
                split.MIN_SPLIT_BYTES, split.MIN_ARG_SPLIT_BYTES = saved
            row["one_threadgroup_us"] = round(1e6 * time_mlx(mlxtriton.kernel(fn), (x,), reps=200), 2)
            row["mx.compile_us"] = round(1e6 * time_mlx(mx.compile(fn), (x,), reps=200), 2)
            print(json.dumps(row), flush=True)
            result["rows"].append(row)
            save()


if __name__ == "__main__":
    main()
