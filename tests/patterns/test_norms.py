"""Rule 2: decomposed RMSNorm and LayerNorm become the RMSNorm / LayerNorm primitives (whose MLX
rules call mx.fast.*), in the spellings of MLX's CPU fallbacks (nn.RMSNorm, nn.LayerNorm, with
float32 casts in half precision) and of hand-written model code; near misses; the JAX oracle
over shapes and dtypes."""

import mlx.core as mx
import mlx.nn as nn
from hypothesis import given, settings, strategies as st

from mlxtriton.fusion import fuse
from tests.patterns._check import check, fired, misses


def data(shape=(2, 5, 32), dtype=mx.float32, seed=0):
    k1, k2, k3 = mx.random.split(mx.random.key(seed), 3)
    x = mx.random.normal(shape, key=k1).astype(dtype)
    w = (1 + 0.1 * mx.random.normal(shape[-1:], key=k2)).astype(dtype)
    b = (0.1 * mx.random.normal(shape[-1:], key=k3)).astype(dtype)
    return x, w, b


def norm_only(g2, prim):
    assert set(g2.primitive_counts()) <= {prim, "Reshape"}, g2


def test_fast_rms_norm_decomposed_on_the_cpu_in_every_float_dtype():
    for dtype in (mx.float32, mx.float16, mx.bfloat16):
        x, w, _ = data(dtype=dtype)
        g2, report = check(lambda x, w: mx.fast.rms_norm(x, w, 1e-5), x, w)
        norm_only(g2, "RMSNorm")
        (e,) = g2.eqns[-1:]
        assert e.inputs[1].shape == (32,) and abs(e.params["eps"] - 1e-5) < 1e-10


def test_hand_written_rms_norm_spellings():
    x, w, _ = data()
    for fn in (lambda x, w: x * mx.rsqrt(mx.mean(x * x, axis=-1, keepdims=True) + 1e-6) * w,
               lambda x, w: w * (x / mx.sqrt(mx.mean(x ** 2, axis=-1, keepdims=True) + 1e-6)),
               lambda x, w: x * mx.rsqrt(mx.sum(mx.square(x), -1, keepdims=True) / x.shape[-1] + 1e-6) * w):
        g2, _ = check(fn, x, w)
        norm_only(g2, "RMSNorm")
    g2, _ = check(lambda x: x * mx.rsqrt(mx.mean(x * x, axis=-1, keepdims=True) + 1e-6), x)
    assert g2.primitive_counts() == {"RMSNorm": 1} and g2.eqns[0].inputs[1].ndim == 0  # no weight


def test_module_norms():
    x, _, _ = data()
    rms = nn.RMSNorm(32)
    rms.weight = data()[1]
    g2, _ = check(rms, x)
    norm_only(g2, "RMSNorm")
    for affine in (True, False):
        ln = nn.LayerNorm(32, affine=affine)
        if affine:
            ln.weight, ln.bias = data()[1:]
        g2, _ = check(ln, x)
        norm_only(g2, "LayerNorm")


def test_layer_norm_spellings_and_casts():
    for dtype in (mx.float32, mx.bfloat16):
        x, w, b = data(dtype=dtype)
        g2, report = check(lambda x, w, b: mx.fast.layer_norm(x, w, b, 1e-5), x, w, b)
        norm_only(g2, "LayerNorm")
        assert g2.eqns[-1].inputs[2].shape == (32,)
    x, w, b = data()

    def by_hand(x, w, b):
        mu = mx.mean(x, axis=-1, keepdims=True)
        return (x - mu) / mx.sqrt(mx.var(x, axis=-1, keepdims=True) + 1e-5) * w + b

    g2, report = check(by_hand, x, w, b)
    norm_only(g2, "LayerNorm")
    assert fired(report) == ["layer_norm", "norm_weight", "norm_bias"]


def test_near_misses():
    x, w, _ = data()
    # a mean over another axis is no row norm
    g2, report = check(lambda x: x * mx.rsqrt(mx.mean(x * x, axis=1, keepdims=True) + 1e-6), x)
    assert "RMSNorm" not in g2.primitive_counts()
    assert any("the mean is over axes (1,), not the last axis" in m for m in misses(report))
    # the row statistic is also returned: rewriting would compute it twice
    g2, report = check(lambda x: (lambda r: (x * r, r))(mx.rsqrt(mx.mean(x * x, -1, keepdims=True) + 1e-6)), x)
    assert "RMSNorm" not in g2.primitive_counts() and any("also used elsewhere" in m for m in misses(report))
    # a full-shape multiplier is no weight: the norm is rewritten, the product stays
    g2, _ = check(lambda x, y: mx.fast.rms_norm(x, None, 1e-5) * y, x, x)
    assert g2.primitive_counts() == {"Multiply": 1, "RMSNorm": 1}


@settings(max_examples=8)
@given(shape=st.sampled_from([(7,), (3, 16), (2, 3, 40)]), dtype=st.sampled_from([mx.float32, mx.float16, mx.bfloat16]),
       kind=st.sampled_from(["rms", "layer"]), eps=st.sampled_from([1e-5, 1e-3]))
def test_norms_match_the_oracle(shape, dtype, kind, eps):
    x, w, b = data(shape, dtype, seed=len(shape))
    if kind == "rms":
        g2, _ = check(lambda x, w: mx.fast.rms_norm(x, w, eps), x, w)
        norm_only(g2, "RMSNorm")
    else:
        g2, _ = check(lambda x, w, b: mx.fast.layer_norm(x, w, b, eps), x, w, b)
        norm_only(g2, "LayerNorm")


def test_chip_dependent_choice_when_the_fuse_stage_follows():
    """On CUDA the generated row kernels measured at least as fast as mx.fast's norms (LayerNorm
    2.4x faster): with fusion to follow, norms stay (or become) decomposed for it."""
    from mlxtriton.graph import GraphBuilder, evaluate, verify
    from mlxtriton.patterns import optimize_patterns
    import mlxtriton

    x, w, b = data(dtype=mx.bfloat16)
    g = mlxtriton.trace(lambda x, w, b: mx.fast.layer_norm(x, w, b, 1e-5))(x, w, b)
    for chip, fusing, kept in (("h200", True, True), ("h200", False, False), ("m3", True, False)):
        g2, report = optimize_patterns(g, chip, fusing=fusing, on_rewrite=verify)
        assert ("LayerNorm" not in g2.primitive_counts()) == kept
        assert any(r.rule == "layer_norm" for r in report.recognised) == kept
    gb = GraphBuilder()
    xv, wv, bv = gb.input(x.shape, "bfloat16"), gb.input((32,), "bfloat16"), gb.input((32,), "bfloat16")
    (y,) = gb.add("LayerNorm", [xv, wv, bv], eps=1e-5)
    (z,) = gb.add("RMSNorm", [y, wv], eps=1e-5)
    g = gb.build([z])  # what a GPU trace holds
    g2, report = optimize_patterns(g, "h200", fusing=True, on_rewrite=verify)
    # the RMSNorm's input is then the LayerNorm's last pointwise step: both go to one row kernel
    assert not {"LayerNorm", "RMSNorm"} & set(g2.primitive_counts())
    assert [f.rule for f in report.fired if f.group == "norm"] == ["layer_norm_for_fusion", "rms_norm_for_fusion"]
    assert fuse(g2, "h200").primitive_counts() == {"Fused": 1}
    got, want = evaluate(g2, x, w, b), evaluate(g, x, w, b)
    assert mx.allclose(got.astype(mx.float32), want.astype(mx.float32), atol=6e-2).item()


def test_norm_primitives_decompose_as_mlx_gpu_kernels_compute():
    """A GPU trace's LayerNorm is MLX's kernel, which divides its sums by the row length: with
    eps = 0 a constant row of 41 ones is NaN there (41 / 41 is exactly 1). Multiplying by
    fl(1/41), as MLX's CPU fallback does, gave +-1 instead."""
    from mlxtriton.graph import GraphBuilder, evaluate, verify
    from mlxtriton.patterns import optimize_patterns

    gb = GraphBuilder()
    xv, wv, bv = gb.input((3, 41), "float32"), gb.input((41,), "float32"), gb.input((41,), "float32")
    (y,) = gb.add("LayerNorm", [xv, wv, bv], eps=0.0)
    (z,) = gb.add("RMSNorm", [xv, wv], eps=0.0)
    (r,) = gb.add("Multiply", [z, xv])  # read by pointwise work only: decomposed too
    g = gb.build([y, r])
    g2, report = optimize_patterns(g, "h200", fusing=True, on_rewrite=verify)
    assert {f.rule for f in report.fired if f.group == "norm"} == {"layer_norm_for_fusion",
                                                                    "rms_norm_for_fusion"}
    assert g2.primitive_counts().get("Divide") == 3  # two means, one mean square
    x = mx.stack([mx.ones((41,)), mx.full((41,), 3.0), mx.arange(41, dtype=mx.float32)])
    ln, rms = evaluate(g2, x, mx.ones((41,)), mx.zeros((41,)))
    assert mx.isnan(ln[:2]).all().item() and not mx.isnan(ln[2]).any().item()
    assert mx.allclose(rms, x * x * mx.rsqrt(mx.mean(x * x, axis=-1, keepdims=True))).item()


def test_a_half_norm_of_a_cast_reaches_a_fixed_point():
    """Fuzzer programs 48471 and 48798: a float16 norm whose input is a cast (of an integer `|`,
    of a softmax) cycled between the rule decomposing it for the fuse stage and the rules putting
    it back (`RewriteError`), because the decomposed form, whose own float32 cast precedes the
    user's, read as "not computed by pointwise work" and the fast op as "computed by it"."""
    import numpy as np

    import mlxtriton

    a = mx.array(np.arange(48).reshape(3, 16) % 7, mx.int32)
    b = mx.array(np.arange(48).reshape(3, 16) % 5, mx.int32)
    x, w, _ = data((129, 3), mx.float16)
    cases = [(lambda a, b: mx.fast.rms_norm((a | b).astype(mx.float16), None, 1e-5), (a, b)),
             (lambda x, w: mx.fast.layer_norm(mx.softmax(x, axis=0, precise=True), w, None, 0.0), (x, w))]
    for fn, args in cases:
        got = mlxtriton.optimize(fn, chip="m3")(*args)
        np.testing.assert_allclose(np.array(got), np.array(fn(*args)), atol=2e-3, rtol=2e-3)
