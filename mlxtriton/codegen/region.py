"""Codegen layer: ``Region``, the explicit description of one fused region that codegen turns into
one kernel. Fusion lowering produces it from graph equations: ops carry MLX primitive names and
named params, so the mapping is one line per equation. May import the graph layer's dtypes only.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

from mlxtriton.graph import dtypes as _dtypes


@dataclass(frozen=True)
class Input:
    """A kernel input: a row-contiguous array of ``shape`` and ``dtype`` (MLX passes it).

    Transposes, broadcasts and slices of it are ops of the region, folded into index arithmetic.
    """

    shape: tuple[int, ...]
    dtype: str
    name: str | None = None

    def __post_init__(self) -> None:
        object.__setattr__(self, "shape", tuple(int(d) for d in self.shape))
        _dtypes.check(self.dtype)


@dataclass(frozen=True)
class Op:
    """One equation: an MLX primitive applied to earlier values.

    ``args`` index the region's values: inputs first (0 .. len(inputs) - 1), then each op's
    result in order. ``params`` are the primitive's named params as sorted (name, value) pairs.
    """

    primitive: str
    args: tuple[int, ...] = ()
    params: tuple[tuple[str, Any], ...] = ()

    def __post_init__(self) -> None:
        object.__setattr__(self, "args", tuple(int(a) for a in self.args))
        object.__setattr__(self, "params", tuple(sorted((k, _freeze(v)) for k, v in self.params)))

    def param(self, name: str, default: Any = None) -> Any:
        return dict(self.params).get(name, default)


def op(primitive: str, *args: int, **params: Any) -> Op:
    """``op("Reduce", 0, kind="sum", axes=(1,))``."""
    return Op(primitive, tuple(args), tuple(params.items()))


def _freeze(v: Any) -> Any:
    if isinstance(v, list):
        return tuple(_freeze(x) for x in v)
    return v


@dataclass(frozen=True)
class Region:
    """One fused region: inputs, ops in topological order, and the values it returns.

    Args:
        inputs: the arrays the kernel reads.
        ops: equations; value ``len(inputs) + k`` is ``ops[k]``'s result.
        outputs: value indices the kernel writes (each becomes a fresh row-contiguous array).
        name: a readable kernel name stem.
        output_names: optional parameter names for the outputs.

    Example:
        >>> r = Region(inputs=(Input((8, 32), "float32", "x"),),
        ...            ops=(op("Reduce", 0, kind="max", axes=(1,)),), outputs=(1,))
        >>> r.value_count
        2
    """

    inputs: tuple[Input, ...]
    ops: tuple[Op, ...]
    outputs: tuple[int, ...]
    name: str = "region"
    output_names: tuple[str, ...] | None = None

    def __post_init__(self) -> None:
        object.__setattr__(self, "inputs", tuple(self.inputs))
        object.__setattr__(self, "ops", tuple(self.ops))
        object.__setattr__(self, "outputs", tuple(int(o) for o in self.outputs))
        if self.output_names is not None:
            object.__setattr__(self, "output_names", tuple(self.output_names))
        for k, o in enumerate(self.ops):
            for a in o.args:
                if not 0 <= a < len(self.inputs) + k:
                    raise ValueError(f"op {k} ({o.primitive}) uses value {a}, not defined before it")
        if not self.outputs:
            raise ValueError("a region needs at least one output")
        for v in self.outputs:
            if not 0 <= v < self.value_count:
                raise ValueError(f"output value {v} is not defined")

    @property
    def value_count(self) -> int:
        return len(self.inputs) + len(self.ops)


class RegionBuilder:
    """Builds a Region one value at a time; each call returns the new value's index.

    Example:
        >>> b = RegionBuilder("softmax")
        >>> x = b.input((4, 10), "float32", "x")
        >>> y = b.op("Softmax", x, precise=False)
        >>> region = b.build([y])
        >>> region.ops[0].primitive
        'Softmax'
    """

    def __init__(self, name: str = "region"):
        self.name = name
        self._inputs: list[Input] = []
        self._ops: list[Op] = []

    def input(self, shape: tuple[int, ...], dtype: str, name: str | None = None) -> int:
        if self._ops:
            raise ValueError("declare all inputs before the first op")
        self._inputs.append(Input(tuple(shape), dtype, name))
        return len(self._inputs) - 1

    def op(self, primitive: str, *args: int, **params: Any) -> int:
        self._ops.append(op(primitive, *args, **params))
        return len(self._inputs) + len(self._ops) - 1

    def constant(self, value: Any, dtype: str) -> int:
        return self.op("Constant", value=value, dtype=dtype)

    def build(self, outputs: list[int] | tuple[int, ...],
              output_names: tuple[str, ...] | None = None) -> Region:
        return Region(tuple(self._inputs), tuple(self._ops), tuple(outputs), self.name,
                      output_names)


def contiguous_strides(shape: tuple[int, ...]) -> tuple[int, ...]:
    out, acc = [], 1
    for d in reversed(shape):
        out.append(acc)
        acc *= d
    return tuple(reversed(out))


def size(shape: tuple[int, ...]) -> int:
    return math.prod(shape)
