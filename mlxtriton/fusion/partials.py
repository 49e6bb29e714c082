"""Fusion layer: the graph -> graph pass that moves a column sum over a row kernel's rows into that
row kernel, as one partial sum per block of rows. May import mlxtriton.graph and mlxtriton.hw.

A norm's weight gradient is ``sum(g * xhat, axis=0)``: a sum over tokens of a value the row kernel
of the backward computes. Clustered on its own it is a column kernel, and the row kernel writes
``g * xhat`` whole for it to read back: two passes over memory more than the gradient needs. Here
each threadgroup of the row kernel walks a block of ``B`` consecutive rows and keeps its columns'
sums in registers (`codegen` ``BLOCK_SUM``), writing one partial per block and column; the column
kernel then sums ``R / B`` partials instead of ``R`` rows:

    row region:    ... v = g * xhat ...            writes v: [R, C]
    column region: sum(v, axis=0)                  reads [R, C]
becomes
    row region:    ... v ...; sum(reshape(v, [R / B, B, C]), axis=1)   writes [R / B, 1, C]
    column region: sum(partials, axis=0)                                reads [R / B, 1, C]

A column sum of one of the row region's own inputs (a layer norm's bias gradient, ``sum(g)``)
joins it the same way: the row kernel reads that input anyway. Partial sums of half types are
float32 and round once, at the end, as MLX's own sums do.

A row region that reads the column sum itself (``softmax(x) * sum(x, axis=0)``), even through
other regions, cannot compute its partials: the column kernel would wait for the row kernel that
waits for it. A move is made only where the graph stays acyclic. Only a GPU chip takes partials:
MLX's CPU backend runs no generated kernels, so there are no threadgroups to give rows to.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, replace

from mlxtriton.graph.core import Eqn, Graph, Var
from mlxtriton.graph.fused import body_of, fused_eqn, is_fused
from mlxtriton.graph.transforms import CycleError, dce, make_eqn, topological_sort

from mlxtriton.fusion._rules import Role, role
from mlxtriton.fusion.index_space import RegionError, analyze
from mlxtriton.fusion.report import RegionReport
from mlxtriton.fusion.split import _WIDE  # float32 partials of half types

# Fewest rows a block takes: below two a partial per row is the value itself.
MIN_BLOCK_ROWS = 2
_SIZE1_MOVES = frozenset({"Reshape", "Squeeze", "ExpandDims"})


@dataclass(frozen=True)
class PartialsDecision:
    """A column sum over a row kernel's ``rows`` rows, now partial sums over ``blocks`` blocks of
    ``rows // blocks`` rows kept by that row kernel."""

    column: str  # the column region as clustering named it
    row: str  # the row region that took it
    value: str  # the summed array, as a type string
    rows: int
    blocks: int
    cores: int

    def as_text(self) -> str:
        return (f"partials: {self.column}'s sum of {self.value} over {self.rows} rows moved into "
                f"{self.row}: {self.blocks} threadgroups of {self.rows // self.blocks} rows "
                f"each keep their columns' sums ({self.cores} cores), the column kernel adds "
                f"{self.blocks} partials per column")


def block_rows(rows: int, cores: int, groups_per_core: int) -> int:
    """Rows per block (1: leave the column sum alone): the fewest that leave at most
    ``groups_per_core * cores`` threadgroups (the tuning data's ``split_groups_per_core``), at
    least `MIN_BLOCK_ROWS`, dividing ``rows``, with a threadgroup for every core still."""
    target = groups_per_core * cores
    for b in range(MIN_BLOCK_ROWS, rows + 1):
        if rows % b == 0 and rows // b <= target:
            return b if rows // b >= cores else 1
    return 1


def _registers_hold(profile, length: int, sums: int) -> bool:
    """Whether ``sums`` block sums over rows of ``length`` fit the registers the row kernel's
    threads may give them (the tuning data's ``block_sum_registers`` each, at most
    ``max_row_threads``)."""
    from mlxtriton import hw

    p = hw.derive(profile, 4)
    return sums * length <= p.max_row_threads * hw.tuning.tuning(profile).block_sum_registers


def _column_sum(e: Eqn) -> tuple[Var, tuple[int, ...]] | None:
    """(the summed body input, reduced axes) of a column region that is one sum, its result
    reshaped only in size-1 dims; else None."""
    body = body_of(e)
    if len(body.inputs) != 1 or body.constants or not body.eqns:
        return None
    first, rest = body.eqns[0], body.eqns[1:]
    if first.primitive != "Reduce" or first.params["kind"] != "sum" or first.inputs != body.inputs:
        return None
    v = first.outputs[0]
    for m in rest:
        if m.primitive not in _SIZE1_MOVES or m.inputs != (v,):
            return None
        v = m.outputs[0]
    if body.outputs != (v,):
        return None
    x = body.inputs[0]
    return x, tuple(sorted(a % x.ndim for a in first.params["axes"]))


def _space(e: Eqn):
    try:
        return analyze(body_of(e).eqns, block_sums=True)
    except RegionError:
        return None


def column_partials(graph: Graph, regions: tuple[RegionReport, ...], chip
                    ) -> tuple[Graph, tuple[RegionReport, ...], list[PartialsDecision]]:
    """Move each column sum over a row region's rows into that row region (see the module).

    Args:
        graph: a fused graph (`cluster.fuse_with_report`'s).
        regions: its region reports, updated for the regions this pass changes.
        chip: a chip name or `mlxtriton.hw.Profile` (its core count sizes the blocks); None, or
            a chip that runs no generated kernels (the CPU), leaves the graph as it is.

    Returns:
        ``(graph, regions, decisions)``: the graph computes the same values up to the order of
        the additions.
    """
    if chip is None:
        return graph, regions, []
    from mlxtriton import hw

    profile = hw.resolve(chip)
    if not profile.is_gpu:
        return graph, regions, []
    cores = max(profile.gpu_cores or (1,))
    defined = list(graph.inputs) + [v for v, _ in graph.constants]
    sums: dict[Eqn, int] = {}  # block sums each row region takes
    rows_eqns: dict[Eqn, Eqn] = {}  # original row region -> its current rewrite
    new_columns: dict[Eqn, Eqn] = {}
    decisions: list[PartialsDecision] = []
    for ce in graph.eqns:
        if not (is_fused(ce) and ce.params["kind"] == "column"):
            continue
        found = _column_sum(ce)
        if found is None or found[0].dtype not in ("float32", *_WIDE):
            continue
        outer = ce.inputs[0]
        row_eqn = _row_region_of(graph, outer, ce)
        if row_eqn is None:
            continue
        current = rows_eqns.get(row_eqn, row_eqn)
        space = _space(current)
        if space is None or space.kind != "row":
            continue
        x, axes = found
        n = len(space.shape)
        k = n - len(space.reduced)
        if (x.shape != space.shape or space.reduced != tuple(range(k, n))
                or axes != tuple(range(k))):
            continue
        R, L = math.prod(space.shape[:k]), math.prod(space.shape[k:])
        B = block_rows(R, cores, hw.tuning.tuning(profile).split_groups_per_core)
        if B == 1 or not _registers_hold(profile, L, sums.get(row_eqn, 0) + 1):
            continue
        rewritten, partial = _add_block_sum(current, outer, R // B, B, k)
        if rewritten is None:
            continue
        column = _partial_column(ce, partial)
        ordered = _ordered(graph, {**rows_eqns, row_eqn: rewritten}, {**new_columns, ce: column}, defined)
        if ordered is None:
            continue  # the row region depends on the column sum: the move would close a cycle
        sums[row_eqn] = sums.get(row_eqn, 0) + 1
        rows_eqns[row_eqn] = rewritten
        new_columns[ce] = column
        decisions.append(PartialsDecision(ce.params["name"], row_eqn.params["name"],
                                          outer.type_str(), R, R // B, cores))
    if not decisions:
        return graph, regions, []
    eqns = _ordered(graph, rows_eqns, new_columns, defined)
    result = dce(graph.replace(eqns=eqns))
    return result, _reports(regions, rows_eqns, new_columns), decisions


def _ordered(graph: Graph, rows_eqns: dict[Eqn, Eqn], new_columns: dict[Eqn, Eqn], defined) -> tuple | None:
    """The graph's equations with the moves applied, in an order where each reads what is
    defined before it; None when the moves make a cycle."""
    eqns = [rows_eqns.get(e, new_columns.get(e, e)) for e in graph.eqns]
    try:
        return topological_sort(eqns, defined)
    except CycleError:
        return None


def _row_region_of(graph: Graph, outer: Var, column: Eqn) -> Eqn | None:
    """The row region that computes ``outer`` for ``column`` alone, or reads it as an input."""
    producer = graph.producer(outer)
    if producer is not None and is_fused(producer) and producer.params["kind"] == "row":
        if graph.is_output(outer) or graph.users(outer) != (column,):
            return None  # the whole array is needed anyway: nothing to save
        return producer
    readers = [u for u in graph.users(outer) if u is not column and is_fused(u)
               and u.params["kind"] == "row"]
    return readers[0] if readers else None


def _add_block_sum(row: Eqn, outer: Var, G: int, B: int, k: int) -> tuple[Eqn | None, Var]:
    """The row region also writing ``outer``'s block column sums, [G, 1, *rest] (in place of
    ``outer`` when the region computed it for the column sum alone), and their outer var."""
    body = body_of(row)
    if outer in row.outputs:
        at = row.outputs.index(outer)
        value, drop = body.outputs[at], True
    elif outer in row.inputs:
        value, drop = body.inputs[row.inputs.index(outer)], False
    else:
        return None, outer
    eqns = list(body.eqns)
    if value.dtype in _WIDE:
        eqns.append(make_eqn("AsType", [value], {"dtype": _WIDE[value.dtype]}))
        value = eqns[-1].outputs[0]
    rest = value.shape[k:]
    eqns.append(make_eqn("Reshape", [value], {"shape": (G, B, *rest)}))
    eqns.append(make_eqn("Reduce", [eqns[-1].outputs[0]], {"kind": "sum", "axes": (1,)}))
    inner = eqns[-1].outputs[0]
    partial = Var(inner.shape, inner.dtype)
    if drop:
        outs = body.outputs[:at] + (inner,) + body.outputs[at + 1:]
        outer_outs = row.outputs[:at] + (partial,) + row.outputs[at + 1:]
    else:
        outs, outer_outs = body.outputs + (inner,), row.outputs + (partial,)
    new_body = body.replace(eqns=tuple(eqns), outputs=outs)
    return fused_eqn(new_body, row.inputs, outer_outs, "row", row.params["name"]), partial


def _partial_column(column: Eqn, partial: Var) -> Eqn:
    """The column region summing the partials instead: [G, 1, *rest] -> its old output."""
    (out,) = column.outputs
    pin = Var(partial.shape, partial.dtype)
    eqns = [make_eqn("Reduce", [pin], {"kind": "sum", "axes": (0,)})]
    if out.dtype != partial.dtype:
        eqns.append(make_eqn("AsType", [eqns[-1].outputs[0]], {"dtype": out.dtype}))
    eqns.append(make_eqn("Reshape", [eqns[-1].outputs[0]], {"shape": out.shape}))
    body = Graph((pin,), tuple(eqns), (eqns[-1].outputs[0],))
    return fused_eqn(body, (partial,), (out,), "column", f"column_{body.structural_hash[:10]}")


def _ops(eqns) -> tuple[tuple[str, ...], tuple[str, ...]]:
    """(computed, folded movement) primitives of equations, as a region report lists them."""
    moves = [role(e)[0] is Role.MOVEMENT for e in eqns]
    return (tuple(e.primitive for e, m in zip(eqns, moves) if not m),
            tuple(e.primitive for e, m in zip(eqns, moves) if m))


def _reports(regions, rows_eqns: dict[Eqn, Eqn], new_columns: dict[Eqn, Eqn]):
    by_name = {e.params["name"]: e for e in list(rows_eqns.values()) + list(new_columns.values())}
    renamed = {old.params["name"]: new for old, new in new_columns.items()}
    out = []
    for r in regions:
        e = by_name.get(r.name) or renamed.get(r.name)
        if e is None:
            out.append(r)
            continue
        body = body_of(e)
        if e.params["kind"] == "row":  # the same region and what this pass appended to it
            space = analyze(body.eqns, block_sums=True)
            computes, moves = _ops(body.eqns[len(r.primitives) + len(r.folded):])
            shape, reduced = space.shape, space.reduced
            primitives, folded = r.primitives + computes, r.folded + moves
        else:  # a new column region over the partials
            (primitives, folded), shape, reduced = _ops(body.eqns), body.inputs[0].shape, (0,)
        out.append(replace(r, name=e.params["name"], shape=shape, reduced=reduced,
                           primitives=primitives, folded=folded,
                           inputs=tuple(v.type_str() for v in body.inputs),
                           outputs=tuple(v.type_str() for v in body.outputs)))
    return tuple(out)
