"""Benchmark (experiment): rows too long for registers, staged in threadgroup memory against
streamed from memory once per pass, for the row families, in one run.

Method: pipelined timing (benchmarks/row_kernels.py `time_mlx`); each variant a fresh
`mlxtriton.optimize` with `codegen.builder.STAGE_ROWS` on or off (the kernel name hashes the
source, so they are distinct kernels); effective bandwidth = input + output bytes / time.
Run: python benchmarks/staging.py --out benchmarks/results/staging_<device>.json
"""

from __future__ import annotations

import importlib
import json
import os
import sys

import mlx.core as mx

sys.path.insert(0, os.path.dirname(__file__))
from row_kernels import results_file, time_mlx  # noqa: E402

import mlxtriton  # noqa: E402

builder = importlib.import_module("mlxtriton.codegen.builder")


def main() -> None:
    result, save = results_file("staging", __doc__)
    fns = {
        "softmax": lambda x: mx.softmax(x, axis=-1),
        "log_softmax": lambda x: x - mx.logsumexp(x, axis=-1, keepdims=True),
        "layer_norm": lambda x: (x - mx.mean(x, -1, keepdims=True))
        * mx.rsqrt(mx.var(x, -1, keepdims=True) + 1e-5),
    }
    for dtype, shapes in ((mx.float32, ((2048, 32768), (1536, 40960))),
                          (mx.bfloat16, ((2048, 32768), (1024, 65536)))):
        for shape in shapes:
            x = mx.random.normal(shape).astype(dtype)
            mx.eval(x)
            for name, fn in fns.items():
                nbytes = 2 * x.nbytes
                row = {"family": name, "dtype": str(dtype).split(".")[-1], "shape": list(shape)}
                for staged in (False, True):
                    builder.STAGE_ROWS = staged
                    f = mlxtriton.optimize(fn)
                    row[f"{'staged' if staged else 'streamed'}_on_chip"] = f.lower(x)[0].kernel.arg.on_chip
                    row[f"{'staged' if staged else 'streamed'}_gbs"] = round(nbytes / time_mlx(f, (x,)) / 1e9, 1)
                builder.STAGE_ROWS = True
                print(json.dumps(row), flush=True)
                result["rows"].append(row)
                save()


if __name__ == "__main__":
    main()
