"""Benchmark: per-call cost of a tiny fused call against native MLX ops on the local device.

Method: pipelined timing (benchmarks/row_kernels.py `time_mlx`): 1000 queued calls per run, one
synchronise, median of 9 runs; input 8 x 64 float32, so the figure is launch and host overhead.
``mx.compile`` of ``mx.softmax`` alone and wrapped in an ``mx.custom_function`` (with a VJP, as
mlxtriton wraps each launch so that grad works) show what that wrapper costs per call.
On a GPU, the generated softmax kernel is also launched by hand (`runtime.launch.launcher`, one
``mx.fast.*_kernel`` call) and under ``mx.compile``: what MLX's custom-kernel path itself costs,
which no code of ours adds to.
Run: python benchmarks/per_call.py --out benchmarks/results/per_call_<device>.json
"""

from __future__ import annotations

import os
import sys

import mlx.core as mx

sys.path.insert(0, os.path.dirname(__file__))
from row_kernels import results_file, time_mlx  # noqa: E402

import mlxtriton  # noqa: E402


def main() -> None:
    small = mx.random.normal((8, 64))
    mx.eval(small)
    variants = {
        "mx.softmax": lambda x: mx.softmax(x, axis=-1),
        "x * 2": lambda x: x * 2,
        "mlxtriton.optimize(softmax)": mlxtriton.optimize(lambda x: mx.softmax(x, axis=-1)),
        "mlxtriton.kernel(softmax)": mlxtriton.kernel(lambda x: mx.softmax(x, axis=-1)),
    }
    softmax = lambda x: mx.softmax(x, axis=-1)  # noqa: E731
    wrapped = mx.custom_function(softmax)

    @wrapped.vjp
    def _(primals, cotangent, output):
        return (cotangent,)  # never called: the benchmark takes no gradient

    variants["mx.compile(mx.softmax)"] = mx.compile(softmax)
    variants["mx.compile(custom_function(mx.softmax))"] = mx.compile(lambda x: wrapped(x))
    if mx.default_device() == mx.gpu:
        from mlxtriton.runtime.launch import launcher

        (k,) = variants["mlxtriton.kernel(softmax)"].lower(small)
        raw = launcher(k)
        variants["raw custom kernel launch"] = lambda x: raw(x)[0]
        variants["mx.compile(raw custom kernel launch)"] = mx.compile(lambda x: raw(x)[0])
    per_call = {name: 1e6 * time_mlx(fn, (small,), reps=1000, runs=9) for name, fn in variants.items()}
    print({k: round(v, 1) for k, v in per_call.items()})
    result, save = results_file("per_call", __doc__)
    result["per_call_us"] = per_call
    save()


if __name__ == "__main__":
    main()
