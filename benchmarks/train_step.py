"""Benchmark: a training step of the Llama-style block, MLX eager vs ``mx.compile`` vs
``mlxtriton.optimize`` (issue 6), on one GPU, in one run.

The block is `mlxtriton.examples.LlamaBlock` (nn.RMSNorm, nn.RoPE, grouped-query attention written
out, SwiGLU). Defaults: d_model 4096, 32 heads, 8 kv heads, ffn 14336, sequence 2048, batch 1,
bfloat16 parameters and activations; the loss is the float32 mean squared distance of the block's
output to a fixed target.

Rows (each a median of ``runs`` pipelined runs of ``reps`` calls, as benchmarks/row_kernels.py):
  forward/<variant>   the block's forward alone
  grad/<variant>      ``nn.value_and_grad(block, loss)``: forward and backward
  step/<variant>      value_and_grad plus an AdamW update (what a training loop calls)
Variants: ``eager`` (the module), ``compile`` (``mx.compile`` of the function; of the step with
the model and optimizer state as inputs/outputs), ``optimize`` (the loss calls
``mlxtriton.optimize(block)`` with MLXTRITON_FUSED_BACKWARD=0: its kernels' backward is
``mx.compile`` of MLX's VJP of each region's body), ``optimize+compile`` (that, inside the
``mx.compile``d step), ``fused-bwd`` and ``fused-bwd+compile`` (the default since 2026-11-21,
MLXTRITON_FUSED_BACKWARD=1: each region's VJP optimised into generated kernels), and for the forward
``optimize-no-autodiff``: the same kernels without the ``mx.custom_function`` wrappers, the cost
of being differentiable on the forward path. Every loss and gradient is compared with eager's
(relative error of the loss, and of the gradients' global norm).

Run: python benchmarks/train_step.py --out results.json [--quick] [--kinds forward,grad,step]
"""

from __future__ import annotations

import argparse
import contextlib
import datetime
import json
import os
import platform
import statistics
import sys
import time
import traceback

import mlx.core as mx
import mlx.nn as nn
import mlx.optimizers as optim

import mlxtriton
from mlxtriton import examples
from mlxtriton.runtime import compiled as compiled_module
from mlxtriton.runtime.autodiff import FUSED_BACKWARD_ENV

sys.path.insert(0, os.path.dirname(__file__))
from harness import time_mlx as _pipelined  # noqa: E402  (one timing method for all benchmarks)

TRAINING_VARIANTS = ("eager", "compile", "optimize", "optimize+compile", "fused-bwd", "fused-bwd+compile")


@contextlib.contextmanager
def fused_backward(variant: str):
    """MLXTRITON_FUSED_BACKWARD for the ``fused-bwd`` variants (read when a kernel is built)."""
    os.environ[FUSED_BACKWARD_ENV] = "1" if variant.startswith("fused-bwd") else "0"
    try:
        yield
    finally:
        os.environ.pop(FUSED_BACKWARD_ENV, None)


def time_mlx(fn, reps: int, runs: int) -> float:
    """Seconds per call of ``fn()`` (which returns arrays to evaluate): benchmarks/row_kernels.py's
    pipelined timing."""
    return _pipelined(fn, (), reps=reps, runs=runs)


def _norm(tree) -> float:
    leaves = [v for _, v in nn.utils.tree_flatten(tree)]
    return float(mx.sqrt(sum(mx.sum(mx.square(v.astype(mx.float32))) for v in leaves)).item())


def _diff_norm(a, b) -> float:
    pairs = zip(nn.utils.tree_flatten(a), nn.utils.tree_flatten(b))
    return float(mx.sqrt(sum(mx.sum(mx.square(x.astype(mx.float32) - y.astype(mx.float32)))
                             for (_, x), (_, y) in pairs)).item())


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", default="train_step.json")
    ap.add_argument("--quick", action="store_true", help="small block (d 1024, L 512): a smoke run")
    ap.add_argument("--batch", type=int, default=1)
    ap.add_argument("--reps", type=int, default=10)
    ap.add_argument("--runs", type=int, default=3)
    ap.add_argument("--kinds", default="forward,grad,step", help="which rows: forward,grad,step")
    args = ap.parse_args()

    if args.quick:
        cfg = examples.LlamaConfig(dims=1024, n_heads=8, n_kv_heads=2, hidden_dims=2816)
        length = 512
    else:
        cfg = examples.LlamaConfig(dims=4096, n_heads=32, n_kv_heads=8, hidden_dims=14336)
        length = 2048
    dtype = mx.bfloat16
    mx.random.seed(0)
    block = examples.LlamaBlock(cfg)
    block.set_dtype(dtype)
    mx.eval(block.parameters())
    x = (mx.random.normal((args.batch, length, cfg.dims)) * 0.5).astype(dtype)
    target = mx.random.normal((args.batch, length, cfg.dims)).astype(dtype)
    mx.eval(x, target)
    initial = block.parameters()

    result = {
        "benchmark": "train_step", "date": datetime.datetime.now().isoformat(timespec="seconds"),
        "device": mx.device_info().get("device_name", str(mx.default_device())),
        "mlx": mx.__version__, "python": platform.python_version(),
        "config": {"dims": cfg.dims, "heads": cfg.n_heads, "kv_heads": cfg.n_kv_heads,
                   "ffn": cfg.hidden_dims, "length": length, "batch": args.batch, "dtype": "bfloat16"},
        "method": f"pipelined: 3 warm-ups, median of {args.runs} runs of {args.reps} calls",
        "rows": [],
    }

    def save():
        with open(args.out, "w") as f:
            json.dump(result, f, indent=1)

    def forward_of(variant):
        if variant == "eager":
            return block
        if variant == "compile":
            return mx.compile(block)
        if variant == "optimize-no-autodiff":
            saved = compiled_module.differentiable
            compiled_module.differentiable = lambda forward, *_: forward
            try:
                f = mlxtriton.optimize(block)
                mx.eval(f(x))  # built now, without the wrappers
            finally:
                compiled_module.differentiable = saved
            return f
        return mlxtriton.optimize(block)

    def loss_of(forward):
        def loss(x, target):
            return mx.mean(mx.square(forward(x).astype(mx.float32) - target.astype(mx.float32)))
        return loss

    reference = {}

    def record(kind, variant, seconds, loss=None, grads=None, error=None):
        row = {"kind": kind, "variant": variant}
        if error is not None:
            row["error"] = error
        else:
            row["ms"] = round(seconds * 1e3, 4)
            if loss is not None:
                if variant == "eager":
                    reference[kind] = (loss, grads)
                elif kind in reference:
                    ref_loss, ref_grads = reference[kind]
                    row["loss_rel_err"] = abs(loss - ref_loss) / max(abs(ref_loss), 1e-12)
                    if grads is not None and ref_grads is not None:
                        row["grad_rel_err"] = _diff_norm(grads, ref_grads) / max(_norm(ref_grads), 1e-12)
        result["rows"].append(row)
        save()
        print(json.dumps(row), flush=True)

    kinds = args.kinds.split(",")
    for variant in ("eager", "compile", "optimize", "optimize-no-autodiff") if "forward" in kinds else ():
        try:
            f = forward_of(variant)
            record("forward", variant, time_mlx(lambda: f(x), args.reps, args.runs))
        except Exception as err:  # record and go on: one broken variant must not lose the others
            traceback.print_exc()
            record("forward", variant, 0, error=f"{type(err).__name__}: {err}")

    for variant in TRAINING_VARIANTS if "grad" in kinds else ():
        try:
            block.update(initial)
            forward = block if variant in ("eager", "compile") else mlxtriton.optimize(block)
            grad_fn = nn.value_and_grad(block, loss_of(forward))
            if variant.endswith("compile"):
                grad_fn = mx.compile(grad_fn, inputs=block.state, outputs=block.state)
            with fused_backward(variant):
                loss, grads = grad_fn(x, target)
                mx.eval(loss, grads)
            seconds = time_mlx(lambda: grad_fn(x, target), args.reps, args.runs)
            record("grad", variant, seconds, loss.item(), grads)
        except Exception as err:
            traceback.print_exc()
            record("grad", variant, 0, error=f"{type(err).__name__}: {err}")

    for variant in TRAINING_VARIANTS if "step" in kinds else ():
        try:
            block.update(initial)
            forward = block if variant in ("eager", "compile") else mlxtriton.optimize(block)
            grad_fn = nn.value_and_grad(block, loss_of(forward))
            opt = optim.AdamW(learning_rate=1e-5)

            def step():
                loss, grads = grad_fn(x, target)
                opt.update(block, grads)
                return loss

            if variant.endswith("compile"):
                state = [block.state, opt.state]
                step = mx.compile(step, inputs=state, outputs=state)
            with fused_backward(variant):
                first = step()
                mx.eval(first, block.parameters(), opt.state)

            def timed():
                loss = step()
                return [loss, block.parameters(), opt.state]

            seconds = time_mlx(timed, args.reps, args.runs)
            record("step", variant, seconds, first.item())
        except Exception as err:
            traceback.print_exc()
            record("step", variant, 0, error=f"{type(err).__name__}: {err}")

    rows = {(r["kind"], r["variant"]): r for r in result["rows"] if "ms" in r}
    summary = {}
    for kind in ("forward", "grad", "step"):
        base = rows.get((kind, "compile"))
        for variant in ("optimize", "optimize+compile", "optimize-no-autodiff", "fused-bwd",
                        "fused-bwd+compile"):
            r = rows.get((kind, variant))
            if base and r:
                summary[f"{kind}: {variant} vs compile"] = round(base["ms"] / r["ms"], 3)
    result["speedup_vs_compile"] = summary
    save()
    print(json.dumps(summary, indent=1))


if __name__ == "__main__":
    sys.exit(main())
