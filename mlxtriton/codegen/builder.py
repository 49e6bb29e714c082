"""Codegen layer: lower a ``Region`` to one KERNEL node of the kernel IR under a given schedule.

`analyse` lowers a region to stores over its index space once (cached: regions are values):
the ops at coordinates (`_lower_ops`), the index arithmetic (`_index`); `build` then applies a
`mlxtriton.codegen.schedule.Schedule`: which inputs stay on chip, the reductions' form, kept
values, early loads (`_passes`), vector accesses, threads. It chooses nothing itself. May import
the graph layer's dtypes and the codegen IR; never the runtime or the public API.
"""

from __future__ import annotations

import math
import re
import threading
from collections import OrderedDict
from dataclasses import dataclass
from typing import Any

from mlxtriton.codegen import kernel_ir as K
from mlxtriton.codegen._index import Space, index_space, lane_access, lower_index_space
from mlxtriton.codegen._lower_ops import (INT32_LIMIT, Lowering, RegionError, emit_stores, is_float,
                                          param_names)
from mlxtriton.codegen._passes import (ALGEBRA, FAST_EXP, keep_computed, multi_pass_loads, passes,
                                       prefetched_loads, rewrite_reduces)
from mlxtriton.codegen.kernel_ir import Access, Mem, Ops, UOp, map_nodes
from mlxtriton.codegen.region import Input, Region
from mlxtriton.graph import dtypes as _dtypes


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


def _kernel_name(name: str) -> str:
    stem = re.sub(r"[^A-Za-z0-9]", "", name) or "region"
    return stem[:40]


# ---------------------------------------------------------------------------------------------
# the region's analysis: everything about it no schedule changes


@dataclass(frozen=True, eq=False)
class Analysis:
    """A region lowered to stores over its index space, before any schedule: what the schedule
    rules (`mlxtriton.codegen.schedule`) read and `build` starts from."""

    ctx: Lowering
    stores: tuple[UOp, ...]  # index space lowered, reductions not yet rewritten
    space: Space
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
            if u.op is not Ops.LOAD or not is_float(u.dtype):
                continue
            _, coeffs = space.group_coeffs(u.src[1])
            if coeffs.get(space.lane_coord, 0) and not coeffs.get(space.row_coord, 0):
                return True
        return False

    def multi_pass_inputs(self) -> tuple[str, ...]:
        """Inputs several passes over the row read before any schedule's rewrite: those a
        schedule may hold on chip (a rewrite may leave fewer passes)."""
        return tuple(sorted({u.src[0].arg.name for u in multi_pass_loads(list(self.stores))}))


def _is_column_walk(elem: tuple[UOp, ...], space: Space) -> bool:
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


# Analyses by the region's repr: a region equals one whose constants are 0.0 where it has -0.0
# (Python's ==, and its hash, say 0.0 == -0.0 and 1 == 1.0 == True); their reprs differ.
_ANALYSES: "OrderedDict[str, Analysis]" = OrderedDict()
_ANALYSES_HELD = 512
_ANALYSES_LOCK = threading.Lock()


def analyse(region: Region) -> Analysis:
    """Lower a region to stores over its index space, before any schedule (cached: regions are
    values).

    Raises:
        RegionError: the region cannot be one kernel (the message names the op and why).
    """
    key = repr(region)
    with _ANALYSES_LOCK:
        found = _ANALYSES.get(key)
        if found is not None:
            _ANALYSES.move_to_end(key)
            return found
    found = _analyse(region)
    with _ANALYSES_LOCK:
        _ANALYSES[key] = found
        while len(_ANALYSES) > _ANALYSES_HELD:
            _ANALYSES.popitem(last=False)
    return found


def _analyse(region: Region) -> Analysis:
    ctx = Lowering(region)
    stores = list(K.graph_rewrite(UOp(Ops.KERNEL, "void", tuple(emit_stores(ctx)), None),
                                  ALGEBRA).src)
    space = index_space(ctx, stores)
    stores = lower_index_space(ctx, stores, space)
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


def check(a: Analysis, s: Any) -> None:
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
    names = {i for i in param_names(a.region)[0]}
    for n in (*s.registers, *s.staged):
        if n not in names:
            fail(f"{n!r} is not an input (inputs: {', '.join(sorted(names))})")
    if set(s.registers) & set(s.staged):
        fail(f"{sorted(set(s.registers) & set(s.staged))} both in registers and staged")
    split, owned = s.staged_in_registers, -(-(a.length // V) // T) * V
    if split < 0:
        fail(f"{split} staged elements a thread in registers")
    if split and not s.staged:
        fail(f"{split} staged elements a thread in registers, but nothing is staged")
    if split % V:
        fail(f"{split} staged elements a thread in registers: not whole vectors of {V}")
    if split and split >= owned:
        fail(f"{split} staged elements a thread in registers of the {owned} it owns: none left "
             f"to stage (hold the input in registers instead)")


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
        >>> from mlxtriton import hw
        >>> from mlxtriton.codegen.region import RegionBuilder
        >>> from mlxtriton.codegen.schedule import default
        >>> b = RegionBuilder("softmax")
        >>> region = b.build([b.op("Softmax", b.input((64, 1000), "float32", "x"))])
        >>> build(region, default(region, hw.target("h200"))).arg.kind
        'row'
    """
    a = analyse(region)
    check(a, schedule)
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
    stores = rewrite_reduces(stores, named(multi_pass_loads(stores), held), centred=a.column_walk)
    stores = list(K.graph_rewrite(UOp(Ops.KERNEL, "void", tuple(stores), None), FAST_EXP).src)
    resident = named(multi_pass_loads(stores), held)
    split = schedule.staged_in_registers if a.is_row else 0
    if a.is_row and schedule.kept_registers:
        # the registers a split keeps of its staged inputs come out of the same room
        room = schedule.kept_registers - sum(
            -(-split * _dtypes.itemsize(u.dtype) // 4)
            for u in named(multi_pass_loads(stores), set(schedule.staged)))
        stores = keep_computed(stores, resident, chunk_regs, room)
        resident = named(multi_pass_loads(stores), held)
    streamed = set(multi_pass_loads(stores)) - resident
    # each thread stages its own elements and reads back only those (`render._Renderer.own_slot`):
    # whatever the walk, no thread reads another's slots, so staging needs no barrier
    staged = named(streamed, set(schedule.staged)) if a.is_row else set()
    split = split if staged else 0
    streamed -= staged
    resident |= staged
    prefetched = (prefetched_loads(stores, resident, chunk_regs, schedule.kept_registers)
                  if (schedule.prefetch and a.is_row and resident and not staged and not streamed
                      and not interleaved and not a.blocks) else set())

    def mark(node: UOp, src: tuple[UOp, ...], done) -> UOp | None:
        if node.op not in (Ops.LOAD, Ops.STORE):
            return None
        if not (node.per_element or node.src[1].per_element):
            return UOp(node.op, node.dtype, src, Mem(Access.HOISTED))
        return UOp(node.op, node.dtype, src, Mem(lane_access(node, V, space),
                                                 node in resident or node in prefetched))

    marked = UOp(Ops.KERNEL, "void", tuple(map_nodes(stores, mark)), None)
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
            staged=names(staged), staged_in_registers=split, streamed=names(streamed),
            prefetched=names(prefetched),
            kept=sum(u.op is Ops.KEEP for u in marked.toposort),
            rows_per_block=ctx.rows_per_block, block_sums_shared=schedule.block_sums_shared,
            **common)
    else:
        sched = K.BuiltSchedule(kind="pointwise", elements=L,
                                threadgroup_size=schedule.threadgroup_size, **common)
    if sched.grid > INT32_LIMIT:
        raise RegionError(f"{sched.grid} threads exceed MLX's int grid; split the region")
    # inputs no store depends on stay parameters of the kernel (MLX passes every input)
    reached = {u for u in marked.toposort if u.op is Ops.PARAM}
    unused = tuple(p for p in ctx.in_params if p not in reached)
    return UOp(Ops.KERNEL, "void", marked.src + unused, sched)


__all__ = ["Analysis", "RegionError", "ScheduleError", "analyse", "build", "check", "vector_fits"]
