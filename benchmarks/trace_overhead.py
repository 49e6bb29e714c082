"""Benchmark: the cost of tracing and building the graph IR, against mx.export_function alone,
and printing cost against graph size (should be linear).

Run: .venv/bin/python benchmarks/trace_overhead.py [--out benchmarks/results/trace_overhead.json]
Method: a chain of N mixed primitives (elementwise, reductions with keepdims, broadcasts,
reshapes); each figure is the median of 7 runs after one warm-up, wall clock (perf_counter).
"""

from __future__ import annotations

import argparse
import datetime
import json
import platform
import statistics
import time

import mlx.core as mx

import mlxtriton


def chain(n_blocks: int):
    """About 10 primitives per block."""

    def f(x, w):
        for i in range(n_blocks):
            y = mx.exp(x * 0.5) + w
            s = mx.sum(y, axis=-1, keepdims=True)
            x = mx.maximum(y / s, 0.0).reshape(x.shape) - float(i)
        return x

    return f


def median_time(fn, repeats: int = 7) -> float:
    fn()
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return statistics.median(times)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--out", default="benchmarks/results/trace_overhead.json")
    args = ap.parse_args()
    x, w = mx.ones((4, 16)), mx.ones((4, 16))
    rows = []
    for n_blocks in (75, 150, 300, 600):
        f = chain(n_blocks)
        graph = mlxtriton.trace(f)(x, w)
        n = len(graph.eqns)
        export_s = median_time(lambda: mx.export_function(lambda _: None, f, x, w))
        trace_s = median_time(lambda: mlxtriton.trace(f)(x, w))
        print_s = median_time(lambda: str(graph))
        hash_s = median_time(lambda: mlxtriton.trace(f)(x, w).structural_hash)
        rows.append({
            "primitives": n, "export_ms": 1e3 * export_s, "trace_ms": 1e3 * trace_s,
            "trace_over_export": trace_s / export_s, "print_ms": 1e3 * print_s,
            "print_us_per_eqn": 1e6 * print_s / n, "trace_and_hash_ms": 1e3 * hash_s,
        })
        r = rows[-1]
        print(f"{n:5d} primitives: export {r['export_ms']:7.1f} ms, trace {r['trace_ms']:7.1f} ms "
              f"({r['trace_over_export']:.2f}x), print {r['print_ms']:6.1f} ms "
              f"({r['print_us_per_eqn']:.1f} us/eqn), trace+hash {r['trace_and_hash_ms']:7.1f} ms")
    result = {
        "benchmark": "trace_overhead",
        "date": datetime.date.today().isoformat(),
        "device": f"{platform.machine()} CPU, {platform.system()} ({mx.default_device()})",
        "mlx_version": mx.__version__,
        "method": __doc__.strip().splitlines()[-2:],
        "rows": rows,
    }
    with open(args.out, "w") as fh:
        json.dump(result, fh, indent=1)
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
