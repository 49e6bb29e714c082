"""Fusion layer: the graph -> graph part of the layout pass: how each fused region reads each input
that reaches it through movement ops: strided (the ops stay in the body as index arithmetic) or as a
copy (the ops move out of the body; the kernel binds the moved array, which MLX makes contiguous).
May import mlxtriton.graph.

Folding movement ops into regions happens once, in clustering (`cluster.py`), because the index
space a region may have depends on them; this pass only undoes a fold where a copy is cheaper.
Vector width and elements per thread are codegen's choices (its schedules): ``schedule`` stays
None here, and whether a kernel holds its rows on chip is asked of codegen (``rows_held``). The
contract with codegen: a body input is a row-contiguous array, and every index transformation of
it is an equation of the body.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

from mlxtriton.graph import dtypes
from mlxtriton.graph.core import Eqn, Graph, Var
from mlxtriton.graph.fused import TEMPLATE_KINDS, fused_eqn, is_fused
from mlxtriton.graph.transforms import dce, substitute

from mlxtriton.fusion import _movement
from mlxtriton.fusion._rules import REDUCTIONS, Role, role
from mlxtriton.fusion.index_space import IndexSpace, index_space
from mlxtriton.fusion.report import LayoutDecision

# Bytes the memory system moves for one scattered access. NVIDIA GPUs serve global memory in
# 32-byte sectors (CUDA C++ Best Practices Guide, "Coalesced Access to Global Memory"); Apple does
# not publish its granularity (shared/reference/apple-gpu.md has none), so the same figure is
# assumed there. A read with stride >= this many bytes wastes the rest of each sector.
ACCESS_BYTES = 32


@dataclass(frozen=True)
class _Chain:
    source: Var  # the body input
    eqns: tuple[Eqn, ...]  # movement equations from source to load, in order
    load: Var  # the value the body's compute equations read


def _chains(body: Graph) -> list[_Chain]:
    """Every value a body reads through movement ops of one input (maximal chains)."""
    loaded: dict[Var, tuple[Var, tuple[Eqn, ...]]] = {v: (v, ()) for v in body.inputs}
    loaded.update({v: (v, ()) for v, _ in body.constants})
    for e in body.eqns:
        if role(e)[0] is Role.MOVEMENT and e.inputs[0] in loaded:
            src, path = loaded[e.inputs[0]]
            loaded[e.outputs[0]] = (src, path + (e,))
    read = {v for e in body.eqns if not (role(e)[0] is Role.MOVEMENT and e.inputs[0] in loaded) for v in e.inputs}
    read |= set(body.outputs)
    return [_Chain(src, path, v) for v, (src, path) in loaded.items() if path and v in read]


def _offset(chain: _Chain, coord: tuple[int, ...]) -> int:
    """Row-major offset in the source that element ``coord`` of the load reads."""
    for e in reversed(chain.eqns):
        coord = _movement.source_coordinate(e, coord)
    offset = 0
    for c, d in zip(coord, chain.source.shape):
        offset = offset * d + c
    return offset


def _fast_axis_stride(chain: _Chain, space: IndexSpace, axes: tuple[int | None, ...]) -> int:
    """Elements between the loads of neighbouring threads: along the domain's last axis, which
    is the fastest-varying across threads in every region kind (along a row, or across columns)."""
    last = len(space.shape) - 1
    if last < 0 or last not in axes:
        return 0
    origin = tuple(0 for _ in chain.load.shape)
    step = tuple(1 if a == last else 0 for a in axes)
    return abs(_offset(chain, step) - _offset(chain, origin))


def _passes(body: Graph, space: IndexSpace) -> dict[Var, int]:
    """How many passes over the row read each loaded value.

    A multi-pass row kernel streams the row once per reduction level (layer norm: the mean, the
    variance, then the normalized row), recomputing row-sized values from the loads in each pass.
    """
    depth: dict[Var, int] = {}  # pass in which a value becomes available
    needs: dict[Var, frozenset] = {}  # loads a row-sized value is recomputed from
    reads: dict[Var, set[int]] = {}
    loaded = set(body.inputs) | {v for v, _ in body.constants}
    for e in body.eqns:
        r = role(e)[0]
        if r is Role.MOVEMENT and e.inputs[0] in loaded:
            loaded.add(e.outputs[0])
            continue
        if any(v not in space.axes for v in e.outputs):
            continue  # a block column sum's reshape and sum: added up in the write pass
        level = max((depth.get(v, 0) for v in e.inputs), default=0)
        row_sized = [v for v in e.inputs if v in loaded or (v in space.axes and space.is_full(v))]
        used = frozenset().union(*(needs.get(v, frozenset({v}) if v in loaded else frozenset()) for v in row_sized))
        if r is Role.REDUCTION or any(space.is_full(v) for v in e.outputs):
            # A row op with a row-sized result (Softmax) reads its row again to write it.
            again = r is Role.REDUCTION and REDUCTIONS[e.primitive](e).full
            for v in used:
                reads.setdefault(v, set()).update({level, level + 1} if again else {level})
        for v in e.outputs:
            full = space.is_full(v)
            needs[v] = used if full else frozenset()
            depth[v] = level + 1 if r is Role.REDUCTION and not REDUCTIONS[e.primitive](e).full else level
    return {v: max(1, len(levels)) for v, levels in reads.items()}


def _decide(chain: _Chain, stride: int, passes: int) -> tuple[str, str]:
    itemsize = dtypes.itemsize(chain.load.dtype)
    if chain.load.size > chain.source.size:
        return "strided", "a copy would materialize a broadcast"
    # Elements one access fetches for the one element a thread uses: 1 when neighbours read
    # neighbours (or the same element), up to a whole access when the stride spans it.
    waste = max(1, min(stride, ACCESS_BYTES // itemsize))
    if waste == 1:
        return "strided", f"stride {stride} along the fastest axis: coalesced"
    strided = passes * waste
    copy = waste + 1 + passes  # one strided read and one write by the copy, then contiguous reads
    if copy < strided:
        return "copy", (f"stride {stride} along the fastest axis, read in {passes} passes: a copy "
                        f"({waste} + 1 + {passes} accesses per element) beats {passes} strided reads ({strided})")
    return "strided", f"stride {stride} along the fastest axis, read in {passes} pass(es): cheaper than a copy"


def _clone(eqns, source: Var) -> tuple[list[Eqn], Var]:
    """Copies of a chain's equations with fresh vars, reading ``source``."""
    out, v = [], source
    for e in eqns:
        w = Var(e.outputs[0].shape, e.outputs[0].dtype)
        out.append(Eqn(e.primitive, (v,), (w,), e.params))
        v = w
    return out, v


def layout_with_report(graph: Graph, rows_held: Callable[[Eqn], bool] | None = None,
                       copies: bool = True) -> tuple[Graph, tuple[LayoutDecision, ...]]:
    """Decide, for each fused region, how it reads each input that reaches it through movement ops.

    Strided (the default) keeps the movement ops in the body: the kernel computes addresses and
    reads the un-moved array. A copy moves them out of the body, so the kernel binds the moved
    array and MLX materializes it contiguously first; that wins only when the strided reads are
    uncoalesced and repeated (a multi-pass row kernel over a transposed input).

    Args:
        graph: a graph whose regions came from `fuse`.
        rows_held: whether a fused equation's kernel holds its rows on chip across passes (the
            code generator's answer, from the kernel's schedule: the runtime passes
            `mlxtriton.codegen.lowering.rows_held`): such a row is read once, so strided reads are
            never repeated. None: rows are read once per pass.
        copies: False when each region must stay one kernel (`mlxtriton.kernel`): every input is
            read strided, in place, a copy being a kernel of its own.

    Returns:
        ``(graph, decisions)``, one decision per (region, moved input).

    Example:
        >>> import mlx.core as mx, mlxtriton
        >>> from mlxtriton.fusion import fuse
        >>> g = fuse(mlxtriton.trace(lambda x: mx.softmax(x.T, axis=-1))(mx.ones((64, 32))))
        >>> _, decisions = layout_with_report(g)
        >>> decisions[0].decision
        'copy'
    """
    eqns: list[Eqn] = []
    records: list[LayoutDecision] = []
    for e in graph.eqns:
        if not is_fused(e) or e.params["kind"] in TEMPLATE_KINDS:  # a template kernel reads its inputs as they are
            eqns.append(e)
            continue
        body = e.params["body"]
        outer = dict(zip(body.inputs, e.inputs))
        space = index_space(body)
        passes = _passes(body, space)
        load_axes = {l.var: l.axes for l in space.loads}
        decided: list[tuple[_Chain, str, str]] = []
        chains = _chains(body)
        held = bool(chains) and rows_held is not None and space.kind == "row" and rows_held(e)
        for chain in chains:
            axes = load_axes.get(chain.load)
            if axes is None or chain.source not in outer:
                continue  # a moved input the body only returns, or a constant compiled into the body
            stride = _fast_axis_stride(chain, space, axes)
            n = 1 if held else passes.get(chain.load, 1)
            decision = _decide(chain, stride, n)
            if decision[0] == "copy" and not copies:
                decision = ("strided", f"{decision[1]}, but one kernel was asked for: read in place")
            decided.append((chain, *decision))
        copied = [chain for chain, decision, _ in decided if decision == "copy"]
        if copied:
            # Each copied chain moves out: the body reads the moved array as a new input.
            mapping, inner_inputs, outer_inputs = {}, list(body.inputs), list(e.inputs)
            for chain in copied:
                moved, last = _clone(chain.eqns, outer[chain.source])
                eqns.extend(moved)
                mapping[chain.load] = Var(chain.load.shape, chain.load.dtype)
                inner_inputs.append(mapping[chain.load])
                outer_inputs.append(last)
            body = dce(substitute(body, mapping).replace(inputs=tuple(inner_inputs)))
            read = {v for b in body.eqns for v in b.inputs} | set(body.outputs)
            keep = [i for i, v in enumerate(inner_inputs) if v in read]
            body = body.replace(inputs=tuple(inner_inputs[i] for i in keep))
            name = f"{e.params['kind']}_{body.structural_hash[:10]}"
            e = fused_eqn(body, [outer_inputs[i] for i in keep], e.outputs, e.params["kind"], name)
        eqns.append(e)
        records.extend(
            LayoutDecision(e.params["name"], chain.source.type_str(), tuple(x.primitive for x in chain.eqns),
                           decision, reason)
            for chain, decision, reason in decided
        )
    return dce(graph.replace(eqns=tuple(eqns))), tuple(records)


def layout(graph: Graph, rows_held: Callable[[Eqn], bool] | None = None) -> Graph:
    """`layout_with_report` without the decisions."""
    return layout_with_report(graph, rows_held)[0]
