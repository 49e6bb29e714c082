"""Benchmark: per-call cost of a tiny fused call against native MLX ops on the local device.

Method: pipelined timing (as benchmarks/row_kernels.py `time_mlx`): 1000 queued calls per run,
one synchronise; the variants' runs interleaved (run r of every variant, then run r + 1), so a
drift of the machine's speed during the benchmark falls on all of them alike; per variant the
median of ``--runs`` runs, and the median over runs of its ratio to ``mx.softmax`` in the same
round. Input 8 x 64 float32, so the figure is launch and host overhead. "host alone" times the
calls without evaluating anything: the Python and graph building each call costs the host.
Native MLX ops differ among themselves (``mx.softmax`` is among the cheapest: one primitive, no
scalar operand), so several are timed, and each variant's ratio to their median in the same round
is reported too.
``mx.compile`` of ``mx.softmax`` alone and wrapped in an ``mx.custom_function`` (with a VJP, as
mlxtriton wraps each launch so that grad works) show what that wrapper costs per call.
On a GPU, the generated softmax kernel is also launched by hand (`runtime.launch.launcher`, one
``mx.fast.*_kernel`` call) and under ``mx.compile``: what MLX's custom-kernel path itself costs,
which no code of ours adds to; then inside an ``mx.custom_function``, and with its input through
``mx.stop_gradient`` as well: what each piece mlxtriton adds around the launch costs when a
transformation traces the call. A call no transformation sees replays the bare
launch (runtime/compiled._tracing), so `mlxtriton.optimize(softmax)` sits with the bare launch
under ``mx.compile`` given the probe it passes (timed as such) plus our ``__call__``.
Run: python benchmarks/per_call.py --out benchmarks/results/per_call_<device>.json
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import time

import mlx.core as mx

sys.path.insert(0, os.path.dirname(__file__))
from harness import results_file, time_queued  # noqa: E402

import mlxtriton  # noqa: E402


def interleaved(variants: dict, args: tuple, reps: int, runs: int) -> dict[str, list[float]]:
    """Seconds per call of each variant in each of ``runs`` rounds; a round times ``reps``
    queued calls of every variant in turn."""
    for fn in variants.values():
        for _ in range(3):
            mx.eval(fn(*args))
    mx.synchronize()
    times: dict[str, list[float]] = {name: [] for name in variants}
    for _ in range(runs):
        for name, fn in variants.items():
            times[name].append(time_queued(fn, args, reps))
    return times


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", default="per_call.json")
    ap.add_argument("--reps", type=int, default=1000)
    ap.add_argument("--runs", type=int, default=15)
    ap.add_argument("--only", default="", help="comma-separated substrings: time only the variants "
                    "(besides the native ops) whose names hold one")
    opts = ap.parse_args()
    small = mx.random.normal((8, 64))
    mx.eval(small)
    natives = {
        "mx.softmax": lambda x: mx.softmax(x, axis=-1),
        "x * 2": lambda x: x * 2,
        "x + x": lambda x: x + x,
        "mx.exp": mx.exp,
        "mx.sum(axis=-1)": lambda x: mx.sum(x, axis=-1),
        "mx.logsumexp(axis=-1)": lambda x: mx.logsumexp(x, axis=-1),
        "mx.fast.rms_norm": lambda x: mx.fast.rms_norm(x, None, 1e-5),
        "mx.fast.layer_norm": lambda x: mx.fast.layer_norm(x, None, None, 1e-5),
    }
    variants = {
        **natives,
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
        # what mlxtriton adds inside the compiled function, one piece at a time: the
        # custom_function carrying the gradient, then the stop_gradient on each input that keeps
        # the kernel off mx.jvp's tape (runtime/autodiff.detached)
        carried = mx.custom_function(lambda x: raw(x)[0])
        carried.vjp(lambda primals, cotangent, output: (cotangent,))
        variants["mx.compile(custom_function(launch))"] = mx.compile(lambda x: carried(x))
        detached = mx.custom_function(lambda x: raw(mx.stop_gradient(x))[0])
        detached.vjp(lambda primals, cotangent, output: (cotangent,))
        variants["mx.compile(custom_function(launch of stop_gradient(x)))"] = mx.compile(
            lambda x: detached(x))
        # what optimize's dispatch passes besides the arrays: the probe (runtime/compiled._PROBE)
        from mlxtriton.runtime.compiled import _PROBE

        probed = mx.compile(lambda x, probe: raw(x)[0])
        variants["mx.compile(raw launch) with the probe"] = lambda x: probed(x, _PROBE)
    if opts.only:
        keep = opts.only.split(",")
        variants = {n: f for n, f in variants.items() if n in natives or any(k in n for k in keep)}
    rounds = interleaved(variants, (small,), reps=opts.reps, runs=opts.runs)
    # The host's share: the calls alone, nothing evaluated (the outputs are dropped unevaluated)
    host = {name: [] for name in variants}
    for _ in range(opts.runs):
        for name, fn in variants.items():
            t0 = time.perf_counter()
            for _ in range(opts.reps):
                fn(small)
            host[name].append((time.perf_counter() - t0) / opts.reps)
    per_call = {name: 1e6 * statistics.median(t) for name, t in rounds.items()}
    ratio = {name: statistics.median(a / b for a, b in zip(t, rounds["mx.softmax"]))
             for name, t in rounds.items()}
    native = [statistics.median(rounds[n][r] for n in natives) for r in range(opts.runs)]
    ratio_native = {name: statistics.median(a / b for a, b in zip(t, native))
                    for name, t in rounds.items()}
    for name in variants:
        print(f"{name:42s} {per_call[name]:6.2f} us  {ratio[name]:.3f}x mx.softmax  "
              f"{ratio_native[name]:.3f}x native median  host alone "
              f"{1e6 * statistics.median(host[name]):5.2f} us", flush=True)
    result, save = results_file("per_call", __doc__, opts.out)
    result["per_call_us"] = per_call
    result["ratio_to_mx_softmax"] = ratio
    result["native_ops"] = list(natives)
    result["native_median_us"] = 1e6 * statistics.median(native)
    result["ratio_to_native_median"] = ratio_native
    result["runs_us"] = {name: [1e6 * x for x in t] for name, t in rounds.items()}
    result["host_alone_us"] = {name: 1e6 * statistics.median(t) for name, t in host.items()}
    save()


if __name__ == "__main__":
    main()
