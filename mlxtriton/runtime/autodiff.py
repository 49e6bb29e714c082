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

from typing import Callable

import mlx.core as mx

from mlxtriton.graph import dtypes
from mlxtriton.graph.core import Graph
from mlxtriton.graph.evaluate import run
from mlxtriton.graph.evaluate_mlx import MLX_RULES


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


def differentiable(forward: Callable[..., list], source: Graph) -> Callable[..., list]:
    """``forward`` (flat arrays -> list of arrays, computing ``source``'s outputs, e.g. one
    generated kernel) as an ``mx.custom_function`` whose VJP and JVP are MLX's of the ``source``
    graph evaluated with MLX ops.

    The forward must not put anything without a JVP rule on the path from its inputs to its
    outputs unless it reads its inputs through `detached`.

    Example:
        >>> g = mlxtriton.trace(lambda x: mx.exp(x))(mx.ones(3))
        >>> f = differentiable(lambda x: [mx.exp(x)], g)
        >>> mx.grad(lambda x: f(x)[0].sum())(mx.zeros(3))
        array([1, 1, 1], dtype=float32)
    """
    # Only inexact inputs are differentiated: integer inputs (labels, indices) get integer zeros,
    # as mx.grad gives them, and never reach a rule that refuses them (Gather's indices).
    inexact = tuple(i for i, v in enumerate(source.inputs) if v.dtype in dtypes.INEXACT)
    if not inexact:
        return forward  # nothing to differentiate
    unfused = unfused_function(source)

    def restricted(flat: list) -> Callable[..., list]:
        def of_inexact(*values):
            args = list(flat)
            for i, a in zip(inexact, values):
                args[i] = a
            return unfused(*args)

        return of_inexact

    def backward(primals: list, cotangents: list) -> list:
        grads = mx.vjp(restricted(primals), [primals[i] for i in inexact], cotangents)[1]
        out = [mx.zeros_like(p) for p in primals]
        for i, g in zip(inexact, grads):
            out[i] = g
        return out

    # The backward recomputes the forward with MLX ops (nothing is saved from the kernels):
    # compiled, so its elementwise chains fuse under MLX's own rules.
    backward = mx.compile(backward)

    function = mx.custom_function(forward)

    # MLX hands a lone input over bare (an array, a tangent, an axis), several as a tuple.
    @function.vjp
    def vjp(primals, cotangents, outputs):
        # Integer inputs get integer zeros, as mx.vjp of the original gives them.
        return tuple(backward(_listed(primals), list(cotangents)))

    @function.jvp
    def jvp(primals, tangents):
        primals, tangents = _listed(primals), _listed(tangents)
        # MLX passes None for an input that carries no tangent.
        tangents = [mx.zeros_like(primals[i]) if tangents[i] is None else tangents[i] for i in inexact]
        return tuple(mx.jvp(restricted(primals), [primals[i] for i in inexact], tangents)[1])

    # No vmap rule: MLX batches every node between a vmapped input and the custom function's
    # outputs, the kernel included, before it would consult one (and MLX has none for a kernel).

    return function


def _listed(x) -> list:
    return list(x) if isinstance(x, (tuple, list)) else [x]
