"""Fusion layer: what each primitive is to the clustering pass: elementwise, a reduction over some
axes of one input, a foldable movement op, or an op that stays an MLX call (and why).
Families come from the primitive table's named sets. May import mlxtriton.graph only.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass
from typing import Callable

from mlxtriton.graph.core import Eqn
from mlxtriton.graph.primitives import Family, family, get as get_primitive

from mlxtriton.fusion import _movement

ELEMENTWISE = family(Family.UNARY) | family(Family.BINARY) | family(Family.TERNARY)


class Role(enum.Enum):
    ELEMENTWISE = "elementwise"
    REDUCTION = "reduction"
    MOVEMENT = "movement"
    STAYS = "stays"


@dataclass(frozen=True)
class Reduction:
    """How a row-wise equation reads its ``source`` input: ``axes`` are reduced.

    ``full`` outputs keep the source's shape (Softmax normalizes the row in place); the others
    keep the reduced axes as size 1 (MLX's keepdims form). Every other input is per row: it has the
    output's shape.
    """

    source: int
    axes: tuple[int, ...]
    full: bool = False


def _reduce(e: Eqn) -> Reduction:
    return Reduction(0, tuple(sorted(a % e.inputs[0].ndim for a in e.params["axes"])))


def _arg_reduce(e: Eqn) -> Reduction:
    return Reduction(0, (e.params["axis"] % e.inputs[0].ndim,))


def _last_axis(e: Eqn) -> Reduction:
    return Reduction(0, (e.inputs[0].ndim - 1,))


def _softmax(e: Eqn) -> Reduction:
    return Reduction(0, (e.inputs[0].ndim - 1,), full=True)


def _gather_axis(e: Eqn) -> Reduction:
    # take_along_axis with one index per row (nn.losses.cross_entropy's label pick) is a row-kernel
    # load: the row is being streamed anyway, and the picked element is the one at column idx[row].
    return Reduction(0, (e.params["axis"] % e.inputs[0].ndim,))


# Row ops that pick elements rather than combine them: on its own, one is MLX's gather kernel.
ROW_LOADS = frozenset({"GatherAxis"})

REDUCTIONS: dict[str, Callable[[Eqn], Reduction]] = {
    "Reduce": _reduce,
    "ArgReduce": _arg_reduce,
    "LogSumExp": _last_axis,
    "Softmax": _softmax,
    "GatherAxis": _gather_axis,
}

STAYS_BECAUSE: dict[Family, str] = {
    Family.MATMUL: "matmul-like: stays an MLX op (MLX's GEMM kernels)",
    Family.CONVOLUTION: "convolution: stays an MLX op",
    Family.INDEXING: "data-dependent indexing (gather/scatter): stays an MLX op",
    Family.SCAN: "scan: stays an MLX op",
    Family.FAST: "mx.fast op: already one MLX kernel on the GPU, stays",
    Family.RANDOM: "random bits: stays an MLX op",
    Family.OPAQUE: "not fusible (sort, linear algebra, FFT, creation, custom kernel): stays an MLX op",
    Family.FUSED: "already a fused region",
    Family.MOVEMENT: "data movement that is no index map of one input: stays an MLX op",
    # No region crosses a collective: its result exists only once every rank has sent its part
    # (SumGradients communicates in its VJP, which a region's own derivative rule would lose).
    Family.COLLECTIVE: "collective: runs as MLX's mx.distributed op (it or its VJP communicates "
    "with the other ranks); regions end before it and start after it",
}

# Metal has no 64-bit float or complex arithmetic; a generated kernel could not compute these.
_KERNEL_LESS_DTYPES = frozenset({"float64", "complex64"})


def role(e: Eqn) -> tuple[Role, str | None]:
    """The equation's role, and for `Role.STAYS` the reason."""
    prim = get_primitive(e.primitive)
    odd = sorted({v.dtype for v in e.inputs + e.outputs} & _KERNEL_LESS_DTYPES)
    if odd and prim.family is not Family.FUSED:
        return Role.STAYS, f"{e.primitive} on {odd[0]}: generated kernels have no {odd[0]} arithmetic"
    if e.primitive in ELEMENTWISE:
        if len({v.shape for v in e.inputs + e.outputs}) > 1:
            return Role.STAYS, f"{e.primitive} with operands of different shapes"
        return Role.ELEMENTWISE, None
    if e.primitive in REDUCTIONS:
        spec = REDUCTIONS[e.primitive](e)
        src = e.inputs[spec.source]
        if all(src.shape[a] == 1 for a in spec.axes):
            return Role.STAYS, f"{e.primitive} over size-1 axes only: a copy, not a reduction"
        out = e.outputs[0]
        for i, v in enumerate(e.inputs):
            if i != spec.source and v.shape != out.shape:
                return Role.STAYS, f"{e.primitive} with several indices per row: a gather, not a row load"
        if not spec.full and any(out.shape[a] != 1 for a in spec.axes):
            return Role.STAYS, f"{e.primitive} with several indices per row: a gather, not a row load"
        return Role.REDUCTION, None
    if _movement.is_foldable(e):
        return Role.MOVEMENT, None
    return Role.STAYS, f"{e.primitive}: {STAYS_BECAUSE.get(prim.family, 'not fusible: stays an MLX op')}"
