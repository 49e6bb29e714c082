"""Runtime layer (emulator): the CUDA front end. ``mx.fast.cuda_kernel``'s translation unit as
MLX hands it to NVRTC (`_wrap`), translated line for line for the emulator (`_translate`) and
compiled against an implementation of the CUDA device API our kernels use (``include/``, with
``__CUDA_ARCH__`` 900); launched as MLX launches it, in whole blocks. May import the codegen's
LoweredKernel and graph dtypes.
"""

from mlxtriton.runtime.emulator.cuda._translate import translate, unit
from mlxtriton.runtime.emulator.cuda._wrap import wrap

__all__ = ["translate", "unit", "wrap"]
