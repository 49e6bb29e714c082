"""Hardware layer: checked chip profiles, detection, chip targeting and derived code-generation parameters.

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

An explicit chip on another machine: decisions follow the named chip, execution follows the device.
``target(chip, device)`` makes that concrete. The chip decides tuning: threadgroup sizes, elements per
thread, the short-row strategy and the on-chip budget. The device decides the dialect (Metal or CUDA
source), whether a kernel can launch at all, the SIMD width of reductions, and the hard limits every
decision is clamped to (threads per threadgroup, threadgroup memory, vector width, registers). So
``chip="m3"`` with arrays on an H200 generates CUDA shaped like an M3 kernel, within both chips'
limits; ``chip="h200"`` on an M3 generates Metal with 32 KB of threadgroup memory, not 227 KB. On
MLX's CPU backend nothing launches; source is still rendered for the named chip. See docs/hardware.md.

Tuning: ``tuning.tuning(profile)`` is the chip architecture's row of the rules fitted to measurements
(threads per row, register shares, staging, ...), each field with its reason and evidence.

Example:
    >>> from mlxtriton import hw
    >>> hw.profile("m3").threadgroup_memory_bytes, hw.profile("m3").simd_width
    (32768, 32)
    >>> hw.params.derive(hw.profile("h200"), 4).vector_width
    4
"""

from mlxtriton.hw import params, report, tuning
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
from mlxtriton.hw._target import Target, running_device, target
from mlxtriton.hw.params import CodegenParams, derive

__all__ = [
    "Profile", "profile", "profiles", "detect", "resolve", "target", "Target", "running_device",
    "params", "report", "tuning", "derive", "CodegenParams", "UnknownChipError", "UnknownHardwareWarning", "ENV_VAR",
]
