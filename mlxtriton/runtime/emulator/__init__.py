"""Runtime layer: the kernel emulator. Runs a generated Metal or CUDA kernel off the GPU, in CI:
the exact source MLX would compile for it (MLX's wrapper around our body), translated line for
line and compiled as C++ with the host compiler against an implementation of the device
library the kernel uses, then executed as MLX dispatches it (``runtime.cpp``): grid counted in
threads, each threadgroup's (block's) threads as cooperative fibers, so barriers and 32-lane
SIMD-group (warp) operations are exact. Out-of-bounds or misaligned device accesses, reads of
unwritten threadgroup (shared) memory, races on it, divergent barriers, shuffles from inactive
lanes and output elements never (or twice) written fail the launch with an `EmulatorError`
naming the kernel and the line.

Two front ends share that runtime. ``metal``: ``mx.fast.metal_kernel``'s source and Metal's
dispatch (threadgroups clamped to the grid), against an implementation of the Metal standard
library; limits of an Apple GPU (1024 threads and 32 KB of threadgroup memory a threadgroup).
``cuda``: ``mx.fast.cuda_kernel``'s translation unit as MLX hands it to NVRTC, against an
implementation of the CUDA device API our kernels use (``__half`` and ``__nv_bfloat16`` with
CUDA's rounding, warp shuffles and votes, ``__syncthreads``, static and dynamic shared memory,
the inline PTX the CUDA dialect emits, ``__CUDA_ARCH__`` 900 as on an H100), launched in whole
blocks as MLX launches it: the threads of the last block past the grid's end run, and whatever
they touch is checked; a block above the kernel's ``__launch_bounds__`` or 1024 threads, or
shared memory past 48 KB static / 227 KB in all, fails the launch.

What it does not model: timing, the GPU's exact rounding of transcendental functions (the C
library's are used; PTX's ``ex2.approx`` is the C library's exp2 with its flushing), the
contraction of a * b + c into one fused multiply-add that NVRTC performs by default, registers
and occupancy, and atomics on CUDA. ``MLXTRITON_INTERPRET=metal`` / ``=cuda`` runs every kernel
a program launches through it (runtime/launch.py). May import the codegen's LoweredKernel and
graph dtypes.
"""

from __future__ import annotations

import ctypes
import math
import threading
from types import ModuleType
from typing import Sequence

import numpy as np

from mlxtriton.codegen.render import LoweredKernel
from mlxtriton.runtime.emulator import _build, cuda, metal
from mlxtriton.runtime.emulator._build import BuildError, compiler
from mlxtriton.runtime.emulator._front import Param, TranslationError, Wrapped

__all__ = ["BuildError", "CudaEmulatorError", "EmulatedKernel", "EmulatorError",
           "MetalEmulatorError", "TranslationError", "compiler", "emulate", "has_compiler",
           "prepare", "run", "storage_dtype", "wrap"]

FRONTS: dict[str, ModuleType] = {"metal": metal, "cuda": cuda}


def has_compiler() -> bool:
    """Whether a C++ compiler for the emulator is installed."""
    try:
        compiler()
    except BuildError:
        return False
    return True


class EmulatorError(RuntimeError):
    """A kernel did something the GPU leaves undefined (or that MLX would return garbage for)."""


class MetalEmulatorError(EmulatorError):
    """`EmulatorError` of a Metal kernel."""


class CudaEmulatorError(EmulatorError):
    """`EmulatorError` of a CUDA kernel."""


_ERRORS = {"metal": MetalEmulatorError, "cuda": CudaEmulatorError}


class _Buffer(ctypes.Structure):  # emu_rt.h: Buffer
    _fields_ = [("data", ctypes.c_void_p), ("nbytes", ctypes.c_int64), ("elem_size", ctypes.c_int64),
                ("writable", ctypes.c_int32), ("initialised", ctypes.c_int32),
                ("name", ctypes.c_char_p), ("writer", ctypes.c_void_p)]


class _Launch(ctypes.Structure):  # emu_rt.h: Launch
    _fields_ = [("grid", ctypes.c_uint32 * 3), ("threadgroup", ctypes.c_uint32 * 3),
                ("n_buffers", ctypes.c_int32), ("check_unwritten", ctypes.c_int32),
                ("buffers", ctypes.POINTER(_Buffer)), ("groups", ctypes.POINTER(ctypes.c_int64)),
                ("n_groups", ctypes.c_int64), ("model", ctypes.c_int32),
                ("max_threads", ctypes.c_int32), ("dynamic_shared", ctypes.c_int64),
                ("error_line", ctypes.c_int32), ("error", ctypes.c_char * 2048)]


_MODELS = {"metal": 0, "cuda": 1}  # emu_rt.h: Model
_MAX_NDIM = 10  # CUDA's Shape and Strides hold this many (mlx/backend/cuda/device/config.h)


def storage_dtype(dtype: str) -> np.dtype:
    """The NumPy dtype the emulator returns for an MLX dtype name: bfloat16 as ml_dtypes'
    bfloat16 where installed, else its bits as uint16."""
    if dtype == "bfloat16":
        try:
            import ml_dtypes

            return np.dtype(ml_dtypes.bfloat16)
        except ImportError:
            return np.dtype(np.uint16)
    return np.dtype(dtype)


def _front(kernel: LoweredKernel) -> ModuleType:
    if kernel.target not in FRONTS:
        raise ValueError(f"the emulator runs Metal and CUDA kernels; {kernel.name} is a "
                         f"{kernel.target} kernel")
    return FRONTS[kernel.target]


def wrap(kernel: LoweredKernel) -> Wrapped:
    """The source MLX builds for ``kernel`` (`metal.wrap` or `cuda.wrap`, by its target)."""
    return _front(kernel).wrap(kernel)


class EmulatedKernel:
    """One generated kernel, compiled for the emulator; call it with NumPy inputs."""

    def __init__(self, kernel: LoweredKernel):
        front = _front(kernel)
        self.kernel = kernel
        self.wrapped: Wrapped = front.wrap(kernel)
        self.translated = front.translate(self.wrapped.source)
        key = _build.key(kernel.target + "\0" + self.translated.text + repr(self.translated.params))
        symbol = f"mt_launch_{key}"
        text = front.unit(self.translated, kernel.name, f"mtk_{key}", symbol)
        self.unit = _build.Unit(key, symbol, text, kernel.target)
        self._entry = None

    def __call__(self, inputs: Sequence[np.ndarray], groups: Sequence[int] | None = None
                 ) -> list[np.ndarray]:
        """Launch on ``inputs`` (NumPy arrays of the kernel's input shapes; any dtype of the
        right element size, so bfloat16 may come as ml_dtypes' bfloat16 or as uint16 bits).

        ``groups`` runs only those threadgroups (linear ids, x fastest): the outputs they do not
        write come back as zeros (untouched pages of a large output are never mapped), and
        nothing checks that every element is written. Without it, outputs start as 0xff bytes
        (NaN), and every element must be written.

        Returns:
            The outputs, of `storage_dtype`.

        Raises:
            EmulatorError: the kernel failed a check (`MetalEmulatorError` or
                `CudaEmulatorError`); the message names the kernel, the thread and the line of
                the wrapped source.
        """
        k = self.kernel
        if len(inputs) != len(k.input_names):
            raise ValueError(f"{k.name} takes {len(k.input_names)} inputs, got {len(inputs)}")
        arrays: dict[str, np.ndarray] = {}
        for name, shape, dtype, a in zip(k.input_names, k.input_shapes, k.input_dtypes, inputs):
            a = np.asarray(a)
            if tuple(a.shape) != tuple(shape) or a.dtype.itemsize != storage_dtype(dtype).itemsize:
                raise ValueError(f"{k.name}: input {name} must be {dtype}{list(shape)}, got "
                                 f"{a.dtype}{list(a.shape)}")
            arrays[name] = np.ascontiguousarray(a)  # ensure_row_contiguous
        outputs = []
        options = dict(k.options)
        init = dict(k.call_kwargs()).get("init_value")
        for name, shape, dtype in zip(k.output_names, k.output_shapes, k.output_dtypes):
            if groups is not None:
                out = np.zeros(shape, storage_dtype(dtype))
            elif init is None:
                out = np.empty(shape, storage_dtype(dtype))
                out.reshape(-1).view(np.uint8)[:] = 0xFF
            else:
                out = np.full(shape, init, dtype=np.float32).astype(storage_dtype(dtype))
            arrays[name] = out
            outputs.append(out)
        buffers = (_Buffer * sum(p.kind != "attribute" for p in self.translated.params))()
        keep = []
        for p in self.translated.params:
            if p.kind == "attribute":
                continue
            a = self._argument(p, arrays)
            keep.append(a)
            name = p.name.encode()
            keep.append(name)
            buffers[p.index] = _Buffer(a.ctypes.data, a.nbytes, a.itemsize, int(p.kind == "output"),
                                       int(init is not None), name, None)
        launch = _Launch()
        launch.grid[:] = k.grid
        launch.threadgroup[:] = k.threadgroup
        launch.n_buffers = len(buffers)
        launch.buffers = buffers
        launch.check_unwritten = int(init is None and groups is None)
        launch.model = _MODELS[k.target]
        launch.max_threads = self.translated.max_threads
        launch.dynamic_shared = int(options.get("shared_memory", 0)) if k.target == "cuda" else 0
        if groups is not None:
            ids = np.ascontiguousarray(groups, dtype=np.int64)
            keep.append(ids)
            launch.groups = ids.ctypes.data_as(ctypes.POINTER(ctypes.c_int64))
            launch.n_groups = len(ids)
        if self._entry is None:
            self._entry = _build.entry(self.unit)
        with _RUNNING:  # the runtime's state is global to its library: one launch at a time
            failed = self._entry(ctypes.addressof(launch))
        if failed:
            raise _ERRORS[k.target](self._message(launch))
        return outputs

    def _argument(self, p: Param, arrays: dict[str, np.ndarray]) -> np.ndarray:
        k = self.kernel
        if p.name in arrays:
            a = arrays[p.name]
        else:
            base, _, what = p.name.rpartition("_")
            if base not in arrays or what not in ("shape", "strides", "ndim"):
                raise TranslationError(f"{k.name}: no array for kernel parameter {p.name}")
            shape = arrays[base].shape
            if what == "shape":
                a = np.asarray(shape, np.int32)
            elif what == "strides":
                a = np.asarray([math.prod(shape[i + 1:]) for i in range(len(shape))], np.int64)
            else:
                a = np.asarray(len(shape), np.int32)
            if p.kind == "value" and what != "ndim":  # CUDA's Shape / Strides: _MAX_NDIM slots
                a = np.concatenate([a, np.zeros(_MAX_NDIM - len(a), a.dtype)])
        if a.itemsize != p.element_bytes:
            raise TranslationError(f"{k.name}: parameter {p.name} is {p.type} ({p.element_bytes} "
                                   f"bytes), its array has {a.itemsize}-byte elements")
        return a

    def _message(self, launch: _Launch) -> str:
        text = launch.error.decode(errors="replace")
        line = launch.error_line
        lines = self.wrapped.source.splitlines()
        where = f"\n  line {line}: {lines[line - 1].strip()}" if 0 < line <= len(lines) else ""
        return f"kernel {self.kernel.name}: {text}{where}"


_KERNELS: dict[tuple[str, str], EmulatedKernel] = {}
_RUNNING = threading.Lock()


def emulate(kernel: LoweredKernel) -> EmulatedKernel:
    """The emulated kernel (compiled on its first call, or by `prepare`)."""
    wrapped = wrap(kernel)
    found = _KERNELS.get((kernel.target, wrapped.source))
    if found is None or (found.kernel.grid, found.kernel.threadgroup, found.kernel.options) != (
            kernel.grid, kernel.threadgroup, kernel.options):
        found = _KERNELS[kernel.target, wrapped.source] = EmulatedKernel(kernel)
    return found


def prepare(kernels: Sequence[LoweredKernel]) -> list[EmulatedKernel]:
    """Compile many kernels at once (one translation unit per processor, in parallel): far faster
    than compiling each on its first call. A kernel that does not compile raises `BuildError`
    when it is launched, not here."""
    emulated = [emulate(k) for k in kernels]
    _build.build([e.unit for e in emulated])
    return emulated


def run(kernel: LoweredKernel, inputs: Sequence[np.ndarray], groups: Sequence[int] | None = None
        ) -> list[np.ndarray]:
    """Launch ``kernel`` in the emulator (see `EmulatedKernel.__call__`), and the kernels it
    chains (`LoweredKernel.then`: each on inputs and outputs of the one before; ``groups`` then
    runs every threadgroup).

    Example:
        >>> import numpy as np
        >>> from mlxtriton.codegen.render import lower
        >>> from mlxtriton.codegen.region import RegionBuilder
        >>> b = RegionBuilder("double")
        >>> x = b.input((1000,), "float32", "x")
        >>> region = b.build([b.op("Add", x, x)])
        >>> x = np.ones(1000, np.float32)
        >>> [float(run(lower(region, dialect), [x])[0].sum()) for dialect in ("metal", "cuda")]
        [2000.0, 2000.0]
    """
    if kernel.then is None:
        return emulate(kernel)(inputs, groups)
    both = [*inputs, *emulate(kernel)(inputs)]
    return run(kernel.then, [both[i] for i in kernel.then_arguments()])
