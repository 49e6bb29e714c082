"""Every kernel family executed as CUDA: the translation unit MLX hands NVRTC for it, run by the
emulator's CUDA front end (runtime/emulator: whole blocks as MLX launches them, 32-lane warps,
__syncthreads, static and dynamic shared memory, the inline PTX of the dialect, bounds-checked
buffers), against the NumPy interpreter of the same kernel IR and the JAX oracle of the unfused
region. The cases are the Metal emulator's (tests/codegen/test_metal_emulated.py), rendered for
the H200 as the device tests render them: every schedule, float32 / float16 / bfloat16, the
golden CUDA kernels, rows of special values, each op against MLX, the projection and attention
templates; then deliberately broken CUDA renderings, which these checks must reject."""

from __future__ import annotations

import dataclasses
import itertools
import re

import mlx.core as mx
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from mlxtriton.codegen import dialects
from mlxtriton.codegen.attention import render_attention
from mlxtriton.codegen.builder import build
from mlxtriton.codegen.interpret import interpret
from mlxtriton.codegen.projection import render_projection
from mlxtriton.codegen.region import RegionBuilder
from mlxtriton.codegen.render import LoweredKernel, lower, render
from mlxtriton.codegen.schedule import candidates
from mlxtriton.graph.attention import decode_attention
from mlxtriton.graph.core import Var
from mlxtriton.runtime import emulator
from mlxtriton.runtime.emulator import CudaEmulatorError
from mlxtriton.runtime.launch import _from_host, _to_host
from tests.codegen import codegen_oracle as oracle
from tests.codegen import test_attention as attention_cases
from tests.codegen import test_ops_mlx as ops_mlx
from tests.codegen import test_projection as projection_cases
from tests.codegen.targets import built, split_beside_kept, split_schedule, target
from tests.codegen.test_golden import CASES as GOLDEN_CASES
from tests.codegen.test_interpret import LENGTHS, ROW_FAMILIES
from tests.codegen.test_launch import _special_rows
from tests.codegen.test_metal_emulated import (CASES, CASTS, OPS, SPECIAL, SPLIT, TRUTH, _inputs,
                                               _op_region, check)
from tests.codegen.test_schedule import split_column_softmax

pytestmark = pytest.mark.skipif(not emulator.has_compiler(), reason="no C++ compiler")


def cuda(region) -> LoweredKernel:
    """The CUDA kernel of ``region`` for the H200 (tests/codegen/targets.py), as the device tests
    launch it."""
    return render(built(region, "cuda"), "cuda")


GOLDEN = {name: make for name, (make, t) in GOLDEN_CASES.items() if t == "cuda"}
# Golden kernels too large to run whole: the blocks (here, rows) that run, and a factory of the
# region over those rows for the oracle.
SAMPLED = {"softmax_f32_32768x4096.cuda": ([0, 1, 16383, 32767],
                                           lambda n: oracle.softmax(shape=(n, 4096)))}
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
    out = {f"case-{n}": cuda(r) for n, r in CASES.items()}
    out.update((f"special-{n}", cuda(r)) for n, r in SPECIAL.items())
    out.update((f"golden-{n}", lower(make(), "cuda")) for n, make in GOLDEN.items())
    out.update((f"op-{name}", cuda(_op_region(prim, params, arity, dtype)))
               for name, prim, params, arity, dtype, _ in OPS)
    out.update((f"reduce-{kind}-{streamed}", render(built(ops_mlx._reduction_region(kind),
                                                          "tiny" if streamed else "cuda"), "cuda"))
               for kind, _ in ops_mlx.REDUCTIONS for streamed in (False, True))
    out.update((f"projection-{n}", render_projection(s, "cuda")) for n, s in PROJECTIONS.items())
    for n, case in ATTENTION.items():
        for i, k in enumerate(_attention_kernels(case)):
            out[f"attention{i}-{n}"] = k
    emulator.prepare([c for k in out.values() for c in k.chain()])
    return out


@pytest.mark.parametrize("name", sorted(CASES))
def test_kernel_runs_as_cuda(name, kernels):
    region = CASES[name]
    check(kernels[f"case-{name}"], region, _inputs(name, region, seed=len(name)))


@pytest.mark.parametrize("name", sorted(SPECIAL))
def test_rows_of_infinities_and_nan_run_as_cuda(name, kernels):
    region = SPECIAL[name]
    kernel = kernels[f"special-{name}"]
    inputs = oracle.random_inputs(region, seed=3)
    inputs[0] = _special_rows(region.inputs[0].shape)
    for g, w, d in zip(emulator.run(kernel, inputs), interpret(kernel.kernel, inputs), kernel.output_dtypes):
        oracle.assert_close(g, w, d, scale=4.0)
        assert np.array_equal(np.isnan(np.asarray(g, np.float64)), np.isnan(np.asarray(w, np.float64)))


@pytest.mark.parametrize("name", sorted(GOLDEN))
def test_golden_kernel_runs_as_cuda(name, kernels):
    kernel = kernels[f"golden-{name}"]
    region = GOLDEN[name]()
    if name not in SAMPLED:
        check(kernel, region, oracle.random_inputs(region, seed=1))
        return
    groups, rows_region = SAMPLED[name]
    assert kernel.kernel.arg.rows_per_group == 1 and kernel.kernel.arg.rows_per_block == 1
    sample = oracle.random_inputs(rows_region(len(groups)), seed=1)[0]
    x = np.zeros(region.inputs[0].shape, np.float32)  # pages the sample does not touch stay unmapped
    x[groups] = sample
    (got,) = emulator.run(kernel, [x], groups=groups)
    (want,) = oracle.evaluate(rows_region(len(groups)), [sample])
    oracle.assert_close(got[groups], want, "float32", scale=4.0)


# PTX's max.NaN.f32 / min.NaN.f32 (the dialect's float mt_max / mt_min from sm_80) order -0.0
# below +0.0, where MLX's Maximum returns its second operand of two equal ones: the sign of a zero
# that two zeros produce may differ from MLX's.
SIGNED_ZEROS = {"Maximum", "Minimum"}


@pytest.mark.parametrize("name,prim,params,arity,dtype,ref", OPS, ids=[o[0] for o in OPS])
def test_op_as_cuda_matches_mlx(name, prim, params, arity, dtype, ref, kernels):
    """Every combination of special values, as the interpreter's table (test_ops_mlx)."""
    args = ops_mlx.operands(prim, arity, dtype, params)
    (got,) = emulator.run(kernels[f"op-{name}"], args)
    if prim in SIGNED_ZEROS and dtype == "float32":
        zeros = (args[0] == 0) & (args[1] == 0)
        want = np.array(ref(*[ops_mlx.to_mx(a, dtype) for a in args]))
        np.testing.assert_array_equal(got[zeros], want[zeros])  # equal as numbers: 0.0 == -0.0
        got = np.where(zeros, want, got)
    ops_mlx.assert_op_matches_mlx(got, prim, params, ref, args, dtype, " as CUDA")


@pytest.mark.parametrize("kind,ref", ops_mlx.REDUCTIONS, ids=[r[0] for r in ops_mlx.REDUCTIONS])
@pytest.mark.parametrize("streamed", [False, True])
def test_reduction_special_values_as_cuda_match_mlx(kind, ref, streamed, kernels):
    (got,) = emulator.run(kernels[f"reduce-{kind}-{streamed}"], [ops_mlx._ROWS])
    want = np.array(ref(mx.array(ops_mlx._ROWS)))
    np.testing.assert_allclose(got, want, rtol=1e-6, atol=0, equal_nan=True)


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


@settings(max_examples=8, deadline=None)
@given(family=st.sampled_from(ROW_FAMILIES), rows=st.integers(1, 5), length=LENGTHS,
       dtype=st.sampled_from(("float32", "float16", "bfloat16")), chip=st.sampled_from(["h100", "h200"]),
       seed=st.integers(0, 2**16), data=st.data())
def test_row_kernels_of_any_length_and_schedule_run_as_cuda(family, rows, length, dtype, chip, seed, data):
    shape = (length, rows) if family == "colsum" else (rows, length)
    region = oracle.FAMILIES[family](shape=shape, dtype=dtype)
    chosen = data.draw(st.sampled_from(candidates(region, target(chip))))
    check(render(build(region, chosen), "cuda"), region, oracle.random_inputs(region, seed))


@pytest.fixture(scope="module")
def small_kernels() -> dict[tuple, LoweredKernel]:
    n = len(ops_mlx.SPECIAL_FLOATS) + 4
    out = {}
    for dtype, length, kind in TRUTH:
        b = RegionBuilder(kind)
        y = b.op("Reduce", b.input((5, length), dtype, "x"), kind=kind, axes=(1,))
        out[dtype, length, kind] = cuda(b.build([y]))
    for src, dst in CASTS:
        b = RegionBuilder("cast")
        out[src, dst] = cuda(b.build([b.op("AsType", b.input((n,), src, "x"), dtype=dst)]))
    emulator.prepare(list(out.values()))
    return out


@pytest.mark.parametrize("dtype,length,kind", TRUTH, ids=["-".join(map(str, t)) for t in TRUTH])
def test_all_and_any_as_cuda_match_mlx(dtype, length, kind, small_kernels):
    x = ops_mlx.truth_rows(dtype, length, seed=length)
    (got,) = emulator.run(small_kernels[dtype, length, kind], [x])
    ref = mx.all if kind == "and" else mx.any
    np.testing.assert_array_equal(got, np.array(ref(ops_mlx.to_mx(x, dtype), axis=1, keepdims=True)))


@pytest.mark.parametrize("src,dst", CASTS, ids=[f"{s}-{d}" for s, d in CASTS])
def test_casts_as_cuda_match_the_interpreter(src, dst, small_kernels):
    x = np.array(ops_mlx.SPECIAL_FLOATS + [255.5, -129.0, 3e9, -3e9], np.float32)
    kernel = small_kernels[src, dst]
    (got,) = emulator.run(kernel, [x])
    np.testing.assert_array_equal(got, interpret(kernel.kernel, [x])[0])


# -- a held column split between registers and shared memory (Schedule.staged_in_registers) ------

@pytest.mark.parametrize("name", sorted(SPLIT))
def test_a_split_column_runs_as_cuda(name):
    region = SPLIT[name]
    chosen = split_schedule(region, "h100")
    assert (chosen.staged_in_registers, chosen.launch_min_groups) == (31, 2)
    kernel = render(build(region, chosen), "cuda")
    assert kernel.kernel.arg.staged_in_registers == 31
    check(kernel, region, oracle.random_inputs(region, seed=8))


def test_a_split_beside_kept_values_runs_as_cuda():
    region = oracle.softmax_weighted(shape=(6, 1000))
    kernel = render(build(region, split_beside_kept(region, "h100")), "cuda")
    built = kernel.kernel.arg
    assert built.kept and built.staged == ("y",) and built.staged_in_registers == 8
    check(kernel, region, oracle.random_inputs(region, seed=10))


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


# -- planted bugs: the checks above fail on a broken CUDA rendering ------------------------------

C = dialects.CUDA
PLANTED = {
    # (the broken dialect, the region, what the emulator reports; None: wrong values)
    "a shuffle_xor became shuffle_down": (dataclasses.replace(
        C, shuffle_xor="__shfl_down_sync(0xffffffffu, {x}, {o})"), oracle.softmax(shape=(4, 3000)), None),
    "a missing __syncthreads": (dataclasses.replace(C, barrier=""), oracle.layer_norm(shape=(4, 3000)),
                                "shared memory"),  # read before written, or a race
    "the block index off by one": (dataclasses.replace(C, group_in_grid="(blockIdx.x + 1)"),
                                   oracle.rms_norm(shape=(9, 24)), "out-of-bounds read"),
    "the thread index off by one": (dataclasses.replace(
        C, thread_in_grid="(blockIdx.x * blockDim.x + threadIdx.x + 1)"),
        oracle.pointwise_broadcast(shape=(3, 5, 64)), "unwritten"),
}


@pytest.mark.parametrize("why", sorted(PLANTED))
def test_a_planted_bug_in_the_cuda_dialect_is_caught(why):
    broken, region, message = PLANTED[why]
    inputs = oracle.random_inputs(region, seed=4)
    check(cuda(region), region, inputs)  # the real dialect passes
    kernel = render(built(region, "cuda"), broken)
    if message is None:
        with pytest.raises(AssertionError):
            check(kernel, region, inputs)
    else:
        with pytest.raises(CudaEmulatorError, match=message):
            check(kernel, region, inputs)


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
