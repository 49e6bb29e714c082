"""What the emulated-kernel tests share (test_emulated.py for both front ends, test_metal_emulated.py
and test_cuda_emulated.py for each one's own): each front end as these tests run it, the device
tests' cases, and the check of an emulated kernel against the interpreter and the oracle."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from mlxtriton.codegen.interpret import interpret
from mlxtriton.codegen.render import LoweredKernel, render
from mlxtriton.runtime import emulator
from mlxtriton.runtime.emulator import CudaEmulatorError, EmulatorError, MetalEmulatorError
from tests.codegen import codegen_oracle as oracle
from tests.codegen.targets import built
from tests.codegen.test_checks import _extra_regions
from tests.codegen.test_launch import CASES as DEVICE_CASES


@dataclass(frozen=True)
class Front:
    """A front end of the emulator, as these tests run it."""

    dialect: str
    name: str  # as a failure message spells it
    error: type[EmulatorError]
    row_chips: tuple[str, ...]  # the chips random row kernels are scheduled for
    split_chip: str  # the chip a held column split between registers and memory is scheduled for
    split_groups: int  # threadgroups per core the split's launch bound leaves room for (0: no bound)
    # Ops whose float32 zero results may carry another sign than MLX's
    signed_zeros: frozenset[str] = frozenset()

    def kernel(self, region) -> LoweredKernel:
        """The kernel of ``region`` as the device tests render it, for the dialect's default chip
        (tests/codegen/targets.py: an M3, an H200)."""
        return render(built(region, self.dialect), self.dialect)


FRONTS = {
    "metal": Front("metal", "Metal", MetalEmulatorError, ("m1", "m3", "m5", "tiny"), "metal", 0),
    # PTX's max.NaN.f32 / min.NaN.f32 (the dialect's float mt_max / mt_min from sm_80) order -0.0
    # below +0.0, where MLX's Maximum returns its second operand of two equal ones: the sign of a
    # zero that two zeros produce may differ from MLX's.
    "cuda": Front("cuda", "CUDA", CudaEmulatorError, ("h100", "h200"), "h100", 2,
                  frozenset({"Maximum", "Minimum"})),
}

# The device tests' shapes (tests/codegen/test_launch.py), which reach every schedule, for
# float32 / float16 / bfloat16, and the regions of the source checks
CASES = dict(DEVICE_CASES)
CASES.update((f"extra-{n}", r) for n, r in _extra_regions())


def inputs_of(name: str, region, seed: int) -> list[np.ndarray]:
    """Random inputs of case ``name``."""
    inputs = oracle.random_inputs(region, seed)
    if name == "extra-int":  # a zero divisor is undefined on the GPU (test_metal_emulated.py)
        inputs[1][inputs[1] == 0] = 1
    return inputs


def check(kernel: LoweredKernel, region, inputs: list[np.ndarray], nan_positions: bool = False) -> None:
    """The emulated kernel against the interpreter of its kernel IR and the oracle of its region."""
    got = emulator.run(kernel, inputs)
    want = interpret(kernel.kernel, inputs)
    reference = oracle.evaluate(region, inputs)
    for g, w, r, d in zip(got, want, reference, kernel.output_dtypes):
        oracle.assert_close(g, w, d, scale=4.0)
        oracle.assert_close(g, r, d, scale=4.0)
        if nan_positions:
            assert np.array_equal(np.isnan(np.asarray(g, np.float64)), np.isnan(np.asarray(w, np.float64)))
