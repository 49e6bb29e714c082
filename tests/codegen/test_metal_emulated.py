"""Every kernel family executed as Metal: the exact source MLX would compile for it, run by the
Metal emulator (runtime/emulator: Metal's dispatch, 32-lane SIMD-groups, barriers and
threadgroup memory, bounds-checked buffers), against the NumPy interpreter of the same kernel IR
and the JAX oracle of the unfused region. The shapes are the device tests' (tests/codegen/
test_launch.py), which reach every schedule, for float32 / float16 / bfloat16; the golden kernels,
rows of special values, random lengths on several chips, and deliberately broken Metal dialect
tables, which these checks must reject."""

from __future__ import annotations

import dataclasses

import mlx.core as mx
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from mlxtriton.codegen import dialects
from mlxtriton.codegen.builder import build
from mlxtriton.codegen.schedule import candidates, default, kernel_target
from mlxtriton.codegen.interpret import interpret
from mlxtriton.codegen.kernel_ir import Ops
from mlxtriton.codegen.region import RegionBuilder
from mlxtriton.codegen.render import LoweredKernel, render
from mlxtriton.runtime import emulator
from mlxtriton.runtime.emulator import MetalEmulatorError
from tests.codegen import codegen_oracle as oracle
from tests.codegen import test_ops_mlx as ops_mlx
from tests.codegen.test_checks import _extra_regions
from tests.codegen.test_golden import CASES as GOLDEN_CASES
from tests.codegen.targets import built, split_beside_kept, split_schedule, target
from tests.codegen.test_interpret import LENGTHS, ROW_FAMILIES
from tests.codegen.test_launch import CASES as DEVICE_CASES
from tests.codegen.test_launch import _special_rows

pytestmark = pytest.mark.skipif(not emulator.has_compiler(), reason="no C++ compiler")


def metal(region) -> LoweredKernel:
    """The Metal kernel a host without a GPU renders (codegen.schedule.DEFAULT_CHIP: an M3)."""
    return render(built(region, "metal"), "metal")


CASES = dict(DEVICE_CASES)
CASES.update((f"extra-{n}", r) for n, r in _extra_regions())
SPECIAL = {f"{family}-{L}": oracle.FAMILIES[family](shape=(4, L))
           for family in ("softmax", "logsumexp", "crossentropy", "crossentropymlx")
           for L in (500, 65536)}
GOLDEN = {name: make for name, (make, target) in GOLDEN_CASES.items() if target == "metal"}
# Golden kernels too large to run whole: the threadgroups (here, rows) run, and a factory of the
# region over those rows for the oracle.
SAMPLED = {"softmax_f32_32768x4096.metal": ([0, 1, 16383, 32767],
                                            lambda n: oracle.softmax(shape=(n, 4096)))}


def _inputs(name: str, region, seed: int) -> list[np.ndarray]:
    inputs = oracle.random_inputs(region, seed)
    if name == "extra-int":  # a zero divisor is undefined on the GPU (test below)
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


@pytest.fixture(scope="module")
def kernels() -> dict[str, LoweredKernel]:
    """Every kernel of this module, compiled at once (one translation unit per processor)."""
    out = {f"case-{n}": metal(r) for n, r in CASES.items()}
    out.update((f"special-{n}", metal(r)) for n, r in SPECIAL.items())
    out.update((f"golden-{n}", metal(make()))
               for n, make in GOLDEN.items())
    emulator.prepare(list(out.values()))
    return out


@pytest.mark.parametrize("name", sorted(CASES))
def test_kernel_runs_as_metal(name, kernels):
    region = CASES[name]
    check(kernels[f"case-{name}"], region, _inputs(name, region, seed=len(name)))


@pytest.mark.parametrize("name", sorted(SPECIAL))
def test_rows_of_infinities_and_nan_run_as_metal(name, kernels):
    region = SPECIAL[name]
    inputs = oracle.random_inputs(region, seed=3)
    inputs[0] = _special_rows(region.inputs[0].shape)
    got = emulator.run(kernels[f"special-{name}"], inputs)
    want = interpret(kernels[f"special-{name}"].kernel, inputs)
    for g, w, d in zip(got, want, kernels[f"special-{name}"].output_dtypes):
        oracle.assert_close(g, w, d, scale=4.0)
        assert np.array_equal(np.isnan(np.asarray(g, np.float64)), np.isnan(np.asarray(w, np.float64)))


@pytest.mark.parametrize("name", sorted(GOLDEN))
def test_golden_kernel_runs_as_metal(name, kernels):
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


# A held column split between registers and threadgroup memory (Schedule.staged_in_registers):
# columns of 250 (4 lanes of 63 elements, the last lane's last past the end) in threadgroups of 32
# columns, the second of 40 part empty; float32 and bfloat16.
SPLIT = {f"{family}-{dtype}": oracle.COLUMN_FAMILIES[family](shape=shape, dtype=dtype)
         for family, shape in (("softmaxcolumns", (250, 40)), ("channelmoments", (5, 50, 40)))
         for dtype in ("float32", "bfloat16")}


@pytest.mark.parametrize("name", sorted(SPLIT))
def test_a_split_column_runs_as_metal(name):
    region = SPLIT[name]
    chosen = split_schedule(region, "metal")
    assert chosen.staged_in_registers == 31 and not chosen.launch_bound  # Metal takes no bound
    kernel = render(build(region, chosen), "metal")
    assert kernel.kernel.arg.staged_in_registers == 31
    check(kernel, region, oracle.random_inputs(region, seed=8))


def test_a_split_beside_kept_values_runs_as_metal():
    region = oracle.softmax_weighted(shape=(6, 1000))
    kernel = render(build(region, split_beside_kept(region, "metal")), "metal")
    built = kernel.kernel.arg
    assert built.kept and built.staged == ("y",) and built.staged_in_registers == 8
    check(kernel, region, oracle.random_inputs(region, seed=10))


def test_an_integer_division_by_zero_is_reported():
    # as in MLX's own Metal kernels, x / 0 and x % 0 are undefined on the GPU (MLX's CPU
    # returns 0 and x); the emulator rejects them rather than pick a value
    name, region = next((n, r) for n, r in _extra_regions() if n == "int")
    inputs = oracle.random_inputs(region, seed=0)
    inputs[1][5] = 0
    with pytest.raises(MetalEmulatorError, match="integer division by zero"):
        emulator.run(metal(region), inputs)


@settings(max_examples=12, deadline=None)
@given(family=st.sampled_from(ROW_FAMILIES), rows=st.integers(1, 5), length=LENGTHS,
       dtype=st.sampled_from(("float32", "float16", "bfloat16")),
       chip=st.sampled_from(["m1", "m3", "m5", "tiny"]), seed=st.integers(0, 2**16), data=st.data())
def test_row_kernels_of_any_length_and_schedule_run_as_metal(family, rows, length, dtype, chip, seed, data):
    shape = (length, rows) if family == "colsum" else (rows, length)
    region = oracle.FAMILIES[family](shape=shape, dtype=dtype)
    chosen = data.draw(st.sampled_from(candidates(region, target(chip))))
    check(render(build(region, chosen), "metal"), region, oracle.random_inputs(region, seed))


# -- planted bugs: the checks above fail on a broken Metal rendering -----------------------------

M = dialects.METAL
PLANTED = {
    # (the broken dialect, the region, what the emulator reports; None: wrong values)
    "simd_sum became simd_max": (dataclasses.replace(M, simd_reduce={"sum": "metal::simd_max({x})"}),
                                 oracle.softmax(shape=(4, 3000)), None),
    "a shuffle_xor became shuffle_down": (dataclasses.replace(
        M, shuffle_xor="metal::simd_shuffle_down({x}, static_cast<ushort>({o}))"),
        oracle.softmax(shape=(4, 3000)), None),
    "a missing barrier": (dataclasses.replace(M, barrier=""), oracle.layer_norm(shape=(4, 3000)),
                          "threadgroup memory"),
    "a barrier that does not order threadgroup memory": (dataclasses.replace(
        M, barrier="metal::threadgroup_barrier(metal::mem_flags::mem_none);"),
        oracle.rms_norm_grad(shape=(8, 3000)), "race on threadgroup memory"),
    "the threadgroup index off by one": (dataclasses.replace(
        M, group_in_grid="(threadgroup_position_in_grid.x + 1)"), oracle.rms_norm(shape=(9, 24)),
        "out-of-bounds read"),
    "the thread index off by one": (dataclasses.replace(
        M, thread_in_grid="(thread_position_in_grid.x + 1)"), oracle.pointwise_broadcast(shape=(3, 5, 64)),
        "unwritten"),
}


@pytest.mark.parametrize("why", sorted(PLANTED))
def test_a_planted_bug_in_the_metal_dialect_is_caught(why):
    broken, region, message = PLANTED[why]
    inputs = oracle.random_inputs(region, seed=4)
    check(metal(region), region, inputs)  # the real dialect passes
    kernel = render(built(region, "metal"), broken)
    if message is None:
        with pytest.raises(AssertionError):
            check(kernel, region, inputs)
    else:
        with pytest.raises(MetalEmulatorError, match=message):
            check(kernel, region, inputs)


# -- per-op semantics against MLX's own ops, special values included (tests/codegen/test_ops_mlx) --

def _op_region(prim: str, params: dict, arity: int, dtype: str):
    n = len(ops_mlx.operands(prim, arity, dtype, params)[0])
    b = RegionBuilder(prim)
    xs = [b.input((n,), dtype, f"a{k}") for k in range(arity)]
    return b.build([b.op(prim, *xs, **params)])


OPS = [(f"{prim}{''.join(map(str, params.values()))}-{dtype}", prim, params, arity, dtype, ref)
       for prim, params, arity, dts, ref in ops_mlx.TABLE for dtype in dts]


@pytest.fixture(scope="module")
def op_kernels() -> dict[str, LoweredKernel]:
    out = {name: metal(_op_region(prim, params, arity, dtype))
           for name, prim, params, arity, dtype, _ in OPS}
    out.update((f"reduce-{kind}-{streamed}", render(built(ops_mlx._reduction_region(kind),
                                                          "tiny" if streamed else "metal"), "metal"))
               for kind, _ in ops_mlx.REDUCTIONS for streamed in (False, True))
    emulator.prepare(list(out.values()))
    return out


@pytest.mark.parametrize("name,prim,params,arity,dtype,ref", OPS, ids=[o[0] for o in OPS])
def test_op_as_metal_matches_mlx(name, prim, params, arity, dtype, ref, op_kernels):
    """Every combination of special values, as the interpreter's table (test_ops_mlx)."""
    args = ops_mlx.operands(prim, arity, dtype, params)
    (got,) = emulator.run(op_kernels[name], args)
    ops_mlx.assert_op_matches_mlx(got, prim, params, ref, args, dtype, " as Metal")


@pytest.mark.parametrize("kind,ref", ops_mlx.REDUCTIONS, ids=[r[0] for r in ops_mlx.REDUCTIONS])
@pytest.mark.parametrize("streamed", [False, True])
def test_reduction_special_values_as_metal_match_mlx(kind, ref, streamed, op_kernels):
    (got,) = emulator.run(op_kernels[f"reduce-{kind}-{streamed}"], [ops_mlx._ROWS])
    want = np.array(ref(mx.array(ops_mlx._ROWS)))
    np.testing.assert_allclose(got, want, rtol=1e-6, atol=0, equal_nan=True)


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
    inputs = _inputs(name, CASES[name], seed=len(name))
    for g, e, d in zip(launch(kernel, inputs), emulator.run(kernel, inputs), kernel.output_dtypes):
        oracle.assert_close(e, g, d, scale=4.0)


# -- all / any: each element's truth, combined logically (kernel_ir.REDUCE_KINDS) ------------------

TRUTH = [(dtype, length, kind) for dtype in ("float32", "bfloat16", "int32", "bool")
         for length in (5, 300, 3000) for kind in ("and", "or")]


@pytest.fixture(scope="module")
def truth_kernels() -> dict[tuple, LoweredKernel]:
    out = {}
    for dtype, length, kind in TRUTH:
        b = RegionBuilder(kind)
        y = b.op("Reduce", b.input((5, length), dtype, "x"), kind=kind, axes=(1,))
        out[dtype, length, kind] = metal(b.build([y]))
    emulator.prepare(list(out.values()))
    return out


@pytest.mark.parametrize("dtype,length,kind", TRUTH, ids=["-".join(map(str, t)) for t in TRUTH])
def test_all_and_any_as_metal_match_mlx(dtype, length, kind, truth_kernels):
    """Values other than 0 and 1 (0.5, NaN, 2, -1), zeros (-0.0 too), across SIMD shuffles and
    threadgroup memory: the Metal source once cast elements to int and combined them bitwise."""
    x = ops_mlx.truth_rows(dtype, length, seed=length)
    (got,) = emulator.run(truth_kernels[dtype, length, kind], [x])
    ref = mx.all if kind == "and" else mx.any
    want = np.array(ref(ops_mlx.to_mx(x, dtype), axis=1, keepdims=True))
    np.testing.assert_array_equal(got, want)


CASTS = [("float32", dst) for dst in ("int32", "uint32", "int8", "uint8", "int64", "bool")]


@pytest.fixture(scope="module")
def cast_kernels() -> dict[tuple, LoweredKernel]:
    n = len(ops_mlx.SPECIAL_FLOATS) + 4
    out = {}
    for src, dst in CASTS:
        b = RegionBuilder("cast")
        out[src, dst] = metal(b.build([b.op("AsType", b.input((n,), src, "x"), dtype=dst)]))
    emulator.prepare(list(out.values()))
    return out


@pytest.mark.parametrize("src,dst", CASTS, ids=[f"{s}-{d}" for s, d in CASTS])
def test_casts_as_metal_match_the_interpreter(src, dst, cast_kernels):
    """Out of range and NaN included: the rendered conversion is the kernel IR's (saturating,
    NaN to 0), whatever C leaves undefined."""
    x = np.array(ops_mlx.SPECIAL_FLOATS + [255.5, -129.0, 3e9, -3e9], np.float32)
    kernel = cast_kernels[src, dst]
    (got,) = emulator.run(kernel, [x])
    (want,) = interpret(kernel.kernel, [x])
    np.testing.assert_array_equal(got, want)
