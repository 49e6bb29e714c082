"""Graph layer: the jaxpr-like printer. Deterministic (vars are named in definition order) and
linear in the graph's size; its output is the golden form tests compare. May import the graph layer.
"""

from __future__ import annotations

import mlx.core as mx

from mlxtriton.graph import dtypes
from mlxtriton.graph.core import Graph, Var, var_names

_INLINE_CONSTANT_SIZE = 4  # constants with at most this many elements print their values


def _format_value(v) -> str:
    if isinstance(v, float):
        return repr(v)
    if isinstance(v, tuple):
        return "(" + ", ".join(_format_value(x) for x in v) + ("," if len(v) == 1 else "") + ")"
    if isinstance(v, str) and "\n" in v:
        return repr(v if len(v) <= 40 else v[:37] + "...")
    return repr(v)


def _format_constant(a: mx.array) -> str:
    if a.size > _INLINE_CONSTANT_SIZE:
        return "<array>"
    # NumPy's scalar str is the shortest text that round-trips in the array's own dtype
    # (float32 1e-5 prints as 1e-05, not 9.999999747378752e-06).
    values = [str(v) for v in dtypes.to_numpy(a).reshape(-1)]
    if a.ndim == 0:
        return values[0]
    return "[" + ", ".join(values) + "]"


def pretty(graph: Graph, indent: int = 2) -> str:
    """Render a graph as text::

        { lambda c:f32[] = 2.0 ; a:f32[4,8] b:f32[4,8]. let
            d:f32[4,8] = Broadcast[shape=(4, 8)] c
            e:f32[4,8] = Multiply a d
          in (e,) }
    """
    names: dict[Var, str] = {}
    fresh = var_names()

    def define(v: Var) -> str:
        names[v] = next(fresh)
        return f"{names[v]}:{v.type_str()}"

    def use(v: Var) -> str:
        return names.get(v, "<undefined>")

    consts = ", ".join(f"{define(v)} = {_format_constant(a)}" for v, a in graph.constants)
    ins = " ".join(define(v) for v in graph.inputs)
    pad = " " * (indent * 2)
    lines = [f"{{ lambda {consts + ' ' if consts else ''}; {ins}. let"]
    for e in graph.eqns:
        args = " ".join(use(v) for v in e.inputs)
        shown = {k: v for k, v in e.params.items() if not isinstance(v, Graph) and v is not None}
        params = ""
        if shown:
            params = "[" + ", ".join(f"{k}={_format_value(v)}" for k, v in shown.items()) + "]"
        outs = " ".join(define(v) for v in e.outputs)
        lines.append(f"{pad}{outs} = {e.primitive}{params} {args}".rstrip())
        for k, v in e.params.items():  # nested graphs (a Fused region's body) print indented
            if isinstance(v, Graph):
                body = pretty(v, indent).replace("\n", "\n" + pad + "  ")
                lines.append(f"{pad}  {k}={body}")
    outs = ", ".join(use(v) for v in graph.outputs)
    lines.append(f"{' ' * indent}in ({outs}{',' if len(graph.outputs) == 1 else ''}) }}")
    if graph.state_inputs or graph.state_outputs:  # the trailing inputs / outputs that are state
        n_in, n_out = len(graph.inputs) - len(graph.state_inputs), len(graph.outputs) - len(graph.state_outputs)
        reads = ", ".join(f"{use(v)} = {p}" for v, p in zip(graph.inputs[n_in:], graph.state_inputs))
        writes = ", ".join(f"{p} = {use(v)}" for v, p in zip(graph.outputs[n_out:], graph.state_outputs))
        lines.append(f"{' ' * indent}state: reads {reads or 'nothing'}; writes {writes or 'nothing'}")
    return "\n".join(lines)
