"""Benchmark: a data-parallel training step of the Llama-style block with ``nn.average_gradients``,
plain vs ``mx.compile`` vs ``mlxtriton.optimize``, one process per GPU (issue 29).

The block is `mlxtriton.examples.LlamaBlock` (as benchmarks/train_step.py): d_model 4096, 32 heads
over 8 kv heads, MLP 14336, sequence 2048, batch 1 per rank, bfloat16 (``--tiny``: d_model 64 and
16 tokens, a CPU dry run). Every rank starts from the same weights and draws its own batch; the
loss is the float32 mean squared distance of the block's output to the rank's target. One step is
``mx.value_and_grad`` of the loss, ``nn.average_gradients`` (one all_sum of every gradient) and an
SGD update, written as a function of the parameters (a flat dict) so that it can be traced whole.

Rows ``step/<variant>`` (rank 0 prints and writes them): ms per step (pipelined, the slowest
rank), tokens/s of all ranks together, and after ``--check-steps`` steps from the same weights the
loss's and the weights' relative distance from eager's (weights as a global norm), and whether
every rank holds the same weights. Variants: ``eager`` (the step as written), ``compile``
(``mx.compile`` of it), ``optimize`` (``mlxtriton.optimize`` of the whole step: forward, backward,
all_sum and update in one graph), ``optimize-forward`` (the step with the block's forward
``mlxtriton.optimize(block)``: differentiated through its regions' VJPs, the rest eager).

Run, one process per GPU (NCCL; NVLink multicast off), and the one-GPU baseline:
  mlx.launch --backend nccl -n 2 --env NCCL_NVLS_ENABLE=0 \\
      python benchmarks/distributed_train.py --out benchmarks/results/distributed_train_2.json
  NCCL_NVLS_ENABLE=0 python benchmarks/distributed_train.py --out .../distributed_train_1.json
  python benchmarks/distributed_train.py --summarize .../distributed_train_{1,2,4,8}.json
CPU dry run: mlx.launch --backend ring -n 2 python benchmarks/distributed_train.py --tiny --out /tmp/t.json
"""

from __future__ import annotations

import argparse
import os
import sys
import traceback

sys.path.insert(0, os.path.dirname(__file__))
from distributed_common import Results, header, join, slowest, summarize, time_mlx  # noqa: E402

import mlx.core as mx  # noqa: E402
import mlx.nn as nn  # noqa: E402
from mlx.utils import tree_flatten, tree_map, tree_unflatten  # noqa: E402

import mlxtriton  # noqa: E402
from mlxtriton import examples  # noqa: E402

VARIANTS = ("eager", "compile", "optimize", "optimize-forward")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", default="distributed_train.json")
    ap.add_argument("--tiny", action="store_true", help="d_model 64, 16 tokens: a CPU dry run")
    ap.add_argument("--batch", type=int, default=1, help="sequences per rank")
    ap.add_argument("--reps", type=int, default=10)
    ap.add_argument("--runs", type=int, default=3)
    ap.add_argument("--check-steps", type=int, default=2)
    ap.add_argument("--lr", type=float, default=1e-2)
    ap.add_argument("--summarize", nargs="+", metavar="JSON", help="print the scaling table of result files")
    args = ap.parse_args()
    if args.summarize:
        summarize(args.summarize, "name", "tokens_per_s", higher_is_better=True)
        return

    group = join()
    if args.tiny:
        cfg, length = examples.LlamaConfig(dims=64, n_heads=4, n_kv_heads=2, hidden_dims=128), 16
    else:
        cfg, length = examples.LlamaConfig(dims=4096, n_heads=32, n_kv_heads=8, hidden_dims=14336), 2048
    dtype = mx.bfloat16
    mx.random.seed(0)  # the same weights on every rank
    block = examples.LlamaBlock(cfg)
    block.set_dtype(dtype)
    mx.eval(block.parameters())
    # Flat parameters keyed without dots: average_gradients unflattens dotted keys.
    params = {k.replace(".", "/"): v for k, v in tree_flatten(block.parameters())}
    key = mx.random.key(1000 + group.rank())  # every rank its own batch
    x, target = (mx.random.normal((args.batch, length, cfg.dims), key=k).astype(dtype) for k in mx.random.split(key))
    mx.eval(x, target)

    results = Results(group, args.out, header(
        "distributed_train", group,
        {"dims": cfg.dims, "heads": cfg.n_heads, "kv_heads": cfg.n_kv_heads, "ffn": cfg.hidden_dims,
         "length": length, "batch_per_rank": args.batch, "dtype": "bfloat16", "lr": args.lr},
        f"pipelined: 3 warm-ups, median of {args.runs} runs of {args.reps} steps from the same weights, "
        "slowest rank"))

    def step_with(forward):
        def apply(params, x):
            saved = block.parameters()
            block.update(tree_unflatten([(k.replace("/", "."), v) for k, v in params.items()]))
            try:
                return forward(x)
            finally:
                block.update(saved)

        def loss(params, x, target):
            return mx.mean(mx.square(apply(params, x).astype(mx.float32) - target.astype(mx.float32)))

        def step(params, x, target):
            value, grads = mx.value_and_grad(loss)(params, x, target)
            grads = nn.average_gradients(grads)
            return value, tree_map(lambda p, g: (p - args.lr * g).astype(p.dtype), params, grads)

        return step

    eager = step_with(block)
    steps = {
        "eager": eager,
        "compile": mx.compile(eager),
        "optimize": mlxtriton.optimize(eager),
        "optimize-forward": step_with(mlxtriton.optimize(block)),
    }

    def train(step):
        p, losses = params, []
        for _ in range(args.check_steps):
            value, p = step(p, x, target)
            losses.append(value)
        mx.eval(p, losses)
        return [v.item() for v in losses], p

    def norm(tree) -> float:
        return mx.sqrt(sum(mx.sum(mx.square(v.astype(mx.float32))) for v in tree.values())).item()

    reference = None
    for variant in VARIANTS:
        row = {"name": f"step/{variant}", "variant": variant}
        try:
            losses, weights = train(steps[variant])
            if reference is None:
                reference = (losses, weights)
            row["loss_rel_err"] = max(abs(a - b) / max(abs(b), 1e-12) for a, b in zip(losses, reference[0]))
            row["weights_rel_err"] = norm({k: weights[k] - reference[1][k] for k in weights}) / norm(reference[1])
            checksum = mx.array([norm(weights)])
            row["ranks_agree"] = (group.size() == 1 or mx.array_equal(
                mx.distributed.all_max(checksum, group=group), mx.distributed.all_min(checksum, group=group)).item())
            seconds = slowest(group, time_mlx(steps[variant], (params, x, target), reps=args.reps, runs=args.runs))
            row.update(ms=round(seconds * 1e3, 3),
                       tokens_per_s=round(group.size() * args.batch * length / seconds, 1))
            if variant == "optimize":
                counts = steps[variant].graph(params, x, target).primitive_counts()
                row["graph"] = {k: counts.get(k, 0) for k in ("AllReduce", "Fused")}
        except Exception as err:  # record and go on: one broken variant must not lose the others
            traceback.print_exc()
            row["error"] = f"{type(err).__name__}: {err}"
        results.add(row)


if __name__ == "__main__":
    main()
