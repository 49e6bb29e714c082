"""Runtime layer: MLX's transformations (grad, vjp, jvp) through generated kernels.

A generated kernel has no derivative or batching rule in MLX. `differentiable` wraps one kernel
launch in ``mx.custom_function`` whose rules are MLX's own transformations of the fused region's
*body* (the unfused equations, evaluated with MLX ops): MLX differentiates its own primitives,
and everything outside the regions (matmuls, fast ops) is differentiated by MLX as usual, from
what its forward saved. Built once per cache entry; a call a transformation traces adds a few
graph nodes per kernel (stop-gradients and one CustomTransforms node), no tracing; calls no
transformation sees launch the kernels bare (runtime/compiled._tracing). The backward a
region's rules call is handed in (runtime/compiled optimises it): this module never imports
compiled. May import every layer below the public API.
"""

from __future__ import annotations

import math
import os
from dataclasses import dataclass
from typing import Callable, NamedTuple

import mlx.core as mx

from mlxtriton.graph import dtypes
from mlxtriton.graph.core import Eqn, Graph, Params, Var
from mlxtriton.graph.evaluate import run
from mlxtriton.graph.evaluate_mlx import MLX_RULES
from mlxtriton.graph.primitives import POSITIONS, Family, get as get_primitive
from mlxtriton.graph.transforms import cse, dce, make_eqn, substitute
from mlxtriton.trace import trace_call

FUSED_BACKWARD_ENV = "MLXTRITON_FUSED_BACKWARD"


def fused_backward() -> bool:
    """Whether each region's VJP becomes generated kernels (the default): the VJP traced and
    optimised like any function (softmax's backward is one row kernel, RMS norm's a row kernel
    and a column sum). ``MLXTRITON_FUSED_BACKWARD=0`` runs ``mx.compile`` of MLX's VJP of the
    region's body instead, which is slower on the GPUs measured, as are MLX's own VJPs of
    mx.softmax and mx.fast.layer_norm (benchmarks/results/backward_rows_h200*.json). Pointwise
    regions keep MLX's VJP either way (runtime/compiled): the step's mx.compile fuses it with its
    neighbours, which made a compiled Llama-block training step faster than generated pointwise
    backward kernels did (benchmarks/results/train_step_h200*.json)."""
    return os.environ.get(FUSED_BACKWARD_ENV, "1") != "0"


def detached(forward: Callable) -> Callable:
    """``forward`` reading its inputs through ``mx.stop_gradient``.

    The forward's kernels then sit off every transformation's tape: ``mx.jvp`` walks every node
    that depends on a primal (a custom kernel has no JVP rule), while a stop-gradient ends that
    dependence. ``mx.vmap`` batches stop-gradients too, so this cannot hide kernels from it.
    """

    def run_detached(*flat):
        return forward(*[mx.stop_gradient(a) for a in flat])

    return run_detached


def unfused_function(source: Graph) -> Callable[..., list]:
    """A graph (a region's body) as a function of its flat inputs, with MLX ops."""

    def unfused(*flat):
        return run(source, flat, MLX_RULES)

    return unfused


def _inexact(source: Graph) -> tuple[int, ...]:
    # Only inexact inputs are differentiated: integer inputs (labels, indices) get integer zeros,
    # as mx.grad gives them, and never reach a rule that refuses them (Gather's indices).
    return tuple(i for i, v in enumerate(source.inputs) if v.dtype in dtypes.INEXACT)


def _of_inexact(source: Graph, flat: list) -> Callable[..., list]:
    """``source`` as a function of its inexact inputs, the others fixed to ``flat``'s."""
    unfused, inexact = unfused_function(source), _inexact(source)

    def of_inexact(*values):
        args = list(flat)
        for i, a in zip(inexact, values):
            args[i] = a
        return unfused(*args)

    return of_inexact


def vjp_function(source: Graph) -> Callable[[list, list], list]:
    """``(primals, cotangents) -> cotangents of every input``: MLX's VJP of ``source`` evaluated
    with MLX ops (integer inputs get integer zeros). A plain MLX function: it can be compiled,
    traced and optimised like any other (a region's backward as generated kernels). A row max
    the outputs do not depend on is differentiated as a constant (`stop_shift_gradients`)."""
    source = stop_index_gradients(stop_shift_gradients(source))
    inexact = _inexact(source)
    # An output that is a stop-gradient carries no gradient: it is left out of MLX's VJP, which
    # pairs the outputs after one with the wrong cotangents (MLX 0.32). So is an integer or bool
    # output: MLX's VJP would differentiate the path to it (a comparison of a gather whose
    # indices an argmax computed), refusing what plain MLX, which never goes down it, accepts.
    live = [i for i, v in enumerate(source.outputs) if v.dtype in dtypes.INEXACT
            and ((p := source.producer(v)) is None or p.primitive != "StopGradient")]

    def backward(primals: list, cotangents: list) -> list:
        of_inexact = _of_inexact(source, primals)
        if len(live) < len(source.outputs):
            whole, of_inexact = of_inexact, lambda *values: [whole(*values)[i] for i in live]
            cotangents = [cotangents[i] for i in live]
        if not live:
            return [mx.zeros_like(p) for p in primals]
        grads = mx.vjp(of_inexact, [primals[i] for i in inexact], cotangents)[1]
        out = [mx.zeros_like(p) for p in primals]
        for i, g in zip(inexact, grads):
            out[i] = g
        return out

    return backward


class _Rows(NamedTuple):
    """The forms a value carrying a per-row shift takes: a full row, keepdims, squeezed."""

    full: tuple[int, ...]
    axes: tuple[int, ...]  # the reduced (row) axes

    @property
    def keep(self) -> tuple[int, ...]:
        return tuple(1 if k in self.axes else n for k, n in enumerate(self.full))

    @property
    def forms(self) -> tuple[tuple[int, ...], ...]:
        return self.full, self.keep, tuple(n for k, n in enumerate(self.full) if k not in self.axes)

    @property
    def last(self) -> bool:
        return self.axes == (len(self.full) - 1,)

    def reduces(self, axes) -> bool:
        return tuple(sorted(a % len(self.full) for a in axes)) == self.axes


# Rows a per-row shift x - max(x) is read in: floating, or signed integers (the shift is exact,
# nn.log_softmax(x.astype(mx.int32)))
_SHIFTABLE = dtypes.FLOATING | dtypes.SIGNED

# What a primitive does to a per-row shift ``s`` of the inputs marked True: "keeps" it (the output
# carries ``+ s``), "cancels" it (the output does not depend on ``s``), or None (anything else:
# the output depends on ``s`` some other way).
_SHIFT_RULES: dict[str, Callable[[Eqn, list[bool], _Rows], str | None]] = {
    "Softmax": lambda e, hit, rows: "cancels" if hit == [True] and rows.last else None,
    "Reduce": lambda e, hit, rows: "keeps" if (
        e.params["kind"] in ("max", "min") and rows.reduces(e.params["axes"])
        and e.outputs[0].shape == rows.keep) else None,
    "LogSumExp": lambda e, hit, rows: "keeps" if rows.last and e.outputs[0].shape == rows.keep else None,
    "GatherAxis": lambda e, hit, rows: "keeps" if (
        hit == [True, False] and rows.reduces([e.params["axis"]])
        and e.outputs[0].shape == rows.keep) else None,
    **{p: (lambda e, hit, rows: "keeps" if e.outputs[0].shape in rows.forms else None)
       for p in ("Broadcast", "ExpandDims", "Squeeze")},
    # a cast to a floating type from one or from a signed integer: (x - s) in float32 is
    # x - s up to rounding
    "AsType": lambda e, hit, rows: "keeps" if (
        e.inputs[0].dtype in _SHIFTABLE and e.outputs[0].dtype in dtypes.FLOATING) else None,
    "Add": lambda e, hit, rows: "keeps" if (
        hit[0] != hit[1] and e.outputs[0].shape in rows.forms) else None,
    "Subtract": lambda e, hit, rows: (
        "cancels" if all(hit) and e.inputs[0].shape == e.inputs[1].shape
        else "keeps" if hit == [True, False] and e.outputs[0].shape in rows.forms else None),
}


def _shift_free(graph: Graph, shift: Var, rows: _Rows) -> bool:
    """Whether no output of ``graph`` depends on the row shift ``s`` of ``shift = x - s``: every
    value carrying ``+ s`` feeds only ops that keep it (max, min, logsumexp or a one-per-row
    gather over the row, broadcasts, adding an unshifted value) or cancel it (a softmax; the
    difference of two shifted values): `_SHIFT_RULES`."""
    shifted = {shift}
    for e in graph.eqns:
        hit = [v in shifted for v in e.inputs]
        if not any(hit):
            continue
        rule = _SHIFT_RULES.get(e.primitive)
        effect = rule(e, hit, rows) if rule else None
        if effect is None:
            return False
        if effect == "keeps":
            shifted.add(e.outputs[0])
    return not any(v in shifted for v in graph.outputs)


def stop_shift_gradients(graph: Graph) -> Graph:
    """``x - max(x)`` read as ``x - stop_gradient(max(x))`` where no output depends on the max:
    logsumexp(x - m) - (x - m)[label] (how MLX writes cross-entropy) or softmax(x - m). The
    gradient is the same in exact arithmetic, but MLX's VJP of max spreads the (rounding-size)
    sum of the row's cotangents over the elements equal to the max, two more reductions over
    the row, which for rows too long for registers are two more reads of it; and over integer
    rows (a log-softmax of ``x.astype(mx.int32)``) MLX cannot differentiate the max at all,
    while it can the function the trace came from (``nn.log_softmax`` stops the max's gradient
    itself). A stop-gradient is an identity for every other transformation.

    Example:
        >>> g = mlxtriton.trace(lambda x: mx.softmax(x - x.max(-1, keepdims=True), -1))(mx.ones((2, 4)))
        >>> stop_shift_gradients(g).primitive_counts()["StopGradient"]
        1
    """
    stops: dict[Eqn, Eqn] = {}
    for e in graph.eqns:
        if e.primitive != "Subtract":
            continue
        x, wide = e.inputs
        b = graph.producer(wide)
        m = graph.producer(b.inputs[0]) if b is not None and b.primitive == "Broadcast" else None
        if (m is None or m.primitive != "Reduce" or m.params["kind"] != "max" or m.inputs[0] is not x
                or wide.shape != x.shape or x.dtype not in _SHIFTABLE):
            continue
        rows = _Rows(x.shape, tuple(sorted(a % x.ndim for a in m.params["axes"])))
        if _shift_free(graph, e.outputs[0], rows):
            stops[e] = make_eqn("StopGradient", [wide])
    if not stops:
        return graph
    eqns: list[Eqn] = []
    for e in graph.eqns:
        if e in stops:
            stop = stops[e]
            eqns += [stop, Eqn(e.primitive, (e.inputs[0], stop.outputs[0]), e.outputs, e.params)]
        else:
            eqns.append(e)
    return graph.replace(eqns=tuple(eqns))


def stop_index_gradients(graph: Graph) -> Graph:
    """Each position an argmax / argsort computes read through a stop-gradient. MLX's VJP of
    those is zero, but MLX's gather refuses to be differentiated with respect to indices that
    depend on a differentiated input at all: ``x[argmax(x)]``. A region's VJP is asked for the
    cotangents of all its outputs (zeros for those the loss does not read), so without this it
    refused regions whose gathered value plain MLX's gradient never reaches; where the loss does
    read it, plain MLX refuses and this returns the gradient through the gathered values (JAX's)."""
    stops = {e: make_eqn("StopGradient", [e.outputs[0]]) for e in graph.eqns
             if e.primitive in POSITIONS and any(
                 u.primitive != "StopGradient" for u in graph.users(e.outputs[0]))}
    if not stops:
        return graph
    renamed = {e.outputs[0]: stop.outputs[0] for e, stop in stops.items()}
    eqns: list[Eqn] = []
    for e in graph.eqns:
        if any(v in renamed for v in e.inputs):
            e = Eqn(e.primitive, tuple(renamed.get(v, v) for v in e.inputs), e.outputs, e.params)
        eqns.append(e)
        if e in stops:
            eqns.append(stops[e])
    return graph.replace(eqns=tuple(eqns))


def differentiable(forward: Callable[..., list], source: Graph,
                   backward: Callable[..., list] | None = None) -> Callable[..., list]:
    """``forward`` (flat arrays -> list of arrays, computing ``source``'s outputs, e.g. one
    generated kernel) as an ``mx.custom_function`` whose VJP and JVP are MLX's of the ``source``
    graph evaluated with MLX ops.

    The forward must not put anything without a JVP rule on the path from its inputs to its
    outputs unless it reads its inputs through `detached`. ``backward`` runs `vjp_function`
    ``(source)`` (the runtime passes it optimised: its regions become generated kernels,
    themselves differentiable); without it, that function runs under ``mx.compile``.

    Example:
        >>> g = mlxtriton.trace(lambda x: mx.exp(x))(mx.ones(3))
        >>> f = differentiable(lambda x: [mx.exp(x)], g)
        >>> mx.grad(lambda x: f(x)[0].sum())(mx.zeros(3))
        array([1, 1, 1], dtype=float32)
    """
    inexact = _inexact(source)
    if not inexact:
        return forward  # nothing to differentiate
    # The backward recomputes the region's forward (nothing is saved from the kernel): a region
    # is memory-bound, and fused, the recomputation reads the inputs the VJP needs anyway
    # (softmax: x and the cotangent, against MLX's saved output and the cotangent).
    if backward is None:
        backward = mx.compile(vjp_function(source))  # elementwise chains fuse under MLX's rules

    function = mx.custom_function(forward)

    # MLX hands a lone input over bare (an array, a tangent, an axis), several as a tuple.
    @function.vjp
    def vjp(primals, cotangents, outputs):
        return tuple(backward(_listed(primals), list(cotangents)))

    @function.jvp
    def jvp(primals, tangents):
        return tuple(_output_tangents(source, primals, tangents))

    # No vmap rule: MLX batches every node between a vmapped input and the custom function's
    # outputs, the kernel included, before it would consult one (and MLX has none for a kernel).

    return function


@dataclass(frozen=True)
class SavedStatistics:
    """How a row region's forward saves what its backward needs (softmax's max and sum, a norm's
    mean and reciprocal deviation, cross-entropy's logsumexp) instead of the backward computing
    them again from the row.

    ``forward`` is the region's body with the statistics appended to its outputs (one value per
    row each); ``backward`` maps ``(primals..., forward outputs (those listed in ``outputs``),
    statistics..., cotangents...)`` to the cotangents
    of every input: MLX's VJP of the body with the recomputed statistics replaced by the saved
    ones, so the recomputation (a pass over the row per reduction) is gone.
    """

    forward: Graph
    backward: Graph
    count: int  # statistics appended to the forward's outputs
    outputs: tuple[int, ...] = ()  # the forward outputs the backward reads first, by index


def saved_statistics(body: Graph, rows: int) -> SavedStatistics | None:
    """The statistics a row region's backward reads, if any (None: nothing to save).

    MLX's VJP of the body is traced; its recomputation of the forward is matched against the
    body's own equations (common-subexpression elimination over both), and every per-row value
    of the body that depends on a reduction and that the backward reads becomes an input of the
    backward and an extra output of the forward. Replacing a var by an equal value is exact, so
    the gradients do not change, only where the statistics come from.
    """
    full = max((math.prod(v.shape) for v in body.inputs), default=0)
    if rows <= 0 or rows >= full or not _inexact(body):
        return None
    body = _logsumexp_in_float32(body)
    # per-row values that depend on a reduction over the row
    stats: list[Var] = []
    reduced: set[Var] = set()
    for e in body.eqns:
        family = get_primitive(e.primitive).family
        for v in e.outputs:
            if math.prod(v.shape) == rows and (family is Family.REDUCE or any(i in reduced for i in e.inputs)):
                reduced.add(v)
                stats.append(v)
    primals = [mx.zeros(v.shape, dtypes.to_mx(v.dtype)) for v in body.inputs]
    cotangents = [mx.zeros(v.shape, dtypes.to_mx(v.dtype)) for v in body.outputs]
    try:
        traced = trace_call(_refusable(vjp_function(body)), (primals, cotangents), {}).graph
    except _NoVJP:
        # MLX cannot differentiate the body (a gather at computed indices): nothing to plan. A
        # forward never needs the plan; the region keeps MLX's own VJP, which raises MLX's
        # error when, and only when, a backward is asked for.
        return None
    n = len(body.inputs)
    rename = dict(zip(body.inputs, traced.inputs[:n]))
    body_eqns = tuple(Eqn(e.primitive, tuple(rename.get(v, v) for v in e.inputs), e.outputs, e.params)
                      for e in body.eqns)
    merged = traced.replace(eqns=body_eqns + traced.eqns, constants=body.constants + traced.constants)
    # The merged graph is evaluated, never differentiated: a stop-gradient is the identity there,
    # and keeping it would only keep equal values apart (and the softmax the backward rebuilds).
    merged = cse(substitute(merged, {e.outputs[0]: e.inputs[0] for e in merged.eqns
                                     if e.primitive == "StopGradient"}))
    merged = dce(_softmax_from_logsumexp(merged))
    # The forward's outputs are there for the taking; of the statistics, those a live equation
    # computing a full row reads (softmax's max feeding x - max, a norm's rstd feeding x * rstd).
    outputs = [v for v in body.outputs if v not in body.inputs]
    needed = [v for v in stats if v not in outputs and any(
        v in e.inputs and not all(o in reduced for o in e.outputs) for e in merged.eqns)]
    used_outputs = [v for v in outputs if any(v in e.inputs for e in merged.eqns)]
    if not needed and not used_outputs:
        return None
    given = {v: Var(v.shape, v.dtype) for v in (*outputs, *needed)}
    backward = dce(substitute(merged, given))
    backward = backward.replace(
        inputs=(*backward.inputs[:n], *(given[v] for v in (*outputs, *needed)), *backward.inputs[n:]),
        in_tree=None, out_tree=None)
    forward = body.replace(outputs=(*body.outputs, *needed))
    return SavedStatistics(forward, backward, len(needed), tuple(body.outputs.index(v) for v in outputs))


class _NoVJP(Exception):
    """MLX refused the VJP of a region's body."""


def _refusable(backward: Callable[[list, list], list]) -> Callable[[list, list], list]:
    """``backward`` (a `vjp_function`) raising `_NoVJP` where MLX refuses to differentiate:
    MLX's own error (a ValueError), told apart from any other failure while tracing it."""

    def run(primals: list, cotangents: list) -> list:
        try:
            return backward(primals, cotangents)
        except ValueError as err:
            raise _NoVJP(str(err)) from err

    return run


def _logsumexp_in_float32(body: Graph) -> Graph:
    """A half-precision ``LogSumExp(z)`` written as ``AsType(LogSumExp(AsType(z, float32)))``:
    what a generated row kernel computes anyway (half inputs accumulate in float32, the result
    rounded once), but with the float32 logsumexp a value of the graph, which the forward can
    save and the backward read (`_softmax_from_logsumexp` rebuilds ``softmax(z)`` only from a
    float32 one). Without it a bfloat16 cross-entropy's backward over rows too long for
    registers reduced each row again for the softmax's sum: two more reads of the row."""
    eqns: list[Eqn] = []
    for e in body.eqns:
        z = e.inputs[0] if e.primitive == "LogSumExp" else None
        if z is None or z.dtype not in ("float16", "bfloat16"):
            eqns.append(e)
            continue
        wide = make_eqn("AsType", [z], {"dtype": "float32"})
        lse = make_eqn("LogSumExp", wide.outputs, e.params)
        eqns += [wide, lse, Eqn("AsType", lse.outputs, e.outputs, Params({"dtype": z.dtype}))]
    return body if len(eqns) == len(body.eqns) else body.replace(eqns=tuple(eqns))


def _softmax_from_logsumexp(graph: Graph) -> Graph:
    """``Softmax(z)`` as ``exp(z - LogSumExp(z))`` where the graph computes that LogSumExp (MLX's
    VJP of logsumexp and cross-entropy is written with a softmax of the forward's input): the
    backward then reads the saved logsumexp instead of reducing the row twice more."""
    lse = {e.inputs[0]: e.outputs[0] for e in graph.eqns if e.primitive == "LogSumExp"}
    eqns: list[Eqn] = []
    for e in graph.eqns:
        z = e.inputs[0] if e.primitive == "Softmax" else None
        # float32 only: a logsumexp rounded to half precision moves exp(z - lse) by up to 6%
        # (bf16 rows of 65536 on the H200), where MLX's softmax of z is exact to rounding.
        if (z is None or z not in lse or lse[z].shape != (*z.shape[:-1], 1)
                or lse[z].dtype != "float32"):
            eqns.append(e)
            continue
        wide = make_eqn("Broadcast", [lse[z]], {"shape": z.shape})
        diff = make_eqn("Subtract", [z, wide.outputs[0]])
        eqns += [wide, diff, Eqn("Exp", diff.outputs, e.outputs, Params())]
    return graph if len(eqns) == len(graph.eqns) else graph.replace(eqns=tuple(eqns))


def differentiable_saving(forward: Callable[..., list], source: Graph, plan: SavedStatistics,
                          run_backward: Callable[..., list]) -> Callable[..., list]:
    """`differentiable` for a forward that also returns ``plan``'s statistics after ``source``'s
    outputs (the kernel of ``plan.forward``): the VJP reads them instead of recomputing them.
    The returned function gives ``source``'s outputs only."""
    n_out = len(source.outputs)

    function = mx.custom_function(forward)

    @function.vjp
    def vjp(primals, cotangents, outputs):
        outputs = _listed(outputs)
        given = [outputs[i] for i in plan.outputs] + outputs[n_out:]
        # plan.backward is vjp_function's graph: a cotangent for every input, integer zeros too
        return tuple(run_backward(*_listed(primals), *given, *_listed(cotangents)[:n_out]))

    @function.jvp
    def jvp(primals, tangents):
        # the statistics are internal (the caller never sees them): their tangents are unused
        stats = [mx.zeros(v.shape, dtypes.to_mx(v.dtype)) for v in plan.forward.outputs[n_out:]]
        return (*_output_tangents(source, primals, tangents), *stats)

    return lambda *flat: function(*flat)[:n_out]


def _output_tangents(source: Graph, primals, tangents) -> list:
    """The JVP rule of a region: MLX's JVP of ``source`` (MLX hands a lone primal or tangent
    over bare, and None for an input that carries no tangent)."""
    primals, tangents = _listed(primals), _listed(tangents)
    inexact = _inexact(source)
    tangents = [mx.zeros_like(primals[i]) if tangents[i] is None else tangents[i] for i in inexact]
    return mx.jvp(_of_inexact(source, primals), [primals[i] for i in inexact], tangents)[1]


def _listed(x) -> list:
    return list(x) if isinstance(x, (tuple, list)) else [x]
