"""Tracing layer: unmodified MLX functions -> graph IR, through MLX's own exporter.

``mx.export_function`` with a callback reports every primitive of the function's lazy graph; this
module turns that report into a `Graph`, with pytrees in and out and Python scalars static.
May import mlx and mlxtriton.graph only.
"""

from __future__ import annotations

import contextlib
import gc
import inspect
import linecache
import os
import re
import threading
import warnings
from dataclasses import dataclass
from typing import Any, Callable, Sequence

import mlx.core as mx

from mlxtriton import _checkpoint, _collectives
from mlxtriton import state as state_lib
from mlxtriton.graph import dtypes, pytree
from mlxtriton.graph.core import Eqn, Graph, Params, Var
from mlxtriton.graph.primitives import get as get_primitive

__all__ = ["trace", "functionalize", "TraceError", "TraceWarning"]


class TraceError(RuntimeError):
    """MLX's exporter reported something the tracer cannot turn into a graph."""


class TraceWarning(UserWarning):
    """The trace took a fallback (e.g. the CPU stream for a primitive MLX cannot export)."""


_NO_STATE = re.compile(r"Unable to get state for primitive (\w+)")


def _normalize_static(fn, static_argnums, static_argnames) -> tuple[tuple[int, ...], tuple[str, ...]]:
    nums = (static_argnums,) if isinstance(static_argnums, int) else tuple(static_argnums)
    names = (static_argnames,) if isinstance(static_argnames, str) else tuple(static_argnames)
    # As in jax.jit: a static positional parameter is also static when passed by name, and back.
    try:
        params = list(inspect.signature(fn).parameters.values())
    except (TypeError, ValueError):
        params = []
    positional = [p.name for p in params if p.kind in (p.POSITIONAL_ONLY, p.POSITIONAL_OR_KEYWORD)]
    names += tuple(positional[i] for i in nums if 0 <= i < len(positional) and positional[i] not in names)
    nums += tuple(positional.index(n) for n in names if n in positional and positional.index(n) not in nums)
    return nums, names


def _arguments_tree(args, kwargs, static_argnums, static_argnames, objects: list | None = None):
    """The (args, kwargs) pytree with declared-static arguments wrapped as static leaves. An
    argument object holding state (a cache, a module) becomes an `ObjectRef` and is appended to
    ``objects`` with its path, where given (else it is a `PyTreeError`)."""
    n = len(args)
    nums = {i % n if n else i for i in static_argnums if -n <= i < n}
    leaves: list[mx.array] = []
    args_trees, kwargs_trees = [], []
    on_object = None
    if objects is not None:
        def on_object(obj, path):
            for i, (o, _) in enumerate(objects):
                if o is obj:
                    return pytree.ObjectRef(i)
            if not state_lib.is_state_object(obj):
                raise pytree.PyTreeError(
                    f"{path} is {pytree.describe(obj)}: neither an mx.array, a container of arrays, "
                    "a Python scalar nor an object holding arrays in its attributes; declare it "
                    "static (static_argnums/static_argnames) to make it part of the cache key")
            objects.append((obj, path))
            return pytree.ObjectRef(len(objects) - 1)
    for i, a in enumerate(args):
        arg_leaves, t = pytree.flatten(pytree.Static(a) if i in nums else a, path=f"argument {i}",
                                       on_object=on_object)
        leaves += arg_leaves
        args_trees.append(t)
    for k, v in kwargs.items():
        arg_leaves, t = pytree.flatten(
            pytree.Static(v) if k in static_argnames else v, path=f"argument {k!r}",
            on_object=on_object)
        leaves += arg_leaves
        kwargs_trees.append(t)
    tree = pytree.Node(tuple, None, (
        pytree.Node(tuple, None, tuple(args_trees)),
        pytree.Node(dict, tuple(kwargs), tuple(kwargs_trees)),
    ))
    return leaves, tree


def _captured_arrays(obj, seen: set[int], depth: int = 0):
    """Arrays reachable from a function's closure, defaults, bound self and referenced globals."""
    if depth > 6 or id(obj) in seen:
        return
    seen.add(id(obj))
    if isinstance(obj, mx.array):
        yield obj
        return
    import mlx.nn as nn

    if isinstance(obj, nn.Module):
        leaves, _ = pytree.flatten(obj.parameters(), is_static=lambda _: True)
        yield from leaves
        return
    if isinstance(obj, (list, tuple)):
        for x in obj:
            yield from _captured_arrays(x, seen, depth + 1)
    elif isinstance(obj, dict):
        for x in obj.values():
            yield from _captured_arrays(x, seen, depth + 1)
    elif inspect.ismethod(obj):
        yield from _captured_arrays(obj.__self__, seen, depth + 1)
        yield from _captured_arrays(obj.__func__, seen, depth + 1)
    elif inspect.isfunction(obj):
        for cell in obj.__closure__ or ():
            try:
                yield from _captured_arrays(cell.cell_contents, seen, depth + 1)
            except ValueError:  # an empty cell
                pass
        yield from _captured_arrays(obj.__defaults__ or (), seen, depth + 1)
        yield from _captured_arrays(dict(obj.__kwdefaults__ or {}), seen, depth + 1)
        g = obj.__globals__
        for name in obj.__code__.co_names:
            if name in g and isinstance(g[name], (mx.array, nn.Module)):
                yield from _captured_arrays(g[name], seen, depth + 1)
    elif callable(obj) and hasattr(obj, "__call__") and not inspect.isbuiltin(obj):
        yield from _captured_arrays(type(obj).__call__, seen, depth + 1)
        yield from _captured_arrays(vars(obj) if hasattr(obj, "__dict__") else {}, seen, depth + 1)


def _evaluate_captured(fn, arguments: Sequence[mx.array] = ()) -> None:
    """Evaluate lazily computed captured state (e.g. fresh nn.Linear weights) before tracing, so
    its producers (RandomBits, ...) never leak into the graph as equations. Arrays that are also
    arguments (a module's parameters, passed as inputs) are left alone: under mx.grad or
    mx.compile they are the transformation's tracers, which cannot be evaluated."""
    passed = {id(a) for a in arguments}
    arrays = [a for a in _captured_arrays(fn, set()) if id(a) not in passed]
    if arrays:
        mx.eval(arrays)


class _GraphBuilder:
    """Turns exporter entries into vars and equations as they arrive (the exporter's dicts are
    dropped at once: keeping thousands alive costs more than the graph itself).

    The hot loop of tracing: exporter values are already well typed, so vars and equations take
    the trusted constructors, and decoded params are memoised per distinct (primitive, arguments,
    output types): most entries repeat a few layouts.
    """

    def __init__(self):
        self.env: dict[str, Var] = {}
        self.inputs: tuple[Var, ...] = ()
        self.outputs: list = []
        self.constants: list[tuple[Var, mx.array]] = []
        self.eqns: list[Eqn] = []
        self.decoded: dict[tuple, tuple[str, Params]] = {}
        self.needs_outputs: dict[str, bool] = {}  # primitives whose params come from output types
        self.dtype_names = dict(dtypes.FROM_MX)
        self.collectives = _collectives.Recording()  # what the export calls of mx.distributed
        self.checkpoints = _checkpoint.Recording()  # and of mx.checkpoint
        self.undifferentiated_checkpoints = 0  # checkpointed calls no gradient here recomputes

    def new(self, name, shape, dtype) -> Var:
        if name in self.env:
            raise TraceError(f"the exporter defined {name} twice")
        shape = shape if type(shape) is tuple else tuple(shape)
        name_of = self.dtype_names.get(dtype) or dtypes.from_mx(dtype)  # the latter raises
        v = self.env[name] = Var.trusted(shape, name_of)
        return v

    def use(self, name) -> Var:
        try:
            return self.env[name]
        except KeyError:
            raise TraceError(f"the exporter used {name} before defining it") from None

    def __call__(self, entry: dict) -> None:
        kind = entry["type"]
        if kind == "primitive":
            self.primitive(entry)
        elif kind == "inputs":
            self.inputs = tuple(self.new(*e) for e in entry["inputs"])
        elif kind == "outputs":
            self.outputs = [e[0] for e in entry["outputs"]]  # defined later, looked up at the end
        elif kind == "constants":
            for name, value in entry["constants"]:
                self.constants.append((self.new(name, value.shape, value.dtype), value))
        elif kind == "keyword_inputs":
            if entry["keywords"]:
                raise TraceError("unexpected keyword inputs in a flattened trace")
        else:
            raise TraceError(f"unknown exporter entry type {kind!r}")

    def primitive(self, entry: dict) -> None:
        outputs = entry["outputs"]
        arguments = entry["arguments"]
        name = entry["name"]
        if name == "Depends" and _is_stop_marker(entry):
            v = self.use(entry["inputs"][0][0])
            self.eqns.append(Eqn.trusted("StopGradient", (v,), (self.new(*outputs[0]),), Params()))
            return
        needs_outputs = self.needs_outputs.get(name)
        if needs_outputs is None:
            prim = get_primitive(name)  # raises UnsupportedPrimitiveError naming it
            needs_outputs = self.needs_outputs[name] = bool(getattr(prim, "from_outputs", ()))
        key = (name, repr(arguments) if arguments else "")
        if needs_outputs:
            key += (repr([o[1:] for o in outputs]),)
        hit = self.decoded.get(key)
        if hit is None:
            prim = get_primitive(name)
            try:
                params = prim.decode(arguments, [(o[1], o[2]) for o in outputs])
            except Exception as err:
                raise TraceError(
                    f"cannot decode the arguments {arguments!r} of primitive {prim.name}: {err}"
                ) from err
            hit = self.decoded[key] = (prim.name, Params(params))
        use, new = self.use, self.new
        ins = tuple([use(e[0]) for e in entry["inputs"]])
        outs = tuple([new(*o) for o in outputs])
        self.eqns.append(Eqn.trusted(hit[0], ins, outs, hit[1]))

    def graph(self, in_tree, out_tree) -> Graph:
        outputs = tuple(self.use(n) for n in self.outputs)
        graph = Graph(self.inputs, tuple(self.eqns), outputs, tuple(self.constants), in_tree, out_tree)
        graph, self.undifferentiated_checkpoints = self.checkpoints.resolve(
            self.collectives.resolve(graph))
        return graph


# ---- while a trace runs --------------------------------------------------------------------
# MLX's exporter records neither StopGradient (it is dropped) nor Contiguous (no exportable
# state). While a thread traces, mx.stop_gradient(x) is recorded as mx.depends([s], [s, s]) of
# s = stop_gradient(x), which the exporter reports as Depends(x, x, x), a form MLX's own code
# never builds, and the builder turns back into a StopGradient equation. Every input of the
# depends is stopped: the gradients the traced function takes itself (a training step) see no
# path to x, as with MLX's own op (a gather at stopped indices is not asked for their gradient:
# mixture-of-experts routing); mx.contiguous(x) is x itself (a graph has
# value semantics: layout is the runtime's business); mx.fast.cross_entropy, whose GPU kernel
# has no exportable state either, is its definition, logsumexp(x) - x[target] in float32.
_STOP_GRADIENT, _CONTIGUOUS = mx.stop_gradient, mx.contiguous
_CROSS_ENTROPY = mx.fast.cross_entropy
_trace_lock = threading.Lock()
_tracing_threads: dict[int, int] = {}  # thread ident -> nesting depth
_compile_was_enabled = False


def _is_stop_marker(entry: dict) -> bool:
    ins = entry["inputs"]
    return len(ins) == 3 and len(entry["outputs"]) == 1 and ins[0][0] == ins[1][0] == ins[2][0]


def _stop_gradient(x, *args, **kwargs):
    if threading.get_ident() in _tracing_threads and isinstance(x, mx.array) and not args and not kwargs:
        stopped = _STOP_GRADIENT(x)
        return mx.depends([stopped], [stopped, stopped])[0]
    return _STOP_GRADIENT(x, *args, **kwargs)


def _cross_entropy(logits, targets, *args, **kwargs):
    if threading.get_ident() not in _tracing_threads or args or kwargs.get("stream") is not None:
        return _CROSS_ENTROPY(logits, targets, *args, **kwargs)
    # MLX's GPU kernel accumulates in float32; its CPU fallback reduces in the logits' dtype.
    x = logits if mx.default_device() == mx.cpu else logits.astype(mx.float32)
    picked = mx.take_along_axis(x, mx.expand_dims(targets, -1), axis=-1).squeeze(-1)
    return (mx.logsumexp(x, axis=-1) - picked).astype(mx.float32)


def _contiguous(x, *args, **kwargs):
    if threading.get_ident() in _tracing_threads and isinstance(x, mx.array):
        return x
    return _CONTIGUOUS(x, *args, **kwargs)


def _compile_enabled() -> bool:
    """Whether mx.compile compiles now (MLX has no getter): a compiled function that runs its
    Python body on every call is not being compiled."""
    calls = []
    probe = mx.compile(lambda x: (calls.append(1), x)[1])
    x = mx.array(0)
    probe(x)
    probe(x)
    return len(calls) == 1


@contextlib.contextmanager
def _tracing():
    """mx.compile off (mlx.nn's compiled helpers are traced through, not recorded as opaque
    Compiled primitives) and the stop_gradient / contiguous substitutes on, for this thread."""
    global _compile_was_enabled
    me = threading.get_ident()
    with _trace_lock:
        if not _tracing_threads:
            _compile_was_enabled = _compile_enabled()
            if _compile_was_enabled:
                mx.disable_compile()
            mx.stop_gradient, mx.contiguous = _stop_gradient, _contiguous
            mx.fast.cross_entropy = _cross_entropy
        _tracing_threads[me] = _tracing_threads.get(me, 0) + 1
    try:
        yield
    finally:
        with _trace_lock:
            _tracing_threads[me] -= 1
            if not _tracing_threads[me]:
                del _tracing_threads[me]
            if not _tracing_threads:
                mx.stop_gradient, mx.contiguous = _STOP_GRADIENT, _CONTIGUOUS
                mx.fast.cross_entropy = _CROSS_ENTROPY
                if _compile_was_enabled:
                    mx.enable_compile()


def _export(flat_fn: Callable, flat_args: Sequence[mx.array]) -> _GraphBuilder:
    builder = _GraphBuilder()
    # The trace allocates one small object per var and equation; generational GC passes over
    # thousands of young objects would cost more than building them (and find no garbage).
    enabled = gc.isenabled()
    gc.disable()
    try:
        with _collectives.recording(builder.collectives), \
                _checkpoint.recording(builder.checkpoints):
            mx.export_function(builder, flat_fn, *flat_args)
    finally:
        if enabled:
            gc.enable()
    return builder


@dataclass(frozen=True)
class StateIO:
    """How a traced call's graph meets its state objects (`mlxtriton.state`).

    The graph's inputs are the argument leaves, then ``snapshot.leaves[i]`` for i in ``inputs``;
    its outputs are the results, then the state outputs ``changes.plan`` writes back."""

    roots: tuple[tuple[Any, str], ...]  # (object, name): the function's, then the arguments'
    inputs: tuple[int, ...]
    changes: state_lib.Changes
    results: int  # how many of the graph's outputs are the function's results


@dataclass(frozen=True)
class TracedCall:
    """A traced call: its graph, the caller's argument leaves, and its state (None: it has none)."""

    graph: Graph
    args: tuple[mx.array, ...]
    state: StateIO | None = None
    snapshot: state_lib.Snapshot | None = None


def state_roots(fn: Callable, objects: Sequence[tuple[Any, str]]) -> list[tuple[Any, str]]:
    """The state objects of a call: what ``fn`` reaches, the argument objects, the random key."""
    roots = state_lib.function_roots(fn)
    known = {id(o) for o, _ in roots}
    roots += [(o, p) for o, p in objects if id(o) not in known]
    return roots + [(state_lib.RANDOM, "mx.random.state")]


def trace_call(fn: Callable, args: tuple, kwargs: dict, static_argnums=(), static_argnames=(),
               *, normalized: bool = False, read_only_constants: bool = False) -> TracedCall:
    """Trace one call ``fn(*args, **kwargs)``; the engine under `trace` and the runtime.

    Module parameters and buffers, the arrays of argument objects and the random key are graph
    inputs after the arguments; what the call rebinds of them are graph outputs after its
    results (`StateIO`). With ``read_only_constants``, state the call only reads is a constant
    instead (`trace`'s view: a graph of the call as it was). The caller's objects are left as
    they were, whatever happens."""
    nums, names = ((static_argnums, static_argnames) if normalized
                   else _normalize_static(fn, static_argnums, static_argnames))
    objects: list[tuple[Any, str]] = []
    leaves, in_tree = _arguments_tree(args, kwargs, nums, names, objects)
    roots = state_roots(fn, objects)
    before = state_lib.snapshot([o for o, _ in roots], [p for _, p in roots], prepare=True)
    _evaluate_captured(fn, [*leaves, *before.leaves])
    n_args = len(leaves)
    found: list = []  # (out_tree, changes) of the last trace

    def flat_fn(*flat):
        found.clear()
        saved = before.save()
        bound, traced = _bindings(fn), False
        try:
            before.substitute(flat[n_args:])
            a, kw = pytree.unflatten(in_tree, list(flat[:n_args]), [o for o, _ in objects])
            a = tuple(x.value if isinstance(x, pytree.Static) else x for x in a)
            kw = {k: v.value if isinstance(v, pytree.Static) else v for k, v in kw.items()}
            result = fn(*a, **kw)
            out_leaves, out_tree = pytree.flatten(result)
            if any(isinstance(t, pytree.Static) for t in _static_leaves(out_tree)):
                raise TraceError(
                    f"{_name(fn)} returned non-array values {out_tree}; a traced function must "
                    "return arrays or containers of arrays")
            after = state_lib.snapshot(before.roots, before.names)
            changes = state_lib.plan_writes(before, after)
            found.append((out_tree, changes))
            traced = True
            return (*out_leaves, *(after.leaves[i] for i in changes.outputs))
        finally:
            before.restore(saved)
            rebound = _restore_bindings(bound)
            if rebound and traced:
                raise TraceError(
                    f"cannot trace {_name(fn)}: it rebinds {', '.join(rebound)}, which it captures "
                    "(global or nonlocal): an optimized function runs its Python once, when traced, "
                    "so the name would be rebound then only (and what it captures is a constant). "
                    "Keep the value in a module, an object, a dict or a list it reaches, or pass "
                    "it as an argument and return the new value")

    flat_args = [*leaves, *before.leaves]
    with _tracing():
        try:
            builder = _export(flat_fn, flat_args)
        except ValueError as err:
            # Some GPU-only primitives have no exportable state. On the CPU stream MLX decomposes
            # them into ordinary primitives (Python code that asks for the default device then
            # takes its CPU branch: the warning says so).
            match = _NO_STATE.search(str(err))
            if match is None or mx.default_stream(mx.default_device()) == mx.default_stream(mx.cpu):
                explained = _explained(fn, err)
                if explained is None:
                    raise
                raise explained from err
            warnings.warn(
                f"MLX cannot export the state of primitive {match.group(1)}; tracing "
                f"{_name(fn)} on the CPU stream instead, where it decomposes", TraceWarning,
                stacklevel=3)
            with mx.stream(mx.cpu):
                try:
                    builder = _export(flat_fn, flat_args)
                except ValueError as again:
                    explained = _explained(fn, again)
                    if explained is None:
                        raise
                    raise explained from again
    out_tree, changes = found[-1]
    graph = builder.graph(in_tree, out_tree)
    if builder.undifferentiated_checkpoints:
        warnings.warn(
            f"{_name(fn)} calls mx.checkpoint {builder.undifferentiated_checkpoints} time(s) and "
            "takes no gradient itself: traced through, as the identity it is. A gradient taken "
            "outside the optimized function (mx.grad(mlxtriton.optimize(f))) is right but keeps "
            "the activations checkpointing would free; take the gradient inside the function "
            "you optimize (a training step) to recompute them", TraceWarning, stacklevel=3)
    return _with_state(graph, tuple(leaves), before, changes, roots, read_only_constants)


_VALUE_READ = "Attempting to eval an array during function transformations"


def _explained(fn: Callable, err: ValueError) -> TraceError | None:
    """What MLX's exporter raised, said in terms of the traced function, where it is one of:
    a primitive the exporter cannot record (mx.qqmm's QQMatmul, mx.linalg.lu's LUF, ...: the
    tracer never sees it, so nothing can run it); an array's value read while tracing (Python
    control flow on an array, ``.item()``: a trace records shapes, not values)."""
    match = _NO_STATE.search(str(err))
    if match is not None:
        hint = ("; a function mx.checkpoint made before the trace (mlx.nn.utils.checkpoint makes "
                "one when it wraps) is one: call mx.checkpoint(fn)(...) inside the traced "
                "function instead, which the trace records" if match.group(1) == "CustomTransforms"
                else "")
        return TraceError(
            f"cannot trace {_name(fn)}: it calls MLX primitive {match.group(1)}, which MLX "
            f"{mx.__version__}'s exporter cannot record ({err}); call that part outside the "
            f"optimized function{hint}")
    if _VALUE_READ in str(err):
        return TraceError(
            f"cannot trace {_name(fn)}: it reads an array's value{_user_line(err)} (Python "
            "control flow on an array, bool(), .item(), .tolist() or int() of one), and a "
            "trace records shapes, not values; compute the choice with mx.where, or pass the "
            "value as a Python number through static_argnums / static_argnames")
    return None


def _user_line(err: BaseException) -> str:
    """`` at file:line (code)`` of the innermost frame of ``err`` outside MLX and mlxtriton."""
    skip = tuple(os.path.dirname(m.__file__) for m in (mx, _collectives)
                 if getattr(m, "__file__", None))
    found = ""
    tb = err.__traceback__
    while tb is not None:
        code = tb.tb_frame.f_code
        if not code.co_filename.startswith(skip) and not code.co_filename.startswith("<"):
            line = linecache.getline(code.co_filename, tb.tb_lineno).strip()
            found = f" at {code.co_filename}:{tb.tb_lineno}" + (f" ({line})" if line else "")
        tb = tb.tb_next
    return found


def _with_state(graph: Graph, leaves: tuple, before: state_lib.Snapshot,
                changes: state_lib.Changes, roots, read_only_constants: bool = False) -> TracedCall:
    """The traced graph with unchanged state outputs and unread state inputs dropped (or, with
    ``read_only_constants``, those the call does not write made constants), and its state
    inputs and outputs named."""
    n_args = len(leaves)
    n_results = len(graph.outputs) - len(changes.outputs)
    state_outs = graph.outputs[n_results:]
    changes, kept = changes.without([
        j is not None and state_outs[i] is graph.inputs[n_args + j]
        for i, j in enumerate(changes.same_slot)])
    for w in changes.plan.writes:
        if isinstance(before.containers[w.container], tuple):
            raise state_lib.StateError(
                f"the call changed {w.path}, an array in a tuple that also holds objects: the "
                "tuple cannot be rebuilt around them")
    outputs = graph.outputs[:n_results] + tuple(state_outs[i] for i in kept)
    read = {v for e in graph.eqns for v in e.inputs} | set(outputs)
    inputs = tuple(i for i in range(len(before.leaves)) if graph.inputs[n_args + i] in read)
    constants = graph.constants
    if read_only_constants:
        written = set(changes.same_slot)
        constants += tuple((graph.inputs[n_args + i], before.leaves[i]) for i in inputs
                           if i not in written)
        inputs = tuple(i for i in inputs if i in written)
    paths = before.leaf_paths()
    names = [""] * len(kept)
    for w in changes.plan.writes:
        if w.op == "array":
            names[w.value] = w.path
        elif w.op == "tree":
            for j, i in enumerate(w.value[1]):
                names[i] = f"{w.path}<{j}>"
    graph = graph.replace(
        inputs=graph.inputs[:n_args] + tuple(graph.inputs[n_args + i] for i in inputs),
        outputs=outputs,
        constants=constants,
        state_inputs=tuple(paths[i] for i in inputs),
        state_outputs=tuple(names),
        state_values=tuple(before.leaves[i] for i in inputs))
    if not inputs and not changes.plan.writes:
        return TracedCall(graph, leaves)
    return TracedCall(graph, leaves, StateIO(tuple(roots), inputs, changes, n_results), before)


_UNBOUND = object()


def _bindings(fn: Callable) -> list[tuple[Any, str, Any]]:
    """The names ``fn`` captures, with their values: its closure cells and the globals its code
    reads (a callable object's: its ``__call__``'s), and those of the functions they hold (a few
    levels down), as (cell or globals dict, name, value)."""
    out: list[tuple[Any, str, Any]] = []
    seen: set[int] = set()

    def go(f, depth):
        f = getattr(f, "__func__", f)  # a bound method's function
        if depth > 3 or id(f) in seen or not inspect.isfunction(f):
            return
        seen.add(id(f))
        for name, cell in zip(f.__code__.co_freevars, f.__closure__ or ()):
            try:
                value = cell.cell_contents
            except ValueError:  # an empty cell
                value = _UNBOUND
            out.append((cell, name, value))
            go(value, depth + 1)
        g = f.__globals__
        for name in f.__code__.co_names:
            if name in g:
                out.append((g, name, g[name]))
                go(g[name], depth + 1)

    go(fn if inspect.isfunction(getattr(fn, "__func__", fn)) or isinstance(fn, type)
       else type(fn).__call__, 0)
    return out


def _restore_bindings(bound: list[tuple[Any, str, Any]]) -> list[str]:
    """Put back each captured name a trace rebound; their names."""
    rebound = []
    for where, name, value in bound:
        if isinstance(where, dict):
            if where.get(name, _UNBOUND) is not value:
                where[name] = value
                rebound.append(f"the global {name!r}")
        else:
            try:
                now = where.cell_contents
            except ValueError:
                now = _UNBOUND
            if now is not value:
                if value is _UNBOUND:
                    del where.cell_contents
                else:
                    where.cell_contents = value
                rebound.append(f"the nonlocal {name!r}")
    return list(dict.fromkeys(rebound))


def _static_leaves(tree):
    if isinstance(tree, pytree.Static):
        yield tree
    elif isinstance(tree, pytree.Node):
        for c in tree.children:
            yield from _static_leaves(c)


def _name(fn) -> str:
    return getattr(fn, "__qualname__", None) or type(fn).__name__


def trace(
    fn: Callable,
    static_argnums: int | Sequence[int] = (),
    static_argnames: str | Sequence[str] = (),
) -> Callable[..., Graph]:
    """Trace an unmodified MLX function into a graph (the ``jax.make_jaxpr`` of mlxtriton).

    Arguments may be arrays or nested tuples, lists and dicts of arrays; Python scalars (and
    arguments declared static) are static: they are baked into the graph and its identity.
    Captured arrays (closures, ``mlx.nn`` module parameters) the call only reads become graph
    constants; use `functionalize` to make a module's parameters graph inputs instead. State the
    call rebinds (batch-norm statistics, a cache's arrays, the random key) is read from trailing
    inputs and written to trailing outputs (`Graph.state_inputs`, `Graph.state_outputs`), and the
    caller's objects are left as they were.

    Args:
        fn: a function of MLX arrays, written with ``mx.*``, ``mlx.nn`` and ``mx.fast``.
        static_argnums: positional arguments to treat as static.
        static_argnames: keyword arguments to treat as static.

    Returns:
        A function with ``fn``'s signature that returns the `Graph` of one call.

    Raises:
        UnsupportedPrimitiveError: the function uses a primitive mlxtriton does not declare.
        PyTreeError: an argument is neither an array, a container of arrays, a Python scalar,
            nor declared static.

    Example:
        >>> import mlx.core as mx, mlxtriton
        >>> g = mlxtriton.trace(lambda x: mx.exp(x) * 2)(mx.ones((2, 3)))
        >>> print(g)  # doctest: +NORMALIZE_WHITESPACE
        { lambda a:f32[] = 2.0 ; b:f32[2,3]. let
            c:f32[2,3] = Exp b
            d:f32[2,3] = Broadcast[shape=(2, 3)] a
            e:f32[2,3] = Multiply c d
          in (e,) }
    """

    def traced(*args, **kwargs) -> Graph:
        return trace_call(fn, args, kwargs, static_argnums, static_argnames,
                          read_only_constants=True).graph

    traced.__name__ = f"trace({_name(fn)})"
    traced.__doc__ = fn.__doc__
    return traced


def functionalize(module) -> tuple[Callable[..., Any], dict]:
    """Split an ``mlx.nn.Module`` into a pure function of its parameters and the parameters.

    Tracing ``apply(params, *args)`` makes the parameters graph *inputs*, not constants, so the
    graph serves weights that change (training) without retracing.

    Returns:
        ``(apply, params)`` where ``apply(params, *args, **kwargs) == module(*args, **kwargs)``.

    Raises:
        PyTreeError: ``params`` passed to ``apply`` do not match the module's parameter tree.

    Example:
        >>> import mlx.nn as nn, mlxtriton
        >>> apply, params = mlxtriton.functionalize(nn.Linear(4, 2))
        >>> g = mlxtriton.trace(apply)(params, mx.ones((3, 4)))
        >>> len(g.inputs), len(g.constants)
        (3, 0)
    """
    params = module.parameters()
    _, expected = pytree.flatten(params)

    def apply(p, *args, **kwargs):
        _, got = pytree.flatten(p)
        if got != expected:
            raise pytree.PyTreeError(
                f"parameters do not match {type(module).__name__}'s: expected {expected}, got {got}"
            )
        saved = module.parameters()
        module.update(p)
        try:
            return module(*args, **kwargs)
        finally:
            module.update(saved)

    apply.__qualname__ = f"functionalize({type(module).__name__})"
    return apply, params
