"""Rule 1: attention written out becomes ScaledDotProductAttention, and a decomposed softmax the
Softmax primitive. Several spellings (scale on q, on the scores or as a division; additive,
boolean or causal masks; float32 casts; decomposed softmax; grouped-query heads by repeat; 3-d
and MLX's own 5-d fallback; a query shorter than the keys), near misses that must not match,
and a property over shapes, dtypes, masks and scale placements against the JAX oracle."""

import math

import mlx.core as mx
import mlx.nn as nn
from hypothesis import given, settings, strategies as st

import mlxtriton
from mlxtriton import examples
from tests.patterns._check import check, fired, misses


def qkv(b=1, h=4, hkv=None, lq=8, lk=None, d=16, dtype=mx.float32, seed=0):
    keys = mx.random.split(mx.random.key(seed), 3)
    lk = lq if lk is None else lk
    hkv = h if hkv is None else hkv
    q = mx.random.normal((b, h, lq, d), key=keys[0]).astype(dtype)
    k = mx.random.normal((b, hkv, lk, d), key=keys[1]).astype(dtype)
    v = mx.random.normal((b, hkv, lk, d), key=keys[2]).astype(dtype)
    return q, k, v


def t(x):
    return x.swapaxes(-1, -2)


def sdpa(g2):
    (e,) = [e for e in g2.eqns if e.primitive == "ScaledDotProductAttention"]
    return e


def only_sdpa(g2):
    left = set(g2.primitive_counts()) - {"ScaledDotProductAttention", "Reshape", "Transpose", "AsType"}
    assert not left, g2


def test_model_code_attention_with_additive_causal_mask():
    q, k, v = qkv()
    mask = examples.causal_mask(8)

    def attn(q, k, v):
        return mx.softmax((q * 0.25) @ t(k) + mask, axis=-1, precise=True) @ v

    g2, report = check(attn, q, k, v)
    only_sdpa(g2)
    e = sdpa(g2)
    assert e.params["do_causal"] and e.params["scale"] == 0.25 and len(e.inputs) == 3
    assert "causal" in [f for f in report.fired if f.rule == "attention"][0].detail


def test_scale_after_the_product_or_as_a_division():
    q, k, v = qkv(d=16)
    for attn in (lambda q, k, v: mx.softmax((q @ t(k)) * 0.25, axis=-1) @ v,
                 lambda q, k, v: mx.softmax((q @ t(k)) / math.sqrt(16), axis=-1) @ v,
                 lambda q, k, v: mx.softmax(q @ t(k), axis=-1) @ v):
        g2, _ = check(attn, q, k, v)
        only_sdpa(g2)
    assert sdpa(g2).params["scale"] == 1.0


def test_mask_arguments_additive_and_boolean():
    q, k, v = qkv()
    add = mx.random.normal((8, 8), key=mx.random.key(3))
    keep = mx.random.uniform(key=mx.random.key(4), shape=(1, 4, 8, 8)) > 0.3
    keep = keep | mx.eye(8, dtype=mx.bool_)  # no row fully masked

    g2, _ = check(lambda q, k, v, m: mx.softmax(q @ t(k) * 0.25 + m, axis=-1) @ v, q, k, v, add)
    e = sdpa(g2)
    assert not e.params["do_causal"] and e.inputs[3].shape == (1, 1, 8, 8)
    g2, _ = check(lambda q, k, v, m: mx.softmax(mx.where(m, q @ t(k) * 0.25, -mx.inf), axis=-1) @ v,
                  q, k, v, keep)
    assert sdpa(g2).inputs[3].dtype == "bool"


def test_constant_boolean_causal_mask_and_a_query_shorter_than_the_keys():
    q, k, v = qkv(lq=3, lk=8)
    keep = mx.arange(3)[:, None] + 5 >= mx.arange(8)[None]  # MLX's bottom-right causal mask
    g2, _ = check(lambda q, k, v: mx.softmax(mx.where(keep, q @ t(k), -mx.inf), axis=-1) @ v, q, k, v)
    assert sdpa(g2).params["do_causal"] and len(sdpa(g2).inputs) == 3
    top_left = mx.tril(mx.ones((3, 8), dtype=mx.bool_))  # not MLX's causal: passed as a mask
    g2, _ = check(lambda q, k, v: mx.softmax(mx.where(top_left, q @ t(k), -mx.inf), axis=-1) @ v, q, k, v)
    assert not sdpa(g2).params["do_causal"] and len(sdpa(g2).inputs) == 4


def test_float32_softmax_with_casts_in_half_precision():
    for dtype in (mx.bfloat16, mx.float16):
        q, k, v = qkv(dtype=dtype)

        def attn(q, k, v):
            s = (q @ t(k)).astype(mx.float32) * 0.25 + examples.causal_mask(8)
            return mx.softmax(s, axis=-1).astype(q.dtype) @ v

        g2, report = check(attn, q, k, v)
        if dtype == mx.float16:  # q @ k^T overflows past 65504 before the scale; SDPA scales q
            assert "ScaledDotProductAttention" not in g2.primitive_counts()
            assert any("float16 scores" in m for m in misses(report))
            continue
        only_sdpa(g2)
        assert sdpa(g2).params["do_causal"] and sdpa(g2).inputs[0].dtype == str(dtype).split(".")[-1]


def test_decomposed_softmax_becomes_the_primitive_then_attention():
    q, k, v = qkv()

    def attn(q, k, v):
        s = q @ t(k)
        e = mx.exp(s - mx.max(s, axis=-1, keepdims=True))
        return (e / e.sum(axis=-1, keepdims=True)) @ v

    g2, report = check(attn, q, k, v)
    only_sdpa(g2)
    assert fired(report) == ["softmax", "attention"]
    # without the max subtracted exp overflows where Softmax does not: no rewrite
    g2, report = check(lambda x: mx.exp(x) / mx.exp(x).sum(-1, keepdims=True), q)
    assert "Softmax" not in g2.primitive_counts() and any("without the row max" in m for m in misses(report))


def test_a_decomposed_half_softmax_keeps_its_float32_sum():
    # MLX's non-precise half softmax sums in the half type: on the CPU a bfloat16 row of 4097
    # sums to about 2.5. The composed form sums in float32, so the primitive it becomes is precise.
    x = mx.random.normal((2, 4097), key=mx.random.key(3)).astype(mx.bfloat16)

    def composed(x):
        e = mx.exp(x - mx.max(x, axis=-1, keepdims=True))
        return e / mx.sum(e, axis=-1, keepdims=True)

    g2, report = check(composed, x)
    (sm,) = [e for e in g2.eqns if e.primitive == "Softmax"]
    assert sm.params["precise"] and fired(report) == ["softmax"]
    got = mlxtriton.optimize(composed)(x).astype(mx.float32)
    assert abs(got.sum(axis=-1) - 1).max().item() < 0.02
    assert mx.allclose(got, composed(x).astype(mx.float32), rtol=2e-2, atol=1e-5)
    g2, _ = check(lambda x: composed(x.astype(mx.float32)), x)
    assert not [e for e in g2.eqns if e.primitive == "Softmax"][0].params["precise"]


def test_grouped_query_heads_repeated_are_read_once():
    q, k, v = qkv(b=2, h=8, hkv=2)

    def attn(q, k, v):
        k, v = mx.repeat(k, 4, axis=1), mx.repeat(v, 4, axis=1)
        return mx.softmax(q @ t(k) * 0.25, axis=-1) @ v

    g2, report = check(attn, q, k, v)
    only_sdpa(g2)
    e = sdpa(g2)
    assert e.inputs[1].shape == (2, 2, 8, 16) and e.inputs[1] in g2.inputs
    assert "8:2 heads" in [f for f in report.fired if f.rule == "attention"][0].detail

    def tiled(q, k, v):  # heads repeated kv-major: not SDPA's grouping; read repeated, still SDPA
        k, v = mx.tile(k, (1, 4, 1, 1)), mx.tile(v, (1, 4, 1, 1))
        return mx.softmax(q @ t(k) * 0.25, axis=-1) @ v

    g2, _ = check(tiled, q, k, v)
    assert sdpa(g2).inputs[1].shape == (2, 8, 8, 16)


def test_three_d_heads_and_mlx_own_fallback_shape():
    q, k, v = (a.reshape(4, 8, 16) for a in qkv())
    g2, _ = check(lambda q, k, v: mx.softmax(q @ t(k) * 0.25, axis=-1) @ v, q, k, v)
    only_sdpa(g2)
    q, k, v = qkv(h=4, hkv=2)  # on the CPU stream mx.fast SDPA decomposes into 5-d GQA
    g2, _ = check(lambda q, k, v: mx.fast.scaled_dot_product_attention(q, k, v, scale=0.3, mask="causal"), q, k, v)
    e = sdpa(g2)
    assert e.params["do_causal"] and e.inputs[1].shape == (1, 2, 8, 16)
    assert set(g2.primitive_counts()) <= {"ScaledDotProductAttention", "Reshape", "Transpose", "Multiply", "Broadcast"}


def test_llama_attention_module():
    cfg = examples.LlamaConfig()
    attn = examples.init_eval(examples.Attention(cfg))
    (x,) = examples.example_inputs("llama")
    g2, report = check(attn, x, tol=1e-4)
    assert g2.primitive_counts()["ScaledDotProductAttention"] == 1
    assert "Softmax" not in g2.primitive_counts()


# ---- near misses ----

def test_softmax_over_another_axis_is_a_near_miss():
    q, k, v = qkv()
    g2, report = check(lambda q, k, v: mx.softmax(q @ t(k), axis=2) @ v, q, k, v)
    assert "ScaledDotProductAttention" not in g2.primitive_counts()
    assert any("attention at #" in m and "softmax over axis 2, not the last axis" in m for m in misses(report))


def test_scale_after_the_softmax_is_a_near_miss():
    q, k, v = qkv()
    g2, report = check(lambda q, k, v: (mx.softmax(q @ t(k), axis=-1) * 0.25) @ v, q, k, v)
    assert "ScaledDotProductAttention" not in g2.primitive_counts()
    assert any("a scale after the softmax" in m for m in misses(report))


def test_probabilities_used_elsewhere_block_the_rewrite():
    q, k, v = qkv()

    def attn(q, k, v):
        p = mx.softmax(q @ t(k) * 0.25, axis=-1)
        return p @ v, p.mean()

    g2, report = check(attn, q, k, v)
    assert "ScaledDotProductAttention" not in g2.primitive_counts()
    assert any("(Softmax, f32[1,4,8,8]) is also used elsewhere" in m for m in misses(report))


def test_no_product_before_the_softmax_is_a_near_miss():
    q, k, v = qkv()
    g2, report = check(lambda s, v: mx.softmax(mx.sin(s), axis=-1) @ v, q @ t(k), v)
    assert "ScaledDotProductAttention" not in g2.primitive_counts()
    assert any("through Sin" in m for m in misses(report))


# ---- property ----

@settings(max_examples=10)
@given(b=st.sampled_from([1, 2]), hkv=st.sampled_from([1, 2]), rep=st.sampled_from([1, 3]),
       lq=st.sampled_from([1, 5, 8]), extra=st.sampled_from([0, 3]), d=st.sampled_from([4, 8]),
       dtype=st.sampled_from([mx.float32, mx.float16, mx.bfloat16]),
       mask=st.sampled_from(["none", "causal", "additive", "boolean"]),
       scale=st.sampled_from(["q", "scores", "divide"]))
def test_attention_matches_the_oracle(b, hkv, rep, lq, extra, d, dtype, mask, scale):
    lk = lq + extra
    q, k, v = qkv(b, hkv * rep, hkv, lq, lk, d, dtype, seed=lq * 7 + d)
    add = (mx.random.normal((lq, lk), key=mx.random.key(1)) * 2).astype(dtype)
    keep = mx.arange(lq)[:, None] + extra >= mx.arange(lk)[None]

    def attn(q, k, v, add):
        k, v = mx.repeat(k, rep, axis=1), mx.repeat(v, rep, axis=1)
        s = (q * (d ** -0.5)) @ t(k) if scale == "q" else q @ t(k)
        s = s * (d ** -0.5) if scale == "scores" else (s / math.sqrt(d) if scale == "divide" else s)
        if mask == "causal":
            s = s + nn.MultiHeadAttention.create_additive_causal_mask(lk)[-lq:].astype(s.dtype)
        elif mask == "additive":
            s = s + add
        elif mask == "boolean":
            s = mx.where(keep, s, -mx.inf)
        return mx.softmax(s, axis=-1, precise=True) @ v

    g2, report = check(attn, q, k, v, add)
    if dtype == mx.float16 and scale != "q":  # q @ k^T overflows past 65504 before the scale
        assert "ScaledDotProductAttention" not in g2.primitive_counts()
        return
    only_sdpa(g2)
    e = sdpa(g2)
    assert e.inputs[1].shape[1] == hkv
    if lq > 1:  # one query (the last position) sees every key: any of the masks means none
        assert e.params["do_causal"] == (mask in ("causal", "boolean"))
