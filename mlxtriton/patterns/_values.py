"""Patterns layer: what is known about a graph's values before it runs: which vars are computed
from constants alone, their values (evaluated with MLX at optimize time), and scalars seen
through broadcasts and casts. One `Values` per graph; everything is computed lazily and cached.
May import mlx and mlxtriton.graph.
"""

from __future__ import annotations

import math
from typing import Any

import mlx.core as mx

from mlxtriton.graph import dtypes
from mlxtriton.graph.core import Graph, Var
from mlxtriton.graph.evaluate_mlx import EVALUATED, MLX_RULES
from mlxtriton.graph.primitives import Family, get as get_primitive

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
    """Constant-derived values of one graph.

    Example:
        >>> v = Values(graph)
        >>> v.scalar(var)  # 0.125 for Broadcast(0-d constant 0.125)
    """

    def __init__(self, graph: Graph):
        self.graph = graph
        self._constant: set[Var] | None = None
        self._value: dict[Var, mx.array | None] = dict(graph.constants)
        self._scalar: dict[Var, Any] = {}
        self._position: dict | None = None
        self._keys: dict | None = None

    # ---- dataflow ----
    def depends_on(self, var: Var, target: Var) -> bool:
        """True when ``var`` is computed (transitively) from ``target``."""
        if self._position is None:
            self._position = {e: i for i, e in enumerate(self.graph.eqns)}
        pt = self.graph.producer(target)
        floor = self._position[pt] if pt is not None else -1
        stack, seen = [var], set()
        while stack:
            v = stack.pop()
            if v is target:
                return True
            e = self.graph.producer(v)
            if e is None or e in seen or self._position[e] <= floor:
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
                # Two equal collectives are two messages (two receives get different ones).
                if len(e.outputs) == 1 and get_primitive(e.primitive).family is not Family.COLLECTIVE:
                    self._keys.setdefault(self._key(e), e)
        first = self._keys.get(self._key(eqn))
        return None if first is None or first is eqn else first.outputs[0]

    def _key(self, e) -> tuple:
        consts = self.graph.const_values
        ins = tuple(
            ("c", v.aval, dtypes.array_digest(consts[v])) if v in consts and v.size <= 64 else v
            for v in e.inputs
        )
        return (e.primitive, ins, e.params, tuple(v.aval for v in e.outputs))

    # ---- constant-derived ----
    def _constant_set(self) -> set[Var]:
        if self._constant is None:
            known = {v for v, _ in self.graph.constants}
            for e in self.graph.eqns:
                prim = get_primitive(e.primitive)
                if (prim.family not in _NEVER_CONSTANT and e.primitive in EVALUATED
                        and all(v in known for v in e.inputs)):
                    known.update(e.outputs)
            self._constant = known
        return self._constant

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
