"""Graph layer: the oracle. Evaluate one primitive with jax.numpy / jax.lax, following MLX's
semantics wherever MLX and JAX differ.

``jax_rules()`` (also ``JAX_RULES``) maps every declared primitive to
``rule(*inputs: jax.Array, **params) -> jax.Array | tuple`` (a tuple exactly when the equation has
several outputs). JAX is imported on first use only, so the graph layer imports without it. May
import numpy, ml_dtypes, jax (lazily) and the graph layer.

x64: the table turns on ``jax_enable_x64`` when it is built. MLX graphs routinely carry int64
(fancy indexing casts its indices to int64) and MLX's CPU runs float64; without x64, JAX silently
narrows them to 32 bits. Every rule passes explicit dtypes, so no result depends on JAX's
default integer or float type.

Where MLX and JAX differ, the oracle follows MLX (each checked live against MLX 0.32.4 on CPU):

- FloorDivide on floats is floor(x / y): MLX keeps floor(-0.0 / 3) == -0.0 and inf // 2 == inf,
  where jnp.floor_divide gives 0.0 and nan.
- Integer FloorDivide / Remainder by zero give quotient 0 and remainder x in MLX (JAX: -1 or -2,
  and 0). INT_MIN // -1, and an integer DivMod by zero, kill MLX's process with SIGFPE: never
  evaluate them.
- Maximum / Minimum are ``isnan(x) or x > y ? x : y`` (``<`` for Minimum): NaN propagates from
  either side, and on equal values (-0.0 vs 0.0) the second operand wins; jnp.maximum returns
  +0.0 (jnp.minimum -0.0) for either order.
- Sign: MLX computes (x > 0) - (x < 0), so sign(NaN) == 0 and sign(-0.0) == +0.0 (JAX: NaN and
  -0.0); unsigned integers give x != 0; bool passes through.
- Integer Power is MLX's square-and-multiply loop, wrapping; a negative exponent gives 0 for every
  base, 1 ** -1 included (JAX: 1).
- Integer sums, products and scans wrap in their type, as C++ arithmetic does on every target.
- bool arithmetic: Add is or, Multiply is and, Subtract is xor (jnp.subtract rejects bool);
  FloorDivide is and, Remainder is x and not y, Power is x or not y (0 ** 0 == 1), DivMod is
  (x, False); scatter and slice-update sums and maxima are or, products and minima and;
  Abs, Square, Floor, Ceil, Round and Sign of bool (and the rounding ops of integers) return the
  input unchanged (jnp.floor of an int returns a float).
- Reductions and scans keep MLX's result types: Sum / Prod of bool, int8, int16 give int32 and of
  uint8, uint16 give uint32; Scan keeps the input type (an int8 cumsum wraps at 8 bits) except a
  bool cumsum, which is int32; a bool cumprod / cummax / cummin stays bool. Exclusive scans start
  from 0, 1, -inf / the integer minimum (max), +inf / the integer maximum (min).
- Accumulation: Sum / Prod of float16 / bfloat16 accumulate in float32 and round once (MLX's
  CPU reduce widens them; the sum of sixteen bfloat16 50s is 800, where a bfloat16 accumulator
  gives 792). Scans run sequentially in the output type, rounding at every step as MLX's CPU
  loop does (a bfloat16 cumsum of ones stops at 256); XLA's cumulative ops reassociate.
- Max / Min reductions, between -0.0 and +0.0, return the first in order (MLX's sequential loop
  keeps its accumulator on ties); cummax keeps the new value on ties and cummin the accumulator;
  both propagate NaN. Scatter max / min apply their updates in order as ``out > u ? out : u``
  (a NaN already there is replaced, the update wins ties); slice-update max / min are the
  elementwise Maximum / Minimum.
- Signed zeros of MLX's own math: sin(-0.0) is +0.0 and erf(+-0.0) is -0.0; logaddexp with an
  infinite operand returns the larger operand as it is (so logaddexp(-0.0, -inf) is -0.0).
- Sigmoid is 1 / (1 + exp(-x)), computed in float32 for float16 / bfloat16.
- Transcendental ops on float16 / bfloat16 (exp, log, sin, erf, erfinv, pow, arctan2, logaddexp,
  sigmoid, rsqrt, ...) compute in float32 and round once, as MLX's CPU kernels do; Softmax and
  LogSumExp accumulate in float32 regardless of Softmax's ``precise`` flag (MLX's non-precise
  half softmax accumulates in the half type: a few ulps off on short rows, grossly wrong on long
  ones, whose sum stops growing; the patterns stage spells composed softmaxes as precise).
- Arange accumulates, as MLX's kernel does: out[0] = T(start), out[i + 1] = out[i] + step_T with
  step_T = T(start + step) - T(start), rounded in T at every step (NumPy's sequential
  accumulate reproduces it bit for bit); jnp.arange computes start + i * step.
- Partition / ArgPartition: MLX's arrangement around kth is implementation-defined; the oracle
  returns the sorted order, one valid partition (compare with a partition-aware check).
- QRF / SVD / Eig / Eigh: LAPACK (MLX) and XLA may return eigen- and singular vectors with other
  signs (and Eig's eigenvalues in another order): compare them up to those freedoms.
- RandomBits is MLX's Threefry layout (see _shared_rules.random_words), not jax.random's.
- Quantized formats are MLX's packing: codes form a little-endian bitstream over each row's
  bytes at every bit width; affine is scale * code + bias; mxfp4 / mxfp8 / nvfp4 decode FP4
  (e2m1) or FP8 (e4m3) codes times an e8m0 (groups of 32) or e4m3 (nvfp4's 16) group scale, and
  nvfp4's global scale g multiplies by g / (6 * 448). Affine Quantize follows
  Quantize::eval_cpu in float32 and matches MLX bit for bit on float32 inputs; MLX 0.32.4 rounds
  some half-precision inputs one code away from that, and its CPU quantized matmul accumulates
  half inputs in the half type (the oracle accumulates in float32).
- Fast ops follow MLX's fallback formulas (mlx/fast.cpp). On the H200 the oracle matched the CUDA
  kernels within 1e-7 (float32 norms, RoPE) and about one ulp of bf16 / f16; the float32
  single-query SDPA kernel was 3.5e-4 (relative) from the fallback math.

Undefined in C++, so platform-dependent in MLX, and not modelled (tests keep clear of them):
float -> integer casts of NaN, inf or out-of-range values (x86 MLX gives INT_MIN or wraps through
int64; JAX saturates), shifts by a negative count or by at least the bit width (x86 masks the
count; JAX gives 0 or the sign), and out-of-bounds gather / scatter / dynamic-slice indices (JAX
clamps). erf, erfinv, expm1, exp and friends differ from JAX's by a few ulps (MLX uses its own
polynomial approximations): the op table states a tolerance per dtype.

Not modelled either: subnormal floats (XLA's CPU flushes subnormal inputs and results to zero,
MLX keeps them); MLX 0.32.4's CPU cummax / cummin of float16 / bfloat16, which give 0 where an
operand is NaN (the oracle keeps the NaN, as MLX does for float32); which zero a max / min over
a contiguous row longer than one SIMD vector returns (MLX compares lane by lane); and infinities
meeting a convolution's padding, which MLX's CPU paths multiply by zero (NaN) in some cases and
skip in others.
"""

from __future__ import annotations

import functools
import math
from typing import Any, Callable

import numpy as np

from mlxtriton.graph import _shared_rules as shared
from mlxtriton.graph import dtypes, primitives
from mlxtriton.graph.primitives import UnsupportedPrimitiveError

_OTHER_RANKS = "its result depends on the other processes' values; the oracle sees one process"
NOT_EVALUATED: dict[str, str] = {
    "CustomKernel": "a custom Metal/CUDA kernel's source has no JAX meaning; the oracle cannot run it",
    "AllReduce": _OTHER_RANKS,
    "AllGather": _OTHER_RANKS,
    "ReduceScatter": _OTHER_RANKS,
    "Recv": _OTHER_RANKS,
}


def __getattr__(name: str) -> Any:
    # JAX_RULES is built, and jax imported, on first access.
    if name == "JAX_RULES":
        return jax_rules()
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


@functools.cache
def _jax():
    import jax

    jax.config.update("jax_enable_x64", True)
    return jax


def to_jax(array) -> Any:
    """A JAX array equal to an MLX (or NumPy) array, bit for bit; bfloat16 via ml_dtypes."""
    jax = _jax()
    import mlx.core as mx

    if isinstance(array, mx.array):
        if array.dtype == mx.bfloat16:
            import ml_dtypes

            array = np.array(array.view(mx.uint16)).view(ml_dtypes.bfloat16)
        else:
            array = np.array(array)
    return jax.numpy.asarray(array)


def from_jax(array) -> np.ndarray:
    """A NumPy array equal to a JAX array (bfloat16 stays ml_dtypes.bfloat16)."""
    return np.asarray(array)


def _numpy_dtype(name: str) -> np.dtype:
    if name == "bfloat16":
        import ml_dtypes

        return np.dtype(ml_dtypes.bfloat16)
    return np.dtype(dtypes.check(name))


@functools.cache
def jax_rules() -> dict[str, Callable]:
    """The oracle's rule table; builds it (importing jax) on the first call."""
    jax = _jax()
    jnp, lax = jax.numpy, jax.lax
    rules: dict[str, Callable] = {}

    def register(name: str, rule: Callable) -> None:
        if name in rules:
            raise ValueError(f"JAX rule for {name} registered twice")
        # One XLA computation per (primitive, params, input avals): params are hashable, so they
        # are static, and a rule of many small jnp ops compiles once instead of op by op.
        rules[name] = jax.jit(rule, static_argnames=primitives.get(name).params)

    def dt(name: str):
        return jnp.dtype(name)

    half = {jnp.dtype(jnp.float16), jnp.dtype(jnp.bfloat16)}

    def is_bool(x) -> bool:
        return x.dtype == jnp.bool_

    def is_int(x) -> bool:
        return jnp.issubdtype(x.dtype, jnp.integer)

    def is_inexact(x) -> bool:
        return jnp.issubdtype(x.dtype, jnp.inexact)

    def in_f32(fn: Callable) -> Callable:
        """Run a float function in float32 for half inputs and round once, as MLX's CPU does."""

        def rule(*xs):
            if xs[0].dtype in half:
                return fn(*(x.astype(jnp.float32) for x in xs)).astype(xs[0].dtype)
            return fn(*xs)

        return rule

    def results(outs):
        outs = tuple(outs)
        return outs if len(outs) > 1 else outs[0]

    # --- elementwise -----------------------------------------------------------------------

    def identity_unless_inexact(fn):
        # Floor / Ceil / Round of integers and bool return the input (jnp returns floats); so do
        # Abs of unsigned and bool, and Square of bool.
        return lambda x: fn(x) if is_inexact(x) else x

    transcendental = {
        "ArcCos": jnp.arccos, "ArcCosh": jnp.arccosh, "ArcSin": jnp.arcsin, "ArcSinh": jnp.arcsinh,
        "ArcTan": jnp.arctan, "ArcTanh": jnp.arctanh, "Cos": jnp.cos, "Cosh": jnp.cosh,
        # MLX's erf(+-0.0) is -0.0 and sin(-0.0) is +0.0 (its own approximations).
        "Erf": lambda x: jnp.where(x == 0, -jnp.zeros_like(x), lax.erf(x)), "ErfInv": lax.erf_inv,
        "Exp": jnp.exp, "Expm1": jnp.expm1, "Log1p": jnp.log1p,
        "Sin": lambda x: jnp.where(x == 0, jnp.zeros_like(x), jnp.sin(x)),
        "Sinh": jnp.sinh, "Tan": jnp.tan, "Tanh": jnp.tanh,
        "Sigmoid": lambda x: 1 / (1 + jnp.exp(-x)),
    }
    for name, fn in transcendental.items():
        register(name, in_f32(fn))
    log = {"two": jnp.log2, "ten": jnp.log10, "e": jnp.log}
    register("Log", lambda x, *, base: in_f32(log[base])(x))
    register("Sqrt", lambda x, *, reciprocal: in_f32(lax.rsqrt if reciprocal else jnp.sqrt)(x))
    register("Ceil", identity_unless_inexact(jnp.ceil))
    register("Floor", identity_unless_inexact(jnp.floor))
    register("Round", identity_unless_inexact(jnp.round))  # half to even, as MLX's rint
    register("Abs", lambda x: x if is_bool(x) or jnp.issubdtype(x.dtype, jnp.unsignedinteger) else jnp.abs(x))
    register("Square", lambda x: x if is_bool(x) else x * x)
    register("Negative", jnp.negative)
    register("LogicalNot", jnp.logical_not)
    register("Conjugate", jnp.conj)
    register("Real", jnp.real)
    register("Imag", jnp.imag)
    register("Copy", lambda x: x)
    register("StopGradient", lax.stop_gradient)

    def sign(x):
        if is_bool(x):
            return x
        if jnp.issubdtype(x.dtype, jnp.unsignedinteger):
            return (x != 0).astype(x.dtype)
        if jnp.issubdtype(x.dtype, jnp.complexfloating):
            return jnp.sign(x)
        # (x > 0) - (x < 0): NaN -> 0, -0.0 -> +0.0 (jnp.sign keeps both).
        return (x > 0).astype(x.dtype) - (x < 0).astype(x.dtype)

    register("Sign", sign)
    register("AsType", lambda x, *, dtype: x.astype(dt(dtype)))

    def add(x, y):
        return jnp.logical_or(x, y) if is_bool(x) else x + y

    def subtract(x, y):
        return jnp.logical_xor(x, y) if is_bool(x) else x - y

    def multiply(x, y):
        return jnp.logical_and(x, y) if is_bool(x) else x * y

    def divide(x, y):
        # mx.divide casts integers to float first; an integer Divide (C++ only) truncates.
        return lax.div(x, y) if is_int(x) else x / y

    def floor_divide(x, y):
        if is_bool(x):  # as integers 0 / 1, by zero giving 0
            return x & y
        if is_int(x):
            safe = jnp.where(y == 0, jnp.ones_like(y), y)
            return jnp.where(y == 0, jnp.zeros_like(x), jnp.floor_divide(x, safe))
        return jnp.floor(x / y)

    def remainder(x, y):
        if is_bool(x):  # as integers 0 / 1, by zero giving x
            return x & ~y
        if is_int(x):
            safe = jnp.where(y == 0, jnp.ones_like(y), y)
            return jnp.where(y == 0, x, jnp.remainder(x, safe))
        return jnp.remainder(x, y)

    def maximum(x, y):
        if jnp.issubdtype(x.dtype, jnp.complexfloating):
            return jnp.maximum(x, y)
        pick_x = x > y
        if is_inexact(x):
            pick_x = pick_x | jnp.isnan(x)
        return jnp.where(pick_x, x, y)

    def minimum(x, y):
        if jnp.issubdtype(x.dtype, jnp.complexfloating):
            return jnp.minimum(x, y)
        pick_x = x < y
        if is_inexact(x):
            pick_x = pick_x | jnp.isnan(x)
        return jnp.where(pick_x, x, y)

    def power(x, y):
        if is_bool(x):  # x ** 0 == 1
            return x | ~y
        if is_int(x):
            # MLX's loop: square-and-multiply, wrapping in the integer type (jnp.power of an array
            # exponent goes wrong for exponents near the type's maximum).
            x, y = jnp.broadcast_arrays(x, y)
            result, base, exponent = jnp.ones_like(x), x, jnp.where(y < 0, jnp.zeros_like(y), y)
            for _ in range(8 * x.dtype.itemsize):
                result = jnp.where(exponent & 1, result * base, result)
                base, exponent = base * base, exponent >> 1
            return jnp.where(y < 0, jnp.zeros_like(x), result)
        return in_f32(jnp.power)(x, y)

    def equal(x, y, *, equal_nan):
        eq = x == y
        if equal_nan and is_inexact(x):
            eq = eq | (jnp.isnan(x) & jnp.isnan(y))
        return eq

    def logaddexp(x, y):
        # MLX's formula: an infinite operand returns the larger one as it is (keeping a -0.0).
        larger, smaller = maximum(x, y), minimum(x, y)
        out = larger + jnp.log1p(jnp.exp(smaller - larger))
        return jnp.where((smaller == -jnp.inf) | (larger == jnp.inf), larger, out)

    bitwise = {
        "and": jnp.bitwise_and, "or": jnp.bitwise_or, "xor": jnp.bitwise_xor,
        "left_shift": jnp.left_shift, "right_shift": jnp.right_shift,
    }
    for name, fn in {
        "Add": add, "Subtract": subtract, "Multiply": multiply, "Divide": divide,
        "FloorDivide": floor_divide, "Remainder": remainder, "Maximum": maximum,
        "Minimum": minimum, "Power": power, "ArcTan2": in_f32(jnp.arctan2),
        "LogAddExp": in_f32(logaddexp), "Greater": jnp.greater,
        "GreaterEqual": jnp.greater_equal, "Less": jnp.less, "LessEqual": jnp.less_equal,
        "NotEqual": jnp.not_equal, "LogicalAnd": jnp.logical_and, "LogicalOr": jnp.logical_or,
        "Select": jnp.where,
    }.items():
        register(name, fn)
    register("Equal", equal)
    register("BitwiseBinary", lambda x, y, *, op: bitwise[op](x, y))

    def divmod_(x, y):
        if is_bool(x):  # MLX's bool DivMod (checked live): quotient x, remainder False
            return x, jnp.zeros_like(x)
        return floor_divide(x, y), remainder(x, y)

    register("DivMod", divmod_)

    # --- reductions, scans -----------------------------------------------------------------

    def result_dtype(x):
        # MLX's sum / prod result types (mlx/ops.cpp): small integers widen to 32 bits.
        if x.dtype in (jnp.bool_, jnp.int8, jnp.int16):
            return jnp.int32
        if x.dtype in (jnp.uint8, jnp.uint16):
            return jnp.uint32
        return x.dtype

    def reduce(x, *, kind, axes):
        axes = tuple(axes)
        if kind in ("sum", "prod"):
            # Half types accumulate in float32 and round once (reduce.cpp widens bfloat16, and
            # float16 where its SIMD width is 1, as on x86); integers wrap in 32 bits.
            fn = jnp.sum if kind == "sum" else jnp.prod
            out = result_dtype(x)
            return fn(x, axis=axes, keepdims=True, dtype=jnp.float32 if out in half else out).astype(out)
        if kind == "and":
            return jnp.all(x, axis=axes, keepdims=True)
        if kind == "or":
            return jnp.any(x, axis=axes, keepdims=True)
        fn = jnp.max if kind == "max" else jnp.min
        out = fn(x, axis=axes, keepdims=True)
        if not is_inexact(x) or x.size == 0:
            return out
        # NaN propagates, as in MLX; XLA's CPU reductions drop it over a leading axis of long
        # rows (jax 0.10: jnp.min over axis 0 of a (2, 4097) array of NaN and 1 gives 1).
        out = jnp.where(jnp.isnan(x).any(axis=axes, keepdims=True), jnp.array(jnp.nan, x.dtype), out)
        # Between -0.0 and +0.0 the first in order wins, as MLX's sequential loop keeps its
        # accumulator on ties (its SIMD path over contiguous rows longer than one vector
        # compares lane by lane, and may keep the other zero).
        kept = [a for a in range(x.ndim) if a not in axes]
        flat = jnp.transpose(x, kept + list(axes)).reshape(tuple(x.shape[a] for a in kept) + (-1,))
        first_zero = jnp.take_along_axis(flat, jnp.argmax(flat == 0, axis=-1)[..., None], axis=-1)
        return jnp.where(out == 0, first_zero.reshape(out.shape), out)

    register("Reduce", reduce)
    register(
        "ArgReduce",
        lambda x, *, kind, axis: (jnp.argmin if kind == "argmin" else jnp.argmax)(
            x, axis=axis, keepdims=True
        ).astype(jnp.uint32),
    )
    register(
        "LogSumExp",
        lambda x: jax.nn.logsumexp(x.astype(jnp.float32) if x.dtype in half else x, axis=-1, keepdims=True).astype(x.dtype),
    )
    register(
        "Softmax",
        lambda x, *, precise: jax.nn.softmax(x.astype(jnp.float32) if x.dtype in half else x, axis=-1).astype(x.dtype),
    )

    def scan_identity(kind, dtype):
        if kind == "sum":
            return 0
        if kind == "prod":
            return 1
        if kind == "logaddexp":
            return -jnp.inf
        if jnp.issubdtype(dtype, jnp.inexact):
            return -jnp.inf if kind == "max" else jnp.inf
        if dtype == jnp.bool_:
            return kind == "min"
        info = jnp.iinfo(dtype)
        return info.min if kind == "max" else info.max

    def scan_step(kind, dtype):
        """MLX's CPU scan operator ``op(accumulator, x)`` in the output type."""
        if dtype == jnp.bool_:
            return {"sum": jnp.logical_or, "prod": jnp.logical_and, "max": jnp.logical_or,
                    "min": jnp.logical_and}[kind]
        if kind == "sum":
            return lambda acc, x: acc + x
        if kind == "prod":
            return lambda acc, x: acc * x
        if kind == "logaddexp":
            return in_f32(jnp.logaddexp)
        inexact = jnp.issubdtype(dtype, jnp.inexact)

        def extremum(acc, x):
            # Equal values keep x for max and the accumulator for min (so -0.0 and 0.0 order as
            # MLX's), and a NaN on either side stays.
            out = jnp.where(x < acc, acc, x) if kind == "max" else jnp.where(x < acc, x, acc)
            return jnp.where(jnp.isnan(acc) | jnp.isnan(x), jnp.nan, out) if inexact else out

        return extremum

    def scan(x, *, kind, axis, reverse, inclusive):
        # Sequential, in the output type, as MLX's CPU kernel runs it: a half-precision cumsum
        # rounds at every step (XLA's cumulative ops reassociate).
        out_dtype = jnp.int32 if (kind == "sum" and is_bool(x)) else x.dtype
        axis = axis % x.ndim
        n = x.shape[axis]
        if n == 0:
            return x.astype(out_dtype)
        op = scan_step(kind, out_dtype)
        seq = jnp.moveaxis(x.astype(out_dtype), axis, 0)
        if reverse:
            seq = seq[::-1]

        def step(acc, v):
            acc = op(acc, v)
            return acc, acc

        if inclusive:  # the first output copies the first input (keeping a -0.0)
            _, rest = lax.scan(step, seq[0], seq[1:])
            out = jnp.concatenate([seq[:1], rest])
        else:
            # The barrier keeps XLA from folding init + x into x for a one-step loop (0.0 + -0.0
            # is +0.0).
            init = lax.optimization_barrier(jnp.full(seq.shape[1:], scan_identity(kind, out_dtype), out_dtype))
            _, rest = lax.scan(step, init, seq[:-1])
            out = jnp.concatenate([init[None], rest])
        if reverse:
            out = out[::-1]
        return jnp.moveaxis(out, 0, axis)

    register("Scan", scan)

    # --- movement --------------------------------------------------------------------------

    register("Broadcast", lambda x, *refs, shape: jnp.broadcast_to(x, shared.broadcast_target(x, refs, shape)))
    register(
        "BroadcastAxes",
        lambda *xs, ignore_axes: jnp.broadcast_to(xs[0], shared.broadcast_axes_shape([x.shape for x in xs], ignore_axes)),
    )
    register("Reshape", lambda x, *, shape: jnp.reshape(x, shape))
    register("Transpose", lambda x, *, axes: jnp.transpose(x, axes))
    register("Squeeze", lambda x, *, axes: jnp.squeeze(x, axes))
    register("ExpandDims", lambda x, *, axes: jnp.expand_dims(x, axes))

    # Movement rules spell every size out: a -1 cannot be inferred when another axis is 0.
    def flatten(x, *, start_axis, end_axis):
        if x.ndim == 0:
            return x.reshape(1)
        start, end = start_axis % x.ndim, end_axis % x.ndim
        return x.reshape(x.shape[:start] + (math.prod(x.shape[start:end + 1]),) + x.shape[end + 1:])

    def unflatten(x, *, axis, shape):
        axis = axis % x.ndim
        return x.reshape(x.shape[:axis] + tuple(shape) + x.shape[axis + 1:])

    register("Flatten", flatten)
    register("Unflatten", unflatten)
    register("Slice", lambda x, *, start, stop, strides: x[shared.slices(start, stop, strides)])
    register("Concatenate", lambda *xs, axis: jnp.concatenate(xs, axis=axis))
    register("Split", lambda x, *, indices, axis: results(jnp.split(x, list(indices), axis=axis)))

    def pad(x, value, *, axes, low_pad, high_pad):
        config = [(0, 0, 0)] * x.ndim
        for axis, lo, hi in zip(axes, low_pad, high_pad):
            config[axis] = (lo, hi, 0)
        return lax.pad(x, value.astype(x.dtype), config)

    register("Pad", pad)

    def as_strided(x, *, shape, strides, offset):
        # The op flattens its input to a contiguous buffer first; the primitive reads that buffer.
        flat = x.reshape(-1)
        index = jnp.full(tuple(shape), offset, dtype=jnp.int64)
        for d, (n, stride) in enumerate(zip(shape, strides)):
            ramp = jnp.arange(n, dtype=jnp.int64) * stride
            index = index + ramp.reshape(tuple(n if j == d else 1 for j in range(len(shape))))
        return flat[index]

    register("AsStrided", as_strided)

    def view(x, *, dtype):
        target = dt(dtype)
        if target == x.dtype:
            return x
        # bool is one byte 0/1; go through uint8 both ways.
        src = x.astype(jnp.uint8) if is_bool(x) else x
        into = jnp.uint8 if target == jnp.bool_ else target
        ratio_in, ratio_out = src.dtype.itemsize, jnp.dtype(into).itemsize
        if ratio_in == ratio_out:
            out = lax.bitcast_convert_type(src, into)
        elif ratio_in > ratio_out:  # each element splits into several along the last axis
            out = lax.bitcast_convert_type(src, into)
            out = out.reshape(out.shape[:-2] + (out.shape[-2] * out.shape[-1],))
        else:  # several elements of the last axis join into one
            k = ratio_out // ratio_in
            grouped = src.reshape(src.shape[:-1] + (src.shape[-1] // k, k))
            out = lax.bitcast_convert_type(grouped, into)
        return out != 0 if target == jnp.bool_ else out

    register("View", view)
    register("Full", lambda x: x)

    def update(x, index, updates, kind):
        """Scatter and its reductions; bool sums and maxima are or, products and minima and."""
        updates = updates.astype(x.dtype)
        if is_bool(x) and kind != "none":
            grown = update(x.astype(jnp.uint8), index, updates.astype(jnp.uint8), "max" if kind in ("sum", "max") else "min")
            return grown.astype(jnp.bool_)
        if kind in ("max", "min") and is_inexact(x):
            return scatter_extremum(x, index, updates, kind)
        at = x.at[index]
        return {"none": at.set, "sum": at.add, "prod": at.multiply, "max": at.max, "min": at.min}[kind](updates)

    def scatter_extremum(x, index, updates, kind):
        # MLX applies the updates one by one: out = out > u ? out : u (max; < for min). An update
        # wins ties (-0.0 against 0.0), lands on a NaN already there, and a NaN update lands.
        flat_index = [i.reshape(-1) for i in index]
        flat_updates = updates.reshape(-1)

        def step(out, k):
            at = tuple(i[k] for i in flat_index)
            old, new = out[at], flat_updates[k]
            keep = old > new if kind == "max" else old < new
            return out.at[at].set(jnp.where(keep, old, new)), None

        return lax.scan(step, x, jnp.arange(flat_updates.size))[0]

    def slice_update(x, upd, *, kind, start, stop, strides):
        # A slice holds each element once: its reductions are the elementwise ops (Maximum and
        # Minimum propagate NaN from both sides).
        index = shared.slices(start, stop, strides)
        if kind in ("max", "min") and is_inexact(x):
            combine = maximum if kind == "max" else minimum
            return x.at[index].set(combine(x[index], upd.astype(x.dtype)))
        return update(x, index, upd, kind)

    register("SliceUpdate", slice_update)

    # --- indexing --------------------------------------------------------------------------

    register(
        "Gather",
        lambda x, *idx, axes, slice_sizes: x[shared.gather_index(jnp, x.shape, axes, idx, slice_sizes)],
    )
    register("GatherAxis", lambda x, idx, *, axis: x[shared.along_axis_index(jnp, x.shape, idx, axis)])

    def scatter(x, *rest, kind, axes):
        *idx, updates = rest
        return update(x, shared.scatter_index(jnp, x.shape, axes, idx, updates.shape), updates, kind)

    register("Scatter", scatter)
    register(
        "ScatterAxis",
        lambda x, idx, upd, *, kind, axis: update(x, shared.along_axis_index(jnp, x.shape, idx, axis), upd, kind),
    )
    register("MaskedScatter", lambda x, mask, src: shared.masked_scatter(jnp, x, mask, src))

    def starts(x, start, axes):
        full = [jnp.zeros((), jnp.int64)] * x.ndim
        for i, axis in enumerate(axes):
            full[axis % x.ndim] = start[i].astype(jnp.int64)
        return full

    register(
        "DynamicSlice",
        lambda x, start, *, axes, slice_size: lax.dynamic_slice(x, starts(x, start, axes), slice_size),
    )
    register(
        "DynamicSliceUpdate",
        lambda x, upd, start, *, axes: lax.dynamic_update_slice(x, upd.astype(x.dtype), starts(x, start, axes)),
    )

    # --- matmul, convolution ---------------------------------------------------------------

    highest = lax.Precision.HIGHEST

    def matmul(a, b):
        # MLX multiplies half types through float32 GEMMs; accumulate in float32 and round once.
        if a.dtype in half:
            return jnp.matmul(a, b, precision=highest, preferred_element_type=jnp.float32).astype(a.dtype)
        return jnp.matmul(a, b, precision=highest)

    def addmm(a, b, c, *, alpha, beta):
        f32 = jnp.float32 if a.dtype in half else a.dtype
        ab = jnp.matmul(a, b, precision=highest, preferred_element_type=f32)
        return (alpha * ab + beta * c.astype(f32)).astype(c.dtype)

    def block_mask(mask, block_size, rows, cols, dtype):
        full = jnp.repeat(jnp.repeat(mask, block_size, axis=-2), block_size, axis=-1)
        return full[..., :rows, :cols].astype(dtype)

    def block_masked_mm(a, b, *masks, block_size):
        mask_out = masks[0] if len(masks) in (1, 3) else None
        mask_lhs, mask_rhs = masks[-2:] if len(masks) >= 2 else (None, None)
        if mask_lhs is not None:  # bool masks zero blocks out; float masks scale them
            a = a * block_mask(mask_lhs, block_size, a.shape[-2], a.shape[-1], a.dtype)
            b = b * block_mask(mask_rhs, block_size, b.shape[-2], b.shape[-1], b.dtype)
        out = matmul(a, b)
        if mask_out is not None:
            out = out * block_mask(mask_out, block_size, out.shape[-2], out.shape[-1], out.dtype)
        return out

    def gather_mm(a, b, lhs, rhs, *, left_sorted, right_sorted):
        # The indices pick matrices from a's and b's flattened batch dimensions.
        a3 = a.reshape((math.prod(a.shape[:-2]),) + a.shape[-2:])
        b3 = b.reshape((math.prod(b.shape[:-2]),) + b.shape[-2:])
        return matmul(a3[lhs.astype(jnp.int64)], b3[rhs.astype(jnp.int64)])

    register("Matmul", matmul)
    register("AddMM", addmm)
    register("BlockMaskedMM", block_masked_mm)
    register("GatherMM", gather_mm)

    def convolution(x, w, *, strides, padding_lo, padding_hi, kernel_dilation, input_dilation, groups, flip):
        # MLX: x (N, *spatial, C_in), w (C_out, *spatial, C_in / groups); flip=True convolves
        # (flips the kernel's spatial axes), False cross-correlates as lax does.
        n = x.ndim
        spatial = tuple(range(1, n - 1))
        if flip:
            w = jnp.flip(w, axis=spatial)
        spec = (0, n - 1) + spatial
        dims = lax.ConvDimensionNumbers(spec, spec, spec)
        out = lax.conv_general_dilated(
            x, w, window_strides=tuple(strides), padding=list(zip(padding_lo, padding_hi)),
            lhs_dilation=tuple(input_dilation), rhs_dilation=tuple(kernel_dilation),
            dimension_numbers=dims, feature_group_count=groups, precision=highest,
            preferred_element_type=jnp.float32 if x.dtype in half else None,
        )
        return out.astype(x.dtype)

    register("Convolution", convolution)

    # --- fast ops: MLX's fallback formulas (mlx/fast.cpp) ----------------------------------

    def rms_norm(x, w, *, eps):
        x32 = x.astype(jnp.float32)
        y = x32 * lax.rsqrt(jnp.mean(x32 * x32, axis=-1, keepdims=True) + jnp.float32(eps))
        y = y.astype(x.dtype)
        return y * w if w.ndim else y

    def layer_norm(x, w, b, *, eps):
        x32 = x.astype(jnp.float32)
        mu = jnp.mean(x32, axis=-1, keepdims=True)
        xc = x32 - mu
        y = (xc * lax.rsqrt(jnp.mean(xc * xc, axis=-1, keepdims=True) + jnp.float32(eps))).astype(x.dtype)
        y = y * w if w.ndim else y
        return y + b if b.ndim else y

    def rms_norm_vjp(x, w, g, *, eps):
        n = lax.rsqrt(jnp.mean(x * x, axis=-1, keepdims=True) + jnp.asarray(eps, x.dtype))
        gw = g * w
        t = jnp.mean(gw * x, axis=-1, keepdims=True)
        dx = gw * n - (x * t) * n ** 3
        dw = jnp.zeros_like(w) if w.ndim == 0 else jnp.sum(g * (x * n), axis=tuple(range(g.ndim - 1)))
        return dx, dw

    def layer_norm_vjp(x, w, b, g, *, eps):
        mu = jnp.mean(x, axis=-1, keepdims=True)
        var = jnp.mean(x * x, axis=-1, keepdims=True) - mu * mu
        n = lax.rsqrt(var + jnp.asarray(eps, x.dtype))
        xc = x - mu
        wg = w * g
        sumwg = jnp.mean(wg, axis=-1, keepdims=True)
        sumwgxc = jnp.mean(wg * xc, axis=-1, keepdims=True)
        dx = (wg - sumwg) * n - (xc * sumwgxc) * n ** 3
        axes = tuple(range(g.ndim - 1))
        dw = jnp.zeros_like(w) if w.ndim == 0 else jnp.sum(g * (xc * n), axis=axes)
        db = jnp.zeros_like(b) if b.ndim == 0 else jnp.sum(g, axis=axes)
        return dx, dw, db

    def rope(x, offset, *freqs, dims, traditional, base, scale, forward):
        shape = x.shape
        # (B, N, T, D): a missing head axis is added, extra ones fold into it, as the fallback does.
        x = x[:, None] if x.ndim == 3 else x.reshape(shape[0], math.prod(shape[1:-2]), shape[-2], shape[-1])
        t, half_dims = x.shape[2], dims // 2
        offset = offset.astype(jnp.float32)
        if offset.size > 1:
            offset = offset[:, None, None, None]
        positions = (jnp.arange(t, dtype=jnp.float32)[:, None] + offset) * jnp.float32(scale)
        if freqs:
            inv_freqs = 1 / freqs[0].astype(jnp.float32)
        else:
            inv_freqs = jnp.exp(jnp.arange(0, -half_dims, -1, dtype=jnp.float32) * jnp.float32(math.log(base) / half_dims))
        theta = positions * inv_freqs
        cos, sin = jnp.cos(theta).astype(x.dtype), jnp.sin(theta).astype(x.dtype)
        if traditional:
            x1, x2 = x[..., 0:dims:2], x[..., 1:dims:2]
        else:
            x1, x2 = x[..., :half_dims], x[..., half_dims:dims]
        if forward:
            o1, o2 = x1 * cos - x2 * sin, x1 * sin + x2 * cos
        else:
            o1, o2 = x2 * sin + x1 * cos, x2 * cos - x1 * sin
        rotated = jnp.stack([o1, o2], axis=-1).reshape(x.shape[:-1] + (dims,)) if traditional else jnp.concatenate([o1, o2], axis=-1)
        return jnp.concatenate([rotated, x[..., dims:]], axis=-1).reshape(shape)

    def sdpa(q, k, v, *rest, scale, do_causal, has_sinks, output_logsumexp, force_fused):
        sinks = rest[-1] if has_sinks else None
        mask = rest[0] if len(rest) - has_sinks == 1 else None
        scores = shared.sdpa_scores(jnp, q, k, mask, sinks, scale, do_causal)
        probs = jax.nn.softmax(scores.astype(jnp.float32), axis=-1).astype(q.dtype)  # precise
        if has_sinks:
            probs = probs[..., 1:]
        out = matmul(probs, jnp.expand_dims(v, 2))
        out = shared.sdpa_merge_heads(jnp, out, q.shape[1], k.shape[1])
        if not output_logsumexp:
            return out
        lse = jax.nn.logsumexp(scores.astype(jnp.float32), axis=-1, keepdims=True)
        return out, shared.sdpa_merge_heads(jnp, lse, q.shape[1], k.shape[1])

    # --- quantized: MLX's packed formats (mlx/backend/cpu/quantized.cpp) --------------------
    # Codes are a little-endian bitstream over each row's bytes, for every bit width (3, 5 and 6
    # bits pack 8 or 4 codes into 3 or 5 bytes the same way). Affine: w = scale * code + bias per
    # group. mxfp4 / nvfp4: FP4 (e2m1) codes; mxfp8: FP8 (e4m3) codes; the group scale is a uint8
    # holding an e8m0 power of two (groups of 32) or an e4m3 float (nvfp4's groups of 16).

    # a NumPy table: the rules may first be built inside a jax.jit, where a jnp array would be
    # a tracer that outlives it in the cached table
    fp4 = np.array([0, 0.5, 1, 1.5, 2, 3, 4, 6, -0.0, -0.5, -1, -1.5, -2, -3, -4, -6], np.float32)

    def unpack_codes(w, bits):
        raw = lax.bitcast_convert_type(w, jnp.uint8)
        raw = raw.reshape(w.shape[:-1] + (w.shape[-1] * raw.shape[-1],))
        stream = jnp.unpackbits(raw, axis=-1, bitorder="little")
        n = stream.shape[-1] // bits
        stream = stream[..., : n * bits].reshape(stream.shape[:-1] + (n, bits)).astype(jnp.int32)
        return jnp.sum(stream << jnp.arange(bits, dtype=jnp.int32), axis=-1)

    def group_scale(scales, group_size):
        if group_size == 16:
            return lax.bitcast_convert_type(scales, jnp.float8_e4m3fn).astype(jnp.float32)
        # e8m0 through bfloat16's exponent bits; 0 maps to 2^-127 (0x0040), as MLX does.
        bits16 = jnp.where(scales == 0, jnp.uint16(0x40), scales.astype(jnp.uint16) << 7)
        return lax.bitcast_convert_type(bits16, jnp.bfloat16).astype(jnp.float32)

    def dequantize_weights(w, scales, extras, *, group_size, bits, mode):
        """float32 weights of shape w.shape[:-1] + (k,)."""
        codes = unpack_codes(w, bits)
        if mode == "affine":
            scale = jnp.repeat(scales.astype(jnp.float32), group_size, axis=-1)
            bias = jnp.repeat(extras[0].astype(jnp.float32), group_size, axis=-1)
            return scale * codes.astype(jnp.float32) + bias
        if bits == 4:
            values = jnp.asarray(fp4)[codes]
        else:
            values = lax.bitcast_convert_type(codes.astype(jnp.uint8), jnp.float8_e4m3fn).astype(jnp.float32)
        out = values * jnp.repeat(group_scale(scales, group_size), group_size, axis=-1)
        if not extras:
            return out
        # nvfp4's global scale g (one per expert for GatherQMM) rescales by g / (6 * 448), the
        # largest FP4 value times the largest FP8 one: MLX's CPU dequantize(global_scale=g) is
        # g / 2688 times the one without (checked live).
        g = extras[0].astype(jnp.float32) / jnp.float32(6 * 448)
        return out * (g.reshape(()) if g.size == 1 else g.reshape(g.shape + (1, 1)))

    def quantized_product(x, weights, transpose):
        weights = jnp.swapaxes(weights, -1, -2) if transpose else weights
        out = jnp.matmul(x.astype(jnp.float32), weights, precision=highest)
        return out.astype(x.dtype)

    def quantized_matmul(x, w, scales, *extras, group_size, bits, mode, transpose):
        weights = dequantize_weights(w, scales, extras, group_size=group_size, bits=bits, mode=mode)
        return quantized_product(x, weights, transpose)

    def gather_qmm(x, w, scales, *rest, group_size, bits, mode, transpose, left_sorted, right_sorted):
        *extras, lhs, rhs = rest
        weights = dequantize_weights(w, scales, extras, group_size=group_size, bits=bits, mode=mode)
        x3 = x.reshape((math.prod(x.shape[:-2]),) + x.shape[-2:])[lhs.astype(jnp.int64)]
        w3 = weights.reshape((math.prod(weights.shape[:-2]),) + weights.shape[-2:])[rhs.astype(jnp.int64)]
        return quantized_product(x3, w3, transpose)

    def affine_quantize(w, group_size, bits):
        # fast::Quantize::eval_cpu, in float32 op for op.
        # The barrier keeps XLA from turning x / n_bins into x * (1 / n_bins), which rounds
        # otherwise: a group spanning [-3, 3] must quantize its edge to code 8, not 7.
        n_bins = lax.optimization_barrier(jnp.float32((1 << bits) - 1))
        eps = jnp.float32(1e-7)
        groups = w.astype(jnp.float32).reshape(w.shape[:-1] + (w.shape[-1] // group_size, group_size))
        w_max = jnp.max(groups, axis=-1, keepdims=True)
        w_min = jnp.min(groups, axis=-1, keepdims=True)
        if bits == 1:
            scale, bias = jnp.maximum(w_max - w_min, eps), w_min
        else:
            use_min = jnp.abs(w_min) > jnp.abs(w_max)
            scale = jnp.maximum((w_max - w_min) / n_bins, eps)
            scale = jnp.where(use_min, scale, -scale)
            edge = jnp.where(use_min, w_min, w_max)
            q0 = jnp.round(edge / scale)
            scale = jnp.where(q0 != 0, edge / jnp.where(q0 != 0, q0, 1), scale)
            bias = jnp.where(q0 != 0, edge, jnp.zeros_like(edge))
        codes = jnp.clip(jnp.round((groups - bias) / scale), 0, n_bins).astype(jnp.uint32)
        codes = codes.reshape(w.shape)
        bitplanes = (codes[..., None] >> jnp.arange(bits, dtype=jnp.uint32)) & 1
        stream = bitplanes.reshape(w.shape[:-1] + (w.shape[-1] * bits,)).astype(jnp.uint8)
        packed = jnp.packbits(stream, axis=-1, bitorder="little")
        packed = packed.reshape(packed.shape[:-1] + (packed.shape[-1] // 4, 4))
        packed = lax.bitcast_convert_type(packed, jnp.uint32)
        return packed, scale[..., 0].astype(w.dtype), bias[..., 0].astype(w.dtype)

    def quantize(w, *rest, group_size, bits, mode, dequantize: bool, dtype):
        if dequantize:
            scales, *extras = rest
            out = dequantize_weights(w, scales, extras, group_size=group_size, bits=bits, mode=mode)
            return out.astype(dt(dtype))
        if mode != "affine":
            # On the CPU stream these modes decompose into plain ops; only GPU traces hold them.
            raise UnsupportedPrimitiveError(f"the oracle encodes affine quantization only, not {mode}")
        return affine_quantize(w, group_size, bits)

    register("QuantizedMatmul", quantized_matmul)
    register("GatherQMM", gather_qmm)
    register("Quantize", quantize)

    register("RMSNorm", rms_norm)
    register("LayerNorm", layer_norm)
    register("RMSNormVJP", rms_norm_vjp)
    register("LayerNormVJP", layer_norm_vjp)
    register("RoPE", rope)
    register("ScaledDotProductAttention", sdpa)

    # --- random, creation, sorting, linear algebra, the rest -------------------------------

    def random_bits(key, *, shape, width):
        size = math.prod(shape)
        dtype = dt(shared.random_bits_dtype(width))
        if size == 0 or key.size == 0:
            return jnp.zeros(shape, dtype)
        words, per_key_bytes = shared.random_words(jnp, key, size, width)
        if width == 4:
            return words.reshape(shape)
        raw = lax.bitcast_convert_type(words, jnp.uint8).reshape(words.shape[0], -1)[:, :per_key_bytes]
        return lax.bitcast_convert_type(raw.reshape(raw.shape[0], -1, width), dtype).reshape(shape)

    def arange(*, start, stop, step, dtype):
        t = _numpy_dtype(dtype)
        n = shared.arange_length(start, stop, step)
        if n == 0:
            return jnp.zeros((0,), dt(dtype))
        first = np.array(start).astype(t)
        step_t = np.array(start + step).astype(t) - first
        steps = np.full(n, step_t, dtype=t)
        steps[0] = first
        with np.errstate(over="ignore"):
            return jnp.asarray(np.add.accumulate(steps, dtype=t))

    register("RandomBits", random_bits)
    register("Arange", arange)
    register("Sort", lambda x, *, axis: jnp.sort(x, axis=axis))  # NaN last, as MLX
    register("ArgSort", lambda x, *, axis: jnp.argsort(x, axis=axis, stable=True).astype(jnp.uint32))
    register("Partition", lambda x, *, kth, axis: jnp.sort(x, axis=axis))
    register("ArgPartition", lambda x, *, kth, axis: jnp.argsort(x, axis=axis, stable=True).astype(jnp.uint32))
    register(
        "SearchSorted",
        lambda a, v, *, right: jnp.searchsorted(a, v, side="right" if right else "left").astype(jnp.uint32),
    )

    def fft(x, *, axes, inverse, real, odd_out):
        axes = tuple(axes)
        if real and inverse:
            sizes = [x.shape[a] for a in axes]
            sizes[-1] = 2 * (sizes[-1] - 1) + int(odd_out)
            return jnp.fft.irfftn(x, s=sizes, axes=axes).astype(jnp.float32)
        fn = jnp.fft.rfftn if real else (jnp.fft.ifftn if inverse else jnp.fft.fftn)
        return fn(x, axes=axes).astype(jnp.complex64)

    def hadamard(x, *, scale):
        n = x.shape[-1]
        if n & (n - 1):
            raise UnsupportedPrimitiveError(
                f"Hadamard of size {n}: the oracle builds Sylvester matrices (powers of two) only"
            )
        h = np.ones((1, 1), dtype=np.float32)
        while h.shape[0] < n:  # Sylvester's construction: the transform's natural order
            h = np.block([[h, h], [h, -h]])
        out = jnp.matmul(x.astype(jnp.float32), jnp.asarray(h), precision=highest) * jnp.float32(scale)
        return out.astype(x.dtype)

    register("FFT", fft)
    register("Hadamard", hadamard)

    def triangular_inverse(x, upper):
        tri = jnp.triu(x) if upper else jnp.tril(x)
        eye = jnp.broadcast_to(jnp.eye(x.shape[-1], dtype=x.dtype), x.shape)
        return jax.scipy.linalg.solve_triangular(tri, eye, lower=not upper)

    register("QRF", lambda x: tuple(jnp.linalg.qr(x, mode="reduced")))
    register(
        "SVD",
        lambda x, *, compute_uv: tuple(jnp.linalg.svd(x, full_matrices=True))
        if compute_uv else jnp.linalg.svd(x, compute_uv=False),
    )
    register("Inverse", lambda x, *, tri, upper: triangular_inverse(x, upper) if tri else jnp.linalg.inv(x))
    register(
        "Cholesky",
        lambda x, *, upper: jnp.swapaxes(jnp.linalg.cholesky(x), -1, -2) if upper else jnp.linalg.cholesky(x),
    )
    register(
        "Eig",
        lambda x, *, compute_eigenvectors: tuple(
            a.astype(jnp.complex64) for a in jnp.linalg.eig(x)
        ) if compute_eigenvectors else jnp.linalg.eigvals(x).astype(jnp.complex64),
    )
    register(
        "Eigh",
        lambda x, *, uplo, compute_eigenvectors: tuple(jnp.linalg.eigh(x, UPLO=uplo))
        if compute_eigenvectors else jnp.linalg.eigvalsh(x, UPLO=uplo),
    )
    register(
        "NumberOfElements",
        lambda x, *, axes, inverted, dtype: jnp.asarray(
            np.array(shared.number_of_elements(x.shape, axes, inverted)).astype(_numpy_dtype(dtype))
        ),
    )
    register("Depends", lambda *xs, num_outputs: results(xs[:num_outputs]))
    # The single-process meaning of the collectives that have one: Send outputs its input (the
    # message leaves as a side effect), SumGradients is the identity (its VJP communicates).
    register("Send", lambda x, *, dst, size, rank: x)
    register("SumGradients", lambda x, *, size, rank: x)

    from mlxtriton.graph import fused

    register("Fused", fused.jax_rule)

    def not_evaluated(name: str, reason: str) -> Callable:
        def rule(*inputs, **params):
            raise UnsupportedPrimitiveError(f"cannot evaluate {name} with JAX: {reason}")

        return rule

    for name, reason in NOT_EVALUATED.items():
        register(name, not_evaluated(name, reason))
    return rules


def evaluated() -> frozenset[str]:
    """The primitives the oracle really evaluates."""
    return frozenset(jax_rules()) - frozenset(NOT_EVALUATED)
