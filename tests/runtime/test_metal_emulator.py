"""The Metal emulator itself, on hand-written kernels: MLX's wrapping reproduced exactly, Metal's
dispatch semantics, SIMD-group functions, half / bfloat rounding, and every check that must
fail a launch (device bounds and alignment, threadgroup-memory races and uninitialised reads,
divergent barriers and SIMD-group operations, unwritten outputs, a thread's own faults)."""

from __future__ import annotations

import dataclasses
import functools

import mlx.core as mx
import numpy as np
import pytest

from mlxtriton.codegen.render import LoweredKernel, lower
from mlxtriton.runtime import emulator
from mlxtriton.runtime.emulator import MetalEmulatorError
from tests.codegen import codegen_oracle as oracle
from tests.codegen import metal_check
from tests.runtime import handwritten
from tests.runtime.handwritten import SPECIAL, X64, fails

pytestmark = pytest.mark.skipif(not emulator.has_compiler(), reason="no C++ compiler")

kernel = functools.partial(handwritten.kernel, "metal")  # a hand-written Metal kernel


# -- MLX's wrapping, reproduced ------------------------------------------------------------------

def test_wrapping_is_the_text_mlx_records():
    regions = [oracle.softmax(shape=(4, 500)), oracle.cross_entropy(shape=(3, 40), dtype="bfloat16"),
               oracle.pointwise_broadcast(dtype="float16"), oracle.rms_norm_grad(shape=(8, 300))]
    for region in regions:
        k = lower(region, "metal")
        assert emulator.wrap(k).source == metal_check.wrapped_source(k)
    # template arguments, shape / strides / ndim parameters, a 0-d and a small input, atomics
    hand = kernel("out[0] = x[0] + T(N) + x_shape[0] + x_strides[0] + x_ndim + s + c[1] "
                  "+ thread_index_in_simdgroup;",
                  {"x": ((3, 4), "float32"), "s": ((), "float32"), "c": ((2,), "int32")},
                  {"out": ((1,), "float32")}, (32, 1, 1), (32, 1, 1),
                  template=(("T", mx.float32), ("N", 3), ("B", True)), options=(("atomic_outputs", True),))
    assert emulator.wrap(hand).source == metal_check.wrapped_source(hand)


# -- dispatch ------------------------------------------------------------------------------------

_ATTRIBUTES = """
const uint gid = thread_position_in_grid.x + thread_position_in_grid.y * threads_per_grid.x;
pos[gid * 3 + 0] = thread_position_in_threadgroup.x;
pos[gid * 3 + 1] = thread_position_in_threadgroup.y;
pos[gid * 3 + 2] = threadgroup_position_in_grid.x + 10 * threadgroup_position_in_grid.y;
size[gid * 3 + 0] = threads_per_threadgroup.x;
size[gid * 3 + 1] = threads_per_threadgroup.y;
size[gid * 3 + 2] = dispatch_threads_per_threadgroup.x * 100 + threadgroups_per_grid.x * 10 + threadgroups_per_grid.y;
lane[gid * 3 + 0] = thread_index_in_threadgroup;
lane[gid * 3 + 1] = simdgroup_index_in_threadgroup * 100 + thread_index_in_simdgroup;
lane[gid * 3 + 2] = simdgroups_per_threadgroup * 100 + threads_per_simdgroup;
"""


def test_grid_counts_threads_and_edge_threadgroups_are_smaller():
    # dispatchThreads: 70 x 3 threads in threadgroups of 32 x 2; the last column of threadgroups
    # holds 6 threads across, the last row 1 thread down.
    gx, gy, tx, ty = 70, 3, 32, 2
    outs = {n: ((gx * gy * 3,), "uint32") for n in ("pos", "size", "lane")}
    pos, size, lane = emulator.run(kernel(_ATTRIBUTES, {}, outs, (gx, gy, 1), (tx, ty, 1)), [])
    for y in range(gy):
        for x in range(gx):
            gid = x + y * gx
            bx, by = x // tx, y // ty
            sx, sy = min(tx, gx - bx * tx), min(ty, gy - by * ty)
            lx, ly = x % tx, y % ty
            index = lx + ly * sx
            assert list(pos[gid * 3:gid * 3 + 3]) == [lx, ly, bx + 10 * by]
            assert list(size[gid * 3:gid * 3 + 3]) == [sx, sy, tx * 100 + 30 + 2]
            assert list(lane[gid * 3:gid * 3 + 3]) == [index, (index // 32) * 100 + index % 32,
                                                     -(-sx * sy // 32) * 100 + 32]


def test_threadgroup_clamped_to_the_grid_as_mlx_does():
    k = kernel(_ATTRIBUTES, {}, {n: ((3 * 5,), "uint32") for n in ("pos", "size", "lane")},
               (5, 1, 1), (256, 1, 1))
    _, size, _ = emulator.run(k, [])
    assert list(size[:3]) == [5, 1, 500 + 10 + 1]


# -- SIMD-group functions --------------------------------------------------------------------------

_SIMD = """
const uint i = thread_position_in_grid.x;
const uint l = thread_index_in_simdgroup;
const float v = x[i];
out[i * 12 + 0] = metal::simd_sum(v);
out[i * 12 + 1] = metal::simd_max(v);
out[i * 12 + 2] = metal::simd_min(v);
out[i * 12 + 3] = metal::simd_prefix_inclusive_sum(v);
out[i * 12 + 4] = metal::simd_prefix_exclusive_sum(v);
out[i * 12 + 5] = metal::simd_shuffle_xor(v, static_cast<ushort>(3));
out[i * 12 + 6] = metal::simd_shuffle_down(v, static_cast<ushort>(5));
out[i * 12 + 7] = metal::simd_shuffle_up(v, static_cast<ushort>(2));
out[i * 12 + 8] = metal::simd_broadcast(v, static_cast<ushort>(7));
out[i * 12 + 9] = metal::simd_shuffle(v, static_cast<ushort>((l * 7) % 16));
out[i * 12 + 10] = float(metal::simd_sum(int(v)) + metal::simd_max(int(l)));
out[i * 12 + 11] = float(metal::simd_any(v > 40.0f)) + 2.0f * float(metal::simd_all(v >= 0.0f));
"""


def test_simd_group_functions_over_32_lanes():
    n = 64
    x = np.random.default_rng(0).integers(0, 50, n).astype(np.float32)
    (out,) = emulator.run(kernel(_SIMD, {"x": ((n,), "float32")}, {"out": ((n * 12,), "float32")},
                                 (n, 1, 1), (n, 1, 1)), [x])
    out = out.reshape(n, 12)
    lanes = np.arange(32)
    for start in (0, 32):
        v = x[start:start + 32]
        got = out[start:start + 32]
        np.testing.assert_array_equal(got[:, 0], v.sum())
        np.testing.assert_array_equal(got[:, 1], v.max())
        np.testing.assert_array_equal(got[:, 2], v.min())
        np.testing.assert_array_equal(got[:, 3], np.cumsum(v))
        np.testing.assert_array_equal(got[:, 4], np.cumsum(v) - v)
        np.testing.assert_array_equal(got[:, 5], v[lanes ^ 3])
        np.testing.assert_array_equal(got[:, 6], np.where(lanes + 5 < 32, v[np.minimum(lanes + 5, 31)], v))
        np.testing.assert_array_equal(got[:, 7], np.where(lanes >= 2, v[np.maximum(lanes - 2, 0)], v))
        np.testing.assert_array_equal(got[:, 8], v[7])
        np.testing.assert_array_equal(got[:, 9], v[(lanes * 7) % 16])
        np.testing.assert_array_equal(got[:, 10], v.sum() + 31)
        np.testing.assert_array_equal(got[:, 11], float((v > 40).any()) + 2.0 * float((v >= 0).all()))


def test_a_partial_simd_group_reduces_its_lanes_and_has_no_others():
    # 48 threads: the second SIMD-group has lanes 0-15 only
    src = ("const uint i = thread_position_in_grid.x;\n"
           "out[i] = metal::simd_sum(1.0f) + metal::simd_prefix_exclusive_sum(1.0f) * 100.0f;\n")
    (out,) = emulator.run(kernel(src, {}, {"out": ((48,), "float32")}, (48, 1, 1), (48, 1, 1),
                                 name="partial"), [])
    np.testing.assert_array_equal(out, np.r_[32 + 100 * np.arange(32), 16 + 100 * np.arange(16)])
    src = "out[thread_position_in_grid.x] = metal::simd_shuffle_down(1.0f, static_cast<ushort>(5));\n"
    fails(kernel(src, {}, {"out": ((48,), "float32")}, (48, 1, 1), (48, 1, 1), name="partial2"),
          [], "simd_shuffle_down: lane 11 reads lane 16", "inactive")


def test_returned_lanes_leave_reductions_and_cannot_be_shuffled_from():
    src = ("const uint i = thread_position_in_grid.x;\nif (i >= 20) return;\n"
           "out[i] = metal::simd_sum(1.0f);\n")
    k = kernel(src, {}, {"out": ((32,), "float32")}, (32, 1, 1), (32, 1, 1), name="ret")
    with pytest.raises(MetalEmulatorError, match="left 12 of the 32 elements of output out"):
        emulator.run(k, [])  # the reduction is over the 20 active lanes; lanes 20-31 wrote nothing
    out = emulator.run(k, [], groups=[0])[0]
    np.testing.assert_array_equal(out[:20], 20.0)
    src = "const uint i = thread_position_in_grid.x;\nif (i >= 20) return;\nout[i] = metal::simd_shuffle_xor(1.0f, static_cast<ushort>(16));\n"
    fails(kernel(src, {}, {"out": ((32,), "float32")}, (32, 1, 1), (32, 1, 1), name="ret2"), [],
          "lane 4 reads lane 20", "returned")


# -- numbers -------------------------------------------------------------------------------------

def test_half_and_bfloat_conversions_round_as_mlx():
    src = ("const uint i = thread_position_in_grid.x;\n"
           "h[i] = static_cast<half>(x[i]);\nb[i] = static_cast<bfloat16_t>(x[i]);\n"
           "back[i] = float(h[i]);\n")
    n = len(SPECIAL)
    h, b, back = emulator.run(kernel(src, {"x": ((n,), "float32")}, {
        "h": ((n,), "float16"), "b": ((n,), "bfloat16"), "back": ((n,), "float32")}, (n, 1, 1), (n, 1, 1)),
        [SPECIAL])
    want_h = np.array(mx.array(SPECIAL).astype(mx.float16))
    want_b = np.array(mx.array(SPECIAL).astype(mx.bfloat16).view(mx.uint16))
    got_b = b.view(np.uint16)
    nan = np.isnan(SPECIAL)
    np.testing.assert_array_equal(h.view(np.uint16)[~nan], want_h.view(np.uint16)[~nan])
    np.testing.assert_array_equal(got_b[~nan], want_b[~nan])
    assert np.isnan(h[nan]).all() and ((got_b[nan] & 0x7fff) > 0x7f80).all()
    np.testing.assert_array_equal(back, want_h.astype(np.float32))


# -- threadgroup memory ------------------------------------------------------------------------------

def _tg(body: str, name: str, threads: int = 64) -> LoweredKernel:
    src = ("threadgroup float s[64];\nconst uint t = thread_position_in_threadgroup.x;\n" + body)
    return kernel(src, {"x": ((threads,), "float32")}, {"out": ((threads,), "float32")},
                  (threads, 1, 1), (threads, 1, 1), name=name)


def test_threadgroup_memory_with_barriers_is_shared():
    k = _tg("s[t] = x[t];\nmetal::threadgroup_barrier(metal::mem_flags::mem_threadgroup);\n"
            "out[t] = s[63 - t];\n", "ok")
    np.testing.assert_array_equal(emulator.run(k, X64)[0], 63 - X64[0])
    # a simdgroup barrier orders the threads of one SIMD-group
    k = _tg("s[t] = x[t];\nmetal::simdgroup_barrier(metal::mem_flags::mem_threadgroup);\n"
            "out[t] = s[t ^ 1];\n", "simd")
    np.testing.assert_array_equal(emulator.run(k, X64)[0], X64[0].astype(int) ^ 1)


@pytest.mark.parametrize("name,body,message", [
    ("uninitialised", "out[t] = s[t];\n", "read of threadgroup memory s[0] before any thread wrote it"),
    ("read-after-write", "s[t] = x[t];\nconst float w = metal::simd_sum(1.0f);\nout[t] = s[t ^ 1] + w;\n",
     "race on threadgroup memory s[1]: thread 0 reads what thread 1 wrote with no barrier between"),
    ("write-after-read", "s[t] = x[t];\nmetal::threadgroup_barrier(metal::mem_flags::mem_threadgroup);\n"
     "const float a = s[t ^ 1];\nconst float w = metal::simd_sum(a);\ns[t] = w;\nout[t] = a;\n",
     "thread 0 overwrites what another thread read with no barrier between"),
    ("write-write", "s[0] = x[t];\nout[t] = 0.0f;\n", "threads 0 and 1 write it with no barrier between"),
    ("barrier without threadgroup memory ordering",
     "s[t] = x[t];\nmetal::threadgroup_barrier(metal::mem_flags::mem_none);\nout[t] = s[63 - t];\n",
     "thread 0 reads what thread 63 wrote with no barrier between"),
    ("simdgroup barrier across SIMD-groups",
     "s[t] = x[t];\nmetal::simdgroup_barrier(metal::mem_flags::mem_threadgroup);\nout[t] = s[63 - t];\n",
     "thread 0 reads what thread 63 wrote"),
    ("out of bounds", "s[t + 1] = x[t];\n", "out-of-bounds access of threadgroup memory s[64]"),
])
def test_threadgroup_memory_misuse_fails(name, body, message):
    text = fails(_tg(body, name.replace(" ", "_").replace("-", "_")), X64, message)
    assert "line " in text


def test_threadgroup_memory_is_limited_to_32_kb():
    src = ("threadgroup float a[8000];\nthreadgroup float b[256];\n"
           "a[0] = 1.0f; b[0] = 1.0f; out[0] = 1.0f;")
    fails(kernel(src, {}, {"out": ((1,), "float32")}, (1, 1, 1), (1, 1, 1), name="big"), [],
          "33024 bytes declared with b", "32768")


# -- device memory ------------------------------------------------------------------------------

def _dev(body: str, name: str, n: int = 64, out_n: int = 64, **fields) -> LoweredKernel:
    return kernel("const uint i = thread_position_in_grid.x;\n" + body, {"x": ((n,), "float32")},
                  {"out": ((out_n,), "float32")}, (n, 1, 1), (n, 1, 1), name=name, **fields)


def test_out_of_bounds_read_names_kernel_buffer_thread_and_line():
    k = _dev("out[i] = x[i + 1];\n", "oob")
    line = emulator.wrap(k).source.splitlines().index("out[i] = x[i + 1];") + 1
    text = fails(k, X64, "out-of-bounds read of x at element 64", "x holds 64 elements",
                 "thread (63,0,0) of threadgroup (0,0,0)", f"line {line}: out[i] = x[i + 1];")
    assert text.startswith("kernel test_oob: ")


@pytest.mark.parametrize("name,body,message", [
    ("write", "out[i + 1] = x[i];\n", "out-of-bounds write of out at element 64"),
    ("negative", "out[i] = x[int(i) - 1];\n", "out-of-bounds read of x at element -1"),
    ("misaligned", "out[i] = (*reinterpret_cast<const device float4*>(x + 1))[0];\n",
     "misaligned read of x: 16 bytes at byte offset 4 need 16-byte alignment"),
    ("vector past the end", "out[i] = (*reinterpret_cast<const device float4*>(x + 4 * i))[0];\n",
     "out-of-bounds read of x at element 64"),
    ("written twice", "out[i / 2] = x[i];\n", "out[0] written by two threads (grid-linear ids 0 and 1)"),
    ("unwritten", "if (i > 0) out[i] = x[i];\n", "left 1 of the 64 elements of output out unwritten"),
    ("read before written", "out[i] = x[i] + out[i];\n", "read of out[0], an output element nothing wrote yet"),
])
def test_device_memory_misuse_fails(name, body, message):
    fails(_dev(body, name.replace(" ", "_")), X64, message)


def test_vector_loads_and_stores_of_device_memory():
    body = ("if (i >= 16) return;\n"
            "const float4 v = *reinterpret_cast<const device float4*>(x + 4 * i);\n"
            "const float4 r = v.wzyx;\n"
            "*reinterpret_cast<device float4*>(out + 4 * i) = r * 2.0f;\n")
    (out,) = emulator.run(_dev(body, "vec"), X64)
    np.testing.assert_array_equal(out, (X64[0].reshape(16, 4)[:, ::-1] * 2).reshape(-1))


# -- control flow ----------------------------------------------------------------------------------

@pytest.mark.parametrize("name,body,message", [
    ("barrier not reached", "if (i < 16) metal::threadgroup_barrier(metal::mem_flags::mem_threadgroup);\nout[i] = 0.0f;\n",
     "is not reached by every thread of the threadgroup"),
    ("two barriers", "if (i < 40) { metal::threadgroup_barrier(metal::mem_flags::mem_threadgroup); }\n"
     "else { metal::threadgroup_barrier(metal::mem_flags::mem_threadgroup); }\nout[i] = 0.0f;\n",
     "divergent threadgroup"),
    ("divergent simd", "float v = 0.0f;\nif (i % 2) v = metal::simd_sum(1.0f);\n"
     "metal::threadgroup_barrier(metal::mem_flags::mem_threadgroup);\nout[i] = v;\n",
     "divergent SIMD-group"),
    ("non-uniform shuffle mask", "out[i] = metal::simd_shuffle_xor(x[i], static_cast<ushort>(i % 2));\n",
     "pass different arguments"),
])
def test_divergence_fails(name, body, message):
    fails(_dev(body, name.replace(" ", "_").replace("-", "_")), X64, message)


@pytest.mark.parametrize("name,body,message", [
    ("local array", "float a[4] = {};\nfor (int k = 0; k <= int(x[i]); ++k) a[k] = 1.0f;\nout[i] = a[0];\n",
     "index out of bounds of a thread's local array"),
    ("division by zero", "out[i] = float(int(i) / int(x[i]));\n", "integer division by zero"),
])
def test_faults_of_a_thread_fail(name, body, message):
    fails(_dev(body, name.replace(" ", "_")), X64, message)


# -- kernels as MLX runs them ------------------------------------------------------------------------

def test_atomic_outputs_and_init_value():
    src = ("const uint i = thread_position_in_grid.x;\n"
           "atomic_fetch_add_explicit(&out[i % 4], 1.0f + x[i], memory_order_relaxed);\n")
    k = kernel(src, {"x": ((100,), "float32")}, {"out": ((4,), "float32")}, (100, 1, 1), (32, 1, 1),
               name="atomic", init_value=10.0, options=(("atomic_outputs", True),))
    x = np.arange(100, dtype=np.float32)
    (out,) = emulator.run(k, [x])
    np.testing.assert_array_equal(out, [10 + sum(1 + x[j] for j in range(r, 100, 4)) for r in range(4)])


def test_template_arguments_and_shape_parameters():
    src = ("const uint i = thread_position_in_grid.x;\n"
           "out[i] = T(N) * x[i] + T(x_shape[0] * 100 + x_shape[1] * 10 + x_ndim) + T(x_strides[0]);\n")
    k = kernel(src, {"x": ((3, 4), "float32")}, {"out": ((12,), "float32")}, (12, 1, 1), (12, 1, 1),
               name="tmpl", template=(("T", mx.float32), ("N", 3)))
    x = np.arange(12, dtype=np.float32).reshape(3, 4)
    (out,) = emulator.run(k, [x])
    np.testing.assert_array_equal(out, 3 * x.reshape(-1) + 342 + 4)


def test_scalar_and_constant_space_inputs():
    src = "const uint i = thread_position_in_grid.x;\nout[i] = s * c[i % 3] + x[i];\n"
    k = kernel(src, {"s": ((), "float32"), "c": ((3,), "int32"), "x": ((10,), "float32")},
               {"out": ((10,), "float32")}, (10, 1, 1), (10, 1, 1), name="scalar")
    c = np.array([1, 2, 3], np.int32)
    x = np.arange(10, dtype=np.float32)
    (out,) = emulator.run(k, [np.array(2.0, np.float32), c, x])
    np.testing.assert_array_equal(out, 2 * c[np.arange(10) % 3] + x)


def test_threadgroups_above_1024_threads_fail():
    fails(kernel("out[0] = 1.0f;\n", {}, {"out": ((1,), "float32")}, (2048, 1, 1), (2048, 1, 1),
                 name="huge"), [], "at most 1024")


def test_running_chosen_threadgroups_only():
    k = _dev("out[i] = x[i] * 2.0f;\n", "sampled", n=64)
    k = dataclasses.replace(k, threadgroup=(16, 1, 1))
    (out,) = emulator.run(k, X64, groups=[1, 3])
    np.testing.assert_array_equal(out[16:32], 2 * X64[0][16:32])
    np.testing.assert_array_equal(out[48:], 2 * X64[0][48:])
    assert not out[:16].any() and not out[32:48].any()
