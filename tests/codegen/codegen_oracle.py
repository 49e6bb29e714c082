"""Test tooling: evaluate a Region op by op with JAX (the unfused program), and shared region
factories and input generators for the codegen tests.

``promote_halves=True`` computes float16/bfloat16 values in float32 and rounds only at explicit
AsType ops and at the outputs, the documented semantics of generated kernels; ``False`` rounds
after every op, as unfused MLX does.
"""

from __future__ import annotations

import math

import jax
import jax.numpy as jnp
import numpy as np
from jax import lax

from mlxtriton.codegen.interpret import numpy_dtype
from mlxtriton.codegen.region import Region, RegionBuilder
from mlxtriton.graph._shared_rules import slices

jax.config.update("jax_platforms", "cpu")

_REDUCE_CODES = ("and", "or", "sum", "prod", "min", "max")


def _kind(o):
    k = o.param("kind")
    return _REDUCE_CODES[k] if isinstance(k, int) else k


def _sign(x):
    return jnp.where(jnp.isnan(x), jnp.zeros_like(x), jnp.sign(x)) if jnp.issubdtype(
        x.dtype, jnp.floating) else jnp.sign(x)


def _div(a, b):
    return lax.div(a, b) if jnp.issubdtype(a.dtype, jnp.integer) else a / b


def _pow(a, b):
    if jnp.issubdtype(a.dtype, jnp.integer):
        return jnp.where(b < 0, jnp.zeros_like(a), lax.integer_pow(a, 1) ** jnp.maximum(b, 0))
    return jnp.power(a, b)


def _reduce(x, o):
    kind, axes = _kind(o), tuple(o.param("axes"))
    if kind in ("sum", "prod") and x.dtype == jnp.bool_:
        x = x.astype(jnp.int32)
    fn = {"sum": jnp.sum, "prod": jnp.prod, "max": jnp.max, "min": jnp.min,
          "and": jnp.all, "or": jnp.any}[kind]
    return fn(x, axis=axes, keepdims=True)


def _arg_reduce(x, o):
    kind = o.param("kind")
    kind = ("argmin", "argmax")[kind] if isinstance(kind, int) else kind
    fn = jnp.argmax if kind == "argmax" else jnp.argmin
    return fn(x, axis=o.param("axis"), keepdims=True).astype(jnp.uint32)


def _gather_axis(src, idx, o):
    axis = o.param("axis") % src.ndim
    idx = jnp.where(idx < 0, idx + src.shape[axis], idx) if jnp.issubdtype(
        idx.dtype, jnp.signedinteger) else idx
    return jnp.take_along_axis(src, idx, axis=axis)


_BITWISE = {"and": jnp.bitwise_and, "or": jnp.bitwise_or, "xor": jnp.bitwise_xor,
            "left_shift": jnp.left_shift, "right_shift": jnp.right_shift}

_LOG_BASE = {0: jnp.log2, 1: jnp.log10, 2: jnp.log, None: jnp.log}

_OPS = {
    "Abs": lambda o, x: jnp.abs(x), "Negative": lambda o, x: -x, "Sign": lambda o, x: _sign(x),
    "Exp": lambda o, x: jnp.exp(x), "Expm1": lambda o, x: jnp.expm1(x),
    "Log": lambda o, x: _LOG_BASE[o.param("base")](x), "Log1p": lambda o, x: jnp.log1p(x),
    "Sin": lambda o, x: jnp.sin(x), "Cos": lambda o, x: jnp.cos(x),
    "Tan": lambda o, x: jnp.tan(x), "ArcSin": lambda o, x: jnp.arcsin(x),
    "ArcCos": lambda o, x: jnp.arccos(x), "ArcTan": lambda o, x: jnp.arctan(x),
    "Sinh": lambda o, x: jnp.sinh(x), "Cosh": lambda o, x: jnp.cosh(x),
    "Tanh": lambda o, x: jnp.tanh(x), "ArcSinh": lambda o, x: jnp.arcsinh(x),
    "ArcCosh": lambda o, x: jnp.arccosh(x), "ArcTanh": lambda o, x: jnp.arctanh(x),
    "Erf": lambda o, x: jax.scipy.special.erf(x), "Sigmoid": lambda o, x: jax.nn.sigmoid(x),
    "Sqrt": lambda o, x: lax.rsqrt(x) if o.param("reciprocal") else jnp.sqrt(x),
    "Square": lambda o, x: x * x, "Floor": lambda o, x: jnp.floor(x),
    "Ceil": lambda o, x: jnp.ceil(x), "Round": lambda o, x: jnp.round(x),
    "LogicalNot": lambda o, x: ~x,
    "Add": lambda o, a, b: a + b, "Subtract": lambda o, a, b: a - b,
    "Multiply": lambda o, a, b: a * b, "Divide": lambda o, a, b: _div(a, b),
    "Remainder": lambda o, a, b: jnp.remainder(a, b),
    "FloorDivide": lambda o, a, b: jnp.floor_divide(a, b),
    "Maximum": lambda o, a, b: jnp.maximum(a, b), "Minimum": lambda o, a, b: jnp.minimum(a, b),
    "Power": lambda o, a, b: _pow(a, b), "ArcTan2": lambda o, a, b: jnp.arctan2(a, b),
    "LogAddExp": lambda o, a, b: jnp.logaddexp(a, b),
    "Less": lambda o, a, b: a < b, "LessEqual": lambda o, a, b: a <= b,
    "Greater": lambda o, a, b: a > b, "GreaterEqual": lambda o, a, b: a >= b,
    "Equal": lambda o, a, b: (a == b) | ((a != a) & (b != b)) if o.param("equal_nan") else a == b,
    "NotEqual": lambda o, a, b: a != b,
    "LogicalAnd": lambda o, a, b: a & b, "LogicalOr": lambda o, a, b: a | b,
    "BitwiseBinary": lambda o, a, b: _BITWISE[o.param("op")](a, b),
    "Select": lambda o, c, a, b: jnp.where(c, a, b),
    "Broadcast": lambda o, x: jnp.broadcast_to(x, o.param("shape")),
    "Reshape": lambda o, x: jnp.reshape(x, o.param("shape")),
    "Transpose": lambda o, x: jnp.transpose(x, o.param("axes")),
    "Squeeze": lambda o, x: jnp.squeeze(x, o.param("axes")),
    "ExpandDims": lambda o, x: jnp.expand_dims(x, o.param("axes")),
    "Slice": lambda o, x: x[slices(o.param("start"), o.param("stop"), o.param("strides"))],
    "Copy": lambda o, x: x,
    "Reduce": lambda o, x: _reduce(x, o),
    "ArgReduce": lambda o, x: _arg_reduce(x, o),
    "LogSumExp": lambda o, x: jax.nn.logsumexp(x, axis=-1, keepdims=True),
    "Softmax": lambda o, x: jax.nn.softmax(x, axis=-1),
    "GatherAxis": lambda o, s, i: _gather_axis(s, i, o),
}

_HALF = ("float16", "bfloat16")


def evaluate(region: Region, inputs: list[np.ndarray], promote_halves: bool = True
             ) -> list[np.ndarray]:
    """Run the region unfused with JAX on CPU; returns NumPy outputs of the region's dtypes."""
    from mlxtriton.codegen._lower_ops import Lowering

    ctx = Lowering(region)  # shape and dtype inference only
    vals = []
    for i, a in zip(region.inputs, inputs):
        x = jnp.asarray(np.asarray(a, dtype=numpy_dtype(i.dtype)))
        vals.append(x.astype(jnp.float32) if promote_halves and i.dtype in _HALF else x)
    for k, o in enumerate(region.ops):
        v = len(region.inputs) + k
        dt = ctx.dtypes[v]
        if o.primitive == "Constant":
            out = jnp.asarray(o.param("value"), dtype=numpy_dtype(dt))
            if promote_halves and dt in _HALF:
                out = out.astype(jnp.float32)
        elif o.primitive == "AsType":
            out = vals[o.args[0]].astype(numpy_dtype(dt))
            if promote_halves and dt in _HALF:
                out = out.astype(jnp.float32)  # rounded, then computed on in float32
        else:
            out = _OPS[o.primitive](o, *[vals[a] for a in o.args])
            if not (promote_halves and dt in _HALF):
                out = out.astype(numpy_dtype(dt))
        assert tuple(out.shape) == ctx.shapes[v], (o.primitive, out.shape, ctx.shapes[v])
        vals.append(out)
    return [np.asarray(vals[v].astype(numpy_dtype(ctx.dtypes[v]))) for v in region.outputs]


# ---------------------------------------------------------------------------------------------
# region factories: the kernel families of issue 4


def softmax(shape=(6, 100), dtype="float32", log=False) -> Region:
    b = RegionBuilder("logsoftmax" if log else "softmax")
    x = b.input(shape, dtype, "x")
    if not log:
        return b.build([b.op("Softmax", x)])
    lse = b.op("LogSumExp", x)
    return b.build([b.op("Subtract", x, b.op("Broadcast", lse, shape=shape))])


def _row_scalar(b: RegionBuilder, value: float, R: int) -> int:
    return b.op("Broadcast", b.constant(value, "float32"), shape=(R, 1))


def layer_norm(shape=(6, 100), dtype="float32", eps=1e-5) -> Region:
    R, L = shape
    b = RegionBuilder("layernorm")
    x, w, bias = b.input(shape, dtype, "x"), b.input((L,), dtype, "w"), b.input((L,), dtype, "b")
    xf = b.op("AsType", x, dtype="float32")
    mean = b.op("Multiply", b.op("Reduce", xf, kind="sum", axes=(1,)), _row_scalar(b, 1 / L, R))
    d = b.op("Subtract", xf, b.op("Broadcast", mean, shape=shape))
    var = b.op("Multiply", b.op("Reduce", b.op("Square", d), kind="sum", axes=(1,)),
               _row_scalar(b, 1 / L, R))
    inv = b.op("Sqrt", b.op("Add", var, _row_scalar(b, eps, R)), reciprocal=True)
    y = b.op("AsType", b.op("Multiply", d, b.op("Broadcast", inv, shape=shape)), dtype=dtype)
    y = b.op("Add", b.op("Multiply", y, b.op("Broadcast", w, shape=shape)),
             b.op("Broadcast", bias, shape=shape))
    return b.build([y])


def rms_norm(shape=(6, 100), dtype="float32", eps=1e-5, gate=False) -> Region:
    R, L = shape
    b = RegionBuilder("rmsnormgate" if gate else "rmsnorm")
    x = b.input(shape, dtype, "x")
    g = b.input(shape, dtype, "gate") if gate else None
    w = b.input((L,), dtype, "w")
    xf = b.op("AsType", x, dtype="float32")
    ms = b.op("Multiply", b.op("Reduce", b.op("Square", xf), kind="sum", axes=(1,)),
              _row_scalar(b, 1 / L, R))
    inv = b.op("Sqrt", b.op("Add", ms, _row_scalar(b, eps, R)), reciprocal=True)
    y = b.op("Multiply", b.op("Multiply", xf, b.op("Broadcast", inv, shape=shape)),
             b.op("Broadcast", b.op("AsType", w, dtype="float32"), shape=shape))
    if gate:
        gf = b.op("AsType", g, dtype="float32")
        y = b.op("Multiply", y, b.op("Multiply", gf, b.op("Sigmoid", gf)))
    return b.build([b.op("AsType", y, dtype=dtype)])


def residual_rms_norm(shape=(6, 100), dtype="float32", eps=1e-5) -> Region:
    """h = x + residual; returns h and rms_norm(h) * w: a full-row output next to a normed one."""
    R, L = shape
    b = RegionBuilder("residualrmsnorm")
    x, res, w = b.input(shape, dtype, "x"), b.input(shape, dtype, "res"), b.input((L,), dtype, "w")
    h = b.op("Add", x, res)
    hf = b.op("AsType", h, dtype="float32")
    ms = b.op("Multiply", b.op("Reduce", b.op("Square", hf), kind="sum", axes=(1,)),
              _row_scalar(b, 1 / L, R))
    inv = b.op("Sqrt", b.op("Add", ms, _row_scalar(b, eps, R)), reciprocal=True)
    y = b.op("Multiply", b.op("Multiply", hf, b.op("Broadcast", inv, shape=shape)),
             b.op("Broadcast", b.op("AsType", w, dtype="float32"), shape=shape))
    return b.build([h, b.op("AsType", y, dtype=dtype)])


def logsumexp(shape=(6, 100), dtype="float32") -> Region:
    b = RegionBuilder("logsumexp")
    x = b.input(shape, dtype, "x")
    return b.build([b.op("Squeeze", b.op("LogSumExp", x), axes=(1,))])


def cross_entropy(shape=(6, 100), dtype="float32") -> Region:
    R, L = shape
    b = RegionBuilder("crossentropy")
    x, lab = b.input(shape, dtype, "logits"), b.input((R,), "int32", "labels")
    lse = b.op("Squeeze", b.op("LogSumExp", x), axes=(1,))
    picked = b.op("Squeeze", b.op("GatherAxis", x, b.op("ExpandDims", lab, axes=(1,)), axis=1),
                  axes=(1,))
    return b.build([b.op("Subtract", lse, picked)])


def softmax_composed(shape=(6, 100), dtype="float32") -> Region:
    """Softmax as model code writes it: e = exp(x - max(x)); e / sum(e), each op in ``dtype``."""
    b = RegionBuilder("softmaxcomposed")
    x = b.input(shape, dtype, "x")
    m = b.op("Broadcast", b.op("Reduce", x, kind="max", axes=(1,)), shape=shape)
    e = b.op("Exp", b.op("Subtract", x, m))
    s = b.op("Broadcast", b.op("Reduce", e, kind="sum", axes=(1,)), shape=shape)
    return b.build([b.op("Divide", e, s)])


def cross_entropy_mlx(shape=(6, 100), dtype="float32") -> Region:
    """Cross-entropy as MLX's CPU stream decomposes it: lse(x - max x) - (x - max x)[label]."""
    R, L = shape
    b = RegionBuilder("crossentropymlx")
    x, lab = b.input(shape, dtype, "logits"), b.input((R,), "int32", "labels")
    e = b.op("Subtract", x, b.op("Broadcast", b.op("Reduce", x, kind="max", axes=(1,)),
                                 shape=shape))
    lse = b.op("Squeeze", b.op("LogSumExp", e), axes=(1,))
    picked = b.op("Squeeze", b.op("GatherAxis", e, b.op("ExpandDims", lab, axes=(1,)), axis=1),
                  axes=(1,))
    return b.build([b.op("Subtract", lse, picked)])


def rms_norm_grad(shape=(6, 100), dtype="float32", eps=1.0) -> Region:
    """RMS norm's backward with its weight gradient and a bias-style sum of the cotangent as
    block column sums (fusion/partials.py): dx, and per block of B rows sum(g * xhat) and
    sum(g), B the largest of 8, 4, 2, 1 dividing the rows. (A large eps: with a small one dx
    of a short row is a difference of nearly equal values, which no tolerance fits.)"""
    R, L = shape
    B = next(n for n in (8, 4, 2, 1) if R % n == 0)
    b = RegionBuilder("rmsnormgrad")
    x, g, w = b.input(shape, dtype, "x"), b.input(shape, dtype, "g"), b.input((L,), dtype, "w")
    xf, gf = b.op("AsType", x, dtype="float32"), b.op("AsType", g, dtype="float32")
    ms = b.op("Multiply", b.op("Reduce", b.op("Square", xf), kind="sum", axes=(1,)),
              _row_scalar(b, 1 / L, R))
    inv = b.op("Broadcast", b.op("Sqrt", b.op("Add", ms, _row_scalar(b, eps, R)),
                                 reciprocal=True), shape=shape)
    xhat = b.op("Multiply", xf, inv)
    gw = b.op("Multiply", gf, b.op("Broadcast", b.op("AsType", w, dtype="float32"), shape=shape))
    dot = b.op("Multiply", b.op("Reduce", b.op("Multiply", gw, xhat), kind="sum", axes=(1,)),
               _row_scalar(b, 1 / L, R))
    dx = b.op("Multiply", inv, b.op("Subtract", gw, b.op("Multiply", xhat,
                                                         b.op("Broadcast", dot, shape=shape))))

    def block_sum(v):
        return b.op("Reduce", b.op("Reshape", v, shape=(R // B, B, L)), kind="sum", axes=(1,))

    return b.build([b.op("AsType", dx, dtype=dtype), block_sum(b.op("Multiply", gf, xhat)),
                    block_sum(gf)])


def gated_block_sum(shape=(16, 100), dtype="float32") -> Region:
    """A row kernel that keeps a computed value between passes (the sigmoid, as RMS norm x
    gate's backward does) and writes a block column sum: ``sigmoid(z) * sum(x * sigmoid(z))``
    per row, and per block of B rows ``sum(x * sigmoid(z))`` (B as in `rms_norm_grad`)."""
    R, L = shape
    B = next(n for n in (8, 4, 2, 1) if R % n == 0)
    b = RegionBuilder("gatedblocks")
    x, z = b.input(shape, dtype, "x"), b.input(shape, dtype, "z")
    s = b.op("Sigmoid", b.op("AsType", z, dtype="float32"))
    xs = b.op("Multiply", b.op("AsType", x, dtype="float32"), s)
    out = b.op("Multiply", s, b.op("Broadcast", b.op("Reduce", xs, kind="sum", axes=(1,)),
                                   shape=shape))
    return b.build([b.op("AsType", out, dtype=dtype),
                    b.op("Reduce", b.op("Reshape", xs, shape=(R // B, B, L)), kind="sum",
                         axes=(1,))])


def column_sum(shape=(100, 6), dtype="float32") -> Region:
    b = RegionBuilder("colsum")
    x = b.input(shape, dtype, "x")
    return b.build([b.op("Squeeze", b.op("Reduce", x, kind="sum", axes=(0,)), axes=(0,))])


def softmax_transposed(shape=(100, 6), dtype="float32") -> Region:
    """Softmax over axis 0 of (L, R): each row of the kernel is a column in memory."""
    b = RegionBuilder("softmaxtransposed")
    x = b.input(shape, dtype, "x")
    return b.build([b.op("Softmax", b.op("Transpose", x, axes=(1, 0)))])


def softmax_columns(shape=(100, 6), dtype="float32") -> Region:
    """Softmax over axis 0, as ``mx.softmax(x, axis=0)`` decomposes: a column reduction read in
    several passes (a column kernel that may hold its column on chip)."""
    b = RegionBuilder("softmaxcolumns")
    xf = b.op("AsType", b.input(shape, dtype, "x"), dtype="float32")
    m = b.op("Broadcast", b.op("Reduce", xf, kind="max", axes=(0,)), shape=shape)
    e = b.op("Exp", b.op("Subtract", xf, m))
    s = b.op("Broadcast", b.op("Reduce", e, kind="sum", axes=(0,)), shape=shape)
    return b.build([b.op("AsType", b.op("Divide", e, s), dtype=dtype)])


def softmax_weighted(shape=(6, 100), dtype="float32") -> Region:
    """exp(x - max x) / sum(exp(x - max x) * y) + y over rows: two inputs read in several passes,
    and exp(x - max x), worth keeping, computed in one pass and read in the next."""
    b = RegionBuilder("softmaxweighted")
    x, y = b.input(shape, dtype, "x"), b.input(shape, dtype, "y")
    xf, yf = (b.op("AsType", v, dtype="float32") for v in (x, y))
    m = b.op("Broadcast", b.op("Reduce", xf, kind="max", axes=(1,)), shape=shape)
    e = b.op("Exp", b.op("Subtract", xf, m))
    weighted = b.op("Reduce", b.op("Multiply", e, yf), kind="sum", axes=(1,))
    s = b.op("Broadcast", weighted, shape=shape)
    return b.build([b.op("AsType", b.op("Add", b.op("Divide", e, s), yf), dtype=dtype)])


def channel_statistics(shape=(4, 6, 8), dtype="float32") -> Region:
    """Per-channel sums and sums of squares over every axis but the last (NHWC statistics)."""
    b = RegionBuilder("channelstats")
    xf = b.op("AsType", b.input(shape, dtype, "x"), dtype="float32")
    axes = tuple(range(len(shape) - 1))
    return b.build([b.op("Reduce", xf, kind="sum", axes=axes),
                    b.op("Reduce", b.op("Square", xf), kind="sum", axes=axes)])


def channel_moments(shape=(4, 6, 8), dtype="float32", eps=1e-5) -> Region:
    """Per-channel mean and variance over every axis but the last, as ``mx.mean`` / ``mx.var``
    decompose (a centred sum of squares), and the input normalised by them (batch norm)."""
    b = RegionBuilder("channelmoments")
    xf = b.op("AsType", b.input(shape, dtype, "x"), dtype="float32")
    axes = tuple(range(len(shape) - 1))
    kept = (1,) * len(axes) + shape[-1:]
    n = math.prod(shape[:-1])

    def scalar(value):
        return b.op("Broadcast", b.constant(value, "float32"), shape=kept)

    mean = b.op("Multiply", b.op("Reduce", xf, kind="sum", axes=axes), scalar(1 / n))
    d = b.op("Subtract", xf, b.op("Broadcast", mean, shape=shape))
    var = b.op("Multiply", b.op("Reduce", b.op("Square", d), kind="sum", axes=axes), scalar(1 / n))
    inv = b.op("Sqrt", b.op("Add", var, scalar(eps)), reciprocal=True)
    y = b.op("AsType", b.op("Multiply", d, b.op("Broadcast", inv, shape=shape)), dtype=dtype)
    return b.build([mean, var, y])


def pointwise_broadcast(shape=(4, 6, 32), dtype="float32") -> Region:
    """Transposed input, a broadcast row vector, a 0-d scalar; two outputs."""
    A, B, C = shape
    b = RegionBuilder("pointwise")
    x, w, s = b.input((B, A, C), dtype, "x"), b.input((C,), dtype, "w"), b.input((), dtype, "s")
    t = b.op("Transpose", x, axes=(1, 0, 2))
    y = b.op("Multiply", t, b.op("Broadcast", w, shape=shape))
    z = b.op("Tanh", b.op("Add", y, b.op("Broadcast", s, shape=shape)))
    return b.build([y, z])


FAMILIES = {
    "softmax": softmax, "logsoftmax": lambda **k: softmax(log=True, **k),
    "layernorm": layer_norm, "rmsnorm": rms_norm, "rmsnormgate": lambda **k: rms_norm(gate=True, **k),
    "residualrmsnorm": residual_rms_norm, "rmsnormgrad": rms_norm_grad,
    "logsumexp": logsumexp, "crossentropy": cross_entropy, "colsum": column_sum,
    "softmaxcomposed": softmax_composed, "crossentropymlx": cross_entropy_mlx,
    "pointwise": pointwise_broadcast,
}
# Reductions not over the last axis, whose kernels walk columns: shapes of any rank.
COLUMN_FAMILIES = {"softmaxtransposed": softmax_transposed, "channelstats": channel_statistics,
                   "channelmoments": channel_moments, "softmaxcolumns": softmax_columns}


def random_inputs(region: Region, seed: int = 0, scale: float = 3.0) -> list[np.ndarray]:
    rng = np.random.default_rng(seed)
    out = []
    for i in region.inputs:
        if i.dtype in ("int32", "int64", "uint32"):
            # labels: valid indices into the last axis of the first input, negatives included
            n = region.inputs[0].shape[-1]
            low = 0 if i.dtype == "uint32" else -n
            out.append(rng.integers(low, n, i.shape).astype(i.dtype))
        elif i.dtype == "bool":
            out.append(rng.random(i.shape) < 0.5)
        else:
            a = (rng.standard_normal(i.shape) * scale).astype(np.float32)
            out.append(a.astype(numpy_dtype(i.dtype)))
    return out


def tolerance(dtype: str) -> dict[str, float]:
    """Allowed difference: float32 rounding of long sums; half types one or two ulps at output."""
    return {"float32": dict(rtol=2e-5, atol=2e-6), "float16": dict(rtol=2e-3, atol=2e-3),
            "bfloat16": dict(rtol=1.6e-2, atol=1.6e-2)}.get(dtype, dict(rtol=0, atol=0))


def assert_close(got: np.ndarray, want: np.ndarray, dtype: str, scale: float = 1.0) -> None:
    tol = tolerance(dtype)
    g = np.asarray(got).astype(np.float64)
    w = np.asarray(want).astype(np.float64)
    assert g.shape == w.shape, (g.shape, w.shape)
    np.testing.assert_allclose(g, w, rtol=tol["rtol"] * scale, atol=tol["atol"] * scale,
                               equal_nan=True)


def size(shape) -> int:
    return math.prod(shape)
