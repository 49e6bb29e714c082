"""Fusion layer: clustering, the graph -> graph pass that groups equations into `Fused` regions
(one generated kernel each) and folds the movement ops feeding a region into its body.
May import mlxtriton.graph and mlxtriton.hw.
"""

from __future__ import annotations

from dataclasses import dataclass

from mlxtriton.graph.core import Eqn, Graph, Var
from mlxtriton.graph.fused import fused_eqn
from mlxtriton.graph.transforms import dce, topological_sort

from mlxtriton.fusion import _movement
from mlxtriton.fusion._rules import ROW_LOADS, Role, role
from mlxtriton.fusion.index_space import IndexSpace, RegionError, analyze
from mlxtriton.fusion.report import Boundary, FusionReport, RegionReport, Unfused
from mlxtriton.fusion.partials import PartialsDecision, column_partials
from mlxtriton.fusion.split import SplitDecision, split_reductions

# Arrays (inputs + outputs) one generated kernel may bind. Metal binds at most 31 buffers per
# compute command encoder (developer.apple.com/metal/limits, "buffer argument table"); MLX's own
# compile stops at 24 (mlx/compile.cpp max_compile_arrays), leaving room for the shape and stride
# buffers a kernel may add. CUDA passes pointers as kernel parameters (4 KB of them before
# CUDA 12.1: CUDA C++ Programming Guide, "Function Parameters"); 128 pointers plus shapes fit.
MAX_ARRAYS = {"metal": 24, "cuda": 128}
DEFAULT_MAX_ARRAYS = MAX_ARRAYS["metal"]  # without a chip, the strictest backend: the graph runs anywhere

# Equations one region may compute. Kernel source, register pressure and this pass's time (each
# merge re-checks the region) grow with it; MLX's compile stops a fused chain at depth 11
# (mlx/compile.cpp max_compile_depth), so 64 already fuses far longer chains than MLX does.
MAX_EQUATIONS = 64

# Constants with one element are compiled into the kernel body, not bound as arrays.
BODY_CONSTANT_SIZE = 1


def max_arrays(chip=None) -> int:
    """The argument limit of one region on ``chip`` (a name or `mlxtriton.hw.Profile`)."""
    if chip is None:
        return DEFAULT_MAX_ARRAYS
    from mlxtriton import hw

    return MAX_ARRAYS.get(hw.resolve(chip).backend, DEFAULT_MAX_ARRAYS)


@dataclass(eq=False)
class _Cluster:
    members: set[Eqn]
    first: int  # position of its first member
    has_reduction: bool = False
    last: int = 0  # position of its last member


class _Clustering:
    """Greedy over equations in topological order: an elementwise or reduction equation joins the
    regions of the equations it reads when the union is still one index space, stays within the
    limits, and creates no cycle between regions. A movement op is a member only as a reshape of
    its region's own value; otherwise every region reading through it folds its own copy of it into
    its body, which is why paths through movement ops straight back into a region are no cycle."""

    def __init__(self, graph: Graph, limit: int, position: dict[Eqn, int]):
        self.graph = graph
        self.limit = limit
        self.position = position  # in the graph the pass received (reports name equations by it)
        self.roles = {e: role(e) for e in graph.eqns}
        self.cluster_of: dict[Eqn, _Cluster] = {}
        self.clusters: dict[int, _Cluster] = {}  # the regions as they stand, by id
        self.boundaries: list[Boundary] = []
        self.alone: dict[Eqn, str] = {}  # equations that cannot be a region even on their own

    # ---- dataflow through foldable movement ops ----
    def source(self, v: Var) -> tuple[Var, list[Eqn]]:
        """Follow ``v`` back through movement ops that belong to no region: the value they move
        and the chain, which a region reading ``v`` folds into its body."""
        chain = []
        while True:
            p = self.graph.producer(v)
            if p is None or p in self.cluster_of or self.roles[p][0] is not Role.MOVEMENT:
                return v, chain
            chain.append(p)
            v = p.inputs[0]

    def view(self, members) -> list[Eqn]:
        """A region's equations: its members and the movement chains they read through."""
        eqns = set(members)
        for e in members:
            for v in e.inputs:
                eqns.update(self.source(v)[1])
        return sorted(eqns, key=self.position.__getitem__)

    def needed_outside(self, v: Var, members) -> bool:
        if self.graph.is_output(v):
            return True
        for u in self.graph.users(v):
            if u in members:
                continue
            if u in self.cluster_of or self.roles[u][0] is not Role.MOVEMENT:
                return True
            if any(self.needed_outside(w, members) for w in u.outputs):
                return True
        return False

    def inputs(self, view) -> list[Var]:
        defined = {v for e in view for v in e.outputs}
        consts = self.graph.const_values
        return list(dict.fromkeys(
            v for e in view for v in e.inputs
            if v not in defined and not (v in consts and v.size <= BODY_CONSTANT_SIZE)
        ))

    def ordered(self, members) -> list[Eqn]:
        """``members`` in program order. Sets of equations iterate in memory-address order, which
        differs from process to process: every walk that decides or reports goes through this."""
        return sorted(members, key=self.position.__getitem__)

    def outputs(self, members) -> list[Var]:
        """The values a region must write. Only shrinks as members join, so a check made when an
        equation joins still holds for the final region."""
        return [v for e in self.ordered(members) for v in e.outputs if self.needed_outside(v, members)]

    def cycle_through(self, members) -> Eqn | None:
        """An equation through which some path leaves ``members`` and comes back (other regions
        count as single nodes), or None. Paths through unclustered movement ops straight back into
        the members are the region's own folded chains, not cycles."""
        # Positions only grow along a path, except through a region, which is one node: entered
        # at a late member, it is left from any of its members, an early one too. An unclustered
        # op after `horizon` (the last member, extended by every region reaching back before
        # it, transitively) can reach only regions that lie wholly after it: nothing that comes
        # back.
        horizon = max(self.position[e] for e in members)
        for c in sorted(self.clusters.values(), key=lambda c: c.first):
            if c.first > horizon:
                break
            horizon = max(horizon, c.last)
        graph = self.graph
        stack: list[tuple[Eqn, Eqn | None]] = []  # (equation, first op outside on the path)

        def push(x: Eqn, via: Eqn | None) -> None:
            for v in x.outputs:
                stack.extend((u, via) for u in graph.users(v))

        for m in self.ordered(members):
            push(m, None)
        seen: set[tuple[Eqn, bool]] = set()
        expanded: set[int] = set()
        while stack:
            n, via = stack.pop()
            if n in members:
                if via is not None:
                    return via
                continue
            if (n, via is None) in seen:
                continue
            seen.add((n, via is None))
            other = self.cluster_of.get(n)
            if other is not None:
                if id(other) not in expanded:
                    expanded.add(id(other))
                    for x in self.ordered(other.members):
                        push(x, via or n)
                continue
            if self.position[n] > horizon:
                continue  # unclustered and after the horizon: nothing it reaches comes back
            push(n, via if self.roles[n][0] is Role.MOVEMENT else via or n)
        return None

    def check(self, members) -> str | None:
        """None when ``members`` can be one region, else why not."""
        if len(members) > MAX_EQUATIONS:
            return f"the region would compute {len(members)} equations, more than the limit {MAX_EQUATIONS}"
        view = self.view(members)
        try:
            space = analyze(view)
        except RegionError as err:
            return str(err)
        outputs = self.outputs(members)
        # A kernel writes an output once per domain element (a whole-domain value) or once per row
        # (a reduced value); a value along only some axes would need stores guarded per axis.
        whole = set(range(len(space.shape)))
        shapes = (whole, set(space.rows)) if space.reduced else (whole,)
        for v in outputs:
            if {a for a in space.axes[v] if a is not None} not in shapes:
                spans = ("neither the region's whole index space {} nor exactly its rows" if space.reduced
                         else "not the region's whole index space {}").format(list(space.shape))
                return f"the region would write {v.type_str()}, which spans {spans}"
        n = len(self.inputs(view)) + len(outputs)
        if n > self.limit:
            return f"the region would bind {n} arrays, more than the kernel limit {self.limit}"
        via = self.cycle_through(members)
        if via is not None:
            return (f"joining would create a cycle: a value leaves the region and comes back through "
                    f"{via.primitive} #{self.position[via]}, which is outside it")
        return None

    # ---- the greedy pass ----
    def candidates(self, e: Eqn) -> list[_Cluster]:
        found: dict[int, _Cluster] = {}
        for v in e.inputs:
            src, _ = self.source(v)
            p = self.graph.producer(src)
            c = self.cluster_of.get(p) if p is not None else None
            if c is not None:
                found[id(c)] = c
        # Regions with a reduction first (a pointwise op joins the row region around it), then larger.
        return sorted(found.values(), key=lambda c: (not c.has_reduction, -len(c.members), c.first))

    def commit(self, members: set[Eqn]) -> _Cluster:
        c = _Cluster(
            members,
            min(self.position[e] for e in members),
            any(self.roles[e][0] is Role.REDUCTION for e in members),
            max(self.position[e] for e in members),
        )
        for e in members:
            old = self.cluster_of.get(e)
            if old is not None:
                self.clusters.pop(id(old), None)
            self.cluster_of[e] = c
        self.clusters[id(c)] = c
        return c

    def run(self) -> None:
        for e in self.graph.eqns:
            r = self.roles[e][0]
            if r is Role.STAYS:
                continue
            if r is Role.MOVEMENT:
                self.join_as_reshape(e)
                continue
            members = {e}
            reason = self.check(members)
            if reason is not None:
                self.alone[e] = reason
                continue
            for c in self.candidates(e):
                trial = members | c.members
                reason = self.check(trial)
                if reason is not None:
                    self.boundaries.append(Boundary(
                        self.position[e], e.primitive, min(self.position[x] for x in c.members), reason))
                    continue
                members = trial
            self.commit(members)

    def merge_siblings(self) -> None:
        """Merge regions that read the same array (``exp(x)`` and ``tanh(x)`` as two outputs): one
        kernel reads it once. Same checks as any merge."""
        readers: dict[Var, list[_Cluster]] = {}
        for c in sorted({id(c): c for c in self.cluster_of.values()}.values(), key=lambda c: c.first):
            view = self.view(c.members)
            defined = {v for e in view for v in e.outputs}
            for v in dict.fromkeys(v for e in view for v in e.inputs if v not in defined):
                if v.size > BODY_CONSTANT_SIZE:
                    readers.setdefault(v, []).append(c)
        for clusters in readers.values():
            target = None
            for c in clusters:
                c = self.cluster_of[next(iter(c.members))]  # where an earlier merge put it
                if target is None or c is target:
                    target = target or c
                    continue
                trial = target.members | c.members
                if self.check(trial) is None:
                    target = self.commit(trial)

    def join_as_reshape(self, e: Eqn) -> None:
        """A reshape of a region's value that only changes size-1 dims joins the region, so the
        region writes its value in the shape its readers use (``sum(x, -1)``'s Squeeze)."""
        if e.primitive not in _movement.RESHAPES or _movement.pairs(e) is None:
            return
        c = self.cluster_of.get(self.graph.producer(e.inputs[0]))
        if c is None or self.check(c.members | {e}) is not None:
            return
        c.members.add(e)
        c.last = max(c.last, self.position[e])
        self.cluster_of[e] = c

    def worth_a_kernel(self, c: _Cluster) -> bool:
        # A reduction is where fusion pays (and folding its movement ops saves copies); a single
        # elementwise op or element pick is one MLX kernel already.
        computes = [e for e in c.members if self.roles[e][0] is not Role.MOVEMENT]
        reduces = any(self.roles[e][0] is Role.REDUCTION and e.primitive not in ROW_LOADS for e in computes)
        return reduces or len(computes) >= 2


def _signature(e: Eqn) -> str:
    ins = " ".join(v.type_str() for v in e.inputs)
    outs = " ".join(v.type_str() for v in e.outputs)
    return f"{ins} -> {outs}"


def _region(clustering: _Clustering, view: list[Eqn], reads: list[Var], outs: list[Var]):
    """The Fused equation of one region and its report entry. Scalar constants move into the
    body; every other value it reads is bound as an input."""
    consts = clustering.graph.const_values
    scalar = [v for v in reads if v in consts and v.size <= BODY_CONSTANT_SIZE]
    body_inputs = tuple(v for v in reads if v not in scalar)
    body = Graph(body_inputs, tuple(view), tuple(outs), tuple((v, consts[v]) for v in scalar))
    space: IndexSpace = analyze(view)  # cannot fail: every merge was checked
    name = f"{space.kind}_{body.structural_hash[:10]}"
    computes = [e for e in view if clustering.roles[e][0] is not Role.MOVEMENT]
    report = RegionReport(
        name=name, kind=space.kind, shape=space.shape, reduced=space.reduced,
        equations=tuple(clustering.position[e] for e in computes),
        primitives=tuple(e.primitive for e in computes),
        folded=tuple(e.primitive for e in view if clustering.roles[e][0] is Role.MOVEMENT),
        inputs=tuple(v.type_str() for v in body_inputs),
        outputs=tuple(v.type_str() for v in outs),
    )
    return fused_eqn(body, body_inputs, tuple(outs), space.kind, name), report


def fuse_with_report(graph: Graph, chip=None, *, split: bool = True) -> tuple[Graph, FusionReport]:
    """Group a graph's equations into `Fused` regions, one generated kernel each.

    Pointwise regions are DAGs of elementwise ops; row regions add reductions over trailing axes
    (softmax, norms, logsumexp, cross-entropy), column regions reductions over other axes. Movement
    ops feeding a region are folded into its body as index arithmetic. Matmuls, convolutions,
    gathers, sorts, fast ops and random numbers stay MLX ops.

    Args:
        graph: a graph from `mlxtriton.trace`.
        chip: the chip to fuse for (a name or `mlxtriton.hw.Profile`); it sets how many arrays one
            kernel may bind. None: the strictest limit (Metal), valid on every backend.
        split: first split reductions over too few rows for the chip's cores in two levels
            (`split.split_reductions`), and move column sums over a row region's rows into it
            as partial sums per block of rows (`partials.column_partials`); both need a chip.
            False keeps one kernel per reduction.

    Returns:
        ``(fused graph, report)``: the graph computes the same values (on CPU, bit for bit: a
        region's body is the same MLX ops); the report lists each region, each equation left
        unfused and why, and each region boundary and why.

    Example:
        >>> import mlx.core as mx, mlxtriton
        >>> g = mlxtriton.trace(lambda x: mx.softmax(x * 2, axis=-1))(mx.ones((4, 8)))
        >>> fused, report = fuse_with_report(g)
        >>> fused.primitive_counts(), report.regions[0].kind
        ({'Fused': 1}, 'row')
    """
    # Reports number equations in the graph clustered: after a split, the split graph.
    splits: list[SplitDecision] = []
    if split:
        graph, splits = split_reductions(graph, chip)
    position = {e: i for i, e in enumerate(graph.eqns)}
    graph = dce(graph)
    clustering = _Clustering(graph, max_arrays(chip), position)
    clustering.run()
    clustering.merge_siblings()

    clusters = {id(c): c for c in clustering.cluster_of.values()}
    unfused: list[Unfused] = []
    kept: list[_Cluster] = []
    for c in sorted(clusters.values(), key=lambda c: c.first):
        if clustering.worth_a_kernel(c):
            kept.append(c)
            continue
        for e in clustering.ordered(c.members):
            del clustering.cluster_of[e]
            if clustering.roles[e][0] is not Role.MOVEMENT:
                unfused.append(Unfused(position[e], e.primitive, _signature(e),
                                       f"a lone {e.primitive} is one MLX kernel already: not worth a generated one"))

    # Bodies: members plus the movement chains they read through; inputs in first-use order.
    views, inputs = [], []
    for c in kept:
        view = clustering.view(c.members)
        defined = {v for e in view for v in e.outputs}
        views.append(view)
        inputs.append(list(dict.fromkeys(v for e in view for v in e.inputs if v not in defined)))

    # A region writes the values that something outside it still reads.
    members = {e for c in kept for e in c.members}
    live = set(graph.outputs) | {v for vs in inputs for v in vs}
    for e in reversed(graph.eqns):
        if e not in members and any(v in live for v in e.outputs):
            live.update(e.inputs)

    fused_eqns: list[Eqn] = []
    regions: list[RegionReport] = []
    for c, view, reads in zip(kept, views, inputs):
        outs = [v for e in view if e in c.members for v in e.outputs if v in live]
        if outs:
            eqn, region = _region(clustering, view, reads, outs)
            fused_eqns.append(eqn)
            regions.append(region)

    # Movement ops now folded into every region that read them are dead outside.
    outer = [e for e in graph.eqns if e not in members and any(v in live for v in e.outputs)]
    outer += fused_eqns
    defined = list(graph.inputs) + [v for v, _ in graph.constants]
    result = dce(graph.replace(eqns=topological_sort(outer, defined)))

    partials: list[PartialsDecision] = []
    if split:
        result, regions, partials = column_partials(result, tuple(regions), chip)
        regions = list(regions)

    survivors = set(result.eqns)
    reported = {u.equation for u in unfused}
    for e in graph.eqns:
        if e in members or e not in survivors or position[e] in reported:
            continue
        r, reason = clustering.roles[e]
        if e in clustering.alone:
            reason = clustering.alone[e]
        elif r is Role.MOVEMENT:
            readers = sorted({u.primitive for v in e.outputs for u in result.users(v)})
            reason = (f"movement read by {', '.join(readers) or 'the graph outputs'} outside any "
                      "region: stays an MLX op (a view where MLX can)")
        unfused.append(Unfused(position[e], e.primitive, _signature(e), reason))
    unfused.sort(key=lambda u: u.equation)
    return result, FusionReport(tuple(regions), tuple(unfused), tuple(clustering.boundaries),
                                splits=tuple(splits), partials=tuple(partials))


def fuse(graph: Graph, chip=None) -> Graph:
    """`fuse_with_report` without the report.

    Example:
        >>> import mlx.core as mx, mlxtriton
        >>> g = mlxtriton.trace(lambda x: mx.exp(x) * 2 + 1)(mx.ones((4, 8)))
        >>> fuse(g).primitive_counts()
        {'Fused': 1}
    """
    return fuse_with_report(graph, chip)[0]
