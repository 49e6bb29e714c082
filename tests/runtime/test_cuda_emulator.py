"""The emulator's CUDA front end on hand-written kernels: MLX's translation unit reproduced,
MLX's launch in whole blocks (threads past the grid's end run), warp shuffles and votes, half and
bfloat16 with CUDA's rounding, the dialect's inline PTX, and every check that must fail a launch
(device bounds past the grid's end, shared-memory races and uninitialised reads, dynamic shared
memory, divergent __syncthreads, shuffles from exited lanes, launch bounds)."""

from __future__ import annotations

import mlx.core as mx
import numpy as np
import pytest

from mlxtriton.codegen.render import LoweredKernel, lower
from mlxtriton.runtime import emulator
from mlxtriton.runtime.emulator import TranslationError
from tests.codegen import codegen_oracle as oracle
from tests.codegen import cuda_check
from tests.runtime import handwritten
from tests.runtime.handwritten import SPECIAL, X64, fails

pytestmark = pytest.mark.skipif(not emulator.has_compiler(), reason="no C++ compiler")

HEADER = handwritten.HEADERS["cuda"]


def kernel(source: str, inputs: dict, outputs: dict, grid, threadgroup, name: str = "k",
           header: str = HEADER, shared_memory: int = 0, **fields) -> LoweredKernel:
    """A hand-written CUDA kernel (`handwritten.kernel`) launched with ``shared_memory`` bytes of
    dynamic shared memory."""
    return handwritten.kernel("cuda", source, inputs, outputs, grid, threadgroup, name, header,
                              options=(("shared_memory", shared_memory),), **fields)


# -- MLX's translation unit, reproduced --------------------------------------------------------------

def test_wrapping_is_the_unit_mlx_hands_nvrtc():
    # two transcriptions of mlx/backend/cuda/custom_kernel.cpp: the emulator's and nvcc checks'
    for region in (oracle.softmax(shape=(4, 500)), oracle.cross_entropy(shape=(3, 40), dtype="bfloat16"),
                   oracle.pointwise_broadcast(dtype="float16"), oracle.rms_norm_grad(shape=(8, 300))):
        k = lower(region, "cuda")
        assert emulator.wrap(k).source == cuda_check.wrapped_source(k)
    # template arguments and shape / strides / ndim parameters, as MLX writes them
    hand = kernel("out[0] = x[0] + T(N) + x_shape[0] + x_strides[1] + x_ndim + (B ? 1 : 0);",
                  {"x": ((3, 4), "float32")}, {"out": ((1,), "float32")}, (1, 1, 1), (1, 1, 1),
                  template=(("T", mx.float32), ("N", 3), ("B", True)))
    w = emulator.wrap(hand)
    assert w.name == "custom_kernel_test_k_float_3_t"
    assert ("    const float* x,\n    const __grid_constant__ Shape x_shape,\n"
            "    const __grid_constant__ Strides x_strides,\n    const __grid_constant__ int x_ndim,\n"
            "    float* out) {\n  using T = float;\n  constexpr int N = 3;\n  constexpr bool B = true;\n") in w.source
    (out,) = emulator.run(hand, [np.full((3, 4), 2.0, np.float32)])
    assert out[0] == 2 + 3 + 3 + 1 + 2 + 1


# -- launch: MLX's blocks -------------------------------------------------------------------------

_POSITIONS = """
const uint32_t b = blockIdx.x + gridDim.x * blockIdx.y;
const uint32_t t = threadIdx.x + blockDim.x * threadIdx.y;
const uint32_t i = b * blockDim.x * blockDim.y + t;
if (i >= 4 * 70 * 3) return;
pos[i * 4 + 0] = threadIdx.x + 100 * threadIdx.y;
pos[i * 4 + 1] = blockIdx.x + 100 * blockIdx.y;
pos[i * 4 + 2] = blockDim.x + 100 * blockDim.y;
pos[i * 4 + 3] = gridDim.x + 100 * gridDim.y;
"""


def test_whole_blocks_run_past_the_grids_end():
    # grid 70 x 3 threads in blocks of 32 x 2: MLX launches ceil(70 / 32) x ceil(3 / 2) = 3 x 2
    # blocks of 32 x 2 threads (custom_kernel.cpp); the threads past the grid run too.
    k = kernel(_POSITIONS, {}, {"pos": ((4 * 70 * 3 * 4,), "uint32")}, (70, 3, 1), (32, 2, 1), name="pos")
    (pos,) = emulator.run(k, [], groups=range(6))
    pos = pos.reshape(-1, 4)
    seen = {(int(p[1]), int(p[0])) for p in pos[:3 * 2 * 64]}
    assert seen == {(bx + 100 * by, tx + 100 * ty) for bx in range(3) for by in range(2)
                    for tx in range(32) for ty in range(2)}
    assert set(map(int, pos[:384, 2])) == {32 + 200} and set(map(int, pos[:384, 3])) == {3 + 200}


def test_a_block_larger_than_the_grid_is_cut_to_it():
    # MLX's block is min(threadgroup, grid) per dimension
    k = kernel("out[threadIdx.x] = blockDim.x * 10 + gridDim.x;", {}, {"out": ((5,), "uint32")},
               (5, 1, 1), (256, 1, 1), name="cut")
    np.testing.assert_array_equal(emulator.run(k, [])[0], 51)


def test_threads_past_the_grids_end_fault_where_unguarded():
    src = "const int i = blockIdx.x * blockDim.x + threadIdx.x;\nout[i] = x[i] * 2.0f;\n"
    k = kernel(src, {"x": ((100,), "float32")}, {"out": ((100,), "float32")}, (100, 1, 1), (64, 1, 1),
               name="unguarded")
    line = emulator.wrap(k).source.splitlines().index("out[i] = x[i] * 2.0f;") + 1
    text = fails(k, [np.ones(100, np.float32)], "out-of-bounds read of x at element 100",
                 "[thread (36,0,0) of block (1,0,0)]", f"line {line}: out[i] = x[i] * 2.0f;")
    assert text.startswith("kernel test_unguarded: ")
    guarded = kernel("const int i = blockIdx.x * blockDim.x + threadIdx.x;\nif (i < 100) out[i] = x[i] * 2.0f;\n",
                     {"x": ((100,), "float32")}, {"out": ((100,), "float32")}, (100, 1, 1), (64, 1, 1),
                     name="guarded")
    np.testing.assert_array_equal(emulator.run(guarded, [np.ones(100, np.float32)])[0], 2.0)


def test_launch_bounds_and_block_size_are_enforced():
    header = HEADER + "#undef __global__\n#define __global__ __attribute__((global)) __launch_bounds__(128)\n"
    k = kernel("out[threadIdx.x] = 1.0f;", {}, {"out": ((256,), "float32")}, (256, 1, 1), (256, 1, 1),
               header=header, name="bounds")
    fails(k, [], "block of 256 threads: the kernel's __launch_bounds__ allow at most 128")
    fails(kernel("out[0] = 1.0f;", {}, {"out": ((1,), "float32")}, (2048, 1, 1), (2048, 1, 1), name="huge"),
          [], "at most 1024 per block")


# -- warps -------------------------------------------------------------------------------------------

_WARP = """
const int i = threadIdx.x, l = i % 32;
const float v = x[i];
out[i * 8 + 0] = __shfl_xor_sync(0xffffffffu, v, 3);
out[i * 8 + 1] = __shfl_down_sync(0xffffffffu, v, 5);
out[i * 8 + 2] = __shfl_up_sync(0xffffffffu, v, 2);
out[i * 8 + 3] = __shfl_sync(0xffffffffu, v, (l * 7) % 32);
out[i * 8 + 4] = __shfl_xor_sync(0xffffffffu, v, 4, 8);
out[i * 8 + 5] = __shfl_down_sync(0xffffffffu, v, 3, 16);
out[i * 8 + 6] = float(__popc(__ballot_sync(0xffffffffu, v > 40.0f))) + (__activemask() == 0xffffffffu ? 100.0f : 0.0f);
out[i * 8 + 7] = float(__any_sync(0xffffffffu, v > 40.0f)) + 2.0f * float(__all_sync(0xffffffffu, v >= 0.0f));
"""


def test_warp_shuffles_and_votes_over_32_lanes():
    n = 64
    x = np.random.default_rng(0).integers(0, 50, n).astype(np.float32)
    (out,) = emulator.run(kernel(_WARP, {"x": ((n,), "float32")}, {"out": ((n * 8,), "float32")},
                                 (n, 1, 1), (n, 1, 1), name="warp"), [x])
    out = out.reshape(n, 8)
    lanes = np.arange(32)
    for start in (0, 32):
        v, got = x[start:start + 32], out[start:start + 32]
        np.testing.assert_array_equal(got[:, 0], v[lanes ^ 3])
        np.testing.assert_array_equal(got[:, 1], np.where(lanes + 5 < 32, v[np.minimum(lanes + 5, 31)], v))
        np.testing.assert_array_equal(got[:, 2], np.where(lanes >= 2, v[np.maximum(lanes - 2, 0)], v))
        np.testing.assert_array_equal(got[:, 3], v[(lanes * 7) % 32])
        np.testing.assert_array_equal(got[:, 4], v[lanes ^ 4])  # within segments of 8
        down = np.where(lanes % 16 + 3 < 16, v[np.minimum(lanes + 3, 31)], v)
        np.testing.assert_array_equal(got[:, 5], down)
        np.testing.assert_array_equal(got[:, 6], (v > 40).sum() + 100.0)
        np.testing.assert_array_equal(got[:, 7], float((v > 40).any()) + 2.0 * float((v >= 0).all()))


def test_shuffles_from_exited_or_missing_lanes_fail():
    src = "const int i = threadIdx.x;\nif (i >= 20) return;\nout[i] = __shfl_xor_sync(0xffffffffu, 1.0f, 16);\n"
    fails(kernel(src, {}, {"out": ((32,), "float32")}, (32, 1, 1), (32, 1, 1), name="exited"), [],
          "__shfl_xor_sync: lane 4 reads lane 20", "exited")
    # 48 threads: the second warp has lanes 0-15 only
    src = "out[threadIdx.x] = __shfl_down_sync(0xffffffffu, 1.0f, 5);\n"
    fails(kernel(src, {}, {"out": ((48,), "float32")}, (48, 1, 1), (48, 1, 1), name="partial"), [],
          "lane 11 reads lane 16", "inactive")
    src = "out[threadIdx.x] = __shfl_xor_sync(threadIdx.x < 16 ? 0xffffu : 0xffffffffu, 1.0f, 1);\n"
    fails(kernel(src, {}, {"out": ((32,), "float32")}, (32, 1, 1), (32, 1, 1), name="masks"), [],
          "pass different masks")


# -- shared memory and __syncthreads ------------------------------------------------------------------

def _shared(body: str, name: str, threads: int = 64, **fields) -> LoweredKernel:
    src = "__shared__ float s[64];\nconst int t = threadIdx.x;\n" + body
    return kernel(src, {"x": ((threads,), "float32")}, {"out": ((threads,), "float32")},
                  (threads, 1, 1), (threads, 1, 1), name=name, **fields)


def test_shared_memory_with_syncthreads_is_shared():
    k = _shared("s[t] = x[t];\n__syncthreads();\nout[t] = s[63 - t];\n", "ok")
    np.testing.assert_array_equal(emulator.run(k, X64)[0], 63 - X64[0])


@pytest.mark.parametrize("name,body,message", [
    ("uninitialised", "out[t] = s[t];\n", "read of shared memory s[0] before any thread wrote it"),
    ("race", "s[t] = x[t];\nconst float w = __shfl_xor_sync(0xffffffffu, 1.0f, 1);\nout[t] = s[t ^ 1] + w;\n",
     "race on shared memory s[1]: thread 0 reads what thread 1 wrote with no barrier between"),
    ("across warps", "s[t] = x[t];\n__syncwarp();\nout[t] = s[63 - t];\n",
     "thread 0 reads what thread 63 wrote"),
    ("out of bounds", "s[t + 1] = x[t];\n", "out-of-bounds access of shared memory s[64]"),
    ("divergent barrier", "if (t < 16) __syncthreads();\nout[t] = 0.0f;\n",
     "is not reached by every thread of the block: thread 16 exited before it"),
])
def test_shared_memory_misuse_fails(name, body, message):
    fails(_shared(body, name.replace(" ", "_")), X64, message)


def test_dynamic_shared_memory_is_checked_per_byte():
    src = ("extern __shared__ __align__(16) unsigned char area[];\n"
           "float* f = reinterpret_cast<float*>(area + 256);\n"
           "const int t = threadIdx.x;\n"
           "f[t] = x[t];\n__syncthreads();\nout[t] = f[63 - t];\n")
    k = kernel(src, {"x": ((64,), "float32")}, {"out": ((64,), "float32")}, (64, 1, 1), (64, 1, 1),
               name="dynamic", shared_memory=512)
    np.testing.assert_array_equal(emulator.run(k, X64)[0], 63 - X64[0])
    # 256 + 64 * 4 bytes: 512 is just enough; 511 is not
    small = kernel(src, {"x": ((64,), "float32")}, {"out": ((64,), "float32")}, (64, 1, 1), (64, 1, 1),
                   name="dynamic", shared_memory=511)
    fails(small, X64, "out-of-bounds write of shared memory area: 4 bytes at byte 508 of its 511 bytes")
    halves = src.replace("float* f", "__half* h").replace("reinterpret_cast<float*>", "reinterpret_cast<__half*>")
    halves = halves.replace("f[t] = x[t];\n__syncthreads();\nout[t] = f[63 - t];",
                            "h[t] = __float2half(x[t]);\n__syncthreads();\n"
                            "out[t] = reinterpret_cast<const float*>(area + 256)[t / 2];")
    torn = kernel(halves, {"x": ((64,), "float32")}, {"out": ((64,), "float32")}, (64, 1, 1), (64, 1, 1),
                  name="torn", shared_memory=512)
    assert emulator.run(torn, X64)[0].dtype == np.float32  # a float read of two halves' bytes
    # threads 2 and 3 read the float that threads 0 and 1 wrote as halves, with no barrier between
    racy = halves.replace("__syncthreads();\n", "").replace(
        "out[t] = reinterpret_cast<const float*>(area + 256)[t / 2];",
        "out[t] = t < 2 ? 0.0f : reinterpret_cast<const float*>(area + 256)[t / 2 - 1];")
    fails(kernel(racy, {"x": ((64,), "float32")}, {"out": ((64,), "float32")}, (64, 1, 1), (64, 1, 1),
                 name="racy", shared_memory=512), X64,
          "race on shared memory area[byte 256]: thread 2 reads what thread 0 wrote")


def test_shared_memory_limits_are_the_h100s():
    big = "__shared__ float a[12289];\na[threadIdx.x] = 1.0f;\nout[0] = 1.0f;\n"
    fails(kernel(big, {}, {"out": ((1,), "float32")}, (1, 1, 1), (1, 1, 1), name="static"), [],
          "49168 bytes declared statically with a", "49152")
    dyn = "extern __shared__ float d[];\nd[threadIdx.x] = 1.0f;\nout[0] = d[0];\n"
    np.testing.assert_array_equal(emulator.run(kernel(dyn, {}, {"out": ((1,), "float32")}, (1, 1, 1),
                                                      (1, 1, 1), name="optin", shared_memory=200000), [])[0], 1.0)
    fails(kernel(dyn, {}, {"out": ((1,), "float32")}, (1, 1, 1), (1, 1, 1), name="optin",
                 shared_memory=240000), [], "240000 bytes of dynamic shared memory")


# -- numbers -----------------------------------------------------------------------------------------

def test_half_and_bfloat16_conversions_round_as_mlx():
    src = ("const int i = threadIdx.x;\nh[i] = __float2half_rn(x[i]);\nb[i] = __float2bfloat16_rn(x[i]);\n"
           "back[i] = __half2float(h[i]);\n")
    n = len(SPECIAL)
    h, b, back = emulator.run(kernel(src, {"x": ((n,), "float32")}, {
        "h": ((n,), "float16"), "b": ((n,), "bfloat16"), "back": ((n,), "float32")}, (n, 1, 1), (n, 1, 1),
        name="convert"), [SPECIAL])
    want_h = np.array(mx.array(SPECIAL).astype(mx.float16))
    want_b = np.array(mx.array(SPECIAL).astype(mx.bfloat16).view(mx.uint16))
    nan = np.isnan(SPECIAL)
    np.testing.assert_array_equal(h.view(np.uint16)[~nan], want_h.view(np.uint16)[~nan])
    np.testing.assert_array_equal(b.view(np.uint16)[~nan], want_b[~nan])
    # PTX's cvt.rn.f16.f32 / cvt.rn.bf16.f32 give the canonical NaN
    assert (h.view(np.uint16)[nan] == 0x7fff).all() and (b.view(np.uint16)[nan] == 0x7fff).all()
    np.testing.assert_array_equal(back[~nan], want_h.astype(np.float32)[~nan])
    assert np.isnan(back[nan]).all()


def test_a_half_mixed_with_a_float_is_ambiguous_as_in_cuda():
    k = kernel("out[0] = x[0] * 2.0f;", {"x": ((1,), "float16")}, {"out": ((1,), "float16")},
               (1, 1, 1), (1, 1, 1), name="ambiguous")
    with pytest.raises(emulator.BuildError, match="ambiguous"):
        emulator.run(k, [np.ones(1, np.float16)])


def test_the_dialects_inline_ptx_runs_and_any_other_is_refused():
    header = HEADER + (
        "__device__ __forceinline__ float fast_exp(float x) {\n  float r;\n"
        "  asm(\"ex2.approx.ftz.f32 %0, %1;\" : \"=f\"(r) : \"f\"(x * 1.44269504f));\n  return r;\n}\n"
        "#if __CUDA_ARCH__ >= 800\n__device__ __forceinline__ float nan_max(float a, float b) {\n"
        "  float r;\n  asm(\"max.NaN.f32 %0, %1, %2;\" : \"=f\"(r) : \"f\"(a), \"f\"(b));\n  return r;\n}\n"
        "#endif\n")
    src = "const int i = threadIdx.x;\ne[i] = fast_exp(x[i]);\nm[i] = nan_max(x[i], y[i]);\n"
    x = np.array([0.0, -1.0, -100.0, -np.inf, np.nan, 1.0, -0.0, 2.0], np.float32)
    y = np.array([1.0, -2.0, np.nan, 0.0, 1.0, 0.5, 0.0, -0.0], np.float32)
    k = kernel(src, {"x": ((8,), "float32"), "y": ((8,), "float32")},
               {"e": ((8,), "float32"), "m": ((8,), "float32")}, (8, 1, 1), (8, 1, 1), header=header, name="ptx")
    e, m = emulator.run(k, [x, y])
    np.testing.assert_allclose(e[:2], np.exp(x[:2]), rtol=2e-6)
    assert e[2] == 0.0 and e[3] == 0.0 and np.isnan(e[4])  # exp(-100) is subnormal: flushed
    np.testing.assert_array_equal(m[[0, 1, 3, 5]], [1.0, -1.0, 0.0, 1.0])
    assert np.isnan(m[2]) and np.isnan(m[4]) and m.view(np.uint32)[2] == 0x7fffffff
    assert not np.signbit(m[6]) and not np.signbit(m[7])  # -0.0 < +0.0
    unknown = header.replace("max.NaN.f32", "max.xorsign.abs.f32")
    with pytest.raises(TranslationError, match="inline PTX the emulator does not implement"):
        emulator.run(kernel(src, {"x": ((8,), "float32"), "y": ((8,), "float32")},
                            {"e": ((8,), "float32"), "m": ((8,), "float32")}, (8, 1, 1), (8, 1, 1),
                            header=unknown, name="ptx2"), [x, y])


# -- a thread's own faults ----------------------------------------------------------------------------

def test_a_threads_own_faults_fail():
    src = "const int i = threadIdx.x;\nout[i] = float(i / int(x[i]));\n"
    fails(kernel(src, {"x": ((64,), "float32")}, {"out": ((64,), "float32")}, (64, 1, 1), (64, 1, 1),
                 name="divzero"), X64, "integer division by zero")
    src = "const int i = threadIdx.x;\nconst float v = reinterpret_cast<const float4*>(x + 1)[0].x;\nout[i] = v;\n"
    fails(kernel(src, {"x": ((64,), "float32")}, {"out": ((64,), "float32")}, (64, 1, 1), (64, 1, 1),
                 name="misaligned"), X64, "misaligned read of x: 16 bytes at byte offset 4 need 16-byte alignment")
