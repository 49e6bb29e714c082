"""Tracing layer: MLX's collectives (``mx.distributed``) recorded as graph equations.

MLX's exporter cannot report a collective (graph/primitives.py says why). While a `Recording` is
active around one ``mx.export_function`` call, the ``mx.distributed`` functions and mlx.nn's
``sum_gradients`` are stand-ins: each calls MLX's own op first (its argument checks and output
shape; the lazy result is dropped, nothing communicates), then returns a placeholder the exporter
can report, a custom kernel named after the call with the collective's inputs. `Recording.resolve`
turns the placeholders of the traced graph back into the collectives' equations.

Where MLX's VJP of a collective is a plain op of the cotangent (all_sum, all_max, all_min: the
cotangent itself; all_gather: this rank's slice of it), the placeholder hangs off ``mx.depends``
on an array with that VJP, so ``mx.grad`` inside a traced function differentiates through it as
MLX does. The others have no VJP in MLX (sum_scatter, send, recv) or one that communicates
(sum_gradients): inside a trace they cannot be differentiated, outside (``mx.grad`` of an
optimized function) MLX's own VJPs apply. A ``stream`` argument picks where MLX runs a collective,
not what it computes: it is not recorded, and the graph's collectives run on the stream MLX picks
for the group's backend. May import mlx and mlxtriton.graph only.
"""

from __future__ import annotations

import re
import threading
from typing import Any, Callable

import mlx.core as mx

from mlxtriton.graph import dtypes
from mlxtriton.graph.core import Eqn, Graph, Params
from mlxtriton.graph.primitives import UnsupportedPrimitiveError
from mlxtriton.graph.transforms import dce

# MLX's own stop_gradient (while a trace runs, mx.stop_gradient records a StopGradient equation
# instead: trace.py): the placeholder must be off the differentiated path for MLX's VJP itself.
_STOP_GRADIENT = mx.stop_gradient
_KERNEL = re.compile(r"custom_kernel_mlxtriton_collective_(\d+)_")
_NOT_DIFFERENTIABLE = re.compile(r"\[Primitive::(vjp|jvp|vmap)\] Not implemented for CustomKernel")


class _Call:
    """One recorded collective: its equation's primitive and params, and whether its placeholder
    hangs off ``mx.depends`` (the depends' output is the collective's result)."""

    __slots__ = ("primitive", "params", "through_depends")

    def __init__(self, primitive: str, params: dict, through_depends: bool):
        self.primitive, self.params, self.through_depends = primitive, Params(params), through_depends


class Recording:
    """The collectives one export called, in call order; `recording` makes it active."""

    def __init__(self):
        self.calls: list[_Call] = []
        self.thread = threading.get_ident()

    def placeholder(self, primitive: str, params: dict, inputs: list, out: mx.array,
                    like: mx.array | None = None) -> mx.array:
        """An exportable array standing for ``out`` (MLX's lazy result of the collective): a
        custom kernel of ``inputs`` named after this call, or, with ``like`` (an array of
        ``out``'s type whose VJP is the collective's), ``like`` depending on that kernel."""
        if out.dtype == mx.float64:
            raise UnsupportedPrimitiveError(
                f"cannot trace {primitive} of a float64 array: its placeholder is a custom kernel, "
                "which has no float64"
            )
        index = len(self.calls)
        self.calls.append(_Call(primitive, params, like is not None))
        kernel = mx.fast.metal_kernel(
            name=f"mlxtriton_collective_{index}", input_names=[f"in{i}" for i in range(len(inputs))],
            output_names=["out"], source="",
        )
        if like is not None:  # the kernel is off the differentiated path: only `like` is on it
            inputs = [_STOP_GRADIENT(x) for x in inputs]
        marker = kernel(inputs=inputs, output_shapes=[out.shape], output_dtypes=[out.dtype],
                        grid=(1, 1, 1), threadgroup=(1, 1, 1))[0]
        return marker if like is None else mx.depends([like], [marker])[0]

    def call_of(self, e: Eqn) -> _Call | None:
        if e.primitive != "CustomKernel":
            return None
        match = _KERNEL.match(e.params["kernel_name"])
        return self.calls[int(match.group(1))] if match else None

    def resolve(self, graph: Graph) -> Graph:
        """``graph`` (this recording's export) with each placeholder replaced by its collective."""
        if not self.calls:
            return graph
        pending = {}  # a placeholder kernel's output -> (its call, the kernel's equation)
        eqns = []
        for e in graph.eqns:
            call = self.call_of(e)
            if call is not None and call.through_depends:
                pending[e.outputs[0]] = (call, e)
            elif call is not None:
                eqns.append(Eqn(call.primitive, e.inputs, e.outputs, call.params))
            elif e.primitive == "Depends" and len(e.inputs) == 2 and e.inputs[1] in pending:
                call, kernel = pending.pop(e.inputs[1])
                # The kernel read its inputs through stop_gradient (the exporter's simplification
                # drops it); the collective reads them, differentiably.
                inputs = tuple(_before_stop_gradient(graph, v) for v in kernel.inputs)
                eqns.append(Eqn(call.primitive, inputs, e.outputs, call.params))
            else:
                eqns.append(e)
        if pending:
            raise UnsupportedPrimitiveError(
                f"the trace lost the mx.depends around {len(pending)} collective placeholder(s)"
            )
        return dce(graph.replace(eqns=tuple(eqns)))  # an all_gather's padded `like` is dead now

    # ---- the stand-ins, each with its MLX function's signature ----
    def all_reduce(self, kind: str, original: Callable) -> Callable:
        def all_reduce(x, *, group=None, stream=None):
            out = original(x, group=group, stream=stream)
            x = _array(x)
            params = _group_params(group, f"all_{kind}")
            if params is None:
                return out
            return self.placeholder("AllReduce", {"kind": kind, **params}, [x], out, like=x)

        return all_reduce

    def all_gather(self, original: Callable) -> Callable:
        def all_gather(x, *, group=None, stream=None):
            out = original(x, group=group, stream=stream)
            x = _array(x)
            params = _group_params(group, "all_gather")
            if params is None:
                return out
            # MLX's VJP is this rank's slice of the cotangent: the VJP of padding x into place.
            rows = 1 if x.ndim == 0 else x.shape[0]
            like = mx.pad(x.reshape(1) if x.ndim == 0 else x,
                          [(params["rank"] * rows, (params["size"] - 1 - params["rank"]) * rows)]
                          + [(0, 0)] * max(x.ndim - 1, 0))
            return self.placeholder("AllGather", params, [x], out, like=like)

        return all_gather

    def sum_scatter(self, original: Callable) -> Callable:
        def sum_scatter(x, *, group=None, stream=None):
            out = original(x, group=group, stream=stream)
            x = _array(x)
            params = _group_params(group, "sum_scatter")
            if params is None:
                return out
            return self.placeholder("ReduceScatter", {"kind": "sum", **params}, [x], out)

        return sum_scatter

    def send(self, original: Callable) -> Callable:
        def send(x, dst, *, group=None, stream=None):
            out = original(x, dst, group=group, stream=stream)  # raises for a group of one
            x = _array(x)
            return self.placeholder("Send", {"dst": dst, **_group_params(group, "send")}, [x], out)

        return send

    def recv(self, original: Callable) -> Callable:
        def recv(shape, dtype, src, *, group=None, stream=None):
            out = original(shape, dtype, src, group=group, stream=stream)
            params = {"src": src, "shape": tuple(out.shape), "dtype": dtypes.from_mx(out.dtype),
                      **_group_params(group, "recv")}
            return self.placeholder("Recv", params, [], out)

        return recv

    def recv_like(self, recv: Callable) -> Callable:
        def recv_like(x, src, *, group=None, stream=None):
            return recv(x.shape, x.dtype, src, group=group, stream=stream)

        return recv_like

    def sum_gradients(self, original: Callable) -> Callable:
        def sum_gradients(group):
            params = _group_params(group, "sum_gradients")
            if params is None:
                return original(group)  # the identity, as MLX makes it for a group of one
            # Its VJP communicates: a bare placeholder, which MLX refuses to differentiate.
            return lambda x: self.placeholder("SumGradients", params, [x], x)

        return sum_gradients


def _before_stop_gradient(graph: Graph, v):
    p = graph.producer(v)
    return p.inputs[0] if p is not None and p.primitive == "StopGradient" else v


def _array(x) -> mx.array:
    """The array MLX's function made of its argument (which may be a scalar or a NumPy array)."""
    return x if isinstance(x, mx.array) else mx.array(x)


def _group_params(group, function: str) -> dict[str, int] | None:
    """``{"size", "rank"}`` of the group a collective runs over, or None for a group of one
    (where MLX's op returns its input). Only MLX's world group can be recorded."""
    world = mx.distributed.init()
    group = world if group is None else group
    if group.size() == 1:
        return None
    if (group.size(), group.rank()) != (world.size(), world.rank()):
        raise UnsupportedPrimitiveError(
            f"cannot trace {function} over a group of {group.size()} as rank {group.rank()}: "
            f"mlxtriton records collectives over MLX's world group only (here {world.size()} "
            f"processes, rank {world.rank()}), not over a Group.split subgroup"
        )
    return {"size": group.size(), "rank": group.rank()}


# The active recordings, innermost last (an export inside a traced function records its own); the
# stand-ins are installed while there is one.
_ACTIVE: list[Recording] = []
_ALL_REDUCES = {"all_sum": "sum", "all_max": "max", "all_min": "min"}


class recording:
    """``with recording(r):`` makes ``r`` record the collectives its thread calls (see module)."""

    def __init__(self, rec: Recording):
        self.rec = rec

    def __enter__(self) -> Recording:
        if not _ACTIVE:
            _install()
        _ACTIVE.append(self.rec)
        return self.rec

    def __exit__(self, kind, err, tb):
        _ACTIVE.remove(self.rec)
        if not _ACTIVE:
            _uninstall()
        if err is not None and _NOT_DIFFERENTIABLE.search(str(err)):
            names = sorted({c.primitive for c in self.rec.calls if not c.through_depends})
            if names:
                raise UnsupportedPrimitiveError(
                    f"cannot differentiate through {', '.join(names)} inside a traced function: MLX "
                    "has no VJP for sum_scatter, send and recv, and sum_gradients' VJP communicates. "
                    "Differentiate the optimized function instead (mx.grad(mlxtriton.optimize(f)))"
                ) from err
        return False


_INSTALLED: list[tuple[Any, str, Callable]] = []


def _dispatch(name: str, original: Callable, make: Callable[[Recording], Callable]) -> Callable:
    """A module attribute that runs the stand-in of the calling thread's innermost recording, and
    MLX's function on every other thread."""

    def function(*args, **kwargs):
        thread = threading.get_ident()
        rec = next((r for r in reversed(_ACTIVE) if r.thread == thread), None)
        return original(*args, **kwargs) if rec is None else make(rec)(*args, **kwargs)

    function.__name__ = function.__qualname__ = name
    function.__doc__ = original.__doc__
    return function


def _install() -> None:
    import mlx.nn.layers.distributed as nn_distributed

    dist = mx.distributed
    stand_ins = {name: (dist, lambda r, o, k=kind: r.all_reduce(k, o)) for name, kind in _ALL_REDUCES.items()}
    stand_ins.update({
        "all_gather": (dist, lambda r, o: r.all_gather(o)),
        "sum_scatter": (dist, lambda r, o: r.sum_scatter(o)),
        "send": (dist, lambda r, o: r.send(o)),
        "recv": (dist, lambda r, o: r.recv(o)),
        "recv_like": (dist, lambda r, o: r.recv_like(dist.recv)),  # the recv stand-in records
        "sum_gradients": (nn_distributed, lambda r, o: r.sum_gradients(o)),
    })
    for name, (module, make) in stand_ins.items():
        original = getattr(module, name)
        _INSTALLED.append((module, name, original))
        setattr(module, name, _dispatch(name, original, lambda r, make=make, o=original: make(r, o)))


def _uninstall() -> None:
    while _INSTALLED:
        module, name, original = _INSTALLED.pop()
        setattr(module, name, original)
