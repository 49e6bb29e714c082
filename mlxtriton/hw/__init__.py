"""Hardware layer: checked chip profiles and detection of the chip MLX runs on.

The bottom layer: imports nothing else from mlxtriton (mlx only, lazily, to read the running device).

Profiles: ``profile(name)`` / ``profiles()`` give frozen `Profile` records for Apple M1..M5 (all
variants), the A17 Pro / A18 / A18 Pro, NVIDIA H100 SXM and H200, and MLX's CPU backend. Every figure
carries its source (``Profile.source(field)``); an unknown figure is None, never a guess; estimates are
named in ``Profile.estimates``. The data is one table (``_table.py``): adding a chip is adding a row.

Choosing the chip: ``resolve(chip)`` is what the rest of the library calls. An explicit name wins
(``"m3"``, ``"m3-max"``, ``"M3 Max"``, ``"h200"``); ``"auto"`` reads ``MLXTRITON_CHIP`` and, if unset,
``detect()`` reads ``mx.device_info()``: the device name picks the chip, the architecture string is the
fallback, features come from the GPU family (an A18 Pro reports ``applegpu_g17p`` yet is Apple9), and
unknown hardware maps to the nearest known profile with an `UnknownHardwareWarning`.

Example:
    >>> from mlxtriton import hw
    >>> hw.profile("m3").threadgroup_memory_bytes, hw.profile("m3").simd_width
    (32768, 32)
"""

from mlxtriton.hw._detect import (
    ENV_VAR,
    UnknownChipError,
    UnknownHardwareWarning,
    detect,
    profile,
    profiles,
    resolve,
)
from mlxtriton.hw._profile import Profile

__all__ = [
    "Profile", "profile", "profiles", "detect", "resolve", "UnknownChipError", "UnknownHardwareWarning",
    "ENV_VAR",
]
