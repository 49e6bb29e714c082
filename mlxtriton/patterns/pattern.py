"""Patterns layer: the pattern language rules are written in (tinygrad's ``UPat`` over mlxtriton's
graph IR) and the matcher. A pattern describes how a var was produced; matching walks producers,
binds names and records which equations the match covers, so the driver can check dataflow.
May import mlxtriton.graph.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Callable, Iterator

from mlxtriton.graph.core import Eqn, Graph, Var

from mlxtriton.patterns._values import Values

# Binary primitives whose operands may be swapped: a pattern written ``x * s`` also matches ``s * x``.
COMMUTATIVE = frozenset({"Add", "Multiply", "Maximum", "Minimum", "Equal", "NotEqual", "LogicalAnd", "LogicalOr"})


def _ops(op: str | frozenset[str] | set[str] | tuple[str, ...] | None) -> frozenset[str] | None:
    if op is None or isinstance(op, frozenset):
        return op
    return frozenset({op}) if isinstance(op, str) else frozenset(op)


@dataclass(frozen=True, eq=False)
class Pat:
    """A pattern over a var: what produced it (``op``), from what (``src``), under which name.

    Build patterns with `P`; combine alternatives with ``|`` (tried in order).

    Attributes:
        op: primitives the producing equation may have; None for a leaf (any var).
        src: patterns for the producer's inputs (in order; both orders for `COMMUTATIVE`
            primitives with two inputs); None: inputs are not looked at.
        name: binds the matched var (a name bound twice must bind the same var, or for scalars
            the same value).
        where: a predicate on the producing equation (op patterns) or on the scalar's value.
        alts: alternatives (this pattern is then only their union).
        leaf: for leaves, "var", "scalar" (a known scalar value, bound in ``Match.values``) or
            "const" (computed from constants alone).
        shared: the equations this sub-pattern matches may also be used outside the match
            (they are read, not replaced).
    """

    op: frozenset[str] | None = None
    src: tuple["Pat", ...] | None = None
    name: str | None = None
    where: Callable[[Any], bool] | None = None
    alts: tuple["Pat", ...] = ()
    leaf: str = "var"
    shared: bool = False

    def __or__(self, other: "Pat") -> "Pat":
        return Pat(alts=(self.alts or (self,)) + (other.alts or (other,)))

    @property
    def roots(self) -> frozenset[str] | None:
        """The primitives an equation matching this pattern can have (None: any)."""
        if self.alts:
            sets = [a.roots for a in self.alts]
            return None if any(s is None for s in sets) else frozenset().union(*sets)
        return self.op

    def __repr__(self) -> str:
        if self.alts:
            return " | ".join(map(repr, self.alts))
        if self.op is None:
            return f"{self.leaf}({self.name or ''})"
        src = "" if self.src is None else "(" + ", ".join(map(repr, self.src)) + ")"
        name = f"@{self.name}" if self.name else ""
        return f"{'|'.join(sorted(self.op))}{src}{name}"


class P:
    """Pattern constructors.

    Example:
        >>> silu = P("Multiply", P.var("x"), P("Sigmoid", P.var("x")))  # x * sigmoid(x)
        >>> half = P("Multiply", P.var("x"), P.scalar("s", 0.5))         # x * 0.5 (or 0.5 * x)
    """

    def __new__(cls, op, *src: Pat, name: str | None = None, where=None, shared: bool = False,
                any_src: bool = False) -> Pat:
        return Pat(_ops(op), None if any_src else tuple(src), name, where, shared=shared)

    @staticmethod
    def var(name: str | None = None) -> Pat:
        """Any var."""
        return Pat(name=name)

    @staticmethod
    def scalar(name: str | None = None, value: float | None = None, where=None) -> Pat:
        """A var whose elements are all one known value (a 0-d constant, maybe broadcast or cast),
        optionally equal to ``value`` or satisfying ``where(value)``."""
        if value is not None:
            want = float(value)
            return Pat(name=name, leaf="scalar", where=lambda v: v == want)
        return Pat(name=name, leaf="scalar", where=where)

    @staticmethod
    def const(name: str | None = None) -> Pat:
        """A var computed from constants alone (constants, ``Arange``, and ops on them)."""
        return Pat(name=name, leaf="const")

    @staticmethod
    def opt(op, inner: Pat, name: str | None = None, where=None) -> Pat:
        """``op(inner)`` or ``inner`` itself (an optional unary wrapper, tried first)."""
        return P(op, inner, name=name, where=where) | inner


@dataclass
class _State:
    vars: dict[str, Var] = field(default_factory=dict)
    values: dict[str, Any] = field(default_factory=dict)
    covered: tuple[Eqn, ...] = ()

    def copy(self) -> "_State":
        return _State(dict(self.vars), dict(self.values), self.covered)


class Matcher:
    """Matches patterns against one graph (its producers and the `Values` analysis)."""

    def __init__(self, graph: Graph, values: Values):
        self.graph = graph
        self.values = values

    def match(self, pat: Pat, var: Var) -> Iterator[_State]:
        """Every way ``pat`` matches ``var``, in pattern order (alternatives first to last)."""
        yield from self._match(pat, var, _State(), False)

    def _bind(self, st: _State, name: str | None, var: Var, value: Any = None, scalar: bool = False):
        if name is None:
            return st
        if name in st.vars:
            same = st.values.get(name) == value if scalar else st.vars[name] is var
            return st if same else None
        st = st.copy()
        st.vars[name] = var
        if scalar:
            st.values[name] = value
        return st

    def _match(self, p: Pat, v: Var, st: _State, shared: bool) -> Iterator[_State]:
        if p.alts:
            for a in p.alts:
                yield from self._match(a, v, st, shared)
            return
        if p.op is None:
            value, scalar = None, p.leaf == "scalar"
            if scalar:
                value = self.values.scalar(v)
                if value is None or (p.where is not None and not p.where(value)):
                    return
            elif p.leaf == "const" and not self.values.is_constant(v):
                return
            out = self._bind(st, p.name, v, value, scalar)
            if out is not None:
                yield out
            return
        e = self.graph.producer(v)
        if e is None or e.primitive not in p.op or len(e.outputs) != 1:
            return
        if p.where is not None and not p.where(e):
            return
        st = self._bind(st, p.name, v)
        if st is None:
            return
        shared = shared or p.shared
        if not shared and e not in st.covered:
            st = st.copy()
            st.covered = st.covered + (e,)
        if p.src is None:
            yield st
            return
        if len(p.src) != len(e.inputs):
            return
        orders = [p.src]
        if e.primitive in COMMUTATIVE and len(p.src) == 2 and e.inputs[0] is not e.inputs[1]:
            orders.append(p.src[::-1])
        for srcs in orders:
            yield from self._match_all(srcs, e.inputs, st, shared)

    def _match_all(self, pats, vars_, st: _State, shared: bool) -> Iterator[_State]:
        if not pats:
            yield st
            return
        for s in self._match(pats[0], vars_[0], st, shared):
            yield from self._match_all(pats[1:], vars_[1:], s, shared)
