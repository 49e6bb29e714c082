"""Test support: the program every rank of tests/distributed runs,
``python -m tests.distributed.worker CASE [CASE ...]`` under `tests.distributed.launch`.

Each case checks itself on its rank against the plain MLX program (asserts) and prints
``ok CASE``; a failing check exits the rank with its message, which the launcher reports. The
ranks run on MLX's ring backend on the CPU; models are tiny mlx-lm configs with weights seeded
identically on every rank. ``MLXTRITON_DISTRIBUTED_BACKEND=nccl`` runs the same cases on the GPUs,
one process per GPU: ``mlx.launch --backend nccl -n 2 --env NCCL_NVLS_ENABLE=0 python -m
tests.distributed.worker CASE ...`` (there generated kernels round differently from MLX's: values
are compared within a tolerance where the CPU compares bits).
"""

from __future__ import annotations

import os
import sys

import mlx.core as mx
import mlx.nn as nn
from mlx.utils import tree_flatten, tree_map, tree_unflatten

import mlxtriton
from mlxtriton.graph import UnsupportedPrimitiveError, verify

CASES = {}


def case(fn):
    CASES[fn.__name__] = fn
    return fn


def on_cpu() -> bool:
    return mx.default_device() == mx.cpu


def same(a: mx.array, b: mx.array) -> bool:
    return a.dtype == b.dtype and a.shape == b.shape and mx.array_equal(a, b).item()


def close(a: mx.array, b: mx.array, tol: float) -> float:
    """Within ``tol`` (the CPU's figure; on a GPU generated kernels round differently: 1e-4)."""
    tol = tol if on_cpu() else max(tol, 1e-4)
    error = mx.abs(a - b).max().item()
    assert a.shape == b.shape and error <= tol, f"max error {error} > {tol}"
    return error


def rank_values(group, shape, seed: int = 0) -> mx.array:
    """Different values on every rank."""
    return mx.random.normal(shape, key=mx.random.key(seed + 100 * group.rank()))


# --- collectives in the graph ------------------------------------------------------------------


@case
def collectives(group):
    r, n = group.rank(), group.size()
    x = rank_values(group, (2, 3))

    def f(x):
        return (mx.distributed.all_sum(x), mx.distributed.all_max(x * 2), mx.distributed.all_min(-x),
                mx.distributed.all_gather(x), mx.distributed.all_gather(x[0, 0]),
                mx.distributed.all_sum(1.0))  # of a constant: the number of ranks, never folded

    graph = verify(mlxtriton.trace(f)(x))
    counts = graph.primitive_counts()
    assert counts["AllReduce"] == 4 and counts["AllGather"] == 2, counts
    text = str(graph)
    for line in (f"AllReduce[kind='sum', rank={r}, size={n}]", f"AllReduce[kind='max', rank={r}, size={n}]",
                 f"AllReduce[kind='min', rank={r}, size={n}]", f"f32[{2 * n},3] = AllGather[rank={r}, size={n}]",
                 f"f32[{n}] = AllGather[rank={r}, size={n}]"):
        assert line in text, f"{line!r} not in\n{text}"
    expected = f(x)
    assert expected[-1].item() == n
    for got in (mlxtriton.evaluate(graph, x), mlxtriton.optimize(f)(x), mlxtriton.fuse(f)(x)):
        assert all(same(a, b) for a, b in zip(got, expected))
    try:
        mlxtriton.trace(lambda x: mx.distributed.all_sum(x.astype(mx.float64)))(x)
    except UnsupportedPrimitiveError as err:
        assert "cannot trace AllReduce of a float64 array" in str(err), err
    else:
        raise AssertionError("a float64 collective traced")


@case
def send_recv(group):
    # Rank 0 sends to rank 1, which receives: each rank traces its own program.
    r, n = group.rank(), group.size()
    x = rank_values(group, (3, 4))
    if r == 0:
        f = lambda x: mx.distributed.send(x * 2, 1)  # noqa: E731
        prim, param = "Send", f"dst=1, rank=0, size={n}"
    elif r == 1:
        f = lambda x: mx.distributed.recv_like(x, 0) + 1  # noqa: E731
        prim, param = "Recv", f"dtype='float32', rank=1, shape=(3, 4), size={n}, src=0"
    else:
        return
    graph = verify(mlxtriton.trace(f)(x))
    assert f"{prim}[{param}]" in str(graph), str(graph)
    sent = mx.random.normal((3, 4), key=mx.random.key(0)) * 2  # rank 0's x * 2
    try:
        mx.eval(f(x))
    except RuntimeError as err:  # a backend without send and recv: mlxtriton fails as MLX does
        try:
            mx.eval(mlxtriton.evaluate(graph, x))
        except RuntimeError as again:
            assert str(again) == str(err), (again, err)
            return
        raise AssertionError(f"the plain program raised {err}, its graph did not")
    for run in (f, lambda x: mlxtriton.evaluate(graph, x), mlxtriton.optimize(f)):  # three messages
        got = run(x)
        mx.eval(got)
        assert same(got, sent if r == 0 else sent + 1), got  # Send outputs what it sent


@case
def sum_scatter(group):
    # The ring backend has no sum_scatter (NCCL has): either both run and agree, or both raise
    # MLX's own error.
    r, n = group.rank(), group.size()
    x = rank_values(group, (2 * n, 3))
    f = lambda x: mx.distributed.sum_scatter(x * 3)  # noqa: E731
    graph = verify(mlxtriton.trace(f)(x))
    assert f"f32[2,3] = ReduceScatter[kind='sum', rank={r}, size={n}]" in str(graph), str(graph)
    outcomes = []
    for run in (f, lambda x: mlxtriton.evaluate(graph, x)):
        try:
            outcomes.append(run(x).tolist())
        except RuntimeError as err:
            outcomes.append(str(err))
    assert outcomes[0] == outcomes[1], outcomes


@case
def fusion_around_all_sum(group):
    # The sharded-to-all projection's all_sum, then the residual add and RMS norm: one region.
    x, h = rank_values(group, (8, 16), 1), mx.random.normal((8, 64), key=mx.random.key(2))
    w, g = rank_values(group, (16, 64), 3), mx.random.normal((64,), key=mx.random.key(4))

    def block(x, h, w, g):
        h = h + mx.distributed.all_sum(x @ w)
        return h, mx.fast.rms_norm(h, g, 1e-5)

    f = mlxtriton.optimize(block, chip="h200")
    graph = verify(f.graph(x, h, w, g))
    assert graph.primitive_counts() == {"AllReduce": 1, "Fused": 1, "Matmul": 1}, graph.primitive_counts()
    all_sum, fused = (next(e for e in graph.eqns if e.primitive == p) for p in ("AllReduce", "Fused"))
    assert all_sum.outputs[0] in fused.inputs
    body = fused.params["body"].primitive_counts()
    assert body.get("Add", 0) >= 1 and body.get("Reduce") == 1, body
    explained = str(f.trace(x, h, w, g).explain("cuda"))
    assert (f"collective AllReduce[kind=sum] over {group.size()} ranks (this is rank {group.rank()}): "
            f"f32[8,64] -> f32[8,64]; input from Matmul; read by {fused.params['name']}") in explained, explained
    assert "not fused: #1 AllReduce" in explained and "regions end before it" in explained, explained
    for a, b in zip(f(x, h, w, g), block(x, h, w, g)):
        close(a, b, 1e-5)


@case
def gradients(group):
    x, w = rank_values(group, (4, 8), 5), rank_values(group, (8, 8), 6)

    def loss(x, w):
        h = x + mx.distributed.all_sum(x @ w)
        y = mx.fast.rms_norm(h, None, 1e-5)
        return (y * mx.distributed.all_gather(x)[: x.shape[0]]).sum() + mx.distributed.all_max(x).sum()

    expected = mx.grad(loss, argnums=(0, 1))(x, w)
    outside = mx.grad(mlxtriton.optimize(loss), argnums=(0, 1))(x, w)  # MLX's VJPs at run time
    inside = mlxtriton.optimize(mx.grad(loss, argnums=(0, 1)))(x, w)  # traced through the VJPs
    for got in (outside, inside):
        for a, b in zip(got, expected):
            close(a, b, 1e-5)

    # A tensor-parallel MLP: sum_gradients (all-to-sharded) all-sums the input's cotangent.
    mx.random.seed(7)
    up, down = nn.Linear(8, 16), nn.Linear(16, 8)
    mx.eval(up.parameters(), down.parameters())
    up = nn.layers.distributed.shard_linear(up, "all-to-sharded", group=group)
    down = nn.layers.distributed.shard_linear(down, "sharded-to-all", group=group)
    mlp = nn.Sequential(up, nn.ReLU(), down)
    expected = mx.grad(lambda x: (mlp(x) ** 2).sum())(x)
    fast = mlxtriton.optimize(mlp)
    assert fast.graph(x).primitive_counts()["SumGradients"] == 1
    close(mx.grad(lambda x: (fast(x) ** 2).sum())(x), expected, 1e-5)
    try:
        mlxtriton.trace(mx.grad(lambda x: (mlp(x) ** 2).sum()))(x)
    except UnsupportedPrimitiveError as err:
        assert "cannot differentiate through SumGradients inside a traced function" in str(err), err
    else:
        raise AssertionError("differentiating through sum_gradients inside a trace did not raise")


# --- sharded mlx-lm models ---------------------------------------------------------------------


def lm_config(model_type: str, kv_heads: int) -> dict:
    return dict(model_type=model_type, hidden_size=64, num_hidden_layers=2, intermediate_size=128,
                num_attention_heads=4, num_key_value_heads=kv_heads, head_dim=16, rms_norm_eps=1e-5,
                vocab_size=128, max_position_embeddings=4096, rope_theta=10000.0,
                tie_word_embeddings=False)


def lm(config: dict):
    from mlx_lm.utils import _get_classes

    model_class, args_class = _get_classes(config)
    mx.random.seed(0)  # the same weights on every rank
    model = model_class(args_class.from_dict(config))
    mx.eval(model.parameters())
    return model


def check_sharded(group, model_type: str) -> None:
    config = lm_config(model_type, kv_heads=group.size())
    full, sharded = lm(config), lm(config)
    sharded.shard(group)
    mx.eval(sharded.parameters())
    tokens = mx.array([[3, 17, 42, 5, 99, 12, 7, 64, 1, 33]])
    fast = mlxtriton.optimize(sharded)
    counts = fast.graph(tokens).primitive_counts()
    layers = config["num_hidden_layers"]
    # o_proj and down_proj all-sum; q, k, v, gate and up sum their input's gradients.
    assert counts["AllReduce"] == 2 * layers and counts["SumGradients"] == 5 * layers, counts
    logits = fast(tokens)
    if on_cpu():
        assert same(logits, sharded(tokens))  # the same MLX ops, bit for bit
    else:
        close(logits, sharded(tokens), 0.0)
    close(logits, full(tokens), 2e-5)  # the unsharded model adds the partial products in another order


@case
def sharded_llama(group):
    check_sharded(group, "llama")


@case
def sharded_qwen3(group):
    check_sharded(group, "qwen3")


# --- data-parallel training --------------------------------------------------------------------


@case
def sharded_generation(group):
    """Greedy generation of a sharded llama through optimize with mlxtriton.lm's caches gives, on
    every rank, the unsharded plain model's tokens, with one build for every decode step."""
    from mlx_lm.generate import generate_step

    from mlxtriton import lm as mlxtriton_lm

    config = lm_config("llama", kv_heads=group.size())
    full, sharded = lm(config), lm(config)
    sharded.shard(group)
    mx.eval(sharded.parameters())
    prompt = mx.array([3, 17, 42, 5, 99, 12, 7])

    def greedy(model, cache):
        steps = generate_step(prompt, model, max_tokens=12, prompt_cache=cache,
                              sampler=lambda logprobs: mx.argmax(logprobs, axis=-1))
        return [token for token, _ in steps]

    fast = mlxtriton.optimize(sharded)
    tokens = greedy(fast, mlxtriton_lm.make_prompt_cache(sharded))
    assert tokens == greedy(full, None), (tokens, greedy(full, None))
    assert fast.cache_info().builds == 3, fast.cache_info()


@case
def data_parallel_step(group):
    config = dict(lm_config("llama", kv_heads=2), num_hidden_layers=1)
    model = lm(config)
    # Flat parameters keyed without dots (average_gradients unflattens dotted keys).
    params = {k.replace(".", "/"): v for k, v in tree_flatten(model.parameters()) if isinstance(v, mx.array)}

    def apply(params, tokens):
        saved = model.parameters()
        model.update(tree_unflatten([(k.replace("/", "."), v) for k, v in params.items()]))
        try:
            return model(tokens)
        finally:
            model.update(saved)

    def loss(params, tokens, targets):
        return nn.losses.cross_entropy(apply(params, tokens), targets, reduction="mean")

    def step(params, tokens, targets):
        value, grads = mx.value_and_grad(loss)(params, tokens, targets)
        grads = nn.average_gradients(grads)
        return value, tree_map(lambda p, g: p - 0.5 * g, params, grads)

    key = mx.random.key(1000 + group.rank())  # every rank its own batch
    tokens, targets = (mx.random.randint(0, 128, (2, 12), key=k) for k in mx.random.split(key))
    fast = mlxtriton.optimize(step)
    assert fast.graph(params, tokens, targets).primitive_counts()["AllReduce"] == 1
    plain, optimized = params, params
    for _ in range(2):
        plain_loss, plain = step(plain, tokens, targets)
        fast_loss, optimized = fast(optimized, tokens, targets)
        close(fast_loss, plain_loss, 1e-5)
    for k in params:
        close(optimized[k], plain[k], 1e-6)
    # The averaged update leaves every rank with the same weights.
    first = plain["model/embed_tokens/weight"]
    assert same(mx.distributed.all_max(first, group=group), mx.distributed.all_min(first, group=group))


def main(names: list[str]) -> None:
    backend = os.environ.get("MLXTRITON_DISTRIBUTED_BACKEND", "ring")
    group = mx.distributed.init(strict=True, backend=backend)
    if backend == "ring":
        mx.set_default_device(mx.cpu)
    for name in names:
        CASES[name](group)
        print(f"ok {name}", flush=True)


if __name__ == "__main__":
    main(sys.argv[1:])
