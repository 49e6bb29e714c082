"""Graph layer: the graph -> graph utilities every pass needs: dead-code elimination, common-
subexpression elimination, folding of small constants, substitution and replacing a sub-graph.
Each returns a new graph; none mutates. May import mlx and the graph layer.
"""

from __future__ import annotations

import heapq
from typing import Iterable, Mapping, Sequence

import mlx.core as mx

from mlxtriton.graph import dtypes
from mlxtriton.graph.core import Eqn, Graph, Params, Var
from mlxtriton.graph.primitives import Family, get as get_primitive


class GraphError(ValueError):
    """A transform was asked for something that would break the graph."""


class CycleError(GraphError):
    """Equations that no order can put each after what it reads."""


def dce(graph: Graph) -> Graph:
    """Drop equations whose outputs no graph output needs, and constants nobody reads."""
    live: set[Var] = set(graph.outputs)
    kept: list[Eqn] = []
    for e in reversed(graph.eqns):
        if any(v in live for v in e.outputs):
            kept.append(e)
            live.update(e.inputs)
    kept.reverse()
    constants = tuple((v, a) for v, a in graph.constants if v in live)
    if len(kept) == len(graph.eqns) and len(constants) == len(graph.constants):
        return graph
    return graph.replace(eqns=tuple(kept), constants=constants)


def substitute(graph: Graph, mapping: Mapping[Var, Var]) -> Graph:
    """Replace every use of a var by another (definitions stay; run `dce` to drop dead ones)."""
    if not mapping:
        return graph

    def sub(v: Var) -> Var:
        while v in mapping:
            v = mapping[v]
        return v

    eqns = tuple(
        e if not any(v in mapping for v in e.inputs)
        else Eqn(e.primitive, tuple(sub(v) for v in e.inputs), e.outputs, e.params)
        for e in graph.eqns
    )
    return graph.replace(eqns=eqns, outputs=tuple(sub(v) for v in graph.outputs))


def cse(graph: Graph, constants_up_to: int | None = None) -> Graph:
    """Merge equal constants and equations with the same primitive, inputs and params (never two
    collectives: each is one message, and two equal receives get two different ones). With
    ``constants_up_to``, larger constants are left as they are, unread (a captured weight)."""
    mapping: dict[Var, Var] = {}
    by_digest: dict[tuple, Var] = {}
    constants = []
    for v, a in graph.constants:
        if constants_up_to is not None and a.size > constants_up_to:
            constants.append((v, a))
            continue
        key = (v.aval, dtypes.array_digest(a))
        if key in by_digest:
            mapping[v] = by_digest[key]
        else:
            by_digest[key] = v
            constants.append((v, a))
    seen: dict[tuple, Eqn] = {}
    eqns = []
    for e in graph.eqns:
        ins = tuple(mapping.get(v, v) for v in e.inputs)
        key = (e.primitive, ins, e.params, tuple(v.aval for v in e.outputs))
        if key in seen and get_primitive(e.primitive).family is not Family.COLLECTIVE:
            for old, new in zip(e.outputs, seen[key].outputs):
                mapping[old] = new
            continue
        e = e if ins == e.inputs else Eqn(e.primitive, ins, e.outputs, e.params)
        seen[key] = e
        eqns.append(e)
    if not mapping:
        return graph
    return graph.replace(
        eqns=tuple(eqns),
        constants=tuple(constants),
        outputs=tuple(mapping.get(v, v) for v in graph.outputs),
    )


# Folding only makes small constants: folding a Broadcast of a scalar to a 4096 x 4096 weight
# would trade one cheap op for 64 MB of graph constant.
FOLD_MAX_ELEMENTS = 1024
# A collective communicates when it runs: evaluating one at optimize time would be a message.
_NEVER_FOLD = frozenset({Family.RANDOM, Family.OPAQUE, Family.FAST, Family.COLLECTIVE})


def fold_constants(graph: Graph, max_elements: int = FOLD_MAX_ELEMENTS) -> Graph:
    """Evaluate equations whose inputs are all constants and whose outputs are small."""
    from mlxtriton.graph.evaluate_mlx import MLX_RULES

    values = dict(graph.constants)
    constants = list(graph.constants)
    eqns = []
    changed = False
    for e in graph.eqns:
        foldable = (
            e.inputs
            and all(v in values for v in e.inputs)
            and all(v.size <= max_elements for v in e.outputs)
            and get_primitive(e.primitive).family not in _NEVER_FOLD
            and e.primitive in MLX_RULES
        )
        if not foldable:
            eqns.append(e)
            continue
        result = MLX_RULES[e.primitive](*(values[v] for v in e.inputs), **e.params)
        results = result if isinstance(result, (tuple, list)) else (result,)
        mx.eval(results)
        for v, r in zip(e.outputs, results):
            values[v] = r
            constants.append((v, r))
        changed = True
    if not changed:
        return graph
    return dce(graph.replace(eqns=tuple(eqns), constants=tuple(constants)))


def topological_sort(eqns: Sequence[Eqn], defined: Iterable[Var]) -> tuple[Eqn, ...]:
    """Order equations so each follows its inputs' producers, keeping the given order where it
    already is one (Kahn's algorithm, ties broken by original position)."""
    defined = set(defined)
    producer = {v: i for i, e in enumerate(eqns) for v in e.outputs}
    waiting = [0] * len(eqns)
    dependents: dict[int, list[int]] = {}
    for i, e in enumerate(eqns):
        deps = {producer[v] for v in e.inputs if v not in defined and v in producer}
        missing = [v for v in e.inputs if v not in defined and v not in producer]
        if missing:
            raise GraphError(f"{e.primitive} reads a var that nothing defines: {missing[0]!r}")
        waiting[i] = len(deps)
        for d in deps:
            dependents.setdefault(d, []).append(i)
    ready = [i for i, n in enumerate(waiting) if n == 0]
    heapq.heapify(ready)
    order = []
    while ready:
        i = heapq.heappop(ready)
        order.append(eqns[i])
        for j in dependents.get(i, ()):
            waiting[j] -= 1
            if waiting[j] == 0:
                heapq.heappush(ready, j)
    if len(order) != len(eqns):
        raise CycleError("the equations contain a cycle")
    return tuple(order)


def replace_subgraph(
    graph: Graph,
    eqns: Iterable[Eqn],
    replacement: Graph,
    inputs: Sequence[Var],
    outputs: Sequence[Var],
) -> Graph:
    """Replace a set of equations by the equations of another graph.

    Args:
        graph: the graph to rewrite.
        eqns: equations of ``graph`` to remove.
        replacement: a graph whose inputs bind to ``inputs`` and whose outputs take the place of
            ``outputs``; its constants become constants of the result.
        inputs: vars of ``graph`` fed to ``replacement``'s inputs (same shapes and dtypes).
        outputs: vars defined by the removed equations that ``replacement``'s outputs replace.
            Every removed var still used elsewhere must be among them.

    Returns:
        The rewritten graph, topologically sorted, dead code removed.

    Raises:
        GraphError: mismatched bindings, a removed value still in use, or a cycle.
    """
    removed = list(dict.fromkeys(eqns))
    removed_set = set(removed)
    if len(inputs) != len(replacement.inputs) or len(outputs) != len(replacement.outputs):
        raise GraphError(
            f"replacement takes {len(replacement.inputs)} inputs and gives {len(replacement.outputs)} "
            f"outputs; bound {len(inputs)} and {len(outputs)}"
        )
    for outer, inner in list(zip(inputs, replacement.inputs)) + list(zip(outputs, replacement.outputs)):
        if outer.aval != inner.aval:
            raise GraphError(f"binding {outer.type_str()} to {inner.type_str()}")
    defined_by_removed = {v for e in removed for v in e.outputs}
    if any(v in defined_by_removed for v in inputs):
        raise GraphError("a replacement input is defined by a removed equation")
    replaced = set(outputs)
    for e in graph.eqns:
        if e in removed_set:
            continue
        for v in e.inputs:
            if v in defined_by_removed and v not in replaced:
                raise GraphError(f"{e.primitive} still reads {v.type_str()}, which the match removes")
    for v in graph.outputs:
        if v in defined_by_removed and v not in replaced:
            raise GraphError(f"graph output {v.type_str()} is removed without a replacement")

    # Fresh vars for the replacement, so one replacement graph can be inserted many times.
    rename: dict[Var, Var] = dict(zip(replacement.inputs, inputs))
    new_constants = []
    for v, a in replacement.constants:
        rename[v] = Var(v.shape, v.dtype)
        new_constants.append((rename[v], a))
    new_eqns = []
    for e in replacement.eqns:
        outs = tuple(Var(v.shape, v.dtype) for v in e.outputs)
        rename.update(zip(e.outputs, outs))
        new_eqns.append(Eqn(e.primitive, tuple(rename[v] for v in e.inputs), outs, e.params))
    mapping = {outer: rename[inner] for outer, inner in zip(outputs, replacement.outputs)}
    kept = [e for e in graph.eqns if e not in removed_set]
    first = min((graph.eqns.index(e) for e in removed), default=len(kept))
    position = sum(1 for e in graph.eqns[:first] if e not in removed_set)
    merged = kept[:position] + new_eqns + kept[position:]
    g = graph.replace(eqns=tuple(merged), constants=graph.constants + tuple(new_constants))
    g = substitute(g, mapping)
    g = g.replace(eqns=topological_sort(g.eqns, list(g.inputs) + [v for v, _ in g.constants]))
    return dce(g)


def make_eqn(primitive: str, inputs: Sequence[Var], params: Mapping | None = None) -> Eqn:
    """An equation whose output vars are inferred through MLX's shape rules."""
    from mlxtriton.graph.evaluate import abstract_eval

    params = dict(params or {})
    avals = abstract_eval(primitive, [v.aval for v in inputs], params)
    return Eqn(primitive, tuple(inputs), tuple(Var(s, d) for s, d in avals), Params(params))


class GraphBuilder:
    """Builds a graph equation by equation, inferring output types (for passes and tests).

    Example:
        >>> b = GraphBuilder()
        >>> x = b.input((2, 3), "float32")
        >>> y, = b.add("Exp", [x])
        >>> g = b.build([y])
    """

    def __init__(self):
        self.inputs: list[Var] = []
        self.constants: list[tuple[Var, mx.array]] = []
        self.eqns: list[Eqn] = []

    def input(self, shape, dtype: str) -> Var:
        v = Var(tuple(shape), dtype)
        self.inputs.append(v)
        return v

    def constant(self, value) -> Var:
        value = value if isinstance(value, mx.array) else mx.array(value)
        v = Var(tuple(value.shape), dtypes.from_mx(value.dtype))
        self.constants.append((v, value))
        return v

    def add(self, primitive: str, inputs: Sequence[Var], **params) -> tuple[Var, ...]:
        e = make_eqn(primitive, inputs, params)
        self.eqns.append(e)
        return e.outputs

    def build(self, outputs: Sequence[Var]) -> Graph:
        return Graph(tuple(self.inputs), tuple(self.eqns), tuple(outputs), tuple(self.constants))
