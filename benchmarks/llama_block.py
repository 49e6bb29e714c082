"""Benchmark: a Llama-style decoder block and a GELU MLP block, eager vs ``mx.compile`` vs
``mlxtriton.optimize``, on one GPU, in one run (issue 5).

The Llama block is `mlxtriton.examples.LlamaBlock` as model code writes it: nn.RMSNorm, nn.RoPE,
grouped-query attention written out (repeat of the kv heads, q * scale @ k^T, additive causal
mask, softmax(precise=True), @ v), SwiGLU MLP. Defaults: d_model 4096, 32 heads, 8 kv heads, ffn
14336, sequence 2048, batch 1 and 4, bfloat16. The GELU MLP block is `examples.MLP` (Linear ->
GELU -> Linear -> residual -> LayerNorm) at d_model 4096, hidden 16384.

Variants per block and batch:
  eager          the module called as is
  compile        ``mx.compile(module)``
  optimize       ``mlxtriton.optimize(module)`` (patterns -> fuse -> layout -> cache)
  rewrite        ``mlxtriton.rewrite(module)``: the pattern stage alone, run under mx.compile
  optimize-no-addmm  optimize without the matmul + addend -> AddMM rule (what that rule is worth)
  fast-sdpa      (Llama only) the same block written by hand with mx.fast SDPA, eager: a reference
Plus, for the SwiGLU projections, two matmuls x @ W1^T, x @ W3^T against one matmul with the
weights concatenated (the measurement issue 5 asks for before keeping such a rewrite).

Method: pipelined timing, as benchmarks/row_kernels.py: 3 warm-ups, then ``reps`` calls queued
with ``mx.async_eval`` (the last outputs kept alive), one ``mx.synchronize()``, divided by
``reps``; the median of ``runs`` such runs. Every variant's output is compared with eager's: the
relative error ||y - y_eager|| / ||y_eager|| and the largest absolute difference are recorded,
and a variant is marked ``ok`` within bfloat16 tolerance (relative error <= 2e-2, i.e. a few
bfloat16 ulps accumulated over a block). The JSON is written after every row.

Run: python benchmarks/llama_block.py --out results.json [--quick] [--batches 1,4]
"""

from __future__ import annotations

import argparse
import datetime
import json
import platform
import statistics
import sys
import time
import traceback

import mlx.core as mx
import mlx.nn as nn

import mlxtriton
import mlxtriton.patterns as patterns
from mlxtriton import examples

sys.path.insert(0, __import__("os").path.dirname(__file__))
from harness import time_mlx as _pipelined  # noqa: E402  (one timing method for all benchmarks)

REL_TOL = 2e-2


def time_mlx(fn, args, reps: int = 20, runs: int = 5) -> float:
    """benchmarks/row_kernels.py's pipelined timing, with fewer calls per run (block-sized work)."""
    return _pipelined(fn, args, reps=reps, runs=runs)


def compare(y, ref) -> dict:
    y32, r32 = y.astype(mx.float32), ref.astype(mx.float32)
    rel = (mx.linalg.norm((y32 - r32).reshape(-1)) / mx.linalg.norm(r32.reshape(-1))).item()
    return {"rel_err": rel, "max_abs_err": mx.max(mx.abs(y32 - r32)).item(), "ok": bool(rel <= REL_TOL)}


def without_rule(name: str):
    """``mlxtriton.optimize`` with one rule left out of the pattern stage's table."""
    rules = patterns.Rules([r for r in patterns.DEFAULT_RULES if r.name != name])

    def make(module):
        f = mlxtriton.optimize(module)
        build = f._build

        def build_without(*a, **k):
            saved = patterns.DEFAULT_RULES
            patterns.DEFAULT_RULES = rules
            try:
                return build(*a, **k)
            finally:
                patterns.DEFAULT_RULES = saved

        f._build = build_without
        return f

    return make


def blocks(quick: bool):
    if quick:
        llama = examples.LlamaConfig(dims=256, n_heads=8, n_kv_heads=2, hidden_dims=512)
        return {"llama": llama, "seq": 128, "mlp": (256, 1024)}
    llama = examples.LlamaConfig(dims=4096, n_heads=32, n_kv_heads=8, hidden_dims=14336,
                                 norm_eps=1e-5, rope_base=10000.0)
    return {"llama": llama, "seq": 2048, "mlp": (4096, 16384)}


def build_block(name: str, spec: dict, dtype, fast_attention: bool = False):
    mx.random.seed(0)
    if name == "llama":
        module = examples.LlamaBlock(spec["llama"], fast_attention=fast_attention)
    else:
        module = examples.MLP(*spec["mlp"])
    module.set_dtype(dtype)
    mx.eval(module.parameters())
    return module


def concat_matmul_row(module, x) -> dict:
    """Two projections against one concatenated one (SwiGLU's W1 and W3)."""
    w1, w3 = module.mlp.gate_proj.weight, module.mlp.up_proj.weight
    flat = x.reshape(-1, x.shape[-1])
    w13 = mx.concatenate([w1, w3], axis=0)
    mx.eval(w13, flat)
    n = w1.shape[0]

    def two(a):
        return a @ w1.T, a @ w3.T

    def one(a):
        y = a @ w13.T
        return y[:, :n], y[:, n:]

    t2, t1 = time_mlx(two, (flat,)), time_mlx(one, (flat,))
    return {"two_matmuls_ms": t2 * 1e3, "one_concatenated_ms": t1 * 1e3, "speedup": t2 / t1}


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--out", required=True, help="JSON path, rewritten after every row")
    ap.add_argument("--quick", action="store_true", help="small shapes (a dry run on any host)")
    ap.add_argument("--batches", default="1,4")
    ap.add_argument("--blocks", default="llama,mlp")
    ap.add_argument("--reps", type=int, default=20)
    ap.add_argument("--runs", type=int, default=5)
    ap.add_argument("--dtype", default="bfloat16")
    args = ap.parse_args(argv)
    dtype = getattr(mx, args.dtype)
    spec = blocks(args.quick)
    result = {
        "benchmark": "llama_block",
        "date": datetime.date.today().isoformat(),
        "mlx_version": mx.__version__,
        "mlxtriton_version": mlxtriton.__version__,
        "device": mx.default_device().type.name if hasattr(mx.default_device().type, "name") else str(mx.default_device()),
        "device_info": {k: v for k, v in mx.device_info().items() if isinstance(v, (str, int, float))},
        "python": platform.python_version(),
        "method": "pipelined: 3 warm-ups, reps calls queued with mx.async_eval, one synchronize, "
                  f"median of {args.runs} runs of {args.reps}; outputs compared with eager "
                  f"(ok: relative L2 error <= {REL_TOL})",
        "config": {"llama": spec["llama"].__dict__, "seq": spec["seq"], "mlp": spec["mlp"], "dtype": args.dtype},
        "rows": [],
    }

    def save():
        with open(args.out, "w") as f:
            json.dump(result, f, indent=1)

    for name in args.blocks.split(","):
        module = build_block(name, spec, dtype)
        fast = build_block(name, spec, dtype, fast_attention=True) if name == "llama" else None
        for batch in (int(b) for b in args.batches.split(",")):
            dims = spec["llama"].dims if name == "llama" else spec["mlp"][0]
            x = mx.random.normal((batch, spec["seq"], dims)).astype(dtype)
            mx.eval(x)
            ref = module(x)
            mx.eval(ref)
            variants = {
                "eager": lambda: module,
                "compile": lambda: mx.compile(module),
                "optimize": lambda: mlxtriton.optimize(module),
                "rewrite": lambda: mlxtriton.rewrite(module),
                "optimize-no-addmm": lambda: without_rule("matmul_add")(module),
            }
            if fast is not None:
                variants["fast-sdpa"] = lambda: fast
            row = {"block": name, "batch": batch, "seq": spec["seq"], "ms": {}, "check": {}, "errors": {}}
            for variant, make in variants.items():
                try:
                    t0 = time.perf_counter()
                    fn = make()
                    y = fn(x)
                    mx.eval(y)
                    setup = time.perf_counter() - t0
                    row["check"][variant] = compare(y, ref) | {"first_call_s": setup}
                    row["ms"][variant] = time_mlx(fn, (x,), args.reps, args.runs) * 1e3
                    if variant == "optimize":
                        explanation = fn.explain(x)
                        row["patterns"] = explanation.stages[0].lines
                        row["optimized_primitives"] = explanation.graph.primitive_counts()
                except Exception as err:  # a failing variant is recorded, the others still run
                    row["errors"][variant] = f"{type(err).__name__}: {err}"
                    traceback.print_exc()
                print(f"{name} B={batch} {variant}: {row['ms'].get(variant, float('nan')):.3f} ms "
                      f"{row['check'].get(variant, {})}", flush=True)
            ms = row["ms"]
            if "compile" in ms and "optimize" in ms:
                row["optimize_vs_compile"] = ms["compile"] / ms["optimize"]
            if "eager" in ms and "optimize" in ms:
                row["optimize_vs_eager"] = ms["eager"] / ms["optimize"]
            if name == "llama":
                try:
                    row["swiglu_projections"] = concat_matmul_row(module, x)
                except Exception as err:
                    row["errors"]["swiglu_projections"] = f"{type(err).__name__}: {err}"
            result["rows"].append(row)
            save()
            print(json.dumps({k: row[k] for k in row if k not in ("patterns", "check")}), flush=True)
            del ref, x
            mx.clear_cache()
    return 0


if __name__ == "__main__":
    sys.exit(main())
