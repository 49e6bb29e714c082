"""Runtime layer (emulator, Metal front end): the source MLX compiles for a
``mx.fast.metal_kernel`` call, written as MLX writes it (``mlx/backend/common/metal_kernel.cpp``:
``write_signature``, the kernel name, the template instantiation), without MLX's utilities
header, which MLX prepends when it builds the library. ``tests/runtime`` checks it against the text MLX itself records
through ``mx.export_function``. May import the codegen's LoweredKernel and graph dtypes.
"""

from __future__ import annotations

import math
from typing import Any

from mlxtriton.codegen.render import LoweredKernel
from mlxtriton.runtime.emulator._front import Wrapped, type_name

# get_type_string (mlx/backend/common/compiled.cpp)
TYPE_NAMES = {
    "float32": "float", "float16": "float16_t", "bfloat16": "bfloat16_t", "float64": "double",
    "complex64": "complex64_t", "bool": "bool", "int8": "int8_t", "int16": "int16_t",
    "int32": "int32_t", "int64": "int64_t", "uint8": "uint8_t", "uint16": "uint16_t",
    "uint32": "uint32_t", "uint64": "uint64_t",
}

# Inputs with fewer elements are passed in the constant address space (max_constant_array_size)
MAX_CONSTANT_ARRAY_SIZE = 8

# The thread-position attributes MLX adds as parameters when their name occurs in the source,
# in MLX's order, with their types.
ATTRIBUTES = (
    ("dispatch_quadgroups_per_threadgroup", "uint"), ("dispatch_simdgroups_per_threadgroup", "uint"),
    ("dispatch_threads_per_threadgroup", "uint3"), ("grid_origin", "uint3"), ("grid_size", "uint3"),
    ("quadgroup_index_in_threadgroup", "uint"), ("quadgroups_per_threadgroup", "uint"),
    ("simdgroup_index_in_threadgroup", "uint"), ("simdgroups_per_threadgroup", "uint"),
    ("thread_execution_width", "uint"), ("thread_index_in_quadgroup", "uint"),
    ("thread_index_in_simdgroup", "uint"), ("thread_index_in_threadgroup", "uint"),
    ("thread_position_in_grid", "uint3"), ("thread_position_in_threadgroup", "uint3"),
    ("threadgroup_position_in_grid", "uint3"), ("threadgroups_per_grid", "uint3"),
    ("threads_per_grid", "uint3"), ("threads_per_simdgroup", "uint"),
    ("threads_per_threadgroup", "uint3"),
)


def _template_value(value: Any) -> str:
    if isinstance(value, bool):  # streamed by an ostream without boolalpha
        return "1" if value else "0"
    if isinstance(value, int):
        return str(value)
    return type_name(value, TYPE_NAMES)


def _template_hash(template_def: str) -> str:
    out, i = [], 0
    while i < len(template_def):
        c = template_def[i]
        if c in "<>":
            out.append("_")
        elif c == "," and template_def[i + 1:i + 2] == " ":
            out.append("_")
            i += 1
        else:
            out.append(c)
        i += 1
    return "".join(out)[:-1]


def wrap(kernel: LoweredKernel) -> Wrapped:
    """The source MLX builds for ``kernel`` called with inputs of its recorded shapes and dtypes.

    Example:
        >>> from mlxtriton.codegen.render import lower
        >>> from mlxtriton.codegen.region import RegionBuilder
        >>> b = RegionBuilder("double")
        >>> x = b.input((1024,), "float32", "x")
        >>> w = wrap(lower(b.build([b.op("Add", x, x)]), "metal"))
        >>> w.name.endswith("_float_float")
        True
    """
    if kernel.target != "metal":
        raise ValueError(f"the Metal emulator runs Metal kernels; {kernel.name} is a {kernel.target} kernel")
    source, header = kernel.source, kernel.header
    options = dict(kernel.options)
    atomic_outputs = bool(options.get("atomic_outputs", False))
    template = list(kernel.template)

    name = "custom_kernel_" + kernel.name
    template_def = ""
    if template:
        template_def = "<" + ", ".join(_template_value(v) for _, v in template) + ">"
        name += "_" + _template_hash(template_def)
    for shape, dtype in zip(kernel.input_shapes, kernel.input_dtypes):
        name += "_" + TYPE_NAMES[dtype]
        if len(shape) == 0:
            name += "s"
        elif math.prod(shape) < MAX_CONSTANT_ARRAY_SIZE:
            name += "c"
    for dtype in kernel.output_dtypes:
        name += "_" + TYPE_NAMES[dtype]

    out = [header]
    if template:
        kinds = []
        for pname, value in template:
            kind = "bool" if isinstance(value, bool) else "int" if isinstance(value, int) else "typename"
            kinds.append(f"{kind} {pname}")
        out.append("template <" + ", ".join(kinds) + ">\n")
    out.append(f"[[kernel]] void {name}(\n")
    attributes = [f"  {t} {a} [[{a}]]" for a, t in ATTRIBUTES if a in source]
    index = 0
    n_in, n_out = len(kernel.input_names), len(kernel.output_names)
    for iname, shape, dtype in zip(kernel.input_names, kernel.input_shapes, kernel.input_dtypes):
        location = "constant" if math.prod(shape) < MAX_CONSTANT_ARRAY_SIZE else "device"
        ref = "&" if len(shape) == 0 else "*"
        out.append(f"  const {location} {TYPE_NAMES[dtype]}{ref} {iname} [[buffer({index})]],\n")
        index += 1
        if len(shape) > 0:
            if iname + "_shape" in source:
                out.append(f"  const constant int* {iname}_shape [[buffer({index})]],\n")
                index += 1
            if iname + "_strides" in source:
                out.append(f"  const constant int64_t* {iname}_strides [[buffer({index})]],\n")
                index += 1
            if iname + "_ndim" in source:
                out.append(f"  const constant int& {iname}_ndim [[buffer({index})]],\n")
                index += 1
    for oname, dtype in zip(kernel.output_names, kernel.output_dtypes):
        type_string = TYPE_NAMES[dtype]
        if atomic_outputs:
            type_string = f"atomic<{type_string}>"
        out.append(f"  device {type_string}* {oname} [[buffer({index})]]")
        # MLX compares the buffer index (which counts shape parameters) with the number of
        # arrays: reproduced as it is
        out.append(",\n" if index < n_in + n_out - 1 or attributes else ") {\n")
        index += 1
    for i, attribute in enumerate(attributes):
        out.append(attribute + (",\n" if i < len(attributes) - 1 else ") {\n"))
    out.append(source + "\n}\n")
    if template:
        instance = name + template_def
        out.append(f'\ntemplate [[host_name("{name}")]] [[kernel]] decltype({instance}) {instance};\n')
    return Wrapped(name, "".join(out))
