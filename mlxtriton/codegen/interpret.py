"""Codegen layer: run a KERNEL node with NumPy, vectorised over the whole index space.

The living definition of what a kernel computes: every op's semantics is written here once (and
rendered by the dialect tables to match). The schedule does not change results, except that the
interpreter checks each access pattern the schedule relies on. May import numpy, ml_dtypes (for
bfloat16) and the codegen IR; never the runtime or the public API.
"""

from __future__ import annotations

import math
from typing import Callable, Sequence

import numpy as np

from mlxtriton.codegen.kernel_ir import Access, Ops, UOp, kernel_params

# NumPy's bfloat16, from ml_dtypes (a JAX dependency), imported by the first `numpy_dtype`
# call that needs it: importing it costs more than the rest of `import mlxtriton`. Every
# bfloat16 array the interpreter holds was made through `numpy_dtype`, so `_BF16` is set by then.
_BF16: np.dtype | None = None


def numpy_dtype(dtype: str) -> np.dtype:
    global _BF16
    if dtype == "bfloat16":
        if _BF16 is None:
            try:
                import ml_dtypes
            except ImportError:
                raise RuntimeError("interpreting bfloat16 needs the ml_dtypes package "
                                   "(pip install ml_dtypes, or the oracle extra)") from None
            _BF16 = np.dtype(ml_dtypes.bfloat16)
        return _BF16
    return np.dtype(dtype)


def _erf(x: np.ndarray) -> np.ndarray:
    return np.vectorize(math.erf, otypes=[np.float64])(x).astype(x.dtype)


def _sign(x: np.ndarray) -> np.ndarray:
    if x.dtype.kind == "u":
        return (x > 0).astype(x.dtype)
    return ((x > 0).astype(x.dtype) - (x < 0).astype(x.dtype))  # NaN -> 0, as MLX


def _rem(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    if a.dtype.kind == "f":
        return np.fmod(a, b)
    q = _div(a, b)
    return (a - q * b).astype(a.dtype)


def _div(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    if a.dtype.kind == "f":
        return a / b
    # C integer division truncates toward zero
    q = np.floor_divide(a, b)
    fix = (q * b != a) & ((a < 0) != (b < 0))
    return (q + fix).astype(a.dtype)


def _pow(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    # Operands broadcast to arrays of at least one element: NumPy replaces a power by a scalar
    # exponent 0.5 with sqrt (and -1, 0, 1, 2 by their own shortcuts), but C's pow, which MLX,
    # Metal and CUDA call, gives pow(-inf, 0.5) = +inf and pow(-0.0, 0.5) = +0.0.
    shape = np.broadcast_shapes(np.shape(a), np.shape(b))
    a, b = (np.array(np.broadcast_to(v, shape), ndmin=1) for v in (a, b))
    if a.dtype.kind == "f":
        # In double, rounded once: C's powf is correctly rounded where MLX's CPU backend calls it,
        # and NumPy's float32 power is not (3986.7368f ** 2 gives 15894071, powf 15894070, whose
        # parity then decides the sign of (-7) ** it).
        with np.errstate(over="ignore", invalid="ignore", divide="ignore"):
            return np.power(a.astype(np.float64), b.astype(np.float64)).astype(a.dtype).reshape(shape)
    out = np.power(a, np.maximum(b, 0).astype(b.dtype))
    # MLX: negative integer exponents give 0
    return np.where(b < 0, 0, out).astype(a.dtype).reshape(shape)


def _logaddexp(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    # MLX's LogAddExp: the larger operand itself when the smaller is -inf or the larger +inf
    # (logaddexp(-0.0, -inf) is -0.0), NaN from either operand propagating through max and min
    hi, lo = np.maximum(a, b), np.minimum(a, b)
    out = hi + np.log1p(np.exp(lo - hi))
    return np.where((lo == -np.inf) | (hi == np.inf), hi, out).astype(a.dtype)


def _shift(a: np.ndarray, b: np.ndarray, left: bool) -> np.ndarray:
    # a count outside [0, bits) shifts every bit out (kernel_ir.Ops.SHL / SHR)
    a, b = np.broadcast_arrays(np.asarray(a), np.asarray(b))
    inside = (b >= 0) & (b < 8 * a.dtype.itemsize)
    count = np.where(inside, b, 0).astype(a.dtype)
    if left:
        return np.where(inside, np.left_shift(a, count), 0).astype(a.dtype)
    fill = np.where(a < 0, -1, 0) if a.dtype.kind == "i" else 0
    return np.where(inside, np.right_shift(a, count), fill).astype(a.dtype)


def _sigmoid(x: np.ndarray) -> np.ndarray:
    y = 1 / (1 + np.exp(np.abs(x)))  # exp(|x|) may overflow to inf: y -> 0, no NaN
    return np.where(x < 0, y, 1 - y).astype(x.dtype)


def _round(x: np.ndarray) -> np.ndarray:
    return np.rint(x) if x.dtype.kind == "f" else x


_UNARY: dict[Ops, Callable[[np.ndarray], np.ndarray]] = {
    Ops.NEG: np.negative, Ops.NOT: np.logical_not, Ops.ABS: np.abs, Ops.SIGN: _sign,
    Ops.SQUARE: lambda x: x * x, Ops.SQRT: np.sqrt, Ops.RSQRT: lambda x: 1 / np.sqrt(x),
    Ops.EXP: np.exp, Ops.EXP_SHIFTED: np.exp, Ops.EXPM1: np.expm1, Ops.LOG: np.log, Ops.LOG2: np.log2,
    Ops.LOG10: np.log10, Ops.LOG1P: np.log1p, Ops.SIN: np.sin, Ops.COS: np.cos, Ops.TAN: np.tan,
    Ops.ASIN: np.arcsin, Ops.ACOS: np.arccos, Ops.ATAN: np.arctan, Ops.SINH: np.sinh,
    Ops.COSH: np.cosh, Ops.TANH: np.tanh, Ops.ASINH: np.arcsinh, Ops.ACOSH: np.arccosh,
    Ops.ATANH: np.arctanh, Ops.ERF: _erf, Ops.SIGMOID: _sigmoid, Ops.FLOOR: np.floor,
    Ops.CEIL: np.ceil, Ops.ROUND: _round,
}
_BINARY: dict[Ops, Callable[[np.ndarray, np.ndarray], np.ndarray]] = {
    Ops.ADD: np.add, Ops.SUB: np.subtract, Ops.MUL: np.multiply, Ops.DIV: _div,
    Ops.IDIV: np.floor_divide, Ops.MOD: np.mod, Ops.REM: _rem,
    Ops.MAX: np.maximum, Ops.MIN: np.minimum,  # both propagate NaN, as MLX
    Ops.POW: _pow, Ops.ATAN2: np.arctan2, Ops.LOGADDEXP: _logaddexp,
    Ops.CMPLT: np.less, Ops.CMPLE: np.less_equal, Ops.CMPEQ: np.equal, Ops.CMPNE: np.not_equal,
    Ops.AND: np.logical_and, Ops.OR: np.logical_or,
    Ops.BITAND: np.bitwise_and, Ops.BITOR: np.bitwise_or, Ops.BITXOR: np.bitwise_xor,
    Ops.SHL: lambda a, b: _shift(a, b, True), Ops.SHR: lambda a, b: _shift(a, b, False),
}


def _reduce(kind: str, v: np.ndarray, pos: np.ndarray | None) -> np.ndarray:
    if kind == "sum":
        return np.sum(v, axis=-1, keepdims=True, dtype=v.dtype)
    if kind == "prod":
        return np.prod(v, axis=-1, keepdims=True, dtype=v.dtype)
    if kind == "max":
        return np.max(v, axis=-1, keepdims=True)
    if kind == "min":
        return np.min(v, axis=-1, keepdims=True)
    if kind == "and":  # the truth of each element: nonzero, NaN included
        return np.all(v != 0, axis=-1, keepdims=True)
    if kind == "or":
        return np.any(v != 0, axis=-1, keepdims=True)
    if kind in ("argmax", "argmin"):
        # first extreme element; a NaN counts as the extreme (MLX and NumPy agree)
        at = (np.argmax if kind == "argmax" else np.argmin)(v, axis=-1)[..., None]
        return np.take_along_axis(pos, at, axis=-1).astype(np.uint32)
    if kind == "sumexp":
        m = np.max(v, axis=-1, keepdims=True)
        return np.sum(np.exp(v - m), axis=-1, keepdims=True, dtype=v.dtype)
    if kind == "sqdev":
        w = v.astype(np.float64)
        return np.sum(np.square(w - w.mean(axis=-1, keepdims=True)), axis=-1, keepdims=True).astype(v.dtype)
    raise ValueError(f"unknown reduction {kind!r}")


def interpret(kernel: UOp, inputs: Sequence[np.ndarray], check_access: bool = True
              ) -> list[np.ndarray]:
    """Run a KERNEL node on NumPy arrays; returns its outputs.

    Args:
        kernel: a KERNEL UOp from ``build``.
        inputs: one array per input buffer, in order; shapes as the kernel's params (any layout:
            the kernel reads them row-contiguous, as MLX passes them).
        check_access: also verify that every VECTOR / UNIFORM access really is contiguous /
            lane-invariant over the index space (the schedule's claims).

    Returns:
        The outputs, NumPy arrays of the kernel's output shapes and dtypes.

    Example:
        >>> from mlxtriton.codegen.region import RegionBuilder
        >>> from mlxtriton.codegen.builder import build
        >>> b = RegionBuilder("lse")
        >>> y = b.op("LogSumExp", b.input((2, 3), "float32", "x"))
        >>> out, = interpret(build(b.build([y])), [np.zeros((2, 3), np.float32)])
        >>> np.allclose(out, np.log(3))
        True
    """
    sched = kernel.arg
    params = kernel_params(kernel)
    ins = [p for p in params if p.role == "input"]
    if len(inputs) != len(ins):
        raise ValueError(f"kernel takes {len(ins)} inputs, got {len(inputs)}")
    buffers: dict[int, np.ndarray] = {}
    for p, a in zip(ins, inputs):
        a = np.asarray(a)
        if a.shape != p.shape:
            raise ValueError(f"input {p.name}: shape {a.shape}, kernel expects {p.shape}")
        buffers[p.slot] = np.ascontiguousarray(a, dtype=numpy_dtype(p.dtype)).reshape(-1)
    outs = {p.slot: np.zeros(p.size, numpy_dtype(p.dtype)) for p in params if p.role == "output"}
    written = {slot: np.zeros(a.size, bool) for slot, a in outs.items()}

    idx_t = np.int64  # index arithmetic wide enough for any kernel
    if sched.kind == "row":
        space = {"row": np.arange(sched.rows, dtype=idx_t)[:, None],
                 "col": np.arange(sched.row_length, dtype=idx_t)[None, :]}
        full = (sched.rows, sched.row_length)
    else:
        space = {"idx": np.arange(sched.elements, dtype=idx_t)}
        full = (sched.elements,)

    vals: dict[UOp, np.ndarray] = {}
    with np.errstate(all="ignore"):  # IEEE specials are part of the semantics
        for u in kernel.toposort:
            if u.op in (Ops.PARAM, Ops.KERNEL):
                continue
            src = [vals[s] for s in u.src if s.op is not Ops.PARAM]
            if u.op is Ops.SPECIAL:
                vals[u] = space[u.arg[0]]
            elif u.op is Ops.CONST:
                vals[u] = np.asarray(u.arg, dtype=_np_compute(u.dtype))
            elif u.op is Ops.LOAD:
                buf = buffers[u.src[0].arg.slot]
                index = np.asarray(src[0], dtype=idx_t)
                if index.size and (index.min() < 0 or index.max() >= buf.size):
                    raise IndexError(f"load from {u.src[0].arg.name} out of bounds "
                                     f"[{index.min()}, {index.max()}] of {buf.size}")
                vals[u] = buf[index]
                if check_access:
                    _check_access(u, index, sched, full)
            elif u.op is Ops.STORE:
                slot = u.src[0].arg.slot
                index = np.broadcast_to(np.asarray(src[0], idx_t), np.broadcast_shapes(
                    np.shape(src[0]), np.shape(src[1])))
                value = np.broadcast_to(src[1], index.shape)
                outs[slot][index.reshape(-1)] = value.reshape(-1).astype(outs[slot].dtype)
                written[slot][index.reshape(-1)] = True
                if check_access:
                    _check_access(u, index, sched, full)
            elif u.op is Ops.REDUCE:
                v = np.broadcast_to(src[0], full).astype(_np_compute(u.src[0].dtype))
                pos = np.broadcast_to(src[1], full) if len(src) > 1 else None
                vals[u] = _reduce(u.arg, v, pos).astype(_np_compute(u.dtype))
            elif u.op is Ops.CAST:
                vals[u] = _cast(src[0], u.dtype)
            elif u.op is Ops.BLOCK_SUM:
                # each row sees its block's sum: [R, L] -> [R / B, B, L], summed over B
                v = np.broadcast_to(src[0], full).astype(_np_compute(u.dtype))
                sums = v.reshape(full[0] // u.arg, u.arg, full[1]).sum(axis=1, dtype=v.dtype)
                vals[u] = np.repeat(sums, u.arg, axis=0)
            elif u.op is Ops.KEEP:  # where a value lives, not what it is
                vals[u] = src[0]
            elif u.op is Ops.WHERE:
                vals[u] = np.where(src[0], src[1], src[2]).astype(_np_compute(u.dtype))
            elif u.op in _UNARY:
                vals[u] = np.asarray(_UNARY[u.op](src[0])).astype(_np_compute(u.dtype))
            elif u.op in _BINARY:
                vals[u] = np.asarray(_BINARY[u.op](src[0], src[1])).astype(_np_compute(u.dtype))
            else:
                raise NotImplementedError(f"interpreter has no rule for {u.op}")
    for p in params:
        if p.role == "output" and not written[p.slot].all():
            raise AssertionError(f"kernel left elements of output {p.name} unwritten")
    return [outs[p.slot].reshape(p.shape) for p in params if p.role == "output"]


def _np_compute(dtype: str) -> np.dtype:
    return numpy_dtype(dtype)


def _cast(x: np.ndarray, dtype: str) -> np.ndarray:
    target = numpy_dtype(dtype)
    x = np.asarray(x)
    if dtype == "bool":
        return x != 0
    if x.dtype == _BF16 and target.kind != "f":
        x = x.astype(np.float32)
    if x.dtype.kind == "f" and target.kind in "iu":
        # truncated, saturated, NaN as 0 (kernel_ir.Ops.CAST); float64 holds every float32
        info = np.iinfo(target)
        t = np.trunc(x.astype(np.float64))
        high, low = t >= float(info.max), t <= float(info.min)
        t = np.where(np.isnan(t) | high | low, 0, t).astype(target)
        return np.where(high, info.max, np.where(low, info.min, t)).astype(target)
    return x.astype(target)


def _check_access(u: UOp, index: np.ndarray, sched, full: tuple[int, ...]) -> None:
    """A VECTOR access must cover V consecutive elements from a V-aligned start at every lane
    group; a UNIFORM one a single element per lane group."""
    access = u.arg.access
    V = sched.vector_width
    if access not in (Access.VECTOR, Access.UNIFORM) or V == 1:
        return
    index = np.broadcast_to(index, full)
    lanes = index.reshape(*full[:-1], full[-1] // V, V)
    base = lanes[..., :1]
    if access is Access.VECTOR:
        ok = np.array_equal(lanes, base + np.arange(V)) and not np.any(base % V)
    else:
        ok = np.array_equal(lanes, np.broadcast_to(base, lanes.shape))
    if not ok:
        raise AssertionError(f"{u.op.name} of {u.src[0].arg.name} is marked {access.value} but its "
                             f"index is not")
