"""A model stepped the way mlxtriton's runtime steps stateful programs, with MLX's exporter (or
``mx.compile``) as the tracer: the executable statement of the protocol between mlxtriton.lm's
caches and the runtime, usable before and apart from the runtime.

Before every call each cache object is prepared (``__mlxtriton_prepare__``), outside any trace.
The cache key is the token shape plus the state's structure: every array's shape and dtype and
every Python scalar except the objects' ``__mlxtriton_counters__``. A new key traces the model with
the state's arrays as inputs and outputs; later calls with that key replay the trace on the
current arrays (no Python runs) and add to each counter what the traced call added. The default
tracer exports the call (``mx.export_function``, compilation disabled) and replays the imported
function: no kernel is JIT-compiled, so replays are cheap on a CPU. ``tracer="compile"`` uses
``mx.compile`` for programs the exporter cannot serialize (``mx.contiguous``).
Nothing of a trace stays in a cache object: outputs are written back after each call.

A call that changes the state's structure (an attribute or list item going from None to an array,
as a first write does) is not replayed: it traces again on its next occurrence.
"""

from __future__ import annotations

import os
import tempfile
from typing import Any, Callable

import mlx.core as mx

SCALARS = (bool, int, float, str, type(None))


def _children(x):
    """(label, child) pairs of a state node, in a fixed order."""
    if isinstance(x, (list, tuple)):
        return list(enumerate(x))
    return sorted(vars(x).items())


def _is_object(x) -> bool:
    return not isinstance(x, (mx.array, list, tuple, *SCALARS)) and hasattr(x, "__dict__")


def arrays(state) -> list[mx.array]:
    """The state's arrays, depth first."""
    if isinstance(state, mx.array):
        return [state]
    if isinstance(state, (list, tuple)) or _is_object(state):
        return [a for _, c in _children(state) for a in arrays(c)]
    return []


def replace_arrays(state, new: list[mx.array]):
    """``state`` with its arrays replaced in order by ``new`` (objects and lists in place)."""
    it = iter(new)

    def walk(x):
        if isinstance(x, mx.array):
            return next(it)
        if isinstance(x, list):
            x[:] = [walk(c) for c in x]
            return x
        if isinstance(x, tuple):
            return tuple(walk(c) for c in x)
        if _is_object(x):
            for name, c in _children(x):
                setattr(x, name, walk(c))
        return x

    result = walk(state)
    assert next(it, None) is None, "more arrays than the state holds"
    return result


def signature(state, shapes: bool = True) -> tuple:
    """The state's structure: array shapes and dtypes (with ``shapes``), Python scalars except the
    objects' counters."""
    if isinstance(state, mx.array):
        return ("array", state.shape, state.dtype) if shapes else ("array",)
    if isinstance(state, SCALARS):
        return ("scalar", state) if shapes else ("scalar",)
    if isinstance(state, (list, tuple)):
        return (type(state).__name__, tuple(signature(c, shapes) for c in state))
    if _is_object(state):
        skip = getattr(state, "__mlxtriton_counters__", ())
        return (type(state).__name__,
                tuple((k, signature(c, shapes)) for k, c in _children(state) if k not in skip))
    raise TypeError(f"unsupported state node {type(state).__name__}")


def objects(state):
    """Every object (cache) in the state, depth first."""
    if isinstance(state, (list, tuple)):
        for c in state:
            yield from objects(c)
    elif _is_object(state):
        yield state
        for _, c in _children(state):
            yield from objects(c)


def _counters(state) -> list[tuple[Any, str]]:
    return [(o, name) for o in objects(state) for name in getattr(o, "__mlxtriton_counters__", ())]


class Replay:
    """``model(tokens, cache=state)`` stepped as mlxtriton's runtime steps it.

    ``builds`` counts traces; ``replays`` counts calls served by an earlier trace.
    """

    def __init__(self, model: Callable, tracer: str = "export"):
        if tracer not in ("export", "compile"):
            raise ValueError(f"unknown tracer {tracer!r}")
        self.model = model
        self.tracer = tracer
        self.entries: dict[tuple, Any] = {}
        self.builds = 0
        self.replays = 0
        self._directory = tempfile.TemporaryDirectory()

    def __call__(self, tokens: mx.array, cache=None):
        for o in objects(cache):
            prepare = getattr(o, "__mlxtriton_prepare__", None)
            if prepare is not None:
                prepare()
        key = (tokens.shape, tokens.dtype, signature(cache))
        counters = _counters(cache)
        entry = self.entries.get(key)
        if entry is not None:
            compiled, delta = entry
            outputs = compiled(tokens, *arrays(cache))
            replace_arrays(cache, list(outputs[1:]))
            for (o, name), d in zip(counters, delta):
                setattr(o, name, getattr(o, name) + d)
            self.replays += 1
            return outputs[0]

        model, state, layout = self.model, cache, signature(cache, shapes=False)
        before = [getattr(o, name) for o, name in counters]

        def step(tokens, *leaves):
            replace_arrays(state, list(leaves))
            return (model(tokens, cache=state), *arrays(state))

        saved = arrays(cache)
        if self.tracer == "compile":
            compiled = mx.compile(step)
        else:
            path = os.path.join(self._directory.name, f"{self.builds}.mlxfn")
            mx.disable_compile()  # mlx.nn's compiled helpers cannot be exported once compiled
            try:
                mx.export_function(path, step, tokens, *saved)
            finally:
                mx.enable_compile()
            compiled = mx.import_function(path)
        outputs = compiled(tokens, *saved)
        replace_arrays(cache, list(outputs[1:]))  # the trace's placeholders out, the results in
        self.builds += 1
        if signature(cache, shapes=False) == layout:
            delta = [getattr(o, name) - b for (o, name), b in zip(counters, before)]
            self.entries[key] = (compiled, delta)
        return outputs[0]
