"""Per-op semantics of generated kernels against MLX's own CPU ops: one table row per primitive
(arity, dtypes, MLX reference), special values included (NaN, infinities, signed zeros)."""

from __future__ import annotations

import itertools
import math
import re

import mlx.core as mx
import numpy as np
import pytest

from mlxtriton.codegen.builder import RegionError
from mlxtriton.codegen.interpret import interpret, numpy_dtype
from mlxtriton.codegen.region import RegionBuilder
from mlxtriton.codegen.render import lower
from mlxtriton.graph import dtypes
from tests.codegen.targets import built

F, I, B = ("float32",), ("int32",), ("bool",)

# (primitive, params, arity, dtypes, MLX reference)
TABLE = [
    ("Abs", {}, 1, F + I, mx.abs), ("Negative", {}, 1, F + I, mx.negative),
    ("Sign", {}, 1, F + I, mx.sign), ("Exp", {}, 1, F, mx.exp), ("Expm1", {}, 1, F, mx.expm1),
    ("Log", {"base": 2}, 1, F, mx.log), ("Log", {"base": 0}, 1, F, mx.log2),
    ("Log", {"base": 1}, 1, F, mx.log10), ("Log1p", {}, 1, F, mx.log1p),
    ("Sin", {}, 1, F, mx.sin), ("Cos", {}, 1, F, mx.cos), ("Tan", {}, 1, F, mx.tan),
    ("ArcSin", {}, 1, F, mx.arcsin), ("ArcCos", {}, 1, F, mx.arccos),
    ("ArcTan", {}, 1, F, mx.arctan), ("Sinh", {}, 1, F, mx.sinh), ("Cosh", {}, 1, F, mx.cosh),
    ("Tanh", {}, 1, F, mx.tanh), ("ArcSinh", {}, 1, F, mx.arcsinh),
    ("ArcCosh", {}, 1, F, mx.arccosh), ("ArcTanh", {}, 1, F, mx.arctanh),
    ("Erf", {}, 1, F, mx.erf), ("Sigmoid", {}, 1, F, mx.sigmoid),
    ("Sqrt", {"reciprocal": False}, 1, F, mx.sqrt), ("Sqrt", {"reciprocal": True}, 1, F, mx.rsqrt),
    ("Square", {}, 1, F + I, mx.square), ("Floor", {}, 1, F, mx.floor),
    ("Ceil", {}, 1, F, mx.ceil), ("Round", {}, 1, F, mx.round),
    ("LogicalNot", {}, 1, B, mx.logical_not),
    ("Add", {}, 2, F + I, mx.add), ("Subtract", {}, 2, F + I, mx.subtract),
    ("Multiply", {}, 2, F + I, mx.multiply), ("Divide", {}, 2, F, mx.divide),
    ("Remainder", {}, 2, F + I, mx.remainder), ("FloorDivide", {}, 2, F + I, mx.floor_divide),
    ("Maximum", {}, 2, F + I, mx.maximum), ("Minimum", {}, 2, F + I, mx.minimum),
    ("Power", {}, 2, F + I, mx.power), ("ArcTan2", {}, 2, F, mx.arctan2),
    ("LogAddExp", {}, 2, F, mx.logaddexp), ("Less", {}, 2, F + I, mx.less),
    ("LessEqual", {}, 2, F + I, mx.less_equal), ("Greater", {}, 2, F + I, mx.greater),
    ("GreaterEqual", {}, 2, F + I, mx.greater_equal), ("Equal", {}, 2, F + I, mx.equal),
    ("NotEqual", {}, 2, F + I, mx.not_equal), ("LogicalAnd", {}, 2, B, mx.logical_and),
    ("LogicalOr", {}, 2, B, mx.logical_or),
    ("BitwiseBinary", {"op": "and"}, 2, I + B, mx.bitwise_and),
    ("BitwiseBinary", {"op": "or"}, 2, I + B, mx.bitwise_or),
    ("BitwiseBinary", {"op": "xor"}, 2, I + B, mx.bitwise_xor),
    ("BitwiseBinary", {"op": "left_shift"}, 2, I, mx.left_shift),
    ("BitwiseBinary", {"op": "right_shift"}, 2, I, mx.right_shift),
]
SHIFTS = ("left_shift", "right_shift")

# Exact in MLX (IEEE basic operations, correctly rounded, or no rounding at all; Sqrt, not its
# reciprocal): compared bit for bit, NaN equal to NaN. The others (MLX's own exp, sin, pow approximations) are compared exactly
# where the result is NaN, infinite or zero, within a few units in the last place elsewhere.
EXACT = frozenset({
    "Abs", "Negative", "Sign", "Square", "Floor", "Ceil", "Round", "Sqrt", "LogicalNot", "Add",
    "Subtract", "Multiply", "Divide", "Remainder", "FloorDivide", "Maximum", "Minimum", "Less",
    "LessEqual", "Greater", "GreaterEqual", "Equal", "NotEqual", "LogicalAnd", "LogicalOr",
    "Select", "BitwiseBinary",
})
# Where MLX's CPU kernels are approximations that lose what C's functions (CUDA's sinf and erff,
# the interpreter's NumPy and math.erf) keep: MLX's sin(-0.0) is +0.0, its erf(+0.0) is -0.0 and
# its erf(1e-6) 1.19e-6 (the true value is 1.13e-6). There the float64 function is the reference.
CPU_APPROXIMATIONS = {
    "Sin": (lambda x: x == 0, np.sin),
    "Erf": (lambda x: np.abs(x) < 1e-4, np.vectorize(math.erf, otypes=[np.float64])),
}

FLOATS = ("float32", "float16", "bfloat16")
INTEGERS = ("int8", "uint8", "int16", "int32", "uint32", "int64")
SPECIAL_FLOATS = [0.0, -0.0, 1.0, -1.0, 0.5, -0.5, 2.0, -2.0, 2.5, -2.5, 3.0, -3.0, 1e-6, 88.0,
                  -104.0, 1e30, -1e30, 3.4e38, -3.4e38, 1.1754944e-38, np.inf, -np.inf, np.nan]


def special_values(dtype: str) -> list:
    """Signed zeros, infinities, NaN, extremes and ordinary values of ``dtype``."""
    if dtype == "bool":
        return [False, True]
    if dtype in INTEGERS:
        info = np.iinfo(dtype)
        small = [0, 1, -1, 2, -2, 3, -3, 7, -7, 31, 32, 33, 127]
        return sorted({v for v in small if info.min <= v <= info.max} | {info.min, info.max})
    return SPECIAL_FLOATS


def to_mx(a: np.ndarray, dtype: str) -> mx.array:
    if dtype == "bfloat16":
        return mx.array(a.astype(np.float32)).astype(mx.bfloat16)
    return mx.array(a)


def from_mx(a: mx.array) -> np.ndarray:
    if a.dtype == mx.bfloat16:
        return np.array(a.astype(mx.float32)).astype(numpy_dtype("bfloat16"))
    return np.array(a)


def operands(prim: str, arity: int, dtype: str, params: dict | None = None) -> list[np.ndarray]:
    """Every combination of ``dtype``'s special values, one array per operand."""
    combos = list(itertools.product(special_values(dtype), repeat=arity))
    if prim in ("Divide", "Remainder", "FloorDivide") and dtype in INTEGERS:
        # C's undefined integer quotients (MLX's CPU kernel traps on them)
        lo = np.iinfo(dtype).min
        combos = [c for c in combos if c[1] != 0 and not (c[0] == lo and c[1] == -1)]
    if (params or {}).get("op") in SHIFTS:
        # counts C defines; MLX's CPU gives others the host's answer (x86 masks the count), the
        # kernel IR JAX's (test_shifts_past_the_width_follow_jax)
        combos = [c for c in combos if 0 <= c[1] < 8 * np.dtype(dtype).itemsize]
    with np.errstate(over="ignore"):  # float32 extremes are infinite in half types
        return [np.array([c[k] for c in combos], np.float64 if dtype in FLOATS else None)
                .astype(numpy_dtype(dtype)) for k in range(arity)]


def _interpreted(prim: str, params: dict, args: list[np.ndarray], dtype: str) -> np.ndarray:
    b = RegionBuilder(prim)
    xs = [b.input(a.shape, dtype, f"a{k}") for k, a in enumerate(args)]
    (got,) = interpret(built(b.build([b.op(prim, *xs, **params)]), "cuda"), args)
    return got


# (rtol, atol) where MLX's op is an approximation: float32 as MLX's exp against C's (16 units in
# the last place at exp(88)); half types two units, and one unit of their precision at the
# operands' scale, since MLX rounds each step of a half op (logaddexp's log1p) to the type
_TOLERANCE = {"float32": (4e-6, 0.0), "float16": (2.0**-9, 2.0**-10), "bfloat16": (2.0**-6, 2.0**-7)}


def assert_matches(got: np.ndarray, want: np.ndarray, exact: bool, what: str) -> None:
    """Bit for bit (NaN equal to NaN) when ``exact``; else the same NaNs, infinities and signed
    zeros and, elsewhere, within `_TOLERANCE`."""
    assert got.dtype == want.dtype, (what, got.dtype, want.dtype)
    if got.dtype.kind != "f" and got.dtype != numpy_dtype("bfloat16"):
        np.testing.assert_array_equal(got, want, err_msg=what)
        return
    g, w = got.astype(np.float64), want.astype(np.float64)
    same = (g == w) & (np.signbit(g) == np.signbit(w)) | np.isnan(g) & np.isnan(w)
    if not exact:
        finite = np.isfinite(g) & np.isfinite(w) & (w != 0) & (g != 0)
        rtol, atol = _TOLERANCE[str(got.dtype)]
        err = np.abs(np.where(finite, g, 0) - np.where(finite, w, 0))
        same |= finite & (err <= rtol * np.abs(np.where(finite, w, 0)) + atol)
    bad = np.flatnonzero(~same)
    assert not bad.size, f"{what}: {[(got[i], want[i]) for i in bad[:6]]} at {bad[:6]}"


@pytest.mark.parametrize("prim,params,arity,dts,ref", TABLE,
                         ids=[f"{t[0]}{''.join(map(str, t[1].values()))}" for t in TABLE])
def test_op_matches_mlx_on_special_values(prim, params, arity, dts, ref):
    """Each op over every combination of special values, in every dtype it takes: the
    interpreter (the definition of a kernel) against MLX's own op on the CPU."""
    wide = (FLOATS if "float32" in dts else ()) + (INTEGERS if "int32" in dts else ()) + (
        ("bool",) if "bool" in dts else ())
    for dtype in wide:
        args = operands(prim, arity, dtype, params)
        assert_op_matches_mlx(_interpreted(prim, params, args, dtype), prim, params, ref, args,
                              dtype)


def assert_op_matches_mlx(got: np.ndarray, prim: str, params: dict, ref, args: list[np.ndarray],
                          dtype: str, what: str = "") -> None:
    """``got``, an op's results on ``args``, against MLX's (`EXACT`, `CPU_APPROXIMATIONS`)."""
    want = from_mx(ref(*[to_mx(a, dtype) for a in args]))
    what = f"{prim} {dtype}{what}"
    if prim in CPU_APPROXIMATIONS and dtype in FLOATS:
        where, exact_fn = CPU_APPROXIMATIONS[prim]
        at = where(args[0].astype(np.float64))
        with np.errstate(invalid="ignore"):  # sin(inf) is NaN
            truth = exact_fn(args[0].astype(np.float64)).astype(np.float32).astype(got.dtype)
        assert_matches(got[at], truth[at], False, what + " (C's function)")
        got, want = got[~at], want[~at]
    assert_matches(got, want, prim in EXACT and not params.get("reciprocal"), what)


@pytest.mark.parametrize("prim,params,arity,dts,ref", [t for t in TABLE if t[2] == 2],
                         ids=[t[0] for t in TABLE if t[2] == 2])
def test_op_with_a_constant_operand_matches_mlx(prim, params, arity, dts, ref):
    """A constant operand is a 0-d value in the kernel IR: NumPy must not take its shortcuts for
    scalars there (a power by a scalar 0.5 is its sqrt: sqrt(-inf) is NaN, pow(-inf, 0.5) +inf)."""
    dtype = dts[0]
    values = special_values(dtype)
    if params.get("op") in SHIFTS:
        values = [v for v in values if 0 <= v < 32]  # counts C defines (as in `operands`)
    x = np.array(values, numpy_dtype(dtype))
    for c in values:
        for constant_first in (False, True):
            b = RegionBuilder(prim)
            xi = b.input(x.shape, dtype, "x")
            k = b.constant(c, dtype)
            y = b.op(prim, *((k, xi) if constant_first else (xi, k)), **params)
            (got,) = interpret(built(b.build([y]), "cuda"), [x])
            ca = mx.array(np.array(c, numpy_dtype(dtype)))
            want = from_mx(ref(*((ca, mx.array(x)) if constant_first else (mx.array(x), ca))))
            keep = np.ones(x.shape, bool)
            if prim in ("Divide", "Remainder", "FloorDivide") and dtype in INTEGERS:
                divisor = x if constant_first else np.full(x.shape, c)
                dividend = np.full(x.shape, c) if constant_first else x
                keep = (divisor != 0) & ~((dividend == np.iinfo(dtype).min) & (divisor == -1))
                if not keep.all():
                    continue  # MLX's CPU kernel traps on C's undefined quotients
            assert_matches(got, want, prim in EXACT, f"{prim} {dtype} with constant {c}")


def test_power_rounds_as_mlx_where_its_parity_decides_a_sign():
    """(-7) ** (x ** 2): x ** 2 rounded to an even or an odd float32 integer gives +inf or -inf;
    the interpreter rounds float powers once, as C's powf that MLX's CPU kernel calls (NumPy's
    float32 power gives 3986.7368 ** 2 one ulp off, an odd 15894071). Fuzzer program 9472."""
    x = np.array([3986.7368, -9044.759, 14084.462], np.float32)
    b = RegionBuilder("Power")
    xi = b.input(x.shape, "float32", "x")
    square = b.op("Power", xi, b.constant(2.0, "float32"))
    y = b.op("Power", b.constant(-7.0, "float32"), square)
    (got,) = interpret(built(b.build([y]), "cuda"), [x])
    want = from_mx(mx.power(mx.array(-7.0), mx.power(mx.array(x), 2.0)))
    np.testing.assert_array_equal(got, want)


def test_every_elementwise_primitive_is_in_the_table():
    """A primitive codegen lowers cannot skip the special-value table."""
    from mlxtriton.codegen import _lower_ops

    elementwise = {p for p in _lower_ops.RULES if p not in _lower_ops.REDUCING} - {
        "AsType", "Broadcast", "Constant", "Copy", "ExpandDims", "Flatten", "GatherAxis",
        "Reshape", "Select", "Slice", "Squeeze", "StopGradient", "Transpose", "Unflatten",
        "ArgReduce"}
    assert elementwise == {row[0] for row in TABLE}


@pytest.mark.parametrize("op", SHIFTS)
def test_shifts_past_the_width_follow_jax(op):
    """A count outside [0, bits) is undefined in C (MLX's CPU masks it on x86): the kernel IR
    shifts every bit out, as JAX's shifts do (kernel_ir.Ops.SHL)."""
    from mlxtriton.graph.evaluate_jax import from_jax, jax_rules, to_jax

    rule = jax_rules()["BitwiseBinary"]
    for dtype in INTEGERS + ("uint16",):
        bits = 8 * np.dtype(dtype).itemsize
        info = np.iinfo(dtype)
        x = np.array([1, info.max, info.min, 5, info.max // 3] * 4, dtype)
        counts = [bits - 1, bits, bits + 1, min(info.max, 200)] + ([-1, -bits] if info.min else [0, 1])
        s = np.array(np.repeat(counts, 5)[:x.size], dtype)
        got = _interpreted("BitwiseBinary", {"op": op}, [x, s], dtype)
        want = from_jax(rule(to_jax(x), to_jax(s), op=op))
        np.testing.assert_array_equal(got, want, err_msg=f"{op} {dtype}")


def test_bitwise_refuses_floats():
    b = RegionBuilder("bits")
    x = b.input((4,), "float32", "x")
    with pytest.raises(RegionError, match="needs integer or bool inputs"):
        built(b.build([b.op("BitwiseBinary", x, x, op="and")]), "cuda")
    b = RegionBuilder("bits")
    x = b.input((4,), "bool", "x")
    with pytest.raises(RegionError, match="not defined on bool"):
        built(b.build([b.op("BitwiseBinary", x, x, op="left_shift")]), "cuda")


def test_where_keeps_special_values():
    values = np.array(SPECIAL_FLOATS, np.float32)
    cond = np.arange(values.size) % 3 == 0
    b = RegionBuilder("where")
    c, x, y = b.input(cond.shape, "bool", "c"), b.input(values.shape, "float32", "x"), \
        b.input(values.shape, "float32", "y")
    (got,) = interpret(built(b.build([b.op("Select", c, x, y)]), "cuda"),
                       [cond, values, values[::-1].copy()])
    want = np.array(mx.where(mx.array(cond), mx.array(values), mx.array(values[::-1].copy())))
    assert_matches(got, want, True, "Select")


CAST_DTYPES = FLOATS + INTEGERS + ("uint16", "bool")


@pytest.mark.parametrize("src", CAST_DTYPES)
def test_casts_match_mlx(src):
    """AsType between every pair of dtypes. A float outside the integer's range (NaN and
    infinities included) is undefined in C, and MLX's result there depends on the host (x86
    gives the most negative integer or wraps, Apple's CPUs, Metal and CUDA saturate): the kernel
    IR defines it, truncated, saturated and NaN as 0 (kernel_ir.Ops.CAST), and the rendered
    kernels say so; there the definition is the reference. Everything else is MLX's."""
    extra = [255.5, 256.0, -129.0, 1e10, -1e10, 3e9, 4.3e9, 65504.0, 65520.0, 1e5, 1e-40]
    if src in FLOATS:
        with np.errstate(over="ignore"):
            a = np.array(SPECIAL_FLOATS + extra, np.float64).astype(numpy_dtype(src))
    else:
        a = np.array(special_values(src) if src != "uint16" else [0, 1, 255, 256, 65535],
                     numpy_dtype(src))
    for dst in CAST_DTYPES:
        if dst == src:
            continue
        got = _interpreted("AsType", {"dtype": dst}, [a], src)
        want = from_mx(to_mx(a, src).astype(dtypes.to_mx(dst)))
        if src in FLOATS and dst in INTEGERS + ("uint16",):
            info = np.iinfo(dst)
            t = np.trunc(a.astype(np.float64))
            outside = np.isnan(t) | (t < info.min) | (t > info.max)
            defined = np.where(np.isnan(t), 0, np.clip(np.nan_to_num(t), info.min, info.max))
            want = np.where(outside, defined.astype(np.float64), want.astype(np.float64)
                            ).astype(got.dtype) if dst != "int64" else np.where(
                outside, np.where(t > 0, info.max, np.where(np.isnan(t), 0, info.min)),
                want).astype(got.dtype)
        assert_matches(got, want, True, f"AsType {src} -> {dst}")


def test_rendered_casts_to_integers_saturate():
    from tests.codegen import metal_check

    for dtype in ("int32", "uint8", "int64"):
        b = RegionBuilder("cast")
        y = b.op("AsType", b.input((64,), "float32", "x"), dtype=dtype)
        for target in ("cuda", "metal"):
            k = lower(b.build([y]), target)
            assert f"mt_ftoi<{_c_type(dtype)}>(" in k.source, k.source
            if target == "metal":
                assert metal_check.check(k) == [], k.as_text()


def _c_type(dtype: str) -> str:
    return {"int32": "int32_t", "uint8": "uint8_t", "int64": "int64_t"}[dtype]


_ROWS = np.array([
    [1.0, 2.0, 3.0, 2.0, -1.0, 0.5, 3.0, 0.0],
    [-np.inf] * 8,
    [np.inf, 1.0, 2.0, np.inf, 0.0, 0.0, 1.0, 1.0],
    [1.0, np.nan, 3.0, np.nan, 0.0, 0.0, 1.0, 1.0],
    [-np.inf, -np.inf, 0.0, -np.inf, 5.0, -np.inf, 5.0, -np.inf],
], np.float32)

REDUCTIONS = [
    ("sum", lambda x: mx.sum(x, axis=1)), ("prod", lambda x: mx.prod(x, axis=1)),
    ("max", lambda x: mx.max(x, axis=1)), ("min", lambda x: mx.min(x, axis=1)),
    ("argmax", lambda x: mx.argmax(x, axis=1)), ("argmin", lambda x: mx.argmin(x, axis=1)),
    ("logsumexp", lambda x: mx.logsumexp(x, axis=1)),
    ("softmax", lambda x: mx.softmax(x, axis=1)),
]


def _reduction_region(kind: str):
    b = RegionBuilder(kind)
    x = b.input(_ROWS.shape, "float32", "x")
    if kind in ("argmax", "argmin"):
        y = b.op("Squeeze", b.op("ArgReduce", x, kind=kind, axis=1), axes=(1,))
    elif kind == "logsumexp":
        y = b.op("Squeeze", b.op("LogSumExp", x), axes=(1,))
    elif kind == "softmax":
        y = b.op("Softmax", x)
    else:
        y = b.op("Squeeze", b.op("Reduce", x, kind=kind, axes=(1,)), axes=(1,))
    return b.build([y])


@pytest.mark.parametrize("kind,ref", REDUCTIONS, ids=[r[0] for r in REDUCTIONS])
@pytest.mark.parametrize("streamed", [False, True])
def test_reduction_special_values_match_mlx(kind, ref, streamed):
    """NaN and infinities through reductions: MLX's results (argmax takes the first NaN,
    logsumexp of an all -inf row is -inf, softmax of it NaN), in register and streamed rows."""
    (got,) = interpret(built(_reduction_region(kind), "tiny" if streamed else "cuda"), [_ROWS])
    want = np.array(ref(mx.array(_ROWS)))
    np.testing.assert_allclose(got, want, rtol=1e-6, atol=0, equal_nan=True)


_TRUE = {"float": [0.5, -0.25, 1e-30, -3.0, np.nan, np.inf, -np.inf], "int": [2, 3, -1, 7, -128],
         "bool": [True]}
_FALSE = {"float": [0.0, -0.0], "int": [0], "bool": [False]}


def truth_rows(dtype: str, length: int, seed: int = 0) -> np.ndarray:
    """Rows of nonzero values other than 1 (|x| < 1, NaN, infinities, 2, -1) and zeros (-0.0
    too): all nonzero, all zero, one zero, one nonzero, mixed."""
    rng = np.random.default_rng(seed)
    family = "bool" if dtype == "bool" else "int" if dtype in INTEGERS else "float"
    true, false = _TRUE[family], _FALSE[family]
    if family == "int" and np.iinfo(dtype).min == 0:
        true = [v for v in true if v > 0] + [np.iinfo(dtype).max]
    rows = [rng.choice(true, length), rng.choice(false, length), rng.choice(true, length),
            rng.choice(false, length), rng.choice(true + false, length)]
    rows[2][rng.integers(length)] = false[-1]
    rows[3][rng.integers(length)] = true[rng.integers(len(true))]
    with np.errstate(over="ignore"):
        return np.array(rows, np.float64 if family == "float" else None).astype(numpy_dtype(dtype))


@pytest.mark.parametrize("dtype", ("float32", "float16", "bfloat16", "int32", "uint8", "bool"))
@pytest.mark.parametrize("length", (1, 5, 37, 300, 3000))
def test_all_and_any_take_each_elements_truth(dtype, length):
    """mx.all / mx.any: an element is true when nonzero (0.5 and NaN are, -0.0 is not), combined
    logically, in register rows, streamed rows and across threads (kernel_ir.REDUCE_KINDS)."""
    x = truth_rows(dtype, length)
    for kind, ref in (("and", mx.all), ("or", mx.any)):
        b = RegionBuilder(kind)
        y = b.op("Squeeze", b.op("Reduce", b.input(x.shape, dtype, "x"), kind=kind, axes=(1,)),
                 axes=(1,))
        want = from_mx(ref(to_mx(x, dtype), axis=1))
        for chip in ("cuda", "metal", "tiny"):  # tiny: the rows streamed
            (got,) = interpret(built(b.build([y]), chip), [x])
            assert_matches(got, want, True, f"{kind} over {dtype} rows of {length}")


@pytest.mark.parametrize("target", ("cuda", "metal"), ids=("cuda-source", "metal-source"))
def test_rendered_all_and_any_combine_logically(target):
    """The rendered reduction tests each element's truth and combines with && / ||: no bitwise
    operator, no integer cast of the elements (which made 0.5 false and NaN false)."""
    from tests.codegen import metal_check

    for kind in ("and", "or"):
        b = RegionBuilder(kind)
        y = b.op("Reduce", b.input((64, 3000), "float32", "x"), kind=kind, axes=(1,))
        k = lower(b.build([y]), target)
        op = "&&" if kind == "and" else "||"
        combines = [ln for ln in k.source.splitlines() if "mt_acc" in ln and "=" in ln
                    and op in ln]
        assert combines and all("!= 0" in ln for ln in combines), k.source
        assert not re.search(r"[^&]&[^&]|[^|]\|[^|]", "\n".join(combines)), k.source
        assert "static_cast<int32_t>(mt_v" not in k.source, k.source
        if target == "metal":
            assert metal_check.check(k) == [], k.as_text()


def test_bool_and_int_reductions_match_mlx():
    rng = np.random.default_rng(1)
    x = rng.random((4, 9)) < 0.5
    x[0] = True
    for kind, ref in (("and", mx.all), ("or", mx.any), ("sum", mx.sum), ("max", mx.max)):
        b = RegionBuilder(kind)
        y = b.op("Squeeze", b.op("Reduce", b.input(x.shape, "bool", "x"), kind=kind, axes=(1,)),
                 axes=(1,))
        (got,) = interpret(built(b.build([y]), "cuda"), [x])
        want = np.array(ref(mx.array(x), axis=1))
        assert got.dtype == want.dtype and np.array_equal(got, want), kind
    xi = rng.integers(-50, 50, (4, 9)).astype(np.int8)
    b = RegionBuilder("isum")
    y = b.op("Squeeze", b.op("Reduce", b.input(xi.shape, "int8", "x"), kind="sum", axes=(1,)),
             axes=(1,))
    (got,) = interpret(built(b.build([y]), "cuda"), [xi])
    np.testing.assert_array_equal(got, np.array(mx.sum(mx.array(xi), axis=1)))
    assert dtypes.itemsize("int8") == 1
