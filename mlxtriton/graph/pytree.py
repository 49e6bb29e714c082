"""Graph layer: pytrees of arrays (nested tuples, lists, dicts) flattened to leaves and a hashable
definition. Non-array leaves (Python scalars, strings, None, declared-static objects) are kept in the
definition, so they are part of a graph's identity and of every cache key. May import mlx only.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable

import mlx.core as mx


class PyTreeError(TypeError):
    """Arguments whose structure or static values do not match what a graph was traced with."""


@dataclass(frozen=True)
class Leaf:
    """An array leaf."""

    def __str__(self) -> str:
        return "*"


@dataclass(frozen=True)
class Static:
    """A non-array leaf, compared by value."""

    value: Any

    def __str__(self) -> str:
        return repr(self.value)


@dataclass(frozen=True)
class Node:
    """A container: kind is tuple, list, dict or a namedtuple type; keys for dicts."""

    kind: Any
    keys: tuple | None
    children: tuple

    def __str__(self) -> str:
        if self.kind is dict:
            return "{" + ", ".join(f"{k!r}: {c}" for k, c in zip(self.keys, self.children)) + "}"
        inner = ", ".join(map(str, self.children))
        if self.kind is list:
            return f"[{inner}]"
        if self.kind is tuple:
            return f"({inner}{',' if len(self.children) == 1 else ''})"
        return f"{self.kind.__name__}({inner})"


TreeDef = Leaf | Static | Node

_SCALARS = (bool, int, float, complex, str, bytes, type(None))


def flatten(
    tree: Any, is_static: Callable[[Any], bool] | None = None, path: str = ""
) -> tuple[list[mx.array], TreeDef]:
    """Flatten a pytree into its array leaves and a hashable definition.

    Python scalars, strings and None become static leaves; so does anything wrapped in `Static`
    (an argument declared static) or accepted by ``is_static``. Static leaves must be hashable. Any
    other object is a `PyTreeError` that says which path holds it.

    Example:
        >>> leaves, tree = flatten({"w": mx.ones(2), "n": 3})
        >>> len(leaves), str(tree)
        (1, "{'n': 3, 'w': *}")
    """
    leaves: list[mx.array] = []

    def go(x, path):
        if isinstance(x, mx.array):
            leaves.append(x)
            return Leaf()
        if isinstance(x, Static):  # declared static by the caller
            try:
                hash(x)
            except TypeError:
                raise PyTreeError(f"static {path} is not hashable: {x.value!r}") from None
            return x
        if isinstance(x, (tuple, list)):
            kind = type(x) if isinstance(x, tuple) and hasattr(x, "_fields") else (
                tuple if isinstance(x, tuple) else list
            )
            return Node(kind, None, tuple(go(c, f"{path}[{i}]") for i, c in enumerate(x)))
        if isinstance(x, dict):
            keys = tuple(x)
            return Node(dict, keys, tuple(go(x[k], f"{path}[{k!r}]") for k in keys))
        if isinstance(x, _SCALARS) or (is_static is not None and is_static(x)):
            try:
                hash(x)
            except TypeError:
                raise PyTreeError(f"static value {path} is not hashable: {x!r}") from None
            return Static(x)
        hint = " (convert it with mx.array(...))" if type(x).__module__ == "numpy" else ""
        raise PyTreeError(
            f"{path or 'the argument'} has type {type(x).__name__}: it is neither an mx.array, a container of "
            f"arrays nor a Python scalar{hint}; declare it static (static_argnums/static_argnames) "
            "to make it part of the trace's cache key"
        )

    return leaves, go(tree, path)


def unflatten(tree: TreeDef, leaves: list) -> Any:
    """Rebuild a pytree from its definition and leaves (the inverse of `flatten`)."""
    it = iter(leaves)

    def go(t):
        if isinstance(t, Leaf):
            return next(it)
        if isinstance(t, Static):
            return t.value
        children = [go(c) for c in t.children]
        if t.kind is dict:
            return dict(zip(t.keys, children))
        if t.kind is list:
            return children
        if t.kind is tuple:
            return tuple(children)
        return t.kind(*children)

    out = go(tree)
    if next(it, None) is not None:
        raise PyTreeError("more leaves than the tree definition holds")
    return out


def num_leaves(tree: TreeDef) -> int:
    if isinstance(tree, Leaf):
        return 1
    if isinstance(tree, Static):
        return 0
    return sum(num_leaves(c) for c in tree.children)
