"""Runtime layer (emulator): what a front end hands the emulator. A front end (``metal``,
``cuda``) writes the source MLX would compile for a kernel (`Wrapped`), translates it line for
line into C++ for the emulator's headers (`Translated`, its kernel's parameters as `Param`s) and
wraps that in an entry point the runtime calls. Imports nothing from mlxtriton.
"""

from __future__ import annotations

from dataclasses import dataclass


class TranslationError(ValueError):
    """Source the emulator cannot take: it names what and where."""


@dataclass(frozen=True)
class Wrapped:
    """What MLX would compile for one kernel call: the kernel function's name and the full
    source (for Metal, after MLX's utilities header, which MLX prepends when it builds the
    library)."""

    name: str
    source: str


@dataclass(frozen=True)
class Param:
    """One parameter of the kernel function: a buffer (``index`` is its position among the
    buffers), a value passed by copy (CUDA's shape, strides and ndim) or a thread-position
    attribute (Metal)."""

    name: str
    kind: str  # "input" (const pointer), "scalar" (const reference), "output", "value", "attribute"
    type: str  # element type name as the source spells it, or the attribute's / value's type
    index: int = -1
    atomic: bool = False
    element_bytes: int = 0  # of one element of a buffer


@dataclass(frozen=True)
class Translated:
    function: str  # what the entry point calls: the kernel's name, with template arguments
    params: tuple[Param, ...]
    text: str  # the translated source, line for line the wrapped one
    max_threads: int = 0  # the kernel's declared bound on threads per threadgroup (0: none)
