"""Codegen layer: the schedule of a kernel as a value, the legal ones and the default one.

A `Schedule` says how a region's kernel runs: threads per row and rows per threadgroup, vector
width, the walk (a row's lanes side by side, or interleaved across neighbouring rows for a column
reduction), which multi-pass inputs stay in registers or threadgroup memory (the rest is streamed
again by each pass), how many registers kept computed values may take, the launch bound, and how
the passes are written (unroll, early loads). `candidates(region, target)` enumerates the legal
schedules from the device's hard limits; `default(region, target)` picks one by the rules of the
chip's tuning data (`mlxtriton.hw.tuning`); ``builder.build(region, schedule)`` lowers. The tuner
(`mlxtriton.runtime.tuner`) times candidates on the device instead of trusting the rules.
May import the graph layer's dtypes, the hardware layer and the rest of codegen but rendering.
"""

from __future__ import annotations

import functools
import itertools
from dataclasses import asdict, dataclass, fields, replace
from typing import Any

from mlxtriton import hw
from mlxtriton.codegen import _passes as P
from mlxtriton.codegen._index import pow2ceil
from mlxtriton.codegen._lower_ops import param_names
from mlxtriton.codegen.builder import Analysis, RegionError, ScheduleError, analyse, check, vector_fits
from mlxtriton.codegen.kernel_ir import Ops, UOp, graph_rewrite
from mlxtriton.codegen.region import Region
from mlxtriton.graph import dtypes as _dtypes


@dataclass(frozen=True)
class Schedule:
    """How one kernel runs: what ``build`` needs besides the region. Frozen and hashable; its
    fields are plain values, so it is stored as JSON by the tuner's cache.

    Attributes:
        kind: ``"pointwise"`` or ``"row"``: the region's kind.
        vector_width: Elements each lane moves per access (a power of two dividing the row).
        threadgroup_size: Pointwise kernels: threads per threadgroup.
        threads_per_row: Row kernels: threads sharing a row.
        rows_per_group: Row kernels: rows sharing a threadgroup.
        walk: ``"row"``: a row's lanes are neighbouring threads; ``"interleaved"``: neighbouring
            threads take neighbouring rows (a column reduction, whose rows are neighbours in
            memory). Further column strategies are further values.
        simd_width: Lanes of the device's SIMD-group (its reductions' shuffle width).
        registers: Inputs read by several passes that stay in registers between them.
        staged: Inputs read by several passes that stay in threadgroup memory between them,
            each thread in its own slots (whatever the walk: no thread reads another's).
            Every other multi-pass input is read again from memory by each pass (streamed);
            an input a rewrite leaves to one pass is read once whatever is asked.
        staged_in_registers: Of each thread's elements of a staged input, how many (its first,
            whole vectors, fewer than it owns) stay in registers instead: the input split
            between registers and threadgroup memory, so that a threadgroup takes less of each
            and more fit a core (0: all in threadgroup memory). `default` never splits; the
            tuner may.
        kept_registers: Registers per thread that resident inputs and computed values kept
            between passes may take at each pass boundary (0: nothing computed is kept); also
            the room `prefetch` loads within.
        prefetch: Whether inputs only the write pass reads are loaded during the first pass,
            where every multi-pass input stays in registers.
        block_sums_shared: Whether block column sums live in threadgroup memory (else registers).
        launch_bound: Threads per threadgroup declared to the compiler (0: none).
        launch_min_groups: Threadgroups per core the bound leaves room for (0: none).
        unroll: Chunks of a streamed row a thread's loop unrolls.
        online_chunked: Whether an online max-and-sum rescales once per vector (else per element).
        hoist_row_loads: Whether a row's own scalars no reduction feeds are read before its passes.
        hoist_block_loads: Whether what a block's rows share is loaded once, before them.

    Example:
        >>> from mlxtriton import hw
        >>> from mlxtriton.codegen.region import RegionBuilder
        >>> b = RegionBuilder("softmax")
        >>> region = b.build([b.op("Softmax", b.input((64, 4096), "float32", "x"))])
        >>> s = default(region, hw.target("h200"))
        >>> s.threads_per_row, s.vector_width, s.registers
        (256, 4, ('x',))
        >>> s in candidates(region, hw.target("h200"))
        True
    """

    kind: str
    vector_width: int = 1
    threadgroup_size: int = 0
    threads_per_row: int = 1
    rows_per_group: int = 1
    walk: str = "row"
    simd_width: int = 32
    registers: tuple[str, ...] = ()
    staged: tuple[str, ...] = ()
    staged_in_registers: int = 0
    kept_registers: int = 0
    prefetch: bool = False
    block_sums_shared: bool = False
    launch_bound: int = 0
    launch_min_groups: int = 0
    unroll: int = 1
    online_chunked: bool = True
    hoist_row_loads: bool = True
    hoist_block_loads: bool = True

    def as_dict(self) -> dict[str, Any]:
        """The fields as JSON-ready values."""
        return {k: list(v) if isinstance(v, tuple) else v for k, v in asdict(self).items()}

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> Schedule:
        """A schedule from `as_dict`'s form.

        Raises:
            ValueError: a field this version does not know, or one missing.
        """
        known = {f.name for f in fields(cls)}
        if set(data) - known:
            raise ValueError(f"unknown schedule fields {sorted(set(data) - known)}")
        return cls(**{k: tuple(v) if isinstance(v, list) else v for k, v in data.items()})

    def describe(self) -> str:
        """The choices in a line (the fields left at their defaults unsaid)."""
        if self.kind == "pointwise":
            text = f"pointwise: vector {self.vector_width}, threadgroup {self.threadgroup_size}"
        else:
            held = [f"registers {','.join(self.registers)}"] if self.registers else []
            held += [f"staged {','.join(self.staged)}" + (
                f" (first {self.staged_in_registers} elements a thread in registers)"
                if self.staged_in_registers else "")] if self.staged else []
            text = (f"row: {self.threads_per_row} threads/row x {self.rows_per_group} rows, vector "
                    f"{self.vector_width}, {self.walk}; " + ("; ".join(held) or "streamed"))
            if self.kept_registers:
                text += f"; kept {self.kept_registers}"
        base = Schedule(self.kind)
        for name in ("prefetch", "block_sums_shared", "launch_bound", "launch_min_groups", "unroll",
                     "online_chunked", "hoist_row_loads", "hoist_block_loads"):
            if getattr(self, name) != getattr(base, name):
                text += f"; {name} {getattr(self, name)}"
        return text

    def __repr__(self) -> str:
        return f"Schedule({self.describe()})"


# ---------------------------------------------------------------------------------------------
# targets


# The chip each dialect is tuned for when the named chip runs no kernels (the CPU): an M3 for
# Metal, the H200 for CUDA (the machines this project measures on).
DEFAULT_CHIP = {"metal": "m3", "cuda": "h200"}


def kernel_target(chip: Any = "auto", device: Any = None, dialect: str | None = None) -> hw.Target:
    """The target kernels are shaped for: a GPU chip whose rules they follow and a GPU device of
    the dialect they are written in (``target.device.backend``), resolved once and passed down.

    The dialect follows the device (or ``dialect`` when given: rendering for another machine);
    tuning follows ``chip``, or the dialect's default chip where ``chip`` is not a GPU.

    Raises:
        ValueError: an unknown dialect.

    Example:
        >>> kernel_target("m3", "h200").device.backend, kernel_target("cpu", "cpu").chip.key
        ('cuda', 'm3')
    """
    t = hw.target(chip, device)
    dialect = dialect or t.dialect or "metal"
    if dialect not in DEFAULT_CHIP:
        raise ValueError(f"unknown kernel target {dialect!r}; use 'metal' or 'cuda'")
    chip_profile = t.chip if t.chip.is_gpu else hw.profile(DEFAULT_CHIP[dialect])
    device_profile = t.device if t.device.backend == dialect else chip_profile
    if device_profile.backend != dialect:
        device_profile = hw.profile(DEFAULT_CHIP[dialect])
    return hw.Target(chip=chip_profile, device=device_profile)


def dialect_target(dialect: str) -> hw.Target:
    """The target of a dialect's default chip (`DEFAULT_CHIP`)."""
    return kernel_target(DEFAULT_CHIP.get(dialect, dialect), None, dialect)


# ---------------------------------------------------------------------------------------------
# the numbers the rules read: the target's limits and its tuning data


@dataclass(frozen=True)
class _Numbers:
    simd_width: int
    max_threads: int  # per threadgroup
    max_row_threads: int  # most threads one row takes
    preferred_row_threads: int
    unbounded_threads: int  # largest threadgroup launched without a declared bound
    block_threads_per_core: int
    pointwise_threads: int
    pointwise_vector_bytes: int
    pointwise_min_size: int
    group_threads: int  # threadgroup of short-row kernels (several rows each)
    vector_bytes: int
    max_vector_lanes: int
    pointwise_vector_lanes: int
    short_row_limit: int
    resident_registers: int  # 32-bit registers per thread that may hold row data
    vector_row_share: int
    read_only_row_share: int
    prefetch_store_loads: bool
    max_resident_registers: int  # row data of a row capped at max_row_threads
    kept_registers: int
    threadgroup_memory_bytes: int
    core_threadgroup_memory_bytes: int  # of one core, for all its threadgroups
    cores: int
    tuned: hw.tuning.Tuning


def _tuning(target: hw.Target) -> hw.tuning.Tuning:
    # Rules about a register file one threadgroup shares follow the profile that has one
    # (as hw.params.derive does); the rest follow the chip.
    for p in (target.chip, target.device):
        if p.is_gpu and p.backend == "cuda" and p.registers_per_sm:
            return hw.tuning.tuning(p)
    return hw.tuning.tuning(target.chip)


def _numbers(target: hw.Target, itemsize: int) -> _Numbers:
    p = target.derive(itemsize)
    t = _tuning(target)
    row_data = max(1, p.register_bytes_per_thread // 4)
    return _Numbers(
        simd_width=p.simd_width, max_threads=p.pointwise_threadgroup_size,
        max_row_threads=p.max_row_threads, preferred_row_threads=p.preferred_row_threads,
        unbounded_threads=p.unbounded_threads, block_threads_per_core=p.block_threads_per_core,
        pointwise_threads=p.pointwise_threadgroup_size,
        pointwise_vector_bytes=p.pointwise_elements_per_thread * p.dtype_itemsize,
        pointwise_min_size=p.pointwise_min_size,
        group_threads=p.short_row_threadgroup,
        vector_bytes=p.vector_width * p.dtype_itemsize, max_vector_lanes=p.vector_width,
        pointwise_vector_lanes=p.pointwise_vector_width, short_row_limit=p.short_row_limit,
        resident_registers=row_data,
        vector_row_share=max(1, p.register_bytes_per_thread // p.vector_row_register_bytes),
        read_only_row_share=max(1, p.read_only_row_register_bytes // p.register_bytes_per_thread),
        prefetch_store_loads=p.prefetch_store_loads,
        max_resident_registers=max(1, p.max_row_register_bytes // 4),
        kept_registers=row_data * t.kept_registers_ratio,
        threadgroup_memory_bytes=p.threadgroup_memory_bytes,
        core_threadgroup_memory_bytes=p.core_threadgroup_memory_bytes,
        cores=p.cores, tuned=t)


def numbers(a: Analysis, target: hw.Target) -> _Numbers:
    """The target's numbers for a region's element size."""
    return _numbers(target, a.itemsize)


# Threadgroup memory a row reduction keeps for partials: 8 bytes (two float32 partials, the max
# and the sum of an online softmax) per SIMD-group, where a row spans several (rows within one
# SIMD-group reduce by shuffles alone: what the renderer allocates).
_SCRATCH_BYTES_PER_SIMDGROUP = 8


def _scratch(n: _Numbers, threads_per_row: int, threads: int) -> int:
    return (_SCRATCH_BYTES_PER_SIMDGROUP * (threads // n.simd_width)
            if threads_per_row > n.simd_width else 0)


def staging_limit(n: _Numbers, threads_per_row: int, threads: int) -> int:
    """Threadgroup memory a threadgroup may stage rows in: the limit less the scratch."""
    return max(0, n.threadgroup_memory_bytes - _scratch(n, threads_per_row, threads))


def _staging_shared(n: _Numbers, threads_per_row: int, threads: int) -> int:
    """Staging that still leaves two threadgroups per core."""
    return max(0, min(n.threadgroup_memory_bytes, n.core_threadgroup_memory_bytes // 2)
               - 2 * _scratch(n, threads_per_row, threads))


# ---------------------------------------------------------------------------------------------
# the default schedule: today's rules over the tuning data


def _column_threads(R: int, L: int, threads: int, n: _Numbers) -> tuple[int, int]:
    """(threads per row, rows per threadgroup) of a column reduction over R rows of L elements
    whose rows are neighbours in memory, in threadgroups of at most ``threads``: a SIMD-group's
    worth of neighbouring rows per threadgroup (one coalesced access per lane step), fewer (down
    to ``column_min_group``) while that leaves fewer threadgroups than half the cores, and each
    row split among as many lanes as the threadgroup holds (each reducing at least
    ``column_lane_elements``), combined through threadgroup memory."""
    t = n.tuned
    G = min(n.simd_width, pow2ceil(R))
    while G > t.column_min_group and 2 * -(-R // G) < n.cores:
        G //= 2
    T = 1
    while 2 * T * G <= threads and L >= 2 * T * t.column_lane_elements:
        T *= 2
    if T == 1:  # short columns: a thread each, as many to a threadgroup as short rows take
        return 1, min(n.group_threads, R)
    return T, G


def _held_column(a: Analysis, n: _Numbers) -> tuple[int, int, int] | None:
    """(threads per column, columns per threadgroup, registers a lane's share takes) of a column
    reduction read in several passes that holds its column in registers: ``column_held_elements``
    a lane, within ``column_held_threads`` per threadgroup; None where the column is longer than
    that many lanes hold, or the rule is off."""
    t = n.tuned
    if not t.column_held_threads or a.length < 2 * n.simd_width:
        return None
    T = pow2ceil(-(-a.length // t.column_held_elements))
    if T > t.column_held_threads:
        return None
    G = max(1, min(t.column_held_threads // T, n.simd_width, pow2ceil(a.rows)))
    share = -(-a.length // T)  # elements a lane holds
    itemsize = max((_dtypes.itemsize(u.dtype) for u in a.elem if u.op is Ops.LOAD), default=4)
    return T, G, -(-share * itemsize // 4)


def _threads_per_row(a: Analysis, V: int, n: _Numbers, one_pass: bool) -> tuple[int, int]:
    """Threads per row, and the cap they met (where a thread holds its larger share of the row).

    The row stays in registers in its own type (32-bit registers hold two bfloat16 elements).
    Rows up to ``short_row_limit`` that fit a SIMD-group's registers take one SIMD-group (no
    threadgroup memory, no barriers); longer ones a threadgroup, in whole SIMD-groups, each thread
    owning about as many elements as its registers may cache, past ``preferred_row_threads``
    only for a row that misses their registers and is read in several passes."""
    W, L = n.simd_width, a.length
    vectors = L // V
    if vectors <= W:
        return pow2ceil(vectors), n.max_row_threads  # tiny rows: several share a SIMD-group
    itemsize = a.row_itemsize
    registers, share = n.resident_registers, 1
    if n.vector_row_share > 1 and not one_pass and a.reads_row_vector():
        share = n.vector_row_share
        registers = max(1, registers // share)
    per_thread = max(1, registers * 4 // itemsize)
    if L <= n.short_row_limit and -(-vectors // W) * V <= per_thread:
        return W, n.max_row_threads
    want = -(-L // per_thread)
    want = -(-want // W) * W  # whole SIMD-groups
    cap = min(n.max_threads, n.max_row_threads) // W * W
    preferred = min(cap, n.preferred_row_threads // W * W)
    past = n.tuned.vector_row_past_preferred and itemsize < 4
    held = n.max_resident_registers // (share if past else 1)
    if one_pass or -(-L // preferred) <= held:
        cap = preferred
    return max(W, min(cap, want)), cap


def _reads_half_rows_only(a: Analysis, n: _Numbers) -> bool:
    """Whether a row kernel of a half type writes nothing per element (a loss: the rows are
    read, one value per row written) over rows in the tuning data's ``read_only_half_rows``,
    its rows filling every core ``read_only_rows_per_core`` times (not a split reduction's
    first level, whose few hundred segments would leave cores empty)."""
    low, high = n.tuned.read_only_half_rows
    if not low < a.length <= high or a.rows < n.tuned.read_only_rows_per_core * n.cores:
        return False
    return not a.writes_rows and a.row_itemsize < 4


def plan_residency(stores: list[UOp], chunk_regs, budget: int) -> tuple[set[UOp], set[UOp]]:
    """Loads read by several passes: keep the most-reused in registers within the budget (a
    block's shared weight too is ranked after the row's own inputs:
    benchmarks/results/block_sums_h200.json)."""
    multi = P.multi_pass_loads(stores)
    resident: set[UOp] = set()
    used = 0
    for u in sorted(multi, key=lambda u: (-len(multi[u]), chunk_regs(u), u.src[0].arg.slot)):
        if used + chunk_regs(u) <= budget:
            resident.add(u)
            used += chunk_regs(u)
    return resident, set(multi) - resident


def _plan_staging(stores: list[UOp], streamed: set[UOp], group_bytes, budget: int,
                  shared_budget: int, least_reads: int) -> set[UOp]:
    """Loads that missed the registers: stage in threadgroup memory those that fit ``budget``
    bytes and that streaming would read at least ``least_reads`` times, or twice when all staged
    fit ``shared_budget`` (two threadgroups per core), so later passes read them on chip."""
    reads = P.pass_loads(stores)
    total = sum(group_bytes(u) for u in streamed if len(reads.get(u, ())) >= 2)
    least = 2 if total <= shared_budget else least_reads
    staged: set[UOp] = set()
    used = 0
    for u in sorted((u for u in streamed if len(reads.get(u, ())) >= least),
                    key=lambda u: (group_bytes(u), u.src[0].arg.slot)):
        if used + group_bytes(u) <= budget:
            staged.add(u)
            used += group_bytes(u)
    return staged


def _names(loads) -> tuple[str, ...]:
    return tuple(sorted({u.src[0].arg.name for u in loads}))


def _render_defaults(t: hw.tuning.Tuning) -> dict[str, Any]:
    return dict(unroll=t.stream_unroll, online_chunked=t.online_chunked,
                hoist_row_loads=t.hoist_row_loads, hoist_block_loads=t.hoist_block_loads)


def default(region: Region, target: hw.Target, on_chip: bool = True) -> Schedule:
    """The schedule the rules pick for ``region`` on ``target`` (`kernel_target`), following the
    chip's tuning data. With ``on_chip`` False, multi-pass inputs are streamed (what a region
    gets without the ``cache`` pass).

    Raises:
        RegionError: the region cannot be one kernel.

    Example:
        >>> from mlxtriton import hw
        >>> from mlxtriton.codegen.region import RegionBuilder
        >>> b = RegionBuilder("softmax")
        >>> region = b.build([b.op("Softmax", b.input((64, 4096), "bfloat16", "x"))])
        >>> default(region, hw.target("h200")).threads_per_row  # 32 bf16 elements a thread
        128
    """
    a = analyse(region)
    return _default(a, numbers(a, target), on_chip)


def _layout(a: Analysis, n: _Numbers, several_passes: bool | None = None):
    """(V, T, G, interleaved, the cap T met, the numbers as the row's kind adjusts them): the
    default's threads and vector, for the region as it is or (``several_passes``) as if its
    rows were read in several passes."""
    t = n.tuned
    stores = list(a.stores)
    R, L = a.rows, a.length
    W = n.simd_width
    most_threads = min(n.max_threads, n.max_row_threads)  # per threadgroup
    interleaved = False
    row_cap = n.max_row_threads
    if not a.is_row:
        V = 1 if L < n.pointwise_min_size else _widest_vector(
            a, n.pointwise_vector_lanes, n.pointwise_vector_bytes, t.wide_small_operands)
        return V, 1, 1, False, row_cap, n
    if a.column_walk:
        # A one-pass column kernel keeps no row in registers: the threadgroup maximum, or
        # column_centred_threads where a one-pass variance makes it one pass; a multi-pass one
        # holds its column in registers where column_held_elements a lane fit
        # column_held_threads, else preferred_row_threads streaming it.
        V = 1
        one_pass = (P.passes(P.rewrite_reduces(stores, set(), centred=True)) == 1
                    if several_passes is None else not several_passes)
        held = _held_column(a, n) if not one_pass else None
        if held is not None:
            T, G, registers = held
            n = replace(n, resident_registers=max(n.resident_registers, registers))
        else:
            threads = n.max_threads if one_pass else min(n.max_row_threads, n.preferred_row_threads)
            if one_pass and P.passes(P.rewrite_reduces(stores, set())) > 1:
                threads = min(threads, t.column_centred_threads)
            T, G = _column_threads(R, L, threads, n)
        interleaved = T > 1
    else:
        V = _widest_vector(a, n.max_vector_lanes, n.vector_bytes)
        # a kernel the online max-and-sum can read in one pass takes fewer threads per row
        one_pass = (P.passes(P.rewrite_reduces(stores, set())) == 1 if several_passes is None
                    else not several_passes)
        if n.read_only_row_share > 1 and _reads_half_rows_only(a, n):
            held = n.read_only_row_share * n.resident_registers
            n = replace(n, resident_registers=held, kept_registers=max(n.kept_registers, 2 * held))
        T, row_cap = _threads_per_row(a, V, n, one_pass)
        # Rows sharing a SIMD-group shuffle with a full mask: threadgroups of whole SIMD-groups.
        G = 1 if T > W else max(min(n.group_threads // T, R), -(-W // T) if T > 1 else 1)
    if a.blocks:
        if interleaved:
            raise RegionError("block column sums need a row kernel whose rows are not "
                              "neighbours in memory")
        # one row per threadgroup, walked B rows in sequence; whole SIMD-groups (the
        # reduction shuffles with a full mask), and threads enough that the block sums'
        # registers stay within the tuning data's block_sum_registers per thread
        T, G = max(T, W), 1
        while (2 * T <= most_threads and
               a.blocks * -(-(L // V) // T) * V > t.block_sum_registers):
            T *= 2
    return V, T, G, interleaved, row_cap, n


def _budgets(a: Analysis, n: _Numbers, V: int, T: int, G: int, row_cap: int, on_chip: bool
             ) -> tuple[int, int]:
    """(registers of row data a thread may hold, registers held and kept values may take)."""
    C = -(-(a.length // V) // T) if a.is_row else 1
    budget = n.resident_registers if (a.is_row and on_chip) else 0
    kept_budget = n.kept_registers
    if budget and T >= row_cap and C * V <= n.max_resident_registers:
        # Threads were capped: each holds its larger share of the row, up to
        # max_resident_registers elements, rather than streaming it; kept values get the same
        # room again, or at the most threads half as much. Elements, not registers: the passes
        # compute on them as float32, so a bfloat16 share counts as much as a float32 one.
        share = max((-(-C * V * _dtypes.itemsize(u.dtype) // 4) for u in a.elem if u.op is Ops.LOAD),
                    default=0)
        budget = max(budget, min(n.max_resident_registers, share))
        most_threads = min(n.max_threads, n.max_row_threads)
        kept_budget = max(kept_budget, min(2 * budget, 3 * n.max_resident_registers // 2)
                          if T * G >= most_threads and n.tuned.cap_kept_at_widest else 2 * budget)
    return budget, kept_budget


def holds_rows(region: Region, target: hw.Target) -> bool:
    """Whether the default schedule holds a row of ``region`` in registers when its passes read
    it several times: then a pass more over the row costs no memory traffic (the question a
    forward asks before saving statistics for its backward). A kernel without rows holds them.

    Example:
        >>> from mlxtriton import hw
        >>> from mlxtriton.codegen.region import RegionBuilder
        >>> def logsumexp(n):
        ...     b = RegionBuilder("lse")
        ...     return b.build([b.op("LogSumExp", b.input((8, n), "float32", "x"))])
        >>> holds_rows(logsumexp(4096), hw.target("h200")), holds_rows(logsumexp(65536), hw.target("h200"))
        (True, False)
    """
    a = analyse(region)
    if not a.is_row:
        return True
    V, T, G, _, row_cap, n = _layout(a, numbers(a, target), several_passes=True)
    budget, _ = _budgets(a, n, V, T, G, row_cap, on_chip=True)
    C = -(-(a.length // V) // T)
    return max((-(-C * V * _dtypes.itemsize(u.dtype) // 4) for u in a.elem if u.op is Ops.LOAD),
               default=0) <= budget


def attention_blocks(keys: int, target: hw.Target) -> tuple[int, int]:
    """(key blocks, SIMD groups a block) of the attention kernel over ``keys`` keys: one block
    (one threadgroup walks a row's keys) up to the chip's ``attention_split_keys``."""
    t = _tuning(target)
    if keys <= t.attention_split_keys:
        return 1, t.attention_block_simd_groups
    return t.attention_key_blocks, t.attention_block_simd_groups


def projection_schedule(rows: int, widths: tuple[int, ...], target: hw.Target) -> tuple[int, int, int]:
    """(columns a SIMD group, SIMD groups a threadgroup, vectors a lane in flight) of the
    projection kernel (`mlxtriton.codegen.projection`) for x of ``rows`` rows and weights of
    ``widths`` rows on the target's chip: the chip's columns, halved until they divide every
    width."""
    t = _tuning(target)
    columns = t.projection_columns_one_row if rows == 1 else t.projection_columns
    while any(w % columns for w in widths):
        columns //= 2
    return columns, t.projection_simd_groups, t.projection_unroll


def projection_candidates(rows: int, widths: tuple[int, ...], target: hw.Target
                          ) -> tuple[tuple[int, int, int], ...]:
    """Every legal (columns, SIMD groups, vectors in flight) of the projection kernel for x of
    ``rows`` rows and outputs of ``widths`` grid columns, the chip's `projection_schedule`
    first: columns that divide every width, threadgroups within the device's limit."""
    gpu = target.device if target.device.is_gpu else target.chip
    most = (gpu.max_threads_per_threadgroup or 1024) // 32
    space = [(c, g, u) for c in (1, 2, 4, 8) if not any(w % c for w in widths)
             for g in (2, 4, 8) if g <= most for u in (1, 2, 4)]
    first = projection_schedule(rows, widths, target)
    return (first, *(c for c in space if c != first))


def _default(a: Analysis, n: _Numbers, on_chip: bool) -> Schedule:
    t = n.tuned
    stores = list(a.stores)
    L = a.length
    W = n.simd_width
    most_threads = min(n.max_threads, n.max_row_threads)  # per threadgroup
    V, T, G, interleaved, row_cap, n = _layout(a, n)
    C = -(-(L // V) // T) if a.is_row else 1

    def chunk_regs(u: UOp) -> int:
        return -(-C * V * _dtypes.itemsize(u.dtype) // 4)

    budget, kept_budget = _budgets(a, n, V, T, G, row_cap, on_chip)
    # what does not fit the registers may fit threadgroup memory: each thread stages its own
    # elements there between passes (no thread reads another's, so no barrier); a column
    # reduction's staging, whole or split with registers, is a candidate the rules never pick
    # (slower than the column held in registers: benchmarks/results/column_split_h100.json)
    staging = staging_limit(n, T, T * G) if budget and not interleaved else 0

    def group_bytes(u: UOp) -> int:
        return T * G * C * V * _dtypes.itemsize(u.dtype)

    # Staging comes after the reductions are rewritten: a row the online max-and-sum reads in
    # one pass (cross-entropy) needs nothing on chip.
    resident, _ = plan_residency(stores, chunk_regs, budget)
    registers = _names(resident)
    stores = P.rewrite_reduces(stores, resident, centred=a.column_walk)
    stores = list(graph_rewrite(UOp(Ops.KERNEL, "void", tuple(stores), None), P.FAST_EXP).src)
    resident, streamed = plan_residency(stores, chunk_regs, budget)
    kept = kept_budget if budget else 0
    if kept:
        stores = P.keep_computed(stores, resident, chunk_regs, kept)
        resident, streamed = plan_residency(stores, chunk_regs, budget)
        if (a.is_row and not interleaved and not a.blocks and t.widen_held_rows
                and T * G == n.preferred_row_threads < most_threads
                and P.held_registers(stores, resident, chunk_regs) > 2 * n.max_resident_registers):
            # more held between passes than two threadgroups of preferred_row_threads leave a
            # thread: twice the threads, each holding half
            return _default(a, replace(n, preferred_row_threads=2 * T), on_chip)
    registers = tuple(sorted(set(registers) | set(_names(resident))))
    sums_bytes = a.blocks * T * G * C * V * 4  # float32 block sums, one per element
    # in threadgroup memory (each thread its own slots) when the threadgroup is bounded below
    # what its registers need and the kernel keeps computed values; only threadgroups that fill
    # a core on their own hold them there (they share the threadgroup's limit with staged rows)
    shared_sums = (bool(a.blocks) and sums_bytes <= staging and t.block_sums_shared_when_bounded
                   and T * G > n.unbounded_threads
                   and any(u.op is Ops.KEEP for st in stores for u in st.toposort))
    staged = _plan_staging(stores, streamed, group_bytes, staging - sums_bytes * shared_sums,
                           _staging_shared(n, T, T * G) if staging else 0, t.stage_min_reads)
    streamed -= staged
    resident |= staged
    # loads only the write pass reads go early where every row stays in registers, below the
    # widest threadgroup (benchmarks/results/prefetch_probe_h200.json)
    prefetch = bool(n.prefetch_store_loads and a.is_row and resident and not staged
                    and not streamed and not interleaved and not a.blocks and T * G < most_threads
                    and P.prefetched_loads(stores, resident, chunk_regs, kept_budget))
    threadgroup = T * G if a.is_row else min(n.pointwise_threads, pow2ceil(L // V))
    bound = threadgroup if (threadgroup > n.unbounded_threads or a.blocks) else 0
    return Schedule(
        kind="row" if a.is_row else "pointwise", vector_width=V,
        threadgroup_size=0 if a.is_row else threadgroup,
        threads_per_row=T if a.is_row else 1, rows_per_group=G if a.is_row else 1,
        walk="interleaved" if interleaved else "row", simd_width=W,
        registers=tuple(r for r in registers if r not in _names(staged)) if a.is_row else (),
        staged=_names(staged), kept_registers=kept if a.is_row else 0, prefetch=prefetch,
        block_sums_shared=shared_sums, launch_bound=bound,
        launch_min_groups=n.block_threads_per_core // threadgroup if a.blocks else 0,
        **_render_defaults(t))


def _widest_vector(a: Analysis, lanes: int, max_bytes: int, wide_small: bool = False) -> int:
    """The widest vector (a power of two up to ``lanes``) some per-element access can use,
    within the byte limit for every access that would be vectorised."""
    V = 1 << (max(1, lanes).bit_length() - 1)
    while V > 1 and not vector_fits(a, V, max_bytes, wide_small):
        V //= 2
    return V


# ---------------------------------------------------------------------------------------------
# the legal schedules


def _max_vector_bytes(target: hw.Target) -> int:
    return min(p.max_vector_bytes for p in (target.chip, target.device) if p.is_gpu)


def _pow2s(low: int, high: int) -> list[int]:
    """Powers of two in [low, high]."""
    out, v = [], 1
    while v <= high:
        if v >= low:
            out.append(v)
        v *= 2
    return out


def staged_bytes(a: Analysis, s: Schedule) -> int:
    """Threadgroup memory the schedule's staged inputs and block sums take (as the renderer lays
    them out: 16-byte aligned arrays, one element per thread and element it owns)."""
    if not a.is_row:
        return 0
    C = -(-(a.length // s.vector_width) // s.threads_per_row)
    count = C * s.vector_width * s.threads_per_row * s.rows_per_group
    total = _staged_bytes(a, s.staged, (C * s.vector_width - s.staged_in_registers)
                          * s.threads_per_row * s.rows_per_group)
    if s.block_sums_shared:
        total += a.blocks * (-(-count * 4 // 16) * 16)
    return total


def _staged_bytes(a: Analysis, staged: tuple[str, ...], count: int) -> int:
    """Threadgroup memory of ``count`` elements of each staged input, 16-byte aligned arrays."""
    sizes = dict(zip(param_names(a.region)[0],
                     (_dtypes.itemsize(i.dtype) for i in a.region.inputs)))
    return sum(-(-count * sizes[n] // 16) * 16 for n in staged)


@functools.lru_cache(maxsize=64)
def _partials_bytes(a: Analysis) -> int:
    """Bytes of partial results each thread of an interleaved walk leaves in threadgroup memory
    (`render._combine_interleaved`: a slot per thread and accumulator of every reduction, a max
    that an online max-and-sum computes taking none), the most of the reductions' forms with the
    rows held in registers or not."""
    stores, multi = list(a.stores), set(P.multi_pass_loads(list(a.stores)))
    most = 0
    for resident in (set(), multi):
        rewritten = P.rewrite_reduces(stores, resident, centred=a.column_walk)
        reduces = {u for st in rewritten for u in st.toposort if u.op is Ops.REDUCE}
        online = {u.src[0] for u in reduces if u.arg == "sumexp"}

        def size(u: UOp) -> int:
            value = _dtypes.itemsize(u.src[0].dtype)
            if u.arg == "max" and u.src[0] in online:
                return 0
            return {"argmax": value + 4, "argmin": value + 4, "sumexp": 2 * value,
                    "sqdev": 12}.get(u.arg, _dtypes.itemsize(u.dtype))

        most = max(most, sum(size(u) for u in reduces))
    return most


def legal(region: Region, schedule: Schedule, target: hw.Target) -> str | None:
    """Why ``schedule`` cannot run ``region`` on ``target`` (None: it can): the device's hard
    limits (threads per threadgroup, threadgroup memory, vector bytes, launch bounds), and what
    ``build`` accepts.

    Example:
        >>> from mlxtriton import hw
        >>> from mlxtriton.codegen.region import RegionBuilder
        >>> b = RegionBuilder("softmax")
        >>> region = b.build([b.op("Softmax", b.input((8, 4096), "float32", "x"))])
        >>> s = default(region, hw.target("h200"))
        >>> legal(region, replace(s, threads_per_row=2048), hw.target("h200"))
        'threadgroup of 2048 threads: the device takes at most 1024'
    """
    a = analyse(region)
    n = numbers(a, target)
    s = schedule
    try:
        check(a, s)
    except ScheduleError as e:
        return str(e)
    if s.simd_width != n.simd_width:
        return f"SIMD width {s.simd_width}: the device's is {n.simd_width}"
    threads = s.threads_per_row * s.rows_per_group if a.is_row else s.threadgroup_size
    if threads > n.max_threads:
        return f"threadgroup of {threads} threads: the device takes at most {n.max_threads}"
    lanes = n.max_vector_lanes if a.is_row else n.pointwise_vector_lanes
    if s.vector_width > lanes:
        return f"vector of {s.vector_width} lanes: at most {lanes}"
    if s.vector_width > 1 and not vector_fits(a, s.vector_width, _max_vector_bytes(target),
                                                 wide_small=not a.is_row):
        return f"no access moves {s.vector_width} lanes as one vector within the device's bytes"
    if threads > n.unbounded_threads and s.launch_bound != threads:
        return (f"a threadgroup of {threads} threads must declare its launch bound (above "
                f"{n.unbounded_threads} the compiler may give it more registers than there are)")
    if s.launch_min_groups and not s.launch_bound:
        return "threadgroups per core without a launch bound"
    if a.is_row:
        if s.walk == "row" and a.column_walk and s.threads_per_row > 1:
            return "a column reduction's rows are neighbours in memory: its lanes interleave"
        if s.walk == "interleaved" and not a.column_walk:
            return "an interleaved walk serves a column reduction only"
        if s.threads_per_row <= s.simd_width and s.threads_per_row & (s.threads_per_row - 1):
            return f"{s.threads_per_row} threads per row: rows sharing a SIMD-group take a power of two"
        if s.threads_per_row > s.simd_width and s.threads_per_row % s.simd_width:
            return f"{s.threads_per_row} threads per row: whole SIMD-groups above one"
        if s.threads_per_row > s.simd_width and s.rows_per_group != 1 and s.walk == "row":
            return "a row of several SIMD-groups has its threadgroup to itself"
        used = staged_bytes(a, s)
        room = (max(0, n.threadgroup_memory_bytes - threads * _partials_bytes(a))
                if s.walk == "interleaved" else staging_limit(n, s.threads_per_row, threads))
        if used > room:
            return (f"{used} bytes of threadgroup memory staged: the device leaves {room} beside "
                    f"the reductions' scratch")
    return None


def candidates(region: Region, target: hw.Target, on_chip: bool = True) -> tuple[Schedule, ...]:
    """The legal schedules of ``region`` on ``target``, the default first.

    Every combination of threads per row (powers of two, and the default's), rows per
    threadgroup (for a column reduction: powers of two up to a SIMD-group), vector widths some
    access can use, and for each input several passes read: registers, threadgroup memory or
    streamed (only streamed without ``on_chip``); kept values or none; the write pass's loads
    early or not; and where they change the kernel, the unroll of a streamed row, the online
    rescale, early row loads, shared block loads. Pruned where it cannot pay: registers holding
    more than twice what a capped row holds.

    Raises:
        RegionError: the region cannot be one kernel.

    Example:
        >>> from mlxtriton import hw
        >>> from mlxtriton.codegen.region import RegionBuilder
        >>> b = RegionBuilder("softmax")
        >>> region = b.build([b.op("Softmax", b.input((8, 4096), "float32", "x"))])
        >>> found = candidates(region, hw.target("h200"))
        >>> found[0] == default(region, hw.target("h200")), len(found) > 20
        (True, True)
    """
    a = analyse(region)
    n = numbers(a, target)
    first = _default(a, n, on_chip)
    found = [first] + list(_pointwise_space(a, n, target) if not a.is_row
                           else _row_space(a, n, target, on_chip, first))
    out: dict[Schedule, None] = {}
    for s in found:
        if s not in out and legal(region, s, target) is None:
            out[s] = None
    if first not in out:
        raise AssertionError(f"the default schedule of {region.name} is not legal: "
                             f"{legal(region, first, target)}")
    return tuple(out)


def _bound(threads: int, n: _Numbers, blocks: bool) -> dict[str, int]:
    bounded = threads > n.unbounded_threads or blocks
    return dict(launch_bound=threads if bounded else 0,
                launch_min_groups=n.block_threads_per_core // threads if blocks else 0)


def _pointwise_space(a: Analysis, n: _Numbers, target: hw.Target):
    t = n.tuned
    for V in _pow2s(1, n.pointwise_vector_lanes):
        if not vector_fits(a, V, _max_vector_bytes(target), wide_small=True):
            continue
        widest = min(n.pointwise_threads, pow2ceil(a.length // V))
        for tg in sorted({widest, *_pow2s(min(64, widest), widest)}):
            yield Schedule(kind="pointwise", vector_width=V, threadgroup_size=tg,
                           simd_width=n.simd_width, **_bound(tg, n, False), **_render_defaults(t))


def _row_space(a: Analysis, n: _Numbers, target: hw.Target, on_chip: bool, first: Schedule):
    t = n.tuned
    W, R, L = n.simd_width, a.rows, a.length
    most = min(n.max_threads, n.max_row_threads)
    stores = list(a.stores)
    multi = a.multi_pass_inputs()
    sizes = dict(zip(param_names(a.region)[0], (_dtypes.itemsize(i.dtype) for i in a.region.inputs)))
    write_pass = bool(P.write_pass_loads(stores)) and on_chip and not a.blocks
    online = any(u.op is Ops.REDUCE and u.arg == "sumexp"
                 for st in P.rewrite_reduces(stores, set()) for u in st.toposort)
    row_scalars = any(u.op is Ops.LOAD and not u.per_element
                      for st in stores for u in st.toposort)
    shared_loads = a.blocks and any(P.row_independent(u) for u in P.multi_pass_loads(stores))
    kept_options = sorted({0, first.kept_registers or n.kept_registers}) if on_chip else [0]
    places = ("registers", "staged", "stream") if on_chip else ("stream",)

    def layouts():
        """(V, T, G, walk) to try."""
        if a.column_walk:
            for T in _pow2s(1, min(most, pow2ceil(L))):
                groups = ([min(n.group_threads, R)] if T == 1 else
                          _pow2s(1, min(W, pow2ceil(R), most // T)))
                for G in groups:
                    yield 1, T, G, "interleaved" if T > 1 else "row"
            return
        for V in _pow2s(1, n.max_vector_lanes):
            if not vector_fits(a, V, _max_vector_bytes(target)):
                continue
            vectors = L // V
            Ts = set(_pow2s(W if a.blocks else 1, min(most, max(W, pow2ceil(vectors)))))
            if V == first.vector_width and first.walk == "row":
                Ts.add(first.threads_per_row)
            for T in sorted(Ts):
                G = 1 if T > W or a.blocks else max(min(n.group_threads // T, R),
                                                    -(-W // T) if T > 1 else 1)
                yield V, T, G, "row"

    for V, T, G, walk in layouts():
        C = -(-(L // V) // T)
        regs = {m: -(-C * V * sizes[m] // 4) for m in multi}
        for placement in itertools.product(places, repeat=len(multi)):
            held = tuple(m for m, p in zip(multi, placement) if p == "registers")
            staged = tuple(m for m, p in zip(multi, placement) if p == "staged")
            if sum(regs[m] for m in held) > 2 * n.max_resident_registers:
                continue  # registers past twice a capped row's: the compiler spills
            streams = len(held) < len(multi)
            # a loop reading its row from memory (streamed, or one pass) may unroll: more loads
            # in flight per thread
            unrolls = ([u for u in (1, 2, 4) if u <= C] if (streams or not multi) and not held
                       and not a.blocks else [1])
            chunked = (True, False) if online and V > 1 and streams else (t.online_chunked,)
            for kept, prefetch, unroll, chunk, hoist_row, hoist_block, shared in itertools.product(
                    kept_options, (False, True) if write_pass and held and walk == "row" else (False,),
                    unrolls, chunked,
                    (True, False) if row_scalars else (t.hoist_row_loads,),
                    (True, False) if shared_loads else (t.hoist_block_loads,),
                    (False, True) if a.blocks and on_chip else (False,)):
                for split, bound in _splits(a, n, V, T, G, walk, held, staged, regs, sizes):
                    if split and unroll != 1:
                        continue  # a split's register arrays unroll its chunk loops whole
                    yield Schedule(
                        kind="row", vector_width=V, threads_per_row=T, rows_per_group=G, walk=walk,
                        simd_width=W, registers=held, staged=staged, staged_in_registers=split,
                        kept_registers=kept, prefetch=prefetch, block_sums_shared=shared,
                        unroll=unroll, online_chunked=chunk, hoist_row_loads=hoist_row,
                        hoist_block_loads=hoist_block, **bound)


def _splits(a: Analysis, n: _Numbers, V: int, T: int, G: int, walk: str, held: tuple[str, ...],
            staged: tuple[str, ...], regs: dict[str, int], sizes: dict[str, int]):
    """(staged elements a thread keeps in registers, launch bound) to try for one layout and
    placement: everything staged in threadgroup memory; and for a column reduction (an
    interleaved walk) whose column stays on chip, half and a quarter of each thread's staged
    elements in registers, so that a threadgroup takes less of both and two may share a core.
    Each split comes as it is and, where the chip takes a launch bound and two threadgroups'
    threadgroup memory fits a core, bounded for two threadgroups per core (the compiler then
    keeps a thread within half the registers one threadgroup would have)."""
    threads = T * G
    plain = _bound(threads, n, bool(a.blocks))
    yield 0, plain
    if walk != "interleaved" or not staged:
        return
    owned = -(-(a.length // V) // T) * V
    for split in sorted({owned // 2 // V * V, owned // 4 // V * V}, reverse=True):
        if not 0 < split < owned:
            continue
        in_registers = (sum(regs[m] for m in held)
                        + sum(-(-split * sizes[m] // 4) for m in staged))
        if in_registers > 2 * n.max_resident_registers:
            continue  # as a placement's registers: past twice a capped row's, the compiler spills
        yield split, plain
        shared = _staged_bytes(a, staged, (owned - split) * threads) + threads * _partials_bytes(a)
        # only a chip whose compiler takes a launch bound has threads per core to ask for (Metal
        # sizes registers per pipeline: none)
        if n.block_threads_per_core and 2 * shared <= n.core_threadgroup_memory_bytes:
            yield split, dict(launch_bound=threads, launch_min_groups=2)


__all__ = ["DEFAULT_CHIP", "Schedule", "ScheduleError", "attention_blocks", "projection_candidates",
           "projection_schedule", "candidates", "default", "dialect_target", "holds_rows", "kernel_target", "legal",
           "staged_bytes"]
