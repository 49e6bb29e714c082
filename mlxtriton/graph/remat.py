"""Graph layer: rematerialization of checkpointed calls (``mx.checkpoint`` inside a traced
function: mlxtriton/_checkpoint.py records each call's input and output vars).

MLX's autodiff, run while the function was traced, wrote the gradient against the values the
call computed inside: kept as they are, every one of them would live until the backward pass
reads it, which is what checkpointing exists to avoid. Here the equations after the call that
read such a value (the gradient) read a copy of the call's equations instead, computed from its
inputs once its outputs exist (a ``Depends`` on them, as MLX's checkpoint VJP recomputes
``fun(depends(primals, outputs))``), so the values inside are freed after the forward pass and
recomputed when the backward pass reaches the call. The ``Depends`` also keeps the copy apart
from the original for common-subexpression elimination (ours, and mx.compile's). May import
the graph layer only.
"""

from __future__ import annotations

from typing import Sequence

from mlxtriton.graph.core import Eqn, Graph, Params, Var


def rematerialize(graph: Graph, inputs: Sequence[Var], outputs: Sequence[Var]
                  ) -> tuple[Graph, bool]:
    """``graph`` with the values one checkpointed call (its input and output vars) computed
    inside, where equations after it read them, recomputed (see module); and whether the call
    computed values inside that nothing after it reads (no gradient was taken in the graph)."""
    inputs, outputs = tuple(dict.fromkeys(inputs)), tuple(dict.fromkeys(outputs))
    eqns = graph.eqns
    # the call's equations: those that read its inputs (through each other) and that its outputs
    # need; what the call computed from other values (captured arrays) is not its to recompute
    reached = set(inputs)
    from_inputs = set()
    for i, e in enumerate(eqns):
        if any(v in reached for v in e.inputs):
            from_inputs.add(i)
            reached.update(e.outputs)
    needed = set(outputs)
    body = set()
    for i in range(len(eqns) - 1, -1, -1):
        e = eqns[i]
        if any(v in needed for v in e.outputs):
            needed.update(e.inputs)
            if i in from_inputs:
                body.add(i)
    inside = {v for i in body for v in eqns[i].outputs} - set(outputs) - set(inputs)
    if not inside:
        return graph, False
    # the readers after the call (its last equation) of values computed inside: the gradient
    end = max(body)
    readers = [i for i in range(end + 1, len(eqns)) if any(v in inside for v in eqns[i].inputs)]
    if not readers:
        return graph, True
    # the equations the readers' values need, copied from fresh inputs
    wanted = {v for i in readers for v in eqns[i].inputs if v in inside}
    copied = set()
    for i in sorted(body, reverse=True):
        if any(v in wanted for v in eqns[i].outputs):
            copied.add(i)
            wanted.update(v for v in eqns[i].inputs if v in inside)
    read = [v for v in inputs if any(v in eqns[i].inputs for i in copied)]
    fresh = {v: Var.trusted(v.shape, v.dtype) for v in read}
    block = [Eqn("Depends", (*read, *outputs), tuple(fresh[v] for v in read),
                 Params({"num_outputs": len(read)}))] if read else []
    for i in sorted(copied):
        e = eqns[i]
        outs = tuple(Var.trusted(v.shape, v.dtype) for v in e.outputs)
        fresh.update(zip(e.outputs, outs))
        block.append(Eqn(e.primitive, tuple(fresh.get(v, v) for v in e.inputs), outs, e.params))
    renamed = {v: fresh[v] for v in inside if v in fresh}
    first, rewired = readers[0], set(readers)
    after = [e if k not in rewired else
             Eqn(e.primitive, tuple(renamed.get(v, v) for v in e.inputs), e.outputs, e.params)
             for k, e in enumerate(eqns[first:], first)]
    return graph.replace(eqns=(*eqns[:first], *block, *after)), False
