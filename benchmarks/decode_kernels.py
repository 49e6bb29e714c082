"""Benchmark: kernels launched and time per decoded token, plain mlx-lm vs ``mlxtriton.optimize``
with and without each decode-time rule, for the Llama-3.2-1B- and Llama-3-8B-shaped mlx-lm llama
(bf16 or 4-bit, batch 1, prompt 128 unless told, greedy): one short GPU run says whether each
rule wins (issue 25).

Decoding with a still-shaped cache is paced by the host: MLX's CUDA backend spends a few
microseconds of host time per kernel it launches, so kernels per token is the figure the rules
try to lower, and ms per token says whether that won. Per variant:

  plain              mlx-lm's model with its own caches; each step eager
  optimize           ``mlxtriton.optimize(model)`` with ``mlxtriton.lm.make_prompt_cache``
  optimize-<rule>    the same with one decode rule switched off (its chip table emptied), to
                     show what that rule changes; rules: ``grouped`` (attention with an array
                     mask at decode as q @ k^T, one row kernel, @ v:
                     `mlxtriton.patterns.attention.GROUPED_AT_DECODE`), ``norm-input`` (a norm
                     fast op whose input is pointwise work, a residual add, decomposed to share
                     its kernel: `mlxtriton.patterns.norms.FUSED_WITH_ITS_INPUT`)

Columns: ``ms`` and ``host_ms`` per token (prefill, warm-up steps, then ``runs`` runs of
``tokens`` steps queued with ``mx.async_eval``, one ``mx.synchronize`` per run, the median run;
host_ms is the time spent queuing); ``launches`` per token counted on the GPU with PyTorch's
profiler (CUPTI records every kernel the process launches, MLX's included) over ``tokens`` steps,
once every variant is timed, so that no timing follows a profile (a 1B 4-bit run that timed
optimize after profiling plain gave it 4.38 ms a step, generation.py 2.17: CUPTI left attached
is the suspect, not confirmed),
where PyTorch is installed, with the GPU time per step of each kind of kernel (``by_kernel``:
launches and microseconds per step, under the profiler); ``estimate``: what `cuda_launches`
predicts from the optimised graph
(optimize variants only: the static model below); ``match``: leading steps whose sampled token
equals plain's.

Run (GPU): python benchmarks/decode_kernels.py [--models 1b,8b] [--tokens 32]
CPU dry run (estimates only, a tiny llama traced for the H200): python benchmarks/decode_kernels.py --tiny
Estimates only, for the real shapes: python benchmarks/decode_kernels.py --estimate --models 1b
Writes benchmarks/results/decode_kernels_<device>.json (or --out).
"""

from __future__ import annotations

import argparse
import contextlib
import datetime
import json
import os
import platform
import re
import sys
import tempfile
from collections import Counter
from typing import Callable

import mlx.core as mx
import mlx.nn as nn
from mlx_lm.models import cache as lm_cache

import mlxtriton
from mlxtriton import lm
from mlxtriton.graph.core import Eqn, Graph, Var
from mlxtriton.codegen.schedule import attention_blocks, kernel_target
from mlxtriton.graph import attention
from mlxtriton.graph.fused import is_fused
from mlxtriton.graph.primitives import Family, get as get_primitive
from mlxtriton.patterns import attention as attention_rules
from mlxtriton.patterns import norms as norm_rules
from mlxtriton.patterns import optimize_patterns
from mlxtriton.runtime.compiled import run_passes

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from generation import build_model, timed_steps  # noqa: E402  (the same models and timing as benchmarks/generation.py)

# The decode rules, each with the chip table that switches it on: emptied, the rule is off.
RULES = {"grouped": (attention_rules, "GROUPED_AT_DECODE"),
         "norm-input": (norm_rules, "FUSED_WITH_ITS_INPUT")}

# ---- a static model of what MLX's CUDA backend launches for an optimised graph ----------------
# Views cost nothing; a strided view that an op needs contiguous costs a copy; each other MLX op
# is one launch, with the exceptions below (sources: mlx/backend/cuda/matmul.cpp,
# gemms/cublas_gemm.cpp, scaled_dot_product_attention.cpp/.cu, mlx/fast.cpp, MLX 0.32).

_VIEWS = frozenset({"Broadcast", "ExpandDims", "Squeeze", "Transpose", "Slice", "Reshape",
                    "Flatten", "Unflatten", "StopGradient"})
_MATMULS = frozenset({"Matmul", "AddMM"})
_H200 = kernel_target("h200")  # the chip the estimates optimise for


def _unit_change(a: tuple, b: tuple) -> bool:
    return tuple(d for d in a if d != 1) == tuple(d for d in b if d != 1)


def _matmul_launches(a: Var, b: Var) -> int:
    """One GEMM (gemv or cuBLASLt, strided batch), or two where broadcast batch dims that do not
    collapse into one take cuBLAS's pointer-array path (a kernel writes the pointers first)."""
    batch_a, batch_b = a.shape[:-2], b.shape[:-2]
    n = max(len(batch_a), len(batch_b))
    batch_a, batch_b = (1,) * (n - len(batch_a)) + batch_a, (1,) * (n - len(batch_b)) + batch_b
    broadcast = [x != y for x, y in zip(batch_a, batch_b) if max(x, y) > 1]
    if not any(broadcast) or all(broadcast):
        return 1  # one batch stride each (or b shared by every batch: folded into M)
    return 2


def _sdpa_launches(e: Eqn) -> int:
    """MLX's SDPA: one fused kernel where cuDNN or sdpa_vector take the call, else its fallback
    (mlx/fast.cpp) op by op: q * scale, q @ k^T, [where or add], softmax, @ v."""
    q, k, v = e.inputs[:3]
    lq, d, dv = q.shape[2], q.shape[-1], v.shape[-1]
    array_mask = len(e.inputs) - e.params["has_sinks"] > 3 and not e.params["do_causal"]
    vector = lq < 4 and d == dv and d in (64, 96, 128) and not array_mask
    cudnn = (q.dtype in ("float16", "bfloat16") and all(n % 8 == 0 and n <= 128 for n in (d, dv))
             and not (lq == 1 and array_mask))  # decoding through cuDNN takes no array mask
    if vector or cudnn:
        return 1
    grouped = q.shape[1] != k.shape[1]
    # grouped: q @ k^T is a gemv (one query row), @ v a 5-d product with k, v broadcast (two)
    return 1 + 1 + int(array_mask) + 1 + (2 if grouped else 1)


def cuda_launches(graph: Graph) -> Counter:
    """What one call of an optimised ``graph`` launches on MLX's CUDA backend, by kind: a static
    model (views are free, each MLX op one launch, copies where a strided view must be
    contiguous, matmuls and SDPA as in `_matmul_launches` and `_sdpa_launches`).

    Example:
        >>> f = mlxtriton.optimize(model, chip="h200")
        >>> sum(cuda_launches(f.graph(tokens, cache=cache)).values())
    """
    strided: set[Var] = set()  # vars that are non-contiguous views
    count: Counter = Counter()

    def contiguous(v: Var, kind: str = "copy") -> None:
        if v in strided:
            count[kind] += 1
            strided.discard(v)

    for e in graph.eqns:
        out = e.outputs[0]
        p = e.primitive
        if is_fused(e):
            split = (e.params["kind"] == attention.KIND
                     and attention_blocks(attention.spec_of(e.params["body"]).keys, _H200)[0] > 1)
            count["generated"] += 2 if split else 1  # a split attention: its partials, their merge
        elif p in _VIEWS:
            src = e.inputs[0]
            if p in ("Broadcast", "Slice"):
                if out.shape != src.shape or p == "Slice":
                    strided.add(out)
            elif p == "Transpose":
                moved = [a for a in e.params["axes"] if src.shape[a] != 1]
                if moved != sorted(moved) or src in strided:  # non-unit axes reordered
                    strided.add(out)
            elif src in strided:
                if _unit_change(src.shape, out.shape) or p in ("ExpandDims", "Squeeze", "StopGradient"):
                    strided.add(out)  # unit dims added or dropped: still a view
                else:
                    count["copy"] += 1  # MLX copies a strided array it reshapes
        elif p in _MATMULS:
            for operand in e.inputs[:2]:
                if operand in strided and not _last_two_transposed(graph, operand):
                    count["copy"] += 1
            count["matmul"] += _matmul_launches(e.inputs[0], e.inputs[1])
        elif p == "ScaledDotProductAttention":
            n = _sdpa_launches(e)
            count["sdpa" if n == 1 else "sdpa fallback"] += n
        elif get_primitive(p).family is Family.FAST:
            count["fast op"] += 1  # RMSNorm, LayerNorm, RoPE: one kernel each
        elif p == "Concatenate":
            count["mlx op"] += len(e.inputs)  # one copy into the output per input
        elif p in ("DynamicSliceUpdate", "SliceUpdate"):
            count["mlx op"] += 1
            count["copy"] += 1  # the buffer is copied first unless MLX can donate it
        else:
            count["mlx op"] += 1
    return count


def _last_two_transposed(graph: Graph, v: Var) -> bool:
    """``v`` is a transpose of its last two axes of a contiguous array (cuBLAS reads it as is)."""
    e = graph.producer(v)
    if e is None or e.primitive != "Transpose":
        return False
    n = v.ndim
    return tuple(e.params["axes"]) == tuple(range(n - 2)) + (n - 1, n - 2)


# ---- measuring ---------------------------------------------------------------------------------

@contextlib.contextmanager
def rule_off(name: str):
    """The decode rule ``name`` switched off for the duration (its chip table emptied)."""
    module, table = RULES[name]
    saved = getattr(module, table)
    setattr(module, table, frozenset())
    try:
        yield
    finally:
        setattr(module, table, saved)


def _variant_rules(variant: str):
    """The decode rules a variant runs under: all on, or one off (``optimize-<rule>``)."""
    return rule_off(variant.split("-", 1)[1]) if variant.startswith("optimize-") else contextlib.nullcontext()


def _argmax(logits):
    return mx.argmax(logits[:, -1, :], axis=-1, keepdims=True)


def _decoder(variant: str, model):
    """(prefill, step, optimised function or None) for one variant."""
    if variant == "plain":
        cache = lm_cache.make_prompt_cache(model)
        return (lambda p: _argmax(model(p, cache=cache)), lambda y: _argmax(model(y, cache=cache)),
                None, cache)
    f = mlxtriton.optimize(model)
    cache = lm.make_prompt_cache(model)
    return (lambda p: _argmax(f(p, cache=cache)), lambda y: _argmax(f(y, cache=cache)), f, cache)


def measured_launches(step, y, tokens: int) -> dict | None:
    """Kernels (and memory copies/sets) per step counted by PyTorch's profiler over ``tokens``
    steps, or None without PyTorch or a CUDA device."""
    try:
        import torch
        from torch.profiler import ProfilerActivity, profile
    except ImportError:
        return None
    if not torch.cuda.is_available():
        return None
    mx.synchronize()
    with profile(activities=[ProfilerActivity.CUDA]) as prof:
        for _ in range(tokens):
            y = step(y)
            mx.async_eval(y)
        mx.synchronize()
    with tempfile.NamedTemporaryFile(suffix=".json", delete=False) as f:
        path = f.name
    try:
        prof.export_chrome_trace(path)
        with open(path) as f:
            events = json.load(f).get("traceEvents", [])
    finally:
        os.unlink(path)
    kinds = Counter(e.get("cat") for e in events if e.get("ph") == "X")
    kernels = [e for e in events if e.get("ph") == "X" and e.get("cat") == "kernel"]
    count, gpu_us = Counter(), Counter()
    for e in kernels:
        name = _kernel_kind(e.get("name", ""))
        count[name] += 1
        gpu_us[name] += e.get("dur", 0.0)
    return {"kernels": kinds.get("kernel", 0) / tokens,
            "memcpy": kinds.get("gpu_memcpy", 0) / tokens, "memset": kinds.get("gpu_memset", 0) / tokens,
            "gpu_ms": sum(gpu_us.values()) / tokens / 1e3,
            # per kernel kind: launches and GPU microseconds per step, the costliest first
            "by_kernel": {k: [count[k] / tokens, round(gpu_us[k] / tokens, 1)]
                          for k, _ in gpu_us.most_common()}}


def _kernel_kind(name: str) -> str:
    """A kernel's name without its template arguments and parameters; mlxtriton's kernels by
    family (``mlxtriton row``), mx.compile's fused kernels (named after their ops) as one kind."""
    stem = name.split("(")[0].split("<")[0].replace("void ", "").strip()
    if "custom_kernel_mlxt_" in stem:
        return "mlxtriton " + re.sub(r"_([0-9a-f]{10}_)?[0-9a-f]{12}$", "", stem.split("custom_kernel_mlxt_")[1])
    if stem.startswith("mlx::core::cu::") and stem[len("mlx::core::cu::"):][:1].isupper():
        return "mx.compile fused elementwise"
    return stem


def time_variant(variant: str, model, prompt_len: int, tokens: int, warmup: int, runs: int
                 ) -> tuple[dict, Callable]:
    """The variant's timings, and a function finishing its row (``count``: its launches profiled
    by `measured_launches` over the same decode; the launch estimate), to call once every variant
    is timed (no timing follows a profile: see the module's docstring)."""
    prompt = mx.random.randint(0, model.args.vocab_size, (1, prompt_len), key=mx.random.key(1))
    prefill, step, f, cache = _decoder(variant, model)
    y = prefill(prompt)
    mx.eval(y)
    for _ in range(warmup):
        y = step(y)
        mx.eval(y)
    row: dict = timed_steps(step, y, tokens, runs)

    def finish(count: bool) -> None:
        if count:
            try:
                row["launches"] = measured_launches(step, y, tokens)
            except Exception as error:  # the profiler failing must not lose the timings
                row["launches"] = {"error": f"{type(error).__name__}: {error}"[:300]}
        if f is not None:  # traced after the timings: nothing of the estimate runs before them
            row["builds"] = f.cache_info().builds
            row["estimate"] = dict(cuda_launches(f.trace(y, cache=cache).graph))
            row["estimate_total"] = sum(row["estimate"].values())

    return row, finish


def gpu_shaped(source: Graph) -> Graph:
    """A trace from the CPU stream made to look like a GPU stream's: on the CPU the fast ops
    decompose, so the pattern stage with no target first turns norms, RoPE and attention back
    into fast-op primitives, as a GPU trace holds them (with no target it also makes `AddMM` of
    a residual add after a product, which a GPU trace for CUDA keeps as an add)."""
    return optimize_patterns(source, None)[0]


def estimate(name: str = "tiny", rules=tuple(RULES), model=None) -> dict:
    """Launch estimates for the decode step of ``CONFIGS[name]``'s llama (or ``model``) traced on
    this machine, made `gpu_shaped` on a CPU, and optimised for the H200, with every rule and
    without each. On the CPU the output and down projections count as MLX's `AddMM` (see
    `gpu_shaped`), where a GPU trace makes them projection kernels."""
    model = build_model(name, mx.bfloat16) if model is None else model
    result = {}
    for variant in ("optimize", *(f"optimize-{r}" for r in rules)):
        with contextlib.ExitStack() as stack:
            if variant != "optimize":
                stack.enter_context(rule_off(variant.split("-", 1)[1]))
            f = mlxtriton.optimize(model, chip="h200")
            cache = lm.make_prompt_cache(model)
            mx.eval(f(mx.array([[1, 2, 3, 4, 5]]), cache=cache))
            source = f.trace(mx.array([[7]]), cache=cache).source
            if mx.default_device() == mx.cpu:
                source = gpu_shaped(source)
            graph, _ = run_passes(source, f.passes, "h200")
        result[variant] = dict(cuda_launches(graph))
    return result


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--models", default="1b,8b")
    ap.add_argument("--prompt", type=int, default=128)
    ap.add_argument("--tokens", type=int, default=32)
    ap.add_argument("--runs", type=int, default=3)
    ap.add_argument("--warmup", type=int, default=4)
    ap.add_argument("--dtype", default="bfloat16", help="bfloat16, or 4bit (nn.quantize, group 64)")
    ap.add_argument("--rules", default=",".join(RULES), help="decode rules to switch off one at a time")
    ap.add_argument("--no-count", action="store_true", help="skip the profiler's kernel count")
    ap.add_argument("--tiny", action="store_true", help="CPU dry run: launch estimates of a tiny llama")
    ap.add_argument("--estimate", action="store_true",
                    help="launch estimates only, for --models (on a CPU: traced on its stream)")
    ap.add_argument("--out")
    args = ap.parse_args(argv)
    rules = [r for r in args.rules.split(",") if r]
    unknown = sorted(set(rules) - set(RULES))
    if args.dtype not in ("bfloat16", "4bit"):
        ap.error(f"unknown dtype {args.dtype!r}: bfloat16 or 4bit")
    if unknown:
        ap.error(f"unknown rules {unknown}; known: {', '.join(RULES)}")
    if args.tiny or args.estimate:
        for name in ["tiny"] if args.tiny else args.models.split(","):
            for variant, counts in estimate(name, rules).items():
                print(f"{name} {variant}: {sum(counts.values())} launches per token "
                      f"{dict(sorted(counts.items()))}", flush=True)
        return 0

    info = mx.device_info()
    device = "cpu" if mx.default_device().type == mx.cpu else \
        info.get("device_name", "gpu").lower().replace("nvidia ", "").split()[0]
    out = args.out or os.path.join(os.path.dirname(__file__), "results", f"decode_kernels_{device}.json")
    result = {"benchmark": "decode_kernels", "date": datetime.date.today().isoformat(),
              "mlx_version": mx.__version__, "mlxtriton_version": mlxtriton.__version__,
              "device": device, "python": platform.python_version(),
              "config": {"prompt": args.prompt, "tokens": args.tokens, "runs": args.runs,
                         "warmup": args.warmup, "batch": 1, "dtype": args.dtype},
              "rows": []}
    for name in args.models.split(","):
        model = build_model(name, mx.bfloat16)
        if args.dtype == "4bit":
            nn.quantize(model, group_size=64, bits=4)
            mx.eval(model.parameters())
        row = {"model": name, "variants": {}}
        variants, finish = ("plain", "optimize", *(f"optimize-{r}" for r in rules)), {}
        for variant in variants:
            with _variant_rules(variant):
                row["variants"][variant], finish[variant] = time_variant(
                    variant, model, args.prompt, args.tokens, args.warmup, args.runs)
        for variant in variants:  # profiled after every variant is timed
            with _variant_rules(variant):
                finish[variant](not args.no_count)
        reference = row["variants"]["plain"].get("tokens")
        for entry in row["variants"].values():
            tokens = entry.pop("tokens")
            same = [a == b for a, b in zip(tokens, reference)]
            entry["match"] = same.index(False) if False in same else len(same)
        result["rows"].append(row)
        for variant, e in row["variants"].items():
            launches = e.get("launches") or {}
            print(f"{name} {variant:>18}: {e['ms']:.2f} ms/token (host {e['host_ms']:.2f}), "
                  f"launches/token {launches.get('kernels', 'n/a')} "
                  f"(+{launches.get('memcpy', 0)} memcpy), estimate {e.get('estimate_total', '-')}, "
                  f"match {e['match']}", flush=True)
        os.makedirs(os.path.dirname(os.path.abspath(out)), exist_ok=True)
        with open(out, "w") as f:
            json.dump(result, f, indent=1)
        del model
        mx.clear_cache()
    print(f"wrote {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
