"""Codegen layer: the kernel IR, one small hash-consed node type ``UOp(op, dtype, src, arg)``.

A KERNEL node describes one generated kernel: its index space (SPECIAL index variables), loads
with their index arithmetic, the elementwise expression DAG, reductions, stores, and its BuiltSchedule.
May import the graph layer's dtypes only.
"""

from __future__ import annotations

import enum
import functools
import math
import weakref
from dataclasses import dataclass, field
from typing import Any, Callable, Iterable

from mlxtriton.graph import dtypes as _dtypes


class Ops(enum.Enum):
    # structure
    KERNEL = enum.auto()  # src: STOREs, then PARAMs of inputs no store reads; arg: BuiltSchedule
    PARAM = enum.auto()  # a kernel argument buffer; arg: Param
    SPECIAL = enum.auto()  # an index variable; arg: (name, extent); names: idx, row, col, dim<k>
    CONST = enum.auto()  # arg: a Python bool/int/float of the node's dtype
    LOAD = enum.auto()  # src: (PARAM, index); arg: Mem
    STORE = enum.auto()  # src: (PARAM, index, value); arg: Mem
    REDUCE = enum.auto()  # src: (value,) or (value, position) for argmax/argmin; arg: ReduceKind name
    # convert src[0] to this node's dtype. A float becomes an integer truncated toward zero,
    # saturated to the integer's range, NaN as 0 (C leaves out-of-range values undefined: the
    # GPUs' and ARM's 32-bit conversions saturate so, x86's give the most negative integer);
    # anything becomes bool as != 0
    CAST = enum.auto()
    # src: (value,), a per-element value computed by one pass over the row and kept in registers
    # for the later passes that read it, instead of computed again (the value itself: the
    # interpreter passes it through)
    KEEP = enum.auto()
    # src: (value,), arg: rows per block B. Per column, the sum of a per-element value over the
    # B consecutive rows one threadgroup walks in sequence (a weight gradient's partial sum over
    # tokens); only a store reads it, after the threadgroup's last row
    BLOCK_SUM = enum.auto()
    # unary
    NEG = enum.auto()
    NOT = enum.auto()
    ABS = enum.auto()
    SIGN = enum.auto()
    SQUARE = enum.auto()
    SQRT = enum.auto()
    RSQRT = enum.auto()
    EXP = enum.auto()
    # exp of a value known to be <= 0 or NaN (v - max(v)): the dialect's fast exponential, as
    # MLX's own softmax and logsumexp kernels use (CUDA ex2.approx.ftz, Metal fast::exp)
    EXP_SHIFTED = enum.auto()
    EXPM1 = enum.auto()
    LOG = enum.auto()
    LOG2 = enum.auto()
    LOG10 = enum.auto()
    LOG1P = enum.auto()
    SIN = enum.auto()
    COS = enum.auto()
    TAN = enum.auto()
    ASIN = enum.auto()
    ACOS = enum.auto()
    ATAN = enum.auto()
    SINH = enum.auto()
    COSH = enum.auto()
    TANH = enum.auto()
    ASINH = enum.auto()
    ACOSH = enum.auto()
    ATANH = enum.auto()
    ERF = enum.auto()
    SIGMOID = enum.auto()
    FLOOR = enum.auto()
    CEIL = enum.auto()
    ROUND = enum.auto()  # half to even, like MLX's Round
    # binary
    ADD = enum.auto()
    SUB = enum.auto()
    MUL = enum.auto()
    DIV = enum.auto()  # floats: IEEE division; integers: C division (truncates)
    IDIV = enum.auto()  # index arithmetic on non-negative integers
    MOD = enum.auto()  # index arithmetic on non-negative integers
    REM = enum.auto()  # C remainder: fmod for floats, % for integers (sign of the dividend)
    MAX = enum.auto()  # NaN-propagating, like MLX's Maximum
    MIN = enum.auto()  # NaN-propagating, like MLX's Minimum
    POW = enum.auto()  # integers: by squaring, negative exponents give 0 (MLX)
    ATAN2 = enum.auto()
    LOGADDEXP = enum.auto()
    CMPLT = enum.auto()
    CMPLE = enum.auto()
    CMPEQ = enum.auto()
    CMPNE = enum.auto()
    AND = enum.auto()  # logical, on bool
    OR = enum.auto()  # logical, on bool
    BITAND = enum.auto()  # bitwise, on integers and bool
    BITOR = enum.auto()
    BITXOR = enum.auto()
    # shifts of integers by a count of the same type; a count outside [0, bits) shifts every bit
    # out (left: 0; right: 0, or -1 for a negative signed value), as JAX's lax.shift_* define it
    # (C leaves such counts undefined)
    SHL = enum.auto()
    SHR = enum.auto()  # arithmetic for signed types, logical for unsigned
    # ternary
    WHERE = enum.auto()

    def __repr__(self) -> str:
        return f"Ops.{self.name}"


class GroupOp:
    Unary = frozenset({
        Ops.NEG, Ops.NOT, Ops.ABS, Ops.SIGN, Ops.SQUARE, Ops.SQRT, Ops.RSQRT, Ops.EXP,
        Ops.EXP_SHIFTED, Ops.EXPM1,
        Ops.LOG, Ops.LOG2, Ops.LOG10, Ops.LOG1P, Ops.SIN, Ops.COS, Ops.TAN, Ops.ASIN, Ops.ACOS,
        Ops.ATAN, Ops.SINH, Ops.COSH, Ops.TANH, Ops.ASINH, Ops.ACOSH, Ops.ATANH, Ops.ERF,
        Ops.SIGMOID, Ops.FLOOR, Ops.CEIL, Ops.ROUND,
    })
    # Unary ops defined on floating values only (MLX casts integers to float before them).
    FloatUnary = Unary - {Ops.NEG, Ops.NOT, Ops.ABS, Ops.SIGN, Ops.SQUARE, Ops.FLOOR, Ops.CEIL,
                          Ops.ROUND}
    Binary = frozenset({
        Ops.ADD, Ops.SUB, Ops.MUL, Ops.DIV, Ops.IDIV, Ops.MOD, Ops.REM, Ops.MAX, Ops.MIN, Ops.POW,
        Ops.ATAN2, Ops.LOGADDEXP, Ops.CMPLT, Ops.CMPLE, Ops.CMPEQ, Ops.CMPNE, Ops.AND, Ops.OR,
        Ops.BITAND, Ops.BITOR, Ops.BITXOR, Ops.SHL, Ops.SHR,
    })
    Compare = frozenset({Ops.CMPLT, Ops.CMPLE, Ops.CMPEQ, Ops.CMPNE})
    Ternary = frozenset({Ops.WHERE})
    ALU = Unary | Binary | Ternary | {Ops.CAST}
    Commutative = frozenset({Ops.ADD, Ops.MUL, Ops.MAX, Ops.MIN, Ops.CMPEQ, Ops.CMPNE, Ops.AND,
                             Ops.OR, Ops.BITAND, Ops.BITOR, Ops.BITXOR})


# Reduction kinds. "and" / "or" are logical over the truth of each element of their source, of
# any dtype: an element is true when it is nonzero (NaN true, -0.0 false, MLX's all / any), and
# the result is 1 or 0 in the node's dtype. "sumexp" is a softmax denominator,
# sum(exp(v - max(v))) exactly (NaN when the max is infinite, as MLX's softmax); a kernel computes
# it in one pass with an online running max (Milakov & Gimelshein 2018) when the row is streamed.
# "sqdev" is the sum of squared deviations from the row's own mean, sum((v - mean(v))^2), in
# float32: one pass where a variance's two-pass form would read a streamed row twice (each lane
# sums its values shifted by its first one, then turns the sums into a mean and squared
# deviations; lanes merge by Chan, Golub & LeVeque 1979).
REDUCE_KINDS = ("sum", "prod", "max", "min", "and", "or", "argmax", "argmin", "sumexp", "sqdev")


@dataclass(frozen=True)
class Param:
    """A kernel argument: an input or output buffer, row-contiguous with ``shape``."""

    slot: int
    name: str
    role: str  # "input" | "output"
    shape: tuple[int, ...]
    dtype: str

    @property
    def size(self) -> int:
        return math.prod(self.shape)


class Access(enum.Enum):
    """How a LOAD/STORE touches memory across the ``vector_width`` lanes of one thread."""

    HOISTED = "hoisted"  # does not depend on the element index: once per row (or per kernel)
    VECTOR = "vector"  # lanes touch consecutive, aligned elements: one 4..16-byte vector access
    UNIFORM = "uniform"  # every lane touches the same element: one scalar access, broadcast
    SCALAR = "scalar"  # one scalar access per lane (strided or gathered)


@dataclass(frozen=True)
class Mem:
    """The arg of LOAD and STORE: the access pattern, and for a LOAD whether its values stay in
    registers between passes over a row (``resident``) instead of being read again."""

    access: Access = Access.SCALAR
    resident: bool = False

    def __str__(self) -> str:
        return self.access.value + (" resident" if self.resident else "")


@dataclass(frozen=True)
class BuiltSchedule:
    """How a built kernel's index space maps onto threads, and what stays on chip between passes:
    a `mlxtriton.codegen.schedule.Schedule` resolved against its region by ``build``, and the
    one place every question about the kernel is answered (on chip? how many passes?).

    Row kernels: ``rows`` x ``row_length``; ``threads_per_row`` threads share a row (a power of
    two; rows of up to ``simd_width`` threads reduce with SIMD shuffles only, longer ones through
    threadgroup memory too), ``rows_per_group`` rows share a threadgroup, each thread owns
    ``chunks`` vectors of ``vector_width`` elements, vector c of lane t starting at element
    ``(c * threads_per_row + t) * vector_width`` (coalesced). Thread ``tid`` of a threadgroup is
    lane ``tid % threads_per_row`` of its row ``tid // threads_per_row``, unless ``interleaved``:
    then it is lane ``tid // rows_per_group`` of row ``tid % rows_per_group``, so that neighbouring
    threads serve neighbouring rows (a column reduction, whose rows are neighbours in memory) and a
    row's lanes meet through threadgroup memory. Pointwise kernels: one vector of
    ``vector_width`` elements per thread.
    """

    name: str
    kind: str  # "pointwise" | "row"
    elements: int  # pointwise: the flat size; row: rows * row_length
    threadgroup_size: int
    vector_width: int = 1
    rows: int = 1
    row_length: int = 1
    threads_per_row: int = 1
    rows_per_group: int = 1
    chunks: int = 1
    interleaved: bool = False  # lanes of a row rows_per_group threads apart (see above)
    simd_width: int = 32
    passes: int = 1  # passes over the row: one per reduction stage, plus one for row stores
    # "registers": multi-pass inputs stay in registers; "threadgroup": in threadgroup memory
    # (rows too long for registers), wholly or past `staged_in_registers` elements a thread;
    # "stream": re-read from memory; "none": one pass
    on_chip: str = "none"
    resident: tuple[str, ...] = ()  # inputs held on chip across passes (registers or staged)
    staged: tuple[str, ...] = ()  # of those, inputs held in threadgroup memory
    # of each thread's elements of a staged input, how many (its first) stay in registers instead
    # (0: all in threadgroup memory); a whole number of vectors, fewer than elements_per_thread
    staged_in_registers: int = 0
    streamed: tuple[str, ...] = ()  # inputs read again from memory by a later pass
    # inputs only the write pass reads, loaded into registers during the first pass
    prefetched: tuple[str, ...] = ()
    kept: int = 0  # computed values kept in registers between passes (KEEP nodes)
    index_dtype: str = "int32"
    # threads per threadgroup declared to the compiler, which then fits their registers in the
    # register file (0: none declared)
    launch_bound: int = 0
    # threadgroups per core the compiler should leave room for under that bound (0, 1: none)
    launch_min_groups: int = 0
    # rows one threadgroup walks in sequence (row kernels with BLOCK_SUM outputs: each thread
    # adds its columns' values over the block in registers, one partial per block and column)
    rows_per_block: int = 1
    # those column sums held in threadgroup memory (each thread its own slots), not registers
    block_sums_shared: bool = False
    # how the renderer writes the passes (`mlxtriton.codegen.schedule.Schedule` says what each
    # does): chunks of a streamed row unrolled, the online max-and-sum rescaled per vector, a
    # row's own scalars read first, what a block's rows share loaded once
    unroll: int = 1
    online_chunked: bool = True
    hoist_row_loads: bool = True
    hoist_block_loads: bool = True

    @property
    def reads_once(self) -> bool:
        """Whether the kernel reads each input from memory once: its rows take one pass, or the
        inputs later passes read again stay on chip (registers or threadgroup memory)."""
        return self.kind != "row" or not self.streamed

    @property
    def reduction_tree(self) -> str:
        if self.kind != "row" or self.threads_per_row == 1:
            return "none"  # a thread owns a whole row
        if self.interleaved:
            return "threadgroup"  # a row's lanes sit in different SIMD-groups
        if self.threads_per_row <= self.simd_width:
            return "simd"  # butterfly shuffles inside a SIMD-group, no barriers
        return "simd+threadgroup"  # shuffles, then SIMD-group partials through threadgroup memory

    @property
    def elements_per_thread(self) -> int:
        return self.chunks * self.vector_width

    @property
    def grid(self) -> int:
        """Threads in the grid (MLX's ``grid`` counts threads)."""
        if self.kind == "pointwise":
            return self.elements // self.vector_width
        groups = -(-self.rows // (self.rows_per_group * self.rows_per_block))
        return groups * self.threadgroup_size

    def staging(self) -> str:
        """What the staged inputs keep where: all in threadgroup memory, or split with registers."""
        names = ", ".join(self.staged)
        if not self.staged_in_registers:
            return f"{names} staged in threadgroup memory"
        return (f"{names}: {self.staged_in_registers} of {self.elements_per_thread} elements a "
                f"thread in registers, the rest in threadgroup memory")

    def describe(self) -> str:
        if self.kind == "pointwise":
            return (f"pointwise: {self.elements} elements, {self.vector_width} per thread, "
                    f"threadgroup {self.threadgroup_size}")
        text = (f"row: {self.rows} rows x {self.row_length}, {self.threads_per_row} threads/row, "
                f"{self.rows_per_group} rows/threadgroup{' interleaved' * self.interleaved}, "
                f"vector {self.vector_width}, "
                f"{self.chunks} vectors/thread, reduction {self.reduction_tree}, "
                f"{self.passes} pass(es)")
        if self.rows_per_block > 1:
            text += (f"; {self.rows_per_block} rows per threadgroup in sequence, column sums "
                     f"kept per block" + " in threadgroup memory" * self.block_sums_shared)
        in_registers = [n for n in self.resident if n not in self.staged]
        parts = [f"{', '.join(in_registers)} resident in registers"] if in_registers else []
        parts += [self.staging()] if self.staged else []
        parts += ([f"{', '.join(self.prefetched)} loaded in pass 1 for the write pass"]
                  if self.prefetched else [])
        if parts:
            text += "; on chip: " + ", ".join(parts)
        elif self.on_chip == "stream":
            text += f"; on chip: none, {', '.join(self.streamed)} re-read from memory"
        if self.kept:
            text += f"; {self.kept} computed value{'s' * (self.kept > 1)} kept in registers"
        return text


# ---------------------------------------------------------------------------------------------
# the node


def _arg_key(arg: Any) -> Any:
    # 0.0 == -0.0 and 1 == 1.0 == True in Python; the cache must keep them apart.
    if isinstance(arg, float):
        return ("f", arg.hex())
    if isinstance(arg, bool):
        return ("b", arg)
    if isinstance(arg, int):
        return ("i", arg)
    if isinstance(arg, tuple):
        return tuple(_arg_key(a) for a in arg)
    return arg


class UOp:
    """One kernel-IR node. Hash-consed: equal (op, dtype, src, arg) give the same object."""

    _cache: "weakref.WeakValueDictionary[tuple, UOp]" = weakref.WeakValueDictionary()

    op: Ops
    dtype: str
    src: tuple[UOp, ...]
    arg: Any

    def __new__(cls, op: Ops, dtype: str, src: tuple[UOp, ...] = (), arg: Any = None) -> UOp:
        key = (op, dtype, src, _arg_key(arg))
        if (hit := UOp._cache.get(key)) is not None:
            return hit
        node = super().__new__(cls)
        for name, value in (("op", op), ("dtype", dtype), ("src", tuple(src)), ("arg", arg)):
            object.__setattr__(node, name, value)
        UOp._cache[key] = node
        return node

    def __setattr__(self, name: str, value: Any) -> None:
        raise AttributeError("UOp is immutable")

    def __reduce__(self):
        return (UOp, (self.op, self.dtype, self.src, self.arg))

    def __repr__(self) -> str:
        return f"UOp({self.op.name}, {self.dtype}, src={len(self.src)}, arg={self.arg!r})"

    # -- structure ------------------------------------------------------------------------------
    @functools.cached_property
    def toposort(self) -> tuple[UOp, ...]:
        """All nodes reachable from this one, children first."""
        order: list[UOp] = []
        seen: set[int] = set()
        stack: list[tuple[UOp, bool]] = [(self, False)]
        while stack:
            node, expanded = stack.pop()
            if expanded:
                order.append(node)
                continue
            if id(node) in seen:
                continue
            seen.add(id(node))
            stack.append((node, True))
            stack.extend((s, False) for s in reversed(node.src) if id(s) not in seen)
        return tuple(order)

    @functools.cached_property
    def specials(self) -> frozenset[str]:
        """Names of the index variables this value depends on, through loads too."""
        if self.op is Ops.SPECIAL:
            return frozenset({self.arg[0]})
        out: frozenset[str] = frozenset()
        for s in self.src:
            out |= s.specials
        return out

    @functools.cached_property
    def per_element(self) -> bool:
        """True when the value varies along the element index (idx or col), not through a REDUCE."""
        if self.op is Ops.SPECIAL:
            return self.arg[0] in ("idx", "col")
        if self.op is Ops.REDUCE:
            return False
        return any(s.per_element for s in self.src)

    @functools.cached_property
    def stage(self) -> int:
        """Reduction passes that must finish before this value exists (a REDUCE's own pass + 1)."""
        if self.op is Ops.REDUCE:
            return self.reduce_pass + 1
        return max((s.stage for s in self.src), default=0)

    @property
    def reduce_pass(self) -> int:
        """For a REDUCE: the pass over the row that computes it."""
        assert self.op is Ops.REDUCE
        return max(s.stage for s in self.src)

    # -- integer ranges (index arithmetic only) --------------------------------------------------
    @functools.cached_property
    def vmin(self) -> float:
        return _range(self)[0]

    @functools.cached_property
    def vmax(self) -> float:
        return _range(self)[1]

    # -- constructors ---------------------------------------------------------------------------
    @staticmethod
    def const(dtype: str, value: Any) -> UOp:
        return UOp(Ops.CONST, dtype, (), normalize_const(dtype, value))

    def alu(self, op: Ops, *others: UOp | int) -> UOp:
        srcs = (self,) + tuple(o if isinstance(o, UOp) else UOp.const(self.dtype, o)
                               for o in others)
        return alu(op, *srcs)

    def cast(self, dtype: str) -> UOp:
        if dtype == self.dtype:
            return self
        if self.op is Ops.CONST:
            return UOp.const(dtype, self.arg)
        if (dtype in ("float16", "bfloat16") and self.op is Ops.CAST and self.src[0].op is Ops.CAST
                and self.src[0].dtype == dtype and self.src[0].src[0].dtype == "float32"):
            return self.src[0]  # float32 -> half -> float32 -> half rounds once
        return UOp(Ops.CAST, dtype, (self,))

    def __add__(self, other: UOp | int) -> UOp:
        return self.alu(Ops.ADD, other)

    def __radd__(self, other: int) -> UOp:
        return self.alu(Ops.ADD, other)

    def __mul__(self, other: UOp | int) -> UOp:
        return self.alu(Ops.MUL, other)

    def __rmul__(self, other: int) -> UOp:
        return self.alu(Ops.MUL, other)

    def __floordiv__(self, other: int) -> UOp:
        return self.alu(Ops.IDIV, other)

    def __mod__(self, other: int) -> UOp:
        return self.alu(Ops.MOD, other)


def normalize_const(dtype: str, value: Any) -> Any:
    """A constant's Python value for ``dtype``: bool, int (wrapped to the type) or float."""
    if dtype == "bool":
        return bool(value)
    if dtype in _dtypes.INTEGER:
        bits = 8 * _dtypes.itemsize(dtype)
        v = int(value) & ((1 << bits) - 1)
        if dtype in _dtypes.SIGNED and v >= 1 << (bits - 1):
            v -= 1 << bits
        return v
    return float(value)


def result_dtype(op: Ops, srcs: tuple[UOp, ...]) -> str:
    if op in GroupOp.Compare:
        return "bool"
    if op is Ops.WHERE:
        return srcs[1].dtype
    return srcs[0].dtype


def alu(op: Ops, *srcs: UOp, dtype: str | None = None) -> UOp:
    """An ALU node with constant folding and the index identities the builder relies on."""
    srcs = tuple(srcs)
    dtype = dtype or result_dtype(op, srcs)
    simplified = _simplify(op, dtype, srcs)
    return simplified if simplified is not None else UOp(op, dtype, srcs)


def _is_const(u: UOp, value: Any = None) -> bool:
    return u.op is Ops.CONST and (value is None or u.arg == value)


def _simplify(op: Ops, dtype: str, s: tuple[UOp, ...]) -> UOp | None:
    """Integer index arithmetic only: folding and identities (x+0, x*1, (x*c)//c, x%n when x<n)."""
    if dtype not in _dtypes.INTEGER or op not in (Ops.ADD, Ops.MUL, Ops.IDIV, Ops.MOD):
        return None
    a, b = s
    if _is_const(a) and _is_const(b):
        fold = {Ops.ADD: lambda x, y: x + y, Ops.MUL: lambda x, y: x * y,
                Ops.IDIV: lambda x, y: x // y, Ops.MOD: lambda x, y: x % y}[op]
        return UOp.const(dtype, fold(a.arg, b.arg))
    if op in (Ops.ADD, Ops.MUL) and _is_const(a):
        a, b = b, a  # constants on the right
    if op is Ops.ADD:
        if _is_const(b, 0):
            return a
        if a.op is Ops.ADD and _is_const(a.src[1]) and _is_const(b):  # (x + c1) + c2
            return alu(Ops.ADD, a.src[0], UOp.const(dtype, a.src[1].arg + b.arg))
        # (x // c) * c + x % c -> x
        for p, q in ((a, b), (b, a)):
            if (p.op is Ops.MUL and q.op is Ops.MOD and _is_const(p.src[1])
                    and p.src[0].op is Ops.IDIV and p.src[0].src[1] is p.src[1]
                    and q.src[1] is p.src[1] and q.src[0] is p.src[0].src[0]):
                return q.src[0]
        return None if (a, b) == s else UOp(op, dtype, (a, b))
    if op is Ops.MUL:
        if _is_const(b, 1):
            return a
        if _is_const(b, 0):
            return b
        if a.op is Ops.MUL and _is_const(a.src[1]) and _is_const(b):  # (x * c1) * c2
            return alu(Ops.MUL, a.src[0], UOp.const(dtype, a.src[1].arg * b.arg))
        return None if (a, b) == s else UOp(op, dtype, (a, b))
    if not _is_const(b) or b.arg <= 0:
        return None
    c = b.arg
    if op is Ops.IDIV:
        if c == 1:
            return a
        if a.vmin >= 0 and a.vmax < c:
            return UOp.const(dtype, 0)
        if a.op is Ops.MUL and _is_const(a.src[1]) and a.src[1].arg % c == 0:  # (x*kc)//c
            return alu(Ops.MUL, a.src[0], UOp.const(dtype, a.src[1].arg // c))
        if a.op is Ops.IDIV and _is_const(a.src[1]) and a.src[1].arg > 0:  # (x//c1)//c2
            return alu(Ops.IDIV, a.src[0], UOp.const(dtype, a.src[1].arg * c))
        return None
    if c == 1:
        return UOp.const(dtype, 0)
    if a.vmin >= 0 and a.vmax < c:
        return a
    if a.op is Ops.MUL and _is_const(a.src[1]) and a.src[1].arg % c == 0:  # (x*kc) % c
        return UOp.const(dtype, 0)
    return None


def _range(u: UOp) -> tuple[float, float]:
    if u.op is Ops.SPECIAL:
        return (0, u.arg[1] - 1)
    if u.op is Ops.CONST and not isinstance(u.arg, float):
        return (u.arg, u.arg)
    if u.op in (Ops.ADD, Ops.MUL, Ops.IDIV, Ops.MOD) and u.dtype in _dtypes.INTEGER:
        (a0, a1), (b0, b1) = _range(u.src[0]), _range(u.src[1])
        if u.op is Ops.ADD:
            return (a0 + b0, a1 + b1)
        if u.op is Ops.MUL:
            products = [a0 * b0, a0 * b1, a1 * b0, a1 * b1]
            if any(math.isnan(p) for p in products):
                return (-math.inf, math.inf)
            return (min(products), max(products))
        if b0 == b1 and b0 > 0 and a0 >= 0:
            if u.op is Ops.IDIV:
                return (a0 // b0, a1 // b0)
            return (0, min(a1, b0 - 1))
    return (-math.inf, math.inf)


# ---------------------------------------------------------------------------------------------
# rewrites as pattern tables (tinygrad's UPat / PatternMatcher, reduced to what codegen needs)


@dataclass(frozen=True)
class UPat:
    """Matches a node by op (one or a set), optional dtype/arg, and sources; ``name`` captures."""

    op: Ops | frozenset[Ops] | None = None
    src: tuple[UPat, ...] | None = None
    name: str | None = None
    arg: Any = None
    dtype: str | None = None

    def match(self, u: UOp, captures: dict[str, UOp]) -> bool:
        if self.op is not None:
            ops = self.op if isinstance(self.op, frozenset) else {self.op}
            if u.op not in ops:
                return False
        if self.arg is not None and u.arg != self.arg:
            return False
        if self.dtype is not None and u.dtype != self.dtype:
            return False
        if self.name is not None:
            if self.name in captures and captures[self.name] is not u:
                return False  # the same name twice means the same node (dataflow, not lookalike)
            captures[self.name] = u
        if self.src is not None:
            if len(self.src) != len(u.src):
                return False
            return all(p.match(s, captures) for p, s in zip(self.src, u.src))
        return True


@dataclass(frozen=True)
class PatternMatcher:
    rules: tuple[tuple[UPat, Callable[..., UOp | None]], ...] = field(default=())

    def __add__(self, other: PatternMatcher) -> PatternMatcher:
        return PatternMatcher(self.rules + other.rules)

    def rewrite(self, u: UOp) -> UOp | None:
        for pat, fn in self.rules:
            captures: dict[str, UOp] = {}
            if pat.match(u, captures):
                out = fn(**captures)
                if out is not None and out is not u:
                    return out
        return None


def graph_rewrite(root: UOp, pm: PatternMatcher, max_rounds: int = 64) -> UOp:
    """Rewrite bottom-up to a fixed point; fails loudly if the rules never settle."""
    for _ in range(max_rounds):
        replaced: dict[UOp, UOp] = {}
        changed = False
        for node in root.toposort:
            src = tuple(replaced.get(s, s) for s in node.src)
            new = node if src == node.src else UOp(node.op, node.dtype, src, node.arg)
            if (r := pm.rewrite(new)) is not None:
                new, changed = r, True
            changed |= new is not node
            replaced[node] = new
        new_root = replaced[root]
        if not changed:
            return new_root
        root = new_root
    raise RuntimeError(f"graph_rewrite did not reach a fixed point in {max_rounds} rounds")


def substitute(root: UOp, mapping: dict[UOp, UOp]) -> UOp:
    """Replace nodes by others everywhere below ``root`` (index ALU is re-simplified)."""
    (new,) = map_nodes([root], lambda node, src, done: mapping.get(node))
    return new


def map_nodes(stores: list[UOp], fn: Callable[[UOp, tuple[UOp, ...], dict], UOp | None]
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
        elif node.op in GroupOp.Binary:
            done[node] = alu(node.op, *src, dtype=node.dtype)
        else:
            done[node] = UOp(node.op, node.dtype, src, node.arg)
    return list(done[root].src)


# ---------------------------------------------------------------------------------------------
# printing


def kernel_params(kernel: UOp) -> tuple[Param, ...]:
    """The kernel's buffers by slot: inputs first, then outputs."""
    params = {u.arg for u in kernel.toposort if u.op is Ops.PARAM}
    return tuple(sorted(params, key=lambda p: p.slot))


def print_kernel(kernel: UOp) -> str:
    """The kernel IR as text, one node per line, children first."""
    names: dict[UOp, str] = {}
    lines = [f"# {kernel.arg.describe()}" if kernel.op is Ops.KERNEL else "# expression"]
    for i, u in enumerate(kernel.toposort):
        names[u] = f"%{i}"
        srcs = ", ".join(names[s] for s in u.src)
        if u.op is Ops.PARAM:
            p = u.arg
            arg = f"{p.role} {p.name} {p.dtype}{list(p.shape)}"
        elif u.op is Ops.KERNEL:
            arg = u.arg.name
        elif isinstance(u.arg, Mem):
            arg = str(u.arg)
        else:
            arg = "" if u.arg is None else repr(u.arg)
        lines.append(f"{names[u]:>5} = {u.op.name:<8} {u.dtype:<8} ({srcs}) {arg}".rstrip())
    return "\n".join(lines)


def iter_ops(kernel: UOp, op: Ops) -> Iterable[UOp]:
    return (u for u in kernel.toposort if u.op is op)
