"""Hardware layer: the profiles as text (a table, one chip's figures with sources) and as JSON.

Used by ``python -m mlxtriton chips``. May import the standard library and this layer's modules.
"""

from __future__ import annotations

import json
from collections.abc import Sequence

from mlxtriton.hw._profile import Profile

UNKNOWN = "-"


def _bytes(n: int | None, estimated: bool = False) -> str:
    if n is None:
        return UNKNOWN
    for unit, size in (("M", 1 << 20), ("K", 1 << 10)):
        if n >= size and n % size == 0:
            text = f"{n // size}{unit}"
            break
    else:
        text = f"{n}B"
    return ("~" if estimated else "") + text


def _number(x: float) -> str:
    return f"{x:g}"


def _cores(p: Profile) -> str:
    return "/".join(str(c) for c in p.gpu_cores) if p.gpu_cores else UNKNOWN


def _bandwidth(p: Profile) -> str:
    return "/".join(_number(b) for b in p.memory_bandwidth_gbs) if p.memory_bandwidth_gbs else UNKNOWN


def _tflops(p: Profile) -> str:
    if p.fp32_tflops is None:
        return UNKNOWN
    return ("~" if p.fp32_tflops_estimated else "") + _number(p.fp32_tflops)


def _threadgroup_memory(p: Profile) -> str:
    text = _bytes(p.threadgroup_memory_bytes)
    if p.shared_memory_per_block_optin_bytes:
        text += "/" + _bytes(p.shared_memory_per_block_optin_bytes)  # static / with opt-in
    return text


_FLAGS = (  # (field, short name)
    ("simdgroup_matrix", "simdgroup-matrix"),
    ("native_bfloat16", "bf16"),
    ("dynamic_caching", "dynamic-caching"),
    ("neural_accelerators", "neural-accel"),
    ("tensor_cores", "tensor-cores"),
)


def _features(p: Profile) -> str:
    words = []
    for field, short in _FLAGS:
        value = getattr(p, field)
        if value:
            words.append(short)
        elif value is None and p.vendor == "apple" and field != "tensor_cores":
            words.append(short + "?")  # an Apple feature nobody has documented for this family
    return " ".join(words) or UNKNOWN


_COLUMNS = (
    ("CHIP", lambda p: p.key),
    ("NAME", lambda p: p.name),
    ("FAMILY", lambda p: p.family),
    ("CORES", _cores),
    ("SIMD", lambda p: str(p.simd_width or UNKNOWN)),
    ("THREADS", lambda p: str(p.max_threads_per_threadgroup or UNKNOWN)),
    ("TG MEM", _threadgroup_memory),
    ("BW GB/s", _bandwidth),
    ("FP32 TF", _tflops),
    ("L2", lambda p: _bytes(p.l2_cache_bytes, "l2_cache_bytes" in p.estimates)),
    ("SLC", lambda p: _bytes(p.system_level_cache_bytes, "system_level_cache_bytes" in p.estimates)),
    ("FEATURES", _features),
)


def table(profiles: Sequence[Profile], detected: Profile | None = None, how: str = "detected") -> str:
    """The profiles as an aligned text table; ``detected`` (chosen ``how``) is marked with ``*``.

    Example:
        >>> from mlxtriton import hw
        >>> hw.report.table([hw.profile("m3")]).splitlines()[1].split()[:4]
        ['m3', 'M3', 'Apple9', '8/10']
    """
    rows = [[name for name, _ in _COLUMNS]]
    for p in profiles:
        cells = [get(p) for _, get in _COLUMNS]
        cells[0] = ("*" if p == detected else " ") + cells[0]
        rows.append(cells)
    rows[0][0] = " " + rows[0][0]
    widths = [max(len(r[i]) for r in rows) for i in range(len(_COLUMNS))]
    lines = ["  ".join(cell.ljust(w) for cell, w in zip(r, widths)).rstrip() for r in rows]
    legend = ("~ estimate   - unknown   ? feature undocumented   TG MEM: per threadgroup (NVIDIA: static/"
              "opt-in)   BW per core bin")
    if detected is not None:
        legend += f"\n* chip='auto' here: {detected.name} ({how})"
    return "\n".join(lines) + "\n\n" + legend + "\nSources and every figure: python -m mlxtriton chips NAME"


def detail(p: Profile) -> str:
    """Every figure of one profile with its citation key, the citations spelled out below.

    Example:
        >>> from mlxtriton import hw
        >>> hw.report.detail(hw.profile("m3")).splitlines()[0]
        'M3 (m3): apple, metal backend, family Apple9'
    """
    from mlxtriton.hw._table import CITATIONS

    lines = [f"{p.name} ({p.key}): {p.vendor}, {p.backend} backend, family {p.family}"]
    if p.aliases:
        lines.append("also named: " + ", ".join(p.aliases))
    figures = {"family": p.family, **p.figures()}
    keys = dict(p.sources)
    width = max(len(k) for k in figures)
    for field, value in figures.items():
        if value is None:
            shown = UNKNOWN
        elif field == "compute_capability":
            shown = ".".join(str(v) for v in value)
        elif isinstance(value, tuple):
            shown = "/".join(f"{v:g}" if isinstance(v, float) else str(v) for v in value)
        else:
            shown = f"{value:g}" if isinstance(value, float) else str(value)
        if field in p.estimates:
            shown += " (estimate)"
        cite = f"[{keys[field]}]" if field in keys else ""
        lines.append(f"  {field.ljust(width)}  {shown.ljust(20)}  {cite}".rstrip())
    used = sorted(set(keys.values()))
    if used:
        lines.append("sources:")
        lines.extend(f"  [{key}] {CITATIONS[key]}" for key in used)
    return "\n".join(lines)


def as_json(profiles: Sequence[Profile], detected: Profile | None = None) -> str:
    """``{"detected": key or null, "profiles": [Profile.to_dict(), ...]}`` as indented JSON.

    Example:
        >>> import json
        >>> from mlxtriton import hw
        >>> json.loads(hw.report.as_json([hw.profile("h200")]))["profiles"][0]["l2_cache_bytes"]
        62914560
    """
    return json.dumps({"detected": detected.key if detected else None,
                       "profiles": [p.to_dict() for p in profiles]}, indent=2)
