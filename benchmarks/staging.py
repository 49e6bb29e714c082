"""Benchmark (experiment): rows too long for registers, staged in threadgroup memory against
streamed from memory once per pass, for the row families, in one run.

Method: pipelined timing (benchmarks/row_kernels.py `time_mlx`); each variant a fresh
`mlxtriton.optimize` with `codegen.builder.STAGE_ROWS` on or off (the kernel name hashes the
source, so they are distinct kernels); effective bandwidth = input + output bytes / time.
Run: python benchmarks/staging.py --out benchmarks/results/staging_<device>.json
[STAGE_MIN_READS=2] [STAGE_SHAPES=float32:2048x24576,...]
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
    # STAGE_MIN_READS=2 also stages what streaming reads twice (a softmax): the experiment
    # behind builder._STAGE_MIN_READS
    default_reads = builder._STAGE_MIN_READS
    min_reads = int(os.environ.get("STAGE_MIN_READS", default_reads))
    result, save = results_file("staging", __doc__)
    result["stage_min_reads"] = min_reads
    fns = {
        "softmax": lambda x: mx.softmax(x, axis=-1),
        "log_softmax": lambda x: x - mx.logsumexp(x, axis=-1, keepdims=True),
        "layer_norm": lambda x: (x - mx.mean(x, -1, keepdims=True))
        * mx.rsqrt(mx.var(x, -1, keepdims=True) + 1e-5),
    }
    shapes_env = os.environ.get("STAGE_SHAPES")  # e.g. "float32:2048x24576,bfloat16:1024x65536"
    plan = ((mx.float32, ((2048, 32768), (1536, 40960))), (mx.bfloat16, ((2048, 32768), (1024, 65536))))
    if shapes_env:
        plan = tuple((getattr(mx, d), (tuple(int(n) for n in s.split("x")),))
                     for d, s in (item.split(":") for item in shapes_env.split(",")))
    for dtype, shapes in plan:
        for shape in shapes:
            x = mx.random.normal(shape).astype(dtype)
            mx.eval(x)
            for name, fn in fns.items():
                nbytes = 2 * x.nbytes
                row = {"family": name, "dtype": str(dtype).split(".")[-1], "shape": list(shape)}
                for staged in (False, True):
                    builder.STAGE_ROWS = staged
                    builder._STAGE_MIN_READS = min_reads if staged else default_reads
                    f = mlxtriton.optimize(fn)
                    row[f"{'staged' if staged else 'streamed'}_on_chip"] = f.lower(x)[0].kernel.arg.on_chip
                    row[f"{'staged' if staged else 'streamed'}_gbs"] = round(nbytes / time_mlx(f, (x,)) / 1e9, 1)
                builder.STAGE_ROWS = True
                builder._STAGE_MIN_READS = default_reads
                print(json.dumps(row), flush=True)
                result["rows"].append(row)
                save()


if __name__ == "__main__":
    main()
