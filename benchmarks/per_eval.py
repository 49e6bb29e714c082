"""Benchmark: what one call per evaluation costs beyond its kernel, piece by piece, with a timeline.

benchmarks/calls_per_eval.py found that mlxtriton's calls gain 1-83% from evaluating
eight calls at once where MLX's own copy gains -2..+14%: one call per evaluation costs our calls
several microseconds more than it costs MLX's copy. This benchmark takes that apart on a few
shapes whose kernels run ~20-40 us: MLX's ``x + 0`` copy and its native op, the generated kernel
launched by hand through ``mx.fast.cuda_kernel`` (no ``mx.compile``), the same under
``mx.compile``, with the probe ``optimize`` passes, and ``mlxtriton.optimize`` itself.

Method: each variant timed in one run, pipelined (row_kernels.py's method: 50 calls queued, one
``mx.async_eval`` each, one synchronize, median of 5): one call per evaluation on one input; one
call per evaluation cycling over 8 inputs (what the L2 keeps of a re-read input); 8 calls on 8
inputs per evaluation. "host" is the queueing loop's own time before the synchronize, per call.
Then a timeline: 40 queued evaluations per variant recorded through the CUDA profiling interface
(torch.profiler's CUPTI activity records every kernel and driver call of the process, MLX's
included): per variant the median GPU duration of its kernel, the median idle gap between
consecutive kernels, and the driver calls made per evaluation (count and median us).
Run: python benchmarks/per_eval.py --out results.json [--cases softmax:bfloat16:65536x512,...]
"""

from __future__ import annotations

import argparse
import os
import sys

import mlx.core as mx

sys.path.insert(0, os.path.dirname(__file__))
from harness import families, make_args, nbytes, queued, results_file, timeline  # noqa: E402

import mlxtriton  # noqa: E402
from mlxtriton.runtime.compiled import _PROBE  # noqa: E402
from mlxtriton.runtime.launch import interpreting, launcher  # noqa: E402


def variants_for(family: str, dtype, args: tuple) -> dict:
    composed, native, _spec = families(dtype)[family]
    kernel = mlxtriton.kernel(composed)
    (lowered,) = kernel.trace(*args).lower("cuda")
    raw = launcher(lowered)
    compiled_raw = mx.compile(lambda *a: raw(*a)[0])
    probed = mx.compile(lambda *a: raw(*a[:-1])[0])
    found = {
        "copy x + 0": lambda x, *_: x + 0,
        "launch by hand": lambda *a: raw(*a)[0],
        "mx.compile(launch)": compiled_raw,
        "mx.compile(launch) + probe": lambda *a: probed(*a, _PROBE),
        "mlxtriton.optimize": mlxtriton.optimize(composed),
        "mx.compile(composed)": mx.compile(composed),
    }
    if interpreting():  # the NumPy interpreter cannot run inside mx.compile (a dry run on CPU)
        del found["mx.compile(launch)"], found["mx.compile(launch) + probe"]
    if native is not None:
        found["native"] = native
    return found


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", default="per_eval.json")
    ap.add_argument("--cases", default="softmax:bfloat16:65536x512,cross_entropy:bfloat16:65536x512,"
                    "softmax:float32:32768x4096")
    ap.add_argument("--no-timeline", action="store_true")
    opts = ap.parse_args()
    result, save = results_file("per_eval", __doc__, opts.out)
    for case in opts.cases.split(","):
        family, dtype_name, shape = case.split(":")
        dtype = getattr(mx, dtype_name)
        rows, cols = (int(n) for n in shape.split("x"))
        spec = families(dtype)[family][2]
        sets = [make_args(spec, rows, cols, dtype) for _ in range(8)]
        variants = variants_for(family, dtype, sets[0])
        moved = nbytes(sets[0], variants["mlxtriton.optimize"](*sets[0]))
        row = {"family": family, "dtype": dtype_name, "rows": rows, "cols": cols, "bytes": moved,
               "variants": {}}
        result["rows"].append(row)
        print(f"{family} {dtype_name} {shape}: {moved / 1e6:.0f} MB", flush=True)
        for name, fn in variants.items():
            size = 2 * sets[0][0].nbytes if name == "copy x + 0" else moved
            one, one_host = queued(fn, sets[:1], 1)
            cycle, _ = queued(fn, sets, 1)
            eight, eight_host = queued(fn, sets, 8)
            row["variants"][name] = {
                "one_us": 1e6 * one, "one_host_us": 1e6 * one_host, "cycle_us": 1e6 * cycle,
                "eight_us": 1e6 * eight, "eight_host_us": 1e6 * eight_host,
                "one_gbs": size / one / 1e9, "eight_gbs": size / eight / 1e9,
            }
            print(f"  {name:36s} one {1e6 * one:7.2f} us (host {1e6 * one_host:5.2f})  cycling "
                  f"{1e6 * cycle:7.2f}  eight {1e6 * eight:7.2f} (host {1e6 * eight_host:5.2f})  "
                  f"{size / one / 1e9:6.0f} / {size / eight / 1e9:6.0f} GB/s", flush=True)
            save()
        if not opts.no_timeline:
            try:
                row["timeline"] = timeline(variants, sets[0])
            except Exception as exc:  # the profiler is optional: say why there is none
                row["timeline_error"] = f"{type(exc).__name__}: {exc}"
                print("  timeline failed:", row["timeline_error"], flush=True)
            save()


if __name__ == "__main__":
    main()
