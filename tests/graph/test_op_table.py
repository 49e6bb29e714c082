"""The op-semantics layer, one primitive at a time.

An op table row names a primitive, the MLX function that produces it, the dtypes it takes and the
oracle's tolerance per dtype. For each row, hypothesis draws inputs (0-d, empty, broadcasting,
transposed and sliced layouts); the function is traced with ``mx.export_function``, the trace
decoded with the primitive table into a graph, and the graph evaluated twice with
``mlxtriton.evaluate``: (a) with ``backend="mlx"``, which must equal the function's own result bit
for bit on CPU, and (b) with the JAX oracle, which must agree within the row's tolerance.

Then every row meets, in every dtype that MLX accepts (float32, float16, bfloat16, int32, bool and
the row's own), the edge values where libraries differ: NaN, infinities, signed zeros, values that
overflow, the integer extremes. Accumulation (half-precision sums, sequential scans, wrapping
integers) and empty and unit axes have their own exact cases. Fast ops (which decompose on the CPU
stream) and primitives the Python API cannot produce are called directly with params decoded from
their source layout.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Callable

import mlx.core as mx
import numpy as np
import pytest
from hypothesis import assume, given, settings
from hypothesis import strategies as st

from mlxtriton.graph import Eqn, Graph, Var, dtypes, evaluate, evaluate_jax, evaluate_mlx
from mlxtriton.graph.evaluate_jax import from_jax, jax_rules, to_jax
from mlxtriton.graph.evaluate_mlx import MLX_RULES
from mlxtriton.graph.primitives import PRIMITIVES, UnsupportedPrimitiveError, declare, get

# --- tracing (a local stand-in for mlxtriton.trace: the graph layer is tested on its own) -----


def trace(fn: Callable, args, shapeless: bool = False) -> Graph:
    """The flat graph of ``fn(*args)``, its primitives decoded with the primitive table."""
    env: dict[str, Var] = {}
    inputs, constants, output_names, eqns = [], [], [], []

    def var(name, shape, dtype):
        env[name] = Var(tuple(shape), dtypes.from_mx(dtype))
        return env[name]

    def callback(entry):
        kind = entry["type"]
        if kind == "inputs":
            inputs.extend(var(*i) for i in entry["inputs"])
        elif kind == "constants":
            constants.extend((var(name, a.shape, a.dtype), a) for name, a in entry["constants"])
        elif kind == "outputs":
            output_names.extend(name for name, *_ in entry["outputs"])  # defined further down
        elif kind == "primitive":
            avals = [(shape, dtype) for _, shape, dtype in entry["outputs"]]
            params = get(entry["name"]).decode(entry["arguments"], avals)
            ins = [env[i[0]] for i in entry["inputs"]]
            eqns.append(Eqn(entry["name"], ins, [var(*o) for o in entry["outputs"]], params))

    mx.export_function(callback, fn, *args, shapeless=shapeless)
    return Graph(inputs, eqns, [env[name] for name in output_names], constants)


def run(graph: Graph, args, backend: str) -> list:
    """``mlxtriton.evaluate`` of a flat graph, as a list of outputs."""
    return as_list(evaluate(graph, *args, backend=backend))


def as_list(result) -> list:
    return list(result) if isinstance(result, (list, tuple)) else [result]


# --- comparisons ------------------------------------------------------------------------------


def bits(a: mx.array) -> np.ndarray:
    if a.dtype == mx.bool_:
        return np.array(a.astype(mx.uint8))
    if a.dtype == mx.complex64:
        return np.array(a).view(np.uint64)
    return np.array(a.view({1: mx.uint8, 2: mx.uint16, 4: mx.uint32, 8: mx.uint64}[a.dtype.size]))


def assert_bit_identical(expected: list, got: list) -> None:
    assert len(expected) == len(got)
    for i, (e, g) in enumerate(zip(expected, got)):
        assert g.dtype == e.dtype and tuple(g.shape) == tuple(e.shape), f"output {i}: {g.dtype}{g.shape} != {e.dtype}{e.shape}"
        assert np.array_equal(bits(e), bits(g)), f"output {i} differs:\n{e}\n{g}"


def to_numpy(a) -> np.ndarray:
    if isinstance(a, mx.array):
        return dtypes.to_numpy(a)
    a = np.asarray(a)
    return a.astype(np.float32) if a.dtype.name == "bfloat16" else a


def dtype_name(a) -> str:
    return dtypes.from_mx(a.dtype) if isinstance(a, mx.array) else np.asarray(a).dtype.name


def assert_close(expected: list, got: list, rtol: float, atol: float) -> None:
    assert len(expected) == len(got)
    for i, (e, g) in enumerate(zip(expected, got)):
        assert dtype_name(g) == dtype_name(e), f"output {i}: {dtype_name(g)} != {dtype_name(e)}"
        e, g = to_numpy(e), to_numpy(g)
        assert g.shape == e.shape, f"output {i}: shape {g.shape} != {e.shape}"
        if e.dtype.kind in "fc":
            np.testing.assert_allclose(g, e, rtol=rtol, atol=atol, equal_nan=True, err_msg=f"output {i}")
        else:
            np.testing.assert_array_equal(g, e, err_msg=f"output {i}")


def up_to_sign(expected: list, got: list, rtol: float, atol: float) -> None:
    """Decompositions (QR, SVD, eigh) whose vectors LAPACK and XLA may return with other signs."""
    assert_close([mx.abs(e) if e.ndim > 1 else e for e in expected],
                 [np.abs(g) if g.ndim > 1 else g for g in got], rtol, atol)


def eigenvalues_sorted(expected: list, got: list, rtol: float, atol: float) -> None:
    e = np.sort_complex(to_numpy(expected[0]).ravel())
    g = np.sort_complex(to_numpy(got[0]).ravel())
    np.testing.assert_allclose(g, e, rtol=rtol, atol=atol)


def partition_of(kth: int) -> Callable:
    def compare(expected: list, got: list, rtol: float, atol: float) -> None:
        e, g = to_numpy(expected[0]), to_numpy(got[0])
        np.testing.assert_array_equal(np.sort(g, axis=-1), np.sort(e, axis=-1))
        np.testing.assert_array_equal(g[..., kth], e[..., kth])

    return compare


# --- inputs -----------------------------------------------------------------------------------

FLOATS = ("float32", "float16", "bfloat16")
NUMERIC = FLOATS + ("int32",)
ALL = NUMERIC + ("bool",)
SPECIALS = np.array([np.nan, np.inf, -np.inf, -0.0, 0.0], dtype=np.float32)

# Tolerances of the oracle (rtol, atol): MLX's CPU math functions are its own polynomial
# approximations, within a few ulps of XLA's; half types round their float32 result once, so one
# or two ulps of the half type (float16: 2^-10, bfloat16: 2^-7) separate the two libraries.
EXACT = {d: (0.0, 0.0) for d in dtypes.DTYPES}
ULPS = {"float32": (2e-6, 1e-6), "float16": (2e-3, 1e-3), "bfloat16": (1.6e-2, 1e-2),
        "float64": (1e-12, 1e-12), "complex64": (2e-6, 1e-6)}
ACCUMULATED = {"float32": (2e-5, 2e-5), "float16": (4e-3, 4e-3), "bfloat16": (3.2e-2, 3e-2),
               "complex64": (2e-5, 2e-5)}
TOL = {**EXACT, **ULPS}


def values(rng, shape, dtype: str, domain: str, specials: bool) -> np.ndarray:
    if dtype == "bool":
        return rng.random(shape) < 0.5
    if dtype in dtypes.INTEGER:
        lo, hi = {"any": (-20, 21), "positive": (1, 21), "nonneg": (0, 21), "shift": (0, 8 * np.dtype(dtype).itemsize)}[
            domain if domain in ("positive", "nonneg", "shift") else "any"]
        if dtype.startswith("uint"):
            lo = max(lo, 0)
        return rng.integers(lo, hi, shape).astype(dtype)
    if dtype == "complex64":
        return (rng.standard_normal(shape) + 1j * rng.standard_normal(shape)).astype(np.complex64)
    lo_hi = {"any": None, "positive": (0.1, 4.0), "unit": (-0.95, 0.95), "ge1": (1.0, 5.0), "gt-1": (-0.9, 4.0),
             "small": (-4.0, 4.0), "nonneg": (0.0, 4.0)}[domain]
    v = rng.standard_normal(shape) * 2.5 if lo_hi is None else rng.uniform(*lo_hi, shape)
    v = v.astype(np.float32)
    if specials and v.size:
        where = rng.random(shape) < 0.25
        v = np.where(where, rng.choice(SPECIALS, shape), v).astype(np.float32)
    return v


def to_mlx(v: np.ndarray, dtype: str, layout: str) -> mx.array:
    """An evaluated MLX array holding v, laid out contiguously, transposed or with a stride."""
    def make(a):
        return mx.array(a).astype(dtypes.to_mx(dtype)) if dtype == "bfloat16" else mx.array(a, dtype=dtypes.to_mx(dtype))

    if layout == "transposed" and v.ndim >= 2:
        out = mx.swapaxes(make(np.ascontiguousarray(np.swapaxes(v, -1, -2))), -1, -2)
    elif layout == "sliced" and v.ndim >= 1:
        wide = np.zeros(v.shape[:-1] + (2 * v.shape[-1],), dtype=v.dtype)
        wide[..., ::2] = v
        out = make(wide)[..., ::2]
    else:
        out = make(v)
    mx.eval(out)
    return out


LAYOUTS = st.sampled_from(["contiguous", "transposed", "sliced"])
SHAPES = st.sampled_from([(), (0,), (5,), (2, 3), (3, 1), (2, 0, 3), (2, 3, 4)])
AXES_SHAPES = st.sampled_from([(0,), (5,), (2, 3), (3, 1), (2, 0, 3), (2, 3, 4)])  # ndim >= 1
# Reductions get no empty inputs: max / min / argmax / logsumexp reject them, and MLX 0.32.4's
# CPU sum / prod over a zero-length axis sometimes never returns (reduction_op spins in nd_loop).
NONEMPTY = st.sampled_from([(5,), (2, 3), (3, 1), (2, 3, 4)])


def broadcastable(shape) -> st.SearchStrategy:
    """A shape that broadcasts against ``shape``: itself, with ones, or with leading axes dropped."""
    options = {tuple(shape), tuple(shape[1:]), tuple(1 if i == 0 else s for i, s in enumerate(shape)), ()}
    return st.sampled_from(sorted(options))


@st.composite
def elementwise(draw, op, dtype):
    rng = np.random.default_rng(draw(st.integers(0, 2**16)))
    shape = draw(op.shapes)
    shapes = [shape] + [draw(broadcastable(shape)) for _ in range(op.arity - 1)]
    args = []
    for i, s in enumerate(shapes):
        d = "bool" if (op.primitive == "Select" and i == 0) else dtype
        domain = op.domains[i] if i < len(op.domains) else op.domains[-1]
        args.append(to_mlx(values(rng, s, d, domain, op.specials), d, draw(LAYOUTS)))
    return args


def fixed(*specs) -> Callable:
    """Inputs of fixed shapes: (shape, dtype or None for the drawn one, domain[, layout]).

    ``build.edges(op, dtype, fill)`` makes the edge-value test's inputs: ``fill(i, dtype, shape)``
    gives the values of input ``i`` when it has the drawn dtype."""

    def make(op, dtype, rng, layout_of, fill=None):
        out = []
        for i, (shape, d, domain, *layout) in enumerate(specs):
            d = d or dtype
            v = fill(i, d, shape) if fill and d == dtype else values(rng, shape, d, domain, op.specials)
            out.append(to_mlx(v, d, layout[0] if layout else layout_of()))
        return out

    @st.composite
    def build(draw, op, dtype):
        rng = np.random.default_rng(draw(st.integers(0, 2**16)))
        return make(op, dtype, rng, lambda: draw(LAYOUTS))

    build.edges = lambda op, dtype, fill: [make(op, dtype, np.random.default_rng(0), lambda: "contiguous", fill)]
    return build


@dataclass(frozen=True)
class Op:
    primitive: str
    arity: int
    dtypes: tuple[str, ...]
    fn: Callable  # the MLX function whose trace holds the primitive
    tol: dict = field(default_factory=lambda: TOL)
    inputs: Callable = elementwise
    domains: tuple[str, ...] = ("any",)
    specials: bool = False  # mix NaN, +-inf and signed zeros into float inputs
    compare: Callable = assert_close
    shapeless: bool = False
    shapes: st.SearchStrategy = SHAPES  # for the elementwise input builder
    heavy: bool = False  # many equations per example: fewer examples
    name: str = ""
    # (input index, dtype, edge values) -> the values the edge-value test may use: keeps it clear
    # of what C++ leaves undefined (INT_MIN // -1, float -> int casts of NaN, ...).
    edges: Callable | None = None

    @property
    def id(self) -> str:
        return self.name or self.primitive


def unary(primitive, fn, dtypes=FLOATS, domain="any", specials=True, tol=None, name="", edges=None):
    return Op(primitive, 1, dtypes, fn, tol or TOL, domains=(domain,), specials=specials, name=name, edges=edges)


def binary(primitive, fn, dtypes=FLOATS, domains=("any",), specials=True, tol=None, name="", edges=None):
    return Op(primitive, 2, dtypes, fn, tol or TOL, domains=domains, specials=specials, name=name, edges=edges)


def reduce_last(fn):
    return lambda x: fn(x, axis=-1, keepdims=True)


def key_input():
    @st.composite
    def build(draw, op, dtype):
        seed = draw(st.integers(0, 2**16))
        key = mx.random.key(seed)
        mx.eval(key)
        return [key]

    return build


def _masked_scatter(x):
    out = mx.array(x)
    mask = x > 0
    out[mask] = mx.arange(x.size, dtype=x.dtype)
    return out


def _set_rows(x):
    out = mx.array(x)
    out[mx.array([2, 0])] = mx.zeros((2,) + x.shape[1:], dtype=x.dtype)
    return out


def _set_slice(x):
    out = mx.array(x)
    out[1:, ::-2] = mx.array(7, dtype=x.dtype)
    return out


def quantized(modes, bits=4, transpose=True, experts=0):
    """x and a weight matrix quantized (outside the trace) in one of ``modes``."""

    def make(dtype, rng, mode, layout, fill=None):
        x = to_mlx(fill(0, dtype, (3, 64)) if fill else values(rng, (3, 64), dtype, "any", False), dtype, layout)
        w = to_mlx(values(rng, (5, 64) if transpose else (64, 64), dtype, "any", False), dtype, "contiguous")
        packed = mx.quantize(w, group_size=32, bits=bits) if mode == "affine" else mx.quantize(w, mode=mode)
        if experts:
            packed = [mx.stack([p] * experts) for p in packed]
        mx.eval(packed)
        return [x, *packed]

    @st.composite
    def build(draw, op, dtype):
        rng = np.random.default_rng(draw(st.integers(0, 2**16)))
        return make(dtype, rng, draw(st.sampled_from(modes)), draw(LAYOUTS))

    build.edges = lambda op, dtype, fill: [make(dtype, np.random.default_rng(0), mode, "contiguous", fill) for mode in modes]
    return build


def within_one_step(group_size: int, bits: int) -> Callable:
    """Quantize of half inputs: MLX 0.32.4's codes may round one step away from the float32
    reference; dequantized, the two stay within one quantization step of each group."""

    def compare(expected: list, got: list, rtol: float, atol: float) -> None:
        w_e, s_e, b_e = expected
        w_g, s_g, b_g = (mx.array(to_numpy(g)) for g in got)
        assert w_g.dtype == mx.uint32 and w_g.shape == w_e.shape
        np.testing.assert_allclose(to_numpy(s_g), to_numpy(s_e).astype(np.float32), rtol=1.6e-2, atol=1e-3)
        deq_e = mx.dequantize(w_e, s_e.astype(mx.float32), b_e.astype(mx.float32), group_size, bits)
        deq_g = mx.dequantize(w_g, s_g, b_g, group_size, bits)
        step = mx.repeat(mx.abs(s_e.astype(mx.float32)), group_size, axis=-1)
        assert mx.all(mx.abs(deq_e - deq_g) <= 1.05 * step + 1e-2).item()

    return compare


def without_int_min(i, dtype, values):  # INT_MIN // -1 kills MLX's CPU process (SIGFPE)
    return [v for v in values if not (i == 0 and dtype in dtypes.SIGNED and v == np.iinfo(dtype).min)]


def nonzero_divisor(i, dtype, values):  # an integer DivMod by zero kills MLX's CPU process
    values = without_int_min(i, dtype, values)
    return [v for v in values if not (i == 1 and dtype in dtypes.INTEGER and v == 0)]


def shift_counts(i, dtype, values):  # shifting by a negative count or by the width is undefined
    return values if i == 0 else list(range(8 * np.dtype(dtype).itemsize))


def int32_range(i, dtype, values):  # a float -> int cast of NaN, inf or out of range is undefined
    return [v for v in values if dtype not in dtypes.FLOATING or (np.isfinite(v) and abs(v) < 2**31)]


def finite(i, dtype, values):
    # MLX's CPU convolution multiplies padding zeros in some paths (0 * inf = NaN) and skips them
    # in others (dilated, grouped); a quantization group holding inf has no finite scale.
    return [v for v in values if dtype not in dtypes.FLOATING or np.isfinite(v)]


def half_without_nan(i, dtype, values):
    # MLX 0.32.4's CPU cummax / cummin of float16 / bfloat16 give 0 where an operand is NaN
    # (float32 keeps the NaN, as the oracle does in every type).
    return [v for v in values if not (dtype in ("float16", "bfloat16") and np.isnan(v))]


# MLX's CPU quantized matmul accumulates half inputs in the half type itself.
HALF_ACCUMULATION = (3e-2, 0.25)
SPD = fixed(((3, 3), "float32", "any"))
def spd(x):  # symmetric positive definite: Cholesky, eigh, inverse have one answer
    return x @ x.T + 4 * mx.eye(3)


LINALG_TOL = {"float32": (1e-4, 1e-4)}
MATMUL_TOL = {**ACCUMULATED, "float32": (1e-5, 1e-4)}

OPS: list[Op] = [
    # unary
    unary("Abs", mx.abs, ALL),
    unary("Negative", mx.negative, NUMERIC),
    unary("Exp", mx.exp, domain="small"),
    unary("Expm1", mx.expm1, domain="small"),
    unary("Log", mx.log, domain="positive", name="Log-e"),
    unary("Log", mx.log2, domain="positive", name="Log-two"),
    unary("Log", mx.log10, domain="positive", name="Log-ten"),
    unary("Log1p", mx.log1p, domain="gt-1"),
    unary("Sqrt", mx.sqrt, domain="nonneg"),
    unary("Sqrt", mx.rsqrt, domain="positive", name="Sqrt-reciprocal"),
    unary("Square", mx.square, ALL),
    unary("Sin", mx.sin), unary("Cos", mx.cos), unary("Tan", mx.tan, domain="unit"),
    unary("Sinh", mx.sinh, domain="small"), unary("Cosh", mx.cosh, domain="small"),
    unary("Tanh", mx.tanh),
    unary("ArcSin", mx.arcsin, domain="unit"), unary("ArcCos", mx.arccos, domain="unit"),
    unary("ArcTan", mx.arctan), unary("ArcSinh", mx.arcsinh), unary("ArcCosh", mx.arccosh, domain="ge1"),
    unary("ArcTanh", mx.arctanh, domain="unit"),
    unary("Erf", mx.erf, tol={**TOL, "float32": (1e-5, 1e-6)}),
    unary("ErfInv", mx.erfinv, domain="unit", tol={**TOL, "float32": (1e-5, 1e-6)}),
    unary("Sigmoid", mx.sigmoid, tol={**TOL, "float32": (1e-5, 1e-7)}),
    unary("Sign", mx.sign, NUMERIC + ("uint32", "bool")),
    unary("Floor", mx.floor), unary("Ceil", mx.ceil), unary("Round", mx.round),
    unary("LogicalNot", mx.logical_not, ALL),
    unary("AsType", lambda x: x.astype(mx.float16), FLOATS + ("int32", "bool"), name="AsType-f16"),
    unary("AsType", lambda x: x.astype(mx.int32), ("float32", "bfloat16", "uint32"), specials=False, name="AsType-i32",
          edges=int32_range),
    unary("AsType", lambda x: x.astype(mx.bfloat16), ("float32", "int32"), name="AsType-bf16"),
    unary("AsType", lambda x: x.astype(mx.bool_), ALL, name="AsType-bool"),
    unary("Real", mx.real, ("complex64",)), unary("Imag", mx.imag, ("complex64",)),
    unary("Conjugate", mx.conjugate, ("complex64",)),
    # binary
    binary("Add", mx.add, ALL), binary("Subtract", mx.subtract, NUMERIC + ("bool",)),
    binary("Multiply", mx.multiply, ALL), binary("Divide", mx.divide),
    binary("FloorDivide", mx.floor_divide, NUMERIC, tol={**TOL, "float16": (2e-3, 1.0), "bfloat16": (1.6e-2, 1.0)},
           edges=without_int_min),
    binary("Remainder", mx.remainder, NUMERIC, tol={**TOL, "float16": (2e-3, 2e-2), "bfloat16": (1.6e-2, 0.1)},
           edges=without_int_min),
    binary("DivMod", lambda x, y: mx.divmod(x, y), ("float32", "int32"), edges=nonzero_divisor),
    binary("Maximum", mx.maximum, ALL), binary("Minimum", mx.minimum, ALL),
    binary("Power", mx.power, FLOATS, domains=("positive", "small")),
    binary("Power", mx.power, ("int32",), domains=("any", "small"), name="Power-int"),
    binary("ArcTan2", mx.arctan2), binary("LogAddExp", mx.logaddexp),
    binary("Equal", mx.equal, ALL), binary("NotEqual", mx.not_equal, ALL),
    binary("Less", mx.less, ALL), binary("LessEqual", mx.less_equal, ALL),
    binary("Greater", mx.greater, ALL), binary("GreaterEqual", mx.greater_equal, ALL),
    binary("Equal", lambda x, y: [mx.array_equal(x, y, equal_nan=True), mx.array_equal(x, x, equal_nan=True)], FLOATS,
           name="Equal-nan"),
    binary("LogicalAnd", mx.logical_and, ("bool",)), binary("LogicalOr", mx.logical_or, ("bool",)),
    binary("BitwiseBinary", mx.bitwise_and, ("int32", "uint8", "bool"), name="BitwiseBinary-and"),
    binary("BitwiseBinary", mx.bitwise_or, ("int32", "uint8", "bool"), name="BitwiseBinary-or"),
    binary("BitwiseBinary", mx.bitwise_xor, ("int32", "uint8"), name="BitwiseBinary-xor"),
    binary("BitwiseBinary", mx.left_shift, ("int32", "uint8"), domains=("any", "shift"), name="BitwiseBinary-shl",
           edges=shift_counts),
    binary("BitwiseBinary", mx.right_shift, ("int32", "uint32"), domains=("any", "shift"), name="BitwiseBinary-shr",
           edges=shift_counts),
    Op("Select", 3, ALL, mx.where, specials=True),
    # reductions and scans
    *(Op("Reduce", 1, ALL if f in (mx.sum, mx.prod) else NUMERIC, lambda x, f=f: f(x, axis=0, keepdims=True),
         {**TOL, **ACCUMULATED}, name=f"Reduce-{f.__name__}", shapes=NONEMPTY,
         specials=f in (mx.max, mx.min))
      for f in (mx.sum, mx.prod, mx.max, mx.min)),
    Op("Reduce", 1, ALL, lambda x: [mx.all(x, axis=-1), mx.any(x, axis=0)], name="Reduce-and-or", specials=True,
       shapes=NONEMPTY),
    Op("Reduce", 1, FLOATS, lambda x: mx.mean(x, axis=-1), {**TOL, **ACCUMULATED}, name="Reduce-mean", shapes=NONEMPTY),
    Op("ArgReduce", 1, NUMERIC, lambda x: [mx.argmax(x, axis=-1), mx.argmin(x, axis=0)], specials=True, shapes=NONEMPTY),
    Op("LogSumExp", 1, FLOATS, lambda x: mx.logsumexp(x, axis=-1), {**TOL, **ACCUMULATED}, shapes=NONEMPTY),
    Op("Softmax", 1, FLOATS, lambda x: mx.softmax(x, axis=-1), {**TOL, **ACCUMULATED}, shapes=NONEMPTY),
    Op("Softmax", 1, FLOATS, lambda x: mx.softmax(x, axis=-1, precise=True), {**TOL, **ACCUMULATED}, name="Softmax-precise",
       shapes=NONEMPTY),
    *(Op("Scan", 1, ALL, lambda x, f=f, r=r, i=i: f(x, axis=-1, reverse=r, inclusive=i), {**TOL, **ACCUMULATED}, shapes=AXES_SHAPES,
         name=f"Scan-{f.__name__}-{'rev' if r else 'fwd'}-{'inc' if i else 'exc'}",
         edges=half_without_nan if f in (mx.cummax, mx.cummin) else None)
      for f in (mx.cumsum, mx.cumprod, mx.cummax, mx.cummin) for r in (False, True) for i in (True, False)),
    # movement
    unary("Broadcast", lambda x: mx.broadcast_to(x, (2,) + x.shape), ALL),
    unary("Reshape", lambda x: x.reshape(-1), ALL),
    unary("Transpose", lambda x: x.T, ALL),
    unary("ExpandDims", lambda x: mx.expand_dims(x, (0, -1)), ALL),
    unary("Squeeze", lambda x: mx.squeeze(x[None]), ALL),
    Op("Flatten", 1, ALL, lambda x: mx.flatten(x, 1, 2), inputs=fixed(((2, 3, 4), None, "any"))),
    Op("Unflatten", 1, ALL, lambda x: mx.unflatten(x, 1, (3, 1)), inputs=fixed(((2, 3), None, "any"))),
    Op("Slice", 1, ALL, lambda x: [x[1:, ::2], x[::-1, 3:0:-2], x[-2:, :-1]], inputs=fixed(((4, 5), None, "any"))),
    Op("SliceUpdate", 1, ALL, _set_slice, inputs=fixed(((4, 5), None, "any"))),
    Op("SliceUpdate", 1, NUMERIC, lambda x: [x.at[1:3].add(x[:2]), x.at[::2, 1:].maximum(x[::2, :-1]),
                                           x.at[1:].multiply(x[:-1]), x.at[:, ::-1].minimum(x)],
       inputs=fixed(((4, 5), None, "any")), name="SliceUpdate-reduce", heavy=True),
    Op("Concatenate", 2, ALL, lambda x, y: mx.concatenate([x, y, x], axis=1),
       inputs=fixed(((2, 3), None, "any"), ((2, 1), None, "any"))),
    Op("Split", 1, ALL, lambda x: mx.split(x, [1, 3], axis=1), inputs=fixed(((2, 5), None, "any"))),
    Op("Pad", 1, ALL, lambda x: mx.pad(x, ((1, 0), (0, 2)), constant_values=1), inputs=fixed(((2, 3), None, "any"))),
    # MLX's AsStrided rejects strided inputs ("must be used with row contiguous arrays only").
    Op("AsStrided", 1, ALL, lambda x: mx.as_strided(x, (3, 2), (1, 3), 1), inputs=fixed(((3, 3), None, "any", "contiguous"))),
    Op("View", 1, ("float32", "int32"), lambda x: [x.view(mx.uint32), x.view(mx.uint16), x.view(mx.int8)],
       inputs=fixed(((2, 3), None, "any")), specials=True),
    Op("View", 1, ("float16", "bfloat16"), lambda x: [x.view(mx.int16), x[..., :2].view(mx.float32)],
       inputs=fixed(((2, 4), None, "any")), name="View-half"),
    unary("Full", lambda x: mx.zeros_like(x) + x, ALL),
    Op("Arange", 1, ("float32",), lambda x: [x + mx.arange(3), mx.arange(0.1, 0.4, 0.1, dtype=x.dtype),
                                            mx.arange(-7, 13, 3, dtype=mx.int32), mx.arange(2.5, -1.0, -0.7),
                                            mx.arange(5, 0, -2, dtype=mx.uint32), mx.arange(0.1, 100.0, 0.1)],
       inputs=fixed(((3,), None, "any"))),
    Op("Arange", 1, ("float16", "bfloat16"), lambda x: x + mx.arange(0.1, 2.0, 0.3, dtype=x.dtype),
       inputs=fixed(((7,), None, "any")), tol=EXACT, name="Arange-half"),
    # indexing
    Op("Gather", 1, ALL, lambda x: [mx.take(x, mx.array([0, 2, -1]), axis=1), x[mx.array([1, 0, 1]), mx.array([2, -3, 0])],
                                    x[:, mx.array([[1, 0]])], mx.take(x, mx.array([[0, 5]]))],
       inputs=fixed(((2, 3), None, "any")), heavy=True),
    Op("GatherAxis", 1, ALL, lambda x: mx.take_along_axis(x, mx.array([[0, 2], [2, -1]]), axis=1),
       inputs=fixed(((2, 3), None, "any"))),
    Op("Scatter", 1, ALL, _set_rows, inputs=fixed(((3, 4), None, "any"))),
    Op("Scatter", 1, NUMERIC, lambda x: [x.at[mx.array([1, 1, 0])].add(x[:3]), x.at[mx.array([2, 0])].multiply(x[:2]),
                                       x.at[mx.array([0, 2])].maximum(x[1:]), x.at[mx.array([1])].minimum(x[:1])],
       inputs=fixed(((3, 4), None, "any")), tol={**TOL, **ACCUMULATED}, name="Scatter-reduce", heavy=True),
    Op("ScatterAxis", 1, ALL, lambda x: mx.put_along_axis(x, mx.array([[0], [2], [1]]), x[:, :1], axis=1),
       inputs=fixed(((3, 4), None, "any"))),
    Op("ScatterAxis", 1, FLOATS, lambda x: mx.grad(lambda y: mx.take_along_axis(y, mx.array([[0, 0], [2, 1], [1, 1]]), axis=1).sum())(x),
       inputs=fixed(((3, 4), None, "any")), name="ScatterAxis-sum"),
    Op("MaskedScatter", 1, NUMERIC, _masked_scatter, inputs=fixed(((3, 4), None, "any"))),
    Op("DynamicSlice", 1, ALL, lambda x: mx.slice(x, mx.array([1, 0]), axes=(0, 1), slice_size=(2, 2)),
       inputs=fixed(((3, 4), None, "any"))),
    Op("DynamicSliceUpdate", 1, ALL, lambda x: mx.slice_update(x, x[:1, :2], mx.array([2]), axes=(0,)),
       inputs=fixed(((3, 4), None, "any"))),
    # matmul, convolution
    Op("Matmul", 2, FLOATS, mx.matmul, MATMUL_TOL, inputs=fixed(((2, 3, 4), None, "any"), ((4, 5), None, "any"))),
    Op("AddMM", 3, FLOATS, lambda c, a, b: mx.addmm(c, a, b, alpha=2.0, beta=0.5), MATMUL_TOL,
       inputs=fixed(((3, 5), None, "any"), ((3, 4), None, "any"), ((4, 5), None, "any"))),
    Op("BlockMaskedMM", 2, ("float32",), lambda a, b: [
        mx.block_masked_mm(a, b, 32, mask_out=mx.array([[True, False]]), mask_lhs=mx.array([[True, False]]),
                           mask_rhs=mx.array([[True, True], [False, True]])),
        mx.block_masked_mm(a, b, 32, mask_lhs=mx.array([[0.5, 2.0]]), mask_rhs=mx.array([[1.0, -1.0], [2.0, 0.0]])),
        mx.block_masked_mm(a[:20], b, 32, mask_out=mx.array([[False, True]]))],
       MATMUL_TOL, inputs=fixed(((32, 64), None, "any"), ((64, 64), None, "any")), heavy=True),
    Op("GatherMM", 2, ("float32",), lambda a, b: [mx.gather_mm(a, b, lhs_indices=mx.array([1, 0]), rhs_indices=mx.array([0, 2])),
                                           mx.gather_mm(a[:1], b, rhs_indices=mx.array([0, 1, 1]), sorted_indices=True)],
       MATMUL_TOL, inputs=fixed(((2, 2, 3), None, "any"), ((3, 3, 4), None, "any"))),
    Op("Convolution", 2, FLOATS, lambda x, w: [
        mx.conv2d(x, w, stride=(2, 1), padding=1, dilation=(1, 2)),
        mx.conv2d(x, w[:, :, :, :1], groups=2),
        mx.conv_transpose2d(x, w[:2], stride=2, padding=1),
        mx.conv_general(x, w, padding=([1, 0], [0, 1]), input_dilation=2, flip=True)],
       MATMUL_TOL, inputs=fixed(((1, 5, 5, 2), None, "any"), ((4, 3, 3, 2), None, "any")), heavy=True,
       edges=finite),
    Op("Convolution", 2, ("float32",), lambda x, w: mx.conv1d(x, w, stride=2, padding=1), MATMUL_TOL,
       inputs=fixed(((2, 9, 3), None, "any"), ((5, 3, 3), None, "any")), name="Convolution-1d", edges=finite),
    # sorting, searching
    Op("Sort", 1, NUMERIC, lambda x: [mx.sort(x, axis=0), mx.sort(x, axis=-1)], specials=True, shapes=AXES_SHAPES),
    Op("ArgSort", 1, ("float32", "int32"), lambda x: mx.argsort(x.reshape(-1) + mx.arange(x.size, dtype=x.dtype) * 100)),
    Op("Partition", 1, ("float32", "int32"), lambda x: mx.partition(x, 2), inputs=fixed(((3, 6), None, "any")),
       compare=partition_of(2)),
    Op("ArgPartition", 1, ("float32",), lambda x: mx.take_along_axis(x, mx.argpartition(x, 1), axis=-1),
       inputs=fixed(((3, 6), None, "any")), compare=partition_of(1)),
    Op("SearchSorted", 1, ("float32", "int32"), lambda x: [mx.searchsorted(mx.sort(x.reshape(-1)), x),
                                                         mx.searchsorted(mx.sort(x.reshape(-1)), x, side="right")],
       shapes=NONEMPTY),
    # random
    Op("RandomBits", 1, ("uint32",), lambda k: [mx.random.split(k, 3), mx.random.uniform(shape=(5,), key=k),
                                              mx.random.randint(0, 9, (3, 7), key=k), mx.random.bernoulli(0.3, (2, 3), key=k),
                                              mx.random.uniform(shape=(3,), dtype=mx.float16, key=k)],
       inputs=key_input(), heavy=True),
    # FFT, Hadamard
    Op("FFT", 1, ("float32",), lambda x: [mx.fft.rfft(x), mx.fft.irfft(mx.fft.rfft(x), n=5), mx.fft.rfft2(x),
                                          mx.fft.irfft2(mx.fft.rfft2(x)), mx.fft.fft2(x.astype(mx.complex64)),
                                          mx.fft.ifft(x.astype(mx.complex64), axis=0)],
       {**TOL, **ACCUMULATED}, inputs=fixed(((4, 6), None, "any")), heavy=True),
    Op("Hadamard", 1, FLOATS, lambda x: mx.hadamard_transform(x, scale=0.5), {**TOL, **ACCUMULATED},
       inputs=fixed(((3, 16), None, "any"))),
    # linear algebra (CPU stream only)
    Op("Inverse", 1, ("float32",), lambda x: [mx.linalg.inv(spd(x), stream=mx.cpu), mx.linalg.tri_inv(spd(x), upper=True, stream=mx.cpu),
                                              mx.linalg.tri_inv(spd(x), stream=mx.cpu)], LINALG_TOL, inputs=SPD, heavy=True),
    Op("Cholesky", 1, ("float32",), lambda x: [mx.linalg.cholesky(spd(x), stream=mx.cpu), mx.linalg.cholesky(spd(x), upper=True, stream=mx.cpu)],
       LINALG_TOL, inputs=SPD),
    Op("QRF", 1, ("float32",), lambda x: mx.linalg.qr(spd(x), stream=mx.cpu), LINALG_TOL, inputs=SPD, compare=up_to_sign),
    Op("SVD", 1, ("float32",), lambda x: mx.linalg.svd(spd(x), stream=mx.cpu), LINALG_TOL, inputs=SPD, compare=up_to_sign),
    Op("SVD", 1, ("float32",), lambda x: mx.linalg.svd(spd(x), compute_uv=False, stream=mx.cpu), LINALG_TOL, inputs=SPD,
       name="SVD-values"),
    Op("Eigh", 1, ("float32",), lambda x: mx.linalg.eigh(spd(x), UPLO="U", stream=mx.cpu), LINALG_TOL, inputs=SPD, compare=up_to_sign),
    Op("Eigh", 1, ("float32",), lambda x: mx.linalg.eigvalsh(spd(x), stream=mx.cpu), LINALG_TOL, inputs=SPD, name="Eigh-values"),
    Op("Eig", 1, ("float32",), lambda x: mx.linalg.eigvals(spd(x), stream=mx.cpu), LINALG_TOL, inputs=SPD,
       compare=eigenvalues_sorted),
    Op("Eig", 1, ("float32",), lambda x: mx.linalg.eig(spd(x), stream=mx.cpu)[0], LINALG_TOL, inputs=SPD,
       compare=eigenvalues_sorted, name="Eig-vectors"),
    # quantized
    Op("Quantize", 1, ("float32",), lambda w: [*mx.quantize(w, group_size=32, bits=4), *mx.quantize(w, 64, 3),
                                                *mx.quantize(w, 128, 8), *mx.quantize(w, 32, 5)], EXACT,
       inputs=fixed(((4, 128), None, "any")), heavy=True, edges=finite),
    Op("Quantize", 1, ("float16", "bfloat16"), lambda w: mx.quantize(w, group_size=32, bits=4),
       inputs=fixed(((4, 64), None, "any")), compare=within_one_step(32, 4), name="Quantize-half"),
    Op("QuantizedMatmul", 4, ("float32", "float16"), lambda x, w, s, b: mx.quantized_matmul(x, w, s, b, group_size=32, bits=4),
       {"float32": (1e-4, 1e-4), "float16": HALF_ACCUMULATION}, inputs=quantized(["affine"], 4)),
    Op("QuantizedMatmul", 4, ("float32",), lambda x, w, s, b: mx.quantized_matmul(x, w, s, b, transpose=False, group_size=32, bits=6),
       {"float32": (1e-4, 1e-4)}, inputs=quantized(["affine"], 6, transpose=False), name="QuantizedMatmul-6bit"),
    *(Op("QuantizedMatmul", 3, ("float32",), lambda x, w, s, m=mode: mx.quantized_matmul(x, w, s, mode=m),
         {"float32": (1e-4, 1e-4)}, inputs=quantized([mode]), name=f"QuantizedMatmul-{mode}")
      for mode in ("mxfp4", "mxfp8", "nvfp4")),
    Op("GatherQMM", 4, ("float32",), lambda x, w, s, b: mx.gather_qmm(x, w, s, b, group_size=32, bits=4,
                                                                     lhs_indices=mx.array([0, 0]), rhs_indices=mx.array([1, 0])),
       {"float32": (1e-4, 1e-4)}, inputs=quantized(["affine"], 4, experts=2)),
    # shapeless exports only
    Op("BroadcastAxes", 2, ("float32",), lambda a, b: a @ b, MATMUL_TOL, shapeless=True,
       inputs=fixed(((2, 3, 4), None, "any"), ((1, 4, 5), None, "any"))),
    Op("NumberOfElements", 1, FLOATS, lambda x: mx.mean(x, axis=-1), {**TOL, **ACCUMULATED}, shapeless=True,
       inputs=fixed(((2, 6), None, "any"))),
    # the rest
    Op("Depends", 2, ("float32",), lambda a, b: mx.depends([a, b * 2], [a]), inputs=fixed(((2, 3), None, "any"), ((3,), None, "any"))),
]

NO_TRACE = {  # reason the Python API cannot produce it on the CPU stream
    "Copy": "no Python op creates a Copy primitive",
    "StopGradient": "the exporter's simplification removes it",
    "RMSNorm": "fast op: decomposes on the CPU stream", "LayerNorm": "fast op: decomposes on the CPU stream",
    "RMSNormVJP": "fast op: decomposes on the CPU stream", "LayerNormVJP": "fast op: decomposes on the CPU stream",
    "RoPE": "fast op: decomposes on the CPU stream",
    "ScaledDotProductAttention": "fast op: decomposes on the CPU stream",
    "CustomKernel": "runs only on a GPU",
    "Fused": "made by fusion, never traced",
    **dict.fromkeys(("AllReduce", "AllGather", "ReduceScatter", "Send", "Recv", "SumGradients"),
                    "a collective: traced and checked on several processes by tests/distributed"),
}


def check_row(op: Op, data) -> None:
    dtype = data.draw(st.sampled_from(op.dtypes), label="dtype")
    args = data.draw(op.inputs(op, dtype), label="inputs")
    expected = as_list(op.fn(*args))
    mx.eval(expected)
    g = trace(op.fn, args, shapeless=op.shapeless)
    assume(op.primitive in g.primitive_counts())  # e.g. a reduction over an empty axis list makes none

    assert_bit_identical(expected, run(g, args, "mlx"))
    rtol, atol = op.tol.get(dtype, TOL.get(dtype, (0.0, 0.0)))
    op.compare(expected, run(g, args, "jax"), rtol, atol)


# The oracle's cost is XLA compiling each rule for each new shape and dtype (~20 ms each on the
# CI's two cores): rows draw 3 examples, rows whose functions hold dozens of equations 2.
@pytest.mark.parametrize("op", [op for op in OPS if not op.heavy], ids=lambda op: op.id)
@settings(max_examples=3)
@given(data=st.data())
def test_rules_reproduce_mlx(op: Op, data):
    check_row(op, data)


@pytest.mark.parametrize("op", [op for op in OPS if op.heavy], ids=lambda op: op.id)
@settings(max_examples=2)
@given(data=st.data())
def test_rules_reproduce_mlx_heavy(op: Op, data):
    check_row(op, data)


# --- edge values: every row x every dtype MLX accepts, over the values where libraries differ ---

# NaN, infinities, signed zeros, values that overflow when added or multiplied, the integer
# extremes (wrapping), bool. No subnormals: XLA's CPU flushes subnormal inputs and results to
# zero, MLX keeps them (the oracle does not model them).
EDGE_VALUES = {
    "float32": [np.nan, np.inf, -np.inf, -0.0, 0.0, 1.0, -1.0, 0.5, -2.5, 3.0, 1e30, -1e30, 1e-30],
    "float16": [np.nan, np.inf, -np.inf, -0.0, 0.0, 1.0, -1.0, 0.5, -2.5, 3.0, 65504.0, -65504.0, 6.1e-5],
    "int32": [-2**31, -2**31 + 1, -7, -2, -1, 0, 1, 2, 3, 31, 2**31 - 1],
    "uint32": [0, 1, 2, 3, 31, 2**31, 2**32 - 1],
    "uint8": [0, 1, 2, 7, 128, 255],
    "bool": [False, True],
}
EDGE_VALUES["bfloat16"] = EDGE_VALUES["float32"]
EDGE_VALUES["complex64"] = [complex(np.nan, 0), complex(0, np.inf), complex(-np.inf, 1), -0.0 + 0j, 1 + 0j, 1j,
                            -2.5 - 0.5j, complex(1e30, -1e30)]
EDGE_DTYPES = ("float32", "float16", "bfloat16", "int32", "bool")

NO_EDGES = {  # rows whose inputs must keep a structure that edge values would break
    "RandomBits": "its input is a random key, not a value",
    "Inverse": "needs a well-conditioned matrix", "Cholesky": "needs a positive definite matrix",
    "QRF": "needs a well-conditioned matrix", "SVD": "needs a well-conditioned matrix",
    "SVD-values": "needs a well-conditioned matrix", "Eigh": "needs a symmetric matrix",
    "Eigh-values": "needs a symmetric matrix", "Eig": "needs a well-conditioned matrix",
    "Eig-vectors": "needs a well-conditioned matrix",
    "Quantize-half": "compared up to one quantization step, which infinities make unbounded",
    "ArgSort": "its input is made distinct inside the function",
}


def edge_fill(values, dtype: str, shape, start: int = 0) -> np.ndarray:
    """``shape`` filled with ``values`` cycled from ``start``, as the NumPy type to_mlx takes."""
    a = np.resize(np.roll(np.array(values, dtype=object), -start), shape)
    if dtype in dtypes.INEXACT:
        return a.astype(np.complex64 if dtype == "complex64" else np.float32)
    return a.astype(bool if dtype == "bool" else np.int64)


def edge_inputs(op: Op, dtype: str) -> list[list[mx.array]]:
    """Input sets that put every edge value (binary rows: every pair) through the row."""

    def values_for(i, d):
        v = EDGE_VALUES[d]
        return op.edges(i, d, v) if op.edges and d == dtype else v

    def array(values, d, shape):
        return to_mlx(edge_fill(values, d, shape), d, "contiguous")

    if op.inputs is elementwise:
        if op.primitive == "Select":
            x, y = values_for(1, dtype), values_for(2, dtype)
            return [[array([False, True], "bool", (2, 1, 1)), array(x, dtype, (1, len(x), 1)), array(y, dtype, (1, 1, len(y)))]]
        if op.arity == 2:
            x, y = values_for(0, dtype), values_for(1, dtype)
            # Every pair, as two arrays of one shape (array_equal compares only equal shapes).
            return [[array(np.repeat(x, len(y)), dtype, (len(x), len(y))), array(y, dtype, (len(x), len(y)))]]
        v = values_for(0, dtype)
        if op.shapes is SHAPES:
            return [[array(v, dtype, (len(v),))]]
        # Reductions, scans, sorts: every pair along the last axis; all values along the first.
        pairs = np.array([(a, b) for a in v for b in v], dtype=object)
        return [[array(pairs.ravel(), dtype, (len(pairs), 2))], [array(pairs.T.ravel(), dtype, (2, len(pairs)))]]
    # Other rows fill their inputs of the drawn dtype with the edge values, each input from
    # another start so that the same positions meet different values.
    return op.inputs.edges(op, dtype, lambda i, d, shape: edge_fill(values_for(i, d), d, shape, i))


def edge_cases():
    """(row, dtype) pairs whose trace gives the row's primitive an input or output of that dtype."""
    for op in OPS:
        if op.id in NO_EDGES or op.shapeless:  # shapeless rows repeat other rows' primitives
            continue
        for dtype in dict.fromkeys(EDGE_DTYPES + op.dtypes):
            if dtype not in EDGE_VALUES:
                continue
            try:
                args = edge_inputs(op, dtype)[0]
                mx.eval(op.fn(*args))
                g = trace(op.fn, args)
            except (ValueError, TypeError, RuntimeError):
                continue  # MLX refuses this dtype
            if dtype not in op.dtypes and any(dtype in other.dtypes for other in OPS if other.primitive == op.primitive):
                continue  # another row of the primitive covers the dtype
            if any(e.primitive == op.primitive and any(v.dtype == dtype for v in e.inputs + e.outputs) for e in g.eqns):
                yield pytest.param(op, dtype, id=f"{op.id}-{dtype}")


def assert_signed_zeros(expected: list, got: list) -> None:
    for i, (e, g) in enumerate(zip(expected, got)):
        e, g = to_numpy(e), to_numpy(g)
        if e.dtype.kind != "f":
            continue
        zeros = (e == 0) & (g == 0)
        assert np.array_equal(np.signbit(e[zeros]), np.signbit(g[zeros])), f"output {i}: signs of zeros differ"


EDGE_CASES = list(edge_cases())


def test_edge_values_cover_every_row():
    covered = {param.values[0].id for param in EDGE_CASES}
    for op in OPS:
        assert op.id in covered or op.id in NO_EDGES or op.shapeless, f"{op.id} has no edge-value case"


@pytest.mark.parametrize("op, dtype", EDGE_CASES)
def test_edge_values(op: Op, dtype: str):
    rtol, atol = op.tol.get(dtype, TOL.get(dtype, (0.0, 0.0)))
    for args in edge_inputs(op, dtype):
        expected = as_list(op.fn(*args))
        mx.eval(expected)
        g = trace(op.fn, args)
        got = run(g, args, "jax")
        op.compare(expected, got, rtol, atol)
        if op.compare is assert_close:
            assert_signed_zeros(expected, got)


ACCUMULATION_CASES = [  # (name, function, input): exact in MLX, so exact in the oracle
    ("sum of sixteen 50s", lambda x: mx.sum(x), mx.full((16,), 50.0, mx.bfloat16)),
    ("sum of 3000 ones", lambda x: mx.sum(x, axis=-1), mx.ones((2, 3000), mx.bfloat16)),
    ("strided sum", lambda x: mx.sum(x, axis=0), mx.ones((3000, 2), mx.bfloat16)),
    ("float16 sum", lambda x: mx.sum(x), mx.ones((40000,), mx.float16)),
    ("variance of a constant", lambda x: mx.var(x, axis=-1), mx.full((3, 7), 0.25, mx.bfloat16)),
    ("mean", lambda x: mx.mean(x), mx.full((3000,), 1.0, mx.bfloat16)),
    ("product", lambda x: mx.prod(x, axis=-1), mx.full((3, 7), 1.1, mx.bfloat16)),
    ("cumsum rounds at every step", lambda x: mx.cumsum(x, axis=-1), mx.ones((2, 3000), mx.bfloat16)),
    ("reverse float16 cumsum", lambda x: mx.cumsum(x, axis=0, reverse=True), mx.ones((3000, 2), mx.float16)),
    ("matmul", lambda x: x[None, :300] @ x[:300, None], mx.ones((300,), mx.bfloat16)),
    ("softmax of a constant row", lambda x: mx.softmax(x, axis=-1), mx.full((2, 64), 3.0, mx.bfloat16)),
    ("int32 sum wraps", lambda x: mx.sum(x), mx.array([2**31 - 1, 1, 5], mx.int32)),
    ("int32 cumprod wraps", lambda x: mx.cumprod(x), mx.full((40,), 3, mx.int32)),
    ("int32 power wraps", lambda x: x ** mx.array([40, 2**31 - 1, 31, -1], mx.int32), mx.array([3, -7, 2, 1], mx.int32)),
    ("bool sum", lambda x: mx.sum(x, axis=0), mx.ones((300, 2), mx.bool_)),
]


@pytest.mark.parametrize("fn, x", [case[1:] for case in ACCUMULATION_CASES], ids=[case[0] for case in ACCUMULATION_CASES])
def test_oracle_accumulates_as_mlx(fn, x):
    # Half-precision sums and products accumulate in float32 and round once, scans round at every
    # step in the output type, integers wrap: the oracle reproduces these results exactly.
    expected = as_list(fn(x))
    got = run(trace(fn, [x]), [x], "jax")
    for e, g in zip(expected, got):
        assert dtype_name(g) == dtype_name(e)
        np.testing.assert_array_equal(to_numpy(g), to_numpy(e))


# Shapes with empty and unit axes, inside and outside the axes an op works on.
EMPTY_AND_UNIT = [(2, 7, 0), (0, 3), (2, 0, 3), (1, 0, 1), (0,), (1, 1, 1), (3, 1, 2)]
SHAPE_CASES = {
    "flatten-leading": lambda x: mx.flatten(x, 0, 1) if x.ndim > 1 else mx.flatten(x),
    "flatten-trailing": lambda x: mx.flatten(x, -2, -1) if x.ndim > 1 else mx.flatten(x),
    "flatten-all": mx.flatten,
    "unflatten": lambda x: mx.unflatten(x, 0, (1, x.shape[0])),
    "reshape-inferred": lambda x: x.reshape(-1, *x.shape[1:]),
    "reshape-reversed": lambda x: x.reshape(x.shape[::-1]),
    "transpose": lambda x: x.T,
    "moveaxis": lambda x: mx.moveaxis(x, 0, -1),
    "squeeze": mx.squeeze,
    "expand": lambda x: mx.expand_dims(x, (0, -1)),
    "broadcast": lambda x: mx.broadcast_to(x[..., :1], x.shape[:-1] + (3,)),
    "slice": lambda x: [x[..., 1:], x[::-1]],
    "split": lambda x: mx.split(x, [1], axis=0),
    "concatenate": lambda x: mx.concatenate([x, x], axis=-1),
    "stack": lambda x: mx.stack([x, x], axis=1),
    "pad": lambda x: mx.pad(x, [(1, 0)] * x.ndim),
    "view": lambda x: x.view(mx.int8),
    "repeat": lambda x: mx.repeat(x, 2, axis=0),
    "take": lambda x: mx.take(x, mx.array([0, 0]), axis=-1),
    "matmul-vector": lambda x: x @ mx.ones((x.shape[-1],)),  # issue 24's Flatten over (2, 7, 0)
    "matmul": lambda x: x @ mx.ones((x.shape[-1], 2)),
    "sum": lambda x: [mx.sum(x, axis=-1), mx.sum(x, axis=0)],
    "cumsum": lambda x: mx.cumsum(x, axis=0),
    "softmax": lambda x: mx.softmax(x, axis=-1),
    "max": lambda x: mx.max(x, axis=-1),
}


def shape_cases():
    for name, fn in SHAPE_CASES.items():
        accepted = []
        for shape in EMPTY_AND_UNIT:
            x = mx.zeros(shape)
            try:
                mx.eval(fn(x))
            except (ValueError, RuntimeError, IndexError):
                continue  # MLX refuses the shape too
            accepted.append(shape)
        yield pytest.param(fn, accepted, id=name)


@pytest.mark.parametrize("fn, shapes", list(shape_cases()))
def test_empty_and_unit_axes(fn, shapes):
    assert shapes, "MLX accepts none of the shapes"
    for shape in shapes:
        x = mx.arange(math.prod(shape), dtype=mx.float32).reshape(shape)
        expected = as_list(fn(x))
        g = trace(fn, [x])
        assert_bit_identical(expected, run(g, [x], "mlx"))
        assert_close(expected, run(g, [x], "jax"), 1e-6, 1e-6)


# --- primitives outside the tracer's reach: called directly ------------------------------------


def rand(shape, dtype=mx.float32, seed=0):
    out = mx.random.normal(shape, key=mx.random.key(seed)).astype(dtype)
    mx.eval(out)
    return out


def oracle(name: str, args, params):
    return as_list(jax_rules()[name](*(to_jax(a) for a in args), **params))


@pytest.mark.parametrize("dtype", FLOATS)
def test_norms(dtype):
    d = dtypes.to_mx(dtype)
    x, w, b = rand((2, 3, 8), d), rand((8,), d, 1), rand((8,), d, 2)
    tol = {**TOL, **ACCUMULATED}[dtype]
    rms = get("RMSNorm").decode([1e-5])  # state (nullptr, eps): the exporter drops the nullptr
    for weight, kwargs in ((w, {}), (mx.array(1, d), {})):
        expected = [mx.fast.rms_norm(x, weight if weight.ndim else None, 1e-5)]
        assert_bit_identical(expected, as_list(MLX_RULES["RMSNorm"](x, weight, **rms)))
        assert_close(expected, [from_jax(o) for o in oracle("RMSNorm", [x, weight], rms)], *tol)
    ln = get("LayerNorm").decode([1e-5])
    for weight, bias in ((w, b), (mx.array(1, d), mx.array(0, d))):
        expected = [mx.fast.layer_norm(x, weight if weight.ndim else None, bias if bias.ndim else None, 1e-5)]
        assert_bit_identical(expected, as_list(MLX_RULES["LayerNorm"](x, weight, bias, **ln)))
        assert_close(expected, [from_jax(o) for o in oracle("LayerNorm", [x, weight, bias], ln)], *tol)


def with_edges(shape, dtype: str, seed=0) -> mx.array:
    """Random values with one edge value per row (every edge value in some row)."""
    v = np.array(rand(shape, mx.float32, seed)).reshape(-1, shape[-1])
    edges = [e for e in EDGE_VALUES[dtype] if not (np.isfinite(e) and abs(e) > 1e4)]  # squares stay finite
    for i in range(v.shape[0]):
        v[i, (i * 7) % v.shape[1]] = edges[i % len(edges)]
    return to_mlx(v.reshape(shape), dtype, "contiguous")


@pytest.mark.parametrize("dtype", FLOATS)
def test_fast_ops_edge_values(dtype):
    # The fast ops decompose on the CPU stream, so the table's edge-value test does not reach them.
    x, w, b = with_edges((2, 13, 16), dtype), with_edges((16,), dtype, 1), with_edges((16,), dtype, 2)
    q, k, v = with_edges((1, 2, 13, 8), dtype, 3), with_edges((1, 2, 5, 8), dtype, 4), with_edges((1, 2, 5, 8), dtype, 5)
    offset = mx.array(2, mx.int32)
    tol = {**TOL, **ACCUMULATED}[dtype]
    cases = [
        ("RMSNorm", [x, w], [1e-5], mx.fast.rms_norm(x, w, 1e-5)),
        ("LayerNorm", [x, w, b], [1e-5], mx.fast.layer_norm(x, w, b, 1e-5)),
        ("RoPE", [x, offset], [16, False, 10000.0, 1.0, True], mx.fast.rope(x, 16, traditional=False, base=10000.0, scale=1.0, offset=offset)),
        ("ScaledDotProductAttention", [q, k, v], [0.5, False, False, False, False],
         mx.fast.scaled_dot_product_attention(q, k, v, scale=0.5)),
    ]
    for name, args, state, want in cases:
        params = get(name).decode(state)
        assert_bit_identical([want], as_list(MLX_RULES[name](*args, **params)))
        assert_close([want], [from_jax(o) for o in oracle(name, args, params)], *tol)


def test_norm_vjps_match_autodiff():
    # The VJP primitives only exist on GPUs; their rules follow MLX's explicit VJP formula, which
    # agrees with autodiff of the CPU fallback up to rounding.
    x, w, b, g = rand((4, 16)), rand((16,), seed=1), rand((16,), seed=2), rand((4, 16), seed=3)
    params = get("RMSNormVJP").decode([1e-5])
    _, expected = mx.vjp(lambda x, w: mx.fast.rms_norm(x, w, 1e-5), [x, w], [g])
    assert_close(expected, as_list(MLX_RULES["RMSNormVJP"](x, w, g, **params)), 1e-4, 1e-5)
    assert_close(expected, [from_jax(o) for o in oracle("RMSNormVJP", [x, w, g], params)], 1e-4, 1e-5)
    params = get("LayerNormVJP").decode([1e-5])
    _, expected = mx.vjp(lambda x, w, b: mx.fast.layer_norm(x, w, b, 1e-5), [x, w, b], [g])
    assert_close(expected, as_list(MLX_RULES["LayerNormVJP"](x, w, b, g, **params)), 1e-4, 1e-4)
    assert_close(expected, [from_jax(o) for o in oracle("LayerNormVJP", [x, w, b, g], params)], 1e-4, 1e-4)


@pytest.mark.parametrize("traditional, dtype", [(False, "float32"), (True, "float32"), (True, "float16"), (False, "bfloat16")])
def test_rope(traditional, dtype):
    d = dtypes.to_mx(dtype)
    x = rand((2, 3, 5, 8), d)
    offset = mx.array(3, mx.int32)
    tol = {**TOL, **ACCUMULATED}[dtype]
    # state (nullptr, dims, traditional, base, scale, forward); freqs, when given, is a 3rd input.
    for args, base, kwargs in (([x, offset], 10000.0, {"base": 10000.0}),
                               ([x, offset, mx.array([1.0, 4.0, 9.0])], 1.0, {"base": None, "freqs": mx.array([1.0, 4.0, 9.0])})):
        params = get("RoPE").decode([6, traditional, base, 0.5, True])
        expected = [mx.fast.rope(x, 6, traditional=traditional, scale=0.5, offset=offset, **kwargs)]
        assert_bit_identical(expected, as_list(MLX_RULES["RoPE"](*args, **params)))
        assert_close(expected, [from_jax(o) for o in oracle("RoPE", args, params)], *tol)
        # forward=False (the VJP) rotates back: the autodiff of the forward rotation.
        inverse = get("RoPE").decode([6, traditional, base, 0.5, False])
        _, (back,) = mx.vjp(lambda y: mx.fast.rope(y, 6, traditional=traditional, scale=0.5, offset=offset, **kwargs), [x], [x])
        assert_close([back], as_list(MLX_RULES["RoPE"](*args, **inverse)), *tol)
        assert_close([back], [from_jax(o) for o in oracle("RoPE", args, inverse)], *tol)


def test_rope_without_base_decodes():
    # The public API's base is optional; a layout without it decodes to base=None.
    assert get("RoPE").decode([4, False, 1.0, True]) == {
        "dims": 4, "traditional": False, "base": None, "scale": 1.0, "forward": True}


def test_negated_angles_are_exact():
    # RoPE(forward=False) evaluates as RoPE with -scale: exact because MLX's sin is odd and cos
    # even bit for bit, except that sin(-0.0) is +0.0 (so a zero angle may flip a zero's sign).
    t = mx.concatenate([mx.linspace(-100, 100, 20000), rand((1000,)) * 1e4])
    assert np.array_equal(bits(mx.sin(-t)), bits(-mx.sin(t)))
    assert np.array_equal(bits(mx.cos(-t)), bits(mx.cos(t)))
    assert bits(mx.sin(mx.array(-0.0))) == bits(mx.array(0.0))


@pytest.mark.parametrize("dtype", ["float32", "bfloat16"])
def test_sdpa(dtype):
    d = dtypes.to_mx(dtype)
    q, k, v = rand((2, 4, 3, 8), d), rand((2, 2, 5, 8), d, 1), rand((2, 2, 5, 8), d, 2)
    mask = rand((2, 4, 3, 5), mx.float32, 3) > 0
    sinks = rand((4,), d, 4)
    tol = {**TOL, **ACCUMULATED}[dtype]
    cases = [  # (inputs, state after the dropped nullptr, public call)
        ([q, k, v], [0.5, False, False, False, False], {}),
        ([q, k, v], [0.5, True, False, False, False], {"mask": "causal"}),
        ([q, k, v, mask], [0.5, False, False, False, False], {"mask": mask}),
        ([q, k, v, mask.astype(d) * -3.0, sinks], [0.5, False, True, False], {"mask": mask.astype(d) * -3.0, "sinks": sinks}),
    ]
    for args, state, kwargs in cases:
        params = get("ScaledDotProductAttention").decode(state)
        expected = [mx.fast.scaled_dot_product_attention(q, k, v, scale=0.5, **kwargs)]
        assert_bit_identical(expected, as_list(MLX_RULES["ScaledDotProductAttention"](*args, **params)))
        assert_close(expected, [from_jax(o) for o in oracle("ScaledDotProductAttention", args, params)], *tol)
    # output_logsumexp adds the rows' float32 logsumexp of the scaled, masked scores.
    params = get("ScaledDotProductAttention").decode([0.5, True, False, True, False])
    out, lse = MLX_RULES["ScaledDotProductAttention"](q, k, v, **params)
    scores = (mx.array(0.5, d) * q).astype(mx.float32) @ mx.repeat(k, 2, axis=1).astype(mx.float32).swapaxes(-1, -2)
    causal = mx.arange(3)[:, None] + 2 >= mx.arange(5)[None]
    expected_lse = mx.logsumexp(mx.where(causal, scores, -mx.inf), axis=-1, keepdims=True)
    assert lse.dtype == mx.float32 and lse.shape == (2, 4, 3, 1)
    assert_close([expected_lse], [lse], *tol)
    assert_close([out, lse], [from_jax(o) for o in oracle("ScaledDotProductAttention", [q, k, v], params)], *tol)


@pytest.mark.parametrize("mode", ["affine", "mxfp4", "mxfp8", "nvfp4", "nvfp4-global"])
def test_dequantize(mode):
    # Quantize(dequantize=True) is the GPU primitive of mx.dequantize; on the CPU stream
    # dequantize decomposes into plain ops, which define what the primitive computes.
    w = rand((4, 64))
    kwargs = {"group_size": 32, "bits": 4} if mode == "affine" else {"mode": mode.removesuffix("-global")}
    if mode == "nvfp4-global":
        kwargs["global_scale"] = mx.array([3.0])
    packed = mx.quantize(w, **kwargs)
    extras = [kwargs["global_scale"]] if "global_scale" in kwargs else []
    expected = [mx.dequantize(*packed, **kwargs)]
    mx.eval(expected, packed)
    name = kwargs.get("mode", "affine")
    state = [32 if name != "nvfp4" else 16, 8 if name == "mxfp8" else 4, ["affine", "mxfp4", "mxfp8", "nvfp4"].index(name), True]
    params = get("Quantize").decode(state, [(expected[0].shape, expected[0].dtype)])
    assert_bit_identical(expected, [MLX_RULES["Quantize"](*packed, *extras, **params)])
    got = jax_rules()["Quantize"](*(to_jax(a) for a in [*packed, *extras]), **params)
    assert_close(expected, [from_jax(got)], 1e-6, 1e-6)


def test_identities():
    x = rand((2, 3))
    for name in ("Copy", "StopGradient"):
        assert_bit_identical([x], [MLX_RULES[name](x)])
        assert_close([x], [from_jax(jax_rules()[name](to_jax(x)))], 0, 0)


@pytest.mark.parametrize("width", [1, 2, 4])
def test_random_bits_widths(width):
    # Widths 1 and 2 are reachable from C++ only; both evaluators share the layout code, so this
    # checks that they agree, and that width 4 is mx.random.split's bits.
    key = mx.random.key(7)
    params = get("RandomBits").decode([(3, 5), width])
    got = MLX_RULES["RandomBits"](key, **params)
    assert got.dtype == {1: mx.uint8, 2: mx.uint16, 4: mx.uint32}[width] and got.shape == (3, 5)
    np.testing.assert_array_equal(from_jax(jax_rules()["RandomBits"](to_jax(key), **params)), np.array(got))
    if width == 4:
        split = get("RandomBits").decode([(5, 2), 4])
        assert_bit_identical([mx.random.split(key, 5)], [MLX_RULES["RandomBits"](key, **split)])


def test_logaddexp_scan():
    # Scan(logaddexp) prints as CumLogAddExp but the 0.32 exporter's key is CumLogaddexp, so it
    # never traces; the rules still evaluate it.
    x = rand((3, 6))
    for reverse in (False, True):
        params = get("Scan").decode([4, 1, reverse, True])
        expected = [mx.logcumsumexp(x, axis=1, reverse=reverse)]
        assert_bit_identical(expected, [MLX_RULES["Scan"](x, **params)])
        assert_close(expected, [from_jax(jax_rules()["Scan"](to_jax(x), **params))], 1e-5, 1e-5)


def test_hadamard_beyond_powers_of_two():
    # MLX also transforms 12, 20 and 28 times a power of two; the oracle builds Sylvester
    # matrices only and says so.
    x = rand((2, 24))
    assert_bit_identical([mx.hadamard_transform(x)], [MLX_RULES["Hadamard"](x, scale=1 / math.sqrt(24))])
    with pytest.raises(UnsupportedPrimitiveError, match="Hadamard of size 24"):
        jax_rules()["Hadamard"](to_jax(x), scale=1.0)


# --- the table itself -------------------------------------------------------------------------


def test_every_primitive_has_both_rules_or_a_reason():
    rules = jax_rules()
    for name in PRIMITIVES:
        assert name in MLX_RULES, f"{name} has no MLX rule"
        assert name in rules, f"{name} has no JAX rule"
    for module, table in ((evaluate_mlx, MLX_RULES), (evaluate_jax, rules)):
        for name, reason in module.NOT_EVALUATED.items():
            assert reason and name in PRIMITIVES
            with pytest.raises(UnsupportedPrimitiveError, match=name):
                table[name]()
    assert evaluate_mlx.EVALUATED == frozenset(MLX_RULES) - set(evaluate_mlx.NOT_EVALUATED)
    assert evaluate_jax.evaluated() == frozenset(rules) - set(evaluate_jax.NOT_EVALUATED)


def test_every_evaluated_primitive_is_checked():
    checked = {op.primitive for op in OPS} | set(NO_TRACE)
    assert set(PRIMITIVES) <= checked, f"primitives without an op-table row: {sorted(set(PRIMITIVES) - checked)}"
    assert not {op.primitive for op in OPS} & set(NO_TRACE)


def test_custom_kernel_decodes_and_is_not_evaluated():
    source = "uint i = thread_position_in_grid.x; out[i] = inp[i] * N + inp_shape[0];"
    kernel = mx.fast.metal_kernel(name="twice", input_names=["inp"], output_names=["out"], source=source)
    x = rand((2, 3))
    fn = lambda a: kernel(inputs=[a], template=[("N", 2)], grid=(6, 1, 1), threadgroup=(2, 1, 1),
                          output_shapes=[(2, 3)], output_dtypes=[mx.float32], init_value=0.0)[0]
    params = next(e.params for e in trace(fn, [x]).eqns if e.primitive == "CustomKernel")
    assert params["kernel_name"].startswith("custom_kernel_twice")
    assert "[[kernel]]" in params["source"] and source in params["source"]
    assert (params["grid"], params["threadgroup"]) == ((6, 1, 1), (2, 1, 1))
    assert params["shape_infos"] == ((True, False, False),)  # inp_shape named in the source
    assert params["output_shapes"] == ((2, 3),) and params["output_dtypes"] == ("float32",)
    assert params["math_mode"] == "safe" and params["scalar_arguments"] == ()
    assert params["init_value"] is None  # 0.32.4 drops init_value from the export even when set
    with pytest.raises(UnsupportedPrimitiveError, match="CustomKernel"):
        MLX_RULES["CustomKernel"](x, **params)
    with pytest.raises(UnsupportedPrimitiveError, match="CustomKernel"):
        jax_rules()["CustomKernel"](to_jax(x), **params)
    # A layout that keeps init_value (an optional float) decodes it.
    state = ["k", "src", 1, 1, 1, 1, 1, 1, [], False, 0.5, [], False, 0, 2]
    decoded = get("CustomKernel").decode(state, [((1,), mx.float32)])
    assert decoded["init_value"] == 0.5 and decoded["math_mode"] == "fast"


# Argument lists as MLX 0.32.4's exporter reported them on the H200 (CUDA backend), where the fast
# ops stay primitives: the decoders must read them.
RECORDED_ON_THE_H200 = [
    ("RMSNorm", [9.999999747378752e-06], [((3, 5, 64), "bfloat16")], {"eps": 9.999999747378752e-06}),
    ("RMSNormVJP", [9.999999747378752e-06], [((3, 5, 64), "float32"), ((64,), "float32")], {"eps": 9.999999747378752e-06}),
    ("LayerNorm", [9.999999747378752e-06], [((3, 5, 64), "float16")], {"eps": 9.999999747378752e-06}),
    ("LayerNormVJP", [9.999999747378752e-06], [((3, 5, 64), "float32")] * 3, {"eps": 9.999999747378752e-06}),
    ("RoPE", [32, True, 500.0, 0.5, False], [((2, 4, 6, 32), "bfloat16")],
     {"dims": 32, "traditional": True, "base": 500.0, "scale": 0.5, "forward": False}),
    ("RoPE", [32, False, 1.0, 1.0, True], [((2, 4, 6, 32), "float16")],  # with freqs as a 3rd input
     {"dims": 32, "traditional": False, "base": 1.0, "scale": 1.0, "forward": True}),
    ("ScaledDotProductAttention", [0.125, False, True, False, False], [((2, 8, 5, 64), "bfloat16")],
     {"scale": 0.125, "do_causal": False, "has_sinks": True, "output_logsumexp": False, "force_fused": False}),
    ("Quantize", [16, 4, 3, True], [((16, 128), "bfloat16")],
     {"group_size": 16, "bits": 4, "mode": "nvfp4", "dequantize": True, "dtype": "bfloat16"}),
    ("QuantizedMatmul", [32, 4, 1, True], [((3, 16), "bfloat16")],
     {"group_size": 32, "bits": 4, "mode": "mxfp4", "transpose": True}),
    ("CustomKernel", ["custom_kernel_twice_2", "__global__ void custom_kernel_twice_2(...) {...}", 8, 1, 1, 4, 1, 1,
                      [(True, False, False), (False, False, False)], True, [], False, 64, 0], [((2, 4), "float32")],
     {"kernel_name": "custom_kernel_twice_2", "source": "__global__ void custom_kernel_twice_2(...) {...}",
      "grid": (8, 1, 1), "threadgroup": (4, 1, 1), "shape_infos": ((True, False, False), (False, False, False)),
      "ensure_row_contiguous": True, "init_value": None, "scalar_arguments": (), "is_precompiled": False,
      "shared_memory": 64, "math_mode": "safe", "output_shapes": ((2, 4),), "output_dtypes": ("float32",)}),
]


@pytest.mark.parametrize("name, arguments, outputs, params", RECORDED_ON_THE_H200, ids=lambda v: v if isinstance(v, str) else "")
def test_gpu_layouts_decode(name, arguments, outputs, params):
    assert get(name).decode(arguments, outputs) == params


def test_decode_errors_name_the_primitive():
    with pytest.raises(UnsupportedPrimitiveError, match="NoSuchPrimitive"):
        get("NoSuchPrimitive")
    with pytest.raises(ValueError, match="declared twice"):
        declare("Add", PRIMITIVES["Add"].family)
    with pytest.raises(ValueError, match="Arange.*outputs"):
        get("Arange").decode([0.0, 3.0, 1.0])
    with pytest.raises(ValueError, match="Transpose"):
        get("Transpose").decode([[1, 0], [0, 1]])
    assert get("Depends").decode([], [((2,), "float32"), ((3,), "int32")]) == {"num_outputs": 2}
    assert get("Sqrt").decode([True]) == {"reciprocal": True}
    assert get("Reduce").decode([2, [1]]) == {"kind": "sum", "axes": (1,)}
    assert get("AsType").decode([mx.bfloat16]) == {"dtype": "bfloat16"}
    assert get("ScaledDotProductAttention").decode([0.5, True, False, False])["force_fused"] is False


def test_shapeless_broadcast_follows_its_shape_operands():
    # A shapeless export gives Broadcast the arrays it broadcasts against as extra inputs.
    g = trace(lambda a, b: a + b, [rand((2, 3)), rand((3,))], shapeless=True)
    extra = [e.inputs for e in g.eqns if e.primitive == "Broadcast" and len(e.inputs) > 1]
    assert extra, "expected a Broadcast with shape operands"
    a, b = rand((2, 3), seed=5), rand((3,), seed=6)
    assert_bit_identical([a + b], run(g, [a, b], "mlx"))


def test_slices_whose_start_is_before_the_axis():
    # A negative stride's start arrives with n already added: still negative, it is before index
    # 0 and the axis is empty (x[-2::-2] of one row), where Python's -1 would be the last element.
    import itertools

    cases = 0
    for n in (1, 2):
        x = mx.arange(n * 2, dtype=mx.float32).reshape(n, 2)
        for a, b, c in itertools.product((None, -3, -2, -1, 0), (None, -3, 1), (-2, -1, 2)):
            fn = lambda x: x[a:b:c]  # noqa: E731
            g = trace(fn, [x])
            if not g.eqns:
                continue
            cases += 1
            want = [fn(x)]
            assert_bit_identical(want, run(g, [x], "mlx"))
            assert_bit_identical(want, [mx.array(np.asarray(run(g, [x], "jax")[0]))])
    assert cases > 60


def test_max_and_min_over_columns_of_long_rows_propagate_nan():
    # XLA's CPU reduction over a leading axis drops NaN once rows are long (4097); MLX keeps it.
    x = np.ones((2, 4097), np.float32)
    x[0, ::3] = np.nan
    for dtype in (mx.float32, mx.float16, mx.bfloat16):
        a = mx.array(x).astype(dtype)
        for op in (mx.max, mx.min):
            fn = lambda a: op(a, axis=0)  # noqa: E731
            got = np.asarray(run(trace(fn, [a]), [a], "jax")[0]).astype(np.float32)
            np.testing.assert_array_equal(np.isnan(got), np.isnan(x[0]))
