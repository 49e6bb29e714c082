"""Benchmark: tensor-parallel prefill and generation of an mlx-lm Llama sharded with
``model.shard(group)``, plain vs ``mlxtriton.optimize``, one process per GPU (issue 29).

The model is Llama-3-8B-shaped (hidden 4096, 32 layers, 32 heads over 8 kv heads, MLP 14336,
vocabulary 128256, rope theta 500000) with random bfloat16 weights drawn identically on every rank
from each parameter's name (``--tiny``: hidden 64, 2 layers, 8 heads, for a CPU dry run). Every
rank also builds the unsharded model, whose logits the sharded ones are compared with.

Rows (rank 0 prints and writes them; times are the slowest rank's):
  prefill/<variant>   the prompt (``--prompt`` tokens, no cache): ms, prompt tokens/s, and the
                      largest |logit difference| from the unsharded model over every rank
                      (float32, all positions) with whether the last position's argmax agrees
  generate/<variant>  the prompt into mlx-lm's KV caches, then ``--decode`` greedy steps (one
                      ``mx.eval`` per token): prefill ms, decode ms/token and tokens/s; optimize
                      is fed plain's tokens and its logits compared with plain's at every step
Variants: ``plain`` (the sharded mlx-lm model) and ``optimize`` (``mlxtriton.optimize`` of it). A
variant that fails records its error and the run goes on.

Run, one process per GPU (NCCL; NVLink multicast off), and the one-GPU baseline:
  mlx.launch --backend nccl -n 2 --env NCCL_NVLS_ENABLE=0 \\
      python benchmarks/distributed_generate.py --out benchmarks/results/distributed_generate_2.json
  NCCL_NVLS_ENABLE=0 python benchmarks/distributed_generate.py --out .../distributed_generate_1.json
  python benchmarks/distributed_generate.py --summarize .../distributed_generate_{1,2,4,8}.json
CPU dry run: mlx.launch --backend ring -n 2 python benchmarks/distributed_generate.py --tiny --out /tmp/g.json
"""

from __future__ import annotations

import argparse
import os
import sys
import time
import traceback
import zlib

sys.path.insert(0, os.path.dirname(__file__))
from distributed_common import Results, header, join, slowest, summarize, time_mlx  # noqa: E402

import mlx.core as mx  # noqa: E402
from mlx.utils import tree_map_with_path  # noqa: E402
from mlx_lm.models.cache import make_prompt_cache  # noqa: E402
from mlx_lm.utils import _get_classes  # noqa: E402

import mlxtriton  # noqa: E402

LLAMA3_8B = dict(model_type="llama", hidden_size=4096, num_hidden_layers=32, intermediate_size=14336,
                 num_attention_heads=32, num_key_value_heads=8, head_dim=128, rms_norm_eps=1e-5,
                 vocab_size=128256, max_position_embeddings=8192, rope_theta=500000.0,
                 tie_word_embeddings=False)
TINY = dict(LLAMA3_8B, hidden_size=64, num_hidden_layers=2, intermediate_size=128,
            num_attention_heads=8, num_key_value_heads=8, head_dim=8, vocab_size=256)


def build(config: dict, dtype, group=None):
    """The model with weights drawn from each parameter's name (the same on every rank, sharded
    or not), then sharded over ``group``."""
    model_class, args_class = _get_classes(config)
    model = model_class(args_class.from_dict(config))  # its own initial weights are never evaluated

    def draw(path, p):
        if not isinstance(p, mx.array):
            return p
        if path.endswith("norm.weight"):
            return mx.ones(p.shape, dtype=dtype)
        return mx.random.normal(p.shape, dtype=dtype, scale=0.02, key=mx.random.key(zlib.crc32(path.encode())))

    model.update(tree_map_with_path(draw, model.parameters()))
    if group is not None:
        model.shard(group)
    mx.eval(model.parameters())
    return model


def max_error(group, a: mx.array, b: mx.array) -> float:
    error = mx.abs(a.astype(mx.float32) - b.astype(mx.float32)).max().item()
    return slowest(group, error)  # the largest over the ranks


def generate(f, model, prompt: mx.array, steps: int, forced: list[int] | None = None):
    """Prefill seconds, decode seconds, the greedy tokens and each step's last logits."""
    cache = make_prompt_cache(model)
    start = time.perf_counter()
    logits = f(prompt, cache=cache)[:, -1].astype(mx.float32)
    token = mx.argmax(logits, axis=-1)
    mx.eval(token)
    prefilled = time.perf_counter()
    tokens, all_logits = [token.item()], [logits]
    for i in range(steps):
        fed = mx.array([[forced[i] if forced else tokens[-1]]])
        logits = f(fed, cache=cache)[:, -1].astype(mx.float32)
        token = mx.argmax(logits, axis=-1)
        mx.eval(token, logits)
        tokens.append(token.item())
        all_logits.append(logits)
    done = time.perf_counter()
    return prefilled - start, done - prefilled, tokens, all_logits


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", default="distributed_generate.json")
    ap.add_argument("--tiny", action="store_true", help="a 2-layer hidden-64 model: a CPU dry run")
    ap.add_argument("--prompt", type=int, default=None, help="prompt tokens (default 2048; tiny 16)")
    ap.add_argument("--decode", type=int, default=None, help="decode steps (default 256; tiny 8)")
    ap.add_argument("--reps", type=int, default=5)
    ap.add_argument("--runs", type=int, default=3)
    ap.add_argument("--summarize", nargs="+", metavar="JSON", help="print the scaling table of result files")
    args = ap.parse_args()
    if args.summarize:
        summarize(args.summarize, "name", "tokens_per_s", higher_is_better=True)
        return

    group = join()
    config = TINY if args.tiny else LLAMA3_8B
    length = args.prompt or (16 if args.tiny else 2048)
    steps = args.decode if args.decode is not None else (8 if args.tiny else 256)
    dtype = mx.bfloat16
    results = Results(group, args.out, header(
        "distributed_generate", group, {**config, "dtype": "bfloat16", "prompt": length, "decode": steps},
        f"prefill: pipelined, 3 warm-ups, median of {args.runs} runs of {args.reps} calls, slowest rank; "
        "decode: one mx.eval per token, wall time of all steps, slowest rank"))

    full = build(config, dtype)
    prompt = mx.random.randint(0, config["vocab_size"], (1, length), key=mx.random.key(1))
    reference = full(prompt)
    mx.eval(reference)
    del full
    sharded = build(config, dtype, group)
    variants = {"plain": sharded, "optimize": mlxtriton.optimize(sharded)}

    for variant, f in variants.items():
        row = {"name": f"prefill/{variant}", "kind": "prefill", "variant": variant}
        try:
            logits = f(prompt)
            mx.eval(logits)
            row["max_abs_err_vs_unsharded"] = max_error(group, logits, reference)
            row["last_argmax_equal"] = mx.array_equal(mx.argmax(logits[:, -1], -1),
                                                      mx.argmax(reference[:, -1], -1)).item()
            seconds = slowest(group, time_mlx(f, (prompt,), reps=args.reps, runs=args.runs))
            row.update(ms=round(seconds * 1e3, 3), tokens_per_s=round(length / seconds, 1))
            if variant == "optimize":
                counts = f.graph(prompt).primitive_counts()
                row["graph"] = {k: counts.get(k, 0) for k in ("AllReduce", "SumGradients", "Fused")}
        except Exception as err:  # record and go on: one broken variant must not lose the others
            traceback.print_exc()
            row["error"] = f"{type(err).__name__}: {err}"
        results.add(row)

    plain_tokens, plain_logits = None, None
    for variant, f in variants.items():
        row = {"name": f"generate/{variant}", "kind": "generate", "variant": variant}
        try:
            prefill, decode, tokens, logits = generate(f, sharded, prompt, steps, plain_tokens)
            row.update(prefill_ms=round(slowest(group, prefill) * 1e3, 3))
            decode = slowest(group, decode)
            row.update(decode_ms_per_token=round(decode / max(steps, 1) * 1e3, 3),
                       tokens_per_s=round(steps / decode, 1) if steps else None)
            if plain_tokens is None:
                plain_tokens, plain_logits = tokens[:-1], logits
            else:
                row["max_abs_err_vs_plain"] = max(max_error(group, a, b) for a, b in zip(logits, plain_logits))
                row["tokens_equal_plain"] = tokens[:-1] == plain_tokens
        except Exception as err:
            traceback.print_exc()
            row["error"] = f"{type(err).__name__}: {err}"
        results.add(row)


if __name__ == "__main__":
    main()
