"""Graph layer: pytrees of arrays (nested tuples, lists, dicts) flattened to leaves and a hashable
definition. Non-array leaves (Python scalars, strings, None, declared-static objects) are kept in the
definition, so they are part of a graph's identity and of every cache key; they compare by type and
value (``2``, ``2.0`` and ``True`` are three keys, as are ``0.0`` and ``-0.0``). May import mlx only.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import cached_property
from typing import Any, Callable

import mlx.core as mx


class PyTreeError(TypeError):
    """Arguments whose structure or static values do not match what a graph was traced with."""


@dataclass(frozen=True)
class Leaf:
    """An array leaf."""

    def __str__(self) -> str:
        return "*"


def static_key(value: Any) -> Any:
    """What a static value is compared and hashed by: its type and value, floats by their bits
    (``-0.0`` is not ``0.0``; a NaN equals itself), containers element by element.

    Raises:
        TypeError: the value (or an element) is not hashable.
    """
    kind = type(value)
    if kind is float:
        return (kind, value.hex())
    if kind is frozenset or isinstance(value, tuple):
        items = sorted(value, key=repr) if kind is frozenset else value
        return (kind, tuple(static_key(v) for v in items))
    hash(value)
    return (kind, value)


def describe(value: Any) -> str:
    """A one-line description of a value for an error message (never a dump of its contents)."""
    kind = type(value)
    name = kind.__name__ if kind.__module__ == "builtins" else f"{kind.__module__}.{kind.__qualname__}"
    shape = getattr(value, "shape", None)
    if isinstance(shape, tuple):
        return f"a {name} of shape {shape}"
    if isinstance(value, (list, dict, set, tuple)):
        return f"a {name} of {len(value)} items"
    text = repr(value)
    return f"a {name} ({text if len(text) <= 40 else text[:37] + '...'})"


@dataclass(frozen=True, eq=False)
class Static:
    """A non-array leaf, compared by type and value (`static_key`)."""

    value: Any

    @cached_property
    def key(self) -> Any:
        return static_key(self.value)

    def __eq__(self, other) -> bool:
        return isinstance(other, Static) and self.key == other.key

    def __hash__(self) -> int:
        return hash(self.key)

    def __str__(self) -> str:
        return repr(self.value)


@dataclass(frozen=True)
class ObjectRef:
    """An argument that is an object holding state (a cache, a module): flattened apart from the
    arguments (`mlxtriton.state`), referred to here by its position among the call's objects."""

    index: int

    def __str__(self) -> str:
        return f"<object {self.index}>"


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


TreeDef = Leaf | Static | Node | ObjectRef

_SCALARS = (bool, int, float, complex, str, bytes, type(None))


def flatten(
    tree: Any, is_static: Callable[[Any], bool] | None = None, path: str = "",
    on_object: Callable[[Any, str], TreeDef] | None = None,
) -> tuple[list[mx.array], TreeDef]:
    """Flatten a pytree into its array leaves and a hashable definition.

    Python scalars, strings and None become static leaves; so does anything wrapped in `Static`
    (an argument declared static) or accepted by ``is_static``. Static leaves must be hashable.
    NumPy arrays become array leaves, converted as MLX converts them. Any other object goes to
    ``on_object(obj, path)`` where given, else is a `PyTreeError` that says which path holds it.

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
                raise PyTreeError(f"static {path or 'argument'} is not hashable: it is "
                                  f"{describe(x.value)}") from None
            return x
        if isinstance(x, (tuple, list)):
            kind = type(x) if isinstance(x, tuple) and hasattr(x, "_fields") else (
                tuple if isinstance(x, tuple) else list
            )
            return Node(kind, None, tuple(go(c, f"{path}[{i}]") for i, c in enumerate(x)))
        if isinstance(x, dict) and not (on_object is not None and _is_module(x)):
            keys = tuple(x)
            return Node(dict, keys, tuple(go(x[k], f"{path}[{k!r}]") for k in keys))
        if isinstance(x, _SCALARS) or (is_static is not None and is_static(x)):
            s = Static(x)
            try:
                hash(s)
            except TypeError:
                raise PyTreeError(f"static value {path or 'argument'} is not hashable: it is "
                                  f"{describe(x)}") from None
            return s
        if type(x).__module__ == "numpy" and hasattr(x, "__array__"):
            leaves.append(mx.array(x))  # as an MLX op given a NumPy array converts it
            return Leaf()
        if on_object is not None:
            return on_object(x, path)
        raise PyTreeError(
            f"{path or 'the argument'} has type {type(x).__name__}: it is neither an mx.array, a container of "
            "arrays nor a Python scalar; declare it static (static_argnums/static_argnames) "
            "to make it part of the trace's cache key"
        )

    return leaves, go(tree, path)


def _is_module(x: dict) -> bool:
    """Whether a dict is an ``mlx.nn.Module`` (a dict of its arrays and submodules, but an object
    the function calls: an argument object, not a container to rebuild as a plain dict)."""
    if type(x) is dict:
        return False
    import mlx.nn as nn

    return isinstance(x, nn.Module)


def unflatten(tree: TreeDef, leaves: list, objects: list | None = None) -> Any:
    """Rebuild a pytree from its definition and leaves (the inverse of `flatten`); an `ObjectRef`
    is ``objects[index]``."""
    it = iter(leaves)

    def go(t):
        if isinstance(t, Leaf):
            return next(it)
        if isinstance(t, Static):
            return t.value
        if isinstance(t, ObjectRef):
            if objects is None:
                raise PyTreeError(f"the tree holds {t} but no objects were given")
            return objects[t.index]
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
    if isinstance(tree, (Static, ObjectRef)):
        return 0
    return sum(num_leaves(c) for c in tree.children)
