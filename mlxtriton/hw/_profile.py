"""Hardware layer: the `Profile` record, one chip's checked figures with a source for each.

A profile is plain, frozen, hashable data (it is part of kernel cache keys); the figures themselves
live in `_table.py`. May import the standard library only.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Any

# Fields that name or classify a profile rather than state a hardware figure. Of these only the GPU
# family is a fact about the chip; it is cited like a figure.
IDENTITY_FIELDS = frozenset({"key", "name", "vendor", "backend", "family", "variant", "aliases", "sources",
                             "estimates"})

VENDORS = ("apple", "nvidia", "cpu")
BACKENDS = ("metal", "cuda", "cpu")
VARIANTS = ("base", "pro", "max", "ultra")

# Fields that only one vendor's hardware has; on the other vendor's profiles they stay None.
APPLE_ONLY = frozenset({"simdgroup_matrix", "native_bfloat16", "dynamic_caching", "neural_accelerators",
                        "system_level_cache_bytes"})
NVIDIA_ONLY = frozenset({"compute_capability", "tensor_cores", "shared_memory_per_block_optin_bytes",
                         "shared_memory_per_sm_bytes", "registers_per_sm", "max_registers_per_thread",
                         "max_threads_per_sm"})


@dataclass(frozen=True, repr=False)
class Profile:
    """One chip's hardware figures, each with its source; ``None`` means unknown (never guessed).

    Equality and hashing cover every field, so a profile can be part of a cache key.

    Attributes:
        key: Canonical lower-case name, e.g. ``"m3-max"``, ``"h200"``, ``"cpu"``.
        name: Display name, e.g. ``"M3 Max"``.
        vendor: ``"apple"``, ``"nvidia"`` or ``"cpu"`` (MLX's CPU backend).
        backend: The MLX backend whose kernels this chip runs: ``"metal"``, ``"cuda"`` or ``"cpu"``.
        family: GPU family that decides features: ``"Apple7"`` .. ``"Apple10"``, ``"sm_90"``, ``"cpu"``.
        variant: ``"base"``, ``"pro"``, ``"max"``, ``"ultra"`` for Apple M-series chips, else None.
        aliases: Extra names that select this profile (matched ignoring case, spaces and punctuation).
        mlx_architecture: What ``mx.device_info()["architecture"]`` reports, e.g. ``"applegpu_g15s"``.
        compute_capability: NVIDIA compute capability, e.g. ``(9, 0)``.
        gpu_cores: Binned GPU core counts that ship (Apple), or streaming multiprocessors (NVIDIA).
        simd_width: Threads in a SIMD-group (Apple) or warp (NVIDIA).
        max_threads_per_threadgroup: Device limit; a compiled pipeline may allow fewer.
        threadgroup_memory_bytes: Threadgroup (shared) memory one threadgroup gets without opt-in.
        max_vector_lanes: Most lanes of a vector type (``float4``).
        max_vector_bytes: Most bytes one thread moves in one vector load or store.
        memory_bandwidth_gbs: Peak DRAM bandwidth in GB/s, one figure per ``gpu_cores`` bin, or one
            figure for all bins.
        achievable_bandwidth_fraction: Measured copy bandwidth over the peak.
        fp32_tflops: Peak FP32 TFLOPS of the largest bin; see ``estimates``.
        l2_cache_bytes: GPU L2 cache.
        system_level_cache_bytes: Apple's system-level cache (the last level before DRAM).
        register_file_bytes_per_core: Register file of one GPU core or SM.
        simdgroup_matrix: Metal ``simdgroup_matrix`` 8x8 operations.
        native_bfloat16: bfloat16 handled natively, not emulated through FP32 registers.
        dynamic_caching: Registers, threadgroup memory and caches share one pool allocated at run time.
        neural_accelerators: Matrix units in the GPU cores (Metal 4 tensor operations).
        tensor_cores: NVIDIA tensor cores.
        shared_memory_per_block_optin_bytes: Most shared memory a block gets after opting in.
        shared_memory_per_sm_bytes: Shared memory of one SM.
        registers_per_sm: 32-bit registers of one SM.
        max_registers_per_thread: Most registers one thread may use.
        max_threads_per_sm: Resident threads one SM holds.
        sources: ``(field, citation key)`` pairs; `source` resolves them to text.
        estimates: Names of the fields whose figure is an estimate, not a vendor or measured figure.
    """

    key: str
    name: str
    vendor: str
    backend: str
    family: str
    variant: str | None = None
    aliases: tuple[str, ...] = ()
    mlx_architecture: str | None = None
    compute_capability: tuple[int, int] | None = None
    gpu_cores: tuple[int, ...] | None = None
    simd_width: int | None = None
    max_threads_per_threadgroup: int | None = None
    threadgroup_memory_bytes: int | None = None
    max_vector_lanes: int | None = None
    max_vector_bytes: int | None = None
    memory_bandwidth_gbs: tuple[float, ...] | None = None
    achievable_bandwidth_fraction: float | None = None
    fp32_tflops: float | None = None
    l2_cache_bytes: int | None = None
    system_level_cache_bytes: int | None = None
    register_file_bytes_per_core: int | None = None
    simdgroup_matrix: bool | None = None
    native_bfloat16: bool | None = None
    dynamic_caching: bool | None = None
    neural_accelerators: bool | None = None
    tensor_cores: bool | None = None
    shared_memory_per_block_optin_bytes: int | None = None
    shared_memory_per_sm_bytes: int | None = None
    registers_per_sm: int | None = None
    max_registers_per_thread: int | None = None
    max_threads_per_sm: int | None = None
    sources: tuple[tuple[str, str], ...] = field(default=(), repr=False)
    estimates: frozenset[str] = frozenset()

    def __repr__(self) -> str:
        return f"Profile({self.key!r}: {self.name}, {self.family})"

    @property
    def is_gpu(self) -> bool:
        """Whether this chip runs generated kernels (Metal or CUDA), unlike the CPU profile."""
        return self.backend in ("metal", "cuda")

    @property
    def sm_count(self) -> int | None:
        """NVIDIA streaming multiprocessors (``gpu_cores`` of an NVIDIA profile), else None."""
        if self.vendor != "nvidia" or not self.gpu_cores:
            return None
        return max(self.gpu_cores)

    @property
    def peak_bandwidth_gbs(self) -> float | None:
        """The highest ``memory_bandwidth_gbs`` figure (the largest bin), or None."""
        return max(self.memory_bandwidth_gbs) if self.memory_bandwidth_gbs else None

    @property
    def fp32_tflops_estimated(self) -> bool:
        """Whether ``fp32_tflops`` is an estimate (no vendor figure exists)."""
        return "fp32_tflops" in self.estimates

    @property
    def last_level_cache_bytes(self) -> int | None:
        """The cache nearest DRAM: Apple's system-level cache, NVIDIA's L2."""
        if self.vendor == "apple":
            return self.system_level_cache_bytes
        return self.l2_cache_bytes

    @property
    def has_matrix_accelerator(self) -> bool:
        """Dedicated matrix hardware beyond SIMD ALUs: NVIDIA tensor cores, Apple neural accelerators."""
        return bool(self.tensor_cores) or bool(self.neural_accelerators)

    @property
    def threadgroup_memory_max_bytes(self) -> int | None:
        """The most threadgroup memory a kernel may request: the opt-in limit where there is one.

        On CUDA a kernel gets more than 48 KB only as dynamic shared memory after opting in;
        ``mx.fast.cuda_kernel(shared_memory=N)`` opts in itself above 48000 bytes.
        """
        return self.shared_memory_per_block_optin_bytes or self.threadgroup_memory_bytes

    def figures(self) -> dict[str, Any]:
        """The hardware figures (every field but the identity ones), by field name."""
        return {f.name: getattr(self, f.name) for f in dataclasses.fields(self)
                if f.name not in IDENTITY_FIELDS}

    def source(self, field_name: str) -> str | None:
        """The citation for one figure, as text, or None when the figure has none.

        Example:
            >>> from mlxtriton import hw
            >>> hw.profile("m3").source("threadgroup_memory_bytes").startswith("Apple, Metal Feature Set")
            True
        """
        from mlxtriton.hw._table import CITATIONS

        for name, key in self.sources:
            if name == field_name:
                return CITATIONS[key]
        return None

    def to_dict(self) -> dict[str, Any]:
        """A JSON-ready dict: every field, tuples as lists, sources resolved to text.

        Example:
            >>> from mlxtriton import hw
            >>> hw.profile("h200").to_dict()["compute_capability"]
            [9, 0]
        """
        out: dict[str, Any] = {}
        for f in dataclasses.fields(self):
            value = getattr(self, f.name)
            if f.name == "sources":
                value = {name: self.source(name) for name, _ in value}
            elif f.name == "estimates":
                value = sorted(value)
            elif isinstance(value, tuple):
                value = list(value)
            out[f.name] = value
        out["last_level_cache_bytes"] = self.last_level_cache_bytes
        return out
