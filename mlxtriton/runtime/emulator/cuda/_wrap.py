"""Runtime layer (emulator, CUDA front end): the translation unit MLX 0.32 hands NVRTC for a
``mx.fast.cuda_kernel`` call, written as MLX writes it (``mlx/backend/cuda/custom_kernel.cpp``:
``default_header``, ``build_kernel``, the kernel name with its template arguments' hash). A
CPU-only MLX cannot construct a cuda_kernel, so nothing records this text here;
``tests/codegen/cuda_check.py`` transcribes it independently for nvcc. May import the codegen's
LoweredKernel and graph dtypes.
"""

from __future__ import annotations

from typing import Any

from mlxtriton.codegen.render import LoweredKernel
from mlxtriton.runtime.emulator._front import Wrapped, type_name

# dtype_to_cuda_type (mlx/backend/cuda/utils.cpp)
TYPE_NAMES = {
    "bool": "bool", "int8": "int8_t", "int16": "int16_t", "int32": "int32_t", "int64": "int64_t",
    "uint8": "uint8_t", "uint16": "uint16_t", "uint32": "uint32_t", "uint64": "uint64_t",
    "float16": "__half", "bfloat16": "__nv_bfloat16", "float32": "float", "float64": "double",
    "complex64": "mlx::core::cu::complex64_t",
}

DEFAULT_HEADER = """
#include "mlx/backend/cuda/device/utils.cuh"

#include <cooperative_groups.h>

"""


def _template_hash(template: tuple[tuple[str, Any], ...]) -> str:
    """template_arguments_hash: ``_<int>``, ``_t`` / ``_f``, ``_<type name>`` per argument."""
    out = []
    for _, value in template:
        if isinstance(value, bool):
            out.append("_t" if value else "_f")
        elif isinstance(value, int):
            out.append(f"_{value}")
        else:
            out.append("_" + type_name(value, TYPE_NAMES))
    return "".join(out)


def wrap(kernel: LoweredKernel) -> Wrapped:
    """The source MLX compiles for ``kernel`` called with inputs of its recorded shapes and dtypes.

    Example:
        >>> from mlxtriton.codegen.render import lower
        >>> from mlxtriton.codegen.region import RegionBuilder
        >>> b = RegionBuilder("double")
        >>> x = b.input((1024,), "float32", "x")
        >>> w = wrap(lower(b.build([b.op("Add", x, x)]), "cuda"))
        >>> w.name.startswith("custom_kernel_mlxt_double_"), "const float* x," in w.source
        (True, True)
    """
    if kernel.target != "cuda":
        raise ValueError(f"the CUDA front end runs CUDA kernels; {kernel.name} is a {kernel.target} "
                         "kernel")
    if not kernel.output_names:
        raise ValueError("[custom_kernel] Must specify at least one output.")
    source = kernel.source
    name = "custom_kernel_" + kernel.name + _template_hash(kernel.template)
    out = [DEFAULT_HEADER, kernel.header, "namespace mlx::core::cu {\n\n",
           "namespace cg = cooperative_groups;\n\n", f"__global__ void {name}(\n"]
    for iname, shape, dtype in zip(kernel.input_names, kernel.input_shapes, kernel.input_dtypes):
        out.append(f"    const {TYPE_NAMES[dtype]}* {iname},\n")
        if len(shape) > 0:
            if iname + "_shape" in source:
                out.append(f"    const __grid_constant__ Shape {iname}_shape,\n")
            if iname + "_strides" in source:
                out.append(f"    const __grid_constant__ Strides {iname}_strides,\n")
            if iname + "_ndim" in source:
                out.append(f"    const __grid_constant__ int {iname}_ndim,\n")
    for i, (oname, dtype) in enumerate(zip(kernel.output_names, kernel.output_dtypes)):
        last = i == len(kernel.output_names) - 1
        out.append(f"    {TYPE_NAMES[dtype]}* {oname}" + (") {\n" if last else ",\n"))
    if kernel.template:
        for pname, value in kernel.template:
            if isinstance(value, bool):
                out.append(f"  constexpr bool {pname} = {'true' if value else 'false'};\n")
            elif isinstance(value, int):
                out.append(f"  constexpr int {pname} = {value};\n")
            else:
                out.append(f"  using {pname} = {type_name(value, TYPE_NAMES)};\n")
        out.append("\n")
    out.append(source + "\n}\n\n} // namespace mlx::core::cu\n")
    return Wrapped(name, "".join(out))
