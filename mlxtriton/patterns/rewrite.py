"""Patterns layer: rule tables and the one driver that applies them to a fixed point, checking
dataflow (an intermediate also used outside a match blocks it) and failing loudly on a cycle.
May import mlx and mlxtriton.graph.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable, Iterable, Mapping, Sequence

import mlx.core as mx

from mlxtriton.graph import dtypes
from mlxtriton.graph.core import Eqn, Graph, Var
from mlxtriton.graph.transforms import make_eqn

from mlxtriton.patterns._values import Values
from mlxtriton.patterns._working import WorkingGraph
from mlxtriton.patterns.pattern import Matcher, Pat
from mlxtriton.patterns.report import Fired, NearMiss, PatternReport, Recognised

# A rule is (pattern, fn): when pattern matches at an equation, fn(match) returns the var that
# replaces the equation's output, a Miss (a near miss, with the reason the user reads in
# explain), a Note (recognised, nothing to rewrite) or None (not this rule's shape).
# Tables combine with +.

# A rewrite that keeps producing new graphs is a bug in a rule table; stop loudly long before it
# could be mistaken for a slow pass (the largest traced model blocks need a few hundred rewrites).
MAX_REWRITES = 20_000


class RewriteError(ValueError):
    """A rule returned something that does not fit (wrong type or shape), or rules cycle."""


@dataclass(frozen=True)
class Miss:
    """A near miss: the rule's shape is there, but it must not fire, because ``reason``."""

    reason: str


@dataclass(frozen=True)
class Note:
    """The rule recognised its shape and leaves it as it is (``text`` is reported)."""

    text: str


@dataclass(frozen=True)
class Rule:
    pattern: Pat
    fn: Callable[["Match"], Any]
    name: str
    group: str
    exclusive: bool = True


class Rules:
    """An ordered table of ``(pattern, fn)`` rules; ``+`` concatenates tables.

    Args:
        rules: ``(pattern, fn)`` or ``(pattern, fn, name)``; the name defaults to ``fn``'s.
        group: the table's name, reported with each rule that fires.
        exclusive: the matched intermediates must have no users outside the match (False for
            rewrites of views and single cheap ops, which may be duplicated freely).

    Example:
        >>> def drop(m):
        ...     return m["x"]
        >>> times_one = Rules([(P("Multiply", P.var("x"), P.scalar(value=1.0)), drop)], "cleanup")
        >>> g2, report = rewrite(g, times_one)  # x * 1 -> x
    """

    def __init__(self, rules: Iterable[tuple] = (), group: str = "rules", exclusive: bool = True):
        items = []
        for r in rules:
            if isinstance(r, Rule):
                items.append(r)
                continue
            pattern, fn, *rest = r
            items.append(Rule(pattern, fn, rest[0] if rest else fn.__name__, group, exclusive))
        self.rules: tuple[Rule, ...] = tuple(items)
        by_root: dict[str, list[Rule]] = {}
        anywhere: list[Rule] = []
        for rule in self.rules:
            roots = rule.pattern.roots
            if roots is None:
                anywhere.append(rule)
            else:
                for prim in roots:
                    by_root.setdefault(prim, []).append(rule)
        self._by_root = by_root
        self._anywhere = anywhere
        self._order = {rule: i for i, rule in enumerate(self.rules)}
        self._for: dict[str, list[Rule]] = {}

    def __add__(self, other: "Rules") -> "Rules":
        return Rules(self.rules + other.rules)

    def __len__(self) -> int:
        return len(self.rules)

    def __iter__(self):
        return iter(self.rules)

    def for_primitive(self, primitive: str) -> list[Rule]:
        """The rules that can match at an equation of ``primitive``, in table order."""
        found = self._for.get(primitive)
        if found is None:
            found = self._by_root.get(primitive, [])
            if self._anywhere:
                found = sorted(found + self._anywhere, key=self._order.__getitem__)
            self._for[primitive] = found
        return found


class Match:
    """What a rule's ``fn`` receives: the bound names, the graph, and a builder for the
    replacement (new equations are created through MLX's shape rules, constants at will)."""

    def __init__(self, graph: WorkingGraph, root: Eqn, values: Values, bound: dict, scalars: dict,
                 covered: Sequence[Eqn], context: Mapping[str, Any] | None = None):
        self.graph = graph
        self.context = context or {}  # what the stage knows of its target (backend, fusing)
        self.root = root
        self.values = values
        self.vars = bound
        self.scalars = scalars
        self.covered: list[Eqn] = list(covered)
        self.eqns: list[Eqn] = []
        self.constants: list[tuple[Var, mx.array]] = []
        self.detail = ""
        self._built: dict[Var, mx.array] = {}

    # ---- reading ----
    def __getitem__(self, name: str) -> Var:
        return self.vars[name]

    def __contains__(self, name: str) -> bool:
        return name in self.vars

    def get(self, name: str) -> Var | None:
        return self.vars.get(name)

    def value(self, name: str):
        """The value a `P.scalar` leaf bound."""
        return self.scalars[name]

    def eqn(self, name_or_var) -> Eqn | None:
        """The equation producing a bound var (or a var)."""
        var = self.vars[name_or_var] if isinstance(name_or_var, str) else name_or_var
        return self.graph.producer(var)

    def cover(self, *eqns: Eqn) -> None:
        """Add equations found by walking the graph to what the match replaces (their outputs
        then must not be used outside the match)."""
        for e in eqns:
            if e is not None and e not in self.covered:
                self.covered.append(e)

    # ---- building the replacement ----
    def add(self, primitive: str, inputs: Sequence[Var], **params) -> Var:
        """A new equation (output type from MLX's shape rules); returns its (first) output."""
        e = make_eqn(primitive, inputs, params)
        self.eqns.append(e)
        return e.outputs[0]

    def add_eqn(self, primitive: str, inputs: Sequence[Var], **params) -> Eqn:
        e = make_eqn(primitive, inputs, params)
        self.eqns.append(e)
        return e

    def constant(self, value, dtype: str | None = None) -> Var:
        """A new graph constant (an ``mx.array``, or a Python number made 0-d of ``dtype``)."""
        if not isinstance(value, mx.array):
            value = mx.array(value, dtype=dtypes.to_mx(dtype) if dtype else None)
        elif dtype is not None and dtypes.from_mx(value.dtype) != dtype:
            value = value.astype(dtypes.to_mx(dtype))
        mx.eval(value)
        v = Var(tuple(value.shape), dtypes.from_mx(value.dtype))
        self.constants.append((v, value))
        self._built[v] = value
        return v

    def splat(self, value, like: Var, dtype: str | None = None) -> Var:
        """``value`` broadcast to ``like``'s shape (a 0-d constant and a Broadcast)."""
        c = self.constant(value, dtype or like.dtype)
        return c if not like.shape else self.add("Broadcast", [c], shape=like.shape)

    def reshape(self, var: Var, shape) -> Var:
        shape = tuple(int(d) for d in shape)
        return var if var.shape == shape else self.add("Reshape", [var], shape=shape)

    def astype(self, var: Var, dtype: str) -> Var:
        return var if var.dtype == dtype else self.add("AsType", [var], dtype=dtype)

    def fold(self, var: Var, max_elements: int | None = None) -> Var:
        """``var`` as a constant when everything it is computed from is known now (folding at
        optimize time, e.g. batch-norm statistics into convolution weights); else ``var``."""
        value = self._evaluate(var)
        if value is None or (max_elements is not None and value.size > max_elements):
            return var
        return self.constant(value)

    def _evaluate(self, var: Var):
        if var in self._built:
            return self._built[var]
        producer = next((e for e in self.eqns if var in e.outputs), None)
        if producer is None:
            return self.values.value(var, max_elements=max(var.size, 1))
        args = [self._evaluate(v) for v in producer.inputs]
        if any(a is None for a in args):
            return None
        from mlxtriton.graph.evaluate_mlx import MLX_RULES

        out = MLX_RULES[producer.primitive](*args, **producer.params)
        outs = out if isinstance(out, (tuple, list)) else (out,)
        mx.eval(outs)
        for v, o in zip(producer.outputs, outs):
            self._built[v] = o
        return self._built[var]


def _uses_outside(graph: WorkingGraph, covered: Sequence[Eqn], root: Eqn, values: Values) -> tuple[Eqn, Var, str] | None:
    """The first covered intermediate (in match order: the near miss names it) that something
    outside the match also reads."""
    members = set(covered)
    for e in covered:
        if e is root:
            continue
        for v in e.outputs:
            if values.is_constant(v):
                continue  # constant tables (scales, masks, angles) are cheap to keep
            if graph.is_output(v):
                return e, v, "a graph output"
            for u in graph.users(v):
                if u not in members:
                    return e, v, u.primitive
    return None


def rewrite(graph: Graph, rules: Rules | Sequence[Rules], *, max_rewrites: int = MAX_REWRITES,
            on_rewrite: Callable[[Graph], Any] | None = None,
            context: Mapping[str, Any] | None = None) -> tuple[Graph, PatternReport]:
    """Apply ``rules`` to a fixed point: sweep the equations in order, rewrite at the first rule
    that fires, continue from there, and sweep again until a sweep changes nothing. Several
    tables are phases: each is applied to a fixed point in turn, a later one to what the earlier
    ones left.

    Args:
        graph: the graph to rewrite (not modified).
        rules: the rule table, or the tables of successive phases.
        max_rewrites: a bound on rewrites; exceeding it is reported as a cycle.
        on_rewrite: called with the graph after every single rewrite (tests pass `verify`).
        context: what rules may consult (`Match.context`): the target's ``backend`` and whether
            the fuse stage follows (``fusing``).

    Returns:
        ``(graph, report)``: the rewritten graph (dead code removed) and what fired where, what
        was recognised, and the near misses with their reasons. Equations are named by their
        position in the graph passed in.

    Raises:
        RewriteError: a rule returned a var of another type, or the rules cycle (a graph seen
            before comes back, or ``max_rewrites`` is exceeded).

    Example:
        >>> g2, report = rewrite(mlxtriton.trace(f)(x), DEFAULT_RULES)
        >>> print("\\n".join(report.lines()))
    """
    origin: dict[Eqn, int] = {e: i for i, e in enumerate(graph.eqns)}
    fired: list[Fired] = []
    misses: dict[tuple[str, Eqn], NearMiss] = {}
    notes: dict[tuple[str, Eqn], Recognised] = {}
    work = WorkingGraph(graph)
    values = Values(work)
    matcher = Matcher(work, values)
    history: list[str] = []
    for table in (rules,) if isinstance(rules, Rules) else tuple(rules):
        _to_fixed_point(work, values, matcher, table, origin, fired, misses, notes, history,
                        max_rewrites, on_rewrite, context)
    if fired:
        graph = work.freeze()
    alive = set(graph.eqns)
    near = [m for (name, e), m in misses.items() if e in alive]
    recognised = [n for (name, e), n in notes.items() if e in alive]
    return graph, PatternReport(tuple(fired), tuple(recognised), tuple(near))


def _to_fixed_point(work: WorkingGraph, values: Values, matcher: Matcher, rules: Rules, origin, fired,
                    misses, notes, history, max_rewrites, on_rewrite, context) -> None:
    """One table applied to ``work`` until a sweep changes nothing (`rewrite`)."""
    seen = {work.fingerprint()}

    def check_cycle() -> None:
        fp = work.fingerprint()
        if fp in seen:
            raise RewriteError(f"pattern rules cycle: the graph came back after rules {history[-8:]}")
        seen.add(fp)

    changed = True
    while changed:
        changed = False
        # The graph is compared with every graph seen before at the end of each sweep (a sweep
        # from a given graph is deterministic, so rules that cycle across sweeps repeat one),
        # and after every rewrite once a sweep has rewritten more often than it had equations
        # (rules that undo each other in place). Comparing after every rewrite would cost the
        # size of the graph each time.
        budget, in_sweep = len(work.eqns), 0
        i = 0
        while i < len(work.eqns):
            e = work.eqns[i]
            step = None
            for rule in rules.for_primitive(e.primitive):
                if (rule.name, e) in notes:
                    continue
                outcome = _try(rule, e, work, values, matcher, origin, context)
                if outcome is None:
                    continue
                if isinstance(outcome, NearMiss):
                    misses.setdefault((rule.name, e), outcome)
                    continue
                if isinstance(outcome, Recognised):
                    notes[(rule.name, e)] = outcome
                    continue
                step = (rule, outcome)
                break
            if step is None:
                i += 1
                continue
            rule, (match, replacement) = step
            i = _apply(work, values, match, replacement, origin, first=not fired)
            fired.append(Fired(rule.name, rule.group, origin[e], e.primitive, match.detail))
            history.append(rule.name)
            if len(fired) > max_rewrites:
                raise RewriteError(f"more than {max_rewrites} rewrites (last rules {history[-8:]})")
            in_sweep += 1
            if in_sweep > budget:
                check_cycle()
            if on_rewrite is not None:
                on_rewrite(work.freeze())
            changed = True
        if changed and in_sweep <= budget:
            check_cycle()


def _try(rule: Rule, e: Eqn, graph: WorkingGraph, values: Values, matcher: Matcher, origin, context=None):
    """The rule's outcome at ``e``: None, a NearMiss, a Recognised, or (match, replacement)."""
    if len(e.outputs) != 1:
        return None
    first_miss = None
    for st in matcher.match(rule.pattern, e.outputs[0]):
        m = Match(graph, e, values, st.vars, st.values, st.covered, context)
        result = rule.fn(m)
        if result is None:
            continue
        if isinstance(result, Miss):
            first_miss = first_miss or NearMiss(rule.name, rule.group, origin[e], e.primitive, result.reason)
            continue
        if isinstance(result, Note):
            return Recognised(rule.name, rule.group, origin[e], e.primitive, result.text)
        if not isinstance(result, Var):
            raise RewriteError(f"rule {rule.name} returned {result!r}, not a Var, Miss, Note or None")
        if result.aval != e.outputs[0].aval:
            raise RewriteError(
                f"rule {rule.name} replaces {e.outputs[0].type_str()} (#{origin[e]} {e.primitive}) "
                f"by {result.type_str()}"
            )
        blocked = _uses_outside(graph, m.covered, e, values) if rule.exclusive else None
        if blocked is not None:
            inner, v, user = blocked
            where = origin.get(inner, "?")
            first_miss = first_miss or NearMiss(
                rule.name, rule.group, origin[e], e.primitive,
                f"intermediate #{where} ({inner.primitive}, {v.type_str()}) is also used elsewhere "
                f"(by {user}); rewriting would compute it twice",
            )
            continue
        return m, result
    return first_miss


def _apply(work: WorkingGraph, values: Values, m: Match, replacement: Var, origin: dict[Eqn, int],
           first: bool) -> int:
    """Insert the match's new equations before its root, point every use of the root's output
    at the replacement, drop dead code (all of it at the ``first`` rewrite, as `dce` would;
    after that only what this rewrite left unread); the position to resume sweeping from."""
    root = m.root
    root_key = work.order(root)
    for e in m.eqns:
        origin[e] = origin[root]
    work.insert_before(root, m.eqns, m.constants)
    values.added(m.eqns, m.constants)
    old = root.outputs[0]
    if replacement is not old:
        for before, after in work.rewire(old, replacement):
            origin[after] = origin[before]
            values.replaced(before, after)
    dead = work.remove_all_dead() if first else work.remove_dead([root, *m.eqns, *(v for v, _ in m.constants)])
    for e in dead:
        values.removed(e)
    # Resume at the first new equation, or where the root was.
    new = next((e for e in m.eqns if e in work), None)
    return work.index(new) if new is not None else work.position(root_key)
