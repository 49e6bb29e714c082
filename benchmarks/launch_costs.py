"""Benchmark: the host's cost per launch on MLX's CUDA backend, inside one ``mx.compile``d function:
custom kernels by the length of their source, view operations between launches, a native op.

A decode step of a small model is paced by the host (benchmarks/generation.py: host time equals
step time), so what MLX's host side spends per node of the step's graph is what bounds it. MLX's
``CustomKernel::eval_gpu`` hashes the kernel's whole source on every launch to find its compiled
module (``mlx/backend/cuda/custom_kernel.cpp``: ``std::hash<std::string>{}(source_)``), so a
launch costs more the longer its source; each view (reshape, expand_dims) between two kernels is
a node MLX evaluates too.

Method: a function of ``N`` = 100 dependent launches of a pointwise kernel on 1024 float32 values
(``y = x * 1.0001 + 0.5``), under ``mx.compile`` and eagerly; variants: the kernel's source as
written, padded with 4,000 and 16,000 bytes of comment (same machine code), three views between
launches (reshape, expand_dims, reshape: no data moves), and a native op (a 32 x 32 matmul) in
place of the kernel. 20 calls queued with ``mx.async_eval``, synchronised once; median of 5 runs.
``host_us_per_launch``: the time spent queuing / (20 x N); ``us_per_launch`` the same with the
synchronise (the GPU work is a few microseconds per call: the host paces it).
Run (GPU with MLX's CUDA backend): python benchmarks/launch_costs.py --out results.json
"""

from __future__ import annotations

import json
import os
import sys
import time

import mlx.core as mx

sys.path.insert(0, os.path.dirname(__file__))
from harness import results_file  # noqa: E402

N = 100
SOURCE = """
    unsigned int i = threadIdx.x + blockIdx.x * blockDim.x;
    if (i < 1024) { out[i] = inp[i] * T(1.0001) + T(0.5); }
"""


def kernel(name: str, pad: int):
    source = SOURCE + ("\n// " + "x" * 76) * (pad // 80)
    return mx.fast.cuda_kernel(name=name, input_names=["inp"], output_names=["out"], source=source)


def launches(k, views: bool = False):
    def f(x):
        for _ in range(N):
            if views:
                x = mx.expand_dims(x.reshape(4, 256), 0).reshape(1024)
            x = k(inputs=[x], template=[("T", mx.float32)], output_shapes=[x.shape],
                  output_dtypes=[x.dtype], grid=(1024, 1, 1), threadgroup=(256, 1, 1))[0]
        return x
    return f


def matmuls(x, w):
    for _ in range(N):
        x = x @ w
    return x


def per_launch(f, args, reps: int = 20, runs: int = 5) -> dict:
    mx.eval(f(*args))
    mx.synchronize()
    host, total = [], []
    for _ in range(runs):
        t0 = time.perf_counter()
        for _ in range(reps):
            mx.async_eval(f(*args))
        t1 = time.perf_counter()
        mx.synchronize()
        t2 = time.perf_counter()
        host.append((t1 - t0) / reps / N * 1e6)
        total.append((t2 - t0) / reps / N * 1e6)
    return {"host_us_per_launch": round(sorted(host)[runs // 2], 2),
            "us_per_launch": round(sorted(total)[runs // 2], 2)}


def main() -> None:
    if not mx.cuda.is_available():
        sys.exit("benchmarks/launch_costs.py measures MLX's CUDA backend: it needs an NVIDIA GPU")
    result, save = results_file("launch_costs", __doc__)
    x = mx.random.normal((1024,))
    xm, w = mx.random.normal((32, 32)), mx.random.normal((32, 32)) * 0.1
    mx.eval(x, xm, w)
    variants = {}
    for pad in (0, 4000, 16000):
        k = kernel(f"launch_costs_{pad}", pad)
        variants[f"custom kernel, source + {pad} bytes, compiled"] = (mx.compile(launches(k)), [x])
        variants[f"custom kernel, source + {pad} bytes, eager"] = (launches(k), [x])
    variants["custom kernel and three views, compiled"] = (
        mx.compile(launches(kernel("launch_costs_views", 0), views=True)), [x])
    variants["matmul 32 x 32, compiled"] = (mx.compile(matmuls), [xm, w])
    variants["matmul 32 x 32, eager"] = (matmuls, [xm, w])
    for name, (f, args) in variants.items():
        row = {"variant": name, **per_launch(f, args)}
        print(json.dumps(row), flush=True)
        result["rows"].append(row)
        save()


if __name__ == "__main__":
    main()
