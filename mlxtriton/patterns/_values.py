"""Patterns layer: what is known about a graph's values before it runs: which vars are computed
from constants alone, their values (evaluated with MLX at optimize time), and scalars seen
through broadcasts and casts. One `Values` per graph, computed lazily, cached, and kept current
while the rewrite driver changes the graph. May import mlx and mlxtriton.graph.
"""

from __future__ import annotations

import math
from typing import Any

import mlx.core as mx

from mlxtriton.graph import dtypes
from mlxtriton.graph.core import Graph, Var
from mlxtriton.graph.evaluate_mlx import EVALUATED, MLX_RULES
from mlxtriton.graph.primitives import Family, get as get_primitive
from mlxtriton.patterns._working import WorkingGraph

# Movement ops that keep every element's value: a scalar stays that scalar through them (Full is
# mx.full materialising its broadcast input; MLX's VJPs start gradients from one).
VALUE_PRESERVING = frozenset({"Broadcast", "Reshape", "ExpandDims", "Squeeze", "Flatten", "Unflatten",
                              "Transpose", "Copy", "Full"})

# A constant sub-graph is evaluated at optimize time only up to this many elements per value:
# a 2048 x 2048 attention mask (4M) is checked for causality, a weight-sized broadcast is not.
MAX_EVALUATED = 1 << 22
# Scalars are recognised in constants up to this size (all elements compared).
MAX_SCALAR_SOURCE = 1024

# Never evaluated at optimize time: random bits change per call; custom kernels cannot run here;
# a collective's value comes from the other ranks (a Recv has no inputs at all).
_NEVER_CONSTANT = frozenset({Family.RANDOM, Family.FUSED, Family.COLLECTIVE})


class Values:
    """Constant-derived values of one graph, kept current while the rewrite driver changes it
    (`added`, `replaced`, `removed`): each change costs what it touches.

    Example:
        >>> v = Values(graph)
        >>> v.scalar(var)  # 0.125 for Broadcast(0-d constant 0.125)
    """

    def __init__(self, graph: Graph | WorkingGraph):
        self.graph = graph if isinstance(graph, WorkingGraph) else WorkingGraph(graph)
        self._constant: set[Var] | None = None
        self._value: dict[Var, mx.array | None] = dict(self.graph.const_values)
        self._scalar: dict[Var, Any] = {}
        self._keys: dict[tuple, list] | None = None
        self._digests: dict[Var, bytes] = {}

    # ---- dataflow ----
    def depends_on(self, var: Var, target: Var) -> bool:
        """True when ``var`` is computed (transitively) from ``target``."""
        graph = self.graph
        pt = graph.producer(target)
        floor = graph.order(pt) if pt is not None else -1
        stack, seen = [var], set()
        while stack:
            v = stack.pop()
            if v is target:
                return True
            e = graph.producer(v)
            if e is None or e in seen or graph.order(e) <= floor:
                continue  # defined before target's producer: cannot read it
            seen.add(e)
            stack.extend(e.inputs)
        return False

    def earlier_equal(self, eqn) -> Var | None:
        """The output of an earlier equation computing the same as ``eqn`` (same primitive,
        params and inputs, small constants compared by value), or None."""
        if self._keys is None:
            self._keys = {}
            for e in self.graph.eqns:
                if _comparable(e):
                    self._keys.setdefault(self._key(e), []).append(e)
        same = self._keys.get(self._key(eqn))
        return None if not same or same[0] is eqn else same[0].outputs[0]

    def _key(self, e) -> tuple:
        # A constant's digest is kept once taken: an equation leaving the graph finds its key
        # again after its dead constants left.
        consts, digests = self.graph.const_values, self._digests
        ins = tuple(("c", v.aval, self._digest(v)) if v.size <= 64 and (v in digests or v in consts) else v
                    for v in e.inputs)
        return (e.primitive, ins, e.params, tuple(v.aval for v in e.outputs))

    def _digest(self, v: Var) -> bytes:
        d = self._digests.get(v)
        if d is None:
            d = self._digests[v] = dtypes.array_digest(self.graph.const_values[v])
        return d

    # ---- constant-derived ----
    def _constant_set(self) -> set[Var]:
        if self._constant is None:
            self._constant = set(self.graph.const_values)
            for e in self.graph.eqns:
                if self._computes_constant(e):
                    self._constant.update(e.outputs)
        return self._constant

    def _computes_constant(self, e) -> bool:
        known = self._constant
        return (get_primitive(e.primitive).family not in _NEVER_CONSTANT and e.primitive in EVALUATED
                and all(v in known for v in e.inputs))

    def is_constant(self, var: Var) -> bool:
        """True when ``var`` depends on no graph input (constants, ``Arange`` and ops on them)."""
        return var in self._constant_set()

    def value(self, var: Var, max_elements: int = MAX_EVALUATED) -> mx.array | None:
        """The value of a constant-derived var (evaluated now, with MLX), or None."""
        if var in self._value:
            return self._value[var]
        if not self.is_constant(var) or var.size > max_elements:
            return None
        e = self.graph.producer(var)
        args = [self.value(v, max_elements) for v in e.inputs]
        if any(a is None for a in args):
            return None
        result = MLX_RULES[e.primitive](*args, **e.params)
        results = result if isinstance(result, (tuple, list)) else (result,)
        mx.eval(results)
        for v, r in zip(e.outputs, results):
            self._value[v] = r
        return self._value[var]

    # ---- keeping up with the rewrite driver ----
    def added(self, eqns, constants) -> None:
        """New equations (in program order) and new constants are in the graph."""
        for v, a in constants:
            self._value[v] = a
            if self._constant is not None:
                self._constant.add(v)
        for e in eqns:
            if self._constant is not None and self._computes_constant(e):
                self._constant.update(e.outputs)
            if self._keys is not None and _comparable(e):
                self._insert_key(e)

    def replaced(self, before, after) -> None:
        """``after`` (same outputs, other inputs) took ``before``'s place: its outputs may be
        constant now or no longer, and what was known of them and of what they feed is
        forgotten (it is worked out again from the new inputs when asked)."""
        if self._keys is not None:
            if _comparable(before):
                self._drop_key(before)
            if _comparable(after):
                self._insert_key(after)
        if self._constant is not None:
            stack = [after]
            while stack:
                e = stack.pop()
                now = self._computes_constant(e)
                if now == (e.outputs[0] in self._constant):
                    continue
                for v in e.outputs:
                    (self._constant.add if now else self._constant.discard)(v)
                    stack.extend(self.graph.users(v))
        self._forget_from(after)

    def removed(self, e) -> None:
        """``e`` left the graph."""
        if self._keys is not None and _comparable(e):
            self._drop_key(e)
        for v in e.outputs:
            if self._constant is not None:
                self._constant.discard(v)
            self._value.pop(v, None)
            self._scalar.pop(v, None)

    def _forget_from(self, e) -> None:
        """Drop the values and scalars of ``e``'s outputs and of everything whose value or
        scalar was worked out through them: constant-derived readers and, for scalars, readers
        that keep every value (a scalar is found through those)."""
        stack, seen = [e], {e}
        while stack:
            e = stack.pop()
            for v in e.outputs:
                self._value.pop(v, None)
                self._scalar.pop(v, None)
                for u in self.graph.users(v):
                    if u in seen:
                        continue
                    if ((len(u.inputs) == 1 and (u.primitive in VALUE_PRESERVING or u.primitive == "AsType"))
                            or any(o in self._value or o in self._scalar
                                   or (self._constant is not None and o in self._constant) for o in u.outputs)):
                        seen.add(u)
                        stack.append(u)

    def _insert_key(self, e) -> None:
        same = self._keys.setdefault(self._key(e), [])
        order = self.graph.order
        key = order(e)
        i = len(same)
        while i and order(same[i - 1]) > key:
            i -= 1
        same.insert(i, e)

    def _drop_key(self, e) -> None:
        k = self._key(e)
        same = self._keys[k]
        same.remove(e)
        if not same:
            del self._keys[k]

    # ---- scalars ----
    def scalar(self, var: Var) -> float | int | bool | None:
        """The single value every element of ``var`` holds, when that is known at optimize time:
        a 0-d constant seen through broadcasts, reshapes and casts, or a small constant whose
        elements are all equal. None otherwise."""
        if var in self._scalar:
            return self._scalar[var]
        self._scalar[var] = result = self._find_scalar(var)
        return result

    def _find_scalar(self, var: Var):
        casts: list[str] = []
        v = var
        while True:
            e = self.graph.producer(v)
            if e is None or len(e.inputs) != 1:
                break
            if e.primitive in VALUE_PRESERVING:
                v = e.inputs[0]
            elif e.primitive == "AsType":
                casts.append(e.params["dtype"])
                v = e.inputs[0]
            else:
                break
        if v.size == 0 or v.size > MAX_SCALAR_SOURCE or not self.is_constant(v):
            return None
        a = self.value(v)
        if a is None:
            return None
        flat = a.reshape(-1)
        first = flat[0]
        if v.size > 1 and not _all_same(flat):
            return None
        for dtype in reversed(casts):
            first = first.astype(dtypes.to_mx(dtype))
        value = first.item()
        return value


def _all_same(flat: mx.array) -> bool:
    """Every element equal to the first, -0.0 and 0.0 told apart (all NaN counts as one value)."""
    if mx.issubdtype(flat.dtype, mx.floating):
        if mx.all(mx.isnan(flat)).item():
            return True
        flat = flat.view({2: mx.uint16, 4: mx.uint32, 8: mx.uint64}[flat.dtype.size])
    return bool(mx.all(flat == flat[0]).item())


def close(a: float, b: float, rel: float = 1e-6) -> bool:
    """Equal up to float32 rounding (constants written as 1/N, eps, 1/sqrt(2) in one dtype)."""
    return math.isclose(a, b, rel_tol=rel, abs_tol=0.0) if b != 0 else a == 0


def _comparable(e) -> bool:
    """Whether `Values.earlier_equal` compares ``e``: one output, and no collective (two equal
    collectives are two messages: two receives get different ones)."""
    return len(e.outputs) == 1 and get_primitive(e.primitive).family is not Family.COLLECTIVE
