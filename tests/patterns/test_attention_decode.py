"""Attention at decode with an array mask for CUDA (`attention.GROUPED_AT_DECODE`): MLX's CUDA SDPA
runs such a call op by op, so with the fuse stage following a boolean mask makes it one attention
kernel region (`mlxtriton.graph.attention`, reading the mask in place), and an additive mask one
batched q @ k^T over the query heads grouped per kv head, one row kernel (scale, mask, softmax)
and one batched @ v; from a CPU trace (MLX's decomposed fallback) and from a GPU trace (the SDPA
primitive) alike, grouped-query and multi-head, float32, bfloat16 and float16. Where MLX has a
fused kernel (Metal; cuDNN's half-precision queries of several rows; no mask) or no fuse stage
follows, SDPA stays."""

import mlx.core as mx
import numpy as np
import pytest

import mlxtriton
from mlxtriton.fusion import fuse
from mlxtriton.graph import GraphBuilder, evaluate, verify
from mlxtriton.patterns import optimize_patterns
from tests.patterns._check import assert_oracle

CAPACITY = 32


def inputs(heads, kv_heads, lq=1, d=64, dtype=mx.float32, boolean=True, offset=19, seed=0):
    keys = mx.random.split(mx.random.key(seed), 3)
    q = mx.random.normal((1, heads, lq, d), key=keys[0]).astype(dtype)
    k = mx.random.normal((1, kv_heads, CAPACITY, d), key=keys[1]).astype(dtype)
    v = mx.random.normal((1, kv_heads, CAPACITY, d), key=keys[2]).astype(dtype)
    # mlxtriton.lm's mask over a still-shaped cache: query i (position offset + i) sees slot j <= it
    keep = mx.arange(CAPACITY)[None] <= (offset + mx.arange(lq)[:, None])
    mask = keep if boolean else mx.where(keep, 0.0, -1e9).astype(dtype)
    return q, k, v, mask


def attend(q, k, v, mask):
    return mx.fast.scaled_dot_product_attention(q, k, v, scale=q.shape[-1] ** -0.5, mask=mask)


def counts(graph):
    return {p: n for p, n in graph.primitive_counts().items()
            if p not in ("Reshape", "Transpose", "Broadcast", "ExpandDims", "Squeeze", "AsType")}


def attention_regions(graph):
    return [e for e in graph.eqns if e.primitive == "Fused" and e.params["kind"] == "attention"]


@pytest.mark.parametrize("dtype", [mx.float32, mx.bfloat16, mx.float16])
@pytest.mark.parametrize("heads,kv_heads", [(8, 2), (4, 4)])
@pytest.mark.parametrize("boolean", [True, False])
def test_decode_attention_is_one_kernel_or_two_products_around_one_row_kernel(dtype, heads, kv_heads, boolean):
    args = inputs(heads, kv_heads, dtype=dtype, boolean=boolean)
    g = mlxtriton.trace(attend)(*args)  # on the CPU stream: MLX's fallback, 5-d when grouped
    g2, report = optimize_patterns(g, "h200", fusing=True, on_rewrite=verify)
    assert "ScaledDotProductAttention" not in g2.primitive_counts()
    # MLX's fallback becomes SDPA, and SDPA the kernel or the grouped form once the model rules
    # have settled
    assert [f.rule for f in report.fired if f.group == "attention"] == ["attention", "attention_for_fusion"]
    if boolean:
        assert "attention at decode as one kernel" in report.fired[-1].detail
        (region,) = attention_regions(g2)
        assert region.inputs[3].dtype == "bool" and region.inputs[3].size == CAPACITY  # read in place
        assert counts(fuse(g2, "h200")) == {"Fused": 1}
    else:
        assert f"{heads // kv_heads} query rows per kv head" in report.fired[-1].detail
        assert "not one attention kernel: an additive mask" in report.fired[-1].detail
        # float16 scales q first (its scores could pass 65504 before the scale): a kernel of its own
        scale_q = {"Multiply": 1} if dtype == mx.float16 else {}
        assert counts(fuse(g2, "h200")) == {"Matmul": 2, "Fused": 1, **scale_q}
    assert_oracle(g, g2, args)
    tol = 1e-5 if dtype == mx.float32 else 2e-2
    assert mx.allclose(evaluate(g2, *args), attend(*args), atol=tol, rtol=tol).item()


def _gpu_trace(heads, kv_heads, lq, dtype, mask_dtype, sinks=False):
    """What a GPU trace may hold: the SDPA primitive with its mask broadcast to [B, Hq, Lq, Lk]."""
    b = GraphBuilder()
    q = b.input((1, heads, lq, 64), dtype)
    k, v = b.input((1, kv_heads, CAPACITY, 64), dtype), b.input((1, kv_heads, CAPACITY, 64), dtype)
    m = b.input((lq, CAPACITY), mask_dtype)
    (full,) = b.add("Broadcast", [m], shape=(1, heads, lq, CAPACITY))
    extra = [b.input((heads,), dtype)] if sinks else []
    (y,) = b.add("ScaledDotProductAttention", [q, k, v, full, *extra], scale=0.125, do_causal=False,
                 has_sinks=sinks, output_logsumexp=False, force_fused=False)
    return b.build([y])


@pytest.mark.parametrize("dtype,lq", [("float32", 1), ("float32", 3), ("bfloat16", 1)])
@pytest.mark.parametrize("mask_dtype", ["bool", "same"])
def test_an_sdpa_primitive_with_an_array_mask_from_a_gpu_trace(dtype, lq, mask_dtype):
    mask_dtype = dtype if mask_dtype == "same" else mask_dtype
    g = _gpu_trace(8, 2, lq, dtype, mask_dtype)
    q, k, v, keep = inputs(8, 2, lq=lq, dtype=getattr(mx, dtype))
    keep = keep.at[0, :].multiply(False) if lq > 1 else keep  # a row hiding every key
    mask = keep if mask_dtype == "bool" else mx.where(keep, 0.0, -1e9).astype(getattr(mx, dtype))
    g2, report = optimize_patterns(g, "h200", fusing=True, on_rewrite=verify)
    assert report.rules_fired()["attention_for_fusion"] == 1
    if mask_dtype == "bool":  # the kernel reads the mask before its broadcast
        assert [r.inputs[3].shape for r in attention_regions(g2)] == [(lq, CAPACITY)]
        assert counts(fuse(g2, "h200")) == {"Fused": 1}
    else:
        assert counts(fuse(g2, "h200")) == {"Matmul": 2, "Fused": 1}
    # MLX's fallback fills hidden scores with the lowest finite value: a row that hides every
    # key averages v, here as there
    want, got = evaluate(g, q, k, v, mask), evaluate(g2, q, k, v, mask)
    tol = 1e-5 if dtype == "float32" else 2e-2
    np.testing.assert_allclose(np.array(got.astype(mx.float32)), np.array(want.astype(mx.float32)),
                               atol=tol, rtol=tol)
    assert_oracle(g, g2, (q, k, v, mask))


@pytest.mark.parametrize("case", ["apple gpu", "no fuse stage", "cudnn", "long query", "sinks"])
def test_sdpa_stays_where_mlx_has_a_fused_kernel_or_nothing_fuses(case):
    chip, fusing, dtype, lq = "h200", True, "float32", 1
    if case == "apple gpu":
        chip = "m3"  # Metal's sdpa_vector takes array masks
    elif case == "no fuse stage":
        fusing = False
    elif case == "cudnn":
        dtype, lq = "bfloat16", 2  # cuDNN takes an array mask for half queries of several rows
    elif case == "long query":
        lq = 4
    g = _gpu_trace(8, 2, lq, dtype, "bool", sinks=case == "sinks")
    g2, report = optimize_patterns(g, chip, fusing=fusing)
    assert g2.primitive_counts().get("ScaledDotProductAttention") == 1 and not report.fired
    args = inputs(8, 2, lq=lq, dtype=getattr(mx, dtype))
    traced, _ = optimize_patterns(mlxtriton.trace(attend)(*args), chip, fusing=fusing)
    if case != "sinks":  # from a CPU trace: SDPA as before
        assert traced.primitive_counts().get("ScaledDotProductAttention") == 1


@pytest.mark.parametrize("reason,change", [
    ("head dims 48 and 48", dict(d=48)),
    ("an additive mask", dict(boolean=False)),
])
def test_what_the_attention_kernel_does_not_take_stays_grouped(reason, change):
    args = inputs(8, 2, **change)
    g2, report = optimize_patterns(mlxtriton.trace(attend)(*args), "h200", fusing=True)
    assert not attention_regions(g2) and g2.primitive_counts()["Matmul"] == 2
    assert reason in report.fired[-1].detail


def test_explain_names_the_rule():
    args = inputs(8, 2)
    text = str(mlxtriton.optimize(attend, chip="h200").explain(*args))
    assert "attention at decode as one kernel: 1 query row(s) of 8 heads" in text
    assert "MLX's CUDA SDPA has no fused kernel for an array mask here" in text
    text = str(mlxtriton.optimize(attend, chip="h200").explain(*inputs(8, 2, boolean=False)))
    assert "attention at decode with an additive mask as 4 query rows per kv head" in text
