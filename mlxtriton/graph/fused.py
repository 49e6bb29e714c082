"""Graph layer: the ``Fused`` primitive, a region of a graph that will run as one kernel.

Its ``body`` param is itself a `Graph` (hashable, so the equation stays a cache key); ``kind``
names the region's shape ("pointwise", "row", "column"); ``schedule`` carries the decisions the
layout and cache passes make (None until they run). Evaluating a Fused equation evaluates its body,
which is how fused regions run on CPU, and how the oracle checks them. May import the graph layer.
"""

from __future__ import annotations

from typing import Any

from mlxtriton.graph.core import Eqn, Graph, Params, Var
from mlxtriton.graph.primitives import Family, declare

FUSED = declare("Fused", Family.FUSED, ("body", "kind", "name", "schedule"))

# Kinds of region whose kernel codegen writes from a template of its own (attention at decode:
# graph/attention.py; a few rows' projections: graph/projection.py), not from the region's ops.
TEMPLATE_KINDS = frozenset({"attention", "projection"})


def fused_eqn(body: Graph, inputs, outputs, kind: str, name: str, schedule: Any = None) -> Eqn:
    """An equation running ``body`` on ``inputs`` to define ``outputs``."""
    if len(inputs) != len(body.inputs) or len(outputs) != len(body.outputs):
        raise ValueError("a Fused equation binds exactly its body's inputs and outputs")
    for outer, inner in list(zip(inputs, body.inputs)) + list(zip(outputs, body.outputs)):
        if outer.aval != inner.aval:
            raise ValueError(f"Fused binding {outer.type_str()} to {inner.type_str()}")
    return Eqn("Fused", tuple(inputs), tuple(outputs), Params({"body": body, "kind": kind, "name": name, "schedule": schedule}))


def _run_body(rules_of, *args, body: Graph, kind: str, name: str, schedule: Any):
    from mlxtriton.graph.evaluate import run

    outs = run(body, args, rules_of())
    return tuple(outs)


def mlx_rule(*args, body: Graph, kind: str, name: str, schedule: Any):
    from mlxtriton.graph.evaluate import _mlx_rules

    return _run_body(_mlx_rules, *args, body=body, kind=kind, name=name, schedule=schedule)


def jax_rule(*args, body: Graph, kind: str, name: str, schedule: Any):
    from mlxtriton.graph.evaluate import _jax_rules

    return _run_body(_jax_rules, *args, body=body, kind=kind, name=name, schedule=schedule)


def is_fused(eqn: Eqn) -> bool:
    return eqn.primitive == "Fused"


def body_of(eqn: Eqn) -> Graph:
    return eqn.params["body"]


__all__ = ["FUSED", "TEMPLATE_KINDS", "fused_eqn", "is_fused", "body_of", "mlx_rule", "jax_rule", "Var"]
