"""Runtime layer: the one place that constructs and calls ``mx.fast.metal_kernel`` /
``mx.fast.cuda_kernel``. A `Launcher` is built once per generated kernel (all string work and
argument conversion happen then) and called with arrays on every run. ``MLXTRITON_INTERPRET``
runs kernels off the device instead: ``1`` in the NumPy interpreter of the kernel IR, ``metal``
or ``cuda`` in the kernel emulator (the exact Metal or CUDA source, executed as C++). On an Apple
GPU the first use
of each generated kernel is a guarded launch: a kernel that fails to compile or to launch there
raises `KernelUnavailable`, and its region runs as MLX ops. May import everything below.
"""

from __future__ import annotations

import os
import warnings
from collections import OrderedDict
from typing import Callable, Sequence

import mlx.core as mx
import numpy as np

from mlxtriton.codegen.builder import RegionError
from mlxtriton.codegen.interpret import interpret
from mlxtriton.codegen.render import LoweredKernel
from mlxtriton.graph import dtypes

INTERPRET_ENV = "MLXTRITON_INTERPRET"

# Kernel objects by name: a name carries a hash of the source (codegen), and MLX caches compiled
# kernels by name, so one object per name serves every function that generates the same kernel.
_KERNELS: "OrderedDict[str, object]" = OrderedDict()
_KERNEL_CACHE_SIZE = 512

# The first use of each Metal kernel on this GPU: None, it ran; else why it cannot run here.
_FIRST_USE: dict[str, str | None] = {}


class KernelUnavailable(RegionError):
    """A generated kernel that fails to compile or launch on this GPU (its region runs as MLX
    ops instead)."""


def interpreting() -> bool:
    """Whether ``MLXTRITON_INTERPRET`` asks kernels to run off the device (``1``: the NumPy
    interpreter; ``metal`` / ``cuda``: the kernel emulator). Either runs eagerly, outside
    ``mx.compile``."""
    return os.environ.get(INTERPRET_ENV, "") not in ("", "0")


def emulating() -> str | None:
    """The dialect whose kernels ``MLXTRITON_INTERPRET`` asks to run in the kernel emulator
    (``metal`` or ``cuda``), if it does."""
    mode = os.environ.get(INTERPRET_ENV, "").lower()
    return mode if mode in ("metal", "cuda") else None


def unavailable(kernel_name: str) -> str | None:
    """Why the generated kernel named ``kernel_name`` could not run on this GPU, if it could not
    (its region runs as MLX ops; ``explain`` shows this)."""
    return _FIRST_USE.get(kernel_name)


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


def launcher(kernel: LoweredKernel, constants: Sequence[mx.array] = (),
             output_shapes: Sequence[tuple[int, ...]] | None = None) -> Callable[..., list]:
    """A function ``run(*arrays) -> outputs`` launching ``kernel`` on the default device, with
    ``constants`` appended to the inputs. Built once; each call only calls MLX.
    ``output_shapes``: the outputs in these shapes instead, each of its output's size (a kernel
    writes row-major buffers: a reshape of its output costs nothing, `runtime.views`).

    Raises:
        KernelUnavailable: a Metal kernel that fails to compile or launch on this GPU (checked
            once per kernel, on its first use; a warning names the kernel and the reason).
    """
    if interpreting():
        dialect = emulating()
        run = _emulator(kernel, constants, dialect) if dialect else _interpreter(kernel, constants)
        if output_shapes is None:
            return run
        return lambda *arrays: [mx.reshape(o, s) for o, s in zip(run(*arrays), output_shapes)]
    obj = _kernel_object(kernel)
    call = kernel.call_kwargs()
    call["output_dtypes"] = [dtypes.to_mx(d) for d in call["output_dtypes"]]
    if output_shapes is not None and kernel.then is None:
        call["output_shapes"] = [list(s) for s in output_shapes]
    constants = list(constants)
    if kernel.then is not None:  # a kernel on this one's inputs and outputs: the pair's outputs
        then, pick = launcher(kernel.then, output_shapes=output_shapes), kernel.then_arguments()

        def run(*arrays):
            inputs = [*arrays, *constants]
            both = [*inputs, *obj(inputs=inputs, **call)]
            return then(*[both[i] for i in pick])
    else:
        def run(*arrays):
            return obj(inputs=[*arrays, *constants], **call)

    if kernel.target == "metal" and _on_apple_gpu():
        _first_use(kernel, run, len(kernel.input_names) - len(constants))
    return run


def _on_apple_gpu() -> bool:
    return mx.metal.is_available() and mx.default_device().type == mx.gpu


def _first_use(kernel: LoweredKernel, run: Callable[..., list], n_arrays: int) -> None:
    """Launch ``kernel`` once on zeros, where MLX compiles its library and pipeline and checks the
    threadgroup against the pipeline's maximum (which the kernel's register use can lower below
    1024), so that a failure turns into a fallback instead of an error in a later ``mx.eval``."""
    if kernel.name not in _FIRST_USE:
        arrays = [mx.zeros(s, dtypes.to_mx(d)) for s, d in
                  zip(kernel.input_shapes[:n_arrays], kernel.input_dtypes[:n_arrays])]
        try:
            mx.eval(run(*arrays))
            _FIRST_USE[kernel.name] = None
        except (RuntimeError, ValueError) as err:
            lines = [ln.strip() for ln in str(err).strip().splitlines() if ln.strip()]
            reason = "; ".join(lines[:3]) or type(err).__name__
            _FIRST_USE[kernel.name] = reason
            _KERNELS.pop(kernel.name, None)
            warnings.warn(f"mlxtriton: generated kernel {kernel.name} cannot run on this GPU "
                          f"({reason}); its region runs as MLX ops", RuntimeWarning, stacklevel=2)
    reason = _FIRST_USE[kernel.name]
    if reason is not None:
        raise KernelUnavailable(f"generated kernel {kernel.name} cannot run on this GPU: {reason}")


def _interpreter(kernel: LoweredKernel, constants: Sequence[mx.array]) -> Callable[..., list]:
    """The NumPy interpreter of the kernel IR in place of a launch (debugging; any host)."""
    if kernel.kernel is None:
        raise RegionError(f"{kernel.name} is written as a template, not kernel IR: the NumPy "
                          "interpreter cannot run it, so its region runs as MLX ops")
    constants = list(constants)
    out_dtypes = [dtypes.to_mx(d) for d in kernel.output_dtypes]

    def run(*arrays):
        # np.require keeps a 0-d input 0-d (np.ascontiguousarray makes it 1-d); an input of
        # another shape of the same size is the same row-major buffer (runtime/views)
        host = [np.require(dtypes.to_numpy(a), requirements='C').reshape(s)
                for a, s in zip((*arrays, *constants), kernel.input_shapes)]
        outs = interpret(kernel.kernel, host)
        return [mx.array(np.asarray(o, np.float32) if d == mx.bfloat16 else o).astype(d)
                for o, d in zip(outs, out_dtypes)]

    return run


def _emulator(kernel: LoweredKernel, constants: Sequence[mx.array], dialect: str
              ) -> Callable[..., list]:
    """The kernel emulator in place of a launch: the kernel's source in ``dialect`` (Metal or
    CUDA), as MLX would compile it, run on the host (runtime/emulator)."""
    from mlxtriton.runtime import emulator

    if kernel.target != dialect:
        names = {"metal": "Metal", "cuda": "CUDA"}
        raise ValueError(f"MLXTRITON_INTERPRET={dialect} runs {names.get(dialect, dialect)} "
                         f"kernels; {kernel.name} is a {kernel.target} kernel (this program renders "
                         f"{kernel.target}: optimize it for a chip of the other dialect)")
    constants = list(constants)
    last = kernel.chain()[-1]

    def run(*arrays):
        # an input of another shape of the same size is the same row-major buffer (runtime/views)
        host = [_to_host(a).reshape(s) for a, s in zip((*arrays, *constants), kernel.input_shapes)]
        return [_from_host(o, d) for o, d in zip(emulator.run(kernel, host), last.output_dtypes)]

    return run


def _to_host(a: mx.array) -> np.ndarray:
    """An array's bytes as NumPy (bfloat16 as its uint16 bits)."""
    return np.array(a.view(mx.uint16) if a.dtype == mx.bfloat16 else a)


def _from_host(a: np.ndarray, dtype: str) -> mx.array:
    if dtype == "bfloat16":
        return mx.array(a.view(np.uint16)).view(mx.bfloat16)
    return mx.array(a)
