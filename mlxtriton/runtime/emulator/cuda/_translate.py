"""Runtime layer (emulator, CUDA front end): the translation unit MLX hands NVRTC -> C++ for the
emulator's headers (``include/``, ``cuda/include/``). The source is kept as written; the rewrites
are syntactic and keep every line where it was, so ``__LINE__`` and compiler messages name lines
of the wrapped source:

- the ``__global__`` kernel's signature: pointer parameters become checked pointers
  (``emu::device_ptr``), which carry their buffer so every access is bounds- and
  alignment-checked; the ``__launch_bounds__`` the kernel is compiled under are read off the
  ``__global__`` it is declared with;
- ``__shared__ T name[N];`` becomes storage the block's threads share, whose elements record who
  wrote and read them (races, uninitialised reads); ``extern __shared__ T name[];`` the launch's
  dynamic shared memory, checked per byte (``emu::shared_ptr``);
- a pointer declared from a ``reinterpret_cast`` (``T* p = reinterpret_cast<T*>(q)``) takes the
  checked type of what it points into (``auto``);
- ``buffer[i]`` and ``shared[i]`` record their line for the error message;
  ``reinterpret_cast<P>(q)`` of a checked pointer keeps its buffer;
- each inline PTX statement (``asm("ex2.approx.ftz.f32 %0, %1;" : "=f"(r) : "f"(x))``) becomes a
  call of the function implementing that instruction (``PTX``); any other is a
  `TranslationError` naming it.

Anything else the source does with these names fails to compile, loudly. Imports only the
emulator's `_front`.
"""

from __future__ import annotations

import re

from mlxtriton.runtime.emulator import _front
from mlxtriton.runtime.emulator._front import Param, Translated, TranslationError

# Type names that may appear in a pointer parameter, and the bytes of one element.
ELEMENT_BYTES = {
    "float": 4, "__half": 2, "__nv_bfloat16": 2, "double": 8, "bool": 1, "int8_t": 1,
    "int16_t": 2, "int32_t": 4, "int64_t": 8, "uint8_t": 1, "uint16_t": 2, "uint32_t": 4,
    "uint64_t": 8,
}
# Parameters MLX passes by value (``__grid_constant__``) when the source names them.
VALUE_BYTES = {"Shape": 4, "Strides": 8, "int": 4}

# The inline PTX our kernels use: instruction -> (the emulator's function, its operand types).
# "f": a .f32 register; the first operand is the result.
PTX = {
    "ex2.approx.ftz.f32": ("::emu::ptx::ex2_approx_ftz_f32", "ff"),
    "ex2.approx.f32": ("::emu::ptx::ex2_approx_f32", "ff"),
    "max.NaN.f32": ("::emu::ptx::max_nan_f32", "fff"),
    "min.NaN.f32": ("::emu::ptx::min_nan_f32", "fff"),
    "max.f32": ("::emu::ptx::max_f32", "fff"),
    "min.f32": ("::emu::ptx::min_f32", "fff"),
}

_SIGNATURE = re.compile(r"^__global__ void (?P<name>\w+)\(\n(?P<params>.*?)\) \{\n", re.S | re.M)
_INPUT = re.compile(r"^    const (?P<type>[\w:]+)\* (?P<name>\w+)$")
_VALUE = re.compile(r"^    const __grid_constant__ (?P<type>Shape|Strides|int) (?P<name>\w+)$")
_OUTPUT = re.compile(r"^    (?P<type>[\w:]+)\* (?P<name>\w+)$")
_BOUNDS = re.compile(r"^[ \t]*#[ \t]*define[ \t]+__global__\b(?P<rest>.*)$", re.M)
_LAUNCH_BOUNDS = re.compile(r"__launch_bounds__\s*\(\s*(?P<threads>\d+)")
_ALIGN = r"(?:__align__\(\s*\d+\s*\)\s+)?"
_SHARED = re.compile(rf"^(?P<indent>[ \t]*)(?:static\s+)?__shared__\s+{_ALIGN}(?P<type>[\w:<>, ]+?)\s+"
                     rf"{_ALIGN}(?P<name>\w+)\s*\[(?P<count>[^\]\n]+)\]\s*;", re.M)
_DYNAMIC = re.compile(rf"^(?P<indent>[ \t]*)extern\s+__shared__\s+{_ALIGN}(?P<type>[\w:<>, ]+?)\s+"
                      rf"{_ALIGN}(?P<name>\w+)\s*\[\s*\]\s*;", re.M)
_POINTER_DECL = re.compile(r"^(?P<indent>[ \t]*)(?:const\s+)?[\w:<>, ]+?\s*\*\s*(?:const\s+)?"
                           r"(?P<name>\w+)\s*=\s*(?=reinterpret_cast\s*<)", re.M)
_ASM = re.compile(r"\b(?:asm|__asm__)(?:\s+(?:volatile|__volatile__))?\s*\(")


def translate(source: str) -> Translated:
    """Translate the CUDA source MLX compiles for a cuda_kernel (`cuda.wrap`)."""
    source = _asm_to_calls(source)
    sig = _SIGNATURE.search(source)
    if sig is None:
        raise TranslationError("no MLX kernel signature ('__global__ void custom_kernel_...(') found")
    params, new_lines = _front.parameters(sig.group("params").split(",\n"), _parameter, ELEMENT_BYTES)

    head, tail = source[:sig.start()], source[sig.end():]
    # the __global__ the kernel is declared with: the header's last definition of it
    bounds = [m["rest"] for m in _BOUNDS.finditer(head)]
    found = _LAUNCH_BOUNDS.search(bounds[-1]) if bounds else None
    max_threads = int(found["threads"]) if found else 0

    body = tail
    names = [p.name for p in params if p.kind in ("input", "output")]
    names += [m["name"] for pattern in (_SHARED, _DYNAMIC) for m in pattern.finditer(body)]
    names += [m["name"] for m in _POINTER_DECL.finditer(body)]
    body = _SHARED.sub(_front.shared_array, body)
    body = _DYNAMIC.sub(
        lambda m: (f"{m['indent']}const auto {m['name']} = ::emu::dynamic_shared<{m['type']}>("
                   f"__LINE__, \"{m['name']}\");"), body)
    body = _POINTER_DECL.sub(lambda m: f"{m['indent']}auto {m['name']} = ", body)
    body = _front.checked_accesses(body, names)

    signature = sig.group(0).replace(sig.group("params"), ",\n".join(new_lines))
    signature = signature.replace("__global__ void ", "void ", 1)
    return Translated(f"mlx::core::cu::{sig.group('name')}", tuple(params),
                      head + signature + body, max_threads)


def _parameter(index: int, line: str) -> tuple[Param, str] | None:
    """A line of the signature (`_front.parameters`); every parameter is one of the buffers."""
    if m := _VALUE.match(line):
        p = Param(m["name"], "value", m["type"], index, element_bytes=VALUE_BYTES[m["type"]])
        return p, f"    const {_value_type(p.type)} {p.name}"
    if m := _INPUT.match(line) or _OUTPUT.match(line):
        kind = "input" if line.lstrip().startswith("const ") else "output"
        p = Param(m["name"], kind, m["type"], index, element_bytes=ELEMENT_BYTES.get(m["type"], 0))
        pointee = f"const {p.type}" if kind == "input" else p.type
        return p, f"    ::emu::device_ptr<{pointee}> {p.name}"
    return None


def _value_type(name: str) -> str:
    """The C++ type of a parameter passed by value: MLX's Shape / Strides, or int."""
    return name if name == "int" else f"::mlx::core::cu::{name}"


def _asm_to_calls(text: str) -> str:
    """Each inline PTX statement as an assignment from the function implementing it, padded with
    the newlines it spanned."""
    out, pos = [], 0
    for m in _ASM.finditer(text):
        if m.start() < pos:
            continue
        close = _matching(text, m.end() - 1)
        end = close + 1
        semicolon = re.match(r"\s*;", text[end:])
        if semicolon is None:
            raise TranslationError(f"inline assembly not followed by ';': {text[m.start():end]!r}")
        end += semicolon.end()
        statement = text[m.start():end]
        out += [text[pos:m.start()], _ptx_call(text[m.end():close], statement),
                "\n" * statement.count("\n")]
        pos = end
    return "".join(out) + text[pos:]


def _matching(text: str, open_at: int) -> int:
    """The index of the parenthesis closing the one at ``open_at`` (strings skipped)."""
    depth, i = 0, open_at
    while i < len(text):
        c = text[i]
        if c == '"':
            i = text.index('"', i + 1)
            while text[i - 1] == "\\":
                i = text.index('"', i + 1)
        elif c == "(":
            depth += 1
        elif c == ")":
            depth -= 1
            if depth == 0:
                return i
        i += 1
    raise TranslationError(f"unbalanced parentheses in inline assembly at {text[open_at:open_at + 60]!r}")


def _split_top(text: str, sep: str) -> list[str]:
    """``text`` split at ``sep`` outside parentheses and strings."""
    parts, depth, start, i = [], 0, 0, 0
    while i < len(text):
        c = text[i]
        if c == '"':
            i = text.index('"', i + 1)
        elif c == "(":
            depth += 1
        elif c == ")":
            depth -= 1
        elif c == sep and depth == 0:
            parts.append(text[start:i])
            start = i + 1
        i += 1
    return parts + [text[start:]]


_OPERAND = re.compile(r'^\s*"(?P<constraint>[=+]?\w+)"\s*\((?P<expr>.*)\)\s*$', re.S)


def _ptx_call(inside: str, statement: str) -> str:
    sections = _split_top(inside, ":")
    template = "".join(re.findall(r'"((?:[^"\\]|\\.)*)"', sections[0]))
    instruction = re.sub(r"\s+", " ", template.strip().rstrip(";").strip())
    mnemonic, _, operands = instruction.partition(" ")
    if mnemonic not in PTX or len(sections) < 3:
        known = ", ".join(sorted(PTX))
        raise TranslationError(f"inline PTX the emulator does not implement: {statement.strip()!r} "
                               f"(it runs {known})")
    function, types = PTX[mnemonic]
    outs = [_OPERAND.match(o) for o in _split_top(sections[1], ",") if o.strip()]
    ins = [_OPERAND.match(o) for o in _split_top(sections[2], ",") if o.strip()]
    if None in outs or None in ins or len(outs) != 1:
        raise TranslationError(f"inline PTX operands the emulator cannot read: {statement.strip()!r}")
    given = [o["constraint"].lstrip("=+") for o in outs + ins]
    placeholders = [int(n) for n in re.findall(r"%(\d+)", operands)]
    if given != list(types) or placeholders != list(range(len(types))):
        raise TranslationError(f"inline PTX {mnemonic} takes {len(types)} .f32 operands %0 (the "
                               f"result), %1, ... in order: {statement.strip()!r}")
    args = ", ".join(f"({o['expr']})" for o in ins)
    return f"({outs[0]['expr']}) = {function}({args});"


# MLX's Shape and Strides, seen from the kernel's namespace inside the unit's
_ALIASES = ("namespace mlx { namespace core { namespace cu { using ::mlx::core::cu::Shape; "
            "using ::mlx::core::cu::Strides; } } }\n")


def _argument(p: Param) -> str:
    if p.kind == "value":
        return _front.value_argument(p, _value_type(p.type))
    return _front.pointer_argument(p, p.type)


def unit(translated: Translated, title: str, namespace: str, symbol: str) -> str:
    """The translated kernel and its entry point ``symbol`` (`_front.unit`)."""
    return _front.unit(translated, title, namespace, symbol, _argument, before=_ALIASES)
