"""Codegen layer: lower a ``Region`` to one KERNEL node of the kernel IR under a given schedule.

Movement ops become index arithmetic: every value is evaluated *at coordinates* (index
expressions over the domain's axes), so transposes, broadcasts and slices are never copies.
May import the graph layer's dtypes, the hardware layer and the codegen IR; never the runtime
or the public API.
"""

from __future__ import annotations

import functools
import math
import re
from dataclasses import dataclass
from typing import Any, Callable, NamedTuple

from mlxtriton.codegen import kernel_ir as K
from mlxtriton.codegen.kernel_ir import Access, Mem, Ops, UOp, UPat
from mlxtriton.codegen.region import Input, Op, Region, contiguous_strides
from mlxtriton.graph import dtypes as _dtypes
from mlxtriton.graph._shared_rules import broadcast_shape, slices


class RegionError(ValueError):
    """The region cannot become one kernel; the message names the op and why."""


_INT32_LIMIT = 2**31 - 1


def compute_dtype(dtype: str) -> str:
    """The register type a value of ``dtype`` is computed in: half types widen to float32."""
    return "float32" if dtype in ("float16", "bfloat16") else dtype


def _is_float(dtype: str) -> bool:
    return dtype in _dtypes.FLOATING


# ---------------------------------------------------------------------------------------------
# lowering state


class _Lowering:
    def __init__(self, region: Region):
        self.region = region
        self.n_in = len(region.inputs)
        self.shapes: list[tuple[int, ...]] = [i.shape for i in region.inputs]
        self.dtypes: list[str] = [i.dtype for i in region.inputs]
        for k, o in enumerate(region.ops):
            rule = _rule(o, self.n_in + k)
            try:
                shape, dtype = rule.infer(self, o, [self.shapes[a] for a in o.args],
                                          [self.dtypes[a] for a in o.args])
            except RegionError:
                raise
            except (ValueError, TypeError, KeyError, IndexError) as e:
                raise RegionError(f"op {k} ({o.primitive}): {e}") from None
            self.shapes.append(tuple(shape))
            self.dtypes.append(dtype)
        for v in range(len(self.shapes)):
            if self.dtypes[v] in ("float64", "complex64"):
                raise RegionError(f"value {v} is {self.dtypes[v]}: MLX has no GPU kernels for it")
        self._find_domain()
        sizes = [math.prod(s) for s in self.shapes] + [math.prod(self.domain)]
        self.index_dtype = "int64" if max(sizes) > _INT32_LIMIT else "int32"
        self.zero = UOp.const(self.index_dtype, 0)
        self.dims = tuple(
            self.zero if n == 1 else UOp(Ops.SPECIAL, self.index_dtype, (), (f"d{k}", n))
            for k, n in enumerate(self.domain))
        self.memo: dict[tuple[int, tuple[UOp, ...]], UOp] = {}
        self.in_params = [
            UOp(Ops.PARAM, i.dtype, (), K.Param(k, n, "input", i.shape, i.dtype))
            for k, (i, n) in enumerate(zip(region.inputs, _names(region)[0]))]

    # the domain: the shape every value is evaluated over, and the reduced axes
    def _find_domain(self) -> None:
        found: dict[tuple[tuple[int, ...], tuple[int, ...]], int] = {}
        self.blocks: dict[int, _Block] = {}
        for k, o in enumerate(self.region.ops):
            if (block := _block_sum(self, o)) is not None:
                self.blocks[self.n_in + k] = block
                continue
            if o.primitive in _REDUCING:
                v = self.n_in + k
                shape = self.shapes[o.args[0]]
                found.setdefault((shape, _REDUCING[o.primitive](o, shape)), v)
        domains = {shape for shape, _ in found}
        for v, b in list(self.blocks.items()):
            if found and self.shapes[b.value] not in domains:
                # a sum over the middle axis of a reshape of something other than the rows of
                # the region's other reductions: a column reduction's first level
                # (fusion/split.py), not a block sum
                del self.blocks[v]
                o = self.region.ops[v - self.n_in]
                shape = self.shapes[o.args[0]]
                found.setdefault((shape, _REDUCING[o.primitive](o, shape)), v)
        if self.blocks and not found:
            v = next(iter(self.blocks))
            raise RegionError(f"op {v - self.n_in} (block column sum): a block column sum needs "
                              "a row kernel, and this region reduces no row")
        if len(found) > 1:
            listing = "; ".join(f"value {v}: shape {s} axes {a}" for (s, a), v in found.items())
            raise RegionError("one kernel reduces one set of axes of one shape; this region has "
                              + listing)
        # Outputs may differ in size-1 axes only (y and y.reshape(4, 1, 64)): each is the
        # domain, its size-1 axes at coordinate 0 (_output_coords).
        shapes = list(dict.fromkeys(self.shapes[v] for v in self.region.outputs))
        if not found and len({tuple(n for n in s if n != 1) for s in shapes}) > 1:
            # A gather's picks written beside whole rows of its source (fusion reads such a
            # take_along_axis as a row load): a row kernel over the source, as for cross-entropy.
            found = {(self.shapes[o.args[0]], _gather_axes(o, self.shapes[o.args[0]])): k
                     for k, o in enumerate(self.region.ops) if o.primitive == "GatherAxis"}
            if len(found) != 1:
                raise RegionError(f"a pointwise kernel writes outputs of one shape, not {set(shapes)}")
        if found:
            (self.domain, self.reduce_axes), = found.keys()
        else:
            self.domain, self.reduce_axes = shapes[0], ()
        if math.prod(self.domain) == 0:
            raise RegionError(f"the domain {self.domain} is empty: nothing to launch")
        self._check_blocks()

    def _check_blocks(self) -> None:
        """Block column sums belong to a row kernel over their value's rows, read by nothing
        but the stores, all over blocks of one size."""
        if not self.blocks:
            return
        reads = {a for o in self.region.ops for a in o.args}
        for v, b in self.blocks.items():
            what = f"op {v - self.n_in} (block column sum)"
            if self.shapes[b.value] != self.domain or self.reduce_axes != tuple(
                    range(b.row_axes, len(self.domain))):
                raise RegionError(f"{what}: sums {self.shapes[b.value]} over blocks of its "
                                  f"leading {b.row_axes} axes, but the row kernel's domain is "
                                  f"{self.domain} reducing axes {self.reduce_axes}")
            if v in reads:
                raise RegionError(f"{what}: its partial sums are only written out, not read "
                                  f"by the region")
        if len({b.rows for b in self.blocks.values()}) > 1:
            raise RegionError("block column sums of one kernel take blocks of one size, not "
                              f"{sorted({b.rows for b in self.blocks.values()})}")

    @property
    def rows_per_block(self) -> int:
        return next(iter(self.blocks.values())).rows if self.blocks else 1

    @property
    def is_row(self) -> bool:
        return bool(self.reduce_axes)

    def compute(self, v: int) -> str:
        return compute_dtype(self.dtypes[v])

    # evaluate value v at index coordinates (one expression per axis of v's shape)
    def at(self, v: int, coords: tuple[UOp, ...]) -> UOp:
        key = (v, coords)
        if (hit := self.memo.get(key)) is not None:
            return hit
        if v < self.n_in:
            index = self.zero
            for c, s in zip(coords, contiguous_strides(self.shapes[v])):
                index = index + c * s
            node = self.load(v, index)
        else:
            o = self.region.ops[v - self.n_in]
            try:
                node = _RULES[o.primitive].lower(self, v, o, coords)
            except RegionError:
                raise
            except (ValueError, TypeError, KeyError, IndexError) as e:
                raise RegionError(f"op {v - self.n_in} ({o.primitive}): {e}") from None
        self.memo[key] = node
        return node

    def load(self, v: int, index: UOp) -> UOp:
        """Input ``v`` at flat ``index``, in its compute type."""
        node = UOp(Ops.LOAD, self.dtypes[v], (self.in_params[v], index), Mem())
        return node.cast(compute_dtype(self.dtypes[v]))

    def args_at(self, v: int, o: Op, coords: tuple[UOp, ...]) -> list[UOp]:
        """The op's arguments at the coordinates of its (broadcast) result."""
        out_shape = self.shapes[v]
        return [self.at(a, self.broadcast_coords(self.shapes[a], out_shape, coords))
                for a in o.args]

    def broadcast_coords(self, shape: tuple[int, ...], out_shape: tuple[int, ...],
                         coords: tuple[UOp, ...]) -> tuple[UOp, ...]:
        off = len(out_shape) - len(shape)
        # a size-1 axis has one coordinate, 0, even where the result's axis is size 1 too and
        # its coordinate is data (a gathered index into a row of one element)
        return tuple(coords[off + i] if n == out_shape[off + i] and n != 1 else self.zero
                     for i, n in enumerate(shape))

    def check_row(self, v: int, coords: tuple[UOp, ...]) -> None:
        """A reduced value exists only for the thread's own row: its coordinates must be that
        row's (and 0 along reduced axes)."""
        for k, c in enumerate(coords):
            want = self.zero if k in self.reduce_axes else self.dims[k]
            if c is not want:
                o = self.region.ops[v - self.n_in]
                raise RegionError(
                    f"op {v - self.n_in} ({o.primitive}): its reduced value is read at another "
                    f"row's index (axis {k}), which one kernel cannot do")


def _names(region: Region) -> tuple[list[str], list[str]]:
    used: set[str] = set()

    def pick(name: str | None, fallback: str) -> str:
        ok = (name is not None and re.fullmatch(r"[A-Za-z][A-Za-z0-9]{0,30}", name)
              and name not in _RESERVED and not name.startswith("mt") and name not in used)
        chosen = name if ok else fallback
        while chosen in used:
            chosen += "x"
        used.add(chosen)
        return chosen

    ins = [pick(i.name, f"in{k}") for k, i in enumerate(region.inputs)]
    names = region.output_names or (None,) * len(region.outputs)
    outs = [pick(n, f"out{k}") for k, n in enumerate(names)]
    return ins, outs


# Words a parameter must not be named: C/C++/Metal/CUDA keywords and types, MLX's CUDA `inf`
# macro, and names MLX's wrapper generates.
_RESERVED = frozenset("""
auto bool break case char const constant constexpr continue default device do double else enum
extern float for goto half if inline int kernel long metal namespace return short signed sizeof
static struct switch template this thread threadgroup typedef uint union unsigned using void
volatile while inf cg cuda uint3 float16_t bfloat16_t threadIdx blockIdx blockDim gridDim
simd vec
""".split())


# ---------------------------------------------------------------------------------------------
# the primitive table: shape/dtype inference and evaluation at coordinates, keyed by MLX name


class _Rule(NamedTuple):
    infer: Callable[..., tuple[tuple[int, ...], str]]
    lower: Callable[..., UOp]


_RULES: dict[str, _Rule] = {}
# primitives that reduce: name -> (op, input shape) -> normalized reduced axes
_REDUCING: dict[str, Callable[[Op, tuple[int, ...]], tuple[int, ...]]] = {}


def _rule(o: Op, v: int) -> _Rule:
    try:
        return _RULES[o.primitive]
    except KeyError:
        raise RegionError(f"op {v} uses primitive {o.primitive!r}, which codegen does not "
                          f"support (supported: {', '.join(sorted(_RULES))})") from None


def _register(names: tuple[str, ...] | str, infer, lower) -> None:
    for name in (names,) if isinstance(names, str) else names:
        if name in _RULES:
            raise ValueError(f"codegen rule for {name} registered twice")
        _RULES[name] = _Rule(infer, lower)


def _norm_axes(axes, ndim: int) -> tuple[int, ...]:
    out = tuple(sorted({a % ndim if ndim else a for a in axes}))
    if any(not 0 <= a < max(ndim, 1) for a in out):
        raise ValueError(f"axes {axes} out of range for {ndim} dimensions")
    return out


def _broadcast_shapes(shapes: list[tuple[int, ...]]) -> tuple[int, ...]:
    return broadcast_shape(*shapes)  # the graph layer's NumPy broadcasting, one definition


def _same_dtype(dtypes: list[str], what: str) -> str:
    if len(set(dtypes)) != 1:
        raise ValueError(f"{what} needs operands of one dtype, got {dtypes} (MLX inserts AsType "
                         f"before mixed-type ops; the region must contain it)")
    return dtypes[0]


# -- elementwise families ---------------------------------------------------------------------

_FLOAT_UNARY = {
    "Exp": Ops.EXP, "Expm1": Ops.EXPM1, "Log1p": Ops.LOG1P, "Sin": Ops.SIN, "Cos": Ops.COS,
    "Tan": Ops.TAN, "ArcSin": Ops.ASIN, "ArcCos": Ops.ACOS, "ArcTan": Ops.ATAN, "Sinh": Ops.SINH,
    "Cosh": Ops.COSH, "Tanh": Ops.TANH, "ArcSinh": Ops.ASINH, "ArcCosh": Ops.ACOSH,
    "ArcTanh": Ops.ATANH, "Erf": Ops.ERF, "Sigmoid": Ops.SIGMOID,
}
_ANY_UNARY = {"Negative": Ops.NEG, "Abs": Ops.ABS, "Sign": Ops.SIGN, "Square": Ops.SQUARE,
              "Floor": Ops.FLOOR, "Ceil": Ops.CEIL, "Round": Ops.ROUND}
_ARITH_BINARY = {"Add": Ops.ADD, "Subtract": Ops.SUB, "Multiply": Ops.MUL,  # Divide: below
                 "Maximum": Ops.MAX, "Minimum": Ops.MIN, "Power": Ops.POW}
_FLOAT_BINARY = {"ArcTan2": Ops.ATAN2, "LogAddExp": Ops.LOGADDEXP}
_COMPARE = {"Less": (Ops.CMPLT, False), "LessEqual": (Ops.CMPLE, False),
            "Greater": (Ops.CMPLT, True), "GreaterEqual": (Ops.CMPLE, True),
            "Equal": (Ops.CMPEQ, False), "NotEqual": (Ops.CMPNE, False)}


def _infer_unary(kind: str):
    def infer(ctx, o, shapes, dtypes):
        (dt,) = dtypes
        if kind == "float" and not _is_float(dt):
            raise ValueError(f"needs a floating input, got {dt} (MLX casts integers to float "
                             f"first; the region must contain that AsType)")
        if kind == "bool" and dt != "bool":
            raise ValueError(f"needs a bool input, got {dt}")
        if kind == "number" and dt == "bool":
            raise ValueError("is not defined on bool")
        return shapes[0], dt
    return infer


def _infer_binary(kind: str):
    def infer(ctx, o, shapes, dtypes):
        dt = _same_dtype(dtypes, o.primitive)
        if kind == "float" and not _is_float(dt):
            raise ValueError(f"needs floating inputs, got {dt}")
        if kind == "bool" and dt != "bool":
            raise ValueError(f"needs bool inputs, got {dt}")
        if kind == "number" and dt == "bool":
            raise ValueError("is not defined on bool")
        return _broadcast_shapes(shapes), ("bool" if kind in ("compare", "bool") else dt)
    return infer


def _lower_with(op: Ops):
    def lower(ctx, v, o, coords):
        args = ctx.args_at(v, o, coords)
        if op in (Ops.FLOOR, Ops.CEIL, Ops.ROUND) and not _is_float(args[0].dtype):
            return args[0]  # integers are already whole
        if op is Ops.ABS and args[0].dtype in ("uint8", "uint16", "uint32", "uint64"):
            return args[0]
        return K.alu(op, *args)
    return lower


for _name, _op in _FLOAT_UNARY.items():
    _register(_name, _infer_unary("float"), _lower_with(_op))
for _name, _op in _ANY_UNARY.items():
    _register(_name, _infer_unary("number"), _lower_with(_op))
_register("LogicalNot", _infer_unary("bool"), _lower_with(Ops.NOT))
for _name, _op in _ARITH_BINARY.items():
    _register(_name, _infer_binary("number"), _lower_with(_op))
for _name, _op in _FLOAT_BINARY.items():
    _register(_name, _infer_binary("float"), _lower_with(_op))


def _lower_divide(ctx, v, o, coords):
    a, b = ctx.args_at(v, o, coords)
    if ctx.dtypes[v] in ("float16", "bfloat16") and not b.per_element:
        # A half-precision quotient by a per-row (or constant) divisor: one reciprocal per row,
        # then a multiply per element. x * (1/s) is within an ulp of float32 (2^-23) of x / s,
        # far below the 2^-9 (bfloat16) or 2^-12 (float16) to which MLX rounds the quotient;
        # CUDA's own bfloat16 division uses div.approx.f32 for the same reason (cuda_bf16.hpp,
        # __internal_device_hdiv). The IEEE division per element cost the H200 15-20% of bf16
        # softmax (32768x4096: 3436 -> 3955 GB/s, 4096x16384: 2889 -> 3481).
        return K.alu(Ops.MUL, a, K.alu(Ops.DIV, UOp.const(b.dtype, 1.0), b))
    return K.alu(Ops.DIV, a, b)


_register("Divide", _infer_binary("number"), _lower_divide)
_register("LogicalAnd", _infer_binary("bool"), _lower_with(Ops.AND))
_register("LogicalOr", _infer_binary("bool"), _lower_with(Ops.OR))

# MLX's BitwiseBinary::Op, on integers and bool (shifts on integers: MLX casts bool first)
_BITWISE = {"and": Ops.BITAND, "or": Ops.BITOR, "xor": Ops.BITXOR, "left_shift": Ops.SHL,
            "right_shift": Ops.SHR}


def _infer_bitwise(ctx, o, shapes, dtypes):
    dt = _same_dtype(dtypes, o.primitive)
    if dt not in _dtypes.INTEGER and dt != "bool" or o.param("op") not in _BITWISE:
        raise ValueError(f"{o.param('op')} needs integer or bool inputs, got {dt}")
    if dt == "bool" and _BITWISE[o.param("op")] in (Ops.SHL, Ops.SHR):
        raise ValueError(f"{o.param('op')} is not defined on bool")
    return _broadcast_shapes(shapes), dt


_register("BitwiseBinary", _infer_bitwise,
          lambda ctx, v, o, coords: K.alu(_BITWISE[o.param("op")], *ctx.args_at(v, o, coords)))


def _lower_compare(ctx, v, o, coords):
    op, swap = _COMPARE[o.primitive]
    a, b = ctx.args_at(v, o, coords)
    if swap:
        a, b = b, a
    out = K.alu(op, a, b)
    if o.param("equal_nan", False) and _is_float(a.dtype):  # NaN == NaN when asked
        out = K.alu(Ops.OR, out, K.alu(Ops.AND, K.alu(Ops.CMPNE, a, a), K.alu(Ops.CMPNE, b, b)))
    return out


_register(tuple(_COMPARE), _infer_binary("compare"), _lower_compare)


def _lower_sqrt(ctx, v, o, coords):
    (x,) = ctx.args_at(v, o, coords)
    return K.alu(Ops.RSQRT if o.param("reciprocal", False) else Ops.SQRT, x)


_register("Sqrt", _infer_unary("float"), _lower_sqrt)

# MLX's Log::Base: two 0, ten 1, e 2 (mlx.md); the graph may also carry the name.
_LOG_BASE = {0: Ops.LOG2, 1: Ops.LOG10, 2: Ops.LOG, "two": Ops.LOG2, "ten": Ops.LOG10,
             "e": Ops.LOG, None: Ops.LOG}


def _lower_log(ctx, v, o, coords):
    (x,) = ctx.args_at(v, o, coords)
    return K.alu(_LOG_BASE[o.param("base")], x)


_register("Log", _infer_unary("float"), _lower_log)


def _signed_fix(r: UOp, b: UOp) -> UOp:
    """Python's sign rule: a nonzero remainder takes the divisor's sign (MLX Remainder)."""
    zero = UOp.const(r.dtype, 0)
    fix = K.alu(Ops.AND, K.alu(Ops.CMPNE, r, zero),
                K.alu(Ops.CMPNE, K.alu(Ops.CMPLT, r, zero), K.alu(Ops.CMPLT, b, zero)))
    return K.alu(Ops.WHERE, fix, K.alu(Ops.ADD, r, b), r)


def _lower_remainder(ctx, v, o, coords):
    a, b = ctx.args_at(v, o, coords)
    r = K.alu(Ops.REM, a, b)
    return r if a.dtype in ("uint8", "uint16", "uint32", "uint64") else _signed_fix(r, b)


def _lower_floor_divide(ctx, v, o, coords):
    a, b = ctx.args_at(v, o, coords)
    if _is_float(a.dtype):
        # MLX floors the quotient rounded to the operands' type: a float16 1e-6 / -104 is -0.0
        # there, so its floor is -0.0, not -1
        return K.alu(Ops.FLOOR, convert(K.alu(Ops.DIV, a, b), ctx.dtypes[v]))
    q = K.alu(Ops.DIV, a, b)  # C division truncates; floor it for mixed signs
    if a.dtype in ("uint8", "uint16", "uint32", "uint64"):
        return q
    zero = UOp.const(a.dtype, 0)
    fix = K.alu(Ops.AND, K.alu(Ops.CMPNE, K.alu(Ops.REM, a, b), zero),
                K.alu(Ops.CMPNE, K.alu(Ops.CMPLT, a, zero), K.alu(Ops.CMPLT, b, zero)))
    return K.alu(Ops.WHERE, fix, K.alu(Ops.SUB, q, UOp.const(a.dtype, 1)), q)


_register("Remainder", _infer_binary("number"), _lower_remainder)
_register("FloorDivide", _infer_binary("number"), _lower_floor_divide)


def _infer_select(ctx, o, shapes, dtypes):
    if dtypes[0] != "bool":
        raise ValueError(f"needs a bool condition, got {dtypes[0]}")
    return _broadcast_shapes(shapes), _same_dtype(dtypes[1:], "Select")


_register("Select", _infer_select, lambda ctx, v, o, c: K.alu(Ops.WHERE, *ctx.args_at(v, o, c)))


def convert(x: UOp, dtype: str) -> UOp:
    """Convert a computed value to ``dtype``'s compute type, rounding through half types."""
    if dtype in ("float16", "bfloat16"):
        x = x.cast("float32")
        if x.op is Ops.CAST and x.src[0].dtype == dtype:
            return x  # already exactly representable
        return x.cast(dtype).cast("float32")
    if dtype == "bool" and x.dtype != "bool":
        return K.alu(Ops.CMPNE, x, UOp.const(x.dtype, 0))
    return x.cast(dtype)


def _infer_astype(ctx, o, shapes, dtypes):
    return shapes[0], _dtypes.check(o.param("dtype"))


_register("AsType", _infer_astype,
          lambda ctx, v, o, c: convert(ctx.args_at(v, o, c)[0], ctx.dtypes[v]))


def _infer_constant(ctx, o, shapes, dtypes):
    return (), _dtypes.check(o.param("dtype"))


def _lower_constant(ctx, v, o, coords):
    dt = ctx.dtypes[v]
    value = o.param("value")
    if dt in ("float16", "bfloat16"):
        value = _round_half(float(value), dt)
    return UOp.const(compute_dtype(dt), value)


def _round_half(value: float, dtype: str) -> float:
    import numpy as np

    if dtype == "float16":
        return float(np.float16(value))
    import ml_dtypes

    return float(np.array(value, dtype=np.float32).astype(ml_dtypes.bfloat16).astype(np.float32))


_register("Constant", _infer_constant, _lower_constant)


# -- movement: coordinate transforms ----------------------------------------------------------

def _infer_broadcast(ctx, o, shapes, dtypes):
    shape = tuple(o.param("shape"))
    if _broadcast_shapes([shapes[0], shape]) != shape:
        raise ValueError(f"cannot broadcast {shapes[0]} to {shape}")
    return shape, dtypes[0]


def _lower_broadcast(ctx, v, o, coords):
    (a,) = o.args
    return ctx.at(a, ctx.broadcast_coords(ctx.shapes[a], ctx.shapes[v], coords))


def _infer_reshape(ctx, o, shapes, dtypes):
    shape = list(o.param("shape"))
    if -1 in shape:  # one inferred axis, as the exporter may report it
        known = math.prod(n for n in shape if n != -1)
        shape[shape.index(-1)] = math.prod(shapes[0]) // known if known else 0
    shape = tuple(shape)
    if math.prod(shape) != math.prod(shapes[0]):
        raise ValueError(f"cannot reshape {shapes[0]} to {shape}")
    return shape, dtypes[0]


def _lower_reshape(ctx, v, o, coords):
    (a,) = o.args
    old = ctx.shapes[a]
    have = [c for c, n in zip(coords, ctx.shapes[v]) if n != 1]
    if [n for n in old if n != 1] == [n for n in ctx.shapes[v] if n != 1]:
        # Size-1 axes added or dropped only: the same coordinates, no arithmetic (so that a
        # reduced value read through it is still at its own row's index: check_row).
        it = iter(have)
        return ctx.at(a, tuple(ctx.zero if n == 1 else next(it) for n in old))
    flat = ctx.zero
    for c, s in zip(coords, contiguous_strides(ctx.shapes[v])):  # shapes[v]: -1 resolved
        flat = flat + c * s
    if a < ctx.n_in:
        # an input is row-contiguous: its reshape is the same buffer, read at the flat index
        # (affine in the coordinates, so the walk and the vector width see its strides)
        return ctx.load(a, flat)
    out, inner = [], 1
    for n in reversed(old):
        out.append(ctx.zero if n == 1 else (flat // inner) % n)
        inner *= n
    return ctx.at(a, tuple(reversed(out)))


def _infer_transpose(ctx, o, shapes, dtypes):
    axes = tuple(o.param("axes"))
    if sorted(axes) != list(range(len(shapes[0]))):
        raise ValueError(f"axes {axes} are not a permutation of {len(shapes[0])} axes")
    return tuple(shapes[0][a] for a in axes), dtypes[0]


def _lower_transpose(ctx, v, o, coords):
    axes = tuple(o.param("axes"))
    child = [ctx.zero] * len(axes)
    for k, a in enumerate(axes):
        child[a] = coords[k]
    return ctx.at(o.args[0], tuple(child))


def _infer_squeeze(ctx, o, shapes, dtypes):
    axes = _norm_axes(o.param("axes"), len(shapes[0]))
    if any(shapes[0][a] != 1 for a in axes):
        raise ValueError(f"cannot squeeze axes {axes} of {shapes[0]}")
    return tuple(n for k, n in enumerate(shapes[0]) if k not in axes), dtypes[0]


def _lower_squeeze(ctx, v, o, coords):
    axes = _norm_axes(o.param("axes"), len(ctx.shapes[o.args[0]]))
    it = iter(coords)
    child = tuple(ctx.zero if k in axes else next(it) for k in range(len(ctx.shapes[o.args[0]])))
    return ctx.at(o.args[0], child)


def _infer_expand_dims(ctx, o, shapes, dtypes):
    ndim = len(shapes[0]) + len(tuple(o.param("axes")))
    axes = _norm_axes(o.param("axes"), ndim)
    it = iter(shapes[0])
    return tuple(1 if k in axes else next(it) for k in range(ndim)), dtypes[0]


def _lower_expand_dims(ctx, v, o, coords):
    axes = _norm_axes(o.param("axes"), len(ctx.shapes[v]))
    return ctx.at(o.args[0], tuple(c for k, c in enumerate(coords) if k not in axes))


def _slice_params(o: Op, shape: tuple[int, ...]):
    # Python's slice semantics per axis (graph.primitives): MLX records a stop as written
    # (x[..., :-32] stops at -32; x[::-1] at -n - 1), so bounds are normalized as Python does,
    # from the slices the evaluation rules take (`slices`: a negative stride's negative start)
    strides = tuple(o.param("strides", (1,) * len(shape)))
    if 0 in strides:
        return tuple(o.param("start")), tuple(o.param("stop")), strides
    bounds = [s.indices(n) for s, n in zip(slices(o.param("start"), o.param("stop"), strides), shape)]
    return tuple(zip(*bounds)) if bounds else ((), (), ())


def _infer_slice(ctx, o, shapes, dtypes):
    start, stop, strides = _slice_params(o, shapes[0])
    out = []
    for b, e, s, n in zip(start, stop, strides, shapes[0]):
        if s == 0:
            raise ValueError("slice stride 0")
        out.append(max(0, -(-(e - b) // s)) if s > 0 else max(0, -(-(b - e) // -s)))
        if out[-1] and not (0 <= b < n and 0 <= b + (out[-1] - 1) * s < n):
            raise ValueError(f"slice {start}:{stop}:{strides} out of bounds of {shapes[0]}")
    return tuple(out), dtypes[0]


def _lower_slice(ctx, v, o, coords):
    start, _, strides = _slice_params(o, ctx.shapes[o.args[0]])
    child = tuple(ctx.zero if n == 1 and b == 0 else c * s + b
                  for c, b, s, n in zip(coords, start, strides, ctx.shapes[o.args[0]]))
    return ctx.at(o.args[0], child)


def _identity_infer(ctx, o, shapes, dtypes):
    return shapes[0], dtypes[0]


_register("Broadcast", _infer_broadcast, _lower_broadcast)
_register("Reshape", _infer_reshape, _lower_reshape)


def _infer_flatten(ctx, o, shapes, dtypes):
    shape = shapes[0]
    start, end = (a % len(shape) if shape else 0 for a in (o.param("start_axis"), o.param("end_axis")))
    return tuple(shape[:start]) + (math.prod(shape[start:end + 1]),) + tuple(shape[end + 1:]), dtypes[0]


def _infer_unflatten(ctx, o, shapes, dtypes):
    shape, axis = shapes[0], o.param("axis") % len(shapes[0])
    parts = list(o.param("shape"))
    if -1 in parts:
        known = math.prod(n for n in parts if n != -1)
        parts[parts.index(-1)] = shape[axis] // known if known else 0
    if math.prod(parts) != shape[axis]:
        raise ValueError(f"cannot unflatten axis {axis} of {shape} into {tuple(parts)}")
    return tuple(shape[:axis]) + tuple(parts) + tuple(shape[axis + 1:]), dtypes[0]


# Flatten and Unflatten (what mx.flatten / reshapes of one axis trace to) are reshapes: the same
# row-major index arithmetic.
_register("Flatten", _infer_flatten, _lower_reshape)
_register("Unflatten", _infer_unflatten, _lower_reshape)
_register("Transpose", _infer_transpose, _lower_transpose)
_register("Squeeze", _infer_squeeze, _lower_squeeze)
_register("ExpandDims", _infer_expand_dims, _lower_expand_dims)
_register("Slice", _infer_slice, _lower_slice)
_register(("Copy", "StopGradient"), _identity_infer, lambda ctx, v, o, c: ctx.at(o.args[0], c))


# -- gathers ----------------------------------------------------------------------------------

def _infer_gather_axis(ctx, o, shapes, dtypes):
    src, idx = shapes
    axis = o.param("axis") % len(src)
    if len(src) != len(idx) or any(a != b and b != 1 and a != 1
                                   for k, (a, b) in enumerate(zip(src, idx)) if k != axis):
        raise ValueError(f"indices {idx} do not fit source {src} along axis {axis}")
    if dtypes[1] not in _dtypes.INTEGER:
        raise ValueError(f"indices must be integers, got {dtypes[1]}")
    return idx, dtypes[0]


def _lower_gather_axis(ctx, v, o, coords):
    src, idx = o.args
    axis = o.param("axis") % len(ctx.shapes[src])
    j = ctx.at(idx, ctx.broadcast_coords(ctx.shapes[idx], ctx.shapes[v], coords))
    n = ctx.shapes[src][axis]
    if ctx.dtypes[idx] in _dtypes.SIGNED:  # negative indices count from the end, as in MLX
        j = K.alu(Ops.WHERE, K.alu(Ops.CMPLT, j, UOp.const(j.dtype, 0)),
                  K.alu(Ops.ADD, j, UOp.const(j.dtype, n)), j)
    j = j.cast(ctx.index_dtype)
    child = list(ctx.broadcast_coords(ctx.shapes[src], ctx.shapes[v], coords))
    child[axis] = j
    return ctx.at(src, tuple(child))


_register("GatherAxis", _infer_gather_axis, _lower_gather_axis)


def _gather_axes(o: Op, shape: tuple[int, ...]) -> tuple[int, ...]:
    return (o.param("axis") % len(shape),)


# -- reductions -------------------------------------------------------------------------------

# mlx::core::Reduce::ReduceType and ArgReduce::ReduceType orders (mlx/primitives.h)
_REDUCE_CODES = ("and", "or", "sum", "prod", "min", "max")
_ARG_CODES = ("argmin", "argmax")


def _reduce_kind(o: Op) -> str:
    kind = o.param("kind")
    if isinstance(kind, int):
        kind = (_ARG_CODES if o.primitive == "ArgReduce" else _REDUCE_CODES)[kind]
    return kind


def _reduced_shape(shape, axes):
    return tuple(1 if k in axes else n for k, n in enumerate(shape))


def _infer_reduce(ctx, o, shapes, dtypes):
    kind = _reduce_kind(o)
    if kind not in _REDUCE_CODES:
        raise ValueError(f"unknown reduction {kind!r}")
    axes = _norm_axes(o.param("axes"), len(shapes[0]))
    dt = dtypes[0]
    if kind in ("and", "or"):
        dt = "bool"
    elif kind in ("sum", "prod") and dt == "bool":
        dt = "int32"  # MLX sums booleans as int32
    return _reduced_shape(shapes[0], axes), dt


def accumulator_dtype(dtype: str) -> str:
    """Registers for a running reduction: float for half types, 32 bits for narrow integers and
    bool (SIMD shuffles move 32-bit values)."""
    if dtype in ("bool", "int8", "int16", "uint8", "uint16"):
        return "uint32" if dtype.startswith("u") else "int32"
    return compute_dtype(dtype)


def _reduce_node(ctx: _Lowering, v: int, o: Op) -> UOp:
    kind = _reduce_kind(o)
    x = ctx.at(o.args[0], ctx.dims)
    if kind in ("and", "or"):
        # the truth of each element of the value itself (kernel_ir.REDUCE_KINDS): a cast to an
        # integer first would make 0.5 false
        return UOp(Ops.REDUCE, "int32", (x,), kind)
    acc = accumulator_dtype(ctx.dtypes[v])
    if kind in ("sum", "prod") and x.dtype == "bool":
        x = x.cast("int32")
    return UOp(Ops.REDUCE, acc, (x.cast(acc),), kind)


class _Block(NamedTuple):
    """A block column sum: ``Reduce(sum, axes=(1,))`` of ``Reshape(value, [G, B, *rest])``,
    where ``value`` spans the row kernel's domain, its leading ``row_axes`` axes (the rows)
    cut into G blocks of ``rows`` = B consecutive rows and ``rest`` its reduced axes: the
    partial column sums a weight gradient's sum over tokens starts from (fusion/partials.py)."""

    value: int
    rows: int
    row_axes: int


def _block_sum(ctx: _Lowering, o: Op) -> _Block | None:
    if o.primitive != "Reduce" or _reduce_kind(o) != "sum":
        return None
    (a,) = o.args
    if a < ctx.n_in or ctx.region.ops[a - ctx.n_in].primitive != "Reshape":
        return None
    shape = ctx.shapes[a]
    if len(shape) < 2 or _norm_axes(o.param("axes"), len(shape)) != (1,):
        return None
    (src,) = ctx.region.ops[a - ctx.n_in].args
    old = ctx.shapes[src]
    G, B, rest = shape[0], shape[1], shape[2:]
    k = len(old) - len(rest)
    if k < 1 or old[k:] != rest or math.prod(old[:k]) != G * B:
        return None
    return _Block(src, B, k)


def _flat_row(ctx: _Lowering, row_axes: int) -> UOp:
    flat = ctx.zero
    for c, st in zip(ctx.dims[:row_axes], contiguous_strides(ctx.domain[:row_axes])):
        flat = flat + c * st
    return flat


def _lower_reduce(ctx, v, o, coords):
    if (block := ctx.blocks.get(v)) is not None:
        x = ctx.at(block.value, ctx.dims)
        acc = accumulator_dtype(ctx.dtypes[v])
        if x.dtype == "bool":
            x = x.cast("int32")
        return UOp(Ops.BLOCK_SUM, acc, (x.cast(acc),), block.rows).cast(ctx.compute(v))
    ctx.check_row(v, coords)
    r = _reduce_node(ctx, v, o)
    kind = _reduce_kind(o)
    if kind in ("and", "or"):
        return K.alu(Ops.CMPNE, r, UOp.const(r.dtype, 0))
    return r.cast(ctx.compute(v))


def _infer_arg_reduce(ctx, o, shapes, dtypes):
    kind = _reduce_kind(o)
    if kind not in _ARG_CODES:
        raise ValueError(f"unknown arg reduction {kind!r}")
    axis = o.param("axis") % len(shapes[0])
    return _reduced_shape(shapes[0], (axis,)), "uint32"


def _lower_arg_reduce(ctx, v, o, coords):
    ctx.check_row(v, coords)
    axis = o.param("axis") % len(ctx.shapes[o.args[0]])
    x = ctx.at(o.args[0], ctx.dims)
    x = x.cast(accumulator_dtype(x.dtype))
    return UOp(Ops.REDUCE, "uint32", (x, ctx.dims[axis].cast("uint32")), _reduce_kind(o))


def _last_axis(o: Op, shape) -> tuple[int, ...]:
    return _norm_axes(o.param("axes", (len(shape) - 1,)), len(shape))


def _infer_logsumexp(ctx, o, shapes, dtypes):
    if not _is_float(dtypes[0]):
        raise ValueError(f"needs a floating input, got {dtypes[0]}")
    return _reduced_shape(shapes[0], _last_axis(o, shapes[0])), dtypes[0]


def _row_max_sumexp(ctx, o) -> tuple[UOp, UOp]:
    x = ctx.at(o.args[0], ctx.dims)
    return UOp(Ops.REDUCE, x.dtype, (x,), "max"), UOp(Ops.REDUCE, x.dtype, (x,), "sumexp")


def _lower_logsumexp(ctx, v, o, coords):
    ctx.check_row(v, coords)
    m, s = _row_max_sumexp(ctx, o)
    inf = UOp.const(m.dtype, math.inf)
    # MLX returns the max itself when it is infinite (an all -inf row gives -inf, not NaN)
    return K.alu(Ops.WHERE, K.alu(Ops.CMPEQ, K.alu(Ops.ABS, m), inf), m,
                 K.alu(Ops.ADD, m, K.alu(Ops.LOG, s)))


def _infer_softmax(ctx, o, shapes, dtypes):
    if not _is_float(dtypes[0]):
        raise ValueError(f"needs a floating input, got {dtypes[0]}")
    return shapes[0], dtypes[0]


def _lower_softmax(ctx, v, o, coords):
    axes = _last_axis(o, ctx.shapes[v])
    ctx.check_row(v, tuple(ctx.zero if k in axes else c for k, c in enumerate(coords)))
    m, s = _row_max_sumexp(ctx, o)
    x = ctx.at(o.args[0], coords)
    # one division per row, then a multiply per element (MLX's softmax kernels do the same)
    inv = K.alu(Ops.DIV, UOp.const(s.dtype, 1.0), s)
    return K.alu(Ops.MUL, K.alu(Ops.EXP, K.alu(Ops.SUB, x, m)), inv)


_register("Reduce", _infer_reduce, _lower_reduce)
_register("ArgReduce", _infer_arg_reduce, _lower_arg_reduce)
_register("LogSumExp", _infer_logsumexp, _lower_logsumexp)
_register("Softmax", _infer_softmax, _lower_softmax)
_REDUCING.update({
    "Reduce": lambda o, shape: _norm_axes(o.param("axes"), len(shape)),
    "ArgReduce": lambda o, shape: (o.param("axis") % len(shape),),
    "LogSumExp": _last_axis,
    "Softmax": _last_axis,
})


# ---------------------------------------------------------------------------------------------
# outputs


def _output_coords(ctx: _Lowering, v: int) -> tuple[UOp, ...]:
    """Coordinates of output v over the domain: the domain's own (a full output) or the row's
    (one value per row); size-1 axes anywhere read coordinate 0."""
    shape, dom = ctx.shapes[v], ctx.domain
    if (block := ctx.blocks.get(v)) is not None:
        # [G, 1, *rest]: this row's block, and the row's element
        k = block.row_axes
        return (_flat_row(ctx, k) // block.rows, ctx.zero) + ctx.dims[k:]
    if shape == dom:
        return ctx.dims
    candidates = [range(len(dom))]
    if ctx.is_row:
        candidates.append([k for k in range(len(dom)) if k not in ctx.reduce_axes])
    have = [k for k, n in enumerate(shape) if n != 1]
    for axes in candidates:
        want = [k for k in axes if dom[k] != 1]
        if [shape[k] for k in have] == [dom[k] for k in want]:
            coords = [ctx.zero] * len(shape)
            for k_out, k_dom in zip(have, want):
                coords[k_out] = ctx.dims[k_dom]
            return tuple(coords)
    raise RegionError(f"output value {v} of shape {shape} is neither the domain {dom} nor one "
                      f"value per row of it")


def _emit_stores(ctx: _Lowering) -> list[UOp]:
    _, out_names = _names(ctx.region)
    stores = []
    for k, v in enumerate(ctx.region.outputs):
        coords = _output_coords(ctx, v)
        dtype = ctx.dtypes[v]
        param = UOp(Ops.PARAM, dtype, (),
                    K.Param(ctx.n_in + k, out_names[k], "output", ctx.shapes[v], dtype))
        value = ctx.at(v, coords)
        value = value.cast(dtype) if dtype != value.dtype else value
        index = ctx.zero
        for c, s in zip(coords, contiguous_strides(ctx.shapes[v])):
            index = index + c * s
        stores.append(UOp(Ops.STORE, "void", (param, index, value), Mem()))
    return stores


# ---------------------------------------------------------------------------------------------
# index spaces: merge domain axes, then express them through idx (pointwise) or row/col


class _Affine(NamedTuple):
    const: int
    coeffs: dict[UOp, int]  # index variable -> coefficient
    rest: tuple[UOp, ...]  # terms that are not affine (data-dependent, div/mod)


def _affine(u: UOp, atoms: frozenset[UOp] = frozenset()) -> _Affine:
    """``u`` as const + sum(coeff * var) + rest; ``atoms`` are treated as variables too."""
    if u in atoms:
        return _Affine(0, {u: 1}, ())
    if u.op is Ops.CONST and isinstance(u.arg, int) and not isinstance(u.arg, bool):
        return _Affine(u.arg, {}, ())
    if u.op is Ops.SPECIAL:
        return _Affine(0, {u: 1}, ())
    if u.op is Ops.ADD and u.dtype in _dtypes.INTEGER:
        a, b = _affine(u.src[0], atoms), _affine(u.src[1], atoms)
        coeffs = dict(a.coeffs)
        for var, c in b.coeffs.items():
            coeffs[var] = coeffs.get(var, 0) + c
        return _Affine(a.const + b.const, coeffs, a.rest + b.rest)
    if u.op is Ops.MUL and u.src[1].op is Ops.CONST and u.dtype in _dtypes.INTEGER:
        a, c = _affine(u.src[0], atoms), u.src[1].arg
        if not a.rest:
            return _Affine(a.const * c, {var: k * c for var, k in a.coeffs.items()}, ())
    return _Affine(0, {}, (u,))


def _collapse(dims: tuple[UOp, ...], classes: list[int], accesses: list[_Affine]):
    """Merge neighbouring axes of one class (outer/inner) wherever every affine access steps
    through them as one axis; returns groups of axis indices."""
    groups: list[list[int]] = []
    for k, d in enumerate(dims):
        if d.op is not Ops.SPECIAL:
            continue  # size-1 axis
        if groups and classes[groups[-1][-1]] == classes[k]:
            prev = dims[groups[-1][-1]]
            n = d.arg[1]
            if all(a.coeffs.get(prev, 0) == a.coeffs.get(d, 0) * n for a in accesses):
                groups[-1].append(k)
                continue
        groups.append([k])
    return groups


class _Space(NamedTuple):
    var_of_dim: dict[UOp, UOp]  # DIM special -> its expression over idx/row/col
    # (axes, group coordinate, idx/row/col variable, product of the variable's faster groups)
    group_vars: list[tuple[list[int], UOp, UOp, int]]
    lane_group: tuple[list[int], int] | None  # axes and size of the fastest element group

    @property
    def coords(self) -> frozenset[UOp]:
        return frozenset(coord for _, coord, _, _ in self.group_vars)

    @property
    def lane_coord(self) -> UOp | None:
        if self.lane_group is None:
            return None
        return next(coord for g, coord, _, _ in self.group_vars if g is self.lane_group[0])

    @property
    def row_coord(self) -> UOp | None:
        """The fastest-varying coordinate across rows (listed first among the row groups)."""
        return next((coord for _, coord, var, _ in self.group_vars if var.arg[0] == "row"), None)

    def group_coeffs(self, index: UOp) -> tuple[_Affine, dict[UOp, int]]:
        """An index's affine form and its coefficient on each group coordinate (a whole
        variable counts as sum(coord * inner))."""
        aff = _affine(index, self.coords)
        out: dict[UOp, int] = {}
        for _, coord, var, inner in self.group_vars:
            c = aff.coeffs.get(coord, 0)
            if coord is not var:
                c += aff.coeffs.get(var, 0) * inner
            out[coord] = c
        return aff, out


def _index_space(ctx: _Lowering, stores: list[UOp]) -> _Space:
    accesses = [_affine(u.src[1]) for s in stores for u in s.toposort
                if u.op in (Ops.LOAD, Ops.STORE)]
    n = len(ctx.dims)
    classes = [1 if k in ctx.reduce_axes else 0 for k in range(n)]
    groups = _collapse(ctx.dims, classes, accesses)
    if ctx.is_row:
        rows = math.prod(ctx.domain[k] for k in range(n) if classes[k] == 0)
        length = math.prod(ctx.domain[k] for k in range(n) if classes[k] == 1)
        spaces = {0: UOp(Ops.SPECIAL, ctx.index_dtype, (), ("row", rows)),
                  1: UOp(Ops.SPECIAL, ctx.index_dtype, (), ("col", length))}
    else:
        spaces = {0: UOp(Ops.SPECIAL, ctx.index_dtype, (), ("idx", math.prod(ctx.domain)))}
    var_of_dim: dict[UOp, UOp] = {}
    group_vars = []
    for cls, var in spaces.items():
        mine = [g for g in groups if classes[g[0]] == cls]
        inner = 1
        for g in reversed(mine):
            size = math.prod(ctx.domain[k] for k in g)
            coord = (var // inner) % size
            group_vars.append((g, coord, var, inner))
            sub = 1
            for k in reversed(g):
                var_of_dim[ctx.dims[k]] = (coord // sub) % ctx.domain[k]
                sub *= ctx.domain[k]
            inner *= size
    element_class = 1 if ctx.is_row else 0
    element_groups = [g for g in groups if classes[g[0]] == element_class]
    lane = (element_groups[-1], math.prod(ctx.domain[k] for k in element_groups[-1])) \
        if element_groups else None
    return _Space(var_of_dim, group_vars, lane)


def _rebuild_index(ctx: _Lowering, space: _Space, index: UOp, done: dict[UOp, UOp]) -> UOp:
    """An index over DIM axes rebuilt over the merged groups: one multiply-add per group."""
    aff = _affine(index)
    out = UOp.const(ctx.index_dtype, aff.const)
    by_var: dict[UOp, list[tuple[UOp, int, int]]] = {}
    for axes, coord, var, inner in space.group_vars:
        by_var.setdefault(var, []).append((coord, aff.coeffs.get(ctx.dims[axes[-1]], 0), inner))
    for var, terms in by_var.items():
        scale = terms[0][1] // terms[0][2]
        if all(c == scale * inner for _, c, inner in terms):
            out = out + var * scale  # walks the variable's groups contiguously: no div/mod
        else:
            for coord, c, _ in terms:
                out = out + coord * c
    for term in aff.rest:
        out = out + done[term]
    return out


def _map_nodes(stores: list[UOp], fn: Callable[[UOp, tuple[UOp, ...], dict], UOp | None]
               ) -> list[UOp]:
    """Rebuild the graph bottom-up; ``fn(original, new_src, done)`` may replace a node (it sees
    the original node, so lookups keyed by original nodes stay valid)."""
    root = UOp(Ops.KERNEL, "void", tuple(stores), None)
    done: dict[UOp, UOp] = {}
    for node in root.toposort:
        src = tuple(done[s] for s in node.src)
        if (new := fn(node, src, done)) is not None:
            done[node] = new
        elif src == node.src:
            done[node] = node
        elif node.op in K.GroupOp.Binary:
            done[node] = K.alu(node.op, *src, dtype=node.dtype)
        else:
            done[node] = UOp(node.op, node.dtype, src, node.arg)
    return list(done[root].src)


def _lower_index_space(ctx: _Lowering, stores: list[UOp], space: _Space) -> list[UOp]:
    def fn(node, src, done):
        if node in space.var_of_dim:
            return space.var_of_dim[node]
        if node.op in (Ops.LOAD, Ops.STORE):
            new_src = list(src)
            new_src[1] = _rebuild_index(ctx, space, node.src[1], done)
            return UOp(node.op, node.dtype, tuple(new_src), node.arg)
        return None

    return _map_nodes(stores, fn)


# ---------------------------------------------------------------------------------------------
# what a schedule can do to the region: vector accesses, passes over the row, what stays on chip


def lane_access(u: UOp, V: int, space: _Space) -> Access:
    """How a per-element LOAD/STORE behaves across V lanes starting at an element index that is
    a multiple of V."""
    if V == 1 or space.lane_group is None:
        return Access.SCALAR
    axes, size = space.lane_group
    if size % V:
        return Access.SCALAR
    aff, coeffs = space.group_coeffs(u.src[1])
    if any(t.per_element for t in aff.rest):
        return Access.SCALAR
    c = coeffs.get(space.lane_coord, 0)
    if c == 0:
        return Access.UNIFORM
    if c != 1 or aff.rest or u.src[0].arg.size < 8:
        # Metal passes buffers of fewer than 8 elements in the constant address space; no
        # vector loads there (and no use for them).
        return Access.SCALAR
    others = [k for coord, k in coeffs.items() if coord is not space.lane_coord]
    if aff.const % V or any(k % V for k in others):
        return Access.SCALAR  # start not aligned to the vector
    return Access.VECTOR


def vector_fits(a: "Analysis", V: int, max_bytes: int, wide_small: bool = False) -> bool:
    """Whether some per-element access of the region moves ``V`` lanes as one vector, each such
    access within ``max_bytes`` (twice that for an operand smaller than a pointwise domain, read
    from cache, with ``wide_small``)."""
    if V == 1:
        return True
    if a.space.lane_group is None or (a.is_row and a.length % V):
        return False
    domain = 0 if a.is_row else a.length
    vec = [u for u in a.elem if lane_access(u, V, a.space) is Access.VECTOR]

    def limit(u: UOp) -> int:
        return 2 * max_bytes if wide_small and u.src[0].arg.size < domain else max_bytes

    return bool(vec) and all(V * _dtypes.itemsize(u.src[0].dtype) <= limit(u) for u in vec)


def pow2ceil(n: int) -> int:
    return 1 << max(0, (n - 1).bit_length())


def _pass_roots(stores: list[UOp]) -> list[tuple[int, UOp]]:
    """(pass, value) for what each pass over the row computes: its reductions' arguments, and
    for the last pass the per-element stores."""
    root = UOp(Ops.KERNEL, "void", tuple(stores), None)
    reduces = [u for u in root.toposort if u.op is Ops.REDUCE]
    final = max((r.reduce_pass for r in reduces), default=-1) + 1
    roots: list[tuple[int, UOp]] = [(r.reduce_pass, s) for r in reduces for s in r.src]
    roots += [(final, s) for st in stores if st.src[2].per_element or st.src[1].per_element
              for s in st.src[1:]]
    return roots


def _pass_values(stores: list[UOp]) -> dict[UOp, set[int]]:
    """Per-element values and the passes over the row that evaluate them. A KEEP's value is
    evaluated by the first pass that reads it; later passes read its registers."""
    roots = _pass_roots(stores)

    def walk(stop: Callable[[UOp, int], bool]) -> dict[UOp, set[int]]:
        out: dict[UOp, set[int]] = {}
        for p, r in roots:
            stack, seen = [r], set()
            while stack:
                u = stack.pop()
                if u in seen or not u.per_element:
                    continue
                seen.add(u)
                out.setdefault(u, set()).add(p)
                if not stop(u, p):
                    stack.extend(u.src)
        return out

    first = {u: min(p) for u, p in walk(lambda u, p: False).items() if u.op is Ops.KEEP}
    return walk(lambda u, p: u.op is Ops.KEEP and first[u] < p)


def pass_loads(stores: list[UOp]) -> dict[UOp, set[int]]:
    """Per-element LOADs and the passes over the row that read them."""
    return {u: p for u, p in _pass_values(stores).items() if u.op is Ops.LOAD}


def multi_pass_loads(stores: list[UOp]) -> dict[UOp, set[int]]:
    """Per-element LOADs several passes over the row read: what may stay on chip."""
    return {u: p for u, p in pass_loads(stores).items() if len(p) > 1}


def passes(stores: list[UOp]) -> int:
    """Passes over the row: one per reduction stage, and one more for per-element stores."""
    root = UOp(Ops.KERNEL, "void", tuple(stores), None)
    reduces = [u for u in root.toposort if u.op is Ops.REDUCE]
    n = max((r.reduce_pass for r in reduces), default=-1) + 1
    if any(st.src[2].per_element or st.src[1].per_element for st in stores):
        n += 1
    return n


def _loads_under(u: UOp) -> set[UOp]:
    return {x for x in u.toposort if x.op is Ops.LOAD and x.per_element}


# Online softmax: in a streamed row, sum(exp(v - max(v))) becomes one pass with a running max
# ("sumexp" has exactly this value).
_ONLINE = K.PatternMatcher(((
    UPat(Ops.REDUCE, arg="sum", name="r", src=(UPat(Ops.EXP, src=(UPat(Ops.SUB, src=(
        UPat(name="v"), UPat(Ops.REDUCE, arg="max", src=(UPat(name="v"),)))),)),)),
    lambda r, v: UOp(Ops.REDUCE, r.dtype, (v,), "sumexp")),))


def _expand_sumexp(r: UOp) -> UOp:
    # sum(exp(v - max(v))): the two-pass form of "sumexp", for rows resident in registers
    (v,) = r.src
    m = UOp(Ops.REDUCE, v.dtype, (v,), "max")
    return UOp(Ops.REDUCE, r.dtype, (K.alu(Ops.EXP, K.alu(Ops.SUB, v, m)),), "sum")


# Values costly enough to keep in registers rather than compute again in a later pass: a
# transcendental (a multi-function-unit op plus range reduction), or an IEEE division. A
# subtraction or a widening cast is one instruction: not worth the registers.
_COSTLY = K.GroupOp.FloatUnary | {Ops.DIV, Ops.POW, Ops.ATAN2, Ops.LOGADDEXP, Ops.REM}


def _costly(u: UOp) -> bool:
    return any(x.op in _COSTLY for x in u.toposort if x.per_element and x.op is not Ops.LOAD)


def _keep_candidates(stores: list[UOp]) -> list[UOp]:
    """Computed per-element values a later pass reads from an earlier one: for each pass, the
    shared values nearest its own work (not those only feeding other shared values)."""
    values = _pass_values(stores)
    roots = _pass_roots(stores)
    found: list[UOp] = []
    for q in sorted({p for p, _ in roots}):
        earlier = {u for u, p in values.items() if q in p and min(p) < q}
        needed = {r for p, r in roots if p == q and r in earlier}
        for u, p in values.items():
            if q in p and u not in earlier:
                needed |= {s for s in u.src if s in earlier}
        found += [u for u in needed if u not in found]
    order = {u: i for i, u in enumerate(UOp(Ops.KERNEL, "void", tuple(stores), None).toposort)}
    return sorted((u for u in found if u.op not in (Ops.LOAD, Ops.KEEP)
                   and not (u.op is Ops.CAST and u.src[0].op is Ops.LOAD) and _costly(u)),
                  key=order.__getitem__)


def _with_keeps(stores: list[UOp], kept: set[UOp]) -> list[UOp]:
    def fn(node: UOp, src: tuple[UOp, ...], done) -> UOp | None:
        if node not in kept:
            return None
        inner = node if src == node.src else (
            K.alu(node.op, *src, dtype=node.dtype) if node.op in K.GroupOp.Binary
            else UOp(node.op, node.dtype, src, node.arg))
        return UOp(Ops.KEEP, node.dtype, (inner,))

    return _map_nodes(stores, fn)


def _peak_registers(stores: list[UOp], resident: set[UOp], regs: Callable[[UOp], int]) -> int:
    """The most registers held between two passes by resident loads and kept values."""
    live: dict[int, int] = {}
    for u, p in _pass_values(stores).items():
        if len(p) > 1 and (u.op is Ops.KEEP or u in resident):
            for b in range(min(p), max(p)):
                live[b] = live.get(b, 0) + regs(u)
    return max(live.values(), default=0)


def held_registers(stores: list[UOp], resident: set[UOp], regs: Callable[[UOp], int]) -> int:
    """Registers of every resident load and kept value together: the register arrays a thread
    declares, whether or not their passes overlap (NVRTC keeps them all)."""
    root = UOp(Ops.KERNEL, "void", tuple(stores), None)
    return sum(regs(u) for u in root.toposort if u.op is Ops.KEEP or u in resident)


def row_independent(u: UOp) -> bool:
    """A per-element load whose index does not depend on the row (a norm's weight)."""
    return not any(x.op is Ops.SPECIAL and x.arg[0] == "row" for x in u.src[1].toposort)


def write_pass_loads(stores: list[UOp]) -> list[UOp]:
    """Loads of the row (not a weight every row shares) that only the write pass reads, in
    parameter order: what a row kernel holding its rows in registers may load during its first
    pass instead (their latency then overlaps the row's own loads rather than following the
    reductions' barriers)."""
    if not any(st.src[2].per_element or st.src[1].per_element for st in stores):
        return []  # no write pass
    last = passes(stores) - 1
    if last == 0:
        return []  # one pass: nothing to load early
    return sorted((u for u, p in pass_loads(stores).items() if p == {last}
                   and not row_independent(u)), key=lambda u: u.src[0].arg.slot)


def _prefetched(stores: list[UOp], resident: set[UOp], regs: Callable[[UOp], int],
                budget: int) -> set[UOp]:
    """`write_pass_loads` to load in the first pass, while they, the resident loads and kept
    values fit ``budget`` registers."""
    held = held_registers(stores, resident, regs)
    chosen: set[UOp] = set()
    for u in write_pass_loads(stores):
        if u not in resident and held + regs(u) <= budget:
            chosen.add(u)
            held += regs(u)
    return chosen


def _keep_computed(stores: list[UOp], resident: set[UOp], regs: Callable[[UOp], int],
                   budget: int) -> list[UOp]:
    """Keep costly computed values in registers between passes (KEEP) while resident loads and
    kept values fit ``budget`` registers at every pass boundary (the compiler does not always
    find this itself: not through CUDA's inline-asm bfloat16 conversion, cuda_bf16.hpp)."""
    kept: set[UOp] = set()
    for u in _keep_candidates(stores):
        trial = _with_keeps(stores, kept | {u})
        if _peak_registers(trial, resident, regs) <= budget:
            kept.add(u)
    return _with_keeps(stores, kept) if kept else stores


# max(v - max(v)) is max(v) - max(v): 0 when the max is finite, NaN otherwise. max propagates
# NaN (an infinite max gives inf - inf somewhere), and a difference of floats rounds to 0 only
# when they are equal, so every other v - max(v) is negative. LogSumExp(x - max(x)), how MLX
# decomposes cross-entropy, then needs no pass of its own: 3 passes over the row become 2.
_ALGEBRA = K.PatternMatcher(((
    UPat(Ops.REDUCE, arg="max", src=(UPat(Ops.SUB, src=(
        UPat(name="v"), UPat(Ops.REDUCE, arg="max", name="m", src=(UPat(name="v"),)))),)),
    lambda v, m: K.alu(Ops.SUB, m, m) if _is_float(m.dtype) else None),))

# sumexp(v - max v) is sumexp(v): v - max v - max(v - max v) is v - max v when the max is finite,
# and both are NaN otherwise. On a streamed row the statistic and the max are then one online
# pass over memory instead of two (MLX's cross-entropy, logsumexp(x - max x), over long rows).
# Rows resident in registers keep the two passes over registers, cheaper than the online
# rescaling (benchmarks/results/forward_online_h200_session9.json), and take the simpler
# exponent.
_SHIFTED_SUMEXP = K.PatternMatcher(((
    UPat(Ops.REDUCE, arg="sumexp", name="r", src=(UPat(Ops.SUB, src=(
        UPat(name="v"), UPat(Ops.REDUCE, arg="max", src=(UPat(name="v"),)))),)),
    lambda r, v: UOp(Ops.REDUCE, r.dtype, (v,), "sumexp")),))


def _sign_bound(u: UOp, want: int, depth: int = 8) -> bool:
    """Whether ``u`` is provably <= 0 (``want`` -1) or >= 0 (``want`` 1), or NaN."""
    if depth == 0 or not _is_float(u.dtype):
        return False
    op, src = u.op, u.src
    if op is Ops.CONST:
        return isinstance(u.arg, (int, float)) and (u.arg * want >= 0 or u.arg != u.arg)
    if op is Ops.SUB:
        a, b = src
        if a is b:
            return True  # 0, or NaN
        if want < 0 and b.op is Ops.REDUCE and b.arg == "max" and b.src[0] is a:
            return True  # v - max(v): the row's max is no smaller than any of its elements
        return _sign_bound(a, want, depth - 1) and _sign_bound(b, -want, depth - 1)
    if op is Ops.ADD:
        return all(_sign_bound(x, want, depth - 1) for x in src)
    if op in (Ops.MUL, Ops.DIV):
        a, b = src
        return ((_sign_bound(a, want, depth - 1) and _sign_bound(b, 1, depth - 1))
                or (_sign_bound(a, -want, depth - 1) and _sign_bound(b, -1, depth - 1)))
    if op is Ops.NEG:
        return _sign_bound(src[0], -want, depth - 1)
    if op is Ops.WHERE:
        return all(_sign_bound(x, want, depth - 1) for x in src[1:])
    if op is Ops.KEEP or (op is Ops.CAST and _is_float(src[0].dtype)):
        return _sign_bound(src[0], want, depth - 1)
    if want > 0:
        return op in (Ops.ABS, Ops.SQUARE, Ops.EXP, Ops.EXP_SHIFTED, Ops.SQRT) or (
            op is Ops.MAX and any(_sign_bound(x, 1, depth - 1) for x in src))
    return op is Ops.MIN and any(_sign_bound(x, -1, depth - 1) for x in src)


# exp of a value that cannot exceed 0 (x - max(x), a softmax's or logsumexp's exponent) is the
# dialect's fast exponential, as in MLX's own softmax and logsumexp kernels: its error is a few
# ulp near 0 and grows only where the result is tiny.
_FAST_EXP = K.PatternMatcher(((
    UPat(Ops.EXP, name="e"),
    lambda e: UOp(Ops.EXP_SHIFTED, e.dtype, e.src) if _sign_bound(e.src[0], -1) else None),))


def rewrite_reduces(stores: list[UOp], resident: set[UOp]) -> list[UOp]:
    """The reductions in the form that suits where their loads are: in registers, a softmax's
    sum is two passes over them; streamed, one online pass with the max."""
    def fix(node: UOp) -> UOp | None:
        if node.op is not Ops.REDUCE:
            return None
        if node.arg == "sumexp" and _loads_under(node.src[0]) <= resident:
            # its loads are in registers: the extra pass is free (and exp(x - max x), not
            # exp((x - m) - (m - m)), one subtraction per element less)
            return _expand_sumexp(_SHIFTED_SUMEXP.rewrite(node) or node)
        if node.arg == "sumexp":
            return _SHIFTED_SUMEXP.rewrite(node)  # streamed: one pass with the max
        if node.arg == "sum" and not _loads_under(node) <= resident:
            return _ONLINE.rewrite(node)  # streamed: save a pass over memory
        return None

    pm = K.PatternMatcher(((UPat(Ops.REDUCE, name="node"), fix),)) + _ALGEBRA
    root = K.graph_rewrite(UOp(Ops.KERNEL, "void", tuple(stores), None), pm)
    return list(root.src)


def _kernel_name(name: str) -> str:
    stem = re.sub(r"[^A-Za-z0-9]", "", name) or "region"
    return stem[:40]


# ---------------------------------------------------------------------------------------------
# the region's analysis: everything about it no schedule changes


@dataclass(frozen=True, eq=False)
class Analysis:
    """A region lowered to stores over its index space, before any schedule: what the schedule
    rules (`mlxtriton.codegen.schedule`) read and `build` starts from."""

    ctx: _Lowering
    stores: tuple[UOp, ...]  # index space lowered, reductions not yet rewritten
    space: _Space
    elem: tuple[UOp, ...]  # per-element LOADs and STOREs
    rows: int  # pointwise: 1
    length: int  # elements per row; pointwise: the whole domain
    column_walk: bool  # a row kernel whose rows are neighbours in memory

    @property
    def region(self) -> Region:
        return self.ctx.region

    @property
    def is_row(self) -> bool:
        return self.ctx.is_row

    @property
    def blocks(self) -> int:
        """Block column sums the row kernel writes."""
        return len(self.ctx.blocks)

    @property
    def row_itemsize(self) -> int:
        """The widest element a row kernel loads per element (4 when it loads none)."""
        return max((_dtypes.itemsize(u.dtype) for u in self.elem if u.op is Ops.LOAD), default=4)

    @property
    def itemsize(self) -> int:
        """The element size the chip's numbers are read for: of the inputs, or for a pointwise
        kernel of its full-size operands and outputs."""
        inputs = self.region.inputs
        if not self.is_row:
            full = math.prod(self.ctx.domain)
            inputs = [*(i for i in inputs if math.prod(i.shape) >= full),
                      *(Input((), self.ctx.dtypes[v]) for v in self.region.outputs)]
        return max((_dtypes.itemsize(i.dtype) for i in inputs), default=4)

    @property
    def writes_rows(self) -> bool:
        """Whether the kernel stores per element (not only one value per row)."""
        return any(u.op is Ops.STORE for u in self.elem)

    def reads_row_vector(self) -> bool:
        """Whether a float load walks along the row but is the same for every row: a norm's
        weight or bias (not an integer range such as cross-entropy's one-hot column index)."""
        space = self.space
        if space.row_coord is None or space.lane_coord is None:
            return False
        for u in self.elem:
            if u.op is not Ops.LOAD or not _is_float(u.dtype):
                continue
            _, coeffs = space.group_coeffs(u.src[1])
            if coeffs.get(space.lane_coord, 0) and not coeffs.get(space.row_coord, 0):
                return True
        return False

    def multi_pass_inputs(self) -> tuple[str, ...]:
        """Inputs several passes over the row read before any schedule's rewrite: those a
        schedule may hold on chip (a rewrite may leave fewer passes)."""
        return tuple(sorted({u.src[0].arg.name for u in multi_pass_loads(list(self.stores))}))


def _is_column_walk(elem: tuple[UOp, ...], space: _Space) -> bool:
    """True when per-element accesses stride along the row but are unit-stride across rows.

    An access the same for every row (a vector indexed by the reduced axis, such as a per-row
    scale of a weight gradient) is read by all of a SIMD-group's threads at once: it does not
    decide the walk."""
    if space.row_coord is None or space.lane_coord is None:
        return False
    saw_unit_row = False
    for u in elem:
        _, coeffs = space.group_coeffs(u.src[1])
        across = any(k for coord, k in coeffs.items() if coord is not space.lane_coord)
        if coeffs.get(space.lane_coord, 0) == 1 and across:
            return False
        saw_unit_row |= coeffs.get(space.row_coord, 0) == 1
    return saw_unit_row


@functools.lru_cache(maxsize=512)
def analyse(region: Region) -> Analysis:
    """Lower a region to stores over its index space, before any schedule (cached: regions are
    values).

    Raises:
        RegionError: the region cannot be one kernel (the message names the op and why).
    """
    ctx = _Lowering(region)
    stores = list(K.graph_rewrite(UOp(Ops.KERNEL, "void", tuple(_emit_stores(ctx)), None),
                                  _ALGEBRA).src)
    space = _index_space(ctx, stores)
    stores = _lower_index_space(ctx, stores, space)
    # group coordinates were rebuilt; the per-element accesses of the new graph
    elem = tuple(u for s in stores for u in UOp(Ops.KERNEL, "void", (s,), None).toposort
                 if u.op in (Ops.LOAD, Ops.STORE) and (u.per_element or u.src[1].per_element))
    if ctx.is_row:
        R = math.prod(n for k, n in enumerate(ctx.domain) if k not in ctx.reduce_axes)
        L = math.prod(n for k, n in enumerate(ctx.domain) if k in ctx.reduce_axes)
    else:
        R, L = 1, math.prod(ctx.domain)
    return Analysis(ctx, tuple(stores), space, elem, R, L,
                    ctx.is_row and _is_column_walk(elem, space))


# ---------------------------------------------------------------------------------------------
# build: a region lowered under a given schedule


class ScheduleError(ValueError):
    """A schedule that does not fit the region it was given for (the message says why)."""


def _check(a: Analysis, s: Any) -> None:
    """Raise `ScheduleError` where ``s`` cannot lower ``a``'s region at all."""
    kind = "row" if a.is_row else "pointwise"

    def fail(why: str) -> None:
        raise ScheduleError(f"schedule for {a.region.name} ({kind}, {a.rows} x {a.length}): {why}")

    if s.kind != kind:
        fail(f"a {s.kind} schedule for a {kind} kernel")
    V = s.vector_width
    if V < 1 or V & (V - 1):
        fail(f"vector width {V} is not a power of two")
    if a.length % V:
        fail(f"vector width {V} does not divide {'rows of ' * a.is_row}{a.length}")
    if not a.is_row:
        if s.threadgroup_size < 1:
            fail("a pointwise kernel needs a threadgroup size")
        if s.launch_bound not in (0, s.threadgroup_size):
            fail(f"launch bound {s.launch_bound} is not the threadgroup ({s.threadgroup_size})")
        return
    T, G = s.threads_per_row, s.rows_per_group
    if T < 1 or G < 1:
        fail(f"{T} threads per row, {G} rows per threadgroup")
    if s.walk not in ("row", "interleaved"):
        fail(f"unknown walk {s.walk!r} (row, interleaved)")
    if s.walk == "interleaved" and (V != 1 or a.blocks):
        fail("an interleaved walk reads one element per lane and writes no block sums")
    if a.blocks and (G != 1 or T < s.simd_width):
        fail("a row kernel with block sums takes one row per threadgroup in whole SIMD-groups")
    if s.block_sums_shared and not a.blocks:
        fail("block sums in threadgroup memory, but the region writes none")
    if s.launch_bound not in (0, T * G):
        fail(f"launch bound {s.launch_bound} is not the threadgroup ({T * G})")
    if s.unroll < 1:
        fail(f"unroll {s.unroll}")
    names = {i for i in _names(a.region)[0]}
    for n in (*s.registers, *s.staged):
        if n not in names:
            fail(f"{n!r} is not an input (inputs: {', '.join(sorted(names))})")
    if set(s.registers) & set(s.staged):
        fail(f"{sorted(set(s.registers) & set(s.staged))} both in registers and staged")


def build(region: Region, schedule: Any) -> UOp:
    """Lower a region to one KERNEL node under ``schedule``: index space, loads, expressions,
    stores. Every choice comes from the schedule (`mlxtriton.codegen.schedule`); this only
    lowers.

    Args:
        region: the fused region.
        schedule: a `mlxtriton.codegen.schedule.Schedule` for it, e.g. ``schedule.default(region,
            target)`` or one of ``schedule.candidates(region, target)``.

    Returns:
        The KERNEL UOp; ``kernel.arg`` is its `BuiltSchedule`, which answers every question about
        the kernel (passes, what stays on chip, threads).

    Raises:
        RegionError: the region cannot be one kernel (the message names the op and why).
        ScheduleError: the schedule does not fit the region.

    Example:
        >>>         >>> from mlxtriton.codegen.region import RegionBuilder
        >>> from mlxtriton.codegen.schedule import default
        >>> b = RegionBuilder("softmax")
        >>> region = b.build([b.op("Softmax", b.input((64, 1000), "float32", "x"))])
        >>> build(region, default(region, hw.target("h200"))).arg.kind
        'row'
    """
    a = analyse(region)
    _check(a, schedule)
    ctx, space = a.ctx, a.space
    R, L, V = a.rows, a.length, schedule.vector_width
    if a.is_row:
        T, G = schedule.threads_per_row, schedule.rows_per_group
        C = -(-(L // V) // T)
    else:
        T, G, C = 1, 1, 1
    interleaved = schedule.walk == "interleaved"

    def chunk_regs(u: UOp) -> int:
        return -(-C * V * _dtypes.itemsize(u.dtype) // 4)

    def named(loads, names) -> set[UOp]:
        return {u for u in loads if u.src[0].arg.name in names}

    stores = list(a.stores)
    held = set(schedule.registers) if a.is_row else set()
    stores = rewrite_reduces(stores, named(multi_pass_loads(stores), held))
    stores = list(K.graph_rewrite(UOp(Ops.KERNEL, "void", tuple(stores), None), _FAST_EXP).src)
    resident = named(multi_pass_loads(stores), held)
    if a.is_row and schedule.kept_registers:
        stores = _keep_computed(stores, resident, chunk_regs, schedule.kept_registers)
        resident = named(multi_pass_loads(stores), held)
    streamed = set(multi_pass_loads(stores)) - resident
    staged = named(streamed, set(schedule.staged)) if a.is_row and not interleaved else set()
    streamed -= staged
    resident |= staged
    prefetched = (_prefetched(stores, resident, chunk_regs, schedule.kept_registers)
                  if (schedule.prefetch and a.is_row and resident and not staged and not streamed
                      and not interleaved and not a.blocks) else set())

    def mark(node: UOp, src: tuple[UOp, ...], done) -> UOp | None:
        if node.op not in (Ops.LOAD, Ops.STORE):
            return None
        if not (node.per_element or node.src[1].per_element):
            return UOp(node.op, node.dtype, src, Mem(Access.HOISTED))
        return UOp(node.op, node.dtype, src, Mem(lane_access(node, V, space),
                                                 node in resident or node in prefetched))

    marked = UOp(Ops.KERNEL, "void", tuple(_map_nodes(stores, mark)), None)
    names = lambda loads: tuple(sorted({u.src[0].arg.name for u in loads}))  # noqa: E731
    on_chip = (("threadgroup" if staged == resident else "registers") if resident
               else ("stream" if streamed else "none"))
    common = dict(name=_kernel_name(region.name), vector_width=V, simd_width=schedule.simd_width,
                  index_dtype=ctx.index_dtype, launch_bound=schedule.launch_bound,
                  launch_min_groups=schedule.launch_min_groups, unroll=schedule.unroll,
                  online_chunked=schedule.online_chunked, hoist_row_loads=schedule.hoist_row_loads,
                  hoist_block_loads=schedule.hoist_block_loads)
    if a.is_row:
        sched = K.BuiltSchedule(
            kind="row", elements=R * L, threadgroup_size=T * G, rows=R, row_length=L,
            threads_per_row=T, rows_per_group=G, chunks=C, interleaved=interleaved,
            passes=passes(list(marked.src)), on_chip=on_chip, resident=names(resident),
            staged=names(staged), streamed=names(streamed), prefetched=names(prefetched),
            kept=sum(u.op is Ops.KEEP for u in marked.toposort),
            rows_per_block=ctx.rows_per_block, block_sums_shared=schedule.block_sums_shared,
            **common)
    else:
        sched = K.BuiltSchedule(kind="pointwise", elements=L,
                                threadgroup_size=schedule.threadgroup_size, **common)
    if sched.grid > _INT32_LIMIT:
        raise RegionError(f"{sched.grid} threads exceed MLX's int grid; split the region")
    # inputs no store depends on stay parameters of the kernel (MLX passes every input)
    reached = {u for u in marked.toposort if u.op is Ops.PARAM}
    unused = tuple(p for p in ctx.in_params if p not in reached)
    return UOp(Ops.KERNEL, "void", marked.src + unused, sched)
