"""Per-op semantics of generated kernels against MLX's own CPU ops: one table row per primitive
(arity, dtypes, MLX reference), special values included (NaN, infinities, signed zeros)."""

from __future__ import annotations

import mlx.core as mx
import numpy as np
import pytest

from mlxtriton.codegen.builder import CUDA_PARAMS, build
from mlxtriton.codegen.interpret import interpret
from mlxtriton.codegen.region import RegionBuilder
from mlxtriton.graph import dtypes

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
]

_SPECIAL = np.array([0.0, -0.0, 1.0, -1.0, 0.5, -0.5, 2.5, -2.5, 1e-6, 3.0, -7.5, 88.0, -104.0,
                     np.inf, -np.inf, np.nan], np.float32)


def _values(dtype: str, n: int, rng, second: bool) -> np.ndarray:
    if dtype == "bool":
        return rng.random(n) < 0.5
    if dtype == "int32":
        v = rng.integers(-9, 10, n).astype(np.int32)
        if second:  # divisors and exponents: no zero divisor, small exponents
            v = np.where(v == 0, 3, v) % 7 - 3
            v = np.where(v == 0, 2, v).astype(np.int32)
        return v
    v = (rng.standard_normal(n) * 2).astype(np.float32)
    v[: len(_SPECIAL)] = np.roll(_SPECIAL, 5 if second else 0)[: n]
    return v


@pytest.mark.parametrize("prim,params,arity,dts,ref", TABLE,
                         ids=[f"{t[0]}{''.join(map(str, t[1].values()))}" for t in TABLE])
def test_op_matches_mlx(prim, params, arity, dts, ref):
    rng = np.random.default_rng(0)
    for dtype in dts:
        n = 64
        b = RegionBuilder(prim)
        xs = [b.input((n,), dtype, f"a{k}") for k in range(arity)]
        region = b.build([b.op(prim, *xs, **params)])
        args = [_values(dtype, n, rng, k == 1) for k in range(arity)]
        (got,) = interpret(build(region, CUDA_PARAMS), args)
        want = np.array(ref(*[mx.array(a) for a in args]))
        assert got.dtype == want.dtype, (prim, dtype, got.dtype, want.dtype)
        if dtype == "float32" and want.dtype.kind == "f":
            np.testing.assert_allclose(got, want, rtol=4e-6, atol=2e-7, equal_nan=True,
                                       err_msg=f"{prim} {dtype} on {args}")
        else:
            np.testing.assert_array_equal(got, want, err_msg=f"{prim} {dtype} on {args}")


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
    from mlxtriton.codegen.builder import ScheduleParams

    params = ScheduleParams(resident_registers=0) if streamed else CUDA_PARAMS
    (got,) = interpret(build(_reduction_region(kind), params), [_ROWS])
    want = np.array(ref(mx.array(_ROWS)))
    np.testing.assert_allclose(got, want, rtol=1e-6, atol=0, equal_nan=True)


def test_bool_and_int_reductions_match_mlx():
    rng = np.random.default_rng(1)
    x = rng.random((4, 9)) < 0.5
    x[0] = True
    for kind, ref in (("and", mx.all), ("or", mx.any), ("sum", mx.sum), ("max", mx.max)):
        b = RegionBuilder(kind)
        y = b.op("Squeeze", b.op("Reduce", b.input(x.shape, "bool", "x"), kind=kind, axes=(1,)),
                 axes=(1,))
        (got,) = interpret(build(b.build([y])), [x])
        want = np.array(ref(mx.array(x), axis=1))
        assert got.dtype == want.dtype and np.array_equal(got, want), kind
    xi = rng.integers(-50, 50, (4, 9)).astype(np.int8)
    b = RegionBuilder("isum")
    y = b.op("Squeeze", b.op("Reduce", b.input(xi.shape, "int8", "x"), kind="sum", axes=(1,)),
             axes=(1,))
    (got,) = interpret(build(b.build([y])), [xi])
    np.testing.assert_array_equal(got, np.array(mx.sum(mx.array(xi), axis=1)))
    assert dtypes.itemsize("int8") == 1
