"""Kernels executed as CUDA by the emulator's CUDA front end (runtime/emulator: whole blocks as
MLX launches them, 32-lane warps, __syncthreads, static and dynamic shared memory, the inline PTX
of the dialect, bounds-checked buffers), where only the CUDA front end runs them: the projection
and attention templates rendered for the H200, a split column past 48 KB of shared memory under
its launch bound, threads past the grid's end that only a guard keeps in bounds, and a race
between warps. What both front ends run is in test_emulated.py."""

from __future__ import annotations

import dataclasses
import itertools
import re

import numpy as np
import pytest

from mlxtriton.codegen.attention import render_attention
from mlxtriton.codegen.builder import build
from mlxtriton.codegen.projection import render_projection
from mlxtriton.codegen.region import RegionBuilder
from mlxtriton.codegen.render import LoweredKernel, render
from mlxtriton.graph.attention import decode_attention
from mlxtriton.graph.core import Var
from mlxtriton.runtime import emulator
from mlxtriton.runtime.emulator import CudaEmulatorError
from mlxtriton.runtime.launch import _from_host, _to_host
from tests.codegen import codegen_oracle as oracle
from tests.codegen import test_attention as attention_cases
from tests.codegen import test_projection as projection_cases
from tests.codegen.emulated import FRONTS, check
from tests.codegen.targets import built
from tests.codegen.test_schedule import split_column_softmax

pytestmark = pytest.mark.skipif(not emulator.has_compiler(), reason="no C++ compiler")

cuda = FRONTS["cuda"].kernel  # a region as the device tests render it, for the H200

PROJECTIONS = {str(s): s for s in projection_cases.SPECS}
ATTENTION = {str(c): c for c in attention_cases.CASES}


def _attention_kernels(case) -> list[LoweredKernel]:
    """One key a step (the structure the H100 ran), and keys split over 5 blocks of 3 warps."""
    q, k, v, mask, scale = attention_cases.case_inputs(case)
    spec = decode_attention(*(Var(x.shape, str(x.dtype).split(".")[-1]) for x in (q, k, v, mask)), scale)
    return [render_attention(spec, "cuda", 1), render_attention(spec, "cuda", 1, 5, 3)]


@pytest.fixture(scope="module")
def kernels() -> dict[str, LoweredKernel]:
    """Every kernel of this module, compiled at once (one translation unit per processor)."""
    out = {f"projection-{n}": render_projection(s, "cuda") for n, s in PROJECTIONS.items()}
    for n, case in ATTENTION.items():
        for i, k in enumerate(_attention_kernels(case)):
            out[f"attention{i}-{n}"] = k
    emulator.prepare([c for k in out.values() for c in k.chain()])
    return out


@pytest.mark.parametrize("name", sorted(PROJECTIONS))
def test_projection_kernel_as_cuda_matches_mlx(name, kernels):
    spec = PROJECTIONS[name]
    x, weights = projection_cases.operands(spec)
    arrays = [x, *itertools.chain.from_iterable(weights)]
    outs = emulator.run(kernels[f"projection-{name}"], [_to_host(a) for a in arrays])
    projection_cases.assert_close([_from_host(o, spec.dtype) for o in outs],
                                  projection_cases.reference(spec, x, weights), spec.dtype, spec.depth)


@pytest.mark.parametrize("name", sorted(ATTENTION))
def test_attention_kernels_as_cuda_match_sdpa(name, kernels):
    q, k, v, mask, scale = attention_cases.case_inputs(ATTENTION[name])
    want = attention_cases.reference(q, k, v, mask, scale)
    for i in range(2):
        (o,) = emulator.run(kernels[f"attention{i}-{name}"], [_to_host(a) for a in (q, k, v, mask)])
        attention_cases.assert_close(_from_host(o, ATTENTION[name].dtype), want, ATTENTION[name].dtype)


def test_a_split_column_softmax_declares_its_shared_memory_and_launch_bound():
    region, half = split_column_softmax()
    kernel = render(build(region, half), "cuda")
    # 32 float32 of each of 512 threads: past 48,000 bytes, which MLX opts the kernel into
    assert dict(kernel.options)["shared_memory"] == 32 * 512 * 4
    assert "extern __shared__ __align__(16) unsigned char mt_stage[];" in kernel.source
    assert re.search(r"float\* mt_s\d+ = reinterpret_cast<float\*>\(mt_stage \+ 0\);",
                     kernel.source)
    assert re.search(r"\nfloat mt_r\d+\[32\];", kernel.source)
    assert kernel.header.endswith(
        "#define __global__ __attribute__((global)) __launch_bounds__(512, 2)\n")
    # three of its 2048 blocks, launched as MLX launches them (a block past its launch bound or
    # past 227 KB of shared memory would fail)
    groups = [0, 1, 2047]
    columns = [c for g in groups for c in range(8 * g, 8 * g + 8)]
    sample = oracle.random_inputs(oracle.softmax_columns(shape=(4096, len(columns))), seed=9)[0]
    x = np.zeros((4096, 16384), np.float32)  # pages the sample does not touch stay unmapped
    x[:, columns] = sample
    (got,) = emulator.run(kernel, [x], groups=groups)
    (want,) = oracle.evaluate(oracle.softmax_columns(shape=(4096, len(columns))), [sample])
    oracle.assert_close(got[:, columns], want, "float32", scale=4.0)


def _edited(kernel: LoweredKernel, pattern: str, replacement: str) -> LoweredKernel:
    source, n = re.subn(pattern, replacement, kernel.source)
    assert n, f"{pattern!r} not in {kernel.name}"
    return dataclasses.replace(kernel, source=source)


def test_threads_past_the_grids_end_must_be_guarded():
    # 5000 elements, 4 a thread: 1250 threads in blocks of 1024. CUDA runs two whole blocks (2048
    # threads); Metal's last threadgroup is cut to the grid. Without its guard the kernel reads
    # and writes past its buffers in the 798 threads the grid does not cover, on CUDA only.
    b = RegionBuilder("guard")
    x, y = b.input((5000,), "float32", "x"), b.input((5000,), "float32", "y")
    region = b.build([b.op("Add", b.op("Exp", x), y)])
    kernel = cuda(region)
    assert kernel.grid == (1250, 1, 1) and kernel.threadgroup == (1024, 1, 1)
    inputs = oracle.random_inputs(region, seed=5)
    check(kernel, region, inputs)
    unguarded = _edited(kernel, r"if \(mt_i0 < 5000\) \{", "{")
    with pytest.raises(CudaEmulatorError, match=r"out-of-bounds read of x at element 5000 .*\[thread "
                                                r"\(226,0,0\) of block \(1,0,0\)\]"):
        emulator.run(unguarded, inputs)
    as_metal = render(built(region, "cuda"), "metal")  # the same schedule
    check(_edited(as_metal, r"if \(mt_i0 < 5000\) \{", "{"), region, inputs)


def test_a_race_between_warps_is_caught():
    # the block's partial sums read back before every warp wrote its own
    region = oracle.rms_norm(shape=(4, 3000))
    kernel = cuda(region)
    racy = _edited(kernel, r"__syncthreads\(\);\n", "\n")
    with pytest.raises(CudaEmulatorError, match="race on shared memory|before any thread wrote it"):
        emulator.run(racy, oracle.random_inputs(region, seed=6))
