"""Projection regions (fusion/projections.py): which products of few rows become one kernel, and
a decode step through optimize running them in the kernel emulator: as Metal (the rule is on for
NVIDIA only; here it is switched on for an Apple chip) and as CUDA, optimised for an H100."""

from __future__ import annotations

import dataclasses

import mlx.core as mx
import mlx.nn as nn
import numpy as np
import pytest

import mlxtriton
from mlxtriton import hw, lm
from mlxtriton.fusion.projections import group_projections
from mlxtriton.graph.evaluate import run
from mlxtriton.graph.evaluate_mlx import MLX_RULES
from mlxtriton.graph.projection import KIND, Result, Rope, spec_of
from mlxtriton.graph.transforms import GraphBuilder
from mlxtriton.runtime.compiled import graph_function
from mlxtriton.runtime import emulator

from tests import lm_zoo


def _graph(fn, *args):
    return mlxtriton.trace(fn)(*args)


def _regions(graph):
    return [e for e in graph.eqns if e.primitive == "Fused" and e.params["kind"] == KIND]


def _attention_block(x, wq, wk, wv, wo):
    q, k, v = x @ wq.T, x @ wk.T, x @ wv.T
    return (q * mx.sigmoid(k.sum(-1, keepdims=True)) + v.mean()) @ wo.T


def _weights(*shapes, dtype=mx.float32):
    return [mx.random.normal(s, key=mx.random.key(i)).astype(dtype) for i, s in enumerate(shapes)]


def test_products_of_one_x_become_one_region():
    x = mx.ones((1, 64))
    ws = _weights((64, 64), (16, 64), (16, 64), (64, 64))
    wk_small = ws[1]
    ws[2] = wk_small  # v reads the same weight as k: still two products
    graph, decisions = group_projections(_graph(_attention_block, x, *ws), 8, lone_rows=0)
    (region,) = _regions(graph)
    assert spec_of(region.params["body"]).widths == (64, 16, 16)
    assert "3 product(s) of 1 row(s) of 64" in decisions[0].as_text()
    assert graph.primitive_counts()["Matmul"] == 1  # the output projection, alone on its x


def test_a_lone_product_by_the_chips_rule():
    x = mx.ones((2, 1, 64))
    for lone_rows, regions in ((2, 1), (1, 0)):
        graph, _ = group_projections(_graph(lambda x, w: x @ w.T, x, *_weights((32, 64))), 8, lone_rows)
        assert len(_regions(graph)) == regions
        assert all(spec_of(r.params["body"]).rows == 2 for r in _regions(graph))


def test_more_rows_than_the_rule_or_no_rule_stay_mlx():
    ws = _weights((64, 64), (16, 64), (16, 64), (64, 64))
    for rows, max_rows in ((9, 8), (1, 0)):
        graph, _ = group_projections(_graph(_attention_block, mx.ones((rows, 64)), *ws), max_rows, 8)
        assert not _regions(graph)


def test_biased_products_join_with_their_bias():
    def f(x, w1, b1, w2, w3, b3):  # nn.Linear with a bias is AddMM
        return mx.addmm(b1, x, w1.T), x @ w2.T, mx.addmm(b3, x, w3.T, alpha=2.0)

    ws = _weights((16, 32), (16,), (8, 32), (4, 32), (4,))
    graph, decisions = group_projections(_graph(f, mx.ones((1, 32)), *ws), 8, 1)
    (region,) = _regions(graph)
    spec = spec_of(region.params["body"])
    assert spec.widths == (16, 8) and spec.biased == (True, False)
    assert any("alpha, beta not 1" in d.as_text() for d in decisions)


def test_a_weight_the_graph_computes_stays_mlx():
    def f(x, w):
        return x @ (w * 2).T, x @ w.T

    graph, decisions = group_projections(_graph(f, mx.ones((1, 8)), *_weights((8, 8))), 8, 1)
    assert len(_regions(graph)) == 1
    assert any("a weight the graph computes" in d.as_text() for d in decisions)


def test_quantized_and_dense_products_are_separate_regions():
    w, q = _weights((64, 64), (32, 64), dtype=mx.bfloat16)
    qw = mx.quantize(q, group_size=64, bits=4)

    def f(x, w, qw, s, b):
        return x @ w.T, mx.quantized_matmul(x, qw, s, b, transpose=True, group_size=64, bits=4)

    graph, _ = group_projections(_graph(f, mx.ones((1, 64), mx.bfloat16), w, *qw), 8, 1)
    assert sorted(spec_of(r.params["body"]).bits for r in _regions(graph)) == [0, 4]


def test_quantized_products_by_the_chips_rule():
    qw = mx.quantize(_weights((32, 64), dtype=mx.bfloat16)[0], group_size=64, bits=4)

    def f(x, w, s, b):
        return mx.quantized_matmul(x, w, s, b, transpose=True, group_size=64, bits=4)

    x = mx.ones((1, 64), mx.bfloat16)
    graph, decisions = group_projections(_graph(f, x, *qw), 8, 1, quantized=False)
    assert not _regions(graph) and "quantized weights" in decisions[0].as_text()
    assert _regions(group_projections(_graph(f, x, *qw), 8, 1, quantized=True)[0])


def test_float32_x_with_quantized_weights_stays_mlx():
    qw = mx.quantize(_weights((32, 64))[0], group_size=64, bits=4)

    def f(x, w, s, b):
        return mx.quantized_matmul(x, w, s, b, transpose=True, group_size=64, bits=4)

    graph, decisions = group_projections(_graph(f, mx.ones((1, 64)), *qw), 8, 1)
    assert not _regions(graph)
    assert "float32 x with quantized weights" in decisions[0].as_text()


def _swiglu(x, wg, wu):
    return nn.silu(x @ wg.T) * (x @ wu.T)


def test_a_swiglu_gate_is_the_regions_epilogue():
    x = mx.ones((2, 1, 32))  # products of x's rows flattened: the gate reads them reshaped
    graph, decisions = group_projections(_graph(lambda x, wg, wu: _swiglu(x, wg, wu) + 1,
                                                x, *_weights((48, 32), (48, 32))), 8, 1)
    (region,) = _regions(graph)
    assert spec_of(region.params["body"]).outputs == (Result((0, 1)),)
    assert "Sigmoid" not in graph.primitive_counts()
    assert "silu(product 1) * product 2 in its epilogue" in decisions[0].as_text()


def test_a_gate_whose_products_are_read_elsewhere_stays_outside():
    def f(x, wg, wu, wv):
        g = x @ wg.T
        return nn.silu(g) * (x @ wu.T), g, x @ wv.T

    graph, _ = group_projections(_graph(f, mx.ones((1, 32)), *_weights((16, 32), (16, 32), (16, 32))), 8, 1)
    (region,) = _regions(graph)
    spec = spec_of(region.params["body"])
    assert spec.outputs == (Result((0,)), Result((1,)), Result((2,)))
    assert graph.primitive_counts()["Sigmoid"] == 1


def test_products_of_different_widths_make_no_gate():
    def f(x, wg, wu):  # silu(g)[..., :16] * u: the gate reads a slice of g
        return nn.silu(x @ wg.T)[:, :16] * (x @ wu.T)

    graph, _ = group_projections(_graph(f, mx.ones((1, 32)), *_weights((32, 32), (16, 32))), 8, 1)
    assert spec_of(_regions(graph)[0].params["body"]).outputs == (Result((0,)), Result((1,)))


def _attention_inputs(dtype="float32", batch=1, length=1, offsets=(), freqs=True, rope_v=False):
    """q / k / v of x [batch, length, 64] as mlx-lm's attention on a GPU traces them: heads of 16
    transposed to [B, heads, L, 16], q and k (and v, ``rope_v``) through the ``RoPE`` primitive
    with the cache's offset (and llama3's frequencies, ``freqs``)."""
    b = GraphBuilder()
    x = b.input((batch, length, 64), dtype)
    weights = [b.input((n, 64), dtype) for n in (64, 32, 32)]
    offset = b.input(offsets, "int32")
    extra = [b.input((8,), "float32")] if freqs else []
    (flat,) = b.add("Reshape", [x], shape=(batch * length, 64))
    outs = []
    for i, w in enumerate(weights):
        (t,) = b.add("Transpose", [w], axes=(1, 0))
        (y,) = b.add("Matmul", [flat, t])
        heads = w.shape[0] // 16
        (r,) = b.add("Reshape", [y], shape=(batch, length, heads, 16))
        (h,) = b.add("Transpose", [r], axes=(0, 2, 1, 3))
        if i < 2 or rope_v:
            (h,) = b.add("RoPE", [h, offset, *extra], dims=16, traditional=False,
                         base=None if freqs else 10000.0, scale=1.0, forward=True)
        outs.append(h)
    return b.build(outs)


def test_ropes_of_q_and_k_are_the_regions_epilogue():
    graph, decisions = group_projections(_attention_inputs(), 8, 1)
    (region,) = _regions(graph)
    spec = spec_of(region.params["body"])
    rope = Rope(4, 1, False, 1.0, None, ())
    assert spec.outputs == (Result((2,)), Result((0,), rope), Result((1,), dataclasses.replace(rope, heads=2)))
    assert "RoPE" not in graph.primitive_counts()
    assert "product 1's RoPE in its epilogue" in decisions[0].as_text()


def test_a_rope_read_elsewhere_or_of_other_lanes_stays_outside():
    g = _attention_inputs()
    rotated = g.outputs[0]
    unrotated = g.producer(rotated).inputs[0]  # q before its RoPE is an output too
    graph, _ = group_projections(g.replace(outputs=(*g.outputs, unrotated)), 8, 1)
    assert graph.primitive_counts()["RoPE"] == 1


@pytest.fixture
def projections_on_apple(monkeypatch):
    """The projection rule on for Apple chips, kernels through the Metal emulator."""
    if not emulator.has_compiler():
        pytest.skip("no C++ compiler for the Metal emulator")
    original = hw.tuning.tuning

    def tuned(profile):
        t = original(profile)
        if t.architecture.startswith("apple"):
            t = dataclasses.replace(t, projection_max_rows=8, projection_lone_rows=1,
                                    projection_quantized=True, projection_epilogues=True)
        return t

    monkeypatch.setattr(hw.tuning, "tuning", tuned)
    monkeypatch.setenv("MLXTRITON_INTERPRET", "metal")


def decode_model(quantized: bool, head_dim: int, group_size: int, name: str = "llama",
                 dtype=None):
    """A model of the zoo (llama: q/k/v without a bias, qwen2: with) in ``dtype`` (default:
    float16 when quantized, the kernel reading half-precision x with 4-bit weights; else
    float32)."""
    arch = lm_zoo.BY_NAME[name]
    model = lm_zoo.build_arch(dataclasses.replace(arch, config={**arch.config, "head_dim": head_dim}))
    if dtype is not None or quantized:
        model.set_dtype(dtype or mx.float16)
    if quantized:
        nn.quantize(model, group_size=group_size, bits=4)
    return model


def greedy_against_mlx_lm(f, model, y, steps: int, tol: float, reference_caches=None):
    """``steps`` greedy steps of ``f`` (the model optimized) with mlxtriton.lm's caches against the
    plain model with mlx-lm's (or ``reference_caches(model)``'s), logits compared at each; the
    last tokens and the optimized caches."""
    from mlx_lm.models import cache as lm_cache

    fast = lm.make_prompt_cache(model)
    plain = (reference_caches or lm_cache.make_prompt_cache)(model)
    for _ in range(steps):
        a, b = f(y, cache=fast)[:, -1], model(y, cache=plain)[:, -1]
        np.testing.assert_allclose(np.array(a.astype(mx.float32)), np.array(b.astype(mx.float32)),
                                   atol=tol, rtol=tol)
        y = mx.argmax(b, axis=-1)[:, None]
    return y, fast


def dequantized(model, dense):
    """``dense`` (a model of ``model``'s architecture without quantized layers) given ``model``'s
    weights, its quantized ones dequantized, all in float32: what a quantized model computes,
    without rounding."""
    from mlx.utils import tree_flatten

    weights, quantized = {}, set()
    for path, m in model.named_modules():
        if isinstance(m, (nn.QuantizedLinear, nn.QuantizedEmbedding)):
            quantized.add(path)
            weights[f"{path}.weight"] = mx.dequantize(m.weight, m.scales, m.biases,
                                                      group_size=m.group_size, bits=m.bits)
            if "bias" in m:
                weights[f"{path}.bias"] = m["bias"]
    weights.update((k, v) for k, v in tree_flatten(model.parameters())
                   if k.rsplit(".", 1)[0] not in quantized)
    dense.load_weights(list(weights.items()))
    dense.set_dtype(mx.float32)
    return dense


def greedy_against_float32(f, model, dense, y, steps: int, ratio: float = 1.5,
                           share: float = 0.3):
    """``steps`` greedy steps of ``f`` (``model`` optimized, half precision, mlxtriton.lm's caches)
    and of plain ``model`` (mlx-lm's), each against ``dense`` (`dequantized`: the same model in
    float32): half precision rounds differently at every op of two graphs, so neither matches the
    other closely; ``f`` must be about as close to the float32 logits as plain mlx-lm is (within
    ``ratio`` of plain's largest difference over the run) and within ``share`` of the logits'
    largest magnitude at every step. Tokens follow the float32 model."""
    from mlx_lm.models import cache as lm_cache

    fast, plain, exact = (lm.make_prompt_cache(model), lm_cache.make_prompt_cache(model),
                          lm_cache.make_prompt_cache(dense))
    ours, theirs = [], []
    for step in range(steps):
        want = dense(y, cache=exact)[:, -1]
        a = f(y, cache=fast)[:, -1].astype(mx.float32)
        b = model(y, cache=plain)[:, -1].astype(mx.float32)
        ours.append(mx.abs(a - want).max().item())
        theirs.append(mx.abs(b - want).max().item())
        scale = mx.abs(want).max().item()
        assert ours[-1] <= share * scale, f"step {step}: {ours[-1]} from float32 logits up to {scale}"
        y = mx.argmax(want, axis=-1)[:, None]
    assert max(ours) <= ratio * max(theirs), (ours, theirs)
    return y, fast


@pytest.mark.parametrize("quantized,name", [(False, "llama"), (True, "llama"), (False, "qwen2")])
def test_decoding_through_optimize_runs_the_kernels(projections_on_apple, quantized, name):
    model = decode_model(quantized, head_dim=32, group_size=32, name=name)
    f = mlxtriton.optimize(model, chip="m3")
    # float16 activations round differently at every op of the two graphs (with the projections
    # left to MLX the logits differ as much: up to 0.07 of logits near 5)
    y, fast = greedy_against_mlx_lm(f, model, lm_zoo.prompt(9)[None], 3, 0.15 if quantized else 1e-4)
    names = [k.name for k in f.lower(y, cache=fast)]
    # per layer q/k/v, o, gate/up and down, and the output head; dense, on Metal the residual adds
    # join o and down as AddMM (patterns/linear.py)
    per_layer = 4 if quantized else 2
    assert sum(n.startswith("mlxt_projection_") for n in names) == per_layer * len(model.layers) + 1, names


@pytest.fixture
def decoding_on_an_h100(monkeypatch):
    """Kernels through the emulator's CUDA front end, quantized products and epilogues in the
    projection rule (as tests/device/test_projection_gpu.py has them), and no fence around float16
    activations with quantized weights (`compiled._unverified_on_device`: it fires for a CUDA
    device, and here is a CPU, but the point is to run what the H100 ran)."""
    if not emulator.has_compiler():
        pytest.skip("no C++ compiler for the kernel emulator")
    from mlxtriton.runtime import compiled

    original = hw.tuning.tuning
    monkeypatch.setattr(hw.tuning, "tuning", lambda p: dataclasses.replace(
        original(p), projection_quantized=True, projection_epilogues=True))
    monkeypatch.setattr(compiled, "_unverified_on_device", lambda graph, target: None)
    monkeypatch.setenv("MLXTRITON_INTERPRET", "cuda")


# (quantized, activations, tolerance of the logits). Half precision rounds differently at every op
# of the two graphs: the kernels compute in float32 and round once, MLX's CPU ops round each
# result (the NumPy interpreter of the same kernels differs from mlx-lm as much).
H100_DECODES = {"float16-4bit": (True, mx.float16, 0.15), "bfloat16-4bit": (True, mx.bfloat16, 0.75),
                "float32": (False, mx.float32, 1e-4)}


@pytest.mark.parametrize("group", [64, 32])
def test_a_bfloat16_4bit_decode_for_an_h100_is_as_close_to_float32_as_mlx_lm(decoding_on_an_h100,
                                                                           group):
    """The bfloat16 4-bit decode in CUDA against the same model in float32 (its weights
    dequantized), beside plain mlx-lm: what the device's greedy test checks."""
    model = decode_model(True, head_dim=64, group_size=group, dtype=mx.bfloat16)
    dense = dequantized(model, decode_model(False, head_dim=64, group_size=group))
    greedy_against_float32(mlxtriton.optimize(model, chip="h100"), model, dense,
                           lm_zoo.prompt(40)[None], 3)


@pytest.mark.parametrize("case", sorted(H100_DECODES))
def test_decoding_optimised_for_an_h100_runs_the_cuda_kernels(decoding_on_an_h100, case):
    """A 40-token prefill and two greedy steps of llama through optimize(chip="h100"), every
    kernel in CUDA (the projections with 4-bit weights and their epilogues, attention, norms),
    against plain mlx-lm: on an H100 the float16 4-bit prefill gave all-zero logits."""
    quantized, dtype, tol = H100_DECODES[case]
    model = decode_model(quantized, head_dim=64, group_size=64, dtype=dtype)
    f = mlxtriton.optimize(model, chip="h100")
    y, fast = greedy_against_mlx_lm(f, model, lm_zoo.prompt(40)[None], 3, tol)
    kernels = f.lower(y, cache=fast)
    assert {k.target for k in kernels} == {"cuda"}
    kinds = {k.name.split("_")[1] for k in kernels}
    assert {"projection", "attention"} <= kinds, kinds


def test_a_gpu_shaped_float16_4bit_prefill_runs_as_cuda(decoding_on_an_h100):
    """The prefill as an H100 traces it (norms, RoPE and attention as MLX's fast ops, the norms of
    residual adds in row kernels; `optimize_patterns` with no target turns the CPU's decomposed
    fast ops back into them), optimised for the H100 and its kernels emulated: the logits are
    plain mlx-lm's. (The H100's trace also keeps the embedding's dequantize one MLX op, which the
    CPU decomposes into two pointwise kernels here.)"""
    from mlx_lm.models import cache as lm_cache

    from mlxtriton.patterns import optimize_patterns

    model = decode_model(True, head_dim=64, group_size=64)
    f = mlxtriton.optimize(model, chip="h100")
    y = lm_zoo.prompt(40)[None]
    source = f.trace(y, cache=lm.make_prompt_cache(model)).source
    gpu = optimize_patterns(source, None)[0]
    assert {"RMSNorm", "RoPE", "ScaledDotProductAttention"} <= set(gpu.primitive_counts())
    (logits, *_) = graph_function(gpu, "h100")(y, *source.state_values)
    want = model(y, cache=lm_cache.make_prompt_cache(model))
    got, want = np.array(logits.astype(mx.float32)), np.array(want.astype(mx.float32))
    assert (np.abs(got).max(axis=-1) > 1.0).all()  # no position's logits are zero
    # every position's logits, where the greedy comparisons read the last one's: 0.17 the largest
    # difference of 5120
    np.testing.assert_allclose(got, want, atol=0.25, rtol=0.15)


def test_gradients_through_a_projection_are_mlxs(projections_on_apple):
    w1, w2 = _weights((16, 32), (16, 32))

    def loss(x, w1, w2):
        return ((x @ w1.T) * (x @ w2.T)).sum()

    x = mx.random.normal((1, 32), key=mx.random.key(3))
    f = mlxtriton.optimize(loss, chip="m3")
    assert any(k.name.startswith("mlxt_projection_") for k in f.lower(x, w1, w2))
    for got, want in zip(mx.grad(f, argnums=(0, 1))(x, w1, w2), mx.grad(loss, argnums=(0, 1))(x, w1, w2)):
        np.testing.assert_allclose(np.array(got), np.array(want), rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("dtype", [mx.float32, mx.bfloat16])
def test_a_gate_in_the_epilogue_matches_mlx_and_differentiates(projections_on_apple, dtype):
    wg, wu = _weights((64, 32), (64, 32), dtype=dtype)
    x = mx.random.normal((3, 1, 32), key=mx.random.key(5)).astype(dtype)
    f = mlxtriton.optimize(_swiglu, chip="m3")
    (kernel,) = f.lower(x, wg, wu)
    assert kernel.name.startswith("mlxt_projection_") and "mt_sigmoid" in kernel.source
    tol = 1e-5 if dtype == mx.float32 else 2e-2
    np.testing.assert_allclose(np.array(f(x, wg, wu).astype(mx.float32)),
                               np.array(_swiglu(x, wg, wu).astype(mx.float32)), rtol=tol, atol=tol)
    loss = lambda *a: _swiglu(*a).astype(mx.float32).sum()  # noqa: E731
    got, want = mx.grad(mlxtriton.optimize(loss, chip="m3"), argnums=(1, 2))(x, wg, wu), \
        mx.grad(loss, argnums=(1, 2))(x, wg, wu)
    for g, w in zip(got, want):
        np.testing.assert_allclose(np.array(g.astype(mx.float32)), np.array(w.astype(mx.float32)),
                                   rtol=tol, atol=tol)


@pytest.mark.parametrize("dtype,batch,length,offsets,freqs", [
    ("float32", 1, 1, (), True), ("bfloat16", 3, 1, (3,), True), ("float32", 2, 3, (1,), False)])
def test_ropes_in_the_epilogue_match_mlx(projections_on_apple, dtype, batch, length, offsets, freqs):
    graph = _attention_inputs(dtype, batch, length, offsets, freqs, rope_v=True)
    rng = np.random.default_rng(0)
    flat = [mx.array(rng.standard_normal(v.shape).astype(np.float32)).astype(getattr(mx, v.dtype))
            for v in graph.inputs[:4]]
    flat += [mx.array(rng.integers(0, 500, offsets).astype(np.int32))]
    flat += [mx.array(np.exp(rng.uniform(0, 6, 8)).astype(np.float32))] if freqs else []
    f = graph_function(graph, "m3")
    tol = 1e-4 if dtype == "float32" else 3e-2
    for got, want in zip(f(*flat), run(graph, flat, MLX_RULES)):
        np.testing.assert_allclose(np.array(got.astype(mx.float32)), np.array(want.astype(mx.float32)),
                                   rtol=tol, atol=tol)
