"""Patterns layer: the algebraic clean-ups the model rules build on (issue 5, rule 6), after
which a scalar is ``Broadcast(0-d constant)``, views and casts are as short as they can be, and a
division by a power of two a multiplication. May import mlx and mlxtriton.graph.

Every clean-up is an identity in MLX's arithmetic over the whole domain, bit for bit: NaN,
infinities, -0.0 and integer wrap-around included (tests/patterns/test_rules.py checks each rule
on its own). So x + 0.0 stays where x may be -0.0, x / 3 stays a division, exp(log(x)) stays.
"""

from __future__ import annotations

import math

import mlx.core as mx

from mlxtriton.graph import dtypes
from mlxtriton.graph.primitives import RESHAPES, Family, family

from mlxtriton.patterns._values import VALUE_PRESERVING
from mlxtriton.patterns.pattern import P
from mlxtriton.patterns.rewrite import Match, Rules

# The rules: an equation computed twice merges, constant folding (small results only), scalar
# and broadcast canonicalisation, transpose of transpose, reshape chains, x * 1, x + (-0.0),
# x - 0.0, x / 2^k == x * 2^-k, 1 / sqrt(y) == rsqrt(y), x * x == square(x), exact casts skipped,
# a scatter of one index per row into zeros == a compare and select.

# Folding makes small constants only (as graph.fold_constants): a 4096 x 4096 folded transpose
# would double a weight's memory. A Broadcast is left alone: a broadcast scalar is the canonical
# scalar form, and folding it would only spend memory.
FOLD_MAX_ELEMENTS = 1024
_FOLDABLE = (family(Family.UNARY) | family(Family.BINARY) | family(Family.TERNARY)
             | family(Family.REDUCE) | family(Family.MOVEMENT)) - {"Broadcast", "BroadcastAxes"}
# Casts that keep every value exactly (so a cast chain through them can skip them).
_EXACT_WIDENING = {
    ("float16", "float32"), ("bfloat16", "float32"), ("float16", "float64"),
    ("bfloat16", "float64"), ("float32", "float64"),
    ("int8", "int16"), ("int8", "int32"), ("int8", "int64"), ("int16", "int32"),
    ("int16", "int64"), ("int32", "int64"), ("uint8", "int16"), ("uint8", "int32"),
    ("uint8", "int64"), ("uint16", "int32"), ("uint16", "int64"), ("uint32", "int64"),
    ("bool", "float32"), ("bool", "int32"),
}


def exact_cast(src: str, dst: str) -> bool:
    """True when casting ``src`` to ``dst`` keeps every value."""
    return src == dst or (src, dst) in _EXACT_WIDENING


def _same_as_x(m: Match):
    x = m["x"]
    return x if x.aval == m.root.outputs[0].aval else None


def duplicate(m: Match):  # op(x) computed again -> the first op(x)
    first = m.values.earlier_equal(m.root)
    if first is not None:
        m.detail = m.root.primitive
    return first


def fold(m: Match):  # op(constants) -> constant
    e = m.root
    if not e.inputs or any(v not in m.graph.const_values for v in e.inputs):
        return None
    out = e.outputs[0]
    if out.size > FOLD_MAX_ELEMENTS:
        return None
    value = m.values.value(out, max_elements=FOLD_MAX_ELEMENTS)
    if value is None:
        return None
    m.detail = f"{e.primitive} of constants"
    return m.constant(value)


def times_one(m: Match):  # x * 1 -> x, x / 1 -> x
    if m.root.outputs[0].dtype == "complex64":
        return None  # (a + bi)(1 + 0i) has a - b * 0: NaN where b is infinite
    return _same_as_x(m)


def plus_zero(m: Match):  # x + (-0.0) -> x, x - 0.0 -> x (any zero for integers)
    # -0.0 + 0.0 is +0.0: a float x may only lose a zero of the sign that leaves -0.0 alone.
    dtype = m.root.outputs[0].dtype
    if dtype == "complex64":
        return None  # the zero's real and imaginary signs would both have to be right
    if dtype in dtypes.FLOATING:
        negative = math.copysign(1.0, m.value("zero")) < 0
        if negative != (m.root.primitive == "Add"):
            return None
    return _same_as_x(m)


def transpose_of_transpose(m: Match):  # transpose(transpose(x, p), q) -> transpose(x, p[q]) or x
    inner = m.eqn("inner").params["axes"]
    outer = m.root.params["axes"]
    perm = tuple(inner[a] for a in outer)
    if perm == tuple(range(len(perm))):
        return m["x"]
    return m.add("Transpose", [m["x"]], axes=perm)


def reshape_of_reshape(m: Match):  # reshape(reshape(x)) -> reshape(x) or x
    return m.reshape(m["x"], m.root.outputs[0].shape)


def identity_movement(m: Match):  # reshape / broadcast to x's own shape, identity transpose -> x
    axes = m.root.params.get("axes") if m.root.primitive == "Transpose" else None
    if axes is not None and tuple(axes) != tuple(range(len(axes))):
        return None
    return _same_as_x(m)


def identity_cast(m: Match):  # astype(x, x.dtype) -> x
    return _same_as_x(m)


def cast_of_exact_cast(m: Match):  # astype(astype(x, wider), t) -> astype(x, t) or x
    x, wide = m["x"], m["wide"]
    if not exact_cast(x.dtype, wide.dtype):
        return None
    return m.astype(x, m.root.params["dtype"])


def broadcast_of_broadcast(m: Match):  # broadcast(broadcast(x)) -> broadcast(x)
    return m.add("Broadcast", [m["x"]], shape=m.root.outputs[0].shape)


def canonical_scalar(m: Match):  # movement(scalar) -> Broadcast(0-d constant)
    e, out = m.root, m.root.outputs[0]
    src = e.inputs[0]
    if e.primitive == "Broadcast" and src.ndim == 0:
        return None  # already canonical
    if src.ndim == 0 and out.ndim == 0:
        return None
    value = m.value("s")
    m.detail = f"{value!r} as a broadcast 0-d constant"
    return m.splat(value, out)


def divide_by_scalar(m: Match):  # x / 2^k -> x * 2^-k
    # Exact only where 1/s is exact: x / s and x * (1/s) then round the same real number. Other
    # divisors stay divisions (x / 3 and x * 0.333... differ in the last bit).
    out, s = m.root.outputs[0], m.value("s")
    if out.dtype not in dtypes.FLOATING or not isinstance(s, (int, float)) or s == 0 or not math.isfinite(s):
        return None
    mantissa, exponent = math.frexp(abs(s))
    info = mx.finfo(dtypes.to_mx(out.dtype))
    if mantissa != 0.5 or not float(info.smallest_normal) <= 2.0 ** (1 - exponent) <= float(info.max):
        return None  # not a power of two, or 1/s out of the type's normal range
    if m["x"].aval != out.aval:
        return None
    m.detail = f"x / {s!r} -> x * {1.0 / s!r}"
    return m.add("Multiply", [m["x"], m.splat(1.0 / s, out)])


def reciprocal_sqrt(m: Match):  # 1 / sqrt(y) -> rsqrt(y) (MLX's rsqrt is 1 / sqrt, bit for bit)
    r = m.add("Sqrt", [m["y"]], reciprocal=True)
    if "b" in m:
        r = m.add("Broadcast", [r], shape=m["b"].shape)
    return r if r.aval == m.root.outputs[0].aval else None


def square(m: Match):  # x ** 2 -> square(x), x * x -> square(x)
    if m["x"].aval != m.root.outputs[0].aval:
        return None
    # MLX's float32 pow(x, 2) is not always x * x rounded (its powf is off by an ulp at times);
    # a half's square is exact in the float32 that pow computes in, and integers multiply.
    if m.root.primitive == "Power" and m["x"].dtype in ("float32", "float64"):
        return None
    return m.add("Square", [m["x"]])


def one_hot_scatter(m: Match):  # put_along_axis(zeros, idx, u) with one index per row -> select
    """``out[..., c, ...] = u[...] if c == idx[...] else 0``: a compare and a select that fuse into
    the kernel reading ``out``, where MLX's scatter writes zeros, copies and scatters (three
    passes over ``out``). MLX's VJP of ``take_along_axis`` (cross-entropy's label pick) is this
    scatter. Negative indices wrap as MLX's do; an out-of-range index leaves its row zero, as
    MLX's scatter drops it. A scatter-add adds the update to the zero (0.0 + -0.0 is 0.0), and
    the zero keeps its sign."""
    e, out = m.root, m.root.outputs[0]
    idx, upd, zero = m["idx"], m["upd"], m.value("zero")
    axis = e.params["axis"] % out.ndim
    if (idx.shape != upd.shape or idx.shape[axis] != 1 or upd.dtype != out.dtype
            or any(idx.shape[k] != out.shape[k] for k in range(out.ndim) if k != axis)
            or idx.dtype not in dtypes.INTEGER):
        return None
    n = out.shape[axis]
    iota = m.reshape(m.constant(mx.arange(n, dtype=dtypes.to_mx(idx.dtype))),
                     [n if k == axis else 1 for k in range(out.ndim)])
    if idx.dtype in dtypes.SIGNED:
        negative = m.add("Less", [idx, m.splat(0, idx)])
        idx = m.add("Select", [negative, m.add("Add", [idx, m.splat(n, idx)]), idx])
    hit = m.add("Equal", [m.add("Broadcast", [iota], shape=out.shape),
                          m.add("Broadcast", [idx], shape=out.shape)], equal_nan=False)
    m.detail = f"{e.params['kind']} of one index per row along axis {axis}"
    zeros = m.splat(zero, out)
    value = m.add("Broadcast", [upd], shape=out.shape)
    if e.params["kind"] == "sum":
        value = m.add("Add", [zeros, value])
    return m.add("Select", [hit, value, zeros])


_x = P.var("x")
_zero = P.scalar("zero", value=0.0)
_sqrt = P("Sqrt", P.var("y"), where=lambda e: not e.params["reciprocal"])
_maybe_broadcast_sqrt = P("Broadcast", _sqrt, name="b") | _sqrt

CLEANUPS = Rules(
    [
        (P.var(), duplicate),
        (P(_FOLDABLE, any_src=True), fold),
        (P("Multiply", _x, P.scalar(value=1.0)), times_one),
        (P("Divide", _x, P.scalar(value=1.0)), times_one),
        (P("Add", _x, _zero), plus_zero),
        (P("Subtract", _x, _zero), plus_zero),
        (P("Transpose", P("Transpose", _x, name="inner")), transpose_of_transpose),
        (P(RESHAPES, P(RESHAPES, _x)), reshape_of_reshape),
        (P(RESHAPES | {"Broadcast", "Transpose"}, _x), identity_movement),
        (P("AsType", _x), identity_cast),
        (P("AsType", P("AsType", _x, name="wide")), cast_of_exact_cast),
        (P("Broadcast", P("Broadcast", _x)), broadcast_of_broadcast),
        (P(VALUE_PRESERVING, P.scalar("s")), canonical_scalar),
        (P("Divide", _x, P.scalar("s")), divide_by_scalar),
        (P("Divide", P.scalar(value=1.0), _maybe_broadcast_sqrt), reciprocal_sqrt),
        (P("Power", _x, P.scalar(value=2.0)), square),
        (P("Multiply", _x, _x), square),
        (P("ScatterAxis", _zero, P.var("idx"), P.var("upd"),
           where=lambda e: e.params["kind"] in ("sum", "none")), one_hot_scatter),
    ],
    group="cleanup",
    # Clean-ups rewrite views and single cheap ops: one kept alive by another user costs nothing.
    exclusive=False,
)
