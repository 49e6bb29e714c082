"""The op-semantics layer, one primitive at a time.

An op table row names a primitive, the MLX function that produces it, the dtypes it takes and the
oracle's tolerance per dtype. For each row, hypothesis draws inputs (0-d, empty, broadcasting,
transposed and sliced layouts); the function is traced with ``mx.export_function``, the trace
decoded with the primitive table, and the whole trace evaluated twice: (a) with MLX_RULES, which
must equal the function's own result bit for bit on CPU, and (b) with the JAX oracle, which must
agree within the row's tolerance. Fast ops (which decompose on the CPU stream) and primitives the
Python API cannot produce are called directly with params decoded from their source layout.
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

from mlxtriton.graph import dtypes, evaluate_jax, evaluate_mlx
from mlxtriton.graph.evaluate_jax import from_jax, jax_rules, to_jax
from mlxtriton.graph.evaluate_mlx import MLX_RULES
from mlxtriton.graph.primitives import PRIMITIVES, UnsupportedPrimitiveError, declare, get

# --- tracing and evaluating a trace (a local stand-in for mlxtriton.trace / evaluate) ---------


@dataclass
class Trace:
    inputs: list[str]
    constants: list[tuple[str, mx.array]]
    outputs: list[str]
    eqns: list[tuple[str, dict, list[str], list[str]]] = field(default_factory=list)

    @property
    def primitives(self) -> set[str]:
        return {e[0] for e in self.eqns}

    def params(self, primitive: str) -> dict:
        return next(p for name, p, _, _ in self.eqns if name == primitive)


def trace(fn: Callable, args, shapeless: bool = False) -> Trace:
    t = Trace([], [], [])

    def callback(entry):
        kind = entry["type"]
        if kind == "inputs":
            t.inputs = [name for name, *_ in entry["inputs"]]
        elif kind == "constants":
            t.constants = list(entry["constants"])
        elif kind == "outputs":
            t.outputs = [name for name, *_ in entry["outputs"]]
        elif kind == "primitive":
            outputs = [(shape, dtype) for _, shape, dtype in entry["outputs"]]
            params = get(entry["name"]).decode(entry["arguments"], outputs)
            t.eqns.append((entry["name"], params, [i[0] for i in entry["inputs"]], [o[0] for o in entry["outputs"]]))

    mx.export_function(callback, fn, *args, shapeless=shapeless)
    return t


def run(t: Trace, args, rules, convert=lambda a: a) -> list:
    env = dict(zip(t.inputs, args))
    env.update({name: convert(value) for name, value in t.constants})
    for name, params, ins, outs in t.eqns:
        result = rules[name](*(env[i] for i in ins), **params)
        results = result if isinstance(result, tuple) else (result,)
        assert len(results) == len(outs), f"{name}: {len(results)} results for {len(outs)} outputs"
        env.update(zip(outs, results))
    return [env[o] for o in t.outputs]


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
    """Inputs of fixed shapes: (shape, dtype or None for the drawn one, domain[, layout])."""

    @st.composite
    def build(draw, op, dtype):
        rng = np.random.default_rng(draw(st.integers(0, 2**16)))
        out = []
        for shape, d, domain, *layout in specs:
            d = d or dtype
            layout = layout[0] if layout else draw(LAYOUTS)
            out.append(to_mlx(values(rng, shape, d, domain, op.specials), d, layout))
        return out

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

    @property
    def id(self) -> str:
        return self.name or self.primitive


def unary(primitive, fn, dtypes=FLOATS, domain="any", specials=True, tol=None, name=""):
    return Op(primitive, 1, dtypes, fn, tol or TOL, domains=(domain,), specials=specials, name=name)


def binary(primitive, fn, dtypes=FLOATS, domains=("any",), specials=True, tol=None, name=""):
    return Op(primitive, 2, dtypes, fn, tol or TOL, domains=domains, specials=specials, name=name)


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

    @st.composite
    def build(draw, op, dtype):
        rng = np.random.default_rng(draw(st.integers(0, 2**16)))
        mode = draw(st.sampled_from(modes))
        x = to_mlx(values(rng, (3, 64), dtype, "any", False), dtype, draw(LAYOUTS))
        w = to_mlx(values(rng, (5, 64) if transpose else (64, 64), dtype, "any", False), dtype, "contiguous")
        packed = mx.quantize(w, group_size=32, bits=bits) if mode == "affine" else mx.quantize(w, mode=mode)
        if experts:
            packed = [mx.stack([p] * experts) for p in packed]
        mx.eval(packed)
        return [x, *packed]

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
    unary("AsType", lambda x: x.astype(mx.int32), ("float32", "bfloat16", "uint32"), specials=False, name="AsType-i32"),
    unary("AsType", lambda x: x.astype(mx.bfloat16), ("float32", "int32"), name="AsType-bf16"),
    unary("AsType", lambda x: x.astype(mx.bool_), ALL, name="AsType-bool"),
    unary("Real", mx.real, ("complex64",)), unary("Imag", mx.imag, ("complex64",)),
    unary("Conjugate", mx.conjugate, ("complex64",)),
    # binary
    binary("Add", mx.add, ALL), binary("Subtract", mx.subtract, NUMERIC + ("bool",)),
    binary("Multiply", mx.multiply, ALL), binary("Divide", mx.divide),
    binary("FloorDivide", mx.floor_divide, NUMERIC, tol={**TOL, "float16": (2e-3, 1.0), "bfloat16": (1.6e-2, 1.0)}),
    binary("Remainder", mx.remainder, NUMERIC, tol={**TOL, "float16": (2e-3, 2e-2), "bfloat16": (1.6e-2, 0.1)}),
    binary("DivMod", lambda x, y: mx.divmod(x, y), ("float32", "int32")),
    binary("Maximum", mx.maximum, ALL), binary("Minimum", mx.minimum, ALL),
    binary("Power", mx.power, FLOATS, domains=("positive", "small")),
    binary("Power", mx.power, ("int32",), domains=("any", "small"), name="Power-int"),
    binary("ArcTan2", mx.arctan2), binary("LogAddExp", mx.logaddexp),
    binary("Equal", mx.equal, ALL), binary("NotEqual", mx.not_equal, ALL),
    binary("Less", mx.less, ALL), binary("LessEqual", mx.less_equal, ALL),
    binary("Greater", mx.greater, ALL), binary("GreaterEqual", mx.greater_equal, ALL),
    binary("Equal", lambda x, y: mx.array_equal(x, y, equal_nan=True), FLOATS, name="Equal-nan"),
    binary("LogicalAnd", mx.logical_and, ("bool",)), binary("LogicalOr", mx.logical_or, ("bool",)),
    binary("BitwiseBinary", mx.bitwise_and, ("int32", "uint8", "bool"), name="BitwiseBinary-and"),
    binary("BitwiseBinary", mx.bitwise_or, ("int32", "uint8", "bool"), name="BitwiseBinary-or"),
    binary("BitwiseBinary", mx.bitwise_xor, ("int32", "uint8"), name="BitwiseBinary-xor"),
    binary("BitwiseBinary", mx.left_shift, ("int32", "uint8"), domains=("any", "shift"), name="BitwiseBinary-shl"),
    binary("BitwiseBinary", mx.right_shift, ("int32", "uint32"), domains=("any", "shift"), name="BitwiseBinary-shr"),
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
         name=f"Scan-{f.__name__}-{'rev' if r else 'fwd'}-{'inc' if i else 'exc'}")
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
       MATMUL_TOL, inputs=fixed(((1, 5, 5, 2), None, "any"), ((4, 3, 3, 2), None, "any")), heavy=True),
    Op("Convolution", 2, ("float32",), lambda x, w: mx.conv1d(x, w, stride=2, padding=1), MATMUL_TOL,
       inputs=fixed(((2, 9, 3), None, "any"), ((5, 3, 3), None, "any")), name="Convolution-1d"),
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
       inputs=fixed(((4, 128), None, "any")), heavy=True),
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
    t = trace(op.fn, args, shapeless=op.shapeless)
    assume(op.primitive in t.primitives)  # e.g. a reduction over an empty axis list makes none

    assert_bit_identical(expected, run(t, args, MLX_RULES))

    oracle = run(t, [to_jax(a) for a in args], jax_rules(), to_jax)
    rtol, atol = op.tol.get(dtype, TOL.get(dtype, (0.0, 0.0)))
    op.compare(expected, [from_jax(o) for o in oracle], rtol, atol)


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
    params = trace(fn, [x]).params("CustomKernel")
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
    t = trace(lambda a, b: a + b, [rand((2, 3)), rand((3,))], shapeless=True)
    extra = [ins for name, _, ins, _ in t.eqns if name == "Broadcast" and len(ins) > 1]
    assert extra, "expected a Broadcast with shape operands"
    a, b = rand((2, 3), seed=5), rand((3,), seed=6)
    assert_bit_identical([a + b], run(t, [a, b], MLX_RULES))
