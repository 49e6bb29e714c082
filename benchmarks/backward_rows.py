"""Benchmark: the backward of the row families on a GPU: MLX's own VJPs against mlxtriton's two
routes, side by side in one run (issue 6).

For each family of benchmarks/row_kernels.py (softmax, log-softmax, layer norm, RMS norm, RMS norm x
SiLU gate, cross-entropy), dtype and shape, two measurements:
  bwd      the gradients alone: ``mx.vjp(fn, primals, [cotangent])[1]`` evaluated;
  fwd+bwd  outputs and gradients evaluated together, what a training step needs.
Variants:
  mx.compile          ``mx.compile`` of MLX's VJP of the composed function;
  mlx_native          MLX's VJP of its own op where one exists (mx.softmax, mx.fast.rms_norm,
                      mx.fast.layer_norm), under ``mx.compile``;
  mlxtriton           VJP of ``mlxtriton.optimize(fn)``: the forward kernel, and each region's
                      backward optimised into generated kernels (the default; rows too long for
                      registers read the statistics their forward saved);
  mlxtriton/mlx-vjp   the same with MLXTRITON_FUSED_BACKWARD=0: each region's backward is
                      ``mx.compile`` of MLX's VJP of the region's body;
  mlxtriton/autotuned (``--autotune``) ``mlxtriton.optimize(fn, autotune=True)``: every kernel,
                      forward and backward, tuned on this GPU on the first call.
Schedules of one backward kernel, one at a time: benchmarks/sweep.py --grad.
Every variant's gradients are compared with mx.compile's (largest relative difference).
Bandwidth counts what the computation must move: for bwd, each input the backward reads (the
primals and the cotangent) once and each gradient written once; for fwd+bwd, plus the outputs.

Method: benchmarks/harness.py's pipelined timing (median of 5 runs of ``reps`` calls).

Run: python benchmarks/backward_rows.py --out results.json [--quick] [--families ...]
[--dtypes ...] [--shapes 32768x4096,...]
"""

from __future__ import annotations

import argparse
import os
import sys

import mlx.core as mx

import mlxtriton
from mlxtriton.runtime.autodiff import FUSED_BACKWARD_ENV

sys.path.insert(0, os.path.dirname(__file__))
from harness import family_arguments, family_cases, results_file, time_mlx  # noqa: E402


def _inexact(args) -> list[int]:
    return [i for i, a in enumerate(args) if mx.issubdtype(a.dtype, mx.inexact)]


def vjp_of(fn, args, cotangent, with_outputs: bool):
    """``primals -> grads`` (or ``(outputs, grads)``) of ``fn`` in its inexact arguments."""
    inexact = _inexact(args)

    def of_inexact(*values):
        full = list(args)
        for i, v in zip(inexact, values):
            full[i] = v
        return fn(*full)

    def run(*values):
        outs, grads = mx.vjp(of_inexact, list(values), [cotangent])
        return (outs, grads) if with_outputs else grads

    return run, [args[i] for i in inexact]


def built(fn, fused: bool, autotune: bool = False):
    """``mlxtriton.optimize(fn)`` with MLXTRITON_FUSED_BACKWARD as asked (read when a kernel's
    backward is built, on the first call)."""
    os.environ[FUSED_BACKWARD_ENV] = "1" if fused else "0"
    return mlxtriton.optimize(fn, autotune=autotune)


def max_rel(a, b) -> float:
    a, b = a.astype(mx.float32), b.astype(mx.float32)
    scale = mx.maximum(mx.max(mx.abs(b)), mx.array(1e-30))
    return float((mx.max(mx.abs(a - b)) / scale).item())


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--out", default="backward_rows.json")
    ap.add_argument("--quick", action="store_true")
    family_arguments(ap)
    ap.add_argument("--reps", type=int, default=30)
    ap.add_argument("--autotune", action="store_true", help="add the mlxtriton/autotuned variant")
    opts = ap.parse_args()
    shapes = [(32768, 4096)] if opts.quick else [(32768, 4096), (4096, 16384), (1024, 65536)]
    result, save = results_file("backward_rows", __doc__, opts.out)
    rows_out = result["rows"]

    for dtype_name, name, composed, native, rows, cols, args in family_cases(opts, shapes):
        out = composed(*args)
        cot = mx.random.normal(out.shape).astype(out.dtype)
        mx.eval(out, cot)
        inexact = [args[i] for i in _inexact(args)]
        reads = sum(a.nbytes for a in args) + cot.nbytes
        writes = sum(a.nbytes for a in inexact)
        moved = {"bwd": reads + writes, "fwd+bwd": reads + writes + out.nbytes}
        variants = {"mx.compile": (composed, True), "mlxtriton": (None, True),
                    "mlxtriton/mlx-vjp": (None, False)}
        if opts.autotune:
            variants["mlxtriton/autotuned"] = (None, True)
        if native is not None:
            variants["mlx_native"] = (native, True)
        row = {"family": name, "dtype": dtype_name, "rows": rows, "cols": cols,
               "bytes": moved}
        reference = None
        for kind in ("bwd", "fwd+bwd"):
            for vname, (fn, flag) in variants.items():
                if vname.startswith("mlxtriton"):
                    fn = built(composed, flag, autotune=vname == "mlxtriton/autotuned")
                run, primals = vjp_of(fn, args, cot, kind == "fwd+bwd")
                if not vname.startswith("mlxtriton"):
                    run = mx.compile(run)
                try:
                    grads = run(*primals)
                    grads = grads[1] if kind == "fwd+bwd" else grads
                    mx.eval(grads)
                    if vname == "mx.compile" and kind == "bwd":
                        reference = grads
                    elif reference is not None and kind == "bwd":
                        row[f"{vname}_maxrel"] = max(max_rel(g, r) for g, r in zip(grads, reference))
                    t = time_mlx(run, primals, reps=opts.reps)
                except Exception as err:  # noqa: BLE001 (recorded, the run goes on)
                    row[f"{kind}/{vname}_error"] = f"{type(err).__name__}: {err}"[:300]
                    continue
                row[f"{kind}/{vname}_us"] = 1e6 * t
                row[f"{kind}/{vname}_gbs"] = moved[kind] / t / 1e9
            os.environ.pop(FUSED_BACKWARD_ENV, None)
        rows_out.append(row)
        save()
        print(f"{name:14s} {dtype_name:8s} {rows}x{cols}: " + "  ".join(
            f"{k.replace('_gbs', '')} {v:.0f}" for k, v in row.items() if k.endswith("_gbs")),
            flush=True)
        del args, out, cot
    print("wrote", opts.out)


if __name__ == "__main__":
    main()
