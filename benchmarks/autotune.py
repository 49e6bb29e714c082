"""Benchmark: default against autotuned schedules, the row-kernel suite and the column reductions.

For each family of benchmarks/row_kernels.py (softmax, log-softmax, layer norm, RMS norm, RMS norm
x SiLU gate, cross-entropy), dtype (float32, bfloat16) and shape (32768 x 4096 and rows of
512..16384), the pointwise chain, and the reductions not over the last axis of
benchmarks/column_reductions.py (NHWC batch-norm statistics, softmax over axis 0, softmax of a
transposed input: the harness's ``COLUMN_CASES``), it builds ``mlxtriton.optimize(fn)`` twice:
with the default schedules (the chip's tuning data) and with ``autotune=True``, whose first call
tunes every kernel on this GPU (`mlxtriton.runtime.tuner`: candidates one choice away from the
default, then from the best, each kernel launched many times per synchronisation, a schedule kept
only where it beats the default by 2% and again when timed side by side). The tuner starts from an empty cache (a
temporary directory), so every kernel is tuned here. Also timed: ``mx.compile`` of the same
function and MLX's ``x + 0`` copy (the bandwidth MLX reaches).

Method: benchmarks/harness.py's pipelined timing (after 3 warm-ups, 50 calls queued with
``mx.async_eval``, one synchronise; the median of 5 runs), default and autotuned timed twice each,
alternating, the faster of each pair kept. Bandwidth = bytes the function must move (inputs read
once, outputs written once) / time. Tuning: at most ``--budget`` seconds and ``--max-candidates``
schedules per case; the whole run aims at ``--total`` seconds: each case's tuning gets its share
of what is left once the other cases' timing (the average so far) is set aside.

Run: ``python benchmarks/autotune.py`` on one GPU, about 4 to 5 minutes on an H100 (``--total``
240 s plus the last case), writes benchmarks/results/autotune_<device>.json; ``--quick`` runs
32768 x 4096 only.
``--dry-run`` runs the whole script on a host without a GPU: kernels in the NumPy interpreter
(``MLXTRITON_INTERPRET=1``), which the tuner times, on 64 x 512 rows, float32, a few calls per
timing (the column cases on small shapes of their kind), the JSON written to a temporary file
unless ``--out`` is given; its figures mean nothing.
"""

from __future__ import annotations

import argparse
import itertools
import os
import sys
import tempfile
import time

import mlx.core as mx

import mlxtriton
from mlxtriton.runtime import tuner as tuner_lib
from mlxtriton.runtime.launch import INTERPRET_ENV

sys.path.insert(0, os.path.dirname(__file__))
from harness import (COLUMN_CASES, SUITE_SHAPES, families, family_arguments, family_cases,  # noqa: E402
                     nbytes, results_file, time_mlx)

RESULTS = os.path.join(os.path.dirname(__file__), "results")


def _slug(text: str) -> str:
    return "".join(c if c.isalnum() else "_" for c in text.lower()).strip("_")


def pointwise_cases(opts, rows: int = 8192, cols: int = 8192):
    """The suite's pointwise chain: max(exp(x / 2) * y + 1, 0) over 8192 x 8192."""
    chosen = set(filter(None, opts.families.split(",")))
    if chosen and "pointwise_chain" not in chosen:
        return
    for dtype_name in opts.dtypes.split(","):
        dtype = getattr(mx, dtype_name)
        x = mx.random.normal((rows, cols)).astype(dtype)
        y = mx.random.normal((cols,)).astype(dtype)
        mx.eval(x, y)

        def chain(x, y):
            return mx.maximum(mx.exp(x * 0.5) * y + 1.0, 0.0)

        yield dtype_name, "pointwise_chain", chain, (rows, cols), (x, y)


def column_cases(opts):
    """The reductions not over the last axis, each in its own dtype, named by their function."""
    chosen = set(filter(None, opts.families.split(",")))
    for fn, shape, dtype, small in COLUMN_CASES.values():
        if chosen and fn.__name__ not in chosen:
            continue
        x = mx.random.normal(small if opts.dry_run else shape).astype(dtype)
        mx.eval(x)
        yield str(dtype).split(".")[-1], fn.__name__, fn, x.shape, (x,)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", default=None, help="default: benchmarks/results/autotune_<device>.json")
    ap.add_argument("--quick", action="store_true", help="32768 x 4096 only")
    family_arguments(ap)
    ap.add_argument("--budget", type=float, default=5.0, help="most seconds of tuning per case")
    ap.add_argument("--max-candidates", type=int, default=32, help="schedules timed per kernel")
    ap.add_argument("--total", type=float, default=240.0, help="seconds the whole run aims at")
    ap.add_argument("--dry-run", action="store_true",
                    help="no GPU: the NumPy interpreter as the device, small shapes (see the docstring)")
    opts = ap.parse_args()
    if opts.dry_run:
        os.environ[INTERPRET_ENV] = "1"
        opts.dtypes = opts.dtypes if opts.dtypes != "float32,bfloat16" else "float32"
        opts.shapes = opts.shapes or "64x512"
        opts.total, opts.max_candidates = min(opts.total, 60.0), min(opts.max_candidates, 4)
        reps, runs = 2, 1
    elif not mx.is_available(mx.gpu):
        sys.exit("benchmarks/autotune.py times generated kernels: it needs a GPU (--dry-run: without)")
    else:
        reps, runs = 50, 5
    timer = tuner_lib.default_timer
    device = mx.device_info().get("device_name", str(mx.default_device()))
    out = opts.out or (os.path.join(tempfile.gettempdir(), "autotune_dry_run.json") if opts.dry_run
                       else os.path.join(RESULTS, f"autotune_{_slug(device)}.json"))
    result, save = results_file("autotune", __doc__, out)
    shapes = SUITE_SHAPES[:1] if opts.quick else SUITE_SHAPES
    columns = {fn.__name__ for fn, *_ in COLUMN_CASES.values()}
    chosen_families = set(filter(None, opts.families.split(","))) or set(families(mx.float32)) | {
        "pointwise_chain"} | columns
    dtypes = opts.dtypes.split(",")
    count = (len(dtypes) * (len(chosen_families - {"pointwise_chain"} - columns) * len(shapes)
                            + ("pointwise_chain" in chosen_families))
             + len(chosen_families & columns))
    # arrays made one case at a time: all of them at once would not fit the GPU
    pointwise_shape = (64, 512) if opts.dry_run else (8192, 8192)
    cases = itertools.chain(((d, n, c, (r, k), a) for d, n, c, _, r, k, a in family_cases(opts, shapes)),
                            pointwise_cases(opts, *pointwise_shape), column_cases(opts))
    started = time.perf_counter()
    overheads: list[float] = []  # seconds of each case outside its tuning
    with tempfile.TemporaryDirectory() as cache:
        for i, (dtype_name, name, composed, shape, args) in enumerate(cases):
            case_started = time.perf_counter()
            remaining = max(1, count - i)
            # what is left, less the timing the remaining cases will need (the average so far)
            left = opts.total - (case_started - started)
            if overheads:
                left -= remaining * sum(overheads) / len(overheads)
            budget = max(0.2, min(opts.budget, left / remaining))
            chosen = tuner_lib.Tuner(timer(), tuner_lib.ScheduleCache(cache),
                                     budget_s=budget, max_candidates=opts.max_candidates,
                                     progress=False)
            previous = tuner_lib.use(chosen)
            try:
                default = mlxtriton.optimize(composed, autotune=False)
                tuned = mlxtriton.optimize(composed, autotune=True)
                t0 = time.perf_counter()
                outputs = tuned(*args)  # tunes every kernel of the call
                mx.eval(outputs)
                tune_s = time.perf_counter() - t0
            finally:
                tuner_lib.use(previous)
            moved = nbytes(args, outputs)
            row = {"family": name, "dtype": dtype_name, "shape": list(shape), "bytes": moved,
                   "tune_s": tune_s, "budget_s": budget}
            times = {"default": [], "autotuned": []}
            for _ in range(2):  # alternating, so that a drift of the GPU's speed falls on both
                times["default"].append(time_mlx(default, args, reps, runs))
                times["autotuned"].append(time_mlx(tuned, args, reps, runs))
            for vname, ts in times.items():
                row[f"{vname}_us"] = 1e6 * min(ts)
                row[f"{vname}_gbs"] = moved / min(ts) / 1e9
            t = time_mlx(mx.compile(composed), args, reps, runs)
            row["mx.compile_us"], row["mx.compile_gbs"] = 1e6 * t, moved / t / 1e9
            t = time_mlx(lambda a: a + 0, (args[0],), reps, runs)
            row["copy_gbs"] = 2 * args[0].nbytes / t / 1e9
            row["speedup"] = row["default_us"] / row["autotuned_us"]
            row["kernels"] = [{"region": s.region, "timed": len(s.timed), "failed": len(s.errors),
                               "default": s.default.as_dict(), "chosen": s.best.as_dict(),
                               "default_us": 1e6 * s.default_seconds, "chosen_us": 1e6 * s.seconds}
                              for s in chosen.searches]
            result["rows"].append(row)
            save()
            picked = "; ".join(s.best.describe() for s in chosen.searches if s.best != s.default)
            print(f"{name:22s} {dtype_name:8s} {'x'.join(map(str, shape)):>13s} default {row['default_gbs']:6.0f} "
                  f"autotuned {row['autotuned_gbs']:6.0f} GB/s (x{row['speedup']:.3f}, "
                  f"{sum(len(s.timed) for s in chosen.searches)} timed in {tune_s:.1f} s) "
                  f"compile {row['mx.compile_gbs']:6.0f} copy {row['copy_gbs']:6.0f}"
                  + (f"  -> {picked}" if picked else ""), flush=True)
            del args, outputs
            overheads.append(time.perf_counter() - case_started - tune_s)
    print(f"wrote {out} in {time.perf_counter() - started:.0f} s")


if __name__ == "__main__":
    main()
