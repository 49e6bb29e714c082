"""Hardware layer: the chip table. Every figure here is data with a citation; adding a chip is adding a row.

Facts come from shared/reference/apple-gpu.md (checked Apple figures), NVIDIA's documentation and
readings on the lent H200. The design documents in shared/seeds/ carry wrong figures and are not used.
May import the standard library and this layer's `_profile` only.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from mlxtriton.hw._profile import Profile

KiB = 1024
MiB = 1024 * 1024  # vendors' "MB" of cache are binary: the H100's "50 MB" L2 reads 52428800 bytes


@dataclass(frozen=True)
class Est:
    """A figure that is an estimate, not a vendor figure or a measurement (``EST`` in the reference)."""

    value: Any


# Citation key -> what it cites. A profile stores keys; `Profile.source` resolves them.
CITATIONS: dict[str, str] = {
    "metal-feature-set-tables": (
        "Apple, Metal Feature Set Tables (https://developer.apple.com/metal/Metal-Feature-Set-Tables.pdf), "
        "GPU implementation limits and feature availability per family; checked in "
        "shared/reference/apple-gpu.md 'GPU families'"),
    "apple-family": (
        "Apple, Metal Feature Set Tables (MTLGPUFamily of each chip): M1 Apple7, M2 Apple8, M3 and M4 Apple9, "
        "M5 Apple10; shared/reference/apple-gpu.md 'GPU families'"),
    "apple9-members": (
        "shared/reference/apple-gpu.md 'GPU families' (Apple9: M3, M4, A17 Pro, A18) and 'Chip identification "
        "in MLX' (A18 Pro reports applegpu_g17p but is Apple9)"),
    "apple-simd-width": (
        "Dougall Johnson, Apple G13 GPU architecture reference (https://dougallj.github.io/applegpu/docs.html); "
        "Apple Developer Forums thread 709103; shared/reference/apple-gpu.md: 32 lanes on every Apple family"),
    "apple-vector-width": (
        "Metal Shading Language Specification (https://developer.apple.com/metal/"
        "Metal-Shading-Language-Specification.pdf), vector types of 2 to 4 components; "
        "shared/reference/apple-gpu.md 'Kernel rules of thumb': at most 4 lanes, 16 B per thread per load"),
    "metal-benchmarks": (
        "Philip Turner, metal-benchmarks (https://github.com/philipturner/metal-benchmarks), as checked in "
        "shared/reference/apple-gpu.md"),
    "metal-flash-attention": (
        "Philip Turner, metal-flash-attention (https://github.com/philipturner/metal-flash-attention): "
        "hasNativeBF16Casting from Apple9; before it bfloat is held as FP32 in registers; "
        "shared/reference/apple-gpu.md"),
    "apple-dynamic-caching": (
        "Apple Tech Talk 111375, 'Explore GPU advancements in M3 and A17 Pro' "
        "(https://developer.apple.com/videos/play/tech-talks/111375/): Dynamic Caching from M3 / A17 Pro; "
        "shared/reference/apple-gpu.md"),
    "apple-m5": (
        "Apple Newsroom, 'Apple unleashes M5' (https://www.apple.com/newsroom/2025/10/"
        "apple-unleashes-m5-the-next-big-leap-in-ai-performance-for-apple-silicon/): a Neural Accelerator in "
        "each GPU core and second-generation Dynamic Caching; Metal 4 tensor operations (matmul2d); "
        "shared/reference/apple-gpu.md (M5 is the first Apple GPU with matrix units)"),
    "apple-chips": (
        "Apple product technical specifications and Newsroom announcements, as checked in "
        "shared/reference/apple-gpu.md 'Chips'"),
    "apple-chips-estimate": (
        "Estimate in shared/reference/apple-gpu.md 'Chips' (marked EST there: Apple publishes no figure)"),
    "apple-copy-bandwidth": (
        "Measured copy bandwidth over the peak, shared/reference/apple-gpu.md 'Achievable copy BW'"),
    "mlx-architecture": (
        "MLX mlx/backend/metal/device.cpp (mx.device_info()['architecture']); shared/reference/apple-gpu.md "
        "'Chip identification in MLX': g13 M1, g14 M2, g15 M3, g16 M4, g17 M5; suffix g base, s Pro or Max, "
        "d Ultra, p phone"),
    "cuda-gpus": (
        "NVIDIA, CUDA GPUs (https://developer.nvidia.com/cuda-gpus): H100 and H200 have compute capability 9.0"),
    "mlx-cuda-architecture": (
        "mx.device_info() on MLX's CUDA backend, read on the lent H200 with MLX 0.32.4 "
        "(shared/reference/mlx.md): architecture 'sm_90', compute capability 9.0"),
    "cuda-guide-cc": (
        "NVIDIA CUDA C++ Programming Guide, 'Compute Capabilities', technical specifications per compute "
        "capability (https://docs.nvidia.com/cuda/cuda-c-programming-guide/index.html#compute-capabilities): "
        "9.0 has warps of 32, 1024 threads per block, 2048 threads and 64K 32-bit registers per SM, "
        "255 registers per thread, 48 KB of static shared memory per block"),
    "cuda-guide-cc90-smem": (
        "NVIDIA CUDA C++ Programming Guide, 'Compute Capability 9.0', shared memory: up to 228 KB per SM, "
        "a block addresses up to 227 KB after opting in with cudaFuncSetAttribute (1 KB per SM is reserved); "
        "NVIDIA Hopper Tuning Guide (https://docs.nvidia.com/cuda/hopper-tuning-guide/)"),
    "cuda-vector-types": (
        "NVIDIA CUDA C++ Programming Guide, built-in vector types (at most 4 components, 16-byte types "
        "such as float4); workplace device notes HOPPER.md: 16-byte accesses per thread"),
    "h100-whitepaper": (
        "NVIDIA H100 Tensor Core GPU Architecture whitepaper (https://resources.nvidia.com/en-us-tensor-core): "
        "H100 SXM5 has 132 SMs, 50 MB of L2, a 256 KB register file per SM, fourth-generation tensor cores"),
    "h100-datasheet": (
        "NVIDIA H100 Tensor Core GPU datasheet (https://www.nvidia.com/en-us/data-center/h100/): "
        "H100 SXM 3.35 TB/s, FP32 67 TFLOPS"),
    "h200-datasheet": (
        "NVIDIA H200 Tensor Core GPU datasheet (https://www.nvidia.com/en-us/data-center/h200/): 141 GB of "
        "HBM3e at 4.8 TB/s, FP32 67 TFLOPS; the same Hopper processor as the H100 (workplace notes H200.md)"),
    "h200-reading": (
        "Read on the lent H200 through PyTorch's device properties, 2026-10-28 (workplace notes KINDS.md): "
        "132 multiprocessors, 60 MB of L2; tests/hw/test_device_card.py checks it on the device"),
    "h200-copy": (
        "Measured on the lent H200, 2026-10-28 and 2026-11-04 (workplace notes KINDS.md): a device-to-device "
        "copy moved about 4.3 TB/s counting bytes read and written"),
}


# --- GPU families: what every chip of a family shares ------------------------------------------------
# family -> {field: value}; `_FAMILY_SOURCES` says where each came from.

_APPLE_COMMON: dict[str, Any] = {
    "simd_width": 32,                    # 32 since M1: the seed's "16-wide before M3" is wrong
    "max_threads_per_threadgroup": 1024,
    "threadgroup_memory_bytes": 32 * KiB,  # 32 KB on M1..M5: the seed's "64 KB on M3" is wrong
    "max_vector_lanes": 4,               # the seed's "8-wide vectors" do not exist in Metal
    "max_vector_bytes": 16,
    "simdgroup_matrix": True,
}
_APPLE_COMMON_SOURCES = {
    "simd_width": "apple-simd-width",
    "max_threads_per_threadgroup": "metal-feature-set-tables",
    "threadgroup_memory_bytes": "metal-feature-set-tables",
    "max_vector_lanes": "apple-vector-width",
    "max_vector_bytes": "apple-vector-width",
    "simdgroup_matrix": "metal-feature-set-tables",
}

FAMILIES: dict[str, dict[str, Any]] = {
    "Apple7": {**_APPLE_COMMON, "native_bfloat16": False, "dynamic_caching": False,
               "neural_accelerators": False, "register_file_bytes_per_core": Est(208 * KiB)},
    "Apple8": {**_APPLE_COMMON, "native_bfloat16": False, "dynamic_caching": False,
               "neural_accelerators": False, "register_file_bytes_per_core": Est(208 * KiB)},
    # Apple9/10: registers live in the dynamic on-chip pool, whose size Apple does not publish.
    "Apple9": {**_APPLE_COMMON, "native_bfloat16": True, "dynamic_caching": True,
               "neural_accelerators": False},
    # Apple10's native bfloat16 is not documented anywhere we found: unknown, not assumed.
    "Apple10": {**_APPLE_COMMON, "dynamic_caching": True, "neural_accelerators": True},
    "sm_90": {
        "compute_capability": (9, 0),
        "simd_width": 32,
        "max_threads_per_threadgroup": 1024,
        "threadgroup_memory_bytes": 48 * KiB,                # static __shared__, without opt-in
        "shared_memory_per_block_optin_bytes": 227 * KiB,    # 232448: 228 KB per SM less 1 KB reserved
        "shared_memory_per_sm_bytes": 228 * KiB,
        "registers_per_sm": 64 * KiB,
        "register_file_bytes_per_core": 64 * KiB * 4,        # 256 KB of 32-bit registers
        "max_registers_per_thread": 255,
        "max_threads_per_sm": 2048,
        "max_vector_lanes": 4,
        "max_vector_bytes": 16,
        "tensor_cores": True,
    },
}

_FAMILY_SOURCES: dict[str, dict[str, str]] = {
    "Apple7": {**_APPLE_COMMON_SOURCES, "native_bfloat16": "metal-flash-attention",
               "dynamic_caching": "apple-dynamic-caching", "neural_accelerators": "apple-m5",
               "register_file_bytes_per_core": "metal-benchmarks"},
    "Apple9": {**_APPLE_COMMON_SOURCES, "native_bfloat16": "metal-flash-attention",
               "dynamic_caching": "apple-dynamic-caching", "neural_accelerators": "apple-m5"},
    "Apple10": {**_APPLE_COMMON_SOURCES, "dynamic_caching": "apple-m5", "neural_accelerators": "apple-m5"},
    "sm_90": {
        "compute_capability": "cuda-gpus",
        "simd_width": "cuda-guide-cc",
        "max_threads_per_threadgroup": "cuda-guide-cc",
        "threadgroup_memory_bytes": "cuda-guide-cc",
        "shared_memory_per_block_optin_bytes": "cuda-guide-cc90-smem",
        "shared_memory_per_sm_bytes": "cuda-guide-cc90-smem",
        "registers_per_sm": "cuda-guide-cc",
        "register_file_bytes_per_core": "cuda-guide-cc",
        "max_registers_per_thread": "cuda-guide-cc",
        "max_threads_per_sm": "cuda-guide-cc",
        "max_vector_lanes": "cuda-vector-types",
        "max_vector_bytes": "cuda-vector-types",
        "tensor_cores": "h100-whitepaper",
    },
}
_FAMILY_SOURCES["Apple8"] = _FAMILY_SOURCES["Apple7"]


# --- Apple chips -------------------------------------------------------------------------------------
# Figures from shared/reference/apple-gpu.md 'Chips'. Est(...) marks its EST figures; None is its n/f.
# fp32_tflops is the largest bin's (FP32 = FP16 peak on M1..M4). memory_bandwidth_gbs has one figure
# per gpu_cores bin where the bins differ (M3 Max 30/40 cores: 300/400 GB/s). SLC in MiB, L2 in KiB.
# M5 Pro / M5 Max: Apple gives "up to" 20 / 40 cores; the smaller bins are not published.

_APPLE_COLUMNS = ("key", "name", "family", "variant", "mlx_architecture", "gpu_cores",
                  "memory_bandwidth_gbs", "fp32_tflops", "system_level_cache_bytes", "l2_cache_bytes",
                  "achievable_bandwidth_fraction")
APPLE_CHIPS: tuple[tuple[Any, ...], ...] = (
    #key         name        family     variant  architecture     cores     GB/s        FP32 TF    SLC      L2    copy
    ("m1",       "M1",       "Apple7",  "base",  "applegpu_g13g", (7, 8),   (68.25,),   2.6,       8,       768,  0.82),
    ("m1-pro",   "M1 Pro",   "Apple7",  "pro",   "applegpu_g13s", (14, 16), (200,),     5.2,       24,      256,  0.88),
    ("m1-max",   "M1 Max",   "Apple7",  "max",   "applegpu_g13s", (24, 32), (400,),     10.4,      48,      512,  None),
    ("m1-ultra", "M1 Ultra", "Apple7",  "ultra", "applegpu_g13d", (48, 64), (800,),     21.0,      96,      1024, None),
    ("m2",       "M2",       "Apple8",  "base",  "applegpu_g14g", (8, 10),  (100,),     3.6,       8,       None, 0.90),
    ("m2-pro",   "M2 Pro",   "Apple8",  "pro",   "applegpu_g14s", (16, 19), (200,),     6.8,       24,      None, None),
    ("m2-max",   "M2 Max",   "Apple8",  "max",   "applegpu_g14s", (30, 38), (400,),     13.6,      48,      None, None),
    ("m2-ultra", "M2 Ultra", "Apple8",  "ultra", "applegpu_g14d", (60, 76), (800,),     27.2,      Est(96), None, 0.80),
    ("m3",       "M3",       "Apple9",  "base",  "applegpu_g15g", (8, 10),  (100,),     Est(3.5),  None,    None, None),
    ("m3-pro",   "M3 Pro",   "Apple9",  "pro",   "applegpu_g15s", (14, 18), (150,),     Est(6.4),  None,    None, None),
    ("m3-max",   "M3 Max",   "Apple9",  "max",   "applegpu_g15s", (30, 40), (300, 400), Est(14.2), None,    None, 0.80),
    ("m3-ultra", "M3 Ultra", "Apple9",  "ultra", "applegpu_g15d", (60, 80), (819,),     Est(28.0), None,    None, None),
    ("m4",       "M4",       "Apple9",  "base",  "applegpu_g16g", (8, 10),  (120,),     Est(3.6),  None,    None, None),
    ("m4-pro",   "M4 Pro",   "Apple9",  "pro",   "applegpu_g16s", (16, 20), (273,),     Est(7.2),  None,    None, None),
    ("m4-max",   "M4 Max",   "Apple9",  "max",   "applegpu_g16s", (32, 40), (410, 546), Est(14.3), None,    None, 0.73),
    ("m5",       "M5",       "Apple10", "base",  "applegpu_g17g", (10,),    (153,),     None,      None,    None, None),
    ("m5-pro",   "M5 Pro",   "Apple10", "pro",   "applegpu_g17s", (20,),    (307,),     None,      None,    None, None),
    ("m5-max",   "M5 Max",   "Apple10", "max",   "applegpu_g17s", (40,),    (614,),     None,      None,    None, 0.86),
    # Phone-class chips MLX also runs on (an A18 Pro Mac reports applegpu_g17p): only the family is
    # known here, and it is what detection needs (g17p is Apple9, not Apple10 like g17g/g17s).
    ("a17-pro",  "A17 Pro",  "Apple9",  None,    None,            None,     None,       None,      None,    None, None),
    ("a18",      "A18",      "Apple9",  None,    None,            None,     None,       None,      None,    None, None),
    ("a18-pro",  "A18 Pro",  "Apple9",  None,    "applegpu_g17p", None,     None,       None,      None,    None, None),
)

_APPLE_ROW_SOURCES = {
    "mlx_architecture": "mlx-architecture",
    "gpu_cores": "apple-chips",
    "memory_bandwidth_gbs": "apple-chips",
    "fp32_tflops": "apple-chips",
    "system_level_cache_bytes": "apple-chips",
    "l2_cache_bytes": "metal-benchmarks",
    "achievable_bandwidth_fraction": "apple-copy-bandwidth",
}
_UNITS = {"system_level_cache_bytes": MiB, "l2_cache_bytes": KiB}


# --- NVIDIA chips ------------------------------------------------------------------------------------

NVIDIA_CHIPS: tuple[dict[str, Any], ...] = (
    {
        "key": "h100", "name": "H100 SXM", "family": "sm_90",
        # "NVIDIA H100 80GB HBM3" is the SXM5 part's device name; the PCIe part ("NVIDIA H100 PCIe",
        # 114 SMs, 2 TB/s) is a different chip and is not an alias.
        "aliases": ("h100-sxm", "h100-sxm5", "NVIDIA H100 80GB HBM3"),
        "mlx_architecture": "sm_90",
        "gpu_cores": (132,),
        "memory_bandwidth_gbs": (3350.0,),
        "fp32_tflops": 67.0,
        "l2_cache_bytes": 50 * MiB,
        "sources": {"mlx_architecture": "mlx-cuda-architecture", "gpu_cores": "h100-whitepaper",
                    "memory_bandwidth_gbs": "h100-datasheet", "fp32_tflops": "h100-datasheet",
                    "l2_cache_bytes": "h100-whitepaper"},
    },
    {
        "key": "h200", "name": "H200", "family": "sm_90",
        "aliases": ("h200-sxm",),
        "mlx_architecture": "sm_90",
        "gpu_cores": (132,),
        "memory_bandwidth_gbs": (4800.0,),
        "achievable_bandwidth_fraction": 0.90,   # 4.3 of 4.8 TB/s
        "fp32_tflops": 67.0,
        "l2_cache_bytes": 60 * MiB,
        "sources": {"mlx_architecture": "mlx-cuda-architecture", "gpu_cores": "h200-reading",
                    "memory_bandwidth_gbs": "h200-datasheet", "fp32_tflops": "h200-datasheet",
                    "l2_cache_bytes": "h200-reading", "achievable_bandwidth_fraction": "h200-copy"},
    },
)


# --- Building profiles -------------------------------------------------------------------------------

def _unwrap(fields: dict[str, Any]) -> tuple[dict[str, Any], frozenset[str]]:
    """Split Est(...) markers off the values; return plain values and the estimated field names."""
    values, estimates = {}, set()
    for name, value in fields.items():
        if isinstance(value, Est):
            value = value.value
            estimates.add(name)
        values[name] = value
    return values, frozenset(estimates)


def _make(vendor: str, backend: str, family: str, row: dict[str, Any], row_sources: dict[str, str],
          family_source: str | None) -> Profile:
    fields = {**FAMILIES.get(family, {}), **{k: v for k, v in row.items() if v is not None}}
    sources = {**_FAMILY_SOURCES.get(family, {}), **row_sources}
    if family_source:
        sources["family"] = family_source
    values, estimates = _unwrap(fields)
    for name, unit in _UNITS.items():
        if vendor == "apple" and values.get(name) is not None:
            values[name] = values[name] * unit
    if values.get("memory_bandwidth_gbs") is not None:
        values["memory_bandwidth_gbs"] = tuple(float(x) for x in values["memory_bandwidth_gbs"])
    # Keep a source only where there is a figure: an unknown figure has nothing to cite.
    cited = tuple(sorted((k, v) for k, v in sources.items() if k == "family" or values.get(k) is not None))
    return Profile(vendor=vendor, backend=backend, family=family, sources=cited, estimates=estimates,
                   **values)


def _build() -> tuple[Profile, ...]:
    out = []
    for row in APPLE_CHIPS:
        fields = dict(zip(_APPLE_COLUMNS, row))
        family = fields.pop("family")
        source = "apple9-members" if fields["key"].startswith("a") else "apple-family"
        row_sources = dict(_APPLE_ROW_SOURCES)
        for name in ("fp32_tflops", "system_level_cache_bytes"):
            if isinstance(fields[name], Est):
                row_sources[name] = "apple-chips-estimate"
        out.append(_make("apple", "metal", family, fields, row_sources, source))
    for chip in NVIDIA_CHIPS:
        fields = {k: v for k, v in chip.items() if k != "sources"}
        family = fields.pop("family")
        out.append(_make("nvidia", "cuda", family, fields, chip["sources"], "cuda-gpus"))
    # MLX's CPU backend: no generated kernels run there, so it has no kernel figures at all.
    out.append(Profile(key="cpu", name="CPU", vendor="cpu", backend="cpu", family="cpu",
                       aliases=("host",)))
    return tuple(out)


PROFILES: tuple[Profile, ...] = _build()
