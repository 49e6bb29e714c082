"""Hardware layer: `target` pairs the chip decisions follow with the device that runs the code.

``chip`` decides tuning (threadgroup sizes, elements per thread, row strategy, on-chip budget);
``device`` decides the dialect, whether a kernel can launch at all, and the hard limits every
decision is clamped to. May import mlx (lazily, to find the default device) and this layer's modules.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from mlxtriton.hw import params as _params
from mlxtriton.hw._detect import _BY_KEY, detect, profile, resolve
from mlxtriton.hw._profile import Profile


@dataclass(frozen=True)
class Target:
    """Where a kernel's decisions come from (``chip``) and where it runs (``device``).

    Attributes:
        chip: The profile that tuning decisions follow.
        device: The profile of the hardware that runs the code (the CPU profile on MLX's CPU backend).
    """

    chip: Profile
    device: Profile

    @property
    def dialect(self) -> str | None:
        """``"metal"`` or ``"cuda"``: the running GPU's; on the CPU, the chip's (source only); else None."""
        if self.device.is_gpu:
            return self.device.backend
        return self.chip.backend if self.chip.is_gpu else None

    @property
    def can_launch(self) -> bool:
        """Whether generated kernels can run here: only on a GPU device (Metal or CUDA)."""
        return self.device.is_gpu

    @property
    def cross_device(self) -> bool:
        """Whether decisions follow a chip other than the running device."""
        return self.chip != self.device

    def derive(self, dtype_itemsize: int) -> _params.CodegenParams:
        """`mlxtriton.hw.params.derive` for ``chip``, clamped to ``device``'s limits.

        Raises:
            ValueError: Neither chip nor device is a GPU, so there are no kernels to shape.

        Example:
            >>> from mlxtriton import hw
            >>> t = hw.target("h200", device="m3")
            >>> t.dialect, t.derive(4).threadgroup_memory_bytes
            ('metal', 32768)
        """
        if not self.chip.is_gpu:
            raise ValueError(f"chip {self.chip.name} runs no generated kernels; name a GPU chip "
                             f"(chip='m3', chip='h200') to generate code for it")
        return _params.derive(self.chip, dtype_itemsize, device=self.device)


def running_device(device: Any = None) -> Profile:
    """The profile of the device that runs MLX arrays.

    Args:
        device: None for MLX's default device; an ``mx.Device`` / ``mx.DeviceType``; a `Profile`;
            or a chip name (to describe a machine you are not on).

    Returns:
        The CPU profile for a CPU device, else the detected GPU's profile.

    Example:
        >>> import mlx.core as mx
        >>> from mlxtriton import hw
        >>> hw.running_device(mx.cpu).key, hw.running_device("h200").key
        ('cpu', 'h200')
    """
    if isinstance(device, Profile):
        return device
    if isinstance(device, str):
        return profile(device)
    import mlx.core as mx

    if device is None:
        device = mx.default_device()
    kind = getattr(device, "type", device)
    if kind == mx.cpu or not mx.is_available(mx.gpu):
        return _BY_KEY["cpu"]
    return detect()


def target(chip: str | Profile | None = "auto", device: Any = None) -> Target:
    """Pair the chip that decisions follow with the device that runs the code.

    ``chip`` (resolved like `mlxtriton.hw.resolve`: explicit > ``MLXTRITON_CHIP`` > detection)
    decides tuning: threadgroup sizes, elements per thread, short-row strategy, on-chip budget.
    ``device`` decides what can only follow the hardware: the dialect (Metal or CUDA source), whether
    a kernel can launch, the SIMD width of reductions, and the limits every decision is clamped to
    (threads per threadgroup, threadgroup memory, vector width, registers). So ``chip="m3"`` on an H200
    renders CUDA shaped like an M3 kernel, which fits both; ``chip="h200"`` on an M3 renders Metal
    with the H200's choices cut down to the M3's 32 KB of threadgroup memory. On MLX's CPU backend
    nothing launches (``can_launch`` is False) and source is rendered in the chip's dialect.

    Args:
        chip: Chip name, `Profile`, or ``"auto"``.
        device: The running device: None for MLX's default device, an ``mx.Device``, a `Profile`
            or a chip name.

    Returns:
        A `Target`.

    Example:
        >>> from mlxtriton import hw
        >>> t = hw.target("m3", device="h200")
        >>> t.dialect, t.can_launch, t.derive(4).pointwise_elements_per_thread
        ('cuda', True, 2)
    """
    return Target(chip=resolve(chip), device=running_device(device))
