"""Fusion layer: how a fused graph's regions sit around its collectives, as lines `explain` prints.
No region contains a collective (fusion/_rules.py): regions end before one and start after it.
May import mlxtriton.graph only.
"""

from __future__ import annotations

from mlxtriton.graph.core import Eqn, Graph, Var
from mlxtriton.graph.fused import is_fused
from mlxtriton.graph.primitives import Family, get as get_primitive

_SHOWN = ("kind", "dst", "src")  # the params that say what a collective does (besides its group)


def is_collective(e: Eqn) -> bool:
    return get_primitive(e.primitive).family is Family.COLLECTIVE


def collective_lines(graph: Graph) -> list[str]:
    """One line per collective of ``graph``: what it communicates, and which region or MLX op
    computes its input and reads its result.

    Example:
        >>> collective_lines(graph)  # an all_sum between a matmul and a fused add + RMS norm
        ['collective AllReduce[kind=sum] over 2 ranks (this is rank 0): f32[4,8] -> f32[4,8]; input from Matmul; read by row_58d01a2e5c']
    """
    lines = []
    for e in graph.eqns:
        if not is_collective(e):
            continue
        what = ", ".join(f"{k}={e.params[k]}" for k in _SHOWN if k in e.params)
        types = " ".join(v.type_str() for v in e.inputs) or "nothing"
        sources = ", ".join(dict.fromkeys(_source(graph, v) for v in e.inputs)) or "none"
        readers = ", ".join(dict.fromkeys(r for v in e.outputs for r in _readers(graph, v))) or "nothing"
        lines.append(
            f"collective {e.primitive}{f'[{what}]' if what else ''} over {e.params['size']} ranks "
            f"(this is rank {e.params['rank']}): {types} -> "
            f"{' '.join(v.type_str() for v in e.outputs)}; input from {sources}; read by {readers}"
        )
    return lines


def _name(e: Eqn) -> str:
    return e.params["name"] if is_fused(e) else e.primitive


def _source(graph: Graph, v: Var) -> str:
    p = graph.producer(v)
    if p is not None:
        return _name(p)
    return "a constant" if v in graph.const_values else "a graph input"


def _readers(graph: Graph, v: Var) -> list[str]:
    names = [_name(u) for u in graph.users(v)]
    return names + ["the graph's outputs"] * graph.is_output(v)
