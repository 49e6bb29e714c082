"""Runtime layer (emulator): the Metal front end. ``mx.fast.metal_kernel``'s source as MLX writes
it (`_wrap`), translated line for line for the emulator (`_translate`) and compiled against an
implementation of the Metal standard library (``include/``); launched with Metal's dispatch
(grid counted in threads, threadgroups clamped to the grid). May import the codegen's
LoweredKernel and graph dtypes.
"""

from mlxtriton.runtime.emulator.metal._translate import translate, unit
from mlxtriton.runtime.emulator.metal._wrap import wrap

__all__ = ["translate", "unit", "wrap"]
