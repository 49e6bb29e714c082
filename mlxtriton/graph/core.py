"""Graph layer: the immutable, typed graph IR (jaxpr-like) that every mlxtriton pass transforms.

A `Var` carries only its abstract value (shape, dtype) and is named at print time; an `Eqn` holds a
primitive name, input vars, output vars and named params; a `Graph` holds input vars, constants,
equations in topological order and output vars. May import mlx, numpy and the graph layer only.
"""

from __future__ import annotations

import hashlib
import itertools
from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from functools import cached_property
from typing import Any, Iterable, Iterator

import mlx.core as mx

from mlxtriton.graph import dtypes
from mlxtriton.graph.primitives import PRIMITIVES, Primitive, get as get_primitive


@dataclass(frozen=True, eq=False)
class Var:
    """A value in a graph: only its shape and dtype; identity distinguishes two vars."""

    shape: tuple[int, ...]
    dtype: str

    def __post_init__(self):
        object.__setattr__(self, "shape", tuple(int(d) for d in self.shape))
        dtypes.check(self.dtype)

    @classmethod
    def trusted(cls, shape: tuple[int, ...], dtype: str) -> "Var":
        """A var from values already checked (a tuple of ints, a known dtype name): the tracer's
        fast path, skipping validation."""
        v = object.__new__(cls)
        object.__setattr__(v, "shape", shape)
        object.__setattr__(v, "dtype", dtype)
        return v

    @property
    def ndim(self) -> int:
        return len(self.shape)

    @property
    def size(self) -> int:
        n = 1
        for d in self.shape:
            n *= d
        return n

    @property
    def aval(self) -> tuple[tuple[int, ...], str]:
        return (self.shape, self.dtype)

    def type_str(self) -> str:
        return f"{dtypes.short(self.dtype)}[{','.join(map(str, self.shape))}]"

    def __repr__(self) -> str:
        return f"Var({self.type_str()} @{id(self) & 0xFFFF:04x})"


class Params(Mapping):
    """An immutable, hashable mapping of an equation's named parameters (sorted by name)."""

    __slots__ = ("_items", "_hash")

    def __init__(self, items: Mapping[str, Any] | Iterable[tuple[str, Any]] = ()):
        pairs = items.items() if isinstance(items, Mapping) else items
        self._items = tuple(sorted(pairs))
        self._hash = hash(self._items)

    def __getitem__(self, key: str) -> Any:
        for k, v in self._items:
            if k == key:
                return v
        raise KeyError(key)

    def __iter__(self) -> Iterator[str]:
        return (k for k, _ in self._items)

    def __len__(self) -> int:
        return len(self._items)

    def __hash__(self) -> int:
        return self._hash

    def __eq__(self, other) -> bool:
        return isinstance(other, Params) and self._items == other._items

    def __repr__(self) -> str:
        return "Params(" + ", ".join(f"{k}={v!r}" for k, v in self._items) + ")"

    def set(self, **changes) -> "Params":
        return Params({**dict(self._items), **changes})


@dataclass(frozen=True, eq=False)
class Eqn:
    """``outputs = primitive[params](*inputs)``."""

    primitive: str
    inputs: tuple[Var, ...]
    outputs: tuple[Var, ...]
    params: Params = field(default_factory=Params)

    def __post_init__(self):
        object.__setattr__(self, "inputs", tuple(self.inputs))
        object.__setattr__(self, "outputs", tuple(self.outputs))
        if not isinstance(self.params, Params):
            object.__setattr__(self, "params", Params(self.params))

    @classmethod
    def trusted(cls, primitive: str, inputs: tuple, outputs: tuple, params: "Params") -> "Eqn":
        """An equation from values already of the right types (the tracer's fast path)."""
        e = object.__new__(cls)
        object.__setattr__(e, "primitive", primitive)
        object.__setattr__(e, "inputs", inputs)
        object.__setattr__(e, "outputs", outputs)
        object.__setattr__(e, "params", params)
        return e

    @property
    def prim(self) -> Primitive:
        return get_primitive(self.primitive)

    def __repr__(self) -> str:
        return f"Eqn({self.primitive}, {len(self.inputs)} -> {len(self.outputs)})"


@dataclass(frozen=True, eq=False)
class Graph:
    """A typed dataflow graph: ``outputs = f(inputs)`` with ``constants`` captured.

    Attributes:
        inputs: the graph's parameters, in call order (flattened).
        constants: ``(var, value)`` pairs for captured arrays.
        eqns: equations in topological order.
        outputs: result vars (may repeat, may be inputs or constants).
        in_tree, out_tree: the caller's pytree structure of arguments and results, or None for a
            flat graph built by hand (`mlxtriton.graph.pytree`). Part of the graph's identity.
        state_inputs, state_outputs: names of the trailing inputs and outputs that are a traced
            call's implicit state (`mlxtriton.state`: module arrays, argument objects' arrays, the
            random key) rather than its arguments and results; empty for a pure function.
        state_values: the state inputs' values when the call was traced (what `evaluate` binds
            them to); not part of the graph's identity, and dropped by the runtime, which binds
            the live values on every call.

    Equality and hashing are structural: two graphs are equal when they have the same inputs,
    constant values, equations and outputs up to a renaming of vars.
    """

    inputs: tuple[Var, ...]
    eqns: tuple[Eqn, ...]
    outputs: tuple[Var, ...]
    constants: tuple[tuple[Var, mx.array], ...] = ()
    in_tree: Any = None
    out_tree: Any = None
    state_inputs: tuple[str, ...] = ()
    state_outputs: tuple[str, ...] = ()
    state_values: tuple[mx.array, ...] = ()

    def __post_init__(self):
        for name in ("inputs", "eqns", "outputs", "constants"):
            object.__setattr__(self, name, tuple(getattr(self, name)))

    # ---- derived indexes (cached; a graph never changes) ----
    @cached_property
    def const_values(self) -> dict[Var, mx.array]:
        return dict(self.constants)

    @cached_property
    def producers(self) -> dict[Var, Eqn]:
        return {v: e for e in self.eqns for v in e.outputs}

    @cached_property
    def _users(self) -> dict[Var, tuple[Eqn, ...]]:
        users: dict[Var, list[Eqn]] = {}
        for e in self.eqns:
            for v in dict.fromkeys(e.inputs):
                users.setdefault(v, []).append(e)
        return {v: tuple(es) for v, es in users.items()}

    @cached_property
    def output_set(self) -> frozenset[Var]:
        return frozenset(self.outputs)

    def users(self, var: Var) -> tuple[Eqn, ...]:
        """The equations that read ``var`` (graph outputs are not equations: see `is_output`)."""
        return self._users.get(var, ())

    def is_output(self, var: Var) -> bool:
        return var in self.output_set

    def producer(self, var: Var) -> Eqn | None:
        return self.producers.get(var)

    @cached_property
    def _canonical(self) -> tuple:
        """A var-identity-free description: vars become their definition index."""
        index: dict[Var, int] = {}

        def define(v: Var) -> tuple:
            index[v] = len(index)
            return v.aval

        ins = tuple(define(v) for v in self.inputs)
        consts = tuple(
            (define(v), dtypes.array_digest(a).hex()) for v, a in self.constants
        )
        eqns = tuple(
            (
                e.primitive,
                tuple(index[v] for v in e.inputs),
                e.params._items,
                tuple(define(v) for v in e.outputs),
            )
            for e in self.eqns
        )
        outs = tuple(index[v] for v in self.outputs)
        canonical = (ins, consts, eqns, outs, self.in_tree, self.out_tree)
        if self.state_inputs or self.state_outputs:
            canonical += (self.state_inputs, self.state_outputs)
        return canonical

    @cached_property
    def structural_hash(self) -> str:
        """A stable hex digest: equal graphs (up to var renaming) hash equal, across processes."""
        return hashlib.blake2b(repr(self._canonical).encode(), digest_size=16).hexdigest()

    def __hash__(self) -> int:
        return hash(self.structural_hash)

    def __eq__(self, other) -> bool:
        if self is other:
            return True
        return isinstance(other, Graph) and self._canonical == other._canonical

    def replace(self, **changes) -> "Graph":
        """A new graph with some fields replaced (``dataclasses.replace``)."""
        return replace(self, **changes)

    # ---- printing ----
    def __str__(self) -> str:
        from mlxtriton.graph.printer import pretty

        return pretty(self)

    def __repr__(self) -> str:
        return (
            f"Graph({len(self.inputs)} inputs, {len(self.constants)} constants, "
            f"{len(self.eqns)} eqns, {len(self.outputs)} outputs, hash {self.structural_hash[:12]})"
        )

    # ---- convenience ----
    def primitive_counts(self) -> dict[str, int]:
        counts: dict[str, int] = {}
        for e in self.eqns:
            counts[e.primitive] = counts.get(e.primitive, 0) + 1
        return dict(sorted(counts.items()))


def var_names() -> Iterator[str]:
    """a, b, ..., z, ba, bb, ... (jaxpr's naming; never a bare number)."""
    letters = "abcdefghijklmnopqrstuvwxyz"
    for length in itertools.count(1):
        for combo in itertools.product(letters, repeat=length):
            if length > 1 and combo[0] == "a":
                continue
            yield "".join(combo)


def declared_primitives() -> frozenset[str]:
    return frozenset(PRIMITIVES)
