// __nv_bfloat16 for the emulator (the CUDA Math API's cuda_bf16.h on sm_90): the same type as
// cuda_fp16.h's __half but for its bits (cuda_fp16.h says how both convert and compute).
#pragma once
#include "cuda_fp16.h"

EMU_HALF_TYPE(__nv_bfloat16, ::emu::cuda::float_to_bfloat, ::emu::detail::bfloat_bits_to_float)

inline __nv_bfloat16 __float2bfloat16(const float f) { return __nv_bfloat16(f); }
inline __nv_bfloat16 __float2bfloat16_rn(const float f) { return __nv_bfloat16(f); }
inline __nv_bfloat16 __double2bfloat16(const double d) { return __nv_bfloat16(d); }
inline float __bfloat162float(const __nv_bfloat16 h) { return float(h); }
inline unsigned short __bfloat16_as_ushort(const __nv_bfloat16 h) { return __nv_bfloat16_raw(h).x; }
inline short __bfloat16_as_short(const __nv_bfloat16 h) { return short(__nv_bfloat16_raw(h).x); }
inline __nv_bfloat16 __ushort_as_bfloat16(const unsigned short x) { return __nv_bfloat16(__nv_bfloat16_raw{x}); }
inline __nv_bfloat16 __short_as_bfloat16(const short x) {
  return __nv_bfloat16(__nv_bfloat16_raw{(unsigned short)x});
}
inline __nv_bfloat16 __int2bfloat16_rn(const int i) { return __nv_bfloat16(i); }
inline int __bfloat162int_rz(const __nv_bfloat16 h) { return int(h); }
inline __nv_bfloat16 __hadd(const __nv_bfloat16 a, const __nv_bfloat16 b) { return a + b; }
inline __nv_bfloat16 __hsub(const __nv_bfloat16 a, const __nv_bfloat16 b) { return a - b; }
inline __nv_bfloat16 __hmul(const __nv_bfloat16 a, const __nv_bfloat16 b) { return a * b; }
inline __nv_bfloat16 __hdiv(const __nv_bfloat16 a, const __nv_bfloat16 b) { return a / b; }
inline __nv_bfloat16 __hneg(const __nv_bfloat16 a) { return -a; }
inline __nv_bfloat16 __hfma(const __nv_bfloat16 a, const __nv_bfloat16 b, const __nv_bfloat16 c) {
  return __nv_bfloat16(__builtin_fmaf(float(a), float(b), float(c)));
}
inline bool __hisnan(const __nv_bfloat16 a) { return float(a) != float(a); }
inline bool __heq(const __nv_bfloat16 a, const __nv_bfloat16 b) { return a == b; }
inline bool __hlt(const __nv_bfloat16 a, const __nv_bfloat16 b) { return a < b; }
inline bool __hgt(const __nv_bfloat16 a, const __nv_bfloat16 b) { return a > b; }
inline __nv_bfloat16 __hmax(const __nv_bfloat16 a, const __nv_bfloat16 b) {
  return __hisnan(a) ? (__hisnan(b) ? __ushort_as_bfloat16(0x7fff) : b) : __hisnan(b) ? a : a < b ? b : a;
}
inline __nv_bfloat16 __hmin(const __nv_bfloat16 a, const __nv_bfloat16 b) {
  return __hisnan(a) ? (__hisnan(b) ? __ushort_as_bfloat16(0x7fff) : b) : __hisnan(b) ? a : b < a ? b : a;
}
inline __nv_bfloat16 __habs(const __nv_bfloat16 a) {
  return __ushort_as_bfloat16(__bfloat16_as_ushort(a) & 0x7fffu);
}
