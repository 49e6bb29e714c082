"""Tracing layer: the implicit state of a call (mx.compile's ``inputs=``/``outputs=``, found for you).

A traced call may read arrays that are not its arguments and rebind them: a module's parameters
and buffers (batch-norm statistics), the attributes of objects passed in (mlx-lm's KV caches), and
MLX's global random key. This module finds those *state objects*, flattens them into array leaves
and a hashable layout (part of the cache key: structure, Python scalars, training modes), swaps a
trace's placeholders in and restores the caller's objects afterwards, and turns what a traced call
changed into a `WritePlan` that every later call applies to the live objects.
May import mlx and mlxtriton.graph only.
"""

from __future__ import annotations

import inspect
import types
from dataclasses import dataclass
from typing import Any, NamedTuple, Sequence

import mlx.core as mx

from mlxtriton.graph import pytree

__all__ = ["StateError", "COUNTERS", "PREPARE", "RANDOM", "Snapshot", "WritePlan", "snapshot",
           "plan_writes", "function_roots", "random_key", "set_random_key"]

# An object's class may name Python int attributes that are not part of the cache key: the traced
# call advances them, and every later call served by the same trace advances them by the same
# amount. The object promises its traced behaviour does not depend on their values
# (mlxtriton.lm's caches count tokens this way).
COUNTERS = "__mlxtriton_counters__"
# A method the runtime calls on every state object before every call, outside any trace (a cache
# grows its buffer there, so that no traced call needs a decision that depends on a counter). It
# may be called more than once before a call: it must do nothing when there is nothing to do.
PREPARE = "__mlxtriton_prepare__"

_SCALARS = (bool, int, float, complex, str, bytes, type(None))
# Markers in a layout: an array slot (its shape and dtype are keyed with the leaves) and a counter
# (its value is not keyed).
ARRAY = "<array>"
COUNTER = "<counter>"


class StateError(TypeError):
    """State the runtime cannot carry from one call to the next (the message says which and why)."""


# ---- the random key -------------------------------------------------------------------------
class _RandomKey:
    """The calling thread's global random key (``mx.random.state``) as a state root."""

    def __repr__(self) -> str:
        return "mx.random.state"


RANDOM = _RandomKey()


def _key_list() -> list:
    # mx.random.state is a sentinel whose iterator walks the calling thread's key list; a list
    # iterator's __reduce__ hands back that list: the one place MLX keeps the key.
    holder = iter(mx.random.state).__reduce__()[1][0]
    if not isinstance(holder, list) or len(holder) != 1:
        raise StateError("cannot reach MLX's random key (mx.random.state is not a one-key list)")
    return holder


def random_key() -> mx.array:
    return mx.random.state[0]


def set_random_key(key: mx.array) -> None:
    _key_list()[0] = key


# ---- layouts ----------------------------------------------------------------------------------
class Container(NamedTuple):
    """A walked container's layout: kind is "module", "object", "list", "tuple", "dict" or
    "random"; ``keys`` its attribute names, dict keys or positions; ``children`` their layouts
    (`ARRAY`, `COUNTER`, a `pytree.Static`, ("opaque", type), ("alias", index) or a Container);
    ``index`` its position in the walk; ``training`` a module's mode; ``frozen`` the names of
    its parameters ``freeze()`` took out of its trainable ones (what ``nn.value_and_grad``
    differentiates: part of the key, as the mode is)."""

    kind: str
    cls: type
    keys: tuple
    children: tuple
    index: int
    training: bool | None = None
    frozen: frozenset | None = None


_MODULE: list = []


def _module_type():
    """mlx.nn.Module, imported on first use (importing mlx.nn costs what the tracer never needs
    for functions of arrays)."""
    if not _MODULE:
        import mlx.nn as nn

        _MODULE.append(nn.Module)
    return _MODULE[0]


def _is_plain_object(obj: Any) -> bool:
    return (isinstance(getattr(obj, "__dict__", None), dict)
            and not isinstance(obj, (type, types.ModuleType, types.FunctionType, types.MethodType,
                                     types.BuiltinFunctionType, types.CodeType)))


def is_state_object(obj: Any) -> bool:
    """Whether an argument can be passed as a state object: a module, or an object that is not
    callable and keeps its data in attributes (mlx-lm's caches, a user's class). A callable
    object's behaviour lives in code the cache key cannot see: it must be declared static."""
    return _is_plain_object(obj) and (isinstance(obj, _module_type()) or not callable(obj))


@dataclass
class Snapshot:
    """A call's state objects flattened: ``layout`` (hashable; with the leaves' shapes and dtypes,
    the state's part of the cache key), the array ``leaves`` in walk order with their ``slots``
    ((container index, key)), the walked ``containers`` (where later writes go) and the declared
    counters' values."""

    roots: tuple[Any, ...]
    names: tuple[str, ...]
    layout: tuple[Container, ...]
    leaves: list[mx.array]
    slots: list[tuple[int, Any]]
    containers: list[Any]
    counters: dict[tuple[int, Any], int]
    guards: tuple = ()  # what `refresh` checks: (slot checks, sizes, modes, hooks)
    _avals: tuple | None = None
    _aliases: tuple | None = None
    _layout_key: Any = None
    _alias_check: tuple | None = None  # (aliases, leaves that are an earlier one, distinct objects)

    @property
    def layout_key(self) -> Any:
        """``layout`` as a cache key whose hash is computed once per layout (refreshed snapshots
        share it)."""
        key = self._layout_key
        if key is None:
            key = self._layout_key = _Hashed(self.layout)
        return key

    @property
    def avals(self) -> tuple:
        """Each leaf's (shape, dtype): part of the cache key."""
        avals = self._avals
        if avals is None:
            avals = self._avals = tuple([(a.shape, a.dtype) for a in self.leaves])
        return avals

    @property
    def aliases(self) -> tuple:
        """Empty when every leaf is its own array object; else, for each leaf, the first leaf
        that is the same object (several caches holding one offset array). Part of the cache key:
        a trace reads such leaves as one input, so that equal work on them is done once."""
        aliases = self._aliases
        if aliases is None:
            ids = [id(a) for a in self.leaves]
            if len(set(ids)) == len(ids):
                aliases = ()
            else:
                first: dict[int, int] = {}
                aliases = tuple([first.setdefault(i, n) for n, i in enumerate(ids)])
            self._aliases = aliases
        return aliases

    def paths(self) -> dict[int, str]:
        """A readable path for each walked container (messages, `explain`, cache_info)."""
        paths: dict[int, str] = {}

        def go(d, path):
            if isinstance(d, Container):
                paths.setdefault(d.index, path)
                for k, c in zip(d.keys, d.children):
                    go(c, path + _step(d.kind, k))

        for d, name in zip(self.layout, self.names):
            go(d, name)
        return paths

    def leaf_paths(self) -> list[str]:
        paths = self.paths()
        kinds = _kinds(self.layout)
        return [paths[c] + _step(kinds[c], k) for c, k in self.slots]

    # -- a trace's placeholders in, the caller's values back --
    def save(self) -> list:
        """A shallow copy of every walked container (what `restore` puts back)."""
        saved = []
        for obj in self.containers:
            if obj is RANDOM:
                saved.append(random_key())
            elif isinstance(obj, tuple):
                saved.append(None)
            else:
                items = obj.copy() if isinstance(obj, list) else dict(obj) if isinstance(obj, dict) else None
                saved.append((items, dict(vars(obj)) if hasattr(obj, "__dict__") else None))
        return saved

    def restore(self, saved: list) -> None:
        for obj, s in zip(self.containers, saved):
            if obj is RANDOM:
                set_random_key(s)
            elif s is not None:
                items, attrs = s
                if isinstance(obj, list):
                    obj[:] = items
                elif isinstance(obj, dict):
                    dict.clear(obj)
                    dict.update(obj, items)
                if attrs is not None:
                    d = vars(obj)
                    d.clear()
                    d.update(attrs)

    def refresh(self, roots: Sequence[Any]) -> "Snapshot | None":
        """This snapshot's layout read again from the live objects, without walking them: the
        prepare hooks are called, then every slot the walk read is read and checked (sizes,
        modes, Python values, object identities, array slots still arrays). None where anything
        differs: the caller walks again. What a stateful call pays on every call once its
        state's structure has settled (a tenth of a walk: one check per slot, no layout built).
        """
        if len(roots) != len(self.roots) or any(a is not b for a, b in zip(roots, self.roots)):
            return None
        checks, sizes, modes, hooks, tuples = self.guards
        for obj in hooks:
            getattr(type(obj), PREPARE)(obj)
        for target, n in sizes:
            if len(target) != n:
                return None
        for module, training, frozen in modes:
            d = module.__dict__
            if d.get("_training") is not training or (d.get("_no_grad") or None) != frozen:
                return None
        leaves: list[mx.array] = []
        counters = {}
        containers = list(self.containers) if tuples else self.containers
        live: Any = None  # the tuple read through its parent last
        try:
            for target, k, kind, expected in checks:
                if kind == _KEY:
                    leaves.append(random_key())
                    continue
                v = live[k] if target is None else target[k]
                if kind == _LEAF:
                    if type(v) is not _ARRAY_TYPE:
                        return None
                    leaves.append(v)
                elif kind == _TUPLE:
                    index, cls, n = expected
                    if type(v) is not cls or len(v) != n:
                        return None
                    live = containers[index] = v
                elif kind == _SAME:
                    if v is not expected:
                        return None
                elif kind == _EQUAL:
                    if type(v) is not expected[0] or v != expected[1]:
                        return None
                elif kind == _COUNT:
                    if type(v) is not int:
                        return None
                    counters[(expected, k)] = v
                elif type(v) is not expected:
                    return None
        except (KeyError, IndexError, TypeError):
            return None
        # An array object's shape and dtype never change: read them only for new leaves.
        avals = tuple([p if a is b else (a.shape, a.dtype)
                       for a, b, p in zip(leaves, self.leaves, self.avals)])
        # The same objects shared as last time (several caches holding one offset array): the
        # same aliases, checked without building them again.
        aliases, shared, distinct = self._alias_check or self._new_alias_check()
        same = (len(set(map(id, leaves))) == distinct
                and all(leaves[n] is leaves[f] for n, f in shared))
        return Snapshot(self.roots, self.names, self.layout, leaves, self.slots, containers,
                        counters, self.guards, avals, aliases if same else None, self.layout_key,
                        (aliases, shared, distinct) if same else None)

    def _new_alias_check(self) -> tuple:
        """(aliases, the leaves that are an earlier one, the number of distinct objects)."""
        aliases = self.aliases
        return (aliases, tuple((n, f) for n, f in enumerate(aliases) if f != n),
                len(set(aliases)) if aliases else len(self.leaves))

    def settled(self, same_slot: Sequence[int | None], written: Sequence[mx.array]) -> "Snapshot":
        """This snapshot as a call's writes left the state (``written[i]`` went into the slot of
        leaf ``same_slot[i]``, where there is one): what the next call refreshes. Kept between
        calls, it then holds the arrays the state holds, and none the call replaced (an
        optimizer's old moments, a cache's old buffer), and the next refresh finds every leaf
        the same object. Its aliases are checked again by that refresh."""
        leaves, avals = list(self.leaves), list(self.avals)
        for i, a in zip(same_slot, written):
            if i is not None:
                leaves[i] = a
                avals[i] = (a.shape, a.dtype)
        containers = self.containers
        tuples = self.guards[4] if self.guards else ()
        if tuples:  # the tuples the writes stored, not the ones they replaced
            containers = list(containers)
            for index, parent, key in tuples:
                try:
                    containers[index] = parent[key]
                except (KeyError, IndexError):  # deleted: the next call walks again
                    containers[index] = None
        return Snapshot(self.roots, self.names, self.layout, leaves, self.slots, containers,
                        self.counters, self.guards, tuple(avals), None, self.layout_key,
                        self._alias_check or self._new_alias_check())

    def _places(self) -> dict[int, list[tuple[int, Any]]]:
        """Where each walked container sits: (its parent's walk index, its key there), for the
        slot the walk met it in and every slot holding it again (an alias)."""
        places: dict[int, list[tuple[int, Any]]] = {}

        def go(d):
            for k, c in zip(d.keys, d.children):
                if isinstance(c, Container):
                    places.setdefault(c.index, []).append((d.index, k))
                    go(c)
                elif isinstance(c, tuple) and c[:1] == ("alias",):
                    places.setdefault(c[1], []).append((d.index, k))

        for d in self.layout:
            go(d)
        return places

    def substitute(self, values: Sequence[mx.array]) -> None:
        """Put ``values`` (a trace's placeholders) where the leaves are; a leaf that is another
        leaf's object (`aliases`) gets that leaf's placeholder."""
        containers = self.containers
        if self.aliases:
            values = [values[i] for i in self.aliases]
        refilled: dict[int, list] = {}  # tuples (which cannot be written into), refilled
        for (c, k), v in zip(self.slots, values):
            obj = containers[c]
            if isinstance(obj, tuple):
                refilled.setdefault(c, list(obj))[k] = v
            else:
                _put(obj, k, v)
        # each refilled tuple is rebuilt in every slot holding it, innermost first (a parent
        # comes before its children in the walk, and may be a tuple rebuilt in turn); `restore`
        # puts the parents' own items back, the original tuple with them
        places = self._places() if refilled else {}
        while refilled:
            c = max(refilled)
            items = refilled.pop(c)
            cls = type(containers[c])
            rebuilt = cls(*items) if hasattr(cls, "_fields") else tuple(items)
            for parent, key in places[c]:
                if isinstance(containers[parent], tuple):
                    refilled.setdefault(parent, list(containers[parent]))[key] = rebuilt
                else:
                    _put(containers[parent], key, rebuilt)


class _Hashed:
    """A hashable value whose hash is computed once (a state layout, hashed by every call)."""

    __slots__ = ("value", "_hash")

    def __init__(self, value: Any):
        self.value, self._hash = value, hash(value)

    def __hash__(self) -> int:
        return self._hash

    def __eq__(self, other) -> bool:
        return isinstance(other, _Hashed) and (other.value is self.value or (
            other._hash == self._hash and other.value == self.value))

    def __repr__(self) -> str:
        return repr(self.value)


def _kinds(layout) -> dict[int, str]:
    kinds: dict[int, str] = {}

    def go(d):
        if isinstance(d, Container):
            kinds[d.index] = d.kind
            for c in d.children:
                go(c)

    for d in layout:
        go(d)
    return kinds


def _step(kind: str, key: Any) -> str:
    if kind == "random":
        return ""
    return f".{key}" if kind in ("module", "object") else f"[{key!r}]"


def _put(obj: Any, key: Any, value: Any) -> None:
    if obj is RANDOM:
        set_random_key(value)
    elif isinstance(obj, (list, dict)):  # a module is a dict: its arrays and submodules are items
        obj[key] = value
    else:
        setattr(obj, key, value)


def _get(obj: Any, key: Any) -> Any:
    return obj[key] if isinstance(obj, (list, dict)) else getattr(obj, key)


_SCALAR_TYPES = frozenset(_SCALARS)
_ARRAY_TYPE = mx.array


class _Walk:
    """One walk over a call's state objects in a fixed order (the layout fixes it). The hot
    path of every stateful call: type tests by identity first, one pass over each container."""

    def __init__(self, prepare: bool):
        self.leaves: list[mx.array] = []
        self.slots: list[tuple[int, Any]] = []
        self.containers: list[Any] = []
        self.counters: dict[tuple[int, Any], int] = {}
        self.seen: dict[int, int] = {}
        self.module = _module_type()
        self.prepare = prepare
        # What `Snapshot.refresh` rechecks on the next call instead of walking again: each slot
        # read (where, key, what it held), each container's size, each module's mode, each hook.
        self.checks: list[tuple] = []
        self.sizes: list[tuple[Any, int]] = []
        self.modes: list[tuple[Any, Any, Any]] = []  # (module, mode, frozen names)
        self.hooks: list[Any] = []
        self.tuples: list[tuple[int, Any, Any]] = []  # read through (index, parent, key)

    def container(self, obj: Any, path) -> Container:
        """``path`` is a string or (parent path, kind, key): formatted only for a message."""
        index = len(self.containers)
        self.seen[id(obj)] = index
        self.containers.append(obj)
        if obj is RANDOM:
            self.leaves.append(random_key())
            self.slots.append((index, 0))
            self.checks.append((None, 0, _KEY, None))
            return Container("random", _RandomKey, (0,), (ARRAY,), index)
        training = frozen = None
        counters: tuple = ()
        t = type(obj)
        target = obj  # what the slots are read from
        if t is list or t is tuple:
            kind, items = ("list" if t is list else "tuple"), enumerate(obj)
        elif t is dict:
            kind, items = "dict", obj.items()
        elif isinstance(obj, self.module):
            kind, items = "module", obj.items()
            training = obj.__dict__.get("_training")
            no_grad = obj.__dict__.get("_no_grad")
            frozen = frozenset(no_grad) if no_grad else None
            self.modes.append((obj, training, frozen))
            if training is None:
                training = bool(obj.training)
        elif isinstance(obj, (list, tuple)):
            kind, items = ("list" if isinstance(obj, list) else "tuple"), enumerate(obj)
        elif isinstance(obj, dict):
            kind, items = "dict", obj.items()
        else:
            hook = getattr(t, PREPARE, None)
            if hook is not None:
                self.hooks.append(obj)
                if self.prepare:
                    hook(obj)
            target = vars(obj)
            kind, items = "object", target.items()
            counters = getattr(t, COUNTERS, ())
        self.sizes.append((target, len(target)))
        keys, children = [], []
        leaves, slots, seen, checks = self.leaves, self.slots, self.seen, self.checks
        for k, v in items:
            vt = type(v)
            if vt is _ARRAY_TYPE:
                leaves.append(v)
                slots.append((index, k))
                checks.append((target, k, _LEAF, None))
                d = ARRAY
            elif counters and k in counters:
                if vt is not int:
                    raise StateError(f"{_path_text(path)}{_step(kind, k)} is declared a counter "
                                     f"({COUNTERS}) but holds {pytree.describe(v)}, not an int")
                self.counters[(index, k)] = v
                checks.append((target, k, _COUNT, index))
                d = COUNTER
            elif vt in _SCALAR_TYPES:
                d = pytree.Static(v)
                checks.append((target, k, _EQUAL, (vt, v)))
            elif id(v) in seen:
                d = ("alias", seen[id(v)])
                checks.append((target, k, _SAME, v))
            elif isinstance(v, _ARRAY_TYPE):
                leaves.append(v)
                slots.append((index, k))
                checks.append((target, k, _LEAF, None))
                d = ARRAY
            elif isinstance(v, (list, tuple, dict)) or _is_plain_object(v):
                at = len(checks)
                checks.append((target, k, _SAME, v))
                d = self.container(v, (path, kind, k))
                if d.kind == "tuple" and all(c is ARRAY or isinstance(c, pytree.Static)
                                             for c in d.children):
                    self._read_through(v, d, target, k, at)
            elif isinstance(v, _SCALARS):
                d = pytree.Static(v)
                checks.append((target, k, _EQUAL, (vt, v)))
            else:
                d = ("opaque", vt)
                checks.append((target, k, _TYPE, vt))
            keys.append(k)
            children.append(d)
        return _new_tuple(Container, (kind, t, tuple(keys), tuple(children), index, training,
                                      frozen))

    def _read_through(self, v: tuple, d: Container, target: Any, k: Any, at: int) -> None:
        """Make the refresh read a tuple of arrays and scalars (a quantized cache's packed,
        scales and biases) through its parent's slot: a call that changes one of its arrays
        stores a new tuple there, and the next refresh reads that one. Its checks then hold
        neither the tuple nor its arrays (which the calls replace)."""
        checks = self.checks
        checks[at] = (target, k, _TUPLE, (d.index, type(v), len(v)))
        for j in range(at + 1, len(checks)):
            checks[j] = (None, *checks[j][1:])  # read from the live tuple
        assert self.sizes[-1][0] is v
        self.sizes.pop()
        self.tuples.append((d.index, target, k))


# What a recorded slot check compares (`_Walk.checks`): an array to read, a Python value (type
# and value), a counter to read, the same object, a value's type, the random key to read.
# and a tuple read through its parent (`_Walk._read_through`: its own checks follow, reading it).
_LEAF, _EQUAL, _COUNT, _SAME, _TYPE, _KEY, _TUPLE = range(7)


_new_tuple = tuple.__new__  # a NamedTuple without its Python-level __new__ (the walk's hot path)


def _path_text(path) -> str:
    parts = []
    while isinstance(path, tuple):
        path, kind, key = path
        parts.append(_step(kind, key))
    return path + "".join(reversed(parts))


def snapshot(roots: Sequence[Any], names: Sequence[str], prepare: bool = False) -> Snapshot:
    """Flatten state ``roots`` (objects, or `RANDOM`) into a `Snapshot`; with ``prepare``, call
    each object's `PREPARE` hook before reading it (the runtime does, outside any trace).

    Raises:
        StateError: a declared counter that is not an int.
    """
    walk = _Walk(prepare)
    layout = []
    for r, n in zip(roots, names):
        layout.append(walk.container(r, n))
    return Snapshot(tuple(roots), tuple(names), tuple(layout), walk.leaves, walk.slots,
                    walk.containers, walk.counters,
                    (walk.checks, walk.sizes, walk.modes, walk.hooks, walk.tuples))


# ---- what a traced call changed, as writes every later call repeats ---------------------------
class Write(NamedTuple):
    """One write to a live container (``container``: its index in the walk before the call;
    ``key``: its slot).
    op "array": state output ``value``; "static": the Python value; "counter": add ``value``;
    "tree": a new tuple / list / dict built from ``value`` = (layout, state outputs);
    "delete": remove the slot."""

    container: int
    key: Any
    op: str
    value: Any
    path: str


@dataclass(frozen=True)
class WritePlan:
    """The writes a cache entry applies to the live state objects after each call."""

    writes: tuple[Write, ...]

    def apply(self, snap: Snapshot, outputs: Sequence[mx.array]) -> None:
        containers = snap.containers
        for w in self.writes:
            obj = containers[w.container]
            op = w.op
            if op == "array":
                _put(obj, w.key, outputs[w.value])
            elif op == "static":
                _put(obj, w.key, w.value)
            elif op == "counter":
                _put(obj, w.key, _get(obj, w.key) + w.value)
            elif op == "tree":
                layout, indices = w.value
                _put(obj, w.key, _build(layout, iter([outputs[i] for i in indices])))
            elif isinstance(obj, (list, dict)):
                del obj[w.key]
            else:
                delattr(obj, w.key)

    def paths(self) -> list[str]:
        return [w.path for w in self.writes]


def _build(d: Any, it) -> Any:
    if d is ARRAY:
        return next(it)
    if isinstance(d, pytree.Static):
        return d.value
    children = [_build(c, it) for c in d.children]
    if d.kind == "dict":
        return dict(zip(d.keys, children))
    if d.kind == "list":
        return children
    return d.cls(*children) if hasattr(d.cls, "_fields") else tuple(children)


def _leaf_slots(d: Any, container: int, key: Any) -> list[tuple[int, Any]]:
    """The (container, key) slots of the array leaves under one slot, in build order."""
    if d is ARRAY:
        return [(container, key)]
    if isinstance(d, Container):
        return [s for k, c in zip(d.keys, d.children) for s in _leaf_slots(c, d.index, k)]
    return []


def _same_structure(b: Any, a: Any) -> bool:
    """Whether two walked containers hold their arrays and scalars in the same slots."""
    if not (isinstance(b, Container) and isinstance(a, Container)):
        return b is a is ARRAY or isinstance(b, pytree.Static) and isinstance(a, pytree.Static)
    return (b.kind == a.kind and b.keys == a.keys
            and all(_same_structure(x, y) for x, y in zip(b.children, a.children)))


def _buildable(d: Any) -> bool:
    return d is ARRAY or isinstance(d, pytree.Static) or (
        isinstance(d, Container) and d.kind in ("list", "tuple", "dict")
        and all(_buildable(c) for c in d.children))


@dataclass(frozen=True)
class Changes:
    """What `plan_writes` found: the plan, the ``after`` leaves it writes (the state outputs, in
    order) and, for each, the ``before`` leaf of the same slot where there is one (a state output
    that is still that input changed nothing: `Changes.without`)."""

    plan: WritePlan
    outputs: tuple[int, ...]
    same_slot: tuple[int | None, ...]

    def without(self, unchanged: Sequence[bool]) -> tuple["Changes", list[int]]:
        """Drop array writes whose output is ``unchanged`` (and trees all of whose are); the
        state outputs are renumbered. Also returns the kept outputs' old positions."""
        groups: list[list[int]] = []
        for w in self.plan.writes:
            if w.op == "array":
                groups.append([w.value])
            elif w.op == "tree":
                groups.append(list(w.value[1]))
        dropped = {i for g in groups if g and all(unchanged[i] for i in g) for i in g}
        renumber = {}
        for i in range(len(self.outputs)):
            if i not in dropped:
                renumber[i] = len(renumber)
        writes = []
        for w in self.plan.writes:
            if w.op == "array":
                if w.value in dropped:
                    continue
                w = w._replace(value=renumber[w.value])
            elif w.op == "tree":
                if w.value[1] and all(i in dropped for i in w.value[1]):
                    continue
                w = w._replace(value=(w.value[0], tuple(renumber[i] for i in w.value[1])))
            writes.append(w)
        kept = [i for i in range(len(self.outputs)) if i not in dropped]
        return Changes(WritePlan(tuple(writes)), tuple(self.outputs[i] for i in kept),
                       tuple(self.same_slot[i] for i in kept)), kept


def plan_writes(before: Snapshot, after: Snapshot) -> Changes:
    """Compare the state walk before a traced call with one of the same roots after it (inside
    the trace: its leaves are the trace's values).

    Raises:
        StateError: the call replaced a state object by another, attached a new object or a
            value the runtime cannot rebuild, or changed a module's training mode.
    """
    writes: list[Write] = []
    outputs: list[int] = []
    same_slot: list[int | None] = []
    before_leaf = {slot: i for i, slot in enumerate(before.slots)}
    after_leaf = {slot: i for i, slot in enumerate(after.slots)}

    def same(bd, ad) -> bool:
        return (isinstance(bd, Container) and isinstance(ad, Container)
                and before.containers[bd.index] is after.containers[ad.index])

    def add_outputs(slots, b_slots):
        start = len(outputs)
        for s, bs in zip(slots, b_slots):
            outputs.append(after_leaf[s])
            same_slot.append(before_leaf.get(bs) if bs is not None else None)
        return start

    # ``b`` and ``a`` are one live container walked before and after the call; a write names
    # it by its place in the walk before (`WritePlan.apply` writes into the snapshot taken
    # before each call): containers the call created shift the places of those after them.
    def compare(b: Container, a: Container, path: str) -> None:
        if a.training != b.training:
            raise StateError(f"the call changed the training mode of {path}; call .train() / "
                             ".eval() outside the optimized function")
        if a.frozen != b.frozen:
            raise StateError(f"the call froze or unfroze parameters of {path}; call .freeze() / "
                             ".unfreeze() outside the optimized function")
        bchildren = dict(zip(b.keys, b.children))
        for k, ad in zip(a.keys, a.children):
            step = path + _step(a.kind, k)
            bd = bchildren.get(k, _MISSING)
            if ad is ARRAY:
                i = add_outputs([(a.index, k)], [(b.index, k) if bd is ARRAY else None])
                writes.append(Write(b.index, k, "array", i, step))
            elif ad is COUNTER:
                delta = after.counters[(a.index, k)] - (
                    before.counters[(b.index, k)] if bd is COUNTER else 0)
                if delta:
                    writes.append(Write(b.index, k, "counter", delta, step))
            elif isinstance(ad, pytree.Static):
                if ad != bd:
                    writes.append(Write(b.index, k, "static", ad.value, step))
            elif isinstance(ad, Container) and same(bd, ad) and (
                    ad.kind != "tuple" or not _buildable(ad)):
                # the same container: what changed inside it (a tuple holding objects, as
                # mlx-lm's CacheList does, cannot change, but its objects can)
                compare(bd, ad, step)
            elif isinstance(ad, Container) and _buildable(ad):
                # a new (or, for a tuple, possibly refilled) container of arrays and scalars
                slots = _leaf_slots(ad, a.index, k)
                # a tuple rebuilt (or a container replaced) with the same structure: its leaves
                # go into the slots of the one before, position for position
                b_slots = (_leaf_slots(bd, b.index, k) if same(bd, ad) or _same_structure(bd, ad)
                           else [None] * len(slots))
                i = add_outputs(slots, b_slots)
                writes.append(Write(b.index, k, "tree", (ad, tuple(range(i, i + len(slots)))), step))
            elif ad != bd and not (isinstance(ad, tuple) and ad[:1] == ("alias",) and bd == ad):
                what = (ad.cls.__name__ if isinstance(ad, Container) else
                        ad[1].__name__ if ad[0] == "opaque" else "a shared object")
                raise StateError(f"the call stored a new {what} at {step}: only arrays, Python "
                                 "scalars and lists, tuples and dicts of them can be carried to "
                                 "later calls")
        if a.kind != "random":
            for k in b.keys:
                if k not in bchildren or k in a.keys:
                    continue
                writes.append(Write(b.index, k, "delete", None, path + _step(a.kind, k)))

    for bd, ad, name in zip(before.layout, after.layout, after.names):
        compare(bd, ad, name)
    return Changes(WritePlan(tuple(writes)), tuple(outputs), tuple(same_slot))


_MISSING = object()


# ---- finding a function's state objects -------------------------------------------------------
def _holds_state(obj: Any) -> bool:
    """Whether a captured object is a state root: a module, an optimizer, an object declaring
    the protocol, or one holding arrays among its attributes (directly or in a container)."""
    import mlx.nn as nn
    import mlx.optimizers as optim

    if isinstance(obj, (nn.Module, optim.Optimizer)) or hasattr(type(obj), COUNTERS):
        return True
    for v in vars(obj).values():
        if isinstance(v, mx.array):
            return True
        if isinstance(v, (list, tuple)) and any(isinstance(x, mx.array) for x in v[:8]):
            return True
        if isinstance(v, dict) and any(isinstance(x, mx.array) for x in list(v.values())[:8]):
            return True
    return False


def _holds_arrays(container: Any, depth: int = 0) -> bool:
    """Whether a list, tuple or dict holds arrays, directly or in such containers inside it."""
    items = container.values() if type(container) is dict else container
    for x in list(items)[:64]:
        if type(x) is _ARRAY_TYPE:
            return True
        if depth < 4 and type(x) in (list, tuple, dict) and _holds_arrays(x, depth + 1):
            return True
    return False


def function_roots(fn: Any) -> list[tuple[Any, str]]:
    """The state objects ``fn`` reaches outside its arguments, with a name for each: ``fn``
    itself where it is one (a module), its bound ``self``, and what its closure, defaults and
    referenced globals hold (modules, optimizers, objects holding arrays, lists and dicts of
    arrays), recursively through functions, callable objects and ``functools.partial``."""
    found: list[tuple[Any, str]] = []
    seen: set[int] = set()

    def go(obj, path, depth):
        if depth > 8 or id(obj) in seen or isinstance(obj, (mx.array, *_SCALARS)):
            return
        seen.add(id(obj))
        if inspect.ismethod(obj):
            go(obj.__self__, path.rsplit(".", 1)[0] if "." in path else "self", depth + 1)
            go(obj.__func__, path, depth + 1)
        elif inspect.isfunction(obj):
            for name, cell in zip(obj.__code__.co_freevars, obj.__closure__ or ()):
                try:
                    go(cell.cell_contents, name, depth + 1)
                except ValueError:  # an empty cell
                    pass
            for i, d in enumerate(obj.__defaults__ or ()):
                go(d, f"{obj.__name__}'s default {i}", depth + 1)
            for k, d in (obj.__kwdefaults__ or {}).items():
                go(d, f"{obj.__name__}'s default {k}", depth + 1)
            g = obj.__globals__
            for name in obj.__code__.co_names:
                v = g.get(name)
                if v is not None and not isinstance(v, (type, types.ModuleType)):
                    go(v, name, depth + 1)
        elif type(obj) in (list, dict) and _holds_arrays(obj):
            # a list or dict of arrays the function may rebind items of (an EMA of the
            # parameters): state, as an object holding arrays is
            found.append((obj, path))
        elif isinstance(obj, (list, tuple)):
            for i, x in enumerate(obj[:64]):
                go(x, f"{path}[{i}]", depth + 1)
        elif isinstance(obj, dict) and not isinstance(obj, _module_type()):
            for k, x in list(obj.items())[:64]:
                go(x, f"{path}[{k!r}]", depth + 1)
        elif isinstance(obj, (types.BuiltinFunctionType, type, types.ModuleType)):
            return
        elif _is_plain_object(obj) and _holds_state(obj):
            found.append((obj, path))
        elif hasattr(obj, "func") and callable(obj.func):  # functools.partial
            go(obj.func, path, depth + 1)
            for i, a in enumerate(getattr(obj, "args", ())):
                go(a, f"{path} argument {i}", depth + 1)
            for k, a in (getattr(obj, "keywords", None) or {}).items():
                go(a, f"{path} argument {k}", depth + 1)
        elif _is_plain_object(obj) and callable(obj):  # a callable object: what it reaches
            go(type(obj).__call__, path, depth + 1)
            for k, v in vars(obj).items():
                go(v, f"{path}.{k}", depth + 1)

    go(fn, getattr(fn, "__name__", type(fn).__name__), 0)
    return found
