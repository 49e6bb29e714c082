"""The emulator on hand-written kernels that both front ends run alike: arithmetic in half
precision, and a compile error. What differs between them (MLX's wrapping, dispatch, SIMD-groups
and warps, threadgroup and shared memory, the checks that fail a launch) is in
test_metal_emulator.py and test_cuda_emulator.py."""

from __future__ import annotations

import numpy as np
import pytest

from mlxtriton.runtime import emulator
from tests.runtime.handwritten import TARGETS, kernel

pytestmark = pytest.mark.skipif(not emulator.has_compiler(), reason="no C++ compiler")

# a * b + a / b - 3, rounded to half after each operation, and a half times a float in float
HALF_ARITHMETIC = {
    "metal": ("const uint i = thread_position_in_grid.x;\n"
              "const half a = x[i], b = y[i];\nout[i] = a * b + a / b - half(3);\n"
              "wide[i] = a * 1.0009765625f;\n"),  # half * float is float
    "cuda": ("const int i = threadIdx.x;\nconst __half a = x[i], b = y[i];\n"
             "out[i] = a * b + a / b - __half(3);\n"
             "wide[i] = __half2float(a) * 1.0009765625f;\n"),  # __half * float is ambiguous
}


@pytest.mark.parametrize("target", TARGETS)
def test_half_arithmetic_rounds_every_operation(target):
    rng = np.random.default_rng(1)
    x = rng.standard_normal(64).astype(np.float16)
    y = (rng.standard_normal(64) + 3).astype(np.float16)
    k = kernel(target, HALF_ARITHMETIC[target], {"x": ((64,), "float16"), "y": ((64,), "float16")},
               {"out": ((64,), "float16"), "wide": ((64,), "float32")}, (64, 1, 1), (64, 1, 1),
               name="halfops")
    out, wide = emulator.run(k, [x, y])
    np.testing.assert_array_equal(out, (x * y + x / y) - np.float16(3))
    np.testing.assert_array_equal(wide, x.astype(np.float32) * np.float32(1.0009765625))


@pytest.mark.parametrize("target", TARGETS)
def test_a_compile_error_names_the_kernel_and_line(target):
    k = kernel(target, "out[0] = undeclared_name;\n", {}, {"out": ((1,), "float32")}, (1, 1, 1), (1, 1, 1),
               name="broken")
    with pytest.raises(emulator.BuildError, match=r"test_broken:\d+:\d+: error: .undeclared_name"):
        emulator.run(k, [])
