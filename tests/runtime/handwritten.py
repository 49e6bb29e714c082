"""Hand-written kernels for the emulator's tests (test_emulator.py for both front ends,
test_metal_emulator.py and test_cuda_emulator.py for each one's own): a kernel from its body, the
check that its launch fails, and the values they run on."""

from __future__ import annotations

import numpy as np
import pytest

from mlxtriton.codegen.render import LoweredKernel
from mlxtriton.runtime import emulator
from mlxtriton.runtime.emulator import CudaEmulatorError, MetalEmulatorError

# What a kernel's header includes unless told otherwise
HEADERS = {"metal": "#include <metal_stdlib>\n", "cuda": "#include <cuda_fp16.h>\n#include <cuda_bf16.h>\n"}
ERRORS = {"metal": MetalEmulatorError, "cuda": CudaEmulatorError}
# The targets, to parametrize a test over: a test id "metal" or "cuda" would read as the device
# marker (tests/conftest.py)
TARGETS = [pytest.param("metal", id="Metal"), pytest.param("cuda", id="CUDA")]

X64 = [np.arange(64, dtype=np.float32)]
# Around half's and bfloat16's rounding ties, limits and subnormals, and the special values
SPECIAL = np.array([0.0, -0.0, 1.0, 1.0 + 2.0 ** -11, 1.0 + 3 * 2.0 ** -11, 1.0 + 2.0 ** -8,
                    1.0 + 3 * 2.0 ** -8, 65504.0, 65519.99, 65520.0, 1e-5, 6e-8, 3e-8, 2.9e-8, 1e30,
                    -3.0e38, np.inf, -np.inf, np.nan, 0.1, -2.5e-7, 3.3895314e38], np.float32)


def kernel(target: str, source: str, inputs: dict, outputs: dict, grid, threadgroup, name: str = "k",
           header: str | None = None, **fields) -> LoweredKernel:
    """A hand-written kernel of ``target`` ("metal" or "cuda"): ``inputs`` / ``outputs`` map names
    to (shape, dtype)."""
    return LoweredKernel(
        target=target, name=f"test_{name}", input_names=tuple(inputs), output_names=tuple(outputs),
        source=source, header=HEADERS[target] if header is None else header, ensure_row_contiguous=True,
        grid=tuple(grid), threadgroup=tuple(threadgroup),
        output_shapes=tuple(s for s, _ in outputs.values()),
        output_dtypes=tuple(d for _, d in outputs.values()),
        input_shapes=tuple(s for s, _ in inputs.values()),
        input_dtypes=tuple(d for _, d in inputs.values()), **fields)


def fails(k: LoweredKernel, inputs, *messages: str) -> str:
    """The message of the error ``k``'s launch on ``inputs`` fails with, which names the kernel and
    says each of ``messages``."""
    with pytest.raises(ERRORS[k.target]) as info:
        emulator.run(k, inputs)
    text = str(info.value)
    assert f"kernel {k.name}" in text
    for m in messages:
        assert m in text, text
    return text
