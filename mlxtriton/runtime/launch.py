"""Runtime layer: the one place that constructs and calls ``mx.fast.metal_kernel`` /
``mx.fast.cuda_kernel``. A `Launcher` is built once per generated kernel (all string work and
argument conversion happen then) and called with arrays on every run. May import everything below.
"""

from __future__ import annotations

import os
from collections import OrderedDict
from typing import Callable, Sequence

import mlx.core as mx
import numpy as np

from mlxtriton.codegen.interpret import interpret
from mlxtriton.codegen.render import LoweredKernel
from mlxtriton.graph import dtypes

INTERPRET_ENV = "MLXTRITON_INTERPRET"

# Kernel objects by name: a name carries a hash of the source (codegen), and MLX caches compiled
# kernels by name, so one object per name serves every function that generates the same kernel.
_KERNELS: "OrderedDict[str, object]" = OrderedDict()
_KERNEL_CACHE_SIZE = 512


def interpreting() -> bool:
    """Whether ``MLXTRITON_INTERPRET=1`` asks kernels to run in the NumPy interpreter."""
    return os.environ.get(INTERPRET_ENV, "") not in ("", "0")


def _kernel_object(kernel: LoweredKernel):
    obj = _KERNELS.get(kernel.name)
    if obj is None:
        make = mx.fast.cuda_kernel if kernel.target == "cuda" else mx.fast.metal_kernel
        obj = _KERNELS[kernel.name] = make(**kernel.kernel_kwargs())
        if len(_KERNELS) > _KERNEL_CACHE_SIZE:
            _KERNELS.popitem(last=False)
    else:
        _KERNELS.move_to_end(kernel.name)
    return obj


def launcher(kernel: LoweredKernel, constants: Sequence[mx.array] = ()) -> Callable[..., list]:
    """A function ``run(*arrays) -> outputs`` launching ``kernel`` on the default device, with
    ``constants`` appended to the inputs. Built once; each call only calls MLX."""
    if interpreting():
        return _interpreter(kernel, constants)
    obj = _kernel_object(kernel)
    call = kernel.call_kwargs()
    call["output_dtypes"] = [dtypes.to_mx(d) for d in call["output_dtypes"]]
    constants = list(constants)

    def run(*arrays):
        return obj(inputs=[*arrays, *constants], **call)

    return run


def _interpreter(kernel: LoweredKernel, constants: Sequence[mx.array]) -> Callable[..., list]:
    """The NumPy interpreter of the kernel IR in place of a launch (debugging; any host)."""
    constants = list(constants)
    out_dtypes = [dtypes.to_mx(d) for d in kernel.output_dtypes]

    def run(*arrays):
        # np.require keeps a 0-d input 0-d (np.ascontiguousarray makes it 1-d)
        host = [np.require(dtypes.to_numpy(a), requirements='C') for a in (*arrays, *constants)]
        outs = interpret(kernel.kernel, host)
        return [mx.array(np.asarray(o, np.float32) if d == mx.bfloat16 else o).astype(d)
                for o, d in zip(outs, out_dtypes)]

    return run
