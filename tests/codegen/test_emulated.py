"""Every kernel family executed by the emulator (runtime/emulator) as Metal and as CUDA: the exact
source MLX would compile for it, run with its device's dispatch (Metal's threadgroups clamped to
the grid; CUDA's whole blocks), 32-lane SIMD-groups (warps), barriers, threadgroup (shared)
memory and bounds-checked buffers, against the NumPy interpreter of the same kernel IR and the
JAX oracle of the unfused region. Kernels are rendered for the dialect's default chip (an M3, an
H200), as the device tests render them: every schedule, float32 / float16 / bfloat16, the golden
kernels, rows of special values, each op against MLX, random lengths on several chips; then
deliberately broken dialect tables, which these checks must reject. What only one front end
runs is in test_metal_emulated.py and test_cuda_emulated.py."""

from __future__ import annotations

import dataclasses
import functools
from typing import Callable

import mlx.core as mx
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from mlxtriton.codegen import dialects
from mlxtriton.codegen.builder import build
from mlxtriton.codegen.interpret import interpret
from mlxtriton.codegen.region import RegionBuilder
from mlxtriton.codegen.render import LoweredKernel, render
from mlxtriton.codegen.schedule import candidates
from mlxtriton.runtime import emulator
from tests.codegen import codegen_oracle as oracle
from tests.codegen import test_ops_mlx as ops_mlx
from tests.codegen.emulated import CASES, FRONTS, Front, check, inputs_of
from tests.codegen.targets import built, split_beside_kept, split_schedule, target
from tests.codegen.test_golden import CASES as GOLDEN
from tests.codegen.test_interpret import LENGTHS, ROW_FAMILIES
from tests.codegen.test_launch import _special_rows

pytestmark = pytest.mark.skipif(not emulator.has_compiler(), reason="no C++ compiler")

# Each test of both front ends takes one as ``front``, named "Metal" or "CUDA": a test id "metal"
# or "cuda" would read as the device marker (tests/conftest.py).
over_fronts = pytest.mark.parametrize("front", FRONTS.values(), ids=lambda f: f.name)

SPECIAL = {f"{family}-{L}": oracle.FAMILIES[family](shape=(4, L))
           for family in ("softmax", "logsumexp", "crossentropy", "crossentropymlx")
           for L in (500, 65536)}
# Golden kernels too large to run whole: the threadgroups (here, rows) that run, and a factory of
# the region over those rows for the oracle.
SAMPLED = {f"softmax_f32_32768x4096.{dialect}": ([0, 1, 16383, 32767],
                                                 lambda n: oracle.softmax(shape=(n, 4096)))
           for dialect in FRONTS}


def _op_region(prim: str, params: dict, arity: int, dtype: str):
    n = len(ops_mlx.operands(prim, arity, dtype, params)[0])
    b = RegionBuilder(prim)
    xs = [b.input((n,), dtype, f"a{k}") for k in range(arity)]
    return b.build([b.op(prim, *xs, **params)])


OPS = [(f"{prim}{''.join(map(str, params.values()))}-{dtype}", prim, params, arity, dtype, ref)
       for prim, params, arity, dts, ref in ops_mlx.TABLE for dtype in dts]
# all / any: each element's truth, combined logically (kernel_ir.REDUCE_KINDS)
TRUTH = [(dtype, length, kind) for dtype in ("float32", "bfloat16", "int32", "bool")
         for length in (5, 300, 3000) for kind in ("and", "or")]
CASTS = [("float32", dst) for dst in ("int32", "uint32", "int8", "uint8", "int64", "bool")]


def _kernels(front: Front) -> dict[str, LoweredKernel]:
    dialect = front.dialect
    out = {f"case-{n}": front.kernel(r) for n, r in CASES.items()}
    out.update((f"special-{n}", front.kernel(r)) for n, r in SPECIAL.items())
    out.update((f"golden-{n}", front.kernel(make())) for n, (make, d) in GOLDEN.items() if d == dialect)
    out.update((f"op-{name}", front.kernel(_op_region(prim, params, arity, dtype)))
               for name, prim, params, arity, dtype, _ in OPS)
    out.update((f"reduce-{kind}-{streamed}", render(built(ops_mlx._reduction_region(kind),
                                                          "tiny" if streamed else dialect), dialect))
               for kind, _ in ops_mlx.REDUCTIONS for streamed in (False, True))
    for dtype, length, kind in TRUTH:
        b = RegionBuilder(kind)
        y = b.op("Reduce", b.input((5, length), dtype, "x"), kind=kind, axes=(1,))
        out[f"truth-{dtype}-{length}-{kind}"] = front.kernel(b.build([y]))
    n = len(ops_mlx.SPECIAL_FLOATS) + 4
    for src, dst in CASTS:
        b = RegionBuilder("cast")
        y = b.op("AsType", b.input((n,), src, "x"), dtype=dst)
        out[f"cast-{src}-{dst}"] = front.kernel(b.build([y]))
    emulator.prepare([c for k in out.values() for c in k.chain()])
    return out


@pytest.fixture(scope="module")
def kernels() -> Callable[[Front], dict[str, LoweredKernel]]:
    """Every kernel of this module by front end: a front end's are compiled at once (one
    translation unit per processor) when a test first asks for them."""
    return functools.cache(_kernels)


@pytest.mark.parametrize("name", sorted(GOLDEN))
def test_golden_kernel_runs(name, kernels):
    make, dialect = GOLDEN[name]
    kernel = kernels(FRONTS[dialect])[f"golden-{name}"]
    region = make()
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


@pytest.mark.parametrize("name", sorted(CASES))
@over_fronts
def test_kernel_runs(front, name, kernels):
    region = CASES[name]
    check(kernels(front)[f"case-{name}"], region, inputs_of(name, region, seed=len(name)))


@pytest.mark.parametrize("name", sorted(SPECIAL))
@over_fronts
def test_rows_of_infinities_and_nan_run(front, name, kernels):
    region = SPECIAL[name]
    kernel = kernels(front)[f"special-{name}"]
    inputs = oracle.random_inputs(region, seed=3)
    inputs[0] = _special_rows(region.inputs[0].shape)
    for g, w, d in zip(emulator.run(kernel, inputs), interpret(kernel.kernel, inputs), kernel.output_dtypes):
        oracle.assert_close(g, w, d, scale=4.0)
        assert np.array_equal(np.isnan(np.asarray(g, np.float64)), np.isnan(np.asarray(w, np.float64)))


# -- per-op semantics against MLX's own ops, special values included (tests/codegen/test_ops_mlx) --

@pytest.mark.parametrize("name,prim,params,arity,dtype,ref", OPS, ids=[o[0] for o in OPS])
@over_fronts
def test_op_matches_mlx(front, name, prim, params, arity, dtype, ref, kernels):
    """Every combination of special values, as the interpreter's table (test_ops_mlx)."""
    args = ops_mlx.operands(prim, arity, dtype, params)
    (got,) = emulator.run(kernels(front)[f"op-{name}"], args)
    if prim in front.signed_zeros and dtype == "float32":
        zeros = (args[0] == 0) & (args[1] == 0)
        want = np.array(ref(*[ops_mlx.to_mx(a, dtype) for a in args]))
        np.testing.assert_array_equal(got[zeros], want[zeros])  # equal as numbers: 0.0 == -0.0
        got = np.where(zeros, want, got)
    ops_mlx.assert_op_matches_mlx(got, prim, params, ref, args, dtype, f" as {front.name}")


@pytest.mark.parametrize("kind,ref", ops_mlx.REDUCTIONS, ids=[r[0] for r in ops_mlx.REDUCTIONS])
@pytest.mark.parametrize("streamed", [False, True])
@over_fronts
def test_reduction_special_values_match_mlx(front, kind, ref, streamed, kernels):
    (got,) = emulator.run(kernels(front)[f"reduce-{kind}-{streamed}"], [ops_mlx._ROWS])
    want = np.array(ref(mx.array(ops_mlx._ROWS)))
    np.testing.assert_allclose(got, want, rtol=1e-6, atol=0, equal_nan=True)


@pytest.mark.parametrize("dtype,length,kind", TRUTH, ids=["-".join(map(str, t)) for t in TRUTH])
@over_fronts
def test_all_and_any_match_mlx(front, dtype, length, kind, kernels):
    """Values other than 0 and 1 (0.5, NaN, 2, -1), zeros (-0.0 too), across SIMD shuffles and
    threadgroup memory: the Metal source once cast elements to int and combined them bitwise."""
    x = ops_mlx.truth_rows(dtype, length, seed=length)
    (got,) = emulator.run(kernels(front)[f"truth-{dtype}-{length}-{kind}"], [x])
    ref = mx.all if kind == "and" else mx.any
    want = np.array(ref(ops_mlx.to_mx(x, dtype), axis=1, keepdims=True))
    np.testing.assert_array_equal(got, want)


@pytest.mark.parametrize("src,dst", CASTS, ids=[f"{s}-{d}" for s, d in CASTS])
@over_fronts
def test_casts_match_the_interpreter(front, src, dst, kernels):
    """Out of range and NaN included: the rendered conversion is the kernel IR's (saturating,
    NaN to 0), whatever C leaves undefined."""
    x = np.array(ops_mlx.SPECIAL_FLOATS + [255.5, -129.0, 3e9, -3e9], np.float32)
    kernel = kernels(front)[f"cast-{src}-{dst}"]
    (got,) = emulator.run(kernel, [x])
    (want,) = interpret(kernel.kernel, [x])
    np.testing.assert_array_equal(got, want)


@over_fronts
@settings(max_examples=10, deadline=None)
@given(family=st.sampled_from(ROW_FAMILIES), rows=st.integers(1, 5), length=LENGTHS,
       dtype=st.sampled_from(("float32", "float16", "bfloat16")), seed=st.integers(0, 2**16),
       data=st.data())
def test_row_kernels_of_any_length_and_schedule_run(front, family, rows, length, dtype, seed, data):
    shape = (length, rows) if family == "colsum" else (rows, length)
    region = oracle.FAMILIES[family](shape=shape, dtype=dtype)
    chip = data.draw(st.sampled_from(front.row_chips), label="chip")
    chosen = data.draw(st.sampled_from(candidates(region, target(chip))))
    check(render(build(region, chosen), front.dialect), region, oracle.random_inputs(region, seed))


# -- a held column split between registers and threadgroup memory (Schedule.staged_in_registers) --

# Columns of 250 (4 lanes of 63 elements, the last lane's last past the end) in threadgroups of 32
# columns, the second of 40 part empty; float32 and bfloat16.
SPLIT = {f"{family}-{dtype}": oracle.COLUMN_FAMILIES[family](shape=shape, dtype=dtype)
         for family, shape in (("softmaxcolumns", (250, 40)), ("channelmoments", (5, 50, 40)))
         for dtype in ("float32", "bfloat16")}


@pytest.mark.parametrize("name", sorted(SPLIT))
@over_fronts
def test_a_split_column_runs(front, name):
    region = SPLIT[name]
    chosen = split_schedule(region, front.split_chip)
    # bounded for two threadgroups per core where the chip takes a bound; Metal takes none
    assert (chosen.staged_in_registers, chosen.launch_min_groups) == (31, front.split_groups)
    assert bool(chosen.launch_bound) == bool(front.split_groups)
    kernel = render(build(region, chosen), front.dialect)
    assert kernel.kernel.arg.staged_in_registers == 31
    check(kernel, region, oracle.random_inputs(region, seed=8))


@over_fronts
def test_a_split_beside_kept_values_runs(front):
    region = oracle.softmax_weighted(shape=(6, 1000))
    kernel = render(build(region, split_beside_kept(region, front.split_chip)), front.dialect)
    built = kernel.kernel.arg
    assert built.kept and built.staged == ("y",) and built.staged_in_registers == 8
    check(kernel, region, oracle.random_inputs(region, seed=10))


# -- planted bugs: the checks above fail on a broken rendering -------------------------------------

M, C = dialects.METAL, dialects.CUDA
PLANTED = {
    # (the broken dialect, the region, what the emulator reports; None: wrong values)
    ("metal", "simd_sum became simd_max"): (dataclasses.replace(
        M, simd_reduce={"sum": "metal::simd_max({x})"}), oracle.softmax(shape=(4, 3000)), None),
    ("metal", "a shuffle_xor became shuffle_down"): (dataclasses.replace(
        M, shuffle_xor="metal::simd_shuffle_down({x}, static_cast<ushort>({o}))"),
        oracle.softmax(shape=(4, 3000)), None),
    ("metal", "a missing barrier"): (dataclasses.replace(M, barrier=""), oracle.layer_norm(shape=(4, 3000)),
                                     "threadgroup memory"),
    ("metal", "a barrier that does not order threadgroup memory"): (dataclasses.replace(
        M, barrier="metal::threadgroup_barrier(metal::mem_flags::mem_none);"),
        oracle.rms_norm_grad(shape=(8, 3000)), "race on threadgroup memory"),
    ("metal", "the threadgroup index off by one"): (dataclasses.replace(
        M, group_in_grid="(threadgroup_position_in_grid.x + 1)"), oracle.rms_norm(shape=(9, 24)),
        "out-of-bounds read"),
    ("metal", "the thread index off by one"): (dataclasses.replace(
        M, thread_in_grid="(thread_position_in_grid.x + 1)"), oracle.pointwise_broadcast(shape=(3, 5, 64)),
        "unwritten"),
    ("cuda", "a shuffle_xor became shuffle_down"): (dataclasses.replace(
        C, shuffle_xor="__shfl_down_sync(0xffffffffu, {x}, {o})"), oracle.softmax(shape=(4, 3000)), None),
    ("cuda", "a missing __syncthreads"): (dataclasses.replace(C, barrier=""),
                                         oracle.layer_norm(shape=(4, 3000)),
                                         "shared memory"),  # read before written, or a race
    ("cuda", "the block index off by one"): (dataclasses.replace(C, group_in_grid="(blockIdx.x + 1)"),
                                             oracle.rms_norm(shape=(9, 24)), "out-of-bounds read"),
    ("cuda", "the thread index off by one"): (dataclasses.replace(
        C, thread_in_grid="(blockIdx.x * blockDim.x + threadIdx.x + 1)"),
        oracle.pointwise_broadcast(shape=(3, 5, 64)), "unwritten"),
}


@pytest.mark.parametrize("dialect,why", sorted(PLANTED))
def test_a_planted_bug_in_the_dialect_is_caught(dialect, why):
    front = FRONTS[dialect]
    broken, region, message = PLANTED[dialect, why]
    inputs = oracle.random_inputs(region, seed=4)
    check(front.kernel(region), region, inputs)  # the real dialect passes
    kernel = render(built(region, dialect), broken)
    if message is None:
        with pytest.raises(AssertionError):
            check(kernel, region, inputs)
    else:
        with pytest.raises(front.error, match=message):
            check(kernel, region, inputs)
