"""Every rewrite rule on its own: hypothesis builds the rule's pattern from random, well-typed
inputs that hold NaN, infinities, signed zeros and extreme integers, rewrites with the rules
before it in `DEFAULT_RULES` (so the rule sees the spelling it is written for), then with the rule
alone, and evaluates both graphs with MLX on the CPU.

A clean-up must keep every value bit for bit (NaN compared as NaN). A model rule (softmax,
norms, RoPE, attention, convolution folding, AddMM) swaps a decomposition for one of MLX's fused
ops, which rounds differently: it must keep NaN and infinities where they were and the finite
values up to the dtype's rounding. Rules that only recognise (notes) must leave the graph as it is.
"""

from __future__ import annotations

import math
from typing import Callable

import mlx.core as mx
import mlx.nn as nn
import numpy as np
import pytest
from hypothesis import given, settings, strategies as st

import mlxtriton
from mlxtriton import examples
from mlxtriton.graph import GraphBuilder, dtypes, evaluate, verify
from mlxtriton.patterns import CLEANUPS, DEFAULT_RULES, TARGET_RULES, Rules, rewrite

FLOATS = ("float32", "float16", "bfloat16")
SPECIALS = (np.nan, np.inf, -np.inf, -0.0, 0.0)
# Model rules: finite values agree up to the rounding of the fused op (float32: a few ulps of the
# row's largest value; halves: an ulp or two of values of order one).
TOL = {"float32": (1e-4, 1e-5), "float16": (5e-3, 5e-3), "bfloat16": (3e-2, 3e-2)}


# ---- inputs -------------------------------------------------------------------------------------


@st.composite
def arrays(draw, shape, dtype: str, specials: bool = True, extreme: bool = False, low=-3.0, high=3.0):
    """An evaluated array; a quarter of float elements special, integers up to their extremes."""
    rng = np.random.default_rng(draw(st.integers(0, 2**16)))
    if dtype == "bool":
        a = rng.random(shape) < 0.5
        return mx.array(a)
    if dtype in dtypes.INTEGER:
        a = rng.integers(-20, 21, shape)
        if extreme:
            info = np.iinfo(dtype)
            a = np.where(rng.random(shape) < 0.25, rng.choice([info.min, info.max, -1, 0, 1], shape), a)
        return mx.array(a.astype(np.int64), dtype=dtypes.to_mx(dtype))
    a = rng.uniform(low, high, shape).astype(np.float32)
    if specials:
        pool = SPECIALS + ((1e30, -1e30) if extreme else ())
        a = np.where(rng.random(shape) < 0.25, rng.choice(np.array(pool, np.float32), shape), a)
    out = mx.array(a.astype(np.float32)).astype(dtypes.to_mx(dtype))
    mx.eval(out)
    return out


def traced(fn: Callable, *args, context=None, fires: bool = True):
    return mlxtriton.trace(fn)(*args), list(args), context, fires


# ---- one case per rule: a strategy of (graph, arguments, rewrite context, whether it must fire) -
# Cases also draw the near relations a rule must refuse (x + 0.0, x / 3, float32 x ** 2, ...):
# there the rule must not fire, or must keep the values all the same.


@st.composite
def duplicate(draw):
    dtype = draw(st.sampled_from(FLOATS + ("int32",)))
    op = draw(st.sampled_from(["Exp", "Sin", "Abs", "Negative"] if dtype != "int32" else ["Abs", "Negative"]))
    b = GraphBuilder()
    x = b.input((3, 4), dtype)
    (y1,), (y2,) = b.add(op, [x]), b.add(op, [x])
    (z,) = b.add("Add", [y1, y2])
    return b.build([z]), [draw(arrays((3, 4), dtype, extreme=True))], None, True


@st.composite
def fold(draw):
    c = draw(arrays((), "float32", extreme=True))
    return traced(lambda x: x * (c * 3.0), draw(arrays((2, 3), "float32")))


@st.composite
def times_one(draw):
    dtype = draw(st.sampled_from(FLOATS + ("int32", "bool")))
    one = mx.array(1, dtypes.to_mx(dtype))
    spelling = draw(st.sampled_from(["x * 1", "1 * x", "x / 1"] if dtype in FLOATS else ["x * 1", "1 * x"]))
    fn = {"x * 1": lambda x: x * one, "1 * x": lambda x: one * x, "x / 1": lambda x: x / one}[spelling]
    return traced(fn, draw(arrays((3, 4), dtype, extreme=True)))


@st.composite
def plus_zero(draw):
    dtype = draw(st.sampled_from(FLOATS + ("int32", "bool")))
    d = dtypes.to_mx(dtype)
    x = draw(arrays((3, 4), dtype, extreme=True))
    if dtype == "bool":
        return traced(lambda x: x + mx.array(False), x)
    zero = draw(st.sampled_from([0.0, -0.0]))
    add = draw(st.booleans())
    fn = (lambda x: x + mx.array(zero, d)) if add else (lambda x: x - mx.array(zero, d))
    # a float x keeps -0.0 only through x + (-0.0) and x - 0.0
    fires = dtype not in FLOATS or add == (math.copysign(1.0, zero) < 0)
    return traced(fn, x, fires=fires)


@st.composite
def transpose_of_transpose(draw):
    p, q = draw(st.permutations(range(3))), draw(st.permutations(range(3)))
    dtype = draw(st.sampled_from(FLOATS + ("int32", "bool")))
    return traced(lambda x: x.transpose(p).transpose(q) * 1, draw(arrays((2, 3, 4), dtype, extreme=True)))


@st.composite
def reshape_of_reshape(draw):
    first = draw(st.sampled_from([(6, 4), (24,), (2, 12), (4, 3, 2)]))
    second = draw(st.sampled_from([(4, 6), (24, 1), (2, 3, 4), (1, 24)]))
    return traced(lambda x: mx.flatten(x.reshape(first)).reshape(second), draw(arrays((2, 3, 4), "float32")))


@st.composite
def identity_movement(draw):
    # MLX's front end drops these itself, so a pass is what makes them: built by hand.
    op = draw(st.sampled_from(["Reshape", "Broadcast", "Transpose"]))
    b = GraphBuilder()
    x = b.input((2, 3), "float32")
    params = {"axes": (0, 1)} if op == "Transpose" else {"shape": (2, 3)}
    (y,) = b.add(op, [x], **params)
    (z,) = b.add("Exp", [y])
    return b.build([z]), [draw(arrays((2, 3), "float32"))], None, True


@st.composite
def identity_cast(draw):
    dtype = draw(st.sampled_from(FLOATS + ("int32", "bool")))
    b = GraphBuilder()
    x = b.input((2, 3), dtype)
    (y,) = b.add("AsType", [x], dtype=dtype)
    (z,) = b.add("Abs", [y])
    return b.build([z]), [draw(arrays((2, 3), dtype, extreme=True))], None, True


_WIDENING = [("float16", "float32"), ("bfloat16", "float32"), ("int32", "int64"), ("bool", "float32"),
             ("bool", "int32"), ("uint8", "int32"), ("float32", "float16"), ("int32", "float32")]  # last two round


@st.composite
def cast_of_exact_cast(draw):
    src, wide = draw(st.sampled_from(_WIDENING))
    dst = draw(st.sampled_from([d for d in FLOATS + ("int32", "uint8", "bool") if d != wide]))
    floats_to_int = src in FLOATS and dst not in FLOATS + ("bool",)
    # a float -> int cast of NaN, inf or a value out of range is undefined in C++: finite values
    x = draw(arrays((3, 4), src, specials=not floats_to_int, extreme=True, low=0.0 if dst == "uint8" else -3.0))
    return traced(lambda x: x.astype(dtypes.to_mx(wide)).astype(dtypes.to_mx(dst)), x,
                  fires=(src, wide) not in (("float32", "float16"), ("int32", "float32")))


@st.composite
def broadcast_of_broadcast(draw):
    return traced(lambda x: mx.broadcast_to(mx.broadcast_to(x, (4, 1, 3)), (5, 4, 2, 3)) * 1,
                  draw(arrays((1, 3), "float32")))


@st.composite
def canonical_scalar(draw):
    value = draw(st.sampled_from([-0.0, 0.0, np.nan, np.inf, 2.5, "zeros of both signs"]))
    dtype = draw(st.sampled_from(FLOATS))
    mixed = value == "zeros of both signs"  # equal as numbers, but no one scalar
    k = mx.array([[0.0, -0.0, 0.0, -0.0]] if mixed else [[value] * 4], dtypes.to_mx(dtype))
    return traced(lambda x: x * k, draw(arrays((3, 4), dtype)), fires=not mixed)


@st.composite
def divide_by_scalar(draw):
    dtype = draw(st.sampled_from(FLOATS))
    s = draw(st.sampled_from([2.0, -4.0, 0.5, 1024.0, -2.0 ** -10, 3.0, 0.1, 2.0 ** -130]))
    # only powers of two whose reciprocal is a normal number of the type
    return traced(lambda x: x / mx.array(s, dtypes.to_mx(dtype)), draw(arrays((3, 4), dtype, extreme=True)),
                  fires=s in (2.0, -4.0, 0.5, 1024.0, -2.0 ** -10))


@st.composite
def reciprocal_sqrt(draw):
    dtype = draw(st.sampled_from(FLOATS))
    return traced(lambda y: mx.array(1.0, dtypes.to_mx(dtype)) / mx.sqrt(y), draw(arrays((3, 4), dtype, extreme=True)))


@st.composite
def square(draw):
    if draw(st.booleans()):
        dtype = draw(st.sampled_from(FLOATS + ("int32", "bool")))
        return traced(lambda x: x * x, draw(arrays((3, 4), dtype, extreme=True)))
    dtype = draw(st.sampled_from(("float32", "float16", "bfloat16", "int32")))
    two = mx.array(2, dtypes.to_mx(dtype))
    return traced(lambda x: x ** two, draw(arrays((3, 4), dtype, extreme=True)), fires=dtype != "float32")


@st.composite
def one_hot_scatter(draw):
    dtype = draw(st.sampled_from(FLOATS))
    d = dtypes.to_mx(dtype)
    u = draw(arrays((4, 1), dtype))
    if draw(st.booleans()):  # put_along_axis: negative indices wrap (MLX may crash out of range)
        zero = draw(st.sampled_from([0.0, -0.0]))
        idx = mx.array(draw(st.lists(st.integers(-6, 5), min_size=4, max_size=4)), mx.int32)[:, None]
        return traced(lambda u, i: mx.put_along_axis(mx.full((4, 6), zero, d), i, u, axis=1), u, idx)
    # the VJP of take_along_axis: a scatter-add into zeros (0.0 + -0.0 is 0.0)
    idx = mx.array(draw(st.lists(st.integers(0, 5), min_size=4, max_size=4)), mx.int32)[:, None]
    return traced(lambda u, i: mx.vjp(lambda x: mx.take_along_axis(x, i, axis=1), [mx.zeros((4, 6), d)], [u])[1][0],
                  u, idx)


@st.composite
def softmax(draw):
    dtype = draw(st.sampled_from(FLOATS))
    shifted = draw(st.booleans())  # without the max, exp overflows where Softmax does not

    def fn(x):
        e = mx.exp(x - mx.max(x, axis=-1, keepdims=True) if shifted else x)
        return e / mx.sum(e, axis=-1, keepdims=True)

    return traced(fn, draw(arrays((3, 5), dtype, extreme=True)), fires=shifted)


@st.composite
def softmax_in_float32(draw):
    dtype = draw(st.sampled_from(("float16", "bfloat16")))
    return traced(lambda x: mx.softmax(x.astype(mx.float32), axis=-1).astype(x.dtype), draw(arrays((3, 5), dtype)))


@st.composite
def layer_norm_for_fusion(draw):
    # A GPU trace holds the LayerNorm primitive; with the fuse stage next on CUDA it is decomposed.
    dtype = draw(st.sampled_from(FLOATS))
    b = GraphBuilder()
    x, w, bias = b.input((3, 16), dtype), b.input((16,), dtype), b.input((16,), dtype)
    (y,) = b.add("LayerNorm", [x, w, bias], eps=1e-5)
    args = [draw(arrays((3, 16), dtype)), draw(arrays((16,), dtype)), draw(arrays((16,), dtype))]
    cuda = {"backend": "cuda", "fusing": True, "tuning": mlxtriton.hw.tuning.tuning(mlxtriton.hw.profile("h200"))}
    return b.build([y]), args, cuda, True


@st.composite
def rms_norm_for_fusion(draw):
    # An RMSNorm primitive (a GPU trace's) read by pointwise work only, or whose input pointwise
    # work computes (a residual add), is decomposed for the fuse stage, where one generated
    # kernel then reads fewer bytes; read by a matmul, of a graph input, it stays.
    dtype = draw(st.sampled_from(FLOATS))
    pointwise, residual = draw(st.booleans()), draw(st.booleans())
    b = GraphBuilder()
    x, w, g = b.input((3, 16), dtype), b.input((16,), dtype), b.input((3, 16), dtype)
    h = b.add("Add", [x, g])[0] if residual else x
    (y,) = b.add("RMSNorm", [h, w], eps=1e-5)
    (z,) = b.add("Multiply", [y, g]) if pointwise else b.add("Matmul", [y, b.add("Transpose", [g], axes=(1, 0))[0]])
    args = [draw(arrays((3, 16), dtype)), draw(arrays((16,), dtype)), draw(arrays((3, 16), dtype))]
    outputs = [z, h] if residual else [z]  # the residual stream reads the sum on
    context = {"backend": draw(st.sampled_from(["metal", "cuda"])), "fusing": True}
    return b.build(outputs), args, context, pointwise or residual


@st.composite
def layer_norm(draw):
    dtype = draw(st.sampled_from(FLOATS))  # a float16 norm is left alone

    def fn(x):
        mu = mx.mean(x, axis=-1, keepdims=True)
        d = x - mu
        var = mx.sum(d * d, axis=-1, keepdims=True) / x.shape[-1]
        return d / mx.sqrt(var + 1e-5) if draw_divide else d * mx.rsqrt(var + 1e-5)

    draw_divide = draw(st.booleans())
    return traced(fn, draw(arrays((3, 16), dtype, low=-300, high=300)), fires=dtype != "float16")


@st.composite
def rms_norm(draw):
    dtype = draw(st.sampled_from(FLOATS))
    spelling = draw(st.sampled_from(["fast", "rsqrt", "divide"]))
    fn = {
        "fast": lambda x: mx.fast.rms_norm(x, None, 1e-5),  # MLX's CPU fallback
        "rsqrt": lambda x: x * mx.rsqrt(mx.mean(mx.square(x), axis=-1, keepdims=True) + 1e-6),
        "divide": lambda x: x / mx.sqrt(mx.sum(x * x, axis=-1, keepdims=True) / x.shape[-1] + 1e-6),
    }[spelling]
    # mx.fast.rms_norm computes in float32 on the CPU; a norm computed in float16 is left alone
    return traced(fn, draw(arrays((3, 16), dtype, low=-300, high=300)), fires=dtype != "float16" or spelling == "fast")


@st.composite
def norm_in_float32(draw):
    dtype = draw(st.sampled_from(("float16", "bfloat16")))
    if draw(st.booleans()):
        return traced(lambda x: mx.fast.rms_norm(x, None, 1e-5), draw(arrays((3, 16), dtype)))
    return traced(lambda x: mx.fast.layer_norm(x, None, None, 1e-5), draw(arrays((3, 16), dtype)))


@st.composite
def norm_weight(draw):
    dtype = draw(st.sampled_from(FLOATS))
    x, w = draw(arrays((3, 16), dtype)), draw(arrays((16,), dtype))
    if draw(st.booleans()):
        return traced(lambda x, w: mx.fast.rms_norm(x, w, 1e-5), x, w)
    return traced(lambda x, w: mx.fast.layer_norm(x, w, None, 1e-5), x, w)


@st.composite
def norm_bias(draw):
    dtype = draw(st.sampled_from(FLOATS))
    args = [draw(arrays((3, 16), dtype)), draw(arrays((16,), dtype)), draw(arrays((16,), dtype))]
    return traced(lambda x, w, b: mx.fast.layer_norm(x, w, b, 1e-5), *args)


@st.composite
def rope(draw, traditional=False):
    dtype = draw(st.sampled_from(("float32", "bfloat16")))
    dims = draw(st.sampled_from([4, 8, 16]))
    base, scale, offset = draw(st.sampled_from([10000.0, 500.0])), draw(st.sampled_from([1.0, 0.5])), draw(st.integers(0, 5))
    # a traditional rotation of part of the row is not recognised
    return traced(lambda x: mx.fast.rope(x, dims, traditional=traditional, base=base, scale=scale, offset=offset),
                  draw(arrays((1, 2, 5, 16), dtype)), fires=not traditional or dims == 16)


def rope_traditional():
    return rope(traditional=True)


@st.composite
def attention(draw):
    dtype = draw(st.sampled_from(FLOATS))
    mask = draw(st.sampled_from(["none", "additive", "boolean", "causal"]))
    on_q = draw(st.booleans())
    # Finite q and k: SDPA fills what a mask hides with the lowest finite value where the softmax
    # meets -inf, so infinite or NaN scores may tell them apart. v may hold anything.
    q, k = draw(arrays((1, 2, 4, 8), dtype, specials=False)), draw(arrays((1, 2, 6, 8), dtype, specials=False))
    v = draw(arrays((1, 2, 6, 8), dtype))
    add = draw(arrays((4, 6), dtype, specials=False))
    keep = mx.array(draw(st.lists(st.booleans(), min_size=24, max_size=24))).reshape(4, 6)  # rows may hide all

    def fn(q, k, v, add, keep):
        s = (q * 8 ** -0.5) @ k.swapaxes(-1, -2) if on_q else (q @ k.swapaxes(-1, -2)) * 8 ** -0.5
        if mask == "additive":
            s = s + add
        elif mask == "boolean":
            s = mx.where(keep, s, -mx.inf)
        elif mask == "causal":
            s = s + examples.causal_mask(6)[-4:].astype(s.dtype)
        return mx.softmax(s, axis=-1) @ v

    # float16 scores overflow past 65504 before a scale applied to them, where SDPA scales q
    return traced(fn, q, k, v, add, keep, fires=on_q or dtype != "float16")


@st.composite
def attention_for_fusion(draw):
    # An SDPA primitive with an array mask (a GPU trace's) at decode for CUDA: the grouped form.
    # cuDNN takes half-precision queries of more than one row (there SDPA stays), Metal every one.
    dtype = draw(st.sampled_from(FLOATS))
    lq, repeats = draw(st.sampled_from([1, 2, 5])), draw(st.sampled_from([1, 4]))
    boolean = draw(st.booleans())
    backend = draw(st.sampled_from(["cuda", "metal"]))
    b = GraphBuilder()
    q, k, v = b.input((1, 2 * repeats, lq, 8), dtype), b.input((1, 2, 6, 8), dtype), b.input((1, 2, 6, 8), dtype)
    m = b.input((lq, 6), "bool" if boolean else dtype)
    (full,) = b.add("Broadcast", [m], shape=(1, 2 * repeats, lq, 6))
    (y,) = b.add("ScaledDotProductAttention", [q, k, v, full], scale=8 ** -0.5, do_causal=False,
                 has_sinks=False, output_logsumexp=False, force_fused=False)
    args = [draw(arrays(q.shape, dtype, specials=False)), draw(arrays(k.shape, dtype, specials=False)),
            draw(arrays(v.shape, dtype)), draw(arrays(m.shape, m.dtype, specials=False))]
    fires = backend == "cuda" and lq < 4 and (lq == 1 or dtype == "float32")
    return b.build([y]), args, {"backend": backend, "fusing": True}, fires


@st.composite
def softmax_of_a_transpose(draw):
    # A softmax over a strided axis of x, read by the outputs, a matmul or pointwise work (there
    # the rows are read strided either way: no rewrite), for a GPU's fuse stage.
    dtype = draw(st.sampled_from(FLOATS))
    shape, axes = draw(st.sampled_from([((5, 7), (1, 0)), ((2, 5, 3), (0, 2, 1)), ((3, 4, 5), (2, 0, 1)),
                                        ((4, 6), (0, 1))]))
    reader = draw(st.sampled_from(["output", "matmul", "pointwise"]))
    b = GraphBuilder()
    x = b.input(shape, dtype)
    (t,) = b.add("Transpose", [x], axes=axes)
    (y,) = b.add("Softmax", [t], precise=False)
    args = [draw(arrays(shape, dtype))]
    if reader == "matmul":
        w = b.input((shape[axes[-1]], 3), dtype)
        (y,) = b.add("Matmul", [y, w])
        args.append(draw(arrays(w.shape, dtype, specials=False)))
    elif reader == "pointwise":
        (y,) = b.add("Exp", [y])
    last_two = axes == (*range(len(shape) - 2), len(shape) - 1, len(shape) - 2)
    fires = axes[-1] != len(shape) - 1 and (reader == "output" or reader == "matmul" and last_two)
    return b.build([y]), args, {"backend": draw(st.sampled_from(["cuda", "metal"])), "fusing": True}, fires


@st.composite
def conv(draw, rule):
    # Constant weights, bias and per-channel statistics (batch-norm in inference mode), as a
    # module's parameters are when traced as constants.
    cout = draw(st.sampled_from([1, 4]))
    w = draw(arrays((cout, 3, 3, 3), "float32", specials=False))
    b = draw(arrays((cout,), "float32", specials=False)) if draw(st.booleans()) else None
    stat = draw(arrays((cout,), "float32", specials=False, low=0.25, high=2.0))
    zero_scale = rule == "conv_scale" and draw(st.booleans())
    if zero_scale:  # folding a zero scale into the weights changes what an overflow gives
        stat = stat * (mx.arange(cout) % 2).astype(mx.float32)

    def fn(x):
        y = mx.conv2d(x, w, padding=1)
        y = y if b is None else y + b
        if rule == "conv_scale":
            return y * stat
        if rule == "conv_shift":
            return y - stat
        return y + b + stat if b is not None else (y + stat) + stat

    return traced(fn, draw(arrays((1, 5, 5, 3), "float32", extreme=True)), fires=not zero_scale)


@st.composite
def matmul_add(draw):
    dtype = draw(st.sampled_from(FLOATS))
    x, w = draw(arrays((3, 8), dtype)), draw(arrays((5, 8), dtype))
    c = draw(arrays(draw(st.sampled_from([(5,), (3, 5)])), dtype))
    big = dtype == "float16" and draw(st.booleans())
    if big:  # the float16 product overflows past 65504 before the add
        x = x * 200
    fires = dtype != "float16"  # AddMM adds in float32
    if draw(st.booleans()):
        return traced(lambda x, w, c: x @ w.T + c, x, w, c, fires=fires)
    return traced(lambda x, w, c: (x @ w.T) * 0.5 + c, x, w, c, fires=fires)


CASES: dict[str, Callable[[], st.SearchStrategy]] = {
    "duplicate": duplicate, "fold": fold, "times_one": times_one, "plus_zero": plus_zero,
    "transpose_of_transpose": transpose_of_transpose, "reshape_of_reshape": reshape_of_reshape,
    "identity_movement": identity_movement, "identity_cast": identity_cast,
    "cast_of_exact_cast": cast_of_exact_cast, "broadcast_of_broadcast": broadcast_of_broadcast,
    "canonical_scalar": canonical_scalar, "divide_by_scalar": divide_by_scalar,
    "reciprocal_sqrt": reciprocal_sqrt, "square": square, "one_hot_scatter": one_hot_scatter,
    "softmax": softmax, "softmax_in_float32": softmax_in_float32,
    "layer_norm_for_fusion": layer_norm_for_fusion, "rms_norm_for_fusion": rms_norm_for_fusion,
    "layer_norm": layer_norm, "rms_norm": rms_norm,
    "norm_in_float32": norm_in_float32, "norm_weight": norm_weight, "norm_bias": norm_bias,
    "rope": rope, "rope_traditional": rope_traditional, "attention": attention,
    "attention_for_fusion": attention_for_fusion, "softmax_of_a_transpose": softmax_of_a_transpose,
    "conv_scale": lambda: conv("conv_scale"), "conv_shift": lambda: conv("conv_shift"),
    "conv_bias_sum": lambda: conv("conv_bias_sum"), "matmul_add": matmul_add,
}


def _names(rules) -> list[str]:
    return list(dict.fromkeys(r.name for r in rules))


# Rules that only recognise a shape and report it: they never rewrite.
NOTES = [name for name in _names(DEFAULT_RULES) if name.endswith(("_epilogue", "_gate"))]


# The pattern stage's phases as one table (TARGET_RULES repeat the clean-ups): rule by rule, in order.
ALL_RULES = DEFAULT_RULES + Rules([r for r in TARGET_RULES if r.group != "cleanup"])


def test_every_rule_has_a_case():
    assert set(_names(ALL_RULES)) == set(CASES) | set(NOTES)


# ---- comparing ----------------------------------------------------------------------------------


def _numpy(a) -> np.ndarray:
    return dtypes.to_numpy(a) if isinstance(a, mx.array) else np.asarray(a)


def assert_same(want, got, exact: bool):
    want = want if isinstance(want, tuple) else (want,)
    got = got if isinstance(got, tuple) else (got,)
    assert len(want) == len(got)
    for i, (w, g) in enumerate(zip(want, got)):
        assert w.dtype == g.dtype and w.shape == g.shape, f"output {i}: {g.dtype}{g.shape} != {w.dtype}{w.shape}"
        if not mx.issubdtype(w.dtype, mx.inexact):
            np.testing.assert_array_equal(_numpy(g), _numpy(w), err_msg=f"output {i}")
            continue
        wn, gn = _numpy(w.astype(mx.float32)), _numpy(g.astype(mx.float32))
        np.testing.assert_array_equal(np.isnan(gn), np.isnan(wn), err_msg=f"output {i}: NaN moved")
        if exact:
            bits = {2: mx.uint16, 4: mx.uint32}[w.dtype.size]
            same = (_numpy(w.view(bits)) == _numpy(g.view(bits))) | np.isnan(wn)
            assert same.all(), f"output {i} differs at {np.argwhere(~same)[:4].tolist()}:\n{wn}\n{gn}"
            continue
        np.testing.assert_array_equal(np.isposinf(gn), np.isposinf(wn), err_msg=f"output {i}: +inf moved")
        np.testing.assert_array_equal(np.isneginf(gn), np.isneginf(wn), err_msg=f"output {i}: -inf moved")
        finite = np.isfinite(wn)
        rtol, atol = TOL[dtypes.from_mx(w.dtype)]
        np.testing.assert_allclose(gn[finite], wn[finite], rtol=rtol, atol=atol * max(1.0, np.abs(wn[finite]).max(initial=0)),
                                   err_msg=f"output {i}")


def _before(name: str) -> Rules:
    """The rules ahead of ``name`` in the pattern stage: they make the spelling it is written for."""
    first = next(i for i, r in enumerate(ALL_RULES) if r.name == name)
    return Rules(ALL_RULES.rules[:first])


# ---- the properties -----------------------------------------------------------------------------


@pytest.mark.parametrize("name", sorted(CASES))
@settings(max_examples=30)
@given(data=st.data())
def test_rule_keeps_every_value(name, data):
    graph, args, context, fires = data.draw(CASES[name](), label="case")
    before, _ = rewrite(graph, _before(name), context=context)
    after, report = rewrite(before, Rules([r for r in ALL_RULES if r.name == name]), context=context,
                            on_rewrite=verify)
    assert (report.rules_fired().get(name, 0) >= 1) == fires, f"{name} fired: {not fires}\n{before}"
    exact = next(r for r in ALL_RULES if r.name == name).group == "cleanup"
    assert_same(evaluate(before, *args), evaluate(after, *args), exact)


def test_notes_never_rewrite():
    w1, w3 = mx.random.normal((8, 4), key=mx.random.key(1)), mx.random.normal((8, 4), key=mx.random.key(2))
    x = mx.random.normal((3, 4), key=mx.random.key(3))
    for fn in (lambda x: nn.silu(x @ w1.T) * (x @ w3.T), lambda x: nn.gelu(x @ w1.T) * (x @ w3.T),
               lambda x: nn.relu(x @ w1.T), lambda x: nn.gelu_approx(x @ w1.T), lambda x: nn.gelu_fast_approx(x @ w1.T)):
        g, _ = rewrite(mlxtriton.trace(fn)(x), CLEANUPS)
        g2, report = rewrite(g, Rules([r for r in DEFAULT_RULES if r.name in NOTES]))
        assert g2 == g and report.recognised and not report.fired


def test_stop_gradient_kept_by_the_softmax_rule_is_harmless():
    # exp(x - stop_gradient(max x)) / sum(...) becomes Softmax(x): the value is the same, and so is
    # the gradient (the max's gradient through the shift cancels in exact arithmetic).
    x = mx.random.normal((3, 5), key=mx.random.key(4))

    def fn(x):
        e = mx.exp(x - mx.stop_gradient(mx.max(x, axis=-1, keepdims=True)))
        return e / mx.sum(e, axis=-1, keepdims=True)

    g = mlxtriton.trace(fn)(x)
    g2, report = rewrite(g, DEFAULT_RULES)
    assert g2.primitive_counts() == {"Softmax": 1}
    np.testing.assert_allclose(np.array(evaluate(g2, x)), np.array(fn(x)), rtol=1e-6, atol=1e-7)
