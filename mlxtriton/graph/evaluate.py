"""Graph layer: run a graph, with MLX ops (bit-identical to the traced function on CPU) or with
JAX (the oracle), and abstract evaluation (shapes and dtypes through MLX's lazy graph, no compute).
May import mlx, numpy, the graph layer, and jax lazily (only for ``backend="jax"``).
"""

from __future__ import annotations

from typing import Any, Callable, Sequence

import mlx.core as mx
import numpy as np

from mlxtriton.graph import dtypes, pytree
from mlxtriton.graph.core import Eqn, Graph, Var
from mlxtriton.graph.primitives import UnsupportedPrimitiveError


class EvaluationError(ValueError):
    """Arguments that do not fit the graph (count, shape, dtype, structure)."""


def _mlx_rules() -> dict[str, Callable]:
    from mlxtriton.graph.evaluate_mlx import MLX_RULES

    return MLX_RULES


# The packages the oracle imports; missing, they are named with the extra that brings them.
_ORACLE_PACKAGES = ("jax", "jaxlib", "ml_dtypes")
ORACLE_EXTRA = "pip install 'mlxtriton[oracle]'"


def _jax_backend() -> tuple[dict[str, Callable], Callable, Callable]:
    """The oracle's rules and its array conversions; a clear error when JAX is not installed."""
    try:
        from mlxtriton.graph.evaluate_jax import from_jax, jax_rules, to_jax

        return jax_rules(), to_jax, from_jax
    except ModuleNotFoundError as e:
        if (e.name or "").partition(".")[0] not in _ORACLE_PACKAGES:
            raise
        raise ModuleNotFoundError(
            f"backend='jax' (the oracle) needs JAX, which is not installed: {ORACLE_EXTRA}",
            name=e.name) from None


def _jax_rules() -> dict[str, Callable]:
    return _jax_backend()[0]


def _is_foreign_array(x) -> bool:
    """A NumPy or JAX array (anything with a shape, a dtype and ``__array__``), not an mx.array."""
    return (not isinstance(x, mx.array) and hasattr(x, "__array__") and hasattr(x, "shape")
            and hasattr(x, "dtype"))


def _with_stand_ins(tree, originals: dict[int, Any]):
    """``tree`` with each NumPy / JAX array replaced by a lazy mx.array (never evaluated),
    recorded in ``originals`` by the stand-in's id, so that the pytree code, which knows MLX
    arrays only, sees an array leaf where the caller passed one. The originals are what the
    arguments' shapes and dtypes are then checked on."""
    if _is_foreign_array(tree):
        stand_in = mx.zeros(tuple(tree.shape))
        originals[id(stand_in)] = tree
        return stand_in
    if isinstance(tree, tuple) and hasattr(tree, "_fields"):
        return type(tree)(*(_with_stand_ins(c, originals) for c in tree))
    if isinstance(tree, (tuple, list)):
        return type(tree)(_with_stand_ins(c, originals) for c in tree)
    if isinstance(tree, dict):
        return {k: _with_stand_ins(v, originals) for k, v in tree.items()}
    return tree


def flatten_arguments(graph: Graph, args: tuple, kwargs: dict) -> list:
    """The flat list of arrays a graph's inputs bind to, checked against its in_tree. NumPy and
    JAX arrays count as array leaves (they are returned as given)."""
    if graph.in_tree is None:
        if kwargs:
            raise EvaluationError("a flat graph takes positional arrays only, got keyword arguments")
        return list(args)
    originals: dict[int, Any] = {}
    args, kwargs = _with_stand_ins((args, kwargs), originals)
    # Static arguments are compared by value, whether declared static or Python scalars.
    leaves, tree = pytree.flatten((args, kwargs), is_static=lambda _: True)
    if tree != graph.in_tree:
        raise pytree.PyTreeError(
            f"arguments do not match the traced structure: expected {graph.in_tree}, got {tree}"
        )
    return [originals.get(id(leaf), leaf) for leaf in leaves]


def _to_mlx(a) -> mx.array:
    """An MLX array equal to an MLX, NumPy or JAX array, bit for bit (bfloat16 through its bits)."""
    if isinstance(a, mx.array):
        return a
    host = np.asarray(a)
    if _dtype_name(host.dtype) == "bfloat16":
        return mx.array(host.view(np.uint16)).view(mx.bfloat16)
    return mx.array(host)


def check_arguments(graph: Graph, flat: Sequence) -> None:
    if len(flat) != len(graph.inputs):
        raise EvaluationError(f"the graph takes {len(graph.inputs)} arrays, got {len(flat)}")
    for i, (v, a) in enumerate(zip(graph.inputs, flat)):
        if not hasattr(a, "shape") or not hasattr(a, "dtype"):
            raise EvaluationError(f"input {i} is a {type(a).__name__}, not an array")
        shape = tuple(a.shape)
        dtype = a.dtype if isinstance(a.dtype, str) else _dtype_name(a.dtype)
        if shape != v.shape or dtype != v.dtype:
            raise EvaluationError(
                f"input {i} was traced as {v.type_str()} but got "
                f"{dtypes.short(dtype) if dtype in dtypes.DTYPES else dtype}[{','.join(map(str, shape))}]"
            )


def _dtype_name(dtype) -> str:
    if isinstance(dtype, mx.Dtype):
        return dtypes.from_mx(dtype)
    return str(dtype)  # NumPy / JAX dtypes print their names


def run(
    graph: Graph,
    flat_args: Sequence,
    rules: dict[str, Callable],
    constant: Callable[[mx.array], Any] = lambda a: a,
) -> list:
    """Evaluate ``graph`` on flat inputs with a table of per-primitive rules."""
    env: dict[Var, Any] = {}
    for v, a in zip(graph.inputs, flat_args):
        env[v] = a
    for v, a in graph.constants:
        env[v] = constant(a)
    for e in graph.eqns:
        rule = rules.get(e.primitive)
        if rule is None:
            raise UnsupportedPrimitiveError(f"primitive {e.primitive!r} has no evaluation rule here")
        result = rule(*(env[v] for v in e.inputs), **e.params)
        results = result if isinstance(result, (tuple, list)) else (result,)
        if len(results) != len(e.outputs):
            raise EvaluationError(
                f"{e.primitive} produced {len(results)} outputs, the graph declares {len(e.outputs)}"
            )
        for v, r in zip(e.outputs, results):
            env[v] = r
    return [env[v] for v in graph.outputs]


def evaluate(graph: Graph, *args, backend: str = "mlx", **kwargs):
    """Run a graph.

    Args:
        graph: a graph from `mlxtriton.trace` (or built by hand: then flat positional arrays).
        *args, **kwargs: arguments with the structure, shapes and dtypes the graph was traced with;
            arrays may be MLX, NumPy or JAX arrays.
        backend: ``"mlx"`` runs MLX ops, bit-identical on CPU to calling the traced function;
            ``"jax"`` runs jax.numpy / jax.lax with MLX's semantics (the oracle; results are
            NumPy arrays; needs the ``oracle`` extra).

    Returns:
        The outputs in the traced function's structure. State the traced call read (module
        arrays, the random key) is bound to its values at trace time; state it wrote is not
        returned (`Graph.state_outputs`).

    Raises:
        PyTreeError: the arguments' structure or static values differ from the trace.
        EvaluationError: an argument's shape or dtype differs from the trace.
        UnsupportedPrimitiveError: a primitive has no rule for ``backend``.
        ModuleNotFoundError: ``backend="jax"`` without JAX installed (the message names the
            extra to install).

    Example:
        >>> f = lambda x: mx.softmax(x, axis=-1)
        >>> x = mx.ones((2, 3))
        >>> g = mlxtriton.trace(f)(x)
        >>> mx.array_equal(mlxtriton.evaluate(g, x), f(x)).item()
        True
    """
    flat = flatten_arguments(graph, args, kwargs)
    if graph.state_inputs:  # bound to their values when traced (the call's state is not changed)
        if len(graph.state_values) != len(graph.state_inputs):
            raise EvaluationError(
                "the graph reads state (" + ", ".join(graph.state_inputs) + ") whose values it "
                "does not hold: run its flat form, mlxtriton.graph.evaluate.run(graph, "
                "arguments + state, rules)")
        flat = [*flat, *graph.state_values]
    check_arguments(graph, flat)
    if backend == "mlx":
        outs = run(graph, [_to_mlx(a) for a in flat], _mlx_rules())
    elif backend == "jax":
        rules, to_jax, from_jax = _jax_backend()
        outs = [from_jax(o) for o in run(graph, [to_jax(a) for a in flat], rules, to_jax)]
    else:
        raise ValueError(f"unknown backend {backend!r}; use 'mlx' or 'jax'")
    outs = outs[:len(outs) - len(graph.state_outputs)]  # the results, not the state written
    if graph.out_tree is None:
        return outs[0] if len(outs) == 1 else tuple(outs)
    return pytree.unflatten(graph.out_tree, outs)


def abstract_eval(primitive: str, inputs: Sequence[tuple[tuple[int, ...], str]], params: dict) -> list[tuple[tuple[int, ...], str]]:
    """Shapes and dtypes of a primitive's outputs, from MLX's own shape rules (no compute: MLX
    builds arrays lazily and knows their shape and dtype before evaluating them)."""
    rule = _mlx_rules().get(primitive)
    if rule is None:
        raise UnsupportedPrimitiveError(f"primitive {primitive!r} has no MLX rule for shape inference")
    placeholders = [mx.zeros(shape, dtypes.to_mx(dtype)) for shape, dtype in inputs]
    result = rule(*placeholders, **params)
    results = result if isinstance(result, (tuple, list)) else (result,)
    return [(tuple(r.shape), dtypes.from_mx(r.dtype)) for r in results]
