"""Graph layer: the verifier run after every transform in tests: well-formedness (each var defined
once, before use; declared primitives and params), and every equation's output shapes and dtypes
against MLX's own shape rules. May import mlx and the graph layer.
"""

from __future__ import annotations

import mlx.core as mx

from mlxtriton.graph import dtypes
from mlxtriton.graph.core import Graph, Var
from mlxtriton.graph.primitives import PRIMITIVES


class VerificationError(ValueError):
    """A graph that is not well formed or not well typed."""


def verify(graph: Graph, check_types: bool = True) -> Graph:
    """Check a graph; return it unchanged so calls chain (``verify(fuse(g))``).

    Raises:
        VerificationError: naming the first problem found and the equation it is in.
    """
    defined: set[Var] = set()

    def define(v: Var, where: str) -> None:
        if not isinstance(v, Var):
            raise VerificationError(f"{where}: {v!r} is not a Var")
        if v in defined:
            raise VerificationError(f"{where}: {v.type_str()} is defined twice")
        defined.add(v)

    for v in graph.inputs:
        define(v, "inputs")
    for v, a in graph.constants:
        define(v, "constants")
        if not isinstance(a, mx.array) or tuple(a.shape) != v.shape or dtypes.from_mx(a.dtype) != v.dtype:
            raise VerificationError(f"constant {v.type_str()} holds a value of another type")

    # Abstract evaluation through MLX's lazy arrays: shapes and dtypes, never compute.
    placeholder: dict[Var, mx.array] = {}
    if check_types:
        from mlxtriton.graph.evaluate_mlx import MLX_RULES

        for v in list(graph.inputs) + [v for v, _ in graph.constants]:
            placeholder[v] = mx.zeros(v.shape, dtypes.to_mx(v.dtype))

    for i, e in enumerate(graph.eqns):
        where = f"equation {i} ({e.primitive})"
        prim = PRIMITIVES.get(e.primitive)
        if prim is None:
            raise VerificationError(f"{where}: undeclared primitive")
        for v in e.inputs:
            if v not in defined:
                raise VerificationError(f"{where}: reads {v.type_str()} before it is defined")
        if not e.outputs:
            raise VerificationError(f"{where}: has no outputs")
        if prim.decoder is None and set(e.params) != set(prim.params):
            raise VerificationError(
                f"{where}: params {sorted(e.params)} differ from the declared {sorted(prim.params)}"
            )
        for v in e.outputs:
            define(v, where)
        if check_types and e.primitive in MLX_RULES:
            try:
                result = MLX_RULES[e.primitive](*(placeholder[v] for v in e.inputs), **e.params)
            except Exception as err:  # MLX's own shape checks reject the equation
                raise VerificationError(f"{where}: MLX rejects it: {err}") from err
            results = result if isinstance(result, (tuple, list)) else (result,)
            if len(results) != len(e.outputs):
                raise VerificationError(f"{where}: {len(results)} outputs, declared {len(e.outputs)}")
            for v, r in zip(e.outputs, results):
                got = (tuple(r.shape), dtypes.from_mx(r.dtype))
                if got != v.aval:
                    raise VerificationError(
                        f"{where}: declares {v.type_str()}, MLX infers "
                        f"{dtypes.short(got[1])}[{','.join(map(str, got[0]))}]"
                    )
                placeholder[v] = r
        elif check_types:
            for v in e.outputs:
                placeholder[v] = mx.zeros(v.shape, dtypes.to_mx(v.dtype))
    for v in graph.outputs:
        if v not in defined:
            raise VerificationError(f"output {v.type_str()} is never defined")
    return graph
