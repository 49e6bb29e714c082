"""Runtime layer: the views between generated kernels folded into them, in a bare replay.

A traced graph holds views between its kernels: a projection's output reshaped to the heads'
layout, attention's output moved back and flattened, a norm's output flattened for the next
product. Each is a node MLX evaluates on every replay, at a cost in host time
(`benchmarks/launch_costs.py`), and a decode step is paced by the host. A generated
kernel reads and writes whole row-major buffers, so a view that keeps every element's row-major
index (a reshape however written, or a transpose that moves only axes of size 1) costs it
nothing. `fold_views` rewrites the steps of a bare replay (what ``mx.compile`` traces once for
the calls no transformation sees, `runtime.compiled._Executable`):

- a kernel's output read only by such views is launched in the last view's shape, the views gone;
- a kernel reads the array a chain of such views starts from;
- a chain of views that something else reads becomes one reshape of the array it starts from;
- a view nothing reads any more is dropped.

The differentiable body keeps every view: derivatives see the graph as traced. May import
mlxtriton.graph.
"""

from __future__ import annotations

from typing import Callable, Sequence

import mlx.core as mx

from mlxtriton.graph.core import Eqn, Graph, Var
from mlxtriton.graph import primitives

# One equation of a replay: what it calls, the vars it reads, the vars it binds.
Step = tuple[Callable, tuple[Var, ...], tuple[Var, ...]]
# A kernel's bare launcher again, with its outputs in other shapes: (index, {output: shape}).
Relaunch = Callable[[int, dict[int, tuple[int, ...]]], Callable]


def keeps_order(e: Eqn) -> bool:
    """Whether ``e`` is a view that keeps every element's row-major index
    (`graph.primitives.keeps_order`)."""
    return (len(e.inputs) == 1 and len(e.outputs) == 1
            and primitives.keeps_order(e.primitive, e.params, e.inputs[0].shape))


def _reshape(shape: tuple[int, ...]) -> Callable:
    return lambda x: (mx.reshape(x, shape),)


def fold_views(graph: Graph, steps: Sequence[Step], kernels: Sequence[int], relaunch: Relaunch
               ) -> tuple[list[Step], int]:
    """``steps`` (one per equation of ``graph``) with the order-keeping views around the kernel
    launches at ``kernels`` (equation indices) folded into them; ``relaunch`` gives a kernel's
    launcher with other output shapes. Returns the steps and how many views were dropped."""
    eqns = graph.eqns
    steps = list(steps)
    views = {i for i, e in enumerate(eqns) if keeps_order(e)}
    producer: dict[Var, int] = {v: i for i, e in enumerate(eqns) for v in e.outputs}
    readers: dict[Var, list[int]] = {}
    for i, e in enumerate(eqns):
        for v in e.inputs:
            readers.setdefault(v, []).append(i)
    returned = set(graph.outputs)

    # A kernel output whose one reader is a view, and so on: the kernel writes the last one.
    for k in kernels:
        fn, ins, outs = steps[k]
        shapes, new_outs = {}, list(outs)
        for p, v in enumerate(outs):
            end = v
            while end not in returned and len(readers.get(end, ())) == 1 and readers[end][0] in views:
                end = eqns[readers[end][0]].outputs[0]
            if end is not v:
                shapes[p], new_outs[p] = end.shape, end
                producer[end] = k
        if shapes:
            steps[k] = (relaunch(k, shapes), ins, tuple(new_outs))

    kernel_set = set(kernels)

    def start(v: Var) -> Var:
        """The array a chain of views ending at ``v`` starts from."""
        while v in producer and producer[v] in views and producer[v] not in kernel_set:
            v = eqns[producer[v]].inputs[0]
        return v

    # A kernel reads where its views start; a view of a view reshapes where they start.
    for i, (fn, ins, outs) in enumerate(steps):
        if i in kernel_set:
            steps[i] = (fn, tuple(start(v) for v in ins), outs)
        elif i in views and producer.get(outs[0]) == i:
            root = start(ins[0])
            if root is not ins[0]:
                steps[i] = (_reshape(outs[0].shape), (root,), outs)

    # Views no step reads any more (and not returned) are dropped, the last first.
    needed = set(graph.outputs)
    keep = [True] * len(steps)
    for i in range(len(steps) - 1, -1, -1):
        fn, ins, outs = steps[i]
        live = any(v in needed for v in outs) and all(producer.get(v) == i for v in outs if v in needed)
        if i in views and not live:
            keep[i] = False
            continue
        needed.update(ins)
    return [s for s, k in zip(steps, keep) if k], keep.count(False)


__all__ = ["Step", "fold_views", "keeps_order"]
