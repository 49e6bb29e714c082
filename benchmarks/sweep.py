"""Benchmark: a sweep of the schedule space, every candidate of a kernel timed on this GPU.

What the one-off tuning experiments measured by patching the code generator (threads per row,
vector lanes, registers or staging or streaming per input, kept values, loads in the first pass,
block sums in threadgroup memory, the streamed loop's unroll, the online rescale, early row loads)
is a sweep here: the schedules of `mlxtriton.codegen.schedule.candidates` for each kernel of
``mlxtriton.optimize(fn)`` (``--grad``: of its gradient), those that differ from the default only
along ``--vary`` (all of them without it), each built, checked against the default's outputs and
timed. A rule of the tuning data (`mlxtriton.hw.tuning`) cites such a results file.

Method: each kernel launched through MLX as the tuner launches it (`mlxtriton.runtime.tuner
.DeviceTimer`: compiled once, then batches of launches queued with ``mx.async_eval`` and
synchronised once, the fastest batch of 3); inputs random (floats N(0, 1), integers 0).
Bandwidth: the kernel's inputs and outputs, once each, over its time.

Run: python benchmarks/sweep.py --families softmax --dtypes bfloat16 --shapes 32768x4096
[--vary threads_per_row,vector_width] [--grad] [--max 200] --out results.json
Axes: vector_width, threads_per_row (with rows_per_group, the walk and the launch bound),
registers (with staged and staged_in_registers), kept_registers, prefetch, block_sums_shared,
unroll, online_chunked, hoist_row_loads, hoist_block_loads. A column reduction's input split
between registers and threadgroup memory is on the registers axis, and bounded for two
threadgroups per core on the threads axis too: ``--vary registers,threads_per_row`` reaches both.
"""

from __future__ import annotations

import argparse
import os
import sys

import mlx.core as mx
import numpy as np

import mlxtriton
from mlxtriton.codegen.builder import RegionError, build
from mlxtriton.codegen.lowering import region_of
from mlxtriton.codegen.render import render
from mlxtriton.codegen.schedule import candidates, default, kernel_target
from mlxtriton.graph.fused import is_fused
from mlxtriton.runtime import tuner as tuner_lib
from mlxtriton.runtime.launch import launcher

sys.path.insert(0, os.path.dirname(__file__))
from harness import COLUMN_CASES, family_arguments, family_cases, results_file  # noqa: E402

AXES = {axis[0]: axis for axis in tuner_lib.AXES}


def along(schedule, start, vary: set[str]) -> bool:
    """Whether ``schedule`` differs from ``start`` only along the axes named in ``vary``."""
    return all(name in vary or all(getattr(schedule, f) == getattr(start, f) for f in fields)
               for name, fields in AXES.items())


def gradient_of(fn, args):
    """The gradient of ``fn``'s output (against a fixed random cotangent) in its float arguments."""
    out = fn(*args)
    cotangent = mx.random.normal(out.shape).astype(out.dtype)
    floats = [i for i, a in enumerate(args) if mx.issubdtype(a.dtype, mx.floating)]

    def grad(*values):
        def of(*xs):
            full = list(values)
            for i, x in zip(floats, xs):
                full[i] = x
            return fn(*full)
        return mx.vjp(of, [values[i] for i in floats], [cotangent])[1]

    return grad


def sweep_kernels(fn, args, case: dict, target, timer, vary: set[str], most: int, result, save) -> None:
    """Time the candidate schedules (along ``vary``, at most ``most`` a kernel) of every kernel of
    ``mlxtriton.optimize(fn)`` at ``args``, each row of ``result`` starting with ``case``."""
    graph = mlxtriton.optimize(fn).graph(*args)
    for e in (e for e in graph.eqns if is_fused(e)):
        try:
            region, _ = region_of(e)
            start = default(region, target)
        except RegionError as err:
            print(f"{case['family']} {e.params['name']}: no kernel ({err})", flush=True)
            continue
        chosen = [s for s in candidates(region, target) if along(s, start, vary)][:most]
        reference = None
        seen: dict = {}
        for s in chosen:
            row = {**case, "region": region.name, "default": s == start, "schedule": s.as_dict()}
            kernel = build(region, s)
            if kernel in seen:
                row["same_kernel_as"] = seen[kernel]
                result["rows"].append(row)
                continue
            seen[kernel] = len(result["rows"])
            lowered = render(kernel, target.device.backend)
            row["built"] = kernel.arg.describe()
            try:
                inputs = [mx.array(a.astype(np.float32) if d == "bfloat16" else a).astype(getattr(mx, d))
                          for a, d in zip(tuner_lib.random_inputs(lowered), lowered.input_dtypes)]
                outs = launcher(lowered)(*inputs)
                mx.eval(outs)
                if reference is None:
                    reference = outs if s == start else None
                if reference is not None:
                    row["maxerr"] = max(float(mx.max(mx.abs(o.astype(mx.float32) - r.astype(mx.float32))).item())
                                        for o, r in zip(outs, reference))
                seconds = timer.time(lowered)
            except (RuntimeError, ValueError) as err:
                row["error"] = str(err).strip().splitlines()[0][:300]
                result["rows"].append(row)
                save()
                continue
            moved = sum(int(np.prod(sh)) * mx.zeros((), getattr(mx, d)).itemsize
                        for sh, d in zip(lowered.input_shapes + lowered.output_shapes,
                                         lowered.input_dtypes + lowered.output_dtypes))
            row["us"], row["gbs"] = 1e6 * seconds, moved / seconds / 1e9
            result["rows"].append(row)
            save()
            print(f"{case['family'][:14]:14s} {case['dtype']:8s} {case['rows']}x{case['cols']} "
                  f"{region.name}: {row['gbs']:7.0f} GB/s {'(default) ' if s == start else ''}"
                  f"{s.describe()}", flush=True)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", default="sweep.json")
    family_arguments(ap, families="softmax", shapes="32768x4096")
    ap.add_argument("--vary", default="", help=f"comma-separated axes ({', '.join(AXES)}); default all")
    ap.add_argument("--grad", action="store_true", help="sweep the gradient's kernels")
    ap.add_argument("--max", type=int, default=200, help="most schedules timed per kernel")
    ap.add_argument("--columns", default="", help="also the column reductions of benchmarks/"
                    "harness.py COLUMN_CASES: 'all', or names up to their first comma, ';'-separated")
    ap.add_argument("--columns-only", action="store_true", help="the column reductions alone")
    opts = ap.parse_args()
    vary = set(filter(None, opts.vary.split(","))) or set(AXES)
    if vary - set(AXES):
        sys.exit(f"unknown axes {sorted(vary - set(AXES))}; axes: {', '.join(AXES)}")
    if not mx.is_available(mx.gpu):
        sys.exit("benchmarks/sweep.py times generated kernels: it needs a GPU")
    result, save = results_file("sweep", __doc__, opts.out)
    result["vary"] = sorted(vary)
    target = kernel_target("auto")
    timer = tuner_lib.DeviceTimer()
    cases = [] if opts.columns_only else list(family_cases(opts, []))
    for name, (fn, shape, dtype, _) in COLUMN_CASES.items():
        if opts.columns and (opts.columns == "all" or name.split(",")[0] in opts.columns.split(";")):
            x = mx.random.normal(shape).astype(dtype)
            cases.append((str(dtype).split(".")[-1], name, fn, None, shape[0], int(np.prod(shape[1:])), (x,)))
    for dtype_name, name, composed, _, rows, cols, args in cases:
        fn = gradient_of(composed, args) if opts.grad else composed
        sweep_kernels(fn, args, dict(family=name, dtype=dtype_name, rows=rows, cols=cols),
                      target, timer, vary, opts.max, result, save)
    print("wrote", opts.out)


if __name__ == "__main__":
    main()
