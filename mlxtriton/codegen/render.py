"""Codegen layer: one C-style renderer for both dialects, KERNEL node -> LoweredKernel.

The output is exactly what ``mx.fast.metal_kernel`` / ``mx.fast.cuda_kernel`` take (MLX writes the
signature around the body) plus the call arguments. Dialect differences live in
``codegen.dialects`` tables; nothing here asks which dialect it renders. May import the codegen
IR, builder and dialects; never the runtime (only the runtime calls ``mx.fast.*_kernel``).
"""

from __future__ import annotations

import hashlib
import math
import re
from dataclasses import dataclass, field
from typing import Any, Callable

from mlxtriton.codegen import builder as _build
from mlxtriton.codegen._passes import row_independent
from mlxtriton.codegen.dialects import DIALECTS, Dialect
from mlxtriton.codegen.kernel_ir import Access, Ops, Param, UOp, kernel_params
from mlxtriton.codegen.region import Region
from mlxtriton.graph import dtypes as _dtypes


@dataclass(frozen=True)
class LoweredKernel:
    """One generated kernel: the constructor and call arguments of ``mx.fast.*_kernel``.

    ``kernel_kwargs()`` and ``call_kwargs()`` give them as dicts (dtypes by name; the runtime
    converts them to ``mx.Dtype``). ``kernel`` is the kernel IR it came from (the interpreter
    runs it).
    """

    target: str  # "metal" | "cuda"
    name: str
    input_names: tuple[str, ...]
    output_names: tuple[str, ...]
    source: str
    header: str
    ensure_row_contiguous: bool
    grid: tuple[int, int, int]
    threadgroup: tuple[int, int, int]
    output_shapes: tuple[tuple[int, ...], ...]
    output_dtypes: tuple[str, ...]
    input_shapes: tuple[tuple[int, ...], ...]
    input_dtypes: tuple[str, ...]
    template: tuple[tuple[str, Any], ...] = ()
    init_value: float | None = None
    options: tuple[tuple[str, Any], ...] = ()  # atomic_outputs (Metal) / shared_memory (CUDA)
    # Vector loads and stores assume each buffer starts 16-byte aligned (MLX allocations do;
    # an input that is a row-contiguous view at an odd offset would not).
    alignment: int = 16
    kernel: UOp | None = field(default=None, compare=False, repr=False)
    # where its schedule came from: "default" (the chip's rules), "tuned" (the tuner timed the
    # candidates on this device), "tuned (cached)" (a tuning of an earlier process)
    origin: str = field(default="default", compare=False)
    # A kernel launched right after this one, on the arrays of this one's inputs and outputs its
    # input names name: the pair's outputs are its (attention over many keys: partial results,
    # then their merge).
    then: "LoweredKernel | None" = None

    def kernel_kwargs(self) -> dict[str, Any]:
        """Arguments of ``mx.fast.metal_kernel`` / ``mx.fast.cuda_kernel``."""
        return {"name": self.name, "input_names": list(self.input_names),
                "output_names": list(self.output_names), "source": self.source,
                "header": self.header, "ensure_row_contiguous": self.ensure_row_contiguous,
                **dict(self.options)}

    def call_kwargs(self) -> dict[str, Any]:
        """Arguments of the kernel call, except ``inputs`` (dtypes by name)."""
        out: dict[str, Any] = {"grid": self.grid, "threadgroup": self.threadgroup,
                               "output_shapes": [list(s) for s in self.output_shapes],
                               "output_dtypes": list(self.output_dtypes)}
        if self.template:
            out["template"] = list(self.template)
        if self.init_value is not None:
            out["init_value"] = self.init_value
        return out

    def as_text(self) -> str:
        ins = ", ".join(f"{n}: {d}{list(s)}" for n, d, s in
                        zip(self.input_names, self.input_dtypes, self.input_shapes))
        outs = ", ".join(f"{n}: {d}{list(s)}" for n, d, s in
                         zip(self.output_names, self.output_dtypes, self.output_shapes))
        lines = [f"kernel {self.name} ({self.target})",
                 f"  inputs:  {ins}", f"  outputs: {outs}",
                 f"  grid {self.grid}, threadgroup {self.threadgroup}"]
        if self.kernel is not None:
            lines.append(f"  schedule ({self.origin}): {self.kernel.arg.describe()}")
        lines += ["--- header ---", self.header.rstrip(), "--- source ---", self.source.rstrip()]
        text = "\n".join(lines) + "\n"
        return text if self.then is None else text + "then " + self.then.as_text()

    def then_arguments(self) -> tuple[int, ...]:
        """Where each input of `then` is among this kernel's inputs followed by its outputs."""
        names = (*self.input_names, *self.output_names)
        return tuple(names.index(n) for n in self.then.input_names)

    def chain(self) -> tuple["LoweredKernel", ...]:
        """This kernel and the ones launched after it (`then`), in launch order."""
        return (self,) if self.then is None else (self, *self.then.chain())


# C syntax both dialects share; dialect tables override per (op, kind).
_BASE_CODE: dict[tuple[Ops, str], str] = {
    (Ops.ADD, "any"): "({0} + {1})", (Ops.SUB, "any"): "({0} - {1})",
    (Ops.MUL, "any"): "({0} * {1})", (Ops.DIV, "any"): "({0} / {1})",
    (Ops.IDIV, "any"): "({0} / {1})", (Ops.MOD, "any"): "({0} % {1})",
    (Ops.REM, "int"): "({0} % {1})", (Ops.MAX, "any"): "mt_max({0}, {1})",
    (Ops.MIN, "any"): "mt_min({0}, {1})", (Ops.POW, "int"): "mt_ipow({0}, {1})",
    (Ops.ABS, "int"): "mt_iabs({0})", (Ops.CMPLT, "any"): "({0} < {1})",
    (Ops.CMPLE, "any"): "({0} <= {1})", (Ops.CMPEQ, "any"): "({0} == {1})",
    (Ops.CMPNE, "any"): "({0} != {1})", (Ops.AND, "any"): "({0} && {1})",
    (Ops.OR, "any"): "({0} || {1})", (Ops.NOT, "any"): "(!{0})", (Ops.NEG, "any"): "(-{0})",
    (Ops.BITAND, "int"): "({0} & {1})", (Ops.BITOR, "int"): "({0} | {1})",
    (Ops.BITXOR, "int"): "({0} ^ {1})", (Ops.SHL, "int"): "mt_shl({0}, {1})",
    (Ops.SHR, "int"): "mt_shr({0}, {1})",
    (Ops.SQUARE, "any"): "({0} * {0})", (Ops.SIGN, "any"): "mt_sign({0})",
    (Ops.SIGMOID, "float"): "mt_sigmoid({0})", (Ops.LOGADDEXP, "float"): "mt_logaddexp({0}, {1})",
    (Ops.WHERE, "any"): "({0} ? {1} : {2})",
}

# per reduction kind: how an element or another thread's partial ({b}) joins a partial ({a});
# "and" / "or" combine the truth of both (kernel_ir.REDUCE_KINDS): an element of any dtype is
# true when nonzero, NaN included
_COMBINE = {"sum": "{a} + {b}", "prod": "{a} * {b}", "max": "mt_max({a}, {b})",
            "min": "mt_min({a}, {b})", "and": "(({a} != 0) && ({b} != 0))",
            "or": "(({a} != 0) || ({b} != 0))"}

_KERNEL, _CHUNK, _LANE = 0, 1, 2

def _kind(dtype: str) -> str:
    return "float" if dtype in _dtypes.FLOATING else "int"


class _Renderer:
    def __init__(self, kernel: UOp, d: Dialect):
        self.k, self.d, self.s = kernel, d, kernel.arg
        self.params = kernel_params(kernel)
        self.idx_t = d.type(self.s.index_dtype)
        self.n = 0
        self.helpers: set[str] = set()
        self.lines: list[str] = []  # kernel-level lines of the body
        self.shared_decls: list[str] = []
        self.bound: list[dict[UOp, str]] = [{}, {}, {}]
        self.level_lines: list[list[str]] = [self.lines, [], []]
        self.chunk_post: list[str] = []
        self.resident: dict[UOp, str] = {}  # LOAD -> register array (or threadgroup array)
        self.staged: set[UOp] = set()  # resident loads held in threadgroup memory
        # staged loads whose first `staged_in_registers` elements a thread stay in registers:
        # their register arrays; `part` says which of the two a chunk loop being written holds
        self.split: dict[UOp, str] = {}
        self.part: str | None = None  # "registers" | "threadgroup" | None (no split)
        self.split_read = False  # whether the chunk loop being written reads a split load
        self.staging_bytes = 0  # bytes of the dialect's staging area the kernel uses
        self.loaded: set[UOp] = set()  # resident LOADs already filled
        self.store_vectors: dict[UOp, str] = {}
        self.block_acc: dict[UOp, str] = {}  # BLOCK_SUM -> its register array

    # -- naming and expressions ---------------------------------------------------------------
    def tmp(self, prefix: str = "mt_t") -> str:
        self.n += 1
        return f"{prefix}{self.n}"

    def code(self, op: Ops, dtype: str, args: list[str]) -> str:
        for key in ((op, _kind(dtype)), (op, "any")):
            for table in (self.d.code_for_op, _BASE_CODE):
                if key in table:
                    return self.use(table[key].format(*args))
        raise NotImplementedError(f"no {self.d.name} code for {op} on {dtype}")

    def use(self, text: str) -> str:
        self.helpers.update(re.findall(r"\bmt_[a-z0-9]+(?=\s*[(<])", text))
        return text

    def literal(self, dtype: str, value: Any) -> str:
        if dtype == "bool":
            return "true" if value else "false"
        if dtype in _dtypes.FLOATING:
            v = float(value)
            if math.isnan(v):
                return self.d.literals["nan"]
            if math.isinf(v):
                return ("-" if v < 0 else "") + self.d.literals["inf"]
            text = f"{v:.9g}"
            if not re.search(r"[.e]", text):
                text += ".0"
            return text + "f"
        value = int(value)
        suffix = {"int64": "ll", "uint64": "ull", "uint32": "u"}.get(dtype, "")
        # the most negative value has no literal (the literal is its positive, which overflows)
        text = (f"({value + 1}{suffix} - 1)" if dtype in _dtypes.SIGNED
                and value == _int_range(dtype)[0] else f"{value}{suffix}")
        if dtype in ("int32", "uint32"):
            return text
        return f"static_cast<{self.d.type(dtype)}>({text})"

    def cast(self, x: str, src: str, dst: str) -> str:
        if (src, dst) not in self.d.casts and src in _dtypes.FLOATING and dst in _dtypes.INTEGER:
            # C leaves a float out of the integer's range undefined: the kernel IR's CAST
            # saturates and takes NaN to 0 (kernel_ir.Ops.CAST), said here in as many words
            lo, hi = (self.literal(dst, v) for v in _int_range(dst))
            return self.use(f"mt_ftoi<{self.d.type(dst)}>({x}, {lo}, {hi})")
        return self.d.cast(x, src, dst)

    def level_of(self, u: UOp, want: int) -> int:
        return want if u.per_element else _KERNEL

    def emit(self, level: int, line: str) -> None:
        self.level_lines[level].append(line)

    def expr(self, u: UOp, level: int) -> str:
        """The C expression (usually a temporary's name) of ``u`` at ``level``."""
        level = self.level_of(u, level)
        if (hit := self.bound[level].get(u)) is not None:
            return hit
        if u.op is Ops.CONST:
            return self.literal(u.dtype, u.arg)
        if u.op is Ops.SPECIAL:
            raise AssertionError(f"index variable {u.arg[0]} not bound at level {level}")
        if u.op is Ops.LOAD:
            text = self.load(u, level)
        elif u.op is Ops.KEEP:
            text = self.keep(u, level)
        elif u.op is Ops.REDUCE:
            raise AssertionError("a reduction is read before its pass finished")
        elif u.op is Ops.BLOCK_SUM:
            # only the stores after a block's last row read it: this element's register
            return self.block_slot(u)
        else:
            args = [self.expr(s, level) for s in u.src]
            if u.op is Ops.CAST:
                text = self.cast(args[0], u.src[0].dtype, u.dtype)
            else:
                text = self.code(u.op, u.src[0].dtype if u.op is not Ops.WHERE else u.dtype,
                                 args)
            name = self.tmp()
            self.emit(level, f"const {self.d.type(u.dtype)} {name} = {text};")
            text = name
        self.bound[level][u] = text
        return text

    def buffer(self, p: Param) -> str:
        return p.name

    def load(self, u: UOp, level: int) -> str:
        p: Param = u.src[0].arg
        T = self.d.type(p.dtype)
        access = u.arg.access
        if u in self.resident and u in self.loaded:
            return self.slot(u)
        if access is Access.VECTOR:
            vec = self.chunk_vector_load(u)
            text = self.d.vector_lane.format(v=vec, l="mt_l")
        elif access is Access.UNIFORM:
            if (name := self.bound[_CHUNK].get(u)) is None:
                index = self.expr(u.src[1], _CHUNK)
                name = self.tmp()
                self.emit(_CHUNK, f"const {T} {name} = {self.read(p, index)};")
                self.bound[_CHUNK][u] = name
            text = name
        else:
            index = self.expr(u.src[1], level)
            name = self.tmp()
            self.emit(level, f"const {T} {name} = {self.read(p, index)};")
            text = name
        if u in self.resident:
            # first pass that reads it: fill the register array, later passes reuse it
            self.emit(_LANE, f"{self.slot(u)} = {text};")
            self.loaded_now.add(u)
        return text

    def slot(self, u: UOp) -> str:
        """Where a resident load or kept value lives for this thread's current element: its
        register, or its own slot of a threadgroup array (threads interleaved: no bank conflicts).
        A split staged load's first elements are registers, the rest slots: the chunk loop is
        written once for each range (`part`), so the choice is made here, never in the kernel."""
        element = self.reg_index()
        if u not in self.staged:
            return f"{self.resident[u]}[{element}]"
        split = self.s.staged_in_registers
        if not split:
            return self.own_slot(self.resident[u], element)
        assert self.part is not None, "a split staged load read outside a chunk loop"
        self.split_read = True
        if self.part == "registers":
            return f"{self.split[u]}[{element}]"
        return self.own_slot(self.resident[u], f"{element} - {split}")

    def own_slot(self, array: str, element: str) -> str:
        """This thread's ``element`` of a threadgroup array holding every thread's elements,
        threads interleaved (no bank conflicts, no thread reads another's)."""
        return f"{array}[({element}) * {self.s.threadgroup_size} + mt_tid]"

    def block_slot(self, u: UOp) -> str:
        """This thread's current element of block sum ``u``: its register, or its own slot of a
        threadgroup array."""
        if self.s.block_sums_shared:
            return self.own_slot(self.block_acc[u], self.reg_index())
        return f"{self.block_acc[u]}[{self.reg_index()}]"

    def keep(self, u: UOp, level: int) -> str:
        """A kept value: computed and saved by the first pass that reads it, read back after."""
        if u in self.loaded:
            return self.slot(u)
        text = self.expr(u.src[0], level)
        self.emit(_LANE, f"{self.slot(u)} = {text};")
        self.loaded_now.add(u)
        return text

    def read(self, p: Param, index: str) -> str:
        if p.shape == ():
            return self.d.scalar_input.format(name=p.name)
        return f"{p.name}[{index}]"

    def chunk_vector_load(self, u: UOp) -> str:
        if (name := self.bound[_CHUNK].get(u)) is not None:
            return name
        p: Param = u.src[0].arg
        V = self.s.vector_width
        vt = self.use(self.d.vector_type.format(T=self.d.type(p.dtype), N=V))
        index = self.expr(u.src[1], _CHUNK)
        name = self.tmp("mt_v")
        # reinterpret_cast (not a C cast) may not drop the address space: checkers catch that
        self.emit(_CHUNK, f"const {vt} {name} = *reinterpret_cast<const {self.d.global_space}"
                          f"{vt}*>({p.name} + {index});")
        self.bound[_CHUNK][u] = name
        return name

    def reg_index(self) -> str:
        s = self.s
        c = "mt_c" if s.chunks > 1 else ""
        lane = "mt_l" if s.vector_width > 1 else ""
        if c and lane:
            return f"mt_c * {s.vector_width} + mt_l"
        return c or lane or "0"

    # -- statements -----------------------------------------------------------------------------
    def store(self, st: UOp, level: int) -> None:
        p: Param = st.src[0].arg
        value = self.expr(st.src[2], level)
        if st.arg.access is Access.VECTOR:
            vec = self.store_vectors.get(st)
            if vec is None:
                vt = self.use(self.d.vector_type.format(T=self.d.type(p.dtype),
                                                        N=self.s.vector_width))
                vec = self.store_vectors[st] = self.tmp("mt_o")
                self.emit(_CHUNK, f"{vt} {vec};")
                index = self.expr(st.src[1], _CHUNK)
                self.chunk_post.append(f"*reinterpret_cast<{self.d.global_space}{vt}*>("
                                       f"{p.name} + {index}) = {vec};")
            self.emit(_LANE, f"{self.d.vector_lane.format(v=vec, l='mt_l')} = {value};")
            return
        assert st.arg.access is not Access.UNIFORM, "lanes never share an output element"
        index = self.expr(st.src[1], level)
        self.emit(level, f"{p.name}[{index}] = {value};")


def _used(decls: list[str], lines: list[str]) -> list[str]:
    """The declarations whose variable the lines read (scoped index variables)."""
    text = "\n".join(lines)
    return [d for d in decls if re.search(rf"\b{_DECL.match(d).group(1)}\b", text)]


def _indent(lines: list[str], n: int = 1) -> list[str]:
    return ["  " * n + ln if ln else ln for ln in lines]


def _loop(header: str, body: list[str], unroll: str | None) -> list[str]:
    return ([unroll] if unroll else []) + [header + " {"] + _indent(body) + ["}"]


class _KernelWriter(_Renderer):
    """Lays out passes over the index space; shared by pointwise and row kernels."""

    def element_block(self, body: Callable[[], None]) -> list[str]:
        """One chunk: chunk-level prologue (vector loads), the lane loop, chunk epilogue."""
        s = self.s
        self.bound[_CHUNK] = dict(self.chunk_bindings)
        self.bound[_LANE] = dict(self.lane_bindings)
        self.level_lines[_CHUNK], self.level_lines[_LANE] = [], []
        self.chunk_post, self.store_vectors = [], {}
        self.loaded_now: set[UOp] = set()
        body()
        self.loaded |= self.loaded_now
        lane_lines = _used(self.lane_prologue, self.level_lines[_LANE]) + self.level_lines[_LANE]
        if s.vector_width > 1:
            lane_lines = _loop(f"for (int mt_l = 0; mt_l < {s.vector_width}; ++mt_l)",
                               lane_lines, self.d.unroll)
        return self.level_lines[_CHUNK] + lane_lines + self.chunk_post


def _render_pointwise(r: _KernelWriter) -> list[str]:
    s, d = r.s, r.d
    V = s.vector_width
    idx = next((u for u in r.k.toposort if u.op is Ops.SPECIAL and u.arg[0] == "idx"), None)
    start = f"static_cast<{r.idx_t}>({d.thread_in_grid})" + (f" * {V}" if V > 1 else "")
    r.lines.append(f"const {r.idx_t} mt_i0 = {start};")
    r.chunk_bindings = {idx: "mt_i0"} if idx is not None else {}
    r.lane_bindings = {idx: "mt_idx" if V > 1 else "mt_i0"} if idx is not None else {}
    r.lane_prologue = [f"const {r.idx_t} mt_idx = mt_i0 + mt_l;"] if V > 1 and idx else []

    def body():
        for st in _stores(r.k):
            r.store(st, _LANE)

    block = r.element_block(body)
    guard = (s.elements // V) % s.threadgroup_size != 0  # CUDA launches whole blocks
    return r.lines + (["if (mt_i0 < %d) {" % s.elements] + _indent(block) + ["}"]
                      if guard else block)


def _stores(k: UOp) -> list[UOp]:
    return [u for u in k.src if u.op is Ops.STORE]


def _reductions_by_pass(k: UOp) -> dict[int, list[UOp]]:
    out: dict[int, list[UOp]] = {}
    for u in k.toposort:
        if u.op is Ops.REDUCE:
            out.setdefault(u.reduce_pass, []).append(u)
    return out


def _render_row(r: _KernelWriter) -> list[str]:
    s, d = r.s, r.d
    T, G, V, C, W, L, R = (s.threads_per_row, s.rows_per_group, s.vector_width, s.chunks,
                           s.simd_width, s.row_length, s.rows)
    it = r.idx_t
    specials = {u.arg[0]: u for u in r.k.toposort if u.op is Ops.SPECIAL}
    lines = r.lines
    lines.append(f"const int mt_tid = static_cast<int>({d.thread_in_group});")
    if s.interleaved:
        lines.append(f"const int mt_lane = mt_tid / {G};")
        lines.append(f"const int mt_row_raw = static_cast<int>({d.group_in_grid}) * {G} + "
                     f"mt_tid % {G};")
    elif G > 1:
        lines.append(f"const int mt_lane = mt_tid % {T};")
        lines.append(f"const int mt_row_raw = static_cast<int>({d.group_in_grid}) * {G} + "
                     f"mt_tid / {T};")
    else:
        lines.append("const int mt_lane = mt_tid;")
        lines.append(f"const int mt_row_raw = static_cast<int>({d.group_in_grid});")
    B = s.rows_per_block
    active = R % G != 0
    row_decl = f"const {it} mt_row = static_cast<{it}>(mt_row_raw) * {B} + mt_rb;"
    if B > 1:
        assert G == 1 and not active, "a threadgroup walking a block of rows takes one at a time"
    elif active:
        # rows past the end recompute the last row (their SIMD lanes still take part in the
        # shuffles) and store nothing
        lines.append(f"const bool mt_active = mt_row_raw < {R};")
        lines.append(f"const {it} mt_row = mt_active ? mt_row_raw : {R - 1};")
    else:
        lines.append(f"const {it} mt_row = mt_row_raw;")
    if T > W:  # (unused in an interleaved row: _drop_dead removes them)
        lines.append(f"const int mt_warp = mt_tid / {W};")
        lines.append(f"const int mt_wlane = mt_tid % {W};")
    if "row" in specials:
        r.bound[_KERNEL][specials["row"]] = "mt_row"
    col = specials.get("col")
    r.chunk_bindings = {col: "mt_col0"} if col is not None else {}
    r.lane_bindings = {col: "mt_col" if V > 1 else "mt_col0"} if col is not None else {}
    r.lane_prologue = [f"const {it} mt_col = mt_col0 + mt_l;"] if V > 1 and col else []

    # inputs and computed values that stay on chip between passes: one register array each
    split = s.staged_in_registers
    for u in r.k.toposort:
        if u.op is Ops.LOAD and u.arg.resident and u.src[0].arg.name in s.staged:
            name = r.tmp("mt_s")
            r.resident[u] = name
            r.staged.add(u)
            if split:
                r.split[u] = r.tmp("mt_r")
                lines.append(f"{d.type(u.dtype)} {r.split[u]}[{split}];  // {u.src[0].arg.name}, "
                             f"elements [0, {split}) of each thread in registers across passes")
            lines += _threadgroup_array(r, u.dtype, name, (C * V - split) * s.threadgroup_size,
                                        f"{u.src[0].arg.name}, "
                                        + (f"elements [{split}, {C * V}) of each thread " if split
                                           else "")
                                        + "staged in threadgroup memory across passes")
        elif u.op is Ops.LOAD and u.arg.resident:
            name = r.tmp("mt_r")
            r.resident[u] = name
            held = ("loaded in pass 1 for the write pass" if u.src[0].arg.name in s.prefetched
                    else "resident in registers across passes")
            lines.append(f"{d.type(u.dtype)} {name}[{C * V}];  // {u.src[0].arg.name}, {held}")
        elif u.op is Ops.KEEP:
            name = r.tmp("mt_k")
            r.resident[u] = name
            lines.append(f"{d.type(u.dtype)} {name}[{C * V}];  // {u.src[0].op.name.lower()}, "
                         f"computed once and kept in registers")

    # block column sums: one register array each, added to by every row of the block
    blocks = [u for u in r.k.toposort if u.op is Ops.BLOCK_SUM]
    for u in blocks:
        name = r.block_acc[u] = r.tmp("mt_b")
        if s.block_sums_shared:
            lines += _threadgroup_array(r, u.dtype, name, C * V * s.threadgroup_size,
                                        "block column sums, each thread its own slots")
            lines.append(f"for (int mt_i = 0; mt_i < {C * V}; ++mt_i) "
                         f"{r.own_slot(name, 'mt_i')} = {r.literal(u.dtype, 0)};")
        else:
            lines.append(f"{d.type(u.dtype)} {name}[{C * V}] = {{}};  // block column sums")
    hoisted = [u for u in r.resident if u.op is Ops.LOAD and B > 1 and s.hoist_block_loads
               and row_independent(u)]

    prefetched = [u for u in r.resident if u.op is Ops.LOAD and u.src[0].arg.name in s.prefetched]
    by_pass = _reductions_by_pass(r.k)
    n_reduce_passes = max(by_pass, default=-1) + 1
    block_stores = [st for st in _stores(r.k)
                    if any(x.op is Ops.BLOCK_SUM for x in st.src[2].toposort)]
    elem_stores = [st for st in _stores(r.k)
                   if st.arg.access is not Access.HOISTED and st not in block_stores]
    row_stores = [st for st in _stores(r.k) if st.arg.access is Access.HOISTED]
    guard_col = L % (T * V) != 0
    # register arrays indexed by the chunk stay registers only in a fully unrolled loop
    unroll_chunks = d.unroll if (set(r.resident) - r.staged) or r.split or blocks else (
        d.unroll_by.format(n=s.unroll) if s.unroll > 1 and C > 1 else None)

    def chunk_range(body, first: int, last: int) -> list[str]:
        block = r.element_block(body)
        col0 = (f"(static_cast<{it}>(mt_c) * {T} + mt_lane)" if C > 1 else
                f"static_cast<{it}>(mt_lane)")
        col0 = f"{col0} * {V}" if V > 1 else col0
        inner = ([f"if (mt_col0 < {L}) {{"] + _indent(block) + ["}"]) if guard_col else block
        inner = _used([f"const {it} mt_col0 = {col0};"], inner) + inner
        if C > 1:
            return _loop(f"for (int mt_c = {first}; mt_c < {last}; ++mt_c)", inner, unroll_chunks)
        return ["{"] + _indent(inner) + ["}"]

    def chunk_loop(body) -> list[str]:
        if not r.split:
            return chunk_range(body, 0, C)
        # A split staged load: the chunks whose elements are its registers, then the rest, each
        # loop written with its own slots; both fill what the pass loads first. A pass that
        # reads no split load is written again as one loop.
        before, filled, out = set(r.loaded), set(), []
        r.split_read = False
        for first, last, part, where in ((0, split // V, "registers", "registers"),
                                         (split // V, C, "threadgroup", "threadgroup memory")):
            r.loaded, r.part = set(before), part
            out += [f"// elements [{first * V}, {last * V}): staged inputs in {where}"]
            out += chunk_range(body, first, last)
            filled |= r.loaded
            if not r.split_read:
                r.loaded, r.part = set(before), None
                return chunk_range(body, 0, C)
        r.loaded, r.part = filled, None
        return out

    if hoisted:
        # loads the same for every row of the block (a norm's weight): read once, before them
        lines.append("// loaded once for the block's rows")

        def fill_body():
            for u in hoisted:
                r.expr(u, _LANE)

        lines.extend(chunk_loop(fill_body))
    start = len(lines)  # a threadgroup walking a block of rows repeats what follows per row
    # issued before the row's loads, their latency overlaps them instead of following the
    # reductions' barriers (a load after a barrier waits for memory with nothing in flight)
    if s.hoist_row_loads:
        for u in r.k.toposort:
            if u.op is Ops.LOAD and not u.per_element and u.stage == 0:
                r.expr(u, _KERNEL)

    for p in range(n_reduce_passes):
        reduces = by_pass[p]
        online = {u.src[0]: u for u in reduces if u.arg == "sumexp"}
        aliased = {u: online[u.src[0]] for u in reduces if u.arg == "max" and u.src[0] in online}
        accs: dict[UOp, list[str]] = {}
        kinds = ["max+sumexp (online)" if u.arg == "sumexp" and u.src[0] in
                 {a.src[0] for a in aliased} else u.arg for u in reduces if u not in aliased]
        lines.append(f"// pass {p + 1}: {', '.join(kinds)}")
        for u in reduces:
            if u in aliased:
                continue
            accs[u] = _declare_acc(r, u)

        def body(reduces=reduces, accs=accs, first=p == 0):
            for u in reduces:
                if u in accs:
                    _accumulate(r, u, accs[u])
            if first:  # issued with the row's loads (Schedule.prefetch)
                for u in prefetched:
                    r.expr(u, _LANE)

        lines.extend(chunk_loop(body))
        _combine_across_threads(r, reduces, accs, aliased)

    if elem_stores or blocks:
        lines.append(f"// pass {n_reduce_passes + 1}: "
                     + ", ".join(w for w, on in (("write rows", elem_stores),
                                                 ("add to the block column sums", blocks)) if on))

        def store_body():
            for st in elem_stores:
                r.store(st, _LANE)
            for u in blocks:
                value = r.expr(u.src[0], _LANE)
                r.emit(_LANE, f"{r.block_slot(u)} += {value};")

        block_lines = chunk_loop(store_body)
        if active:
            block_lines = ["if (mt_active) {"] + _indent(block_lines) + ["}"]
        lines.extend(block_lines)
    if row_stores:
        cond = " && ".join(c for c in ("mt_lane == 0" if T > 1 else "",
                                       "mt_active" if active else "") if c)
        body_lines: list[str] = []
        for st in row_stores:
            value = r.expr(st.src[2], _KERNEL)
            index = r.expr(st.src[1], _KERNEL)
            body_lines.append(f"{st.src[0].arg.name}[{index}] = {value};")
        lines.extend((["if (%s) {" % cond] + _indent(body_lines) + ["}"]) if cond else body_lines)
    if B > 1:
        # The rows of the block one after another; the reduction scratch in threadgroup memory
        # is written again by the next row, so its readers finish first.
        per_row = [row_decl] + lines[start:] + ([d.barrier] if T > W else [])
        del lines[start:]
        lines.extend(_loop(f"for (int mt_rb = 0; mt_rb < {B}; ++mt_rb)", per_row, None))
    if block_stores:
        # after the block's last row: its partial sums, at the block's index (row / B)
        r.bound[_KERNEL] = {specials["row"]: "mt_row"} if "row" in specials else {}
        lines.append("// the block's column sums")

        def block_body():
            for st in block_stores:
                r.store(st, _LANE)

        start = len(lines)
        lines.extend(chunk_loop(block_body))  # after its per-row index arithmetic, if any
        first = _used([row_decl.replace(" + mt_rb;", ";")], lines[start:])
        lines[start:] = ["{"] + _indent(first + lines[start:]) + ["}"]
    return lines


def _threadgroup_array(r: _Renderer, dtype: str, name: str, count: int, comment: str) -> list[str]:
    """Declare ``count`` elements of ``dtype`` at the next 16-byte offset of the dialect's
    staging area (declaring the area first, where the dialect has one)."""
    d = r.d
    out = [d.staging_area] if d.staging_area and not r.staging_bytes else []
    out.append(d.staged_array.format(T=d.type(dtype), name=name, count=count,
                                     offset=r.staging_bytes) + f"  // {comment}")
    r.staging_bytes += -(-count * _dtypes.itemsize(dtype) // 16) * 16
    return out


def _identity(r: _Renderer, kind: str, dtype: str) -> str:
    if kind in ("sum", "or"):
        return r.literal(dtype, 0)
    if kind in ("prod", "and"):
        return r.literal(dtype, 1)
    big = {"max": -math.inf, "argmax": -math.inf, "min": math.inf, "argmin": math.inf}[kind]
    if dtype in _dtypes.FLOATING:
        return r.literal(dtype, big)
    info = _int_range(dtype)
    return r.literal(dtype, info[0] if big < 0 else info[1])


def _int_range(dtype: str) -> tuple[int, int]:
    bits = 8 * _dtypes.itemsize(dtype)
    if dtype in _dtypes.SIGNED:
        return -(1 << (bits - 1)), (1 << (bits - 1)) - 1
    return 0, (1 << bits) - 1


def _declare_acc(r: _Renderer, u: UOp) -> list[str]:
    """Per-thread accumulator variables of a reduction, declared before its pass."""
    vdt = u.src[0].dtype
    T = r.d.type(vdt)
    a = r.tmp("mt_acc")
    if u.arg in ("argmax", "argmin"):
        r.lines.append(f"{T} {a} = {_identity(r, u.arg, vdt)};")
        r.lines.append(f"uint32_t {a}_i = 0xffffffffu;")
        return [a, a + "_i"]
    if u.arg == "sqdev":
        zero = r.literal("float32", 0.0)
        r.lines.append(f"float {a} = {zero}, {a}_mu = {zero}, {a}_m2 = {zero}, {a}_s1 = {zero};  "
                       "// count, shift (the lane's first value), sums of (v - shift)^2 and v - shift")
        return [a, a + "_mu", a + "_m2"]
    if u.arg == "sumexp":
        r.lines.append(f"{T} {a} = {_identity(r, 'max', vdt)};  // running max")
        r.lines.append(f"{T} {a}_s = {r.literal(vdt, 0)};  // sum of exp(v - running max)")
        return [a, a + "_s"]
    # the node's own dtype: "and" / "or" keep 1 or 0 whatever their elements' dtype
    r.lines.append(f"{r.d.type(u.dtype)} {a} = {_identity(r, u.arg, u.dtype)};")
    return [a]


def _exp(r: _Renderer, x: str) -> str:
    # every exponent of the running max's combine is a difference with the larger value: <= 0
    return r.code(Ops.EXP_SHIFTED, "float32", [x])


def _arg_take(kind: str, bv: str, bi: str, v: str, i: str) -> str:
    # first extreme wins; a NaN counts as the extreme (MLX's argmax/argmin)
    cmp = ">" if kind == "argmax" else "<"
    return (f"(({bv} != {bv}) ? ({v} != {v} && {i} < {bi}) : "
            f"({v} != {v} || {v} {cmp} {bv} || ({v} == {bv} && {i} < {bi})))")


def _accumulate(r: _Renderer, u: UOp, acc: list[str]) -> None:
    v = r.expr(u.src[0], _LANE)
    if u.arg in ("argmax", "argmin"):
        i = r.expr(u.src[1], _LANE)
        take = r.tmp("mt_take")
        r.emit(_LANE, f"const bool {take} = {_arg_take(u.arg, acc[0], acc[1], v, i)};")
        r.emit(_LANE, f"{acc[0]} = {take} ? {v} : {acc[0]};")
        r.emit(_LANE, f"{acc[1]} = {take} ? {i} : {acc[1]};")
    elif u.arg == "sqdev":
        # Sums of the values shifted by the lane's first one (no division per element, which
        # Welford's update would make the loop's critical path); exact to float32 rounding while
        # the shift is within a few deviations of the mean, which the first value is
        n, shift, s2 = acc
        dv = r.tmp("mt_dv")
        r.emit(_LANE, f"{shift} = {n} == {r.literal('float32', 0.0)} ? {v} : {shift};")
        r.emit(_LANE, f"const float {dv} = {v} - {shift};")
        r.emit(_LANE, f"{n}_s1 += {dv};")
        r.emit(_LANE, f"{s2} += {dv} * {dv};")
        r.emit(_LANE, f"{n} += {r.literal('float32', 1.0)};")
    elif u.arg == "sumexp" and r.s.vector_width > 1 and r.s.online_chunked:
        # One rescale per vector: the lanes' values, their max, then exp(v - new max) each
        # (1 + 1/V exponentials per element, no branch), as MLX's own logsumexp kernel. While
        # the max is -inf every value is -inf: they are shifted by 0 instead (exp(-inf) adds 0,
        # where -inf - -inf would add NaN), one select per vector rather than per element
        # (H200, benchmarks/results/row_registers_h200_online.json against row_registers_h200:
        # cross-entropy bf16 1024x65536 1888 -> 2500 GB/s, 2048x32768 1779 -> 2271, softmax
        # bf16 1024x65536 2269 -> 2578). A sum whose max ends infinite is replaced after the
        # reduction anyway.
        m, s = acc
        V, inf, zero = r.s.vector_width, r.literal("float32", math.inf), r.literal("float32", 0.0)
        vals = r.tmp("mt_sv")
        r.emit(_CHUNK, f"float {vals}[{V}];")
        r.emit(_LANE, f"{vals}[mt_l] = {v};")
        mc, shift = r.tmp("mt_mc"), r.tmp("mt_ms")
        body = [f"float {mc} = {vals}[0];"]
        body += [f"{mc} = {r.use(f'mt_max({mc}, {vals}[{l}])')};" for l in range(1, V)]
        body += [f"{mc} = {r.use(f'mt_max({m}, {mc})')};",
                 f"{s} = ({m} == {mc}) ? {s} : {s} * {_exp(r, f'{m} - {mc}')};",
                 f"const float {shift} = ({mc} == -{inf}) ? {zero} : {mc};"]
        body += [f"{s} += {_exp(r, f'{vals}[{l}] - {shift}')};" for l in range(V)]
        body += [f"{m} = {mc};"]
        r.chunk_post.extend(["{"] + _indent(body) + ["}"])
    elif u.arg == "sumexp":
        m, s = acc
        one = r.literal("float32", 1.0)
        r.emit(_LANE, f"if ({v} > {m} || {v} != {v}) {{ {s} = {s} * {_exp(r, f'{m} - {v}')} + "
                      f"{one}; {m} = {v}; }}")
        r.emit(_LANE, f"else {{ {s} += ({v} == {m}) ? {one} : {_exp(r, f'{v} - {m}')}; }}")
    else:
        r.emit(_LANE, f"{acc[0]} = {r.use(_COMBINE[u.arg].format(a=acc[0], b=v))};")


def _combine_step(r: _Renderer, u: UOp, acc: list[str], other: list[str]) -> list[str]:
    """Merge another thread's partial (``other``) into this thread's (``acc``)."""
    if u.arg in ("argmax", "argmin"):
        take = _arg_take(u.arg, acc[0], acc[1], other[0], other[1])
        return [f"const bool mt_take = {take};",
                f"{acc[0]} = mt_take ? {other[0]} : {acc[0]};",
                f"{acc[1]} = mt_take ? {other[1]} : {acc[1]};"]
    if u.arg == "sqdev":  # Chan, Golub & LeVeque's merge; a thread that saw nothing adds nothing
        n, mu, m2 = acc
        on, omu, om2 = other
        zero = r.literal("float32", 0.0)
        return [f"const float mt_n = {n} + {on};",
                f"const float mt_d = {omu} - {mu};",
                f"const float mt_f = mt_n > {zero} ? {on} / mt_n : {zero};",
                f"{mu} += mt_d * mt_f;",
                f"{m2} += {om2} + mt_d * mt_d * {n} * mt_f;",
                f"{n} = mt_n;"]
    if u.arg == "sumexp":
        m, s = acc
        om, os = other
        one = r.literal("float32", 1.0)
        return [f"const float mt_m = {r.use(f'mt_max({m}, {om})')};",
                f"{s} = {s} * ({m} == mt_m ? {one} : {_exp(r, f'{m} - mt_m')}) + "
                f"{os} * ({om} == mt_m ? {one} : {_exp(r, f'{om} - mt_m')});",
                f"{m} = mt_m;"]
    return [f"{acc[0]} = {r.use(_COMBINE[u.arg].format(a=acc[0], b=other[0]))};"]


def _shuffle_tree(r: _Renderer, u: UOp, acc: list[str], width: int) -> list[str]:
    """Butterfly over ``width`` lanes (a power of two): afterwards every lane holds the total."""
    if width <= 1:
        return []
    wide = [_dtypes.itemsize(_acc_type(u, k)) > 4 for k in range(len(acc))]
    if u.arg in r.d.simd_reduce and width == r.s.simd_width and not any(wide):
        return [f"{acc[0]} = {r.d.simd_reduce[u.arg].format(x=acc[0])};"]
    other = [f"mt_x{k}" for k in range(len(acc))]
    body = [f"const {r.d.type(_acc_type(u, k))} {o} = "
            + (r.use(f"mt_shuffle64({a}, mt_o)") if w else r.d.shuffle_xor.format(x=a, o="mt_o"))
            + ";" for k, (a, o, w) in enumerate(zip(acc, other, wide))]
    body += _combine_step(r, u, acc, other)
    return _loop(f"for (int mt_o = {width // 2}; mt_o > 0; mt_o >>= 1)", body, r.d.unroll)


def _acc_type(u: UOp, k: int) -> str:
    if u.arg in ("argmax", "argmin") and k == 1:
        return "uint32"
    if u.arg == "sqdev":
        return "float32"
    return u.src[0].dtype if u.arg in ("argmax", "argmin", "sumexp") else u.dtype


def _combine_across_threads(r: _Renderer, reduces: list[UOp], accs: dict[UOp, list[str]],
                            aliased: dict[UOp, UOp]) -> None:
    lines = r.lines
    for u, acc in accs.items():
        if u.arg == "sqdev":  # each lane's shifted sums become its mean and squared deviations
            n, mu, m2 = acc
            zero = r.literal("float32", 0.0)
            lines.extend([f"if ({n} > {zero}) {{",
                          f"  const float mt_q = {n}_s1 / {n};",
                          f"  {mu} += mt_q;",
                          f"  {m2} -= {n}_s1 * mt_q;",
                          f"  {m2} = {m2} > {zero} ? {m2} : {zero};",
                          "}"])
    (_combine_interleaved if r.s.interleaved else _combine_simd)(r, accs)
    for u, acc in accs.items():
        if u.arg == "sumexp":
            # An early -inf never poisons the running sum (a lane at a time counts elements
            # equal to the running max as exp(0) = 1; a vector at a time shifts a -inf max by
            # 0); sum(exp(v - max)) is NaN when the max is infinite (inf - inf), as in MLX's
            # two-pass softmax.
            inf, nan = r.literal("float32", math.inf), r.literal("float32", math.nan)
            lines.append(f"{acc[1]} = ({acc[0]} == {inf} || {acc[0]} == -{inf}) ? {nan} : "
                         f"{acc[1]};")
        r.bound[_KERNEL][u] = acc[1] if u.arg in ("argmax", "argmin") else (
            acc[1] if u.arg == "sumexp" else acc[2] if u.arg == "sqdev" else acc[0])
    for mx_node, online in aliased.items():
        r.bound[_KERNEL][mx_node] = accs[online][0]


def _shared_partials(r: _Renderer, accs: dict[UOp, list[str]], slots: int
                     ) -> list[tuple[UOp, list[str], list[str]]]:
    """(reduction, accumulators, threadgroup arrays of ``slots`` partials, one per accumulator)."""
    stage = []
    for u, acc in accs.items():
        arrays = []
        for k in range(len(acc)):
            sm = r.tmp("mt_sm")
            r.shared_decls.append(f"{r.d.shared} {r.d.type(_acc_type(u, k))} {sm}[{slots}];")
            arrays.append(sm)
        stage.append((u, acc, arrays))
    return stage


def _combine_simd(r: _Renderer, accs: dict[UOp, list[str]]) -> None:
    """Lanes of a row are neighbouring threads: shuffles inside each SIMD-group, then (rows wider
    than one) the SIMD-groups' partials through threadgroup memory and shuffles again."""
    s, lines = r.s, r.lines
    T, W = s.threads_per_row, s.simd_width
    for u, acc in accs.items():
        lines.extend(_shuffle_tree(r, u, acc, min(T, W)))
    if T <= W:
        return
    warps = T // W
    stage = _shared_partials(r, accs, warps)
    lines.append("if (mt_wlane == 0) {")
    for u, acc, arrays in stage:
        lines.extend(_indent([f"{sm}[mt_warp] = {a};" for sm, a in zip(arrays, acc)]))
    lines.append("}")
    # one barrier per pass; each reduction owns its slots, so no barrier guards reuse
    lines.append(r.d.barrier)
    for u, acc, arrays in stage:
        idents = _partial_identities(r, u)
        for sm, a, ident in zip(arrays, acc, idents):
            lines.append(f"{a} = mt_wlane < {warps} ? {sm}[mt_wlane] : {ident};")
        # Over the whole SIMD-group, not just the first `warps` lanes: a narrower butterfly
        # leaves lanes >= its width holding only identities (seen on the H200: 192-thread
        # rows of 3000 gave inf and 0 in lanes 8-31), and every lane reads the result.
        lines.extend(_shuffle_tree(r, u, acc, W))


def _combine_interleaved(r: _Renderer, accs: dict[UOp, list[str]]) -> None:
    """Lanes of an interleaved row sit ``rows_per_group`` threads apart, in different
    SIMD-groups: each thread leaves its partials in threadgroup memory (slot ``mt_tid`` is lane
    ``mt_tid / G`` of row ``mt_tid % G``) and every lane combines its row's in lane order, so all
    of them hold the same total."""
    s, d = r.s, r.d
    T, G = s.threads_per_row, s.rows_per_group
    stage = _shared_partials(r, accs, T * G)
    for u, acc, arrays in stage:
        r.lines.extend(f"{sm}[mt_tid] = {a};" for sm, a in zip(arrays, acc))
    r.lines.append(d.barrier)  # one per pass; each reduction owns its slots
    for u, acc, arrays in stage:
        r.lines.extend(f"{a} = {sm}[mt_tid % {G}];" for sm, a in zip(arrays, acc))
        other = [f"mt_x{k}" for k in range(len(acc))]
        body = [f"const {d.type(_acc_type(u, k))} {o} = {sm}[mt_t * {G} + mt_tid % {G}];"
                for k, (o, sm) in enumerate(zip(other, arrays))]
        r.lines.extend(_loop(f"for (int mt_t = 1; mt_t < {T}; ++mt_t)",
                             body + _combine_step(r, u, acc, other), None))


def _partial_identities(r: _Renderer, u: UOp) -> list[str]:
    vdt = u.src[0].dtype
    if u.arg in ("argmax", "argmin"):
        return [_identity(r, u.arg, vdt), "0xffffffffu"]
    if u.arg == "sumexp":
        return [_identity(r, "max", vdt), r.literal(vdt, 0)]
    if u.arg == "sqdev":
        return [r.literal("float32", 0.0)] * 3
    return [_identity(r, u.arg, u.dtype)]


def _describe(s) -> list[str]:
    lines = [f"// mlxtriton {s.describe()}"]
    if s.kind == "row":
        lines.append(f"// thread layout: lane t of a row owns elements (c * {s.threads_per_row}"
                     f" + t) * {s.vector_width} + [0, {s.vector_width}) for c < {s.chunks}")
        if s.interleaved:
            lines.append(f"// interleaved: thread i is lane i / {s.rows_per_group} of row "
                         f"i % {s.rows_per_group} of its threadgroup")
        if s.rows_per_block > 1:
            lines.append(f"// threadgroup b walks rows b * {s.rows_per_block} + [0, "
                         f"{s.rows_per_block}) in turn; block column sums written after them")
    return lines


def render(kernel: UOp, dialect: Dialect | str) -> LoweredKernel:
    """Render a KERNEL node as the body and header of one MLX custom kernel.

    Args:
        kernel: a KERNEL UOp from ``build``.
        dialect: ``"metal"``, ``"cuda"`` or a Dialect table.

    Returns:
        The LoweredKernel: every argument of ``mx.fast.*_kernel`` and of its call.

    Example:
        >>> from mlxtriton.codegen.region import RegionBuilder
        >>> from mlxtriton import hw
        >>> from mlxtriton.codegen.builder import build
        >>> from mlxtriton.codegen.schedule import default
        >>> b = RegionBuilder("double")
        >>> x = b.input((1024,), "float32", "x")
        >>> region = b.build([b.op("Add", x, x)])
        >>> k = render(build(region, default(region, hw.target("h200"))), "cuda")
        >>> k.grid, k.threadgroup
        ((256, 1, 1), (256, 1, 1))
    """
    d = DIALECTS[dialect] if isinstance(dialect, str) else dialect
    s = kernel.arg
    r = _KernelWriter(kernel, d)
    body = _render_pointwise(r) if s.kind == "pointwise" else _render_row(r)
    # an input the region never reads is still a parameter MLX declares; say so to the compiler
    unused = [f"(void){u.arg.name};" for u in kernel.src if u.op is Ops.PARAM]
    source = "\n".join(_describe(s) + r.shared_decls + unused + _drop_dead(body)) + "\n"
    bound = f"{s.launch_bound}, {s.launch_min_groups}" if s.launch_min_groups > 1 else s.launch_bound
    header = _header(d, r.helpers) + (d.launch_bounds.format(bound=bound)
                                      if s.launch_bound else "")
    params = r.params
    ins = [p for p in params if p.role == "input"]
    outs = [p for p in params if p.role == "output"]
    for p in ins:  # MLX adds shape/stride parameters for these names; we never want them
        for suffix in ("_shape", "_strides", "_ndim"):
            assert p.name + suffix not in source, f"source mentions {p.name + suffix}"
    digest = hashlib.sha256((d.name + header + source).encode()).hexdigest()[:12]
    return LoweredKernel(
        target=d.name, name=f"mlxt_{s.name}_{digest}",
        input_names=tuple(p.name for p in ins), output_names=tuple(p.name for p in outs),
        source=source, header=header, ensure_row_contiguous=True,
        grid=(s.grid, 1, 1), threadgroup=(s.threadgroup_size, 1, 1),
        output_shapes=tuple(p.shape for p in outs), output_dtypes=tuple(p.dtype for p in outs),
        input_shapes=tuple(p.shape for p in ins), input_dtypes=tuple(p.dtype for p in ins),
        options=tuple((k, r.staging_bytes if k == d.staging_option else v)
                      for k, v in d.constructor_options), kernel=kernel)


_DECL = re.compile(r"^\s*const [\w:<>, ]+? (mt_\w+) = ")


def _drop_dead(lines: list[str]) -> list[str]:
    """Remove const declarations nobody reads (index variables a schedule does not need)."""
    while True:
        text = "\n".join(lines)
        dead = set()
        for ln in lines:
            m = _DECL.match(ln)
            if m and len(re.findall(rf"\b{m.group(1)}\b", text)) == 1:
                dead.add(ln)
        if not dead:
            return lines
        lines = [ln for ln in lines if ln not in dead]


def _header(d: Dialect, used: set[str]) -> str:
    # helpers that helpers use
    names = set(used)
    changed = True
    while changed:
        changed = False
        for name in list(names):
            for dep in re.findall(r"\bmt_[a-z0-9]+\b", d.helpers.get(name, "")):
                if dep in d.helpers and dep not in names:
                    names.add(dep)
                    changed = True
    order = [n for n in d.helpers if n in names]
    missing = (names & _HELPER_NAMES) - set(d.helpers)
    assert not missing, f"{d.name} has no helper {missing}"
    return d.prelude + "".join(d.helpers[n] + "\n" for n in order)


def template_header(d: Dialect, source: str) -> str:
    """The header of a kernel written as a template (attention, projections): the dialect's
    prelude and the helpers its source names."""
    return _header(d, set(re.findall(r"\bmt_[a-z0-9]+\b", source)) & set(d.helpers))


_HELPER_NAMES = frozenset({"mt_max", "mt_min", "mt_vec", "mt_sign", "mt_iabs", "mt_ipow", "mt_ftoi",
                           "mt_sigmoid", "mt_logaddexp", "mt_log1p", "mt_expm1", "mt_erf",
                           "mt_shuffle64"})


def lower(region: Region, target: str = "metal", schedule: Any = None) -> LoweredKernel:
    """Build and render a region for a dialect in one call: under ``schedule``, or the default
    schedule of the dialect's default chip (`mlxtriton.codegen.lowering.kernel_target`).

    Example:
        >>> from mlxtriton.codegen.region import RegionBuilder
        >>> b = RegionBuilder("rms")
        >>> x = b.input((8, 4096), "bfloat16", "x")
        >>> y = b.op("Softmax", x)
        >>> lower(b.build([y]), "cuda").output_dtypes
        ('bfloat16',)
    """
    from mlxtriton.codegen import schedule as _schedule

    if schedule is None:
        schedule = _schedule.default(region, _schedule.dialect_target(target))
    return render(_build.build(region, schedule), target)
