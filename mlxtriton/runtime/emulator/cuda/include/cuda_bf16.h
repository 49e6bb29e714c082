// __nv_bfloat16 for the emulator (the CUDA Math API's cuda_bf16.h on sm_90): the same type as
// cuda_fp16.h's __half but for its bits (cuda_fp16.h says how both convert and compute).
#pragma once
#include "cuda_fp16.h"

EMU_HALF_TYPE(__nv_bfloat16, ::emu::cuda::float_to_bfloat, ::emu::detail::bfloat_bits_to_float)
EMU_HALF_FUNCTIONS(__nv_bfloat16)

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
