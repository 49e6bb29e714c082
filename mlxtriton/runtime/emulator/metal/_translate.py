"""Runtime layer (emulator, Metal front end): MLX-wrapped Metal source -> a C++ translation unit
for the emulator's headers (``include/``, ``metal/include/``). The body is kept as written; the
rewrites are syntactic and keep every line where it was, so ``__LINE__`` and compiler messages
name lines of the wrapped source:

- the ``[[kernel]]`` signature: buffer parameters become checked pointers (``emu::device_ptr``),
  which carry their buffer so every access is bounds- and alignment-checked;
- ``threadgroup T name[N];`` becomes storage the threadgroup's threads share, whose elements
  record who wrote and read them (races, uninitialised reads);
- ``buffer[i]`` and ``tg_array[i]`` record their line for the error message;
  ``reinterpret_cast<P>(q)`` of a device pointer keeps its buffer;
- Metal attributes (``[[buffer(0)]]``, ``[[thread_position_in_grid]]``, ...) are dropped.

Anything else the source does with these names fails to compile, loudly. Imports only the
emulator's `_front`.
"""

from __future__ import annotations

import re

from mlxtriton.runtime.emulator import _front
from mlxtriton.runtime.emulator._front import Param, Translated, TranslationError

# Type names that may appear in a buffer parameter, and the bytes of one element.
ELEMENT_BYTES = {
    "float": 4, "float16_t": 2, "half": 2, "bfloat16_t": 2, "bfloat": 2, "bool": 1,
    "int8_t": 1, "int16_t": 2, "int32_t": 4, "int64_t": 8, "uint8_t": 1, "uint16_t": 2,
    "uint32_t": 4, "uint64_t": 8, "int": 4, "uint": 4, "char": 1, "uchar": 1, "short": 2,
    "ushort": 2, "long": 8, "ulong": 8,
}

_METAL_ATTRIBUTE = re.compile(
    r"\[\[\s*(?:kernel|host_name\(\s*\"[^\"]*\"\s*\)|buffer\(\s*\d+\s*\)|"
    r"dispatch_quadgroups_per_threadgroup|dispatch_simdgroups_per_threadgroup|"
    r"dispatch_threads_per_threadgroup|grid_origin|grid_size|quadgroup_index_in_threadgroup|"
    r"quadgroups_per_threadgroup|simdgroup_index_in_threadgroup|simdgroups_per_threadgroup|"
    r"thread_execution_width|thread_index_in_quadgroup|thread_index_in_simdgroup|"
    r"thread_index_in_threadgroup|thread_position_in_grid|thread_position_in_threadgroup|"
    r"threadgroup_position_in_grid|threadgroups_per_grid|threads_per_grid|"
    r"threads_per_simdgroup|threads_per_threadgroup)\s*\]\]")

_SIGNATURE = re.compile(r"^(?:template <(?P<tparams>[^>\n]*)>\n)?\[\[kernel\]\] void (?P<name>\w+)\(\n"
                        r"(?P<params>.*?)\) \{\n", re.S | re.M)
_INSTANCE = re.compile(r"\ntemplate \[\[host_name\(\"(?P<host>\w+)\"\)\]\] \[\[kernel\]\] "
                       r"decltype\((?P<inst>[^)]*)\) (?P=inst);\n$")
_INPUT = re.compile(r"^  const (?P<space>device|constant) (?P<type>\w+)(?P<ref>[*&]) (?P<name>\w+) "
                    r"\[\[buffer\((?P<index>\d+)\)\]\]$")
_OUTPUT = re.compile(r"^  device (?:atomic<(?P<atomic>\w+)>|(?P<type>\w+))\* (?P<name>\w+) "
                     r"\[\[buffer\((?P<index>\d+)\)\]\]$")
_ATTRIBUTE = re.compile(r"^  (?P<type>uint3|uint) (?P<name>\w+) \[\[(?P=name)\]\]$")
_THREADGROUP = re.compile(r"^(?P<indent>[ \t]*)threadgroup\s+(?P<type>[\w:<>, ]+?)\s+(?P<name>\w+)\s*"
                          r"\[(?P<count>[^\]\n]+)\]\s*;", re.M)


def translate(source: str) -> Translated:
    """Translate MLX-wrapped Metal source (as MLX writes it, without its utilities header)."""
    sig = _SIGNATURE.search(source)
    if sig is None:
        raise TranslationError("no MLX kernel signature ('[[kernel]] void custom_kernel_...(') found")
    params, new_lines = _front.parameters(sig.group("params").split(",\n"), _parameter, ELEMENT_BYTES)
    indices = [p.index for p in params if p.kind != "attribute"]
    if indices != list(range(len(indices))):
        raise TranslationError(f"buffer indices {indices} are not 0, 1, 2, ... in order")

    head = source[:sig.start()]
    tail = source[sig.end():]
    function = sig.group("name")
    instance = _INSTANCE.search(tail)
    if instance is not None:
        function = instance["inst"]
        tail = tail[:instance.start()] + "\n" + f"// {instance['inst']} instantiated by its call" + "\n"
    elif sig.group("tparams"):
        raise TranslationError("a template kernel without MLX's explicit instantiation")

    names = [p.name for p in params if p.kind in ("input", "output")]
    names += [m["name"] for m in _THREADGROUP.finditer(tail)]
    body = _front.checked_accesses(_THREADGROUP.sub(_front.shared_array, tail), names)

    signature = sig.group(0)
    signature = signature.replace(sig.group("params"), ",\n".join(new_lines))
    text = _METAL_ATTRIBUTE.sub("", head + signature + body)
    return Translated(function, tuple(params), text)


def _parameter(_: int, line: str) -> tuple[Param, str] | None:
    """A line of the signature (`_front.parameters`); a buffer's index is its ``[[buffer(n)]]``."""
    if m := _INPUT.match(line):
        kind = "scalar" if m["ref"] == "&" else "input"
        p = Param(m["name"], kind, m["type"], int(m["index"]), element_bytes=ELEMENT_BYTES.get(m["type"], 0))
        return p, (f"  const {m['type']}& {p.name}" if kind == "scalar" else
                   f"  ::emu::device_ptr<const {m['type']}> {p.name}")
    if m := _OUTPUT.match(line):
        atomic = m["atomic"] is not None
        p = Param(m["name"], "output", m["atomic"] or m["type"], int(m["index"]), atomic,
                  ELEMENT_BYTES.get(m["atomic"] or m["type"], 0))
        pointee = f"metal::atomic<{p.type}>" if atomic else p.type
        return p, f"  ::emu::device_ptr<{pointee}> {p.name}"
    if m := _ATTRIBUTE.match(line):
        return Param(m["name"], "attribute", m["type"]), f"  {m['type']} {m['name']}"
    return None


# The value of each thread-position attribute: an expression of the runtime's Thread `t`,
# Group `g` and Launch `L` (emu_rt.h).
ATTRIBUTE_VALUES = {
    "thread_position_in_grid": "uint3(t->pos_grid[0], t->pos_grid[1], t->pos_grid[2])",
    "threads_per_grid": "uint3(L->grid[0], L->grid[1], L->grid[2])",
    "grid_size": "uint3(L->grid[0], L->grid[1], L->grid[2])",
    "grid_origin": "uint3(0u, 0u, 0u)",
    "thread_position_in_threadgroup": "uint3(t->pos_tg[0], t->pos_tg[1], t->pos_tg[2])",
    "threads_per_threadgroup": "uint3(g->size[0], g->size[1], g->size[2])",
    "dispatch_threads_per_threadgroup": "uint3(g->dispatch[0], g->dispatch[1], g->dispatch[2])",
    "threadgroup_position_in_grid": "uint3(g->pos[0], g->pos[1], g->pos[2])",
    "threadgroups_per_grid": "uint3(g->count[0], g->count[1], g->count[2])",
    "thread_index_in_threadgroup": "t->lid",
    "thread_index_in_simdgroup": "t->lid % 32u",
    "simdgroup_index_in_threadgroup": "t->simd",
    "simdgroups_per_threadgroup": "(g->n + 31u) / 32u",
    "dispatch_simdgroups_per_threadgroup": "(g->dispatch[0] * g->dispatch[1] * g->dispatch[2] + 31u) / 32u",
    "threads_per_simdgroup": "32u",
    "thread_execution_width": "32u",
    "quadgroup_index_in_threadgroup": "t->lid / 4u",
    "thread_index_in_quadgroup": "t->lid % 4u",
    "quadgroups_per_threadgroup": "(g->n + 3u) / 4u",
    "dispatch_quadgroups_per_threadgroup": "(g->dispatch[0] * g->dispatch[1] * g->dispatch[2] + 3u) / 4u",
}


# The runtime's Group `g` and Launch `L`, which ATTRIBUTE_VALUES read
_PROLOGUE = ("  const ::emu::rt::Group* g = ::emu::rt::group;\n"
             "  const ::emu::rt::Launch* L = ::emu::rt::launch;\n"
             "  (void)g; (void)L; (void)t; (void)b;\n")


def _argument(p: Param) -> str:
    if p.kind == "attribute":
        return ATTRIBUTE_VALUES[p.name]
    if p.kind == "scalar":
        return _front.value_argument(p, p.type)
    return _front.pointer_argument(p, f"metal::atomic<{p.type}>" if p.atomic else p.type)


def unit(translated: Translated, title: str, namespace: str, symbol: str) -> str:
    """The translated kernel and its entry point ``symbol`` (`_front.unit`)."""
    return _front.unit(translated, title, namespace, symbol, _argument, prologue=_PROLOGUE)
