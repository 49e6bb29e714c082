"""Hardware layer: naming and detecting chips (`profile`, `profiles`, `detect`, `resolve`).

Detection reads ``mx.device_info()``: the device name decides the chip, the architecture string is
the fallback, and features always come from the chip's GPU family, never from a g-number.
May import mlx (lazily, only to read the running device) and this layer's modules.
"""

from __future__ import annotations

import functools
import os
import re
import warnings
from collections.abc import Mapping
from typing import Any

from mlxtriton.hw._profile import Profile
from mlxtriton.hw._table import PROFILES

ENV_VAR = "MLXTRITON_CHIP"


class UnknownChipError(ValueError):
    """A chip name that no profile answers to; the message lists the known names."""


class UnknownHardwareWarning(UserWarning):
    """Detection met hardware it has no profile for and chose the nearest known one."""


def _normalize(name: str) -> str:
    """``"Apple M3 Max"``, ``"m3-max"`` and ``"M3_MAX"`` all become ``"applem3max"`` / ``"m3max"``."""
    return re.sub(r"[^a-z0-9]", "", name.lower())


def _build_index() -> dict[str, Profile]:
    index: dict[str, Profile] = {}
    for p in PROFILES:
        names = {p.key, p.name, *p.aliases}
        # The device names MLX reports carry the vendor: "Apple M3 Max", "NVIDIA H200".
        if p.vendor == "apple":
            names.add(f"Apple {p.name}")
        elif p.vendor == "nvidia":
            names |= {f"NVIDIA {p.name}", f"NVIDIA {p.key}"}
        for n in names:
            k = _normalize(n)
            if index.setdefault(k, p) is not p:
                raise RuntimeError(f"chip name {n!r} selects both {index[k].key} and {p.key}")
    return index


_INDEX = _build_index()
_BY_KEY = {p.key: p for p in PROFILES}


def profiles(vendor: str | None = None) -> tuple[Profile, ...]:
    """All known profiles, in table order (Apple by generation, then NVIDIA, then the CPU).

    Args:
        vendor: Keep only ``"apple"``, ``"nvidia"`` or ``"cpu"`` profiles.

    Returns:
        A tuple of `Profile`.

    Example:
        >>> from mlxtriton import hw
        >>> [p.key for p in hw.profiles("nvidia")]
        ['h100', 'h200']
    """
    return tuple(p for p in PROFILES if vendor is None or p.vendor == vendor)


def profile(name: str | Profile) -> Profile:
    """The profile a chip name selects, ignoring case, spaces and punctuation.

    Args:
        name: A key (``"m3-max"``), a display name (``"M3 Max"``), a device name as MLX reports it
            (``"Apple M3 Max"``, ``"NVIDIA H200"``), or a `Profile` (returned as is).

    Returns:
        The `Profile`.

    Raises:
        UnknownChipError: No profile answers to the name; the message lists the known ones.

    Example:
        >>> from mlxtriton import hw
        >>> hw.profile("M3 Max") is hw.profile("m3-max")
        True
        >>> hw.profile("m3").threadgroup_memory_bytes
        32768
    """
    if isinstance(name, Profile):
        return name
    found = _INDEX.get(_normalize(str(name)))
    if found is None:
        known = ", ".join(p.key for p in PROFILES)
        hint = " ('auto' is accepted by hw.resolve, not hw.profile)" if _normalize(str(name)) == "auto" else ""
        raise UnknownChipError(f"unknown chip {name!r}{hint}; known chips: {known}")
    return found


# --- detection ---------------------------------------------------------------------------------------

def _apple_arch(arch: str) -> tuple[int, str] | None:
    """``"applegpu_g15s"`` -> ``(15, "s")``: MLX reads the generation as the digits before the suffix."""
    m = re.fullmatch(r"applegpu_g(\d+)([a-z]+)", arch or "")
    return (int(m.group(1)), m.group(2)) if m else None


def _variant_in_name(name: str) -> str | None:
    words = set(re.findall(r"[a-z]+", name.lower()))
    for variant in ("ultra", "max", "pro"):
        if variant in words:
            return variant
    return None


# What an architecture suffix says about the variant: "s" is Pro *or* Max (only the name can tell).
_SUFFIX_VARIANT = {"g": "base", "s": "pro", "d": "ultra"}
# When a generation lacks the wanted variant (no M5 Ultra yet), the nearest one by size.
_VARIANT_FALLBACK = {
    "base": ("base", "pro", "max", "ultra"),
    "pro": ("pro", "max", "base", "ultra"),
    "max": ("max", "ultra", "pro", "base"),
    "ultra": ("ultra", "max", "pro", "base"),
}


def _warn(message: str) -> None:
    warnings.warn(message + f"; pass chip=... or set {ENV_VAR} to choose a profile",
                  UnknownHardwareWarning, stacklevel=5)  # the caller of detect()


def _describe(name: str, detail: str) -> str:
    return f"{name!r} ({detail})" if name else repr(detail)


def _detect_apple(arch: str, name: str) -> Profile:
    parsed = _apple_arch(arch)
    named = _INDEX.get(_normalize(name)) if name else None
    if named is not None and named.vendor == "apple":
        known = _apple_arch(named.mlx_architecture or "")
        if parsed and known and known[0] != parsed[0]:
            _warn(f"device name {name!r} and architecture {arch!r} disagree; using {named.name} "
                  f"from the name")
        return named

    if parsed is None:
        # Nothing to go on: the oldest family has the fewest features, so its decisions are safe.
        chosen = _BY_KEY["m1"]
        _warn(f"unrecognised Apple GPU {_describe(name, arch)}; using {chosen.name} ({chosen.family})")
        return chosen

    generation, suffix = parsed
    phone = suffix == "p"  # phone-class chips number their generations apart from the Macs'
    line = [(p, _apple_arch(p.mlx_architecture)) for p in PROFILES
            if p.vendor == "apple" and p.mlx_architecture]
    line = [(p, g) for p, (g, s) in line if (s == "p") == phone]
    # Nearest generation; on a tie the older one, whose features are a subset.
    nearest = min({g for _, g in line}, key=lambda g: (abs(g - generation), g))
    same = [p for p, g in line if g == nearest]

    wanted = _variant_in_name(name) or _SUFFIX_VARIANT.get(suffix)
    exact = [p for p in same if p.mlx_architecture == arch]
    if wanted is None or phone:
        chosen = (exact or same)[0]
    else:
        by_variant = {p.variant: p for p in same}
        chosen = next(by_variant[v] for v in _VARIANT_FALLBACK[wanted] if v in by_variant)

    # Silent only when the architecture string alone names exactly one known chip.
    if name or nearest != generation or len(exact) != 1:
        what = "unknown" if nearest != generation or name else "ambiguous (Pro or Max?)"
        _warn(f"{what} Apple GPU {_describe(name, arch)}; using the nearest known profile "
              f"{chosen.name} ({chosen.family})")
    return chosen


def _compute_capability(info: Mapping[str, Any], arch: str) -> tuple[int, int] | None:
    if "compute_capability_major" in info:
        return int(info["compute_capability_major"]), int(info.get("compute_capability_minor", 0))
    m = re.fullmatch(r"sm_(\d+)(\d)[a-z]?", arch or "")
    return (int(m.group(1)), int(m.group(2))) if m else None


def _detect_cuda(info: Mapping[str, Any], arch: str, name: str) -> Profile:
    cc = _compute_capability(info, arch)
    named = _INDEX.get(_normalize(name)) if name else None
    if named is not None and named.vendor == "nvidia":
        if cc and named.compute_capability != cc:
            _warn(f"device name {name!r} and compute capability {cc} disagree; using {named.name}")
        return named

    nvidia = profiles("nvidia")
    # Another form of a known chip ("NVIDIA H200 NVL" contains "h200"): same processor, other limits.
    norm = _normalize(name)
    same_chip = sorted((p for p in nvidia if p.key in norm and (cc is None or p.compute_capability == cc)),
                       key=lambda p: -len(p.key))
    if same_chip:
        chosen = same_chip[0]
    elif cc is not None:
        def distance(p: Profile) -> int:
            major, minor = p.compute_capability or (0, 0)
            return abs((major * 10 + minor) - (cc[0] * 10 + cc[1]))
        chosen = min(nvidia, key=distance)
    else:
        chosen = nvidia[0]
    _warn(f"unknown NVIDIA GPU {_describe(name, f'compute capability {cc}')}; using the nearest known profile "
          f"{chosen.name} ({chosen.family})")
    return chosen


def _detect_from(info: Mapping[str, Any]) -> Profile:
    arch = str(info.get("architecture") or "")
    name = str(info.get("device_name") or "").strip()
    if arch.startswith("applegpu"):
        return _detect_apple(arch, name)
    if "compute_capability_major" in info or arch.startswith("sm_"):
        return _detect_cuda(info, arch, name)
    # MLX's CPU build reports the host: {'architecture': 'x86_64', 'device_name': 'AMD EPYC'}.
    return _BY_KEY["cpu"]


@functools.lru_cache(maxsize=1)
def _detect_live() -> Profile:
    # Cached: the hardware does not change while the process runs, and a warning is said once.
    import mlx.core as mx

    return _detect_from(mx.device_info())


def detect(device_info: Mapping[str, Any] | None = None) -> Profile:
    """The profile of the GPU MLX sees here, or the CPU profile where MLX has no GPU backend.

    Apple: the device name ("Apple M3 Max") picks the chip; the architecture string
    ("applegpu_g15s") is the fallback, and its suffix cannot tell Pro from Max. An unknown chip maps
    to the nearest known one with an `UnknownHardwareWarning`, never an error. CUDA: the device name
    ("NVIDIA H200"), else the nearest compute capability. Ignores ``MLXTRITON_CHIP`` (see `resolve`).

    Args:
        device_info: A dictionary as ``mx.device_info()`` returns it (recorded, for tests);
            None reads the running machine's.

    Returns:
        The detected `Profile`.

    Example:
        >>> from mlxtriton import hw
        >>> hw.detect({"architecture": "applegpu_g15s", "device_name": "Apple M3 Max"}).key
        'm3-max'
        >>> hw.detect({"architecture": "x86_64", "device_name": "AMD EPYC"}).key
        'cpu'
    """
    if device_info is None:
        return _detect_live()
    return _detect_from(device_info)


def resolve(chip: str | Profile | None = "auto", device_info: Mapping[str, Any] | None = None) -> Profile:
    """The profile the library makes its decisions for: explicit chip > ``MLXTRITON_CHIP`` > detection.

    Args:
        chip: A chip name or `Profile` selects it; ``"auto"`` (or None) reads the environment
            variable ``MLXTRITON_CHIP`` and, where it is unset or ``"auto"``, detects.
        device_info: Passed to `detect` (a recorded ``mx.device_info()``, for tests).

    Returns:
        The `Profile`.

    Raises:
        UnknownChipError: The chip (or the environment variable) names no known profile.

    Example:
        >>> from mlxtriton import hw
        >>> hw.resolve("m3-max").name
        'M3 Max'
        >>> hw.resolve("auto", {"architecture": "sm_90", "device_name": "NVIDIA H200",
        ...                     "compute_capability_major": 9, "compute_capability_minor": 0}).key
        'h200'
    """
    if isinstance(chip, Profile):
        return chip
    if chip is None or _normalize(str(chip)) == "auto":
        env = os.environ.get(ENV_VAR, "").strip()
        if env and _normalize(env) != "auto":
            try:
                return profile(env)
            except UnknownChipError as e:
                raise UnknownChipError(f"{ENV_VAR}={env!r}: {e}") from None
        return detect(device_info)
    return profile(chip)
