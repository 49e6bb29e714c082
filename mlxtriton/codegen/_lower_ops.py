"""Codegen layer: the primitive table and the lowering of a region's ops at coordinates.

Every value is evaluated *at coordinates* (index expressions over the domain's axes), so
transposes, broadcasts and slices are index arithmetic, never copies. Each MLX primitive has one
rule here (shape/dtype inference and evaluation at coordinates); `emit_stores` writes a region's
outputs. May import the graph layer's dtypes and the codegen IR.
"""

from __future__ import annotations

import math
import re
from typing import Callable, NamedTuple

from mlxtriton.codegen import kernel_ir as K
from mlxtriton.codegen.kernel_ir import Mem, Ops, UOp
from mlxtriton.codegen.region import Op, Region, contiguous_strides
from mlxtriton.graph import dtypes as _dtypes
from mlxtriton.graph._shared_rules import broadcast_shape, slices


class RegionError(ValueError):
    """The region cannot become one kernel; the message names the op and why."""


INT32_LIMIT = 2**31 - 1


def compute_dtype(dtype: str) -> str:
    """The register type a value of ``dtype`` is computed in: half types widen to float32."""
    return "float32" if dtype in ("float16", "bfloat16") else dtype


def is_float(dtype: str) -> bool:
    """Whether a dtype is a floating one."""
    return dtype in _dtypes.FLOATING


# ---------------------------------------------------------------------------------------------
# lowering state


class Lowering:
    """A region's values: their shapes and dtypes, its domain and reduced axes, and each value
    evaluated at coordinates (`at`), memoised."""

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
        self.index_dtype = "int64" if max(sizes) > INT32_LIMIT else "int32"
        self.zero = UOp.const(self.index_dtype, 0)
        self.dims = tuple(
            self.zero if n == 1 else UOp(Ops.SPECIAL, self.index_dtype, (), (f"d{k}", n))
            for k, n in enumerate(self.domain))
        self.memo: dict[tuple[int, tuple[UOp, ...]], UOp] = {}
        self.in_params = [
            UOp(Ops.PARAM, i.dtype, (), K.Param(k, n, "input", i.shape, i.dtype))
            for k, (i, n) in enumerate(zip(region.inputs, param_names(region)[0]))]

    # the domain: the shape every value is evaluated over, and the reduced axes
    def _find_domain(self) -> None:
        found: dict[tuple[tuple[int, ...], tuple[int, ...]], int] = {}
        self.blocks: dict[int, _Block] = {}
        for k, o in enumerate(self.region.ops):
            if (block := _block_sum(self, o)) is not None:
                self.blocks[self.n_in + k] = block
                continue
            if o.primitive in REDUCING:
                v = self.n_in + k
                shape = self.shapes[o.args[0]]
                found.setdefault((shape, REDUCING[o.primitive](o, shape)), v)
        domains = {shape for shape, _ in found}
        for v, b in list(self.blocks.items()):
            if found and self.shapes[b.value] not in domains:
                # a sum over the middle axis of a reshape of something other than the rows of
                # the region's other reductions: a column reduction's first level
                # (fusion/split.py), not a block sum
                del self.blocks[v]
                o = self.region.ops[v - self.n_in]
                shape = self.shapes[o.args[0]]
                found.setdefault((shape, REDUCING[o.primitive](o, shape)), v)
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
                node = RULES[o.primitive].lower(self, v, o, coords)
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


def param_names(region: Region) -> tuple[list[str], list[str]]:
    """The kernel's input and output parameter names: the region's where usable, else in0.., out0..."""
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


RULES: dict[str, _Rule] = {}
# primitives that reduce: name -> (op, input shape) -> normalized reduced axes
REDUCING: dict[str, Callable[[Op, tuple[int, ...]], tuple[int, ...]]] = {}


def _rule(o: Op, v: int) -> _Rule:
    try:
        return RULES[o.primitive]
    except KeyError:
        raise RegionError(f"op {v} uses primitive {o.primitive!r}, which codegen does not "
                          f"support (supported: {', '.join(sorted(RULES))})") from None


def _register(names: tuple[str, ...] | str, infer, lower) -> None:
    for name in (names,) if isinstance(names, str) else names:
        if name in RULES:
            raise ValueError(f"codegen rule for {name} registered twice")
        RULES[name] = _Rule(infer, lower)


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
        if kind == "float" and not is_float(dt):
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
        if kind == "float" and not is_float(dt):
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
        if op in (Ops.FLOOR, Ops.CEIL, Ops.ROUND) and not is_float(args[0].dtype):
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
    if o.param("equal_nan", False) and is_float(a.dtype):  # NaN == NaN when asked
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
    if is_float(a.dtype):
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


def _reduce_node(ctx: Lowering, v: int, o: Op) -> UOp:
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


def _block_sum(ctx: Lowering, o: Op) -> _Block | None:
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


def _flat_row(ctx: Lowering, row_axes: int) -> UOp:
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
    if not is_float(dtypes[0]):
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
    if not is_float(dtypes[0]):
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
REDUCING.update({
    "Reduce": lambda o, shape: _norm_axes(o.param("axes"), len(shape)),
    "ArgReduce": lambda o, shape: (o.param("axis") % len(shape),),
    "LogSumExp": _last_axis,
    "Softmax": _last_axis,
})


# ---------------------------------------------------------------------------------------------
# outputs


def _output_coords(ctx: Lowering, v: int) -> tuple[UOp, ...]:
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


def emit_stores(ctx: Lowering) -> list[UOp]:
    _, out_names = param_names(ctx.region)
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
