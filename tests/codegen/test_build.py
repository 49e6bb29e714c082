"""Structure of built kernels: index spaces, access patterns, schedules, the on-chip decision,
and errors that name the op that prevents one kernel."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from mlxtriton.codegen.builder import RegionError, build
from mlxtriton.codegen.interpret import interpret
from mlxtriton.codegen.kernel_ir import Access, Ops, print_kernel
from mlxtriton.codegen.region import RegionBuilder
from mlxtriton.codegen.render import lower, render
from mlxtriton.codegen.schedule import default
from tests.codegen import codegen_oracle as oracle
from tests.codegen.targets import built, target, tuned


def _loads(kernel):
    return [u for u in kernel.toposort if u.op is Ops.LOAD]


def _reduces(kernel):
    return sorted(u.arg for u in kernel.toposort if u.op is Ops.REDUCE)


def test_softmax_4096_f32_on_h200_keeps_the_row_in_registers():
    k = built(oracle.softmax(shape=(32768, 4096)), "cuda")
    s = k.arg
    assert (s.kind, s.threads_per_row, s.rows_per_group, s.vector_width) == ("row", 256, 1, 4)
    assert (s.chunks, s.elements_per_thread, s.reduction_tree) == (4, 16, "simd+threadgroup")
    assert (s.on_chip, s.resident, s.passes) == ("registers", ("x",), 3)
    (x,) = _loads(k)
    assert x.arg.access is Access.VECTOR and x.arg.resident
    assert _reduces(k) == ["max", "sum"]  # two passes over registers, one read of memory
    text = lower(oracle.softmax(shape=(32768, 4096)), "cuda").source
    assert "resident in registers" in text and text.count("__syncthreads();") == 2


def test_long_rows_stream_with_an_online_softmax():
    k = built(oracle.softmax(shape=(8, 65536)), "cuda")
    assert (k.arg.on_chip, k.arg.streamed, k.arg.passes) == ("stream", ("x",), 2)
    assert _reduces(k) == ["max", "sumexp"]  # max and sum in one pass over memory
    assert not any(u.arg.resident for u in _loads(k))
    text = lower(oracle.softmax(shape=(8, 65536)), "cuda").source
    assert "max+sumexp (online)" in text and "re-read from memory" in text


def test_user_written_softmax_streams_online_too():
    b = RegionBuilder("manual")
    x = b.input((4, 65536), "float32", "x")
    m = b.op("Broadcast", b.op("Reduce", x, kind="max", axes=(1,)), shape=(4, 65536))
    e = b.op("Exp", b.op("Subtract", x, m))
    s = b.op("Broadcast", b.op("Reduce", e, kind="sum", axes=(1,)), shape=(4, 65536))
    region = b.build([b.op("Divide", e, s)])
    assert _reduces(built(region, "cuda")) == ["max", "sumexp"]
    assert _reduces(built(oracle.softmax(shape=(4, 512)), "cuda")) == ["max", "sum"]


def test_bf16_rows_hold_twice_the_elements_per_thread():
    # registers hold bytes: 16 registers of row data are 32 bfloat16 elements (H200)
    s = built(oracle.softmax(shape=(32768, 4096), dtype="bfloat16"), "cuda").arg
    assert (s.threads_per_row, s.elements_per_thread, s.on_chip) == (128, 32, "registers")
    f32 = built(oracle.softmax(shape=(32768, 4096)), "cuda").arg
    assert (f32.threads_per_row, f32.elements_per_thread) == (256, 16)


@pytest.mark.parametrize("family", ["softmax", "softmaxcomposed"])
def test_softmax_keeps_exp_in_registers_for_the_write_pass(family):
    region = oracle.FAMILIES[family](shape=(32768, 4096), dtype="bfloat16")
    k = built(region, "cuda")
    (kept,) = [u for u in k.toposort if u.op is Ops.KEEP]
    assert kept.src[0].op is Ops.EXP_SHIFTED and k.arg.kept == 1
    source = lower(region, "cuda").source
    assert source.count("mt_fastexp(") == 1  # the sum's pass computes it; the write pass reads it
    assert "kept in registers" in source


def _exps(region):
    return sorted(u.op.name for u in built(region, "cuda").toposort
                  if u.op in (Ops.EXP, Ops.EXP_SHIFTED))


def test_exp_of_a_value_bounded_by_zero_is_the_fast_exponential():
    from mlxtriton.codegen.region import RegionBuilder

    # softmax, cross-entropy (MLX writes exp((x - m) - (m - m))), a scaled shift: x - max(x) <= 0
    assert _exps(oracle.softmax(shape=(64, 1000))) == ["EXP_SHIFTED"]
    assert _exps(oracle.FAMILIES["crossentropymlx"](shape=(64, 1000))) == ["EXP_SHIFTED"]
    # an online sumexp (a streamed logsumexp) rescales by exp(old max - new max) <= 0 too
    streamed = lower(oracle.FAMILIES["crossentropy"](shape=(8, 65536)), "cuda").source
    assert "mt_fastexp(" in streamed and "expf(" not in streamed
    for shift, exps in [("max", ["EXP_SHIFTED"]), ("min", ["EXP"]), ("sum", ["EXP"])]:
        b = RegionBuilder("shifted")
        x = b.input((8, 256), "float32", "x")
        m = b.op("Reduce", x, kind=shift, axes=(1,))
        scale = b.op("Broadcast", b.constant(0.5, "float32"), shape=(8, 256))
        e = b.op("Exp", b.op("Multiply", b.op("Subtract", x, b.op("Broadcast", m, shape=(8, 256))), scale))
        assert _exps(b.build([e])) == exps, shift  # x - min(x) and x - sum(x) may be positive
    # a plain exp is MLX's exp, its error bounded everywhere
    b = RegionBuilder("plain")
    assert _exps(b.build([b.op("Exp", b.input((8, 256), "float32", "x"))])) == ["EXP"]
    cuda, metal = lower(oracle.softmax(shape=(64, 1000)), "cuda"), lower(oracle.softmax(shape=(64, 1000)), "metal")
    assert "mt_fastexp(" in cuda.source and "metal::fast::exp(" in metal.source
    assert "ex2.approx.ftz.f32" in cuda.header  # flushing subnormal results, as fast::exp does


def test_rows_too_long_for_registers_stage_in_threadgroup_memory():
    # A layer norm streamed reads the row three times: 65536 bfloat16 (128 KB) or 40960 float32
    # (160 KB) miss the registers of 1024 threads (32 elements each) but fit the H200's 227 KB
    # of shared memory
    for region, nbytes in ((oracle.layer_norm(shape=(64, 65536), dtype="bfloat16"), 131072),
                           (oracle.layer_norm(shape=(64, 40960)), 163840)):
        k = built(region, "h200")
        assert (k.arg.on_chip, k.arg.staged, k.arg.streamed, k.arg.passes) == ("threadgroup", ("x",), (), 3)
        lowered = render(k, "cuda")
        assert dict(lowered.options)["shared_memory"] == nbytes
        assert "extern __shared__" in lowered.source and "staged in threadgroup memory" in lowered.source
    # 32768 float32 is 32 elements for each of 1024 threads: registers
    assert built(oracle.layer_norm(shape=(64, 32768)), "h200").arg.on_chip == "registers"
    # a softmax streamed reads it twice (online max-and-sum, then the write): staged only while
    # two threadgroups still share an SM (96 KB of 49152 bfloat16, not 160 KB of 40960 float32);
    # 65536 float32 (256 KB) does not fit; a one-pass row (online cross-entropy) needs nothing
    assert built(oracle.softmax(shape=(64, 49152), dtype="bfloat16"), "h200").arg.on_chip == "threadgroup"
    assert built(oracle.softmax(shape=(64, 40960)), "h200").arg.on_chip == "stream"
    assert built(oracle.layer_norm(shape=(64, 65536)), "h200").arg.on_chip == "stream"
    ce = built(oracle.cross_entropy_mlx(shape=(8, 65536), dtype="bfloat16"), "h200").arg
    assert (ce.passes, ce.staged) == (1, ())


def test_rows_reading_a_weight_take_half_the_row_data_per_thread_on_nvidia():
    from mlxtriton import hw

    assert hw.derive(hw.profile("h200"), 2).vector_row_register_bytes * 2 == \
        hw.derive(hw.profile("h200"), 2).register_bytes_per_thread
    for dtype, shape in (("bfloat16", (64, 2048)), ("bfloat16", (64, 8192)), ("float32", (64, 2048))):
        plain = built(oracle.softmax(shape=shape, dtype=dtype), "h200").arg
        for region in (oracle.layer_norm(shape=shape, dtype=dtype),
                       oracle.rms_norm(shape=shape, dtype=dtype, gate=True)):
            k = built(region, "h200")
            assert k.arg.threads_per_row == 2 * plain.threads_per_row, (dtype, shape, k.arg.describe())
            assert k.arg.elements_per_thread * 2 == plain.elements_per_thread
            assert k.arg.on_chip == "registers"
            # interpreted, the schedule computes what the oracle does
            inputs = oracle.random_inputs(region)
            oracle.assert_close(interpret(k, inputs)[0], oracle.evaluate(region, inputs)[0], dtype)
        # Apple chips keep one share (nothing measured there); with the tuning data's share at
        # one, NVIDIA does too
        assert (built(oracle.layer_norm(shape=shape, dtype=dtype), "m3").arg.threads_per_row
                == built(oracle.softmax(shape=shape, dtype=dtype), "m3").arg.threads_per_row)
    # an integer range along the row (cross-entropy's one-hot column index) is no weight
    R, L = 64, 2048
    b = RegionBuilder("softmaxminusonehot")
    x, iota, label = b.input((R, L), "bfloat16", "x"), b.input((L,), "int32", "iota"), b.input((R, 1), "int32", "label")
    xf = b.op("AsType", x, dtype="float32")
    e = b.op("Exp", b.op("Subtract", xf, b.op("Broadcast", b.op("Reduce", xf, kind="max", axes=(1,), keepdims=True), shape=(R, L))))
    p_ = b.op("Divide", e, b.op("Broadcast", b.op("Reduce", e, kind="sum", axes=(1,), keepdims=True), shape=(R, L)))
    hit = b.op("Equal", b.op("Broadcast", iota, shape=(R, L)), b.op("Broadcast", label, shape=(R, L)))
    ce = b.build([b.op("AsType", b.op("Subtract", p_, b.op("AsType", hit, dtype="float32")), dtype="bfloat16")])
    with_rule = built(ce, "h200").arg.threads_per_row
    with tuned("sm_90", vector_row_register_share=1):
        assert (built(oracle.layer_norm(shape=(64, 2048), dtype="bfloat16"), "h200").arg.threads_per_row
                == built(oracle.softmax(shape=(64, 2048), dtype="bfloat16"), "h200").arg.threads_per_row)
        assert with_rule == built(ce, "h200").arg.threads_per_row


def test_half_rows_reading_a_weight_take_more_than_the_preferred_threads_where_half_misses():
    from mlxtriton import hw

    preferred = hw.tuning.tuning(hw.profile("h200")).preferred_row_threads
    for dtype, widest in (("bfloat16", 2 * preferred), ("float16", 2 * preferred), ("float32", preferred)):
        region = oracle.rms_norm(shape=(8, 16384), dtype=dtype, gate=True)
        k = built(region, "h200")
        assert k.arg.threads_per_row == widest, (dtype, k.arg.describe())
        assert k.arg.on_chip == "registers"
        if dtype == "bfloat16":  # the wider schedule computes what the oracle does
            inputs = oracle.random_inputs(region)
            oracle.assert_close(interpret(k, inputs)[0], oracle.evaluate(region, inputs)[0], dtype)
    # a row that fits half the registers of the preferred threads keeps them
    assert built(oracle.layer_norm(shape=(8, 8192), dtype="bfloat16"), "h200").arg.threads_per_row == preferred
    with tuned("sm_90", vector_row_past_preferred=False):
        assert built(oracle.layer_norm(shape=(8, 16384), dtype="bfloat16"), "h200").arg.threads_per_row == preferred


def test_half_rows_a_kernel_only_reads_take_twice_the_row_data_per_thread():
    import dataclasses

    from mlxtriton import hw

    h200 = hw.profile("h200")
    # rows enough to fill every core as many times over as the tuning data asks
    R = hw.tuning.tuning(h200).read_only_rows_per_core * max(h200.gpu_cores)
    for L in (2048, 4096, 16384):
        ce = built(oracle.cross_entropy_mlx(shape=(R, L), dtype="bfloat16"), "h200").arg
        lse = built(oracle.cross_entropy_mlx(shape=(R, L), dtype="float32"), "h200").arg
        writes = built(oracle.softmax(shape=(R, L), dtype="bfloat16"), "h200").arg
        assert ce.on_chip == "registers", ce.describe()
        if L == 2048:  # below the measured range: as any row
            assert ce.elements_per_thread == writes.elements_per_thread
        else:
            assert ce.elements_per_thread == 2 * writes.elements_per_thread, ce.describe()
            assert ce.threads_per_row * 2 == writes.threads_per_row
        assert lse.threads_per_row >= writes.threads_per_row  # float32 keeps its share
    # Apple chips keep one share (nothing measured there)
    assert hw.derive(hw.profile("h200"), 2).read_only_row_register_bytes == \
        2 * hw.derive(hw.profile("h200"), 2).register_bytes_per_thread
    assert (built(oracle.cross_entropy_mlx(shape=(R, 4096), dtype="bfloat16"), "m3").arg.elements_per_thread
            == built(oracle.softmax(shape=(R, 4096), dtype="bfloat16"), "m3").arg.elements_per_thread)
    # few rows (a split reduction's first level) keep their threads
    few = built(oracle.cross_entropy_mlx(shape=(256, 4096), dtype="bfloat16"), "h200").arg
    assert few.threads_per_row == built(oracle.softmax(shape=(256, 4096), dtype="bfloat16"), "h200").arg.threads_per_row
    # the wider share computes what the oracle does (one core, so that 16 rows qualify)
    one = dataclasses.replace(h200, gpu_cores=(1,))
    one_core = hw.Target(chip=one, device=one)
    region = oracle.cross_entropy_mlx(shape=(16, 4096), dtype="bfloat16")
    k = build(region, default(region, one_core))
    softmax = oracle.softmax(shape=(16, 4096), dtype="bfloat16")
    assert k.arg.elements_per_thread == 2 * build(softmax, default(softmax, one_core)).arg.elements_per_thread
    inputs = oracle.random_inputs(region)
    oracle.assert_close(interpret(k, inputs)[0], oracle.evaluate(region, inputs)[0], "bfloat16")
    with tuned("sm_90", read_only_half_rows=(0, 0)):
        assert default(region, one_core).threads_per_row == 2 * k.arg.threads_per_row


@pytest.mark.parametrize("L", [500, 4096])
def test_an_input_only_the_write_pass_reads_is_loaded_in_the_first_pass(L):
    region = oracle.rms_norm(shape=(8, L), dtype="bfloat16", gate=True)
    k = built(region, "h200")
    assert k.arg.prefetched == ("gate",) and k.arg.resident == ("x",), k.arg.describe()
    gate = next(u for u in _loads(k) if u.src[0].arg.name == "gate")
    assert gate.arg.resident
    source = render(k, "cuda").source
    first, write = source.split("// pass 2")
    assert "(gate + " in first and "(gate + " not in write  # loaded early, read from registers
    inputs = oracle.random_inputs(region)
    oracle.assert_close(interpret(k, inputs)[0], oracle.evaluate(region, inputs)[0], "bfloat16")
    # the renderer's shared code serves Metal too, should a chip's numbers ask for it there
    import dataclasses

    from tests.codegen import metal_check

    apple = oracle.rms_norm(shape=(8, L), dtype="float16", gate=True)
    on_apple = build(apple, dataclasses.replace(default(apple, target("metal")), prefetch=True))
    assert on_apple.arg.prefetched == ("gate",), on_apple.arg.describe()
    assert metal_check.check(render(on_apple, "metal")) == []
    # not on Apple (not measured there), not for a weight every row shares (w), not at the
    # widest threadgroup (bf16 rows of 16384: 1024 threads, measured slower), not switched off
    assert built(region, "m3").arg.prefetched == ()
    assert built(oracle.rms_norm(shape=(8, L), dtype="bfloat16"), "h200").arg.prefetched == ()
    wide = built(oracle.rms_norm(shape=(8, 16384), dtype="bfloat16", gate=True), "h200").arg
    assert wide.threadgroup_size == 1024 and wide.prefetched == (), wide.describe()
    with tuned("sm_90", prefetch_store_loads=False):
        off = built(region, "h200").arg
        assert off.prefetched == () and (off.threads_per_row, off.chunks) == (
            k.arg.threads_per_row, k.arg.chunks)


def test_staged_rows_type_check_as_metal():
    import dataclasses

    from tests.codegen import metal_check

    # Apple rows that miss the registers miss the 32 KB of threadgroup memory too; ask for it
    for dtype in ("float32", "float16"):
        region = oracle.layer_norm(shape=(64, 2048), dtype=dtype)
        k = build(region, dataclasses.replace(default(region, target("metal")), registers=(),
                                              staged=("x",)))
        assert k.arg.on_chip == "threadgroup", k.arg.describe()
        lowered = render(k, "metal")
        assert "threadgroup " in lowered.source and dict(lowered.options) == {"atomic_outputs": False}
        assert metal_check.check(lowered) == [], lowered.source


def test_streamed_rows_keep_nothing():
    k = built(oracle.softmax_composed(shape=(8, 65536)), "cuda")
    assert k.arg.on_chip == "stream" and not any(u.op is Ops.KEEP for u in k.toposort)


def test_half_quotients_by_a_row_value_multiply_by_its_reciprocal():
    def per_element_divisions(dtype):
        k = built(oracle.softmax_composed(shape=(64, 4096), dtype=dtype), "cuda")
        return [u for u in k.toposort if u.op is Ops.DIV and u.per_element]

    assert per_element_divisions("bfloat16") == per_element_divisions("float16") == []
    assert len(per_element_divisions("float32")) == 1  # float32 keeps IEEE division


def test_mlx_cross_entropy_needs_two_passes_not_three():
    # max(x - max(x)) is max(x) - max(x): LogSumExp of x - max(x) needs no max pass of its own;
    # streamed, sumexp(x - max x) is sumexp(x), one online pass with the max
    for shape, passes in (((32768, 4096), 2), ((8, 65536), 1)):
        k = built(oracle.cross_entropy_mlx(shape=shape, dtype="bfloat16"), "cuda")
        assert k.arg.passes == passes, shape
        assert _reduces(k) == ["max", "sum"] if passes == 2 else ["max", "sumexp"]


@pytest.mark.parametrize("length", [33, 65536], ids=["resident", "streamed"])
def test_cross_entropy_rewrite_keeps_special_values(length):
    region = oracle.cross_entropy_mlx(shape=(6, length))
    x = np.random.default_rng(0).standard_normal((6, length)).astype(np.float32)
    x[1, 3] = np.inf  # inf - inf: NaN
    x[2, :] = -np.inf  # all -inf: NaN
    x[3, 5] = np.nan
    x[4, 7] = -np.inf  # one -inf among finite values: finite
    labels = np.array([0, 1, 2, 3, 4, length - 1], np.int32)
    got = interpret(built(region, "cuda"), [x, labels])[0]
    want = oracle.evaluate(region, [x, labels])[0]
    np.testing.assert_allclose(got, want, rtol=2e-6, equal_nan=True)
    assert np.isnan(got[1:4]).all() and np.isfinite(got[[0, 4, 5]]).all()


def test_short_rows_share_simd_groups_without_barriers():
    k = built(oracle.rms_norm(shape=(1000, 16)), "cuda")
    assert (k.arg.threads_per_row, k.arg.rows_per_group, k.arg.reduction_tree) == (4, 64, "simd")
    source = lower(oracle.rms_norm(shape=(1000, 16)), "metal").source
    assert "threadgroup_barrier" not in source and "mt_active" in source  # 1000 % 64 rows


def test_one_element_rows_are_a_thread_each():
    k = built(oracle.layer_norm(shape=(10, 1)), "metal")
    assert (k.arg.threads_per_row, k.arg.reduction_tree) == (1, "none")


def test_column_sums_give_neighbouring_columns_to_neighbouring_threads():
    k = built(oracle.column_sum(shape=(4096, 512)), "cuda")
    s = k.arg
    # 512 columns of 4096 on the 132-SM H200: 8 columns per threadgroup (64 threadgroups rather
    # than 16 of 32 columns), 128 lanes each (1024 threads: one pass holds no row in registers),
    # a column's lanes 8 threads apart, combined through threadgroup memory
    assert (s.rows, s.row_length, s.threads_per_row, s.rows_per_group, s.interleaved) \
        == (512, 4096, 128, 8, True)
    assert s.reduction_tree == "threadgroup" and s.grid == 512 * 128
    wide = built(oracle.column_sum(shape=(8192, 4096)), "cuda").arg
    assert (wide.threads_per_row, wide.rows_per_group) == (32, 32)  # 128 threadgroups of 32 columns
    (x,) = _loads(k)
    assert x.arg.access is Access.SCALAR  # strided along the reduction, coalesced across threads
    short = built(oracle.column_sum(shape=(16, 512)), "cuda").arg
    assert (short.threads_per_row, short.interleaved, short.reduction_tree) == (1, False, "none")


def test_a_vector_along_the_reduced_axis_keeps_a_column_walk():
    # the weight gradient of a norm: sum over rows of g * x * rstd[row]; rstd is read by every
    # thread at once, so the walk still follows g and x down their columns
    b = RegionBuilder("weight_grad")
    g, x = b.input((256, 64), "float32", "g"), b.input((256, 64), "float32", "x")
    r = b.op("Broadcast", b.op("ExpandDims", b.input((256,), "float32", "r"), axes=(1,)),
             shape=(256, 64))
    out = b.op("Reduce", b.op("Multiply", b.op("Multiply", g, x), r), axes=(0,), kind="sum")
    k = built(b.build([out]), "cuda")
    assert (k.arg.rows, k.arg.row_length, k.arg.vector_width, k.arg.interleaved) == (64, 256, 1, True)


def test_pointwise_broadcasts_are_index_arithmetic_not_copies():
    k = built(oracle.pointwise_broadcast(shape=(4, 6, 32)), "cuda")
    assert k.arg.kind == "pointwise" and k.arg.vector_width == 4
    access = {u.src[0].arg.name: u.arg.access for u in _loads(k)}
    # transposed x still walks its last axis contiguously; w repeats per row; s is 0-d
    assert access == {"x": Access.VECTOR, "w": Access.VECTOR, "s": Access.HOISTED}
    assert [p.arg.shape for p in k.toposort if p.op is Ops.PARAM and p.arg.role == "input"] \
        == [(6, 4, 32), (32,), ()]


def test_a_transposed_last_axis_loses_vectors_but_not_correctness():
    b = RegionBuilder("t")
    x = b.input((64, 8), "float32", "x")
    region = b.build([b.op("Exp", b.op("Transpose", x, axes=(1, 0)))])
    (load,) = _loads(built(region, "cuda"))
    assert load.arg.access is Access.SCALAR


def test_contiguous_axes_merge_into_one_index():
    b = RegionBuilder("merge")
    x = b.input((2, 3, 4, 5), "float32", "x")
    region = b.build([b.op("Reduce", x, kind="sum", axes=(2, 3))])
    k = built(region, "cuda")
    (load,) = _loads(k)
    assert not any(u.op in (Ops.IDIV, Ops.MOD) for u in load.src[1].toposort)
    assert (k.arg.rows, k.arg.row_length) == (6, 20)


def test_chips_change_schedules():
    region = oracle.softmax(shape=(64, 2048))
    h200 = built(region, "h200").arg
    m3 = built(region, "m3").arg  # twice the registers per thread (Dynamic Caching)
    assert (h200.threads_per_row, m3.threads_per_row) == (128, 64)
    assert built(region, "h200") is built(region, "h200")


def test_kernels_are_hash_consed():
    assert built(oracle.layer_norm(), "cuda") is built(oracle.layer_norm(), "cuda")


def test_ir_print_shows_the_on_chip_decision():
    text = print_kernel(built(oracle.softmax(shape=(4, 1000)), "cuda"))
    assert "resident in registers" in text.splitlines()[0]
    assert "vector resident" in text


def test_huge_domains_index_in_64_bits():
    k = built(oracle.softmax(shape=(1 << 17, 1 << 15)), "cuda")
    assert k.arg.index_dtype == "int64"
    assert "int64_t mt_row" in lower(oracle.softmax(shape=(1 << 17, 1 << 15)), "cuda").source


def test_schedules_follow_the_chips_limits():
    # an M3's half-precision rows: 4 lanes (its vector types), 8 bytes; a SIMD-group of 32
    s = default(oracle.softmax(shape=(8, 1000), dtype="float16"), target("m3"))
    assert (s.vector_width, s.simd_width) == (4, 32)


# -- errors name the op and why -----------------------------------------------------------------

def test_two_reduction_shapes_are_not_one_kernel():
    b = RegionBuilder("two")
    x = b.input((4, 8), "float32", "x")
    region = b.build([b.op("Reduce", x, kind="sum", axes=(1,)),
                      b.op("Reduce", x, kind="sum", axes=(0,))])
    with pytest.raises(RegionError, match="one set of axes"):
        built(region, "cuda")


def test_reading_another_rows_reduction_is_not_one_kernel():
    b = RegionBuilder("shift")
    x = b.input((4, 4), "float32", "x")
    s = b.op("Reduce", x, kind="sum", axes=(1,))  # (4, 1)
    t = b.op("Transpose", b.op("Broadcast", s, shape=(4, 4)), axes=(1, 0))
    with pytest.raises(RegionError, match=r"op 2 \(Broadcast\)|op 0 \(Reduce\)"):
        built(b.build([b.op("Add", x, t)]), "cuda")


def test_unknown_primitives_and_mixed_dtypes_are_named():
    b = RegionBuilder("bad")
    x = b.input((4,), "float32", "x")
    with pytest.raises(RegionError, match="'Cholesky'"):
        built(b.build([b.op("Cholesky", x)]), "cuda")
    b = RegionBuilder("mixed")
    x, i = b.input((4,), "float32", "x"), b.input((4,), "int32", "i")
    with pytest.raises(RegionError, match=r"op 0 \(Add\).*AsType"):
        built(b.build([b.op("Add", x, i)]), "cuda")
    b = RegionBuilder("f64")
    with pytest.raises(RegionError, match="float64"):
        built(b.build([b.op("Exp", b.input((4,), "float64", "x"))]), "cuda")


def test_long_rows_take_1024_threads_under_a_declared_launch_bound():
    # 32768 float32 misses the registers of 512 threads (32 elements each): 1024 threads hold it,
    # and the kernel declares the bound so NVRTC fits their registers in the register file
    k = built(oracle.softmax(shape=(64, 32768)), "h200")
    assert (k.arg.threads_per_row, k.arg.on_chip, k.arg.launch_bound) == (1024, "registers", 1024)
    lowered = render(k, "cuda")
    assert lowered.header.endswith("#undef __global__\n#define __global__ __attribute__((global)) "
                                   "__launch_bounds__(1024)\n")
    assert render(k, "metal").header.count("__global__") == 0
    # a row that fits 512 threads' registers keeps 512, launched without a bound
    k = built(oracle.softmax(shape=(64, 16384)), "h200")
    assert (k.arg.threads_per_row, k.arg.on_chip, k.arg.launch_bound) == (512, "registers", 0)
    assert "__launch_bounds__" not in render(k, "cuda").header
    # bfloat16 counts its elements, not its registers: 32768 take 1024 threads too
    assert built(oracle.softmax(shape=(64, 32768), dtype="bfloat16"), "h200").arg.threads_per_row == 1024
    # a cross-entropy read in one pass (online max-and-sum) keeps 512 threads
    ce = built(oracle.cross_entropy_mlx(shape=(8, 32768)), "h200").arg
    assert (ce.threads_per_row, ce.passes, ce.launch_bound) == (512, 1, 0)


@settings(max_examples=40, deadline=None)
@given(family=st.sampled_from(["softmax", "layer_norm", "rms_norm", "cross_entropy_mlx", "logsumexp"]),
       length=st.integers(1, 1 << 17), dtype=st.sampled_from(["float32", "bfloat16"]))
def test_threadgroups_above_512_declare_their_bound_on_the_h200(family, length, dtype):
    """Every H200 kernel of more threads than launch without a bound declares exactly its
    threadgroup as the bound, and no smaller one declares any; a row takes more than the
    preferred threads only when it misses their registers (a capped row's share each, half that
    for a half-precision row reading a weight) and is read in several passes."""
    from mlxtriton import hw

    h200 = hw.profile("h200")
    t, p = hw.tuning.tuning(h200), hw.derive(h200, 4)
    region = getattr(oracle, family)(shape=(2, length), dtype=dtype)
    s = built(region, "h200").arg
    assert s.launch_bound == (s.threadgroup_size if s.threadgroup_size > p.unbounded_threads else 0)
    if s.threads_per_row > t.preferred_row_threads:
        held = p.max_row_register_bytes // 4 // t.vector_row_register_share
        assert -(-length // t.preferred_row_threads) > held and s.passes > 1


def test_block_column_sums_belong_to_a_row_kernel():
    def region(with_row_reduction: bool, read_back: bool):
        b = RegionBuilder("blocks")
        x = b.input((8, 16), "float32", "x")
        p = b.op("Reduce", b.op("Reshape", b.op("Exp", x), shape=(2, 4, 16)), kind="sum", axes=(1,))
        outs = [b.op("Softmax", x) if with_row_reduction else b.op("Exp", x)]
        return b.build(outs + [b.op("Multiply", p, p) if read_back else p])

    with pytest.raises(RegionError, match="needs a row kernel, and this region reduces no row"):
        built(region(False, False), "cuda")
    with pytest.raises(RegionError, match="only written out, not read by the region"):
        built(region(True, True), "cuda")
    s = built(region(True, False), "cuda").arg
    # 2 threadgroups of whole SIMD-groups, each walking 4 rows
    assert (s.rows_per_block, s.rows_per_group, s.threads_per_row, s.grid) == (4, 1, 32, 64)


def test_block_sums_take_threads_for_their_registers_and_declare_the_bound():
    # two block sums over f32 rows of 4096: 256 threads would hold 2 x 16 registers of sums
    # (the tuning data's block_sum_registers is 16), so the row takes 512; the bound is declared, with
    # room for 1024 threads per SM (64 registers each)
    region = oracle.FAMILIES["rmsnormgrad"](shape=(64, 4096))
    s = built(region, "h200").arg
    assert (s.threads_per_row, s.chunks * s.vector_width, s.launch_bound) == (512, 8, 512)
    assert "__launch_bounds__(512, 2)" in render(built(region, "h200"), "cuda").header
    s = built(oracle.FAMILIES["rmsnormgrad"](shape=(64, 1024)), "h200").arg
    assert (s.launch_bound, s.launch_min_groups) == (128, 8)
    s = built(oracle.FAMILIES["rmsnormgrad"](shape=(64, 32768)), "h200").arg
    assert (s.launch_bound, s.launch_min_groups) == (1024, 1)
    assert "__launch_bounds__(1024)\n" in render(built(oracle.FAMILIES["rmsnormgrad"](
        shape=(64, 32768)), "h200"), "cuda").header
    assert built(region, "m3").arg.launch_min_groups == 0
    assert built(oracle.FAMILIES["rmsnorm"](shape=(64, 4096)), "h200").arg.launch_bound == 0


@pytest.mark.parametrize("language", ["cuda", "metal"], ids=["cuda-source", "metal-source"])
def test_a_block_of_rows_loads_what_its_rows_share_once(language):
    # the weight w is the same for every row: loaded before the threadgroup walks its rows,
    # the rows' own x and g inside the walk
    region = oracle.FAMILIES["rmsnormgrad"](shape=(64, 4096), dtype="bfloat16")
    k = built(region, "h200" if language == "cuda" else "m3")
    assert k.arg.rows_per_block > 1 and "w" in k.arg.resident
    src = render(k, language).source
    walk = src.index("for (int mt_rb")
    assert src.count("(w + ") == 1 and src.index("(w + ") < walk
    assert src.count("(x + ") == 1 and src.index("(x + ") > walk
    assert src.count("(g + ") == 1 and src.index("(g + ") > walk


@pytest.mark.parametrize("length", [4096, 65536], ids=["resident", "streamed"])
def test_a_rows_own_scalars_are_read_before_its_passes(length):
    # a cross-entropy's label and the logit it picks do not wait for the row's reductions:
    # read after their barriers, each would wait for memory with nothing else in flight
    region = oracle.FAMILIES["crossentropy"](shape=(8, length), dtype="bfloat16")
    chosen = default(region, target("h200"))
    assert chosen.hoist_row_loads
    for hoisted in (True, False):
        src = render(build(region, dataclasses.replace(chosen, hoist_row_loads=hoisted)), "cuda").source
        first_pass, label = src.index("// pass 1"), src.index("= labels[mt_row]")
        picked = src.index("= logits[", label)  # the picked logit: indexed by the label
        assert (label < first_pass and picked < first_pass) == hoisted
        assert src.count("= labels[") == 1


def test_block_sums_leave_capped_registers_to_kept_values():
    # a 1024-thread kernel (64 registers each under its bound on the H200) that keeps its
    # sigmoid between passes holds its block sums in threadgroup memory; at 256 threads, on an
    # M3, or without a kept value, in registers
    s = built(oracle.gated_block_sum(shape=(16, 16384)), "h200").arg
    assert (s.threads_per_row, s.kept > 0, s.block_sums_shared) == (1024, True, True)
    assert "column sums kept per block in threadgroup memory" in s.describe()
    src = render(built(oracle.gated_block_sum(shape=(16, 16384)), "h200"), "cuda")
    assert "+ mt_tid] += " in src.source and dict(src.options)["shared_memory"] >= 16 * 1024 * 4
    s = built(oracle.gated_block_sum(shape=(16, 4096)), "h200").arg
    assert (s.threads_per_row, s.kept > 0, s.block_sums_shared) == (256, True, False)
    assert not built(oracle.gated_block_sum(shape=(16, 16384)), "m3").arg.block_sums_shared
    assert not built(oracle.FAMILIES["rmsnormgrad"](shape=(16, 32768)), "h200").arg.block_sums_shared


def test_block_sums_in_threadgroup_memory_type_check_in_metal():
    from tests.codegen import metal_check

    for region in (oracle.gated_block_sum(shape=(16, 4096)),
                   oracle.FAMILIES["rmsnormgrad"](shape=(16, 1000), dtype="bfloat16")):
        k = build(region, dataclasses.replace(default(region, target("m3")), block_sums_shared=True))
        assert k.arg.block_sums_shared
        kernel = render(k, "metal")
        assert not metal_check.check(kernel), kernel.source


def test_a_small_wide_operand_does_not_narrow_a_pointwise_vector():
    """bfloat16 rows selected by an int32 column index broadcast over them (cross-entropy's
    one-hot): on the H200 8 bf16 lanes (16 bytes) per load and store, the index read 8 at a
    time from cache; without the rule its 16 bytes held the vector to 4 lanes. Metal's vector
    types keep 4. The kernel computes what the oracle does."""
    b = RegionBuilder("onehot")
    x = b.input((16, 4096), "bfloat16", "x")
    col = b.input((4096,), "int32", "col")
    lab = b.input((16, 1), "int32", "lab")
    hit = b.op("Equal", b.op("Broadcast", col, shape=(16, 4096)), b.op("Broadcast", lab, shape=(16, 4096)),
               equal_nan=False)
    zero = b.op("Broadcast", b.constant(0.0, "bfloat16"), shape=(16, 4096))
    region = b.build([b.op("Select", hit, x, zero)])
    assert built(region, "h200").arg.vector_width == 8
    assert built(region, "m3").arg.vector_width == 4
    with tuned("sm_90", wide_small_operands=False):
        assert built(region, "h200").arg.vector_width == 4
    rng = np.random.default_rng(0)
    args = [rng.standard_normal((16, 4096)).astype(np.float32), np.arange(4096, dtype=np.int32),
            np.array([[3], [4095], [0], [4100]] * 4, np.int32)]
    got = interpret(built(region, "h200"), args)[0]
    np.testing.assert_array_equal(got, oracle.evaluate(region, args)[0])
    assert np.count_nonzero(got) == 12
