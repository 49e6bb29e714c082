"""Runtime layer: MLX's transformations (grad, vjp, jvp) through generated kernels.

A generated kernel has no derivative or batching rule in MLX. `differentiable` wraps one kernel
launch in ``mx.custom_function`` whose rules are MLX's own transformations of the fused region's
*body* (the unfused equations, evaluated with MLX ops): MLX differentiates its own primitives,
and everything outside the regions (matmuls, fast ops) is differentiated by MLX as usual, from
what its forward saved. Built once per cache entry; a call adds a few graph nodes per kernel
(stop-gradients and one CustomTransforms node), no tracing.
May import every layer below the public API.
"""

from __future__ import annotations

import os
from typing import Any, Callable

import mlx.core as mx

from mlxtriton.graph import dtypes
from mlxtriton.graph.core import Graph
from mlxtriton.graph.evaluate import run
from mlxtriton.graph.evaluate_mlx import MLX_RULES

FUSED_BACKWARD_ENV = "MLXTRITON_FUSED_BACKWARD"


def fused_backward() -> bool:
    """Whether ``MLXTRITON_FUSED_BACKWARD=1`` asks for generated backward kernels: each region's
    VJP traced and optimised like any function (softmax's backward is one row kernel, RMS norm's
    a row kernel and a column sum). Off by default until measured on a GPU against mx.compile of
    MLX's VJP (benchmarks/train_step.py has the variant)."""
    return os.environ.get(FUSED_BACKWARD_ENV, "") not in ("", "0")


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
    traced and optimised like any other (a region's backward as generated kernels)."""
    inexact = _inexact(source)

    def backward(primals: list, cotangents: list) -> list:
        grads = mx.vjp(_of_inexact(source, primals), [primals[i] for i in inexact], cotangents)[1]
        out = [mx.zeros_like(p) for p in primals]
        for i, g in zip(inexact, grads):
            out[i] = g
        return out

    return backward


def differentiable(forward: Callable[..., list], source: Graph, backward_chip: Any = None) -> Callable[..., list]:
    """``forward`` (flat arrays -> list of arrays, computing ``source``'s outputs, e.g. one
    generated kernel) as an ``mx.custom_function`` whose VJP and JVP are MLX's of the ``source``
    graph evaluated with MLX ops.

    The forward must not put anything without a JVP rule on the path from its inputs to its
    outputs unless it reads its inputs through `detached`. With ``backward_chip`` the VJP
    function itself is optimised for that chip (`mlxtriton.optimize`: its regions become
    generated kernels, themselves differentiable); without, it runs under ``mx.compile``.

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
    if backward_chip is None:
        backward = mx.compile(vjp_function(source))  # elementwise chains fuse under MLX's rules
    else:
        from mlxtriton.runtime.compiled import PIPELINE, Compiled  # compiled imports this module

        backward = Compiled(vjp_function(source), frozenset(PIPELINE), chip=backward_chip)

    function = mx.custom_function(forward)

    # MLX hands a lone input over bare (an array, a tangent, an axis), several as a tuple.
    @function.vjp
    def vjp(primals, cotangents, outputs):
        return tuple(backward(_listed(primals), list(cotangents)))

    @function.jvp
    def jvp(primals, tangents):
        primals, tangents = _listed(primals), _listed(tangents)
        # MLX passes None for an input that carries no tangent.
        tangents = [mx.zeros_like(primals[i]) if tangents[i] is None else tangents[i] for i in inexact]
        return tuple(mx.jvp(_of_inexact(source, primals), [primals[i] for i in inexact], tangents)[1])

    # No vmap rule: MLX batches every node between a vmapped input and the custom function's
    # outputs, the kernel included, before it would consult one (and MLX has none for a kernel).

    return function


def _listed(x) -> list:
    return list(x) if isinstance(x, (tuple, list)) else [x]
