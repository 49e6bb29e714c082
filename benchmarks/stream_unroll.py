"""Benchmark (experiment): streamed rows: how many chunks the thread loop unrolls, and whether an
online max-and-sum rescales per element (a branch) or once per vector.

Method: pipelined timing (benchmarks/row_kernels.py `time_mlx`), each unroll factor a fresh
`mlxtriton.optimize` (the kernel name hashes the source, so each factor is its own kernel), rows
too long for registers (streamed), float32 and bfloat16, beside `mx.compile` in the same run.
Run: python benchmarks/stream_unroll.py --out benchmarks/results/stream_unroll_<device>.json
"""

from __future__ import annotations

import importlib
import json
import os
import sys

import mlx.core as mx
import mlx.nn as nn

sys.path.insert(0, os.path.dirname(__file__))
from row_kernels import results_file, time_mlx  # noqa: E402

import mlxtriton  # noqa: E402
render = importlib.import_module("mlxtriton.codegen.render")  # the module (the package exports a function of that name)


def main() -> None:
    R, L = 1024, 65536
    labels = mx.random.randint(0, L, (R,)).astype(mx.int32)
    fns = {
        "cross_entropy": (lambda x, y: nn.losses.cross_entropy(x, y, reduction="none"), True),
        "softmax": (lambda x: mx.softmax(x, axis=-1), False),
        "logsumexp": (lambda x: mx.logsumexp(x, axis=-1), False),
        "rms_norm": (lambda x: x * mx.rsqrt(mx.mean(x * x, axis=-1, keepdims=True) + 1e-5), False),
    }
    result, save = results_file("stream_unroll", __doc__)
    for dtype in (mx.float32, mx.bfloat16):
        x = mx.random.normal((R, L)).astype(dtype)
        mx.eval(x, labels)
        for name, (fn, with_labels) in fns.items():
            args = (x, labels) if with_labels else (x,)
            out = fn(*args)
            nbytes = x.nbytes + out.nbytes
            row = {"family": name, "dtype": str(dtype).split(".")[-1], "shape": [R, L],
                   "mx.compile_gbs": round(nbytes / time_mlx(mx.compile(fn), args) / 1e9, 1)}
            for chunked in (False, True):
                for n in (1, 4):
                    render.STREAM_UNROLL, render.ONLINE_CHUNKED = n, chunked
                    f = mlxtriton.optimize(fn)
                    key = f"{'per_vector' if chunked else 'per_element'}_unroll{n}_gbs"
                    row[key] = round(nbytes / time_mlx(f, args) / 1e9, 1)
            render.STREAM_UNROLL, render.ONLINE_CHUNKED = 1, True
            print(json.dumps(row), flush=True)
            result["rows"].append(row)
            save()


if __name__ == "__main__":
    main()
