"""Fusion layer: the index space of a region (the domain one kernel iterates, and where each value
lives in it), and the check that a set of equations can be one kernel. May import mlxtriton.graph.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Iterable, Sequence

from mlxtriton.graph.core import Eqn, Graph, Var

from mlxtriton.fusion import _movement
from mlxtriton.fusion._rules import REDUCTIONS, Role, role


class RegionError(ValueError):
    """A set of equations that cannot run as one generated kernel; the message says why."""


@dataclass(frozen=True)
class Load:
    """One read of a value from outside the region: ``eqns[eqn]`` reads ``var`` as input ``slot``
    (after the load's movement ops, if any), at the domain axes ``axes`` (None: a size-1 dim)."""

    eqn: int
    slot: int
    var: Var
    axes: tuple[int | None, ...]


@dataclass(frozen=True, eq=False)
class IndexSpace:
    """The domain one kernel iterates over.

    Attributes:
        kind: ``"pointwise"`` (no reduction), ``"row"`` (reductions over the trailing domain axes,
            one row per threadgroup) or ``"column"`` (reductions over other axes: strided).
        shape: the domain's axis sizes, outermost first.
        reduced: the domain axes every reduction of the region reduces (empty for pointwise).
        axes: for each value the region computes, the domain axis of each of its dims (None for a
            size-1 dim); a value varies along a subset of the domain, in domain order.
        loads: each read of a value from outside the region, with its domain axes.
    """

    kind: str
    shape: tuple[int, ...]
    reduced: tuple[int, ...]
    axes: dict[Var, tuple[int | None, ...]] = field(repr=False)
    loads: tuple[Load, ...] = field(repr=False)
    # block column sums of a row region (fusion/partials.py): [G, 1, *reduced] outputs, one
    # partial per block of rows; they are not in ``axes``
    blocks: tuple[Var, ...] = field(default=(), repr=False)

    @property
    def rows(self) -> tuple[int, ...]:
        """The domain axes that are not reduced: one kernel row (or column) per index."""
        return tuple(i for i in range(len(self.shape)) if i not in self.reduced)

    def is_full(self, var: Var) -> bool:
        """Whether a computed value varies along the reduced axes (is streamed element by element)."""
        return any(a in self.reduced for a in self.axes[var] if a is not None)


class _Classes:
    """Union-find over dims; every class has one size."""

    def __init__(self):
        self.parent: dict = {}
        self.size: dict = {}

    def add(self, node, size: int):
        if node not in self.parent:
            self.parent[node] = node
            self.size[node] = size
        return node

    def find(self, node):
        root = node
        while self.parent[root] != root:
            root = self.parent[root]
        while self.parent[node] != root:
            self.parent[node], node = root, self.parent[node]
        return root

    def union(self, a, b) -> None:
        ra, rb = self.find(a), self.find(b)
        if ra == rb:
            return
        if self.size[ra] != self.size[rb]:
            raise RegionError(f"dims of size {self.size[ra]} and {self.size[rb]} would be one index")
        self.parent[rb] = ra


def _axes_text(axes: Iterable[int]) -> str:
    axes = tuple(axes)
    return f"axis {axes[0]}" if len(axes) == 1 else f"axes {axes}"


@dataclass(frozen=True)
class _BlockSum:
    value: Var  # summed over blocks of its leading `row_axes` axes
    out: Var  # [G, 1, *value.shape[row_axes:]]
    row_axes: int


def _block_sums(eqns: Sequence[Eqn]) -> tuple[list[Eqn], list[_BlockSum]]:
    """Peel block column sums, ``Reduce(sum, axes=(1,))`` of ``Reshape(v, [G, B, *rest])`` with
    ``v``'s leading axes cut into G blocks of B rows (`fusion.partials`), off a row region's
    equations. Only while other reductions remain: a block sum belongs to a row kernel."""
    producer = {v: e for e in eqns for v in e.outputs}
    reads: dict[Var, int] = {}
    for e in eqns:
        for v in e.inputs:
            reads[v] = reads.get(v, 0) + 1
    found, skip = [], set()
    for e in eqns:
        if e.primitive != "Reduce" or e.params["kind"] != "sum":
            continue
        (x,) = e.inputs
        m = producer.get(x)
        if m is None or m.primitive != "Reshape" or reads[x] != 1 or x.ndim < 2:
            continue
        if tuple(sorted(a % x.ndim for a in e.params["axes"])) != (1,):
            continue
        v = m.inputs[0]
        k = v.ndim - (x.ndim - 2)
        if k < 1 or v.shape[k:] != x.shape[2:] or math.prod(v.shape[:k]) != x.shape[0] * x.shape[1]:
            continue
        found.append(_BlockSum(v, e.outputs[0], k))
        skip |= {e, m}
    rest = [e for e in eqns if e not in skip]
    if not any(role(e)[0] is Role.REDUCTION for e in rest):
        return list(eqns), []
    return rest, found


def analyze(eqns: Sequence[Eqn], block_sums: bool = False) -> IndexSpace:
    """The index space of equations meant to run as one kernel (in topological order); values they
    read but do not define are loads.

    Every non-unit dim of every value is an index into one shared domain; elementwise ops,
    reshapes of size-1 dims, broadcasts and reductions say which dims are the same index (unified
    like type variables). The equations are one kernel when those indices form one domain: each
    value's dims are distinct domain axes in domain order, every reduction reduces the same axes,
    and a reduced value is broadcast back only along them. A load may reach the domain through any
    movement op: that is index arithmetic on the load.

    With ``block_sums``, a row region's block column sums (`fusion.partials`) are listed in
    ``blocks``; clustering never forms them.

    Raises:
        RegionError: the equations are not one kernel; the message names the equation and why.
    """
    blocks: list[_BlockSum] = []
    rest = list(eqns)
    if block_sums:
        rest, blocks = _block_sums(eqns)
    space = _analyze(rest)
    if blocks and (space.kind != "row" or any(b.value.shape != space.shape for b in blocks)):
        # sums over the middle axis of a reshape that is not the region's rows: a column
        # reduction's first level (fusion/split.py), ordinary reductions of the region
        blocks, space = [], _analyze(list(eqns))
    for b in blocks:
        n = len(space.shape)
        if (space.kind != "row" or b.value not in space.axes and not any(
                ld.var is b.value for ld in space.loads)):
            raise RegionError(f"a block column sum of {b.value.type_str()} needs a row region "
                              "that reads or computes it")
        axes = space.axes.get(b.value) or next(ld.axes for ld in space.loads if ld.var is b.value)
        if (axes != tuple(range(n)) or b.value.shape != space.shape
                or space.reduced != tuple(range(b.row_axes, n))):
            raise RegionError(f"a block column sum of {b.value.type_str()} over its leading "
                              f"{b.row_axes} axes in a row region over {list(space.shape)} "
                              f"reducing axes {space.reduced}: not the region's rows")
    if blocks:
        # loads name their equation by its position among all of ``eqns``
        position = {id(e): k for k, e in enumerate(eqns)}
        loads = tuple(Load(position[id(rest[ld.eqn])], ld.slot, ld.var, ld.axes)
                      for ld in space.loads)
        space = IndexSpace(space.kind, space.shape, space.reduced, space.axes, loads,
                           tuple(b.out for b in blocks))
    return space


def _analyze(eqns: Sequence[Eqn]) -> IndexSpace:
    classes = _Classes()
    defined = {v for e in eqns for v in e.outputs}
    loaded: set[Var] = set()  # values read from outside, and movement of them (index arithmetic)

    def is_loaded(v: Var) -> bool:
        return v not in defined or v in loaded

    def node(v: Var, d: int):
        return classes.add((v, d), v.shape[d])

    def unify_same_shape(a: Var, b: Var) -> None:
        for d, n in enumerate(a.shape):
            if n != 1:
                classes.union(node(a, d), node(b, d))

    values: list[Var] = []  # every value with dims in the domain: computed ones and loads
    seen_loads: set[Var] = set()
    uses: list[tuple[int, int, Var]] = []  # (eqn, slot, var) of each load
    reductions: list[tuple[Eqn, tuple[int, ...], list, list]] = []  # (eqn, axes, reduced, source dims)
    for k, e in enumerate(eqns):
        r, reason = role(e)
        if r is Role.MOVEMENT:
            src, out = e.inputs[0], e.outputs[0]
            if is_loaded(src):
                loaded.add(out)  # index arithmetic on a load: any movement is fine
                continue
            pairs = _movement.pairs(e)
            if pairs is None:
                raise RegionError(
                    f"{e.primitive} {src.type_str()} -> {out.type_str()} of a value computed in the "
                    "region reorders its elements: threads would exchange data"
                )
            values.append(out)
            for d, n in enumerate(out.shape):
                if n != 1:
                    node(out, d)
            for i, j in pairs:
                classes.union(node(src, i), node(out, j))
            continue
        for slot, v in enumerate(e.inputs):
            if is_loaded(v):
                uses.append((k, slot, v))
                if v not in seen_loads:
                    seen_loads.add(v)
                    values.append(v)
        values.extend(e.outputs)
        out = e.outputs[0]
        for v in e.outputs:
            for d, n in enumerate(v.shape):
                if n != 1:
                    node(v, d)
        if r is Role.ELEMENTWISE:
            for v in e.outputs[1:] + e.inputs:
                unify_same_shape(out, v)
        elif r is Role.REDUCTION:
            spec = REDUCTIONS[e.primitive](e)
            src = e.inputs[spec.source]
            reduced, source = [], []
            for d, n in enumerate(src.shape):
                if n == 1:
                    continue
                source.append(node(src, d))
                if d in spec.axes:
                    reduced.append(node(src, d))
                if d not in spec.axes or spec.full:
                    classes.union(node(src, d), node(out, d))
            for slot, v in enumerate(e.inputs):
                if slot != spec.source:
                    unify_same_shape(out, v)
            reductions.append((e, spec.axes, reduced, source))
        else:
            raise RegionError(reason)

    def dims(v: Var) -> tuple:
        return tuple(classes.find((v, d)) if n != 1 else None for d, n in enumerate(v.shape))

    def check_distinct() -> None:
        for v in values:
            present = [c for c in dims(v) if c is not None]
            if len(set(present)) != len(present):
                raise RegionError(
                    f"{v.type_str()} would read one index along two of its axes: the region mixes a "
                    "value with a transposed view of it"
                )

    check_distinct()

    # Every reduction reduces the same axes. Classes are kept in first-seen order wherever a
    # choice follows their order: a set of (Var, dim) nodes iterates in memory-address order,
    # which differs from process to process.
    reduced: list = []
    if reductions:
        first_e, first_axes, first_nodes, _ = reductions[0]
        reduced = list(dict.fromkeys(classes.find(n) for n in first_nodes))
        for e, axes, nodes, _ in reductions:
            mine = list(dict.fromkeys(classes.find(n) for n in nodes))
            if (set(mine).isdisjoint(reduced) and len(mine) == len(reduced)
                    and [classes.size[c] for c in mine] == [classes.size[c] for c in reduced]):
                # Reductions of two values no dataflow in the region relates (sum(a, 0) and
                # sum(b, 0), a and b read as loads) reduce axes of the same sizes: one loop
                # serves both, their dims in order, unless a value has dims of both.
                same = dict(zip(mine, reduced))
                if all(len({same.get(c, c) for c in t if c is not None})
                       == len([c for c in t if c is not None]) for t in map(dims, values)):
                    for c, r in same.items():
                        classes.union(r, c)
                    reduced = [classes.find(r) for r in reduced]
            if {classes.find(n) for n in nodes} != set(reduced):
                raise RegionError(
                    f"{e.primitive} over {_axes_text(axes)} of {e.inputs[0].type_str()} in a region "
                    f"reducing {_axes_text(first_axes)} of {first_e.inputs[0].type_str()}: "
                    "different index space"
                )
        rows = [c for c in dict.fromkeys(classes.find(n) for _, _, _, source in reductions for n in source)
                if c not in reduced]
        _identify_extra_axes(classes, [dims(v) for v in values], reduced, rows, values)
        check_distinct()

    # Domain order: every value's dims in increasing domain order; reduced axes last when possible.
    reduced = frozenset(classes.find(c) for c in reduced)
    order = _order([dims(v) for v in values], reduced)
    position = {c: i for i, c in enumerate(order)}
    shape = tuple(classes.size[c] for c in order)
    largest = max((v.size for v in values), default=1)
    if math.prod(shape) > largest:
        # Parts joined only through a value of fewer axes (a scalar) would each be recomputed over
        # the other's whole index space.
        raise RegionError(
            f"the region would iterate {list(shape)}, more than its largest value ({largest} elements): "
            "its parts share no index space"
        )
    reduced_axes = tuple(sorted(position[c] for c in reduced))
    if not reduced_axes:
        kind = "pointwise"
    elif reduced_axes == tuple(range(len(order) - len(reduced_axes), len(order))):
        kind = "row"
    else:
        kind = "column"

    def axes_of(v: Var) -> tuple[int | None, ...]:
        return tuple(None if c is None else position[c] for c in dims(v))

    axes = {v: axes_of(v) for v in values if not is_loaded(v)}
    loads = tuple(Load(k, slot, v, axes_of(v)) for k, slot, v in uses)
    return IndexSpace(kind, shape, reduced_axes, axes, loads)


def _identify_extra_axes(classes: _Classes, tuples: list[tuple], reduced: list, rows: list, values) -> None:
    """Give every axis that the reductions do not iterate a reduced (else row) axis of its size
    (the first in ``reduced`` then ``rows`` order).

    A row kernel iterates rows x reduced axes. A value along another axis (``sum(x) * y`` with ``y``
    another array of the row's length) is computed in the loop over a reduced axis of the same
    size: which loop runs it is a choice, correct whenever no value has both axes. Without such an
    axis the value would need a loop the kernel does not have.
    """
    reduced = [classes.find(c) for c in reduced]
    rows = [classes.find(c) for c in rows]
    for t, v in zip(tuples, values):
        for c in t:
            if c is None:
                continue
            c = classes.find(c)
            if c in reduced or c in rows:
                continue
            for a in reduced + rows:
                together = any(
                    classes.find(a) in [classes.find(x) for x in u if x is not None]
                    and c in [classes.find(x) for x in u if x is not None]
                    for u in tuples
                )
                if classes.size[a] == classes.size[c] and not together:
                    classes.union(a, c)
                    break
            else:
                raise RegionError(
                    f"{v.type_str()} varies along an axis of size {classes.size[c]} that the region's "
                    "reductions do not iterate: a reduced value broadcast along a new axis is "
                    "another index space"
                )


def _order(tuples: list[tuple], reduced: frozenset) -> list:
    """Classes in an order that every tuple respects (Kahn; non-reduced first, then first seen)."""
    seen: dict = {}
    after: dict = {}
    waiting: dict = {}
    for t in tuples:
        present = [c for c in t if c is not None]
        for c in present:
            seen.setdefault(c, len(seen))
            waiting.setdefault(c, 0)
        for a, b in zip(present, present[1:]):
            if b not in after.setdefault(a, set()):
                after[a].add(b)
                waiting[b] += 1
    ready = sorted((c for c, n in waiting.items() if n == 0), key=lambda c: (c in reduced, seen[c]))
    order = []
    while ready:
        c = ready.pop(0)
        order.append(c)
        for b in after.get(c, ()):
            waiting[b] -= 1
            if waiting[b] == 0:
                ready.append(b)
        ready.sort(key=lambda c: (c in reduced, seen[c]))
    if len(order) != len(waiting):
        raise RegionError("values of the region need their axes in two different orders: a transposition")
    return order


def index_space(body: Graph) -> IndexSpace:
    """The index space of a fused body: its inputs are loads, its equations one kernel.

    Raises:
        RegionError: the body is not one kernel.

    Example:
        >>> import mlx.core as mx, mlxtriton
        >>> g = mlxtriton.trace(lambda x: mx.softmax(x, axis=-1))(mx.ones((4, 8)))
        >>> s = index_space(g)
        >>> s.kind, s.shape, s.reduced
        ('row', (4, 8), (1,))
    """
    return analyze(body.eqns, block_sums=True)
