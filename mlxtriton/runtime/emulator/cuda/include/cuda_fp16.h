// The CUDA half-precision types for the emulator (the CUDA Math API's cuda_fp16.h and
// cuda_bf16.h, as NVRTC compiles them for sm_90): __half and __nv_bfloat16 with the same
// constructors, conversion operators and arithmetic operators, so that an expression means (or
// is ambiguous) here what it means there. Conversions from float round to nearest even; a NaN
// becomes the canonical NaN (0x7fff), as PTX's cvt.rn.f16.f32 / cvt.rn.bf16.f32 give. An
// operation on two values of one type computes in float and rounds once (exact for +, -, *, /:
// float carries more than twice the bits of either type). Conversions to integers truncate,
// saturate, and take NaN to 0 (cvt.rzi).
#pragma once
#include <stdint.h>

#include <limits>

#include "emu.h"

namespace emu {
namespace cuda {

inline uint16_t float_to_half(float f) {
  return f != f ? uint16_t(0x7fff) : detail::float_to_half_bits(f);
}
inline uint16_t float_to_bfloat(float f) {
  return f != f ? uint16_t(0x7fff) : detail::float_to_bfloat_bits(f);
}

// A double rounded to float toward zero, its last bit set when inexact (round to odd), so that
// rounding it again to half or bfloat16 rounds the double once.
inline float round_to_odd(double d) {
  float f = float(d);
  if (d == d && double(f) != d && __builtin_isfinite(f)) {
    uint32_t u = detail::bit_cast<uint32_t>(f);
    if (__builtin_fabs(double(f)) > __builtin_fabs(d)) --u;
    f = detail::bit_cast<float>(u | 1u);
  }
  return f;
}

template <class I>
inline I to_integer(float f) {
  if (f != f) return I(0);
  const float lo = float(std::numeric_limits<I>::min()), hi = float(std::numeric_limits<I>::max());
  if (f <= lo) return std::numeric_limits<I>::min();
  if (f >= hi) return std::numeric_limits<I>::max();
  return I(f);
}

}  // namespace cuda
}  // namespace emu

// One of the two types: ``T`` its name, ``FROM``/``TO`` its bit conversions from/to float.
#define EMU_HALF_TYPE(T, FROM, TO)                                                               \
  struct T##_raw {                                                                               \
    unsigned short x;                                                                            \
  };                                                                                             \
  struct alignas(2) T {                                                                          \
   protected:                                                                                    \
    unsigned short __x;                                                                          \
                                                                                                 \
   public:                                                                                       \
    T() = default;                                                                               \
    constexpr T(const T##_raw& hr) : __x(hr.x) {}                                                \
    T& operator=(const T##_raw& hr) { __x = hr.x; return *this; }                                \
    operator T##_raw() const { return T##_raw{__x}; }                                            \
    T(const float f) : __x(FROM(f)) {}                                                           \
    T(const double f) : __x(FROM(::emu::cuda::round_to_odd(f))) {}                               \
    operator float() const { return TO(__x); }                                                   \
    T& operator=(const float f) { __x = FROM(f); return *this; }                                 \
    T& operator=(const double f) { __x = FROM(::emu::cuda::round_to_odd(f)); return *this; }     \
    T(const short v) : T(float(v)) {}                                                            \
    T(const unsigned short v) : T(float(v)) {}                                                   \
    T(const int v) : T(::emu::cuda::round_to_odd(double(v))) {}                                  \
    T(const unsigned int v) : T(::emu::cuda::round_to_odd(double(v))) {}                         \
    T(const long v) : T(::emu::cuda::round_to_odd(double(v))) {}                                 \
    T(const unsigned long v) : T(::emu::cuda::round_to_odd(double(v))) {}                        \
    T(const long long v) : T(::emu::cuda::round_to_odd(double(v))) {}                            \
    T(const unsigned long long v) : T(::emu::cuda::round_to_odd(double(v))) {}                   \
    operator signed char() const { return ::emu::cuda::to_integer<signed char>(float(*this)); }  \
    operator unsigned char() const { return ::emu::cuda::to_integer<unsigned char>(float(*this)); } \
    operator char() const { return ::emu::cuda::to_integer<char>(float(*this)); }                \
    operator short() const { return ::emu::cuda::to_integer<short>(float(*this)); }              \
    operator unsigned short() const { return ::emu::cuda::to_integer<unsigned short>(float(*this)); } \
    operator int() const { return ::emu::cuda::to_integer<int>(float(*this)); }                  \
    operator unsigned int() const { return ::emu::cuda::to_integer<unsigned int>(float(*this)); } \
    operator long() const { return ::emu::cuda::to_integer<long>(float(*this)); }                \
    operator unsigned long() const { return ::emu::cuda::to_integer<unsigned long>(float(*this)); } \
    operator long long() const { return ::emu::cuda::to_integer<long long>(float(*this)); }      \
    operator unsigned long long() const {                                                        \
      return ::emu::cuda::to_integer<unsigned long long>(float(*this));                          \
    }                                                                                            \
    T& operator=(const short v) { return *this = T(v); }                                         \
    T& operator=(const unsigned short v) { return *this = T(v); }                                \
    T& operator=(const int v) { return *this = T(v); }                                           \
    T& operator=(const unsigned int v) { return *this = T(v); }                                  \
    T& operator=(const long long v) { return *this = T(v); }                                     \
    T& operator=(const unsigned long long v) { return *this = T(v); }                            \
    constexpr operator bool() const { return (__x & 0x7FFFU) != 0U; }                            \
  };                                                                                             \
  inline T operator+(const T& a, const T& b) { return T(float(a) + float(b)); }                  \
  inline T operator-(const T& a, const T& b) { return T(float(a) - float(b)); }                  \
  inline T operator*(const T& a, const T& b) { return T(float(a) * float(b)); }                  \
  inline T operator/(const T& a, const T& b) { return T(float(a) / float(b)); }                  \
  inline T& operator+=(T& a, const T& b) { return a = a + b; }                                   \
  inline T& operator-=(T& a, const T& b) { return a = a - b; }                                   \
  inline T& operator*=(T& a, const T& b) { return a = a * b; }                                   \
  inline T& operator/=(T& a, const T& b) { return a = a / b; }                                   \
  inline T& operator++(T& h) { return h = h + T(1.0f); }                                         \
  inline T& operator--(T& h) { return h = h - T(1.0f); }                                         \
  inline T operator++(T& h, int) { const T r = h; ++h; return r; }                               \
  inline T operator--(T& h, int) { const T r = h; --h; return r; }                               \
  inline T operator+(const T& h) { return h; }                                                   \
  inline T operator-(const T& h) {                                                               \
    T##_raw r = h;                                                                               \
    r.x ^= 0x8000u;                                                                              \
    return T(r);                                                                                 \
  }                                                                                              \
  inline bool operator==(const T& a, const T& b) { return float(a) == float(b); }                \
  inline bool operator!=(const T& a, const T& b) { return !(float(a) == float(b)); }             \
  inline bool operator>(const T& a, const T& b) { return float(a) > float(b); }                  \
  inline bool operator<(const T& a, const T& b) { return float(a) < float(b); }                  \
  inline bool operator>=(const T& a, const T& b) { return float(a) >= float(b); }                \
  inline bool operator<=(const T& a, const T& b) { return float(a) <= float(b); }

// The Math API's functions of either type that share their name; max / min: the other operand
// where one is NaN (the canonical NaN where both are).
#define EMU_HALF_FUNCTIONS(T)                                                                    \
  inline T __hadd(const T a, const T b) { return a + b; }                                        \
  inline T __hsub(const T a, const T b) { return a - b; }                                        \
  inline T __hmul(const T a, const T b) { return a * b; }                                        \
  inline T __hdiv(const T a, const T b) { return a / b; }                                        \
  inline T __hneg(const T a) { return -a; }                                                      \
  inline T __hfma(const T a, const T b, const T c) {                                             \
    return T(__builtin_fmaf(float(a), float(b), float(c)));                                      \
  }                                                                                              \
  inline bool __hisnan(const T a) { return float(a) != float(a); }                               \
  inline bool __heq(const T a, const T b) { return a == b; }                                     \
  inline bool __hlt(const T a, const T b) { return a < b; }                                      \
  inline bool __hgt(const T a, const T b) { return a > b; }                                      \
  inline T __hmax(const T a, const T b) {                                                        \
    return __hisnan(a) ? (__hisnan(b) ? T(T##_raw{0x7fff}) : b) : __hisnan(b) ? a : a < b ? b : a; \
  }                                                                                              \
  inline T __hmin(const T a, const T b) {                                                        \
    return __hisnan(a) ? (__hisnan(b) ? T(T##_raw{0x7fff}) : b) : __hisnan(b) ? a : b < a ? b : a; \
  }                                                                                              \
  inline T __habs(const T a) { return T(T##_raw{(unsigned short)(T##_raw(a).x & 0x7fffu)}); }

EMU_HALF_TYPE(__half, ::emu::cuda::float_to_half, ::emu::detail::half_bits_to_float)
EMU_HALF_FUNCTIONS(__half)

inline __half __float2half(const float f) { return __half(f); }
inline __half __float2half_rn(const float f) { return __half(f); }
inline __half __double2half(const double d) { return __half(d); }
inline float __half2float(const __half h) { return float(h); }
inline unsigned short __half_as_ushort(const __half h) { return __half_raw(h).x; }
inline short __half_as_short(const __half h) { return short(__half_raw(h).x); }
inline __half __ushort_as_half(const unsigned short x) { return __half(__half_raw{x}); }
inline __half __short_as_half(const short x) { return __half(__half_raw{(unsigned short)x}); }
inline __half __int2half_rn(const int i) { return __half(i); }
inline __half __uint2half_rn(const unsigned int i) { return __half(i); }
inline int __half2int_rz(const __half h) { return int(h); }
inline int __hisinf(const __half a) {
  const float f = a;
  return f == __builtin_inff() ? 1 : f == -__builtin_inff() ? -1 : 0;
}
inline bool __hne(const __half a, const __half b) { return float(a) < float(b) || float(a) > float(b); }
inline bool __hle(const __half a, const __half b) { return a <= b; }
inline bool __hge(const __half a, const __half b) { return a >= b; }
