"""Fusion layer: the movement primitives a fused region folds into index arithmetic, one rule each.

A rule says, for one equation, (1) which non-unit dims of its input and output are the same index
(``pairs``, or None when the op moves data relative to its input's layout), and (2) which input
element one output element reads (``source``). May import mlxtriton.graph only.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

from mlxtriton.graph.core import Eqn
from mlxtriton.graph.primitives import keeps_order

Pairs = tuple[tuple[int, int], ...]  # (input dim, output dim), both of size > 1


@dataclass(frozen=True)
class MovementRule:
    # None: the output is the input's elements in another order (only a load can do that for free).
    pairs: Callable[[Eqn], Pairs | None]
    source: Callable[[Eqn, tuple[int, ...]], tuple[int, ...]]


def _non_unit(shape) -> tuple[int, ...]:
    return tuple(i for i, d in enumerate(shape) if d != 1)


def _same_order(ins: tuple[int, ...], outs: tuple[int, ...], eqn: Eqn) -> Pairs | None:
    src, dst = eqn.inputs[0].shape, eqn.outputs[0].shape
    if [src[i] for i in ins] != [dst[j] for j in outs]:
        return None
    return tuple(zip(ins, outs))


def _unit_reshape_pairs(eqn: Eqn) -> Pairs | None:
    # Inserting or deleting size-1 dims keeps every element's row-major linear index.
    return _same_order(_non_unit(eqn.inputs[0].shape), _non_unit(eqn.outputs[0].shape), eqn)


def _broadcast_pairs(eqn: Eqn) -> Pairs:
    # MLX broadcasts right-aligned; an input dim of size 1 is repeated, every other one kept.
    src, dst = eqn.inputs[0].shape, eqn.outputs[0].shape
    lead = len(dst) - len(src)
    return tuple((i, i + lead) for i, d in enumerate(src) if d != 1)


def _transpose_pairs(eqn: Eqn) -> Pairs | None:
    perm = eqn.params["axes"]
    src = eqn.inputs[0].shape
    # Permuting only size-1 dims is a reshape; anything else reorders elements.
    if not keeps_order("Transpose", eqn.params, src):
        return None
    return tuple((perm[j], j) for j in range(len(perm)) if src[perm[j]] != 1)


def _slice_pairs(eqn: Eqn) -> Pairs | None:
    src, dst = eqn.inputs[0].shape, eqn.outputs[0].shape
    identity = src == dst and all(s == 0 and k == 1 for s, k in zip(eqn.params["start"], eqn.params["strides"]))
    return tuple((i, i) for i in _non_unit(src)) if identity else None


def _ravel(coord, shape) -> int:
    index = 0
    for c, d in zip(coord, shape):
        index = index * d + c
    return index


def _unravel(index: int, shape) -> tuple[int, ...]:
    coord = []
    for d in reversed(shape):
        coord.append(index % d if d else 0)
        index = index // d if d else 0
    return tuple(reversed(coord))


def _reshape_source(eqn, coord):
    return _unravel(_ravel(coord, eqn.outputs[0].shape), eqn.inputs[0].shape)


def _broadcast_source(eqn, coord):
    src = eqn.inputs[0].shape
    lead = len(coord) - len(src)
    return tuple(0 if d == 1 else coord[i + lead] for i, d in enumerate(src))


def _transpose_source(eqn, coord):
    perm = eqn.params["axes"]
    out = [0] * len(perm)
    for j, p in enumerate(perm):
        out[p] = coord[j]
    return tuple(out)


def _squeeze_source(eqn, coord):
    axes = {a % eqn.inputs[0].ndim for a in eqn.params["axes"]}
    it = iter(coord)
    return tuple(0 if i in axes else next(it) for i in range(eqn.inputs[0].ndim))


def _expand_source(eqn, coord):
    axes = {a % eqn.outputs[0].ndim for a in eqn.params["axes"]}
    return tuple(c for i, c in enumerate(coord) if i not in axes)


def _slice_source(eqn, coord):
    # MLX stores normalized slices: element i of an axis reads start + i * stride (stride may be < 0).
    return tuple(s + c * k for c, s, k in zip(coord, eqn.params["start"], eqn.params["strides"]))


def _identity_source(eqn, coord):
    return tuple(coord)


MOVEMENT_RULES: dict[str, MovementRule] = {
    "Broadcast": MovementRule(_broadcast_pairs, _broadcast_source),
    "Reshape": MovementRule(_unit_reshape_pairs, _reshape_source),
    "Flatten": MovementRule(_unit_reshape_pairs, _reshape_source),
    "Unflatten": MovementRule(_unit_reshape_pairs, _reshape_source),
    "Squeeze": MovementRule(_unit_reshape_pairs, _squeeze_source),
    "ExpandDims": MovementRule(_unit_reshape_pairs, _expand_source),
    "Transpose": MovementRule(_transpose_pairs, _transpose_source),
    "Slice": MovementRule(_slice_pairs, _slice_source),
    # Full materializes an already broadcast and cast input: same shape, same elements.
    "Full": MovementRule(_unit_reshape_pairs, _identity_source),
}

# Movement ops that a region may keep as part of its own outputs' shape: they change only size-1
# dims, so the region stores the same elements under the shape its users read.
RESHAPES = frozenset({"Reshape", "Flatten", "Unflatten", "Squeeze", "ExpandDims", "Transpose", "Full"})


def is_foldable(eqn: Eqn) -> bool:
    return eqn.primitive in MOVEMENT_RULES and len(eqn.inputs) == 1 and len(eqn.outputs) == 1


def pairs(eqn: Eqn) -> Pairs | None:
    return MOVEMENT_RULES[eqn.primitive].pairs(eqn)


def source_coordinate(eqn: Eqn, coord: tuple[int, ...]) -> tuple[int, ...]:
    """The input coordinate that output element ``coord`` of a movement equation reads."""
    return MOVEMENT_RULES[eqn.primitive].source(eqn, tuple(coord))
