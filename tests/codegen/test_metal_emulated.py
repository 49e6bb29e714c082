"""Kernels executed as Metal by the emulator (runtime/emulator), where only the Metal front end
runs them: block sums kept in threadgroup memory, streamed column variances, an integer division
by zero, and on a Mac the emulator against the GPU. What both front ends run is in
test_emulated.py."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest

from mlxtriton.codegen.builder import build
from mlxtriton.codegen.kernel_ir import Ops
from mlxtriton.codegen.render import LoweredKernel, render
from mlxtriton.codegen.schedule import candidates, default, kernel_target
from mlxtriton.runtime import emulator
from mlxtriton.runtime.emulator import MetalEmulatorError
from tests.codegen import codegen_oracle as oracle
from tests.codegen.emulated import CASES, FRONTS, check, inputs_of
from tests.codegen.targets import target
from tests.codegen.test_checks import _extra_regions

pytestmark = pytest.mark.skipif(not emulator.has_compiler(), reason="no C++ compiler")


def test_block_sums_kept_in_threadgroup_memory_run_as_metal():
    # each thread's own slots of a threadgroup array, read back after the block's rows
    for region in (oracle.rms_norm_grad(shape=(24, 700), dtype="float16"),
                   oracle.gated_block_sum(shape=(16, 4096))):
        chosen = dataclasses.replace(default(region, target("metal")), block_sums_shared=True)
        kernel = render(build(region, chosen), "metal")
        assert kernel.kernel.arg.block_sums_shared
        check(kernel, region, oracle.random_inputs(region, seed=2))


@pytest.mark.parametrize("shape", [(3000, 37), (40, 9), (2, 3, 50, 33), (3, 5)])
def test_streamed_column_variances_take_one_pass_as_metal(shape):
    # Welford's update per lane and Chan's merge across lanes, lanes that see no element included
    # (4 lanes on a column of 3); data far from 0 (mean 1000, unit spread), where a one-pass sum of squares
    # minus the squared mean would lose every digit
    region = oracle.channel_moments(shape)
    streamed = [s for s in candidates(region, target("metal")) if not s.registers]
    assert streamed
    rng = np.random.default_rng(7)
    x = (1000.0 + rng.standard_normal(shape)).astype(np.float32)
    want_var = np.var(x.astype(np.float64).reshape(-1, shape[-1]), axis=0)
    for s in streamed[:6]:
        kernel = render(build(region, s), "metal")
        assert kernel.kernel.arg.passes == 2
        assert "sqdev" in {u.arg for u in kernel.kernel.toposort if u.op is Ops.REDUCE}
        check(kernel, region, oracle.random_inputs(region, seed=len(shape)))
        var = np.asarray(emulator.run(kernel, [x])[1], np.float64).reshape(-1)
        np.testing.assert_allclose(var, want_var, rtol=1e-3, atol=1e-4)  # naive: errors near 0.1


def test_an_integer_division_by_zero_is_reported():
    # as in MLX's own Metal kernels, x / 0 and x % 0 are undefined on the GPU (MLX's CPU
    # returns 0 and x); the emulator rejects them rather than pick a value
    name, region = next((n, r) for n, r in _extra_regions() if n == "int")
    inputs = oracle.random_inputs(region, seed=0)
    inputs[1][5] = 0
    with pytest.raises(MetalEmulatorError, match="integer division by zero"):
        emulator.run(FRONTS["metal"].kernel(region), inputs)


# -- on a Mac (pytest -m metal): the emulator against the GPU ----------------------------------

@pytest.fixture(scope="module")
def gpu_kernels() -> dict[str, LoweredKernel]:
    here = kernel_target("auto")
    out = {n: render(build(r, default(r, here)), "metal") for n, r in CASES.items()}
    emulator.prepare(list(out.values()))
    return out


@pytest.mark.metal
@pytest.mark.parametrize("name", sorted(CASES))
def test_emulator_matches_the_gpu(name, gpu_kernels):
    """The same kernel, rendered for this Mac's chip, launched on its GPU and in the emulator."""
    from tests.codegen.test_launch import launch

    kernel = gpu_kernels[name]
    inputs = inputs_of(name, CASES[name], seed=len(name))
    for g, e, d in zip(launch(kernel, inputs), emulator.run(kernel, inputs), kernel.output_dtypes):
        oracle.assert_close(e, g, d, scale=4.0)
