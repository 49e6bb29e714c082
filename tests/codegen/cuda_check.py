"""Test tooling: compile generated CUDA kernels wrapped the way MLX wraps them, with nvcc.

A CPU-only MLX cannot construct a cuda_kernel, so the wrapper is rebuilt here from MLX 0.32's
``mlx/backend/cuda/custom_kernel.cpp`` (``build_kernel``): its default header, then ours, then
``namespace mlx::core::cu { __global__ void custom_kernel_<name>(const T* in..., T* out...) {
body } }``. ``cuda_include/mlx/backend/cuda/device/utils.cuh`` stands in for MLX's utilities
(the includes and Shape/Strides types the wrapper relies on). Skipped where nvcc is absent.
"""

from __future__ import annotations

import pathlib
import re
import shutil
import subprocess
import tempfile

from mlxtriton.codegen.render import LoweredKernel

INCLUDE = pathlib.Path(__file__).parent / "cuda_include"

# mlx/backend/cuda/custom_kernel.cpp, default_header (MLX 0.32)
_DEFAULT_HEADER = """
#include "mlx/backend/cuda/device/utils.cuh"

#include <cooperative_groups.h>

"""

_TYPES = {"float32": "float", "float16": "__half", "bfloat16": "__nv_bfloat16", "bool": "bool",
          "int8": "int8_t", "int16": "int16_t", "int32": "int32_t", "int64": "int64_t",
          "uint8": "uint8_t", "uint16": "uint16_t", "uint32": "uint32_t", "uint64": "uint64_t"}


def nvcc() -> str | None:
    return shutil.which("nvcc")


def wrapped_source(kernel: LoweredKernel) -> str:
    """The translation unit MLX hands NVRTC for this kernel (one kernel per unit)."""
    assert kernel.target == "cuda", kernel.target
    params = [f"    const {_TYPES[d]}* {n}" for n, d in zip(kernel.input_names, kernel.input_dtypes)]
    params += [f"    {_TYPES[d]}* {n}" for n, d in zip(kernel.output_names, kernel.output_dtypes)]
    return (_DEFAULT_HEADER + kernel.header + "namespace mlx::core::cu {\n\n"
            "namespace cg = cooperative_groups;\n\n"
            f"__global__ void custom_kernel_{kernel.name}(\n" + ",\n".join(params) + ") {\n"
            + kernel.source + "\n}\n\n} // namespace mlx::core::cu\n")


def batched_source(kernels: list[LoweredKernel]) -> str:
    """Many kernels in one translation unit (nvcc starts once): MLX's default header once, then
    each kernel's header and wrapper inside a namespace of its own, so helpers may repeat."""
    parts = [_DEFAULT_HEADER]
    for k, kernel in enumerate(kernels):
        text = wrapped_source(kernel)[len(_DEFAULT_HEADER):]
        parts.append(f"namespace mt_check{k} {{\n{text}}}  // namespace mt_check{k}\n")
    return "".join(parts)


def compile_errors(kernels: list[LoweredKernel], arch: str = "sm_90", batch: bool = True) -> str:
    """nvcc's complaints about the kernels ('' when every one compiles without a warning).

    ``batch=False`` compiles each kernel as its own translation unit, exactly as MLX does;
    ``batch=True`` (the default, several times faster) puts them in one.
    """
    with tempfile.TemporaryDirectory() as tmp:
        files = []
        units = [batched_source(kernels)] if batch else [wrapped_source(k) for k in kernels]
        for k, text in enumerate(units):
            path = pathlib.Path(tmp) / f"unit{k}.cu"
            path.write_text(text)
            files.append(str(path))
        cmd = [nvcc(), f"-arch={arch}", "-std=c++17", "--ptx", "-Werror", "all-warnings",
               "-I", str(INCLUDE), "--output-directory", tmp, *files]
        proc = subprocess.run(cmd, capture_output=True, text=True, timeout=600)
        return "" if proc.returncode == 0 else (proc.stdout + proc.stderr)


def resource_usage(kernel: LoweredKernel, arch: str = "sm_90") -> dict[str, int]:
    """What ptxas allots the kernel compiled as MLX compiles it: ``registers`` a thread,
    ``spilled`` bytes (spill stores and loads), ``static_shared`` bytes (the kernel's dynamic
    shared memory, `LoweredKernel.options`' ``shared_memory``, comes on top)."""
    with tempfile.TemporaryDirectory() as tmp:
        path = pathlib.Path(tmp) / "unit.cu"
        path.write_text(wrapped_source(kernel))
        cmd = [nvcc(), f"-arch={arch}", "-std=c++17", "-cubin", "-Xptxas", "-v", "-I", str(INCLUDE),
               "-o", str(pathlib.Path(tmp) / "unit.cubin"), str(path)]
        proc = subprocess.run(cmd, capture_output=True, text=True, timeout=600)
    text = proc.stdout + proc.stderr
    if proc.returncode:
        raise RuntimeError(f"nvcc failed on {kernel.name}:\n{text}")

    def number(pattern: str) -> int:
        found = re.search(pattern, text)
        return int(found.group(1)) if found else 0

    return {"registers": number(r"Used (\d+) registers"),
            "spilled": number(r"(\d+) bytes spill stores") + number(r"(\d+) bytes spill loads"),
            "static_shared": number(r"(\d+) bytes smem")}
