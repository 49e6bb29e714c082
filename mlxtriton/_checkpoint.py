"""Tracing layer: ``mx.checkpoint`` inside a traced function, recorded as boundaries.

MLX builds a checkpointed function as an ``mx.custom_function`` (CustomTransforms), which its
exporter cannot report. While a `Recording` is active around one ``mx.export_function`` call,
``mx.checkpoint(fun)`` returns a stand-in that calls ``fun`` itself with each array argument
marked, and marks each array it returns: a mark is ``mx.depends([x], [k])`` on a zero-input
placeholder kernel named after the call and the side, which the exporter reports and autodiff
passes through (the gradient a traced function takes of it flows as if the mark were not
there). `Recording.resolve` removes the marks from the traced graph and hands each call's input
and output vars to `graph.remat.rematerialize`, which gives the gradient its own recomputation
of the call, as MLX's checkpoint VJP recomputes it. A checkpointed function made before the trace
(``mlx.nn.utils.checkpoint`` calls ``mx.checkpoint`` when it wraps) stays MLX's: the exporter
refuses it, and the trace says so. May import mlx and mlxtriton.graph only.
"""

from __future__ import annotations

import re
import threading
from typing import Any, Callable

import mlx.core as mx

from mlxtriton.graph.core import Graph, Var
from mlxtriton.graph.remat import rematerialize
from mlxtriton.graph.transforms import substitute

_KERNEL = re.compile(r"custom_kernel_mlxtriton_checkpoint_(\d+)_(in|out)_")
_CHECKPOINT = mx.checkpoint


class Recording:
    """The ``mx.checkpoint`` calls of one export (see module)."""

    def __init__(self):
        self.thread = threading.get_ident()
        self.calls = 0
        self.kernels: dict[str, Any] = {}

    def checkpoint(self, fun: Callable) -> Callable:
        def checkpointed(*args, **kwargs):
            index = self.calls
            self.calls += 1
            args, kwargs = _map_arrays(lambda x: self._mark(x, index, "in"), (args, kwargs))
            return _map_arrays(lambda x: self._mark(x, index, "out"), fun(*args, **kwargs))

        checkpointed.__name__ = getattr(fun, "__name__", "checkpointed")
        return checkpointed

    def _mark(self, x: mx.array, index: int, side: str) -> mx.array:
        name = f"mlxtriton_checkpoint_{index}_{side}"
        kernel = self.kernels.get(name)
        if kernel is None:
            kernel = self.kernels[name] = mx.fast.metal_kernel(
                name=name, input_names=[], output_names=["out"], source="")
        tag = kernel(inputs=[], output_shapes=[(1,)], output_dtypes=[mx.float32],
                     grid=(1, 1, 1), threadgroup=(1, 1, 1))[0]
        return mx.depends([x], [tag])[0]

    def resolve(self, graph: Graph) -> tuple[Graph, int]:
        """``graph`` without the marks, each checkpointed call's gradient recomputing it; and
        how many calls nothing in the graph differentiated (their activations are freed only if
        the graph's own gradient recomputes them: one taken outside keeps them)."""
        if not self.calls:
            return graph, 0
        tags: dict[Var, tuple[int, int]] = {}  # a tag kernel's output -> (call, 0 in / 1 out)
        marked: dict[Var, Var] = {}  # a mark's output -> the value it marks
        sides: dict[int, tuple[list[Var], list[Var]]] = {}
        eqns = []
        for e in graph.eqns:
            if e.primitive == "CustomKernel":
                match = _KERNEL.match(e.params["kernel_name"])
                if match:
                    tags[e.outputs[0]] = (int(match.group(1)), match.group(2) == "out")
                    continue
            if e.primitive == "Depends" and len(e.inputs) == 2 and e.inputs[1] in tags:
                index, out = tags[e.inputs[1]]
                x = marked.get(e.inputs[0], e.inputs[0])  # a value marked twice (nested calls)
                marked[e.outputs[0]] = x
                sides.setdefault(index, ([], []))[out].append(x)
                continue
            eqns.append(e)
        graph = substitute(graph.replace(eqns=tuple(eqns)), marked)
        unread = 0
        for _, (ins, outs) in sorted(sides.items(), reverse=True):  # a nested call first
            graph, kept = rematerialize(graph, ins, outs)
            unread += kept
        return graph, unread


def _map_arrays(f: Callable[[mx.array], mx.array], tree: Any) -> Any:
    """``tree`` with ``f`` applied to its arrays, through lists, tuples and dicts (other objects,
    a module passed along, are left as they are)."""
    t = type(tree)
    if t is mx.array:
        return f(tree)
    if t in (list, tuple):
        return t(_map_arrays(f, x) for x in tree)
    if t is dict:
        return {k: _map_arrays(f, v) for k, v in tree.items()}
    return tree


# The active recordings (one per exporting thread, innermost last); the stand-in is installed
# while there is one.
_ACTIVE: list[Recording] = []
_LOCK = threading.Lock()


def _checkpoint(fun, *args, **kwargs):
    thread = threading.get_ident()
    rec = next((r for r in reversed(_ACTIVE) if r.thread == thread), None)
    if rec is None or args or kwargs:
        return _CHECKPOINT(fun, *args, **kwargs)
    return rec.checkpoint(fun)


_checkpoint.__doc__ = _CHECKPOINT.__doc__


class recording:
    """``with recording(r):`` makes ``r`` record the ``mx.checkpoint`` calls its thread makes."""

    def __init__(self, rec: Recording):
        self.rec = rec

    def __enter__(self) -> Recording:
        with _LOCK:
            if not _ACTIVE:
                mx.checkpoint = _checkpoint
            _ACTIVE.append(self.rec)
        return self.rec

    def __exit__(self, kind, err, tb):
        with _LOCK:
            _ACTIVE.remove(self.rec)
            if not _ACTIVE:
                mx.checkpoint = _CHECKPOINT
        return False
