"""Codegen layer: one fused region -> one generated kernel for ``mx.fast.metal_kernel`` or
``mx.fast.cuda_kernel``. May import mlxtriton.graph and mlxtriton.hw; never the runtime or the
public API, and it never launches a kernel (only the runtime calls ``mx.fast.*_kernel``).

    Fused body Graph --region_from_graph--> Region (region.py)
        --build(region, schedule) (builder.py)--> kernel IR (kernel_ir.py)
        --render (render.py + dialects.py)--> LoweredKernel;  interpret (interpret.py) runs the
        kernel IR with NumPy. The schedule is a value (schedule.py): ``default(region, target)``
        by the chip's tuning data, or any of ``candidates(region, target)``.

Example:
    >>> from mlxtriton.codegen import RegionBuilder, lower
    >>> b = RegionBuilder("softmax")
    >>> y = b.op("Softmax", b.input((32768, 4096), "float32", "x"))
    >>> k = lower(b.build([y]), "cuda")
    >>> k.grid, k.threadgroup
    ((8388608, 1, 1), (256, 1, 1))
"""

from mlxtriton.codegen.builder import RegionError, ScheduleError, build
from mlxtriton.codegen.dialects import CUDA, DIALECTS, METAL, Dialect
from mlxtriton.codegen.from_graph import region_from_graph
from mlxtriton.codegen.interpret import interpret
from mlxtriton.codegen.kernel_ir import BuiltSchedule, Ops, UOp, print_kernel
from mlxtriton.codegen.region import Input, Op, Region, RegionBuilder, op
from mlxtriton.codegen.render import LoweredKernel, lower, render
from mlxtriton.codegen.schedule import Schedule, candidates, default, kernel_target

__all__ = [
    "Region", "Input", "Op", "op", "RegionBuilder", "region_from_graph", "build", "render", "lower", "interpret",
    "LoweredKernel", "Schedule", "BuiltSchedule", "default", "candidates", "kernel_target",
    "RegionError", "ScheduleError", "UOp", "Ops", "print_kernel", "Dialect", "METAL", "CUDA",
    "DIALECTS",
]
