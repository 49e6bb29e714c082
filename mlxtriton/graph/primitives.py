"""Graph layer: the one table of primitives that ``mx.export_function`` can report.

Each primitive is declared once, with its family and the names of its parameters, and a decoder
from MLX's positional ``state()`` (as the exporter reports it) to named, hashable params.
Rules other layers need (evaluate with MLX, with JAX, render in a kernel) live in their own tables,
keyed by primitive name. May import mlx and the graph layer's dtypes only.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass
from typing import Any, Callable

import mlx.core as mx

from mlxtriton.graph import dtypes


class Family(enum.Enum):
    UNARY = "unary"  # elementwise, one input, output shape == input shape
    BINARY = "binary"  # elementwise, two inputs of the output's shape (MLX broadcasts explicitly)
    TERNARY = "ternary"  # elementwise, three inputs (Select)
    REDUCE = "reduce"  # Reduce, ArgReduce
    SCAN = "scan"
    MOVEMENT = "movement"  # views and copies that only move data
    INDEXING = "indexing"  # data-dependent indexing: gather, scatter, ...
    MATMUL = "matmul"
    CONVOLUTION = "convolution"
    FAST = "fast"  # mx.fast primitives (GPU streams); they decompose on the CPU stream
    RANDOM = "random"
    OPAQUE = "opaque"  # everything else: sorts, linear algebra, FFT, creation, custom kernels
    FUSED = "fused"  # a region of the graph that runs as one generated kernel (graph/fused.py)


class UnsupportedPrimitiveError(NotImplementedError):
    """A primitive that mlxtriton's table does not declare."""


@dataclass(frozen=True)
class Primitive:
    name: str
    family: Family
    params: tuple[str, ...] = ()
    # From the exporter's positional arguments to {param name: hashable value}; None: zip with params.
    decoder: Callable[[list], dict[str, Any]] | None = None

    def decode(self, arguments: list) -> dict[str, Any]:
        if self.decoder is not None:
            return {k: freeze(v) for k, v in self.decoder(list(arguments)).items()}
        if len(arguments) != len(self.params):
            raise ValueError(
                f"{self.name}: MLX reported {len(arguments)} arguments {arguments!r}, "
                f"the table declares {len(self.params)} {self.params}"
            )
        return {k: freeze(v) for k, v in zip(self.params, arguments)}

    def __repr__(self) -> str:
        return f"Primitive({self.name})"


def freeze(value: Any) -> Any:
    """Make an exporter argument hashable: lists -> tuples, mx.Dtype -> dtype name."""
    if isinstance(value, (list, tuple)):
        return tuple(freeze(v) for v in value)
    if isinstance(value, mx.Dtype):
        return dtypes.from_mx(value)
    if isinstance(value, dict):
        return tuple(sorted((k, freeze(v)) for k, v in value.items()))
    if isinstance(value, (bool, int, float, str, type(None))):
        return value
    raise TypeError(f"cannot freeze primitive argument {value!r} of type {type(value).__name__}")


PRIMITIVES: dict[str, Primitive] = {}


def declare(name: str, family: Family, params: tuple[str, ...] = (), decoder=None) -> Primitive:
    if name in PRIMITIVES:
        raise ValueError(f"primitive {name} declared twice")
    prim = Primitive(name, family, tuple(params), decoder)
    PRIMITIVES[name] = prim
    return prim


def get(name: str) -> Primitive:
    try:
        return PRIMITIVES[name]
    except KeyError:
        raise UnsupportedPrimitiveError(
            f"unsupported primitive {name!r}: mlxtriton's primitive table does not declare it"
        ) from None


def family(fam: Family) -> frozenset[str]:
    return frozenset(n for n, p in PRIMITIVES.items() if p.family is fam)


# ---------------------------------------------------------------------------------------------
# The table. Argument layouts follow MLX 0.32 `state()` (mlx/primitives.h, mlx/fast_primitives.h)
# as reported by mx.export_function; each is checked by a live trace in tests/graph.

for _name in ("Abs", "Negative", "Exp"):  # (the rest of the unary ops follow below)
    declare(_name, Family.UNARY)

for _name in ("Add", "Subtract", "Multiply", "Divide", "Maximum", "Minimum"):
    declare(_name, Family.BINARY)

_REDUCE_KINDS = ("and", "or", "sum", "prod", "min", "max")  # mlx::core::Reduce::ReduceType order

declare(
    "Reduce",
    Family.REDUCE,
    ("kind", "axes"),
    lambda a: {"kind": _REDUCE_KINDS[a[0]], "axes": tuple(a[1])},
)
declare("Sqrt", Family.UNARY, ("reciprocal",))
declare("Broadcast", Family.MOVEMENT, ("shape",))
