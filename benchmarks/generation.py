"""Benchmark: LLM decoding with mlx-lm llama models, plain vs a fixed-shape cache under
``mx.compile`` vs ``mlxtriton.optimize``, against the memory roofline, in one run (issue 25).

Models: mlx-lm's ``llama`` built from Llama-3.2-1B's and Llama-3-8B's configs with random weights
(normal, std 0.02), in bfloat16 and 4-bit (``nn.quantize``, group 64) after it. Per model, batch
(1, 8) and prompt length (128, 2048) it times greedy decoding (argmax) with:

  plain          mlx-lm's model with its own caches (``make_prompt_cache``), each step eager
  generate_step  (batch 1) mlx-lm's ``generate_step`` itself: a host sync per token (``.item()``),
                 one step queued ahead
  compile        the peer a skilled user writes today: a fixed-capacity cache (a buffer of
                 prompt + every generated token, an array offset, a mask over the buffer) and the
                 decode step under ``mx.compile`` with the cache arrays as inputs and outputs
  optimize       ``mlxtriton.optimize(model)`` called with ``mlxtriton.lm.make_prompt_cache``
  autotune       the same with ``autotune=True``: the prefill and the first step tune every
                 kernel on this GPU (a tuner with an empty cache, ``--tune-budget`` seconds a
                 kernel; ``tuned``: the kernels it tuned and the schedules it kept)
  roofline       (weight bytes + KV bytes read per step) / the copy bandwidth measured here

Method: for each method the prompt is prefilled and ``warmup`` decode steps run (builds happen
there; the prefill's and the first step's times are recorded as ``prefill_s`` and
``first_step_s``); then every method's ``runs`` runs are taken in turn (run 1 of each method, then
run 2, ...: a drift of the machine's speed falls on all of them alike; ``--sequential``: each
method's runs right after its warm-up), each run ``tokens`` decode steps queued with
``mx.async_eval`` (each step's sampled token feeds the next), ``mx.synchronize()`` once; ms per
step is the median run's time / ``tokens``. ``host_ms`` is the time the
host spent queuing a run's steps (before the synchronize), per step: when it is close to ``ms``
the host paces decoding; ``call_ms`` the part of it spent in the step call (building the graph),
the rest being MLX's evaluation of it (``mx.async_eval``: encoding and launching the kernels).
Tokens/s = batch * 1000 / ms. Each method's first ``tokens`` sampled tokens are compared with
plain's (``match``: the count of leading equal steps; bfloat16 runs may differ where reading a
masked buffer rounds differently).

Copy bandwidth: MLX's ``x + 0`` over a 1 GiB bfloat16 array (far beyond the GPU's L2), 20 calls
queued per run, median of 5 runs, bytes = read + write. Weight bytes per step: every parameter,
except an untied embedding table (a step reads one row of it per sequence); KV bytes per step:
keys and values of every layer over the mean context of the timed steps (what attention must
read; a bucketed cache reads more).

A method named twice in ``--only`` is timed again (``optimize#2``), so that its two runs bracket
the methods between them against the machine's drift. ``--variants
'off:projection_epilogues=0;...'`` times ``optimize`` again under other tuning data
(`mlxtriton.hw.tuning` fields replaced while it builds and runs), in the same process: an A/B of
a rule on one machine (method ``optimize[off]``).

Run (GPU): python benchmarks/generation.py [--only plain,compile,roofline] [--models 1b,8b]
CPU dry run: python benchmarks/generation.py --tiny
Writes benchmarks/results/generation_<device>.json (or --out) after every row.
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import datetime
import json
import os
import platform
import statistics
import sys
import tempfile
import time
import traceback

import mlx.core as mx
import mlx.nn as nn
from mlx.utils import tree_flatten, tree_map
from mlx_lm.generate import generate_step
from mlx_lm.models import cache as lm_cache
from mlx_lm.models import llama

import mlxtriton
from mlxtriton import hw, lm
from mlxtriton.runtime import tuner as tuner_lib

METHODS = ("plain", "generate_step", "compile", "optimize", "autotune", "roofline")

_LLAMA3_ROPE = {"factor": 32.0, "low_freq_factor": 1.0, "high_freq_factor": 4.0,
                "original_max_position_embeddings": 8192, "rope_type": "llama3"}

# The configs of meta-llama/Llama-3.2-1B and Meta-Llama-3-8B (their config.json), and a tiny
# llama for a CPU dry run.
CONFIGS = {
    "1b": dict(hidden_size=2048, num_hidden_layers=16, intermediate_size=8192,
               num_attention_heads=32, num_key_value_heads=8, head_dim=64, vocab_size=128256,
               rms_norm_eps=1e-5, rope_theta=500000.0, rope_scaling=_LLAMA3_ROPE,
               tie_word_embeddings=True, max_position_embeddings=131072),
    "8b": dict(hidden_size=4096, num_hidden_layers=32, intermediate_size=14336,
               num_attention_heads=32, num_key_value_heads=8, head_dim=128, vocab_size=128256,
               rms_norm_eps=1e-5, rope_theta=500000.0, tie_word_embeddings=False,
               max_position_embeddings=8192),
    "tiny": dict(hidden_size=64, num_hidden_layers=2, intermediate_size=128,
                 num_attention_heads=4, num_key_value_heads=2, head_dim=16, vocab_size=256,
                 rms_norm_eps=1e-5, rope_theta=10000.0, tie_word_embeddings=False),
}


def build_model(name: str, dtype) -> nn.Module:
    """mlx-lm's llama with ``CONFIGS[name]`` and normal(0, 0.02) weights drawn in ``dtype``."""
    mx.random.seed(0)
    model = llama.Model(llama.ModelArgs.from_dict({"model_type": "llama", **CONFIGS[name]}))
    # Replaced before anything is evaluated: the float32 initialisation is never materialised.
    model.update(tree_map(lambda p: (mx.random.normal(p.shape, dtype) * 0.02 if p.ndim >= 2
                                     else mx.ones(p.shape, dtype)), model.parameters()))
    mx.eval(model.parameters())
    model.eval()
    return model


class FixedKVCache:
    """What a skilled user writes today for ``mx.compile``: a buffer of ``capacity`` tokens
    allocated at the first write, the offset as an array, a mask over the whole buffer. Its
    arrays live in ``self.arrays``, the dict ``mx.compile`` takes as inputs and outputs."""

    def __init__(self, capacity: int):
        self.capacity = capacity
        self.arrays = {"offset": mx.array(0, mx.int32)}

    @property
    def offset(self):
        return self.arrays["offset"]

    def update_and_fetch(self, keys, values):
        a = self.arrays
        if "keys" not in a:
            a["keys"] = mx.zeros((*keys.shape[:2], self.capacity, keys.shape[3]), keys.dtype)
            a["values"] = mx.zeros((*values.shape[:2], self.capacity, values.shape[3]),
                                   values.dtype)
        start = a["offset"].reshape(1)
        a["keys"] = mx.slice_update(a["keys"], keys, start, axes=(2,))
        a["values"] = mx.slice_update(a["values"], values, start, axes=(2,))
        a["offset"] = a["offset"] + keys.shape[2]
        return a["keys"], a["values"]

    def make_mask(self, N, return_array=False, window_size=None):
        query = self.arrays["offset"] + mx.arange(N, dtype=mx.int32)[:, None]
        return mx.arange(self.capacity, dtype=mx.int32)[None] <= query


def _argmax(logits):
    return mx.argmax(logits[:, -1, :], axis=-1, keepdims=True)


def decoder(method: str, model, needed: int, bucket: int, tune_budget: float = 5.0):
    """(prefill(prompt) -> first token, step(token) -> next token, info) for one method;
    ``needed``: the tokens the cache will hold; ``bucket``: the still-shaped caches' step;
    ``tune_budget``: seconds of tuning a kernel (``autotune``)."""
    if method == "plain":
        cache = lm_cache.make_prompt_cache(model)
        return (lambda p: _argmax(model(p, cache=cache)),
                lambda y: _argmax(model(y, cache=cache)), {})
    if method == "compile":
        capacity = _round_up(needed, bucket)
        cache = [FixedKVCache(capacity) for _ in model.layers]
        state = [c.arrays for c in cache]
        step = mx.compile(lambda y: _argmax(model(y, cache=cache)), inputs=state, outputs=state)
        return lambda p: _argmax(model(p, cache=cache)), step, {"capacity": capacity}
    if method in ("optimize", "autotune"):
        cache = lm.make_prompt_cache(model, step=bucket)
        f = mlxtriton.optimize(model, autotune=method == "autotune")
        tuned_by = _fresh_tuner(tune_budget) if method == "autotune" else None

        def info():
            stats = f.cache_info()
            entry = {"cache_info": {"builds": stats.builds, "hits": stats.hits,
                                    "last_build": stats.last_build},
                     "capacity": cache[0].capacity}
            if tuned_by is not None:
                entry["tuned"] = [{"region": t.region, "kept": t.best != t.default,
                                   "speedup": round(t.speedup, 3), "timed": len(t.timed),
                                   "best": t.best.describe()} for t in tuned_by.searches]
            return entry

        return (lambda p: _argmax(f(p, cache=cache)), lambda y: _argmax(f(y, cache=cache)),
                info)
    raise ValueError(f"unknown method {method!r}")


def _fresh_tuner(budget_s: float):
    """A tuner with an empty cache (a temporary directory) made this process's tuner, so that
    every kernel an autotuned model builds is tuned here."""
    chosen = tuner_lib.Tuner(tuner_lib.default_timer(),
                             tuner_lib.ScheduleCache(tempfile.mkdtemp(prefix="mlxt-tune-")),
                             budget_s=budget_s, progress=False)
    tuner_lib.use(chosen)
    return chosen


class Decoding:
    """One method ready to be timed: its prompt prefilled and ``warmup`` steps decoded (builds
    happen there), under the tuning ``fields`` where given; `run` times one run of ``tokens``
    steps, `result` sums the runs up (`_summary`)."""

    def __init__(self, method, model, batch, prompt_len, tokens, warmup, runs, bucket,
                 tune_budget=5.0, fields=None):
        self.tokens, self.fields = tokens, fields
        self.times, self.host, self.calls, self.sampled = [], [], [], []
        prompt = mx.random.randint(0, model.args.vocab_size, (batch, prompt_len),
                                   key=mx.random.key(1))
        with self._tuning():
            prefill, self.step, self.info = decoder(method, model, prompt_len + warmup + runs * tokens,
                                                    bucket, tune_budget)
            t0 = time.perf_counter()
            y = prefill(prompt)
            mx.eval(y)
            self.prefill_s = time.perf_counter() - t0
            t0 = time.perf_counter()
            y = self.step(y)
            mx.eval(y)
            self.first_step_s = time.perf_counter() - t0
            for _ in range(warmup - 1):
                y = self.step(y)
                mx.eval(y)
        self.y = y

    def _tuning(self):
        return tuned(self.fields) if self.fields else contextlib.nullcontext()

    def run(self) -> None:
        """One run of ``tokens`` steps (`_one_run`)."""
        with self._tuning():
            self.y, *figures = _one_run(self.step, self.y, self.tokens, self.sampled)
        for kept, figure in zip((self.times, self.host, self.calls), figures):
            kept.append(figure)

    def result(self) -> dict:
        """`_summary` of the runs, with the method's build figures."""
        row = _summary(self.times, self.host, self.calls, self.sampled, self.tokens)
        row["prefill_s"], row["first_step_s"] = self.prefill_s, self.first_step_s
        row.update(self.info() if callable(self.info) else self.info)
        return row


def _one_run(step, y, tokens: int, sampled: list):
    """``tokens`` decoding steps from ``y`` queued with ``mx.async_eval``, synchronised once:
    the last token, and the run's seconds, host seconds and seconds in the step call; each
    step's token appended to ``sampled``."""
    in_call = 0.0
    t0 = time.perf_counter()
    for _ in range(tokens):
        t1 = time.perf_counter()
        y = step(y)
        in_call += time.perf_counter() - t1
        mx.async_eval(y)
        sampled.append(y)
    host = time.perf_counter() - t0
    mx.synchronize()
    return y, time.perf_counter() - t0, host, in_call


def _summary(times, host, calls, sampled, tokens: int) -> dict:
    """ms per step and host ms per step of the median run (the upper one for an even count),
    the part of the host's time spent in the step call (building the graph; the rest is
    ``mx.async_eval``, MLX evaluating it: encoding and launching its kernels), and the first
    run's tokens."""
    run = times.index(sorted(times)[len(times) // 2])
    return {"ms": 1e3 * times[run] / tokens, "host_ms": 1e3 * host[run] / tokens,
            "call_ms": 1e3 * calls[run] / tokens,
            "tokens": [t.reshape(-1).tolist() for t in sampled[:tokens]]}


def timed_steps(step, y, tokens: int, runs: int) -> dict:
    """``runs`` runs of ``tokens`` decoding steps from ``y``, one after another (`_summary`)."""
    times, host, calls, sampled = [], [], [], []
    for _ in range(runs):
        y, *figures = _one_run(step, y, tokens, sampled)
        for kept, figure in zip((times, host, calls), figures):
            kept.append(figure)
    return _summary(times, host, calls, sampled, tokens)


def time_decoding(method, model, batch, prompt_len, tokens, warmup, runs, bucket, tune_budget=5.0):
    """One method's row, its runs one after another (`Decoding`)."""
    decoding = Decoding(method, model, batch, prompt_len, tokens, warmup, runs, bucket, tune_budget)
    for _ in range(runs):
        decoding.run()
    return decoding.result()


def time_generate_step(model, prompt_len, tokens, warmup, runs):
    """mlx-lm's own loop at batch 1: ms per token over ``runs * tokens`` tokens after warm-up."""
    prompt = mx.random.randint(0, model.args.vocab_size, (prompt_len,), key=mx.random.key(1))
    steps = generate_step(prompt, model, max_tokens=warmup + runs * tokens,
                          sampler=lambda lp: mx.argmax(lp, axis=-1))
    for _ in range(warmup):
        next(steps)
    times = []
    for _ in range(runs):
        t0 = time.perf_counter()
        for _ in range(tokens):
            next(steps)
        times.append(time.perf_counter() - t0)
    return {"ms": 1e3 * statistics.median(times) / tokens}


def _round_up(n, multiple):
    return -(-n // multiple) * multiple


def copy_bandwidth(nbytes: int, reps: int = 20, runs: int = 5) -> float:
    """GB/s of MLX's ``x + 0`` over ``nbytes`` of bfloat16 (read + write), pipelined."""
    x = mx.random.normal((nbytes // 2,)).astype(mx.bfloat16)
    mx.eval(x)
    for _ in range(3):
        mx.eval(x + 0)
    times = []
    for _ in range(runs):
        live = []
        t0 = time.perf_counter()
        for _ in range(reps):
            live = live[-1:] + [x + 0]
            mx.async_eval(live[-1])
        mx.synchronize()
        times.append((time.perf_counter() - t0) / reps)
    return 2 * x.nbytes / statistics.median(times) / 1e9


def bytes_per_step(model, batch: int, context: float) -> dict:
    """Weight and KV bytes one decode step must read (``context``: tokens in the cache)."""
    untied_embedding = not model.args.tie_word_embeddings
    weights = sum(v.nbytes for k, v in tree_flatten(model.parameters())
                  if not (untied_embedding and k.startswith("model.embed_tokens")))
    args = model.args
    head_dim = args.head_dim or args.hidden_size // args.num_attention_heads
    itemsize = 2  # the caches hold bfloat16 keys and values (the activations' dtype)
    kv = (2 * args.num_hidden_layers * batch * args.num_key_value_heads * context * head_dim
          * itemsize)
    return {"weight_bytes": weights, "kv_bytes": kv}


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--models", default="1b,8b")
    ap.add_argument("--dtypes", default="bfloat16,4bit")
    ap.add_argument("--batches", default="1,8")
    ap.add_argument("--prompts", default="128,2048")
    ap.add_argument("--only", default=",".join(METHODS), help="methods to run")
    ap.add_argument("--tokens", type=int, default=32, help="decode steps per timed run")
    ap.add_argument("--runs", type=int, default=3)
    ap.add_argument("--warmup", type=int, default=4)
    ap.add_argument("--buckets", default="256",
                    help="capacity steps of the compile and optimize caches (several: one row "
                         "entry each, named method@step; reading a longer masked buffer costs "
                         "bandwidth, a smaller step more builds)")
    ap.add_argument("--variants", default="",
                    help="optimize again under other tuning data, in the same process: "
                         "'label:field=value,...;...' (each a method optimize[label], the fields "
                         "of mlxtriton.hw.tuning replaced for the chip while it builds and runs)")
    ap.add_argument("--sequential", action="store_true",
                    help="time each method's runs before preparing the next (default: every "
                         "method prepared first, then their runs taken in turn)")
    ap.add_argument("--tune-budget", type=float, default=5.0,
                    help="seconds of tuning a kernel for the autotune method")
    ap.add_argument("--copy-bytes", type=int, default=1 << 30)
    ap.add_argument("--tiny", action="store_true", help="CPU dry run: a tiny llama, short prompts")
    ap.add_argument("--out")
    args = ap.parse_args(argv)
    if args.tiny:
        args.models, args.prompts, args.batches = "tiny", "16,64", "1,2"
        args.tokens, args.runs, args.warmup, args.copy_bytes = 8, 2, 2, 1 << 24
    methods = args.only.split(",")
    unknown = sorted(set(methods) - set(METHODS))
    if unknown:
        ap.error(f"unknown methods {unknown}; known: {', '.join(METHODS)}")
    try:
        variants = parse_variants(args.variants)
    except ValueError as err:
        ap.error(str(err))

    info = mx.device_info()
    device = "cpu" if mx.default_device().type == mx.cpu else _slug(info.get("device_name", "gpu"))
    out = args.out or os.path.join(os.path.dirname(__file__), "results",
                                   f"generation_{device}{'_tiny' if args.tiny else ''}.json")
    result = {
        "benchmark": "generation",
        "date": datetime.date.today().isoformat(),
        "mlx_version": mx.__version__,
        "mlxtriton_version": mlxtriton.__version__,
        "device": device,
        "device_info": {k: v for k, v in info.items() if isinstance(v, (str, int, float))},
        "python": platform.python_version(),
        "method": (f"greedy decoding; prefill, {args.warmup} warm-up steps, then {args.runs} runs "
                   f"of {args.tokens} steps queued with mx.async_eval and one mx.synchronize per "
                   "run; ms per step of the median run; tokens/s = batch * 1000 / ms; roofline = "
                   "(weight + KV bytes per step) / copy GB/s (x + 0 over "
                   f"{args.copy_bytes >> 20} MiB, read + write)"),
        "config": {"models": {m: CONFIGS[m] for m in args.models.split(",")},
                   "tokens": args.tokens, "runs": args.runs, "warmup": args.warmup,
                   "buckets": args.buckets, "variants": variants},
        "rows": [],
    }

    def save():
        os.makedirs(os.path.dirname(os.path.abspath(out)), exist_ok=True)
        with open(out, "w") as f:
            json.dump(result, f, indent=1)

    if "roofline" in methods:
        result["copy_gbps"] = copy_bandwidth(args.copy_bytes)
        print(f"copy: {result['copy_gbps']:.0f} GB/s", flush=True)
    for model_name in args.models.split(","):
        base = None
        for dtype_name in args.dtypes.split(","):
            if dtype_name == "bfloat16" or base is None:
                base = build_model(model_name, mx.bfloat16)
            model = base
            if dtype_name == "4bit":
                nn.quantize(model, group_size=64, bits=4)
                mx.eval(model.parameters())
            elif dtype_name != "bfloat16":
                ap.error(f"unknown dtype {dtype_name!r}: bfloat16 or 4bit")
            for batch in (int(b) for b in args.batches.split(",")):
                for prompt_len in (int(p) for p in args.prompts.split(",")):
                    row = {"model": model_name, "dtype": dtype_name, "batch": batch,
                           "prompt": prompt_len, "methods": {}}
                    buckets = [int(b) for b in args.buckets.split(",")]
                    prepared = {}  # name -> an entry, or a Decoding to time
                    for method in methods:
                        for bucket in buckets if method in ("compile", "optimize", "autotune") \
                                else [None]:
                            name = method if len(buckets) == 1 or bucket is None else \
                                f"{method}@{bucket}"
                            name = timed_again(name, prepared)
                            prepared[name] = _prepare(method, model, batch, prompt_len, args,
                                                      result.get("copy_gbps"), bucket)
                            for label, fields in variants.items() if method == "optimize" else ():
                                prepared[f"{name}[{label}]"] = _prepare(
                                    method, model, batch, prompt_len, args,
                                    result.get("copy_gbps"), bucket, fields)
                            if args.sequential:  # each method's runs before the next's
                                prepared = {**prepared, **_timed(prepared, args.runs)}
                    row["methods"] = _timed(prepared, args.runs)
                    _compare_tokens(row["methods"])
                    result["rows"].append(row)
                    save()
                    _print_row(row)
            mx.clear_cache()
    save()
    print(f"wrote {out}")


def timed_again(name: str, taken) -> str:
    """A method's entry name: ``name``, or ``name#2``, ``name#3`` ... for a method named again in
    ``--only`` (its runs bracket the others' against the machine's drift)."""
    again, entry = 1, name
    while entry in taken:
        again += 1
        entry = f"{name}#{again}"
    return entry


def parse_variants(text: str) -> dict[str, dict[str, object]]:
    """``'label:field=value,...;...'`` -> {label: {field: value}}, each value of its field's
    type in mlxtriton's tuning data (bools as 0/1 or true/false)."""
    fields = {f.name: f.type for f in dataclasses.fields(hw.tuning.Tuning)}
    out = {}
    for part in filter(None, text.split(";")):
        label, _, assignments = part.partition(":")
        out[label] = {}
        for assignment in filter(None, assignments.split(",")):
            name, _, value = assignment.partition("=")
            if name not in fields:
                raise ValueError(f"--variants: {name!r} is no tuning field")
            kind = fields[name] if isinstance(fields[name], str) else fields[name].__name__
            out[label][name] = (value.lower() in ("1", "true") if kind == "bool"
                                else int(value) if kind == "int" else value)
    return out


@contextlib.contextmanager
def tuned(fields: dict[str, object]):
    """Every chip's tuning data with ``fields`` replaced, while the block runs."""
    original = hw.tuning.tuning
    hw.tuning.tuning = lambda profile: dataclasses.replace(original(profile), **fields)
    try:
        yield
    finally:
        hw.tuning.tuning = original


def _prepare(method, model, batch, prompt_len, args, copy_gbps, bucket, fields=None):
    """A method's entry where it needs no timed runs (the roofline, mlx-lm's ``generate_step``
    loop, an error), else its `Decoding`, prefilled and warmed up (``fields``: tuning data
    replaced while it builds and runs)."""
    try:
        if method == "roofline":
            context = prompt_len + args.warmup + args.runs * args.tokens / 2
            entry = bytes_per_step(model, batch, context)
            entry["ms"] = (entry["weight_bytes"] + entry["kv_bytes"]) / (copy_gbps * 1e9) * 1e3
        elif method == "generate_step":
            if batch != 1:
                return {"skipped": "mlx-lm's generate_step decodes one sequence"}
            entry = time_generate_step(model, prompt_len, args.tokens, args.warmup, args.runs)
        else:
            return Decoding(method, model, batch, prompt_len, args.tokens, args.warmup, args.runs,
                            bucket, args.tune_budget, fields)
        entry["tokens_per_s"] = batch * 1e3 / entry["ms"]
        return entry
    except Exception as error:  # one method failing must not lose the others' figures
        traceback.print_exc()
        return {"error": f"{type(error).__name__}: {error}"[:500]}


def _timed(prepared: dict, runs: int) -> dict:
    """Each prepared `Decoding`'s ``runs`` runs, taken in turn (run 1 of every method, then run
    2, ...), so that a drift of the machine's speed falls on all of them alike; its entry."""
    decodings = {name: d for name, d in prepared.items() if isinstance(d, Decoding)}
    entries = {name: e for name, e in prepared.items() if not isinstance(e, Decoding)}
    for _ in range(runs):
        for name, d in list(decodings.items()):
            try:
                d.run()
            except Exception as error:  # one method failing must not lose the others' figures
                traceback.print_exc()
                entries[name] = {"error": f"{type(error).__name__}: {error}"[:500]}
                del decodings[name]
    for name, d in decodings.items():
        entries[name] = d.result()
        entries[name]["tokens_per_s"] = len(d.y) * 1e3 / entries[name]["ms"]
    return {name: entries[name] for name in prepared}


def _compare_tokens(entries):
    reference = entries.get("plain", {}).get("tokens")
    for entry in entries.values():
        tokens = entry.pop("tokens", None)
        if reference is not None and tokens is not None:
            same = [a == b for a, b in zip(tokens, reference)]
            entry["match"] = same.index(False) if False in same else len(same)


def _print_row(row):
    parts = []
    for method, entry in row["methods"].items():
        if "ms" in entry:
            parts.append(f"{method} {entry['ms']:.2f} ms ({entry['tokens_per_s']:.0f} tok/s)")
        else:
            parts.append(f"{method} {next(iter(entry.values()))[:60]}")
    print(f"{row['model']} {row['dtype']} b{row['batch']} p{row['prompt']}: " + " | ".join(parts),
          flush=True)


def _slug(name: str) -> str:
    return name.lower().replace("nvidia ", "").split()[0]


if __name__ == "__main__":
    sys.exit(main())
