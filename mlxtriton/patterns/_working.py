"""Patterns layer: the graph a rewrite works on, as indexes updated in place (producers, users in
program order, an order key per equation, live constants), so that a rewrite costs what it
touches rather than the size of the graph. `freeze` gives the immutable `Graph` back.
May import mlx and mlxtriton.graph.
"""

from __future__ import annotations

import bisect
from collections import Counter
from typing import Iterable, Sequence

import mlx.core as mx

from mlxtriton.graph import dtypes
from mlxtriton.graph.core import Eqn, Graph, Var

# Order keys start this far apart, so equations inserted between two neighbours get keys of
# their own; a gap that runs out renumbers the whole graph (amortised: rare).
_GAP = 1 << 32


class WorkingGraph:
    """A graph being rewritten. Reads like a `Graph` for the rules (`producer`, `users`,
    `is_output`, `const_values`); the rewrite driver changes it through `insert_before`,
    `rewire` and `remove_dead`, each touching only the equations involved.

    Example:
        >>> w = WorkingGraph(graph)
        >>> w.users(graph.inputs[0])  # the equations reading the first input, in program order
    """

    def __init__(self, graph: Graph):
        self.source = graph
        self.inputs = graph.inputs
        self.eqns: list[Eqn] = list(graph.eqns)
        self.outputs: list[Var] = list(graph.outputs)
        self.const_values: dict[Var, mx.array] = dict(graph.constants)  # in graph order
        self._order: dict[Eqn, int] = {e: (i + 1) * _GAP for i, e in enumerate(self.eqns)}
        self._producers: dict[Var, Eqn] = {v: e for e in self.eqns for v in e.outputs}
        self._users: dict[Var, list[Eqn]] = {}
        for e in self.eqns:
            for v in dict.fromkeys(e.inputs):
                self._users.setdefault(v, []).append(e)
        self._output_count = Counter(self.outputs)

    # ---- reading (the Graph methods rules use) ----
    def producer(self, var: Var) -> Eqn | None:
        return self._producers.get(var)

    def users(self, var: Var) -> tuple[Eqn, ...]:
        """The equations that read ``var``, in program order."""
        return tuple(self._users.get(var, ()))

    def is_output(self, var: Var) -> bool:
        return var in self._output_count

    @property
    def constants(self) -> tuple[tuple[Var, mx.array], ...]:
        return tuple(self.const_values.items())

    def order(self, eqn: Eqn) -> int:
        """A key that sorts equations in program order (stable while the equation lives)."""
        return self._order[eqn]

    def __contains__(self, eqn: Eqn) -> bool:
        return eqn in self._order

    def index(self, eqn: Eqn) -> int:
        """The position of ``eqn`` in `eqns`."""
        return self.position(self._order[eqn])

    def position(self, key: int) -> int:
        """How many equations sort before the order key ``key``."""
        return bisect.bisect_left(self.eqns, key, key=self._order.__getitem__)

    # ---- changing ----
    def insert_before(self, root: Eqn, eqns: Sequence[Eqn], constants: Iterable[tuple[Var, mx.array]]) -> None:
        """Put ``eqns`` (in order) right before ``root`` and add ``constants``."""
        for v, a in constants:
            self.const_values[v] = a
        if not eqns:
            return
        pos = self.index(root)
        low = self._order[self.eqns[pos - 1]] if pos else 0
        step = (self._order[root] - low) // (len(eqns) + 1)
        if step == 0:
            self._renumber()
            low = self._order[self.eqns[pos - 1]] if pos else 0
            step = (self._order[root] - low) // (len(eqns) + 1)
        self.eqns[pos:pos] = eqns
        for k, e in enumerate(eqns, 1):
            self._order[e] = low + k * step
            for v in e.outputs:
                self._producers[v] = e
            for v in dict.fromkeys(e.inputs):
                self._add_user(v, e)

    def rewire(self, old: Var, new: Var) -> list[tuple[Eqn, Eqn]]:
        """Point every reader of ``old`` (equations and graph outputs) at ``new``; the readers'
        ``(before, after)`` equations, in program order."""
        changed = []
        for u in self._users.pop(old, []):
            after = Eqn(u.primitive, tuple(new if v is old else v for v in u.inputs), u.outputs, u.params)
            self.eqns[self.index(u)] = after
            self._order[after] = self._order.pop(u)
            for v in after.outputs:
                self._producers[v] = after
            for v in dict.fromkeys(after.inputs):
                readers = self._users.get(v)
                if readers is not None and u in readers:
                    readers[readers.index(u)] = after
                else:
                    self._add_user(v, after)
            changed.append((u, after))
        if old in self._output_count:
            self.outputs = [new if v is old else v for v in self.outputs]
            self._output_count = Counter(self.outputs)
        return changed

    def remove_dead(self, candidates: Iterable[Eqn | Var]) -> list[Eqn]:
        """Remove the equations among ``candidates`` (and constants, given as vars) that nothing
        reads, then what only they read; the equations removed."""
        removed: list[Eqn] = []
        stack = list(candidates)
        while stack:
            item = stack.pop()
            if isinstance(item, Var):
                if item in self.const_values and not self._read(item):
                    del self.const_values[item]
                continue
            e = item
            if e not in self._order or any(self._read(v) for v in e.outputs):
                continue
            del self.eqns[self.index(e)]
            del self._order[e]
            for v in e.outputs:
                del self._producers[v]
                self._users.pop(v, None)
            removed.append(e)
            for v in dict.fromkeys(e.inputs):
                readers = self._users[v]
                readers.remove(e)
                if not readers:
                    del self._users[v]
                    stack.append(self._producers.get(v, v))
        return removed

    def remove_all_dead(self) -> list[Eqn]:
        """Dead-code elimination over the whole graph (`mlxtriton.graph.transforms.dce`)."""
        return self.remove_dead([*self.const_values, *self.eqns])

    def _read(self, v: Var) -> bool:
        return v in self._users or v in self._output_count

    def _add_user(self, v: Var, e: Eqn) -> None:
        readers = self._users.setdefault(v, [])
        key = self._order[e]
        if not readers or self._order[readers[-1]] < key:
            readers.append(e)
        else:
            readers.insert(bisect.bisect_left(readers, key, key=self._order.__getitem__), e)

    def _renumber(self) -> None:
        self._order = {e: (i + 1) * _GAP for i, e in enumerate(self.eqns)}

    # ---- results ----
    def fingerprint(self) -> int:
        """A structural hash that stays cheap with large constants (compared by identity)."""
        index: dict[Var, int] = {}
        parts: list = []
        for v in self.inputs:
            index[v] = len(index)
            parts.append(v.aval)
        for v, a in self.const_values.items():
            index[v] = len(index)
            parts.append((v.aval, dtypes.array_digest(a) if v.size <= 64 else id(a)))
        for e in self.eqns:
            parts.append((e.primitive, tuple(index[v] for v in e.inputs), e.params))
            for v in e.outputs:
                index[v] = len(index)
        parts.append(tuple(index[v] for v in self.outputs))
        return hash(tuple(parts))

    def freeze(self) -> Graph:
        """The graph as it stands, as an immutable `Graph` (the source's trees and state names)."""
        return self.source.replace(eqns=tuple(self.eqns), constants=self.constants,
                                   outputs=tuple(self.outputs))
