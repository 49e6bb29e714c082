"""Runtime layer (emulator): what a front end hands the emulator. A front end (``metal``,
``cuda``) writes the source MLX would compile for a kernel (`Wrapped`), translates it line for
line into C++ for the emulator's headers (`Translated`, its kernel's parameters as `Param`s) and
wraps that in an entry point the runtime calls (`unit`); what the two front ends do alike is here.
Imports nothing from mlxtriton but graph dtypes (lazily, to name an MLX dtype).
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any, Callable


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


def type_name(value: Any, names: dict[str, str]) -> str:
    """A template argument's type (an MLX dtype or a graph dtype name) as ``names`` spells it."""
    if not isinstance(value, str):
        from mlxtriton.graph import dtypes

        value = dtypes.from_mx(value)
    return names[value]


def parameters(lines: list[str], parse: Callable[[int, str], tuple[Param, str] | None],
               element_bytes: dict[str, int]) -> tuple[list[Param], list[str]]:
    """The kernel's parameters, one a line of its signature, and their lines in the translation:
    ``parse`` reads the ``index``-th line as a `Param` and its translation (None: not a parameter
    the emulator takes); a buffer's element type must be one of ``element_bytes``."""
    params, translated = [], []
    for index, line in enumerate(lines):
        parsed = parse(index, line)
        if parsed is None:
            raise TranslationError(f"unsupported kernel parameter {line.strip()!r}")
        p, text = parsed
        if p.kind in ("input", "scalar", "output") and p.type not in element_bytes:
            raise TranslationError(f"unsupported buffer type {p.type!r} of parameter {p.name}")
        params.append(p)
        translated.append(text)
    return params, translated


def shared_array(m: re.Match) -> str:
    """The declaration ``T name[N];`` (``m``'s indent, type, name and count) of memory a
    threadgroup's (block's) threads share, as storage that records who wrote and read each
    element."""
    return (f"{m['indent']}const auto {m['name']} = ::emu::threadgroup_alloc<{m['type']}, "
            f"({m['count']})>(__LINE__, \"{m['name']}\");")


def checked_accesses(body: str, names: list[str]) -> str:
    """``body`` with ``name[i]`` of each checked pointer or array in ``names`` recording its line
    for the error message, and ``reinterpret_cast`` keeping a checked pointer's buffer."""
    if names:
        # a name, not a member or a qualified name that ends like it (mt_v1.v[l])
        alternatives = "|".join(map(re.escape, names))
        body = re.sub(rf"(?<![\w.])(?<!->)(?<!::)({alternatives})\[", r"\1(__LINE__)[", body)
    return re.sub(r"\breinterpret_cast\s*<", "::emu::reinterpret_at<__LINE__, ", body)


def pointer_argument(p: Param, pointee: str) -> str:
    """The entry's argument for the input or output ``p``: a checked pointer to ``pointee`` (const
    for an input) into the launch's buffer ``b[p.index]``."""
    const = "const " if p.kind == "input" else ""
    return f"::emu::device_ptr<{const}{pointee}>(b[{p.index}])"


def value_argument(p: Param, type_: str) -> str:
    """The entry's argument for ``p`` passed by value: the ``type_`` its buffer holds."""
    return f"*reinterpret_cast<const {type_}*>(b[{p.index}].data)"


def unit(translated: Translated, title: str, namespace: str, symbol: str,
         argument: Callable[[Param], str], *, before: str = "",
         prologue: str = "  (void)t; (void)b;\n") -> str:
    """The translated kernel inside its own namespace (several share one library) after the
    declarations ``before``, an entry that calls it for the runtime's thread ``t`` with each
    parameter's `argument` (an expression of the launch's buffers ``b`` and of what ``prologue``,
    the entry's first lines, declares), and its ``extern "C"`` entry point ``symbol``."""
    call = ",\n      ".join(map(argument, translated.params))
    return (f"namespace {namespace} {{\n{before}#line 1 \"{title}\"\n{translated.text}\n"
            f"#line 1 \"<emulator entry of {title}>\"\n"
            f"static void entry(::emu::rt::Thread* t, ::emu::rt::Buffer* b) {{\n"
            f"{prologue}"
            f"  {translated.function}(\n      {call});\n}}\n}}  // namespace {namespace}\n"
            f"extern \"C\" __attribute__((visibility(\"default\"))) int {symbol}(::emu::rt::Launch* L) "
            f"{{\n  return ::emu::rt::run(L, {namespace}::entry);\n}}\n")
