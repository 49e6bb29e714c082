// The subset of the CUDA device API that MLX custom kernels use, in C++17 for the emulator, as
// NVRTC compiles it for sm_90 (an H100): the execution-space qualifiers, built-in thread
// indices, __syncthreads and __syncwarp, warp shuffles and votes over 32 lanes, vector types,
// the CUDA Math API's float functions and intrinsics, and the inline PTX instructions the
// translator turns into calls (namespace emu::ptx). Shared memory and device pointers are the
// checked kinds of emu.h (the translator declares them); the half types are cuda_fp16.h's.
// Every translation unit of CUDA kernels includes this first, so the includes in MLX's wrapper
// (utils.cuh, cooperative_groups.h, cuda_fp16.h ...) find everything already there.
#pragma once
#include <math.h>
#include <stddef.h>
#include <stdint.h>
#include <string.h>

#include <array>
#include <limits>
#include <tuple>
#include <type_traits>

#include "emu.h"
#include "cuda_bf16.h"
#include "cuda_fp16.h"

// NVRTC's predefined macros for an sm_90 target
#define __CUDACC__ 1
#define __CUDACC_RTC__ 1
#define __CUDA_ARCH__ 900

// -- qualifiers: one address space and one execution space here; the translator gives kernel
// parameters and shared arrays checked types, so the qualifiers themselves are no-ops.
#define __global__
#define __device__
#define __host__
#define __forceinline__ inline
#define __noinline__ __attribute__((noinline))
#define __launch_bounds__(...)
#define __restrict__ __restrict
#define __align__(n) __attribute__((aligned(n)))
#define __grid_constant__
#define __CUDA_ALIGN__(n) alignas(n)
// What the translator rewrites (`__shared__ T name[N];`, `extern __shared__ T name[];`, the
// inline PTX it knows) never reaches these: anything else fails to compile, naming the reason.
#define __shared__ CUDA_EMULATOR_SUPPORTS_ONLY_SHARED_ARRAY_DECLARATIONS
#define __constant__ CUDA_EMULATOR_HAS_NO_CONSTANT_MEMORY
#define asm CUDA_EMULATOR_RUNS_ONLY_THE_INLINE_PTX_ITS_TRANSLATOR_KNOWS

// -- vector types (CUDA's vector_types.h): sizes and alignments as there --------------------------
struct uint3 {
  unsigned int x, y, z;
};
struct dim3 {
  unsigned int x, y, z;
  constexpr dim3(unsigned int vx = 1, unsigned int vy = 1, unsigned int vz = 1) : x(vx), y(vy), z(vz) {}
  constexpr dim3(uint3 v) : x(v.x), y(v.y), z(v.z) {}
  constexpr operator uint3() const { return uint3{x, y, z}; }
};
#define EMU_VECTOR2(T, name, align)              \
  struct alignas(align) name##2 { T x, y; };     \
  inline name##2 make_##name##2(T x, T y) { return name##2{x, y}; }
#define EMU_VECTOR4(T, name, align)                 \
  struct alignas(align) name##4 { T x, y, z, w; };  \
  inline name##4 make_##name##4(T x, T y, T z, T w) { return name##4{x, y, z, w}; }
EMU_VECTOR2(float, float, 8)
EMU_VECTOR4(float, float, 16)
EMU_VECTOR2(int, int, 8)
EMU_VECTOR4(int, int, 16)
EMU_VECTOR2(unsigned int, uint, 8)
EMU_VECTOR4(unsigned int, uint, 16)
EMU_VECTOR2(unsigned short, ushort, 4)
EMU_VECTOR4(unsigned short, ushort, 8)
EMU_VECTOR2(double, double, 16)
#undef EMU_VECTOR2
#undef EMU_VECTOR4
struct float3 {
  float x, y, z;
};
inline float3 make_float3(float x, float y, float z) { return float3{x, y, z}; }
inline uint3 make_uint3(unsigned int x, unsigned int y, unsigned int z) { return uint3{x, y, z}; }

// -- built-in variables: the running thread's (runtime.cpp); a block is never cut at the grid's
// end, so blockDim is the launch's block everywhere.
namespace emu {
namespace cuda {
inline uint3 thread_idx() {
  const rt::Thread* t = rt::current;
  return uint3{t->pos_tg[0], t->pos_tg[1], t->pos_tg[2]};
}
inline uint3 block_idx() {
  const rt::Group* g = rt::group;
  return uint3{g->pos[0], g->pos[1], g->pos[2]};
}
inline dim3 block_dim() {
  const rt::Group* g = rt::group;
  return dim3(g->dispatch[0], g->dispatch[1], g->dispatch[2]);
}
inline dim3 grid_dim() {
  const rt::Group* g = rt::group;
  return dim3(g->count[0], g->count[1], g->count[2]);
}
}  // namespace cuda
}  // namespace emu
#define threadIdx (::emu::cuda::thread_idx())
#define blockIdx (::emu::cuda::block_idx())
#define blockDim (::emu::cuda::block_dim())
#define gridDim (::emu::cuda::grid_dim())
#define warpSize 32

// -- synchronisation ---------------------------------------------------------------------------
// __syncthreads orders shared memory among the block's threads; every thread of the block must
// reach the same one (the CUDA Programming Guide allows it in conditional code only where the
// condition is the same across the block).
inline void __syncthreads(int line = __builtin_LINE()) {
  ::emu::rt::barrier(::emu::rt::kMemThreadgroup, line, 0, "__syncthreads");
}
inline void __syncwarp(unsigned int mask = 0xffffffffu, int line = __builtin_LINE()) {
  (void)mask;
  ::emu::rt::barrier(::emu::rt::kMemThreadgroup, line, 1, "__syncwarp");
}
// Threads of one launch run one at a time: device memory is always ordered.
inline void __threadfence_block() {}
inline void __threadfence() {}

// -- warp shuffles and votes (CUDA Programming Guide, "Warp Shuffle Functions", "Warp Vote
// Functions"): every lane a *_sync operation's mask names that has not exited must execute it,
// with that same mask, which must name the lane itself; a lane reads another only where that
// lane takes part (the scheduler gathers a warp's live lanes at the operation first).
namespace emu {
namespace cuda {

inline bool check_mask(rt::Thread* const* lanes, int line, const char* what) {
  const rt::Thread* first = nullptr;
  for (int l = 0; l < simd::kWidth; ++l) {
    if (!lanes[l]) continue;
    if (!first) first = lanes[l];
    if (lanes[l]->mask != first->mask) {
      rt::report(line, "%s: lanes %d and %d pass different masks (0x%08x and 0x%08x)", what,
                 int(first->lid % 32), l, first->mask, lanes[l]->mask);
      return false;
    }
    if (!((lanes[l]->mask >> l) & 1u)) {
      rt::report(line, "%s: lane %d executes it with mask 0x%08x, which does not name it", what, l,
                 lanes[l]->mask);
      return false;
    }
  }
  return true;
}

enum Shuffle { kIdx, kUp, kDown, kXor };
constexpr const char* kShuffleNames[] = {"__shfl_sync", "__shfl_up_sync", "__shfl_down_sync",
                                         "__shfl_xor_sync"};

// The lane whose value lane ``lane`` reads, in segments of ``width`` lanes; its own lane where
// CUDA returns the caller's value.
template <int Kind>
inline int shuffle_source(int lane, const rt::Thread* t) {
  const int w = t->width, base = lane & ~(w - 1), a = int(t->arg);
  switch (Kind) {
    case kIdx: return base + (a & (w - 1));
    case kUp: return lane - base >= int(t->arg) ? lane - a : lane;
    case kDown: return lane - base + int(t->arg) < w ? lane + a : lane;
    default: {
      const int s = lane ^ a;  // later segments are out of reach: the caller's value
      return s >= base + w ? lane : s;
    }
  }
}

template <class T, int Kind>
void op_shuffle(rt::Thread* const* lanes, int line) {
  const char* what = kShuffleNames[Kind];
  if (!check_mask(lanes, line, what)) return;
  for (int l = 0; l < simd::kWidth; ++l) {
    const int w = lanes[l] ? lanes[l]->width : 32;
    if (w < 1 || w > 32 || (w & (w - 1))) {
      rt::report(line, "%s: width %d is not a power of two from 1 to 32", what, w);
      return;
    }
  }
  simd::gather<T>(lanes, line, what, shuffle_source<Kind>);
}

template <class T, int Kind>
inline T shuffle(unsigned int mask, const T& var, int arg, int width, int line) {
  rt::Thread* t = rt::current;
  t->mask = mask;
  t->width = width;
  return simd::call<T>(var, uint32_t(arg), op_shuffle<T, Kind>, line, kShuffleNames[Kind]);
}

// Votes: each lane gets (the lanes whose predicate holds) | (the lanes taking part) << 32.
inline void op_vote(rt::Thread* const* lanes, int line) {
  const rt::Thread* first = nullptr;
  for (int l = 0; l < simd::kWidth && !first; ++l) first = lanes[l];
  if (!first || !check_mask(lanes, line, first->what)) return;
  uint64_t bits = 0;
  for (int l = 0; l < simd::kWidth; ++l) {
    if (!lanes[l]) continue;
    bits |= uint64_t(1) << (32 + l);
    if (simd::in<int>(lanes[l])) bits |= uint64_t(1) << l;
  }
  for (int l = 0; l < simd::kWidth; ++l)
    if (lanes[l]) simd::out(lanes[l], bits);
}

// The lanes taking part (__activemask: no mask to check).
inline void op_active(rt::Thread* const* lanes, int) {
  uint32_t bits = 0;
  for (int l = 0; l < simd::kWidth; ++l)
    if (lanes[l]) bits |= uint32_t(1) << l;
  for (int l = 0; l < simd::kWidth; ++l)
    if (lanes[l]) simd::out(lanes[l], bits);
}

inline unsigned int active_lanes(int line) {
  return simd::call<uint32_t>(0u, 0, op_active, line, "__activemask");
}

inline uint64_t vote(unsigned int mask, int predicate, int line, const char* what) {
  rt::current->mask = mask;
  return simd::call<uint64_t>(uint64_t(predicate != 0), 0, op_vote, line, what);
}

}  // namespace cuda
}  // namespace emu

#define EMU_SHUFFLES(T)                                                                           \
  inline T __shfl_sync(unsigned int mask, T var, int src, int width = 32, int line = __builtin_LINE()) { \
    return ::emu::cuda::shuffle<T, ::emu::cuda::kIdx>(mask, var, src, width, line);              \
  }                                                                                               \
  inline T __shfl_up_sync(unsigned int mask, T var, unsigned int delta, int width = 32,           \
                          int line = __builtin_LINE()) {                                          \
    return ::emu::cuda::shuffle<T, ::emu::cuda::kUp>(mask, var, int(delta), width, line);        \
  }                                                                                               \
  inline T __shfl_down_sync(unsigned int mask, T var, unsigned int delta, int width = 32,         \
                            int line = __builtin_LINE()) {                                        \
    return ::emu::cuda::shuffle<T, ::emu::cuda::kDown>(mask, var, int(delta), width, line);      \
  }                                                                                               \
  inline T __shfl_xor_sync(unsigned int mask, T var, int lane_mask, int width = 32,               \
                           int line = __builtin_LINE()) {                                         \
    return ::emu::cuda::shuffle<T, ::emu::cuda::kXor>(mask, var, lane_mask, width, line);        \
  }
// The types CUDA's shuffles take; any other converts to one of them as overloads do there.
EMU_SHUFFLES(int)
EMU_SHUFFLES(unsigned int)
EMU_SHUFFLES(long)
EMU_SHUFFLES(unsigned long)
EMU_SHUFFLES(long long)
EMU_SHUFFLES(unsigned long long)
EMU_SHUFFLES(float)
EMU_SHUFFLES(double)
EMU_SHUFFLES(__half)
EMU_SHUFFLES(__nv_bfloat16)
#undef EMU_SHUFFLES

inline unsigned int __ballot_sync(unsigned int mask, int predicate, int line = __builtin_LINE()) {
  return unsigned(::emu::cuda::vote(mask, predicate, line, "__ballot_sync"));
}
inline int __all_sync(unsigned int mask, int predicate, int line = __builtin_LINE()) {
  const uint64_t v = ::emu::cuda::vote(mask, predicate, line, "__all_sync");
  return unsigned(v) == unsigned(v >> 32);
}
inline int __any_sync(unsigned int mask, int predicate, int line = __builtin_LINE()) {
  return unsigned(::emu::cuda::vote(mask, predicate, line, "__any_sync")) != 0;
}
inline unsigned int __activemask(int line = __builtin_LINE()) {
  return ::emu::cuda::active_lanes(line);
}

// -- the CUDA Math API: float functions are the C library's (math.h); these are CUDA's own ------
inline float rsqrtf(float x) { return 1.0f / sqrtf(x); }
inline double rsqrt(double x) { return 1.0 / sqrt(x); }
inline float rcbrtf(float x) { return 1.0f / cbrtf(x); }
inline float __saturatef(float x) { return x != x ? 0.0f : fminf(fmaxf(x, 0.0f), 1.0f); }
inline float __frcp_rn(float x) { return 1.0f / x; }
inline float __fsqrt_rn(float x) { return sqrtf(x); }
inline float __fadd_rn(float a, float b) { return a + b; }
inline float __fsub_rn(float a, float b) { return a - b; }
inline float __fmul_rn(float a, float b) { return a * b; }
inline float __fdiv_rn(float a, float b) { return a / b; }
inline float __fmaf_rn(float a, float b, float c) { return fmaf(a, b, c); }
// The fast intrinsics: the exponential as PTX's ex2.approx of x * log2(e) (MLX compiles without
// --use_fast_math, so no flushing), the others as their precise functions.
inline float __expf(float x) { return exp2f(x * 1.44269504f); }
inline float __exp10f(float x) { return exp2f(x * 3.32192809f); }
inline float __logf(float x) { return logf(x); }
inline float __log2f(float x) { return log2f(x); }
inline float __log10f(float x) { return log10f(x); }
inline float __sinf(float x) { return sinf(x); }
inline float __cosf(float x) { return cosf(x); }
inline float __tanf(float x) { return tanf(x); }
inline float __powf(float x, float y) { return powf(x, y); }
inline float __fdividef(float x, float y) { return x / y; }
inline void __sincosf(float x, float* s, float* c) { *s = sinf(x); *c = cosf(x); }

inline int min(int a, int b) { return a < b ? a : b; }
inline unsigned int min(unsigned int a, unsigned int b) { return a < b ? a : b; }
inline long long min(long long a, long long b) { return a < b ? a : b; }
inline unsigned long long min(unsigned long long a, unsigned long long b) { return a < b ? a : b; }
inline float min(float a, float b) { return fminf(a, b); }
inline double min(double a, double b) { return fmin(a, b); }
inline int max(int a, int b) { return a < b ? b : a; }
inline unsigned int max(unsigned int a, unsigned int b) { return a < b ? b : a; }
inline long long max(long long a, long long b) { return a < b ? b : a; }
inline unsigned long long max(unsigned long long a, unsigned long long b) { return a < b ? b : a; }
inline float max(float a, float b) { return fmaxf(a, b); }
inline double max(double a, double b) { return fmax(a, b); }

inline float __int_as_float(int x) { return ::emu::detail::bit_cast<float>(x); }
inline float __uint_as_float(unsigned int x) { return ::emu::detail::bit_cast<float>(x); }
inline int __float_as_int(float x) { return ::emu::detail::bit_cast<int>(x); }
inline unsigned int __float_as_uint(float x) { return ::emu::detail::bit_cast<unsigned int>(x); }
inline double __longlong_as_double(long long x) { return ::emu::detail::bit_cast<double>(x); }
inline long long __double_as_longlong(double x) { return ::emu::detail::bit_cast<long long>(x); }
inline int __float2int_rz(float x) { return ::emu::cuda::to_integer<int>(x); }
inline int __float2int_rn(float x) { return ::emu::cuda::to_integer<int>(rintf(x)); }
inline int __float2int_rd(float x) { return ::emu::cuda::to_integer<int>(floorf(x)); }
inline int __float2int_ru(float x) { return ::emu::cuda::to_integer<int>(ceilf(x)); }
inline unsigned int __float2uint_rz(float x) { return ::emu::cuda::to_integer<unsigned int>(x); }
inline unsigned int __float2uint_rn(float x) { return ::emu::cuda::to_integer<unsigned int>(rintf(x)); }
inline float __int2float_rn(int x) { return float(x); }
inline float __uint2float_rn(unsigned int x) { return float(x); }
inline int __popc(unsigned int x) { return __builtin_popcount(x); }
inline int __popcll(unsigned long long x) { return __builtin_popcountll(x); }
inline int __clz(int x) { return x ? __builtin_clz(unsigned(x)) : 32; }
inline int __clzll(long long x) { return x ? __builtin_clzll((unsigned long long)x) : 64; }
inline int __ffs(int x) { return __builtin_ffs(x); }
inline int __ffsll(long long x) { return __builtin_ffsll(x); }
inline unsigned int __brev(unsigned int x) {
  unsigned int r = 0;
  for (int i = 0; i < 32; ++i) r |= ((x >> i) & 1u) << (31 - i);
  return r;
}
inline int __mulhi(int a, int b) { return int((long long)a * b >> 32); }
inline unsigned int __umulhi(unsigned int a, unsigned int b) {
  return unsigned((unsigned long long)a * b >> 32);
}

// -- inline PTX (PTX ISA 8.x), as the translator calls it -----------------------------------------
namespace emu {
namespace ptx {

// .ftz: a subnormal input or result is flushed to zero of its sign
inline float ftz(float x) {
  return __builtin_fabsf(x) < 1.17549435e-38f ? __builtin_copysignf(0.0f, x) : x;
}
// ex2.approx: 2^x (the GPU's is within 2 ulp; the C library's is used); ex2(-inf) = +0
inline float ex2_approx_f32(float x) { return exp2f(x); }
inline float ex2_approx_ftz_f32(float x) { return ftz(exp2f(ftz(x))); }
// max / min .f32: the other operand where one is NaN; with .NaN, the canonical NaN instead.
// -0.0 is less than +0.0: LLVM lowers llvm.maximum / llvm.minimum (IEEE 754-2019's maximum and
// minimum, which order the zeros so) to max.NaN.f32 / min.NaN.f32 on sm_80 and later.
inline float max_f32(float a, float b) {
  if (a != a) return b;
  if (b != b) return a;
  if (a == b) return __builtin_signbit(a) ? b : a;
  return a > b ? a : b;
}
inline float min_f32(float a, float b) {
  if (a != a) return b;
  if (b != b) return a;
  if (a == b) return __builtin_signbit(a) ? a : b;
  return a < b ? a : b;
}
inline float canonical_nan() { return ::emu::detail::bit_cast<float>(0x7fffffffu); }
inline float max_nan_f32(float a, float b) { return a != a || b != b ? canonical_nan() : max_f32(a, b); }
inline float min_nan_f32(float a, float b) { return a != a || b != b ? canonical_nan() : min_f32(a, b); }

}  // namespace ptx
}  // namespace emu

#include "cooperative_groups.h"
#include "mlx/backend/cuda/device/utils.cuh"
