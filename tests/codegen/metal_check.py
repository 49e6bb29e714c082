"""Test tooling: type-check a generated Metal kernel exactly as MLX wraps it.

MLX writes the kernel signature around the body. Inside ``mx.export_function`` even a CPU-only
MLX records a metal_kernel call as a CustomKernel primitive whose arguments carry the full wrapped
source, so the check compiles MLX's own wrapping, not a reimplementation of it. clang (libclang)
then parses it as C++17 against ``metal_include/metal_stdlib``, a stub of the Metal standard
library written from Apple's Metal Shading Language Specification; any diagnostic fails.

Test code: it calls ``mx.fast.metal_kernel`` (codegen itself never does).
"""

from __future__ import annotations

import pathlib
import re

import mlx.core as mx

from mlxtriton.codegen.render import LoweredKernel
from mlxtriton.graph import dtypes

INCLUDE = pathlib.Path(__file__).parent / "metal_include"

# Attributes MLX's wrapper and Metal kernels use (MSL 5.2): stripped before parsing, since clang
# does not know them; any other [[...]] stays and clang reports it.
_METAL_ATTRIBUTES = frozenset("""
kernel buffer host_name thread_position_in_grid threads_per_grid thread_position_in_threadgroup
threads_per_threadgroup threadgroup_position_in_grid threadgroups_per_grid grid_origin grid_size
dispatch_threads_per_threadgroup thread_index_in_threadgroup thread_index_in_simdgroup
simdgroup_index_in_threadgroup simdgroups_per_threadgroup threads_per_simdgroup
thread_execution_width quadgroup_index_in_threadgroup quadgroups_per_threadgroup
thread_index_in_quadgroup dispatch_quadgroups_per_threadgroup
dispatch_simdgroups_per_threadgroup
""".split())
_ATTRIBUTE = re.compile(r"\[\[\s*([A-Za-z_]\w*)\s*(\([^\]]*\))?\s*\]\]")


def wrapped_source(kernel: LoweredKernel) -> str:
    """The full source MLX compiles for this kernel (without its utilities header)."""
    assert kernel.target == "metal", kernel.target
    fn = mx.fast.metal_kernel(**kernel.kernel_kwargs())
    call = kernel.call_kwargs()
    call["output_dtypes"] = [dtypes.to_mx(d) for d in call["output_dtypes"]]
    arrays = [mx.zeros(s, dtype=dtypes.to_mx(d))
              for s, d in zip(kernel.input_shapes, kernel.input_dtypes)]
    entries: list[dict] = []

    def run(*xs):
        return fn(inputs=list(xs), **call)

    mx.export_function(entries.append, run, *arrays)
    (kernel_entry,) = [e for e in entries
                       if e.get("type") == "primitive" and e["name"] == "CustomKernel"]
    return kernel_entry["arguments"][1]


def strip_attributes(source: str) -> str:
    def sub(m: re.Match) -> str:
        return "" if m.group(1) in _METAL_ATTRIBUTES else m.group(0)

    return _ATTRIBUTE.sub(sub, source)


def diagnostics(source: str) -> list[str]:
    """clang's diagnostics for MLX-wrapped Metal source, as 'line:col: message' strings."""
    import clang.cindex as ci

    text = '#include "mlx_utils_standin.h"\n' + strip_attributes(source)
    index = ci.Index.create()
    tu = index.parse("kernel.metal.cpp", unsaved_files=[("kernel.metal.cpp", text)],
                     args=["-x", "c++", "-std=c++17", "-fsyntax-only", "-Wall", "-Wextra",
                           "-I", str(INCLUDE)])
    lines = text.splitlines()
    out = []
    for d in tu.diagnostics:
        loc = d.location
        where = f"{loc.line}:{loc.column}"
        context = lines[loc.line - 1].strip() if 0 < loc.line <= len(lines) else ""
        out.append(f"{where}: {d.spelling}  |  {context}")
    return out


def check(kernel: LoweredKernel) -> list[str]:
    return diagnostics(wrapped_source(kernel))
