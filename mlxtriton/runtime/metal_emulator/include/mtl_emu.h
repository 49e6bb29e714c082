// The subset of the Metal standard library (Metal Shading Language Specification 3.2) that
// MLX custom kernels use, implemented in C++17 for the Metal emulator: address spaces, scalar
// and vector types, half and bfloat with per-operation rounding, math with MLX's default
// ("safe") semantics, SIMD-group functions over 32 lanes, barriers, threadgroup memory and
// atomics. Memory accesses are checked: device buffers for bounds and alignment, threadgroup
// memory for reads of unwritten elements and races between barriers (runtime.cpp schedules
// the threads). Every function is defined here; nothing needs Apple's headers.
#pragma once
#include <stddef.h>
#include <stdint.h>

#include <type_traits>

#include "mtl_emu_rt.h"

// -- address spaces (MSL 4): one flat memory; the translator gives buffers checked pointer
// types and threadgroup arrays checked storage, so the qualifiers themselves are no-ops.
#define device
#define constant
#define thread
#define ray_data
#define object_data
// A threadgroup declaration the translator did not rewrite (only `threadgroup T name[N];` is)
#define threadgroup MTL_EMULATOR_SUPPORTS_ONLY_THREADGROUP_ARRAY_DECLARATIONS
#define METAL_FUNC inline
#define METAL_CONST constant

#undef INFINITY
#undef NAN
#undef MAXFLOAT
#undef HUGE_VALF
#define INFINITY __builtin_inff()
#define NAN __builtin_nanf("")
#define MAXFLOAT __FLT_MAX__
#define HUGE_VALF __builtin_huge_valf()
#define M_PI_F 3.14159265358979323846264338327950288f
#define M_LOG2E_F 1.44269504088896340735992468100189214f
#define M_LN2_F 0.693147180559945309417232121458176568f

typedef unsigned char uchar;
typedef unsigned short ushort;
typedef unsigned int uint;
typedef unsigned long ulong;

namespace mtl {
namespace detail {

template <class To, class From>
inline To bit_cast(const From& from) {
  static_assert(sizeof(To) == sizeof(From), "as_type needs types of one size");
  To to;
  __builtin_memcpy(&to, &from, sizeof(To));
  return to;
}

// IEEE binary16 from binary32, rounding to nearest even (F. Giesen, "float_to_half_fast3_rtne").
inline uint16_t float_to_half_bits(float f) {
  uint32_t u = bit_cast<uint32_t>(f);
  const uint32_t sign = u & 0x80000000u;
  u ^= sign;
  uint16_t o;
  if (u >= 0x47800000u) {  // |f| >= 65536: infinity, or NaN kept quiet
    o = u > 0x7f800000u ? uint16_t(0x7e00 | ((u >> 13) & 0x3ff)) : uint16_t(0x7c00);
  } else if (u < 0x38800000u) {  // below the smallest normal half: subnormal or zero
    const float magic = bit_cast<float>(uint32_t(126) << 23);
    o = uint16_t(bit_cast<uint32_t>(bit_cast<float>(u) + magic) - bit_cast<uint32_t>(magic));
  } else {
    const uint32_t odd = (u >> 13) & 1;
    u += 0xc8000fffu + odd;  // rebias exponent (15 - 127) << 23, round half to even
    o = uint16_t(u >> 13);
  }
  return uint16_t(o | (sign >> 16));
}

inline float half_bits_to_float(uint16_t h) {
  const uint32_t sign = uint32_t(h & 0x8000) << 16;
  const uint32_t exp = (h >> 10) & 0x1f, mant = h & 0x3ff;
  if (exp == 0x1f) return bit_cast<float>(sign | 0x7f800000u | (mant << 13));
  if (exp == 0) {
    const float m = float(mant) * 5.9604644775390625e-08f;  // mant * 2^-24, exact
    return sign ? -m : m;
  }
  return bit_cast<float>(sign | ((exp + 112) << 23) | (mant << 13));
}

// bfloat16 from binary32, rounding to nearest even; NaN stays a quiet NaN (MLX's
// float_to_bfloat_bits does the same).
inline uint16_t float_to_bfloat_bits(float f) {
  const uint32_t u = bit_cast<uint32_t>(f);
  if ((u & 0x7fffffffu) > 0x7f800000u) return uint16_t((u >> 16) | 0x40);
  return uint16_t((u + 0x7fffu + ((u >> 16) & 1)) >> 16);
}

inline float bfloat_bits_to_float(uint16_t b) { return bit_cast<float>(uint32_t(b) << 16); }

template <class T>
using if_int = std::enable_if_t<std::is_integral<T>::value, int>;

}  // namespace detail
}  // namespace mtl

// -- half (MSL 2.1): every operation on two halves rounds its result to half, as the GPU's
// 16-bit ALU does; with a float operand, the operation is in float (usual arithmetic
// conversions), with an integer one, in half.
struct half {
  uint16_t bits_;
  half() = default;
  half(float f) : bits_(mtl::detail::float_to_half_bits(f)) {}
  half(double d) : half(float(d)) {}  // Metal has no double: a literal such as 1.0 is a float
  template <class I, mtl::detail::if_int<I> = 0>
  half(I i) : half(float(i)) {}
  operator float() const { return mtl::detail::half_bits_to_float(bits_); }
  half operator-() const {
    half h;
    h.bits_ = uint16_t(bits_ ^ 0x8000);
    return h;
  }
  half operator+() const { return *this; }
};

// -- bfloat (MSL 3.1): converts implicitly only to float; float, half and integers convert to
// it only explicitly. Arithmetic on bfloat values happens in float.
struct bfloat {
  uint16_t bits_;
  bfloat() = default;
  explicit bfloat(float f) : bits_(mtl::detail::float_to_bfloat_bits(f)) {}
  explicit bfloat(double d) : bfloat(float(d)) {}
  explicit bfloat(half h) : bfloat(float(h)) {}
  template <class I, mtl::detail::if_int<I> = 0>
  explicit bfloat(I i) : bfloat(float(i)) {}
  operator float() const { return mtl::detail::bfloat_bits_to_float(bits_); }
};

#define MT_HALF_ARITH(op)                                                                   \
  inline half operator op(half a, half b) { return half(float(a) op float(b)); }            \
  inline float operator op(half a, float b) { return float(a) op b; }                       \
  inline float operator op(float a, half b) { return a op float(b); }                       \
  inline float operator op(half a, double b) { return float(a) op float(b); }               \
  inline float operator op(double a, half b) { return float(a) op float(b); }               \
  template <class I, mtl::detail::if_int<I> = 0>                                            \
  inline half operator op(half a, I b) { return half(float(a) op float(half(b))); }         \
  template <class I, mtl::detail::if_int<I> = 0>                                            \
  inline half operator op(I a, half b) { return half(float(half(a)) op float(b)); }         \
  inline half& operator op##=(half& a, half b) { return a = a op b; }                       \
  inline half& operator op##=(half& a, float b) { return a = half(float(a) op b); }         \
  inline half& operator op##=(half& a, double b) { return a = half(float(a) op float(b)); } \
  inline float& operator op##=(float& a, half b) { return a = a op float(b); }
MT_HALF_ARITH(+)
MT_HALF_ARITH(-)
MT_HALF_ARITH(*)
MT_HALF_ARITH(/)
#undef MT_HALF_ARITH

#define MT_HALF_COMPARE(op)                                                            \
  inline bool operator op(half a, half b) { return float(a) op float(b); }             \
  inline bool operator op(half a, float b) { return float(a) op b; }                   \
  inline bool operator op(float a, half b) { return a op float(b); }                   \
  inline bool operator op(half a, double b) { return float(a) op float(b); }           \
  inline bool operator op(double a, half b) { return float(a) op float(b); }           \
  template <class I, mtl::detail::if_int<I> = 0>                                       \
  inline bool operator op(half a, I b) { return float(a) op float(half(b)); }          \
  template <class I, mtl::detail::if_int<I> = 0>                                       \
  inline bool operator op(I a, half b) { return float(half(a)) op float(b); }
MT_HALF_COMPARE(<)
MT_HALF_COMPARE(<=)
MT_HALF_COMPARE(>)
MT_HALF_COMPARE(>=)
MT_HALF_COMPARE(==)
MT_HALF_COMPARE(!=)
#undef MT_HALF_COMPARE

namespace metal {

// -- vectors (MSL 2.2): 2, 3 or 4 lanes; a 3-lane vector is sized and aligned as 4 lanes.
template <class T, int N>
struct vec;

}  // namespace metal

namespace mtl {
namespace detail {

template <class T, int N, int... I>
struct swizzle {
  T d[N == 3 ? 4 : N];
  operator metal::vec<T, int(sizeof...(I))>() const { return metal::vec<T, int(sizeof...(I))>(d[I]...); }
  swizzle& operator=(const metal::vec<T, int(sizeof...(I))>& o) {
    int k = 0;
    ((d[I] = o[k++]), ...);
    return *this;
  }
};

#define MT_SW2(a, b, ia, ib) swizzle<T, N, ia, ib> a##b;
template <class T, int N>
struct vec_storage;
template <class T>
struct vec_storage<T, 2> {
  static constexpr int N = 2;
  union {
    T v[2];
    struct { T x, y; };
    struct { T r, g; };
    MT_SW2(x, x, 0, 0) MT_SW2(x, y, 0, 1) MT_SW2(y, x, 1, 0) MT_SW2(y, y, 1, 1)
  };
};
template <class T>
struct vec_storage<T, 3> {
  static constexpr int N = 3;
  union {
    T v[4];
    struct { T x, y, z; };
    struct { T r, g, b; };
    MT_SW2(x, y, 0, 1) MT_SW2(y, x, 1, 0) MT_SW2(x, z, 0, 2) MT_SW2(z, x, 2, 0)
    MT_SW2(y, z, 1, 2) MT_SW2(z, y, 2, 1) MT_SW2(x, x, 0, 0) MT_SW2(y, y, 1, 1) MT_SW2(z, z, 2, 2)
    swizzle<T, 3, 0, 1, 2> xyz;
    swizzle<T, 3, 2, 1, 0> zyx;
  };
};
template <class T>
struct vec_storage<T, 4> {
  static constexpr int N = 4;
  union {
    T v[4];
    struct { T x, y, z, w; };
    struct { T r, g, b, a; };
    MT_SW2(x, y, 0, 1) MT_SW2(y, x, 1, 0) MT_SW2(x, z, 0, 2) MT_SW2(z, x, 2, 0)
    MT_SW2(x, w, 0, 3) MT_SW2(w, x, 3, 0) MT_SW2(y, z, 1, 2) MT_SW2(z, y, 2, 1)
    MT_SW2(y, w, 1, 3) MT_SW2(w, y, 3, 1) MT_SW2(z, w, 2, 3) MT_SW2(w, z, 3, 2)
    MT_SW2(x, x, 0, 0) MT_SW2(y, y, 1, 1) MT_SW2(z, z, 2, 2) MT_SW2(w, w, 3, 3)
    swizzle<T, 4, 0, 1, 2> xyz;
    swizzle<T, 4, 1, 2, 3> yzw;
    swizzle<T, 4, 0, 1, 2, 3> xyzw;
    swizzle<T, 4, 3, 2, 1, 0> wzyx;
  };
};
#undef MT_SW2

template <class T>
struct is_vec : std::false_type {};
template <class T, int N>
struct is_vec<metal::vec<T, N>> : std::true_type {};

template <class S>
using if_scalar = std::enable_if_t<std::is_arithmetic<S>::value || std::is_same<S, half>::value ||
                                       std::is_same<S, bfloat>::value,
                                   int>;

}  // namespace detail
}  // namespace mtl

namespace metal {

template <class T, int N>
struct alignas(sizeof(T) * (N == 3 ? 4 : N)) vec : mtl::detail::vec_storage<T, N> {
  using value_type = T;
  vec() = default;
  template <class S, mtl::detail::if_scalar<S> = 0>
  explicit vec(S s) {
    for (int i = 0; i < N; ++i) this->v[i] = T(s);
  }
  template <class... S, std::enable_if_t<sizeof...(S) == N && (N > 1), int> = 0>
  vec(S... s) {
    int i = 0;
    ((this->v[i++] = T(s)), ...);
  }
  template <class U>
  explicit vec(const vec<U, N>& o) {
    for (int i = 0; i < N; ++i) this->v[i] = T(o.v[i]);
  }
  T& operator[](int i) { return this->v[i]; }
  const T& operator[](int i) const { return this->v[i]; }
};

#define MT_VEC_BINARY(op)                                                                  \
  template <class T, int N>                                                                \
  inline vec<T, N> operator op(const vec<T, N>& a, const vec<T, N>& b) {                   \
    vec<T, N> r;                                                                           \
    for (int i = 0; i < N; ++i) r.v[i] = T(a.v[i] op b.v[i]);                              \
    return r;                                                                              \
  }                                                                                        \
  template <class T, int N, class S, mtl::detail::if_scalar<S> = 0>                        \
  inline vec<T, N> operator op(const vec<T, N>& a, S b) {                                  \
    return a op vec<T, N>(b);                                                              \
  }                                                                                        \
  template <class T, int N, class S, mtl::detail::if_scalar<S> = 0>                        \
  inline vec<T, N> operator op(S a, const vec<T, N>& b) {                                  \
    return vec<T, N>(a) op b;                                                              \
  }                                                                                        \
  template <class T, int N, class S>                                                       \
  inline vec<T, N>& operator op##=(vec<T, N>& a, const S& b) {                             \
    return a = a op b;                                                                     \
  }
MT_VEC_BINARY(+)
MT_VEC_BINARY(-)
MT_VEC_BINARY(*)
MT_VEC_BINARY(/)
MT_VEC_BINARY(%)
MT_VEC_BINARY(&)
MT_VEC_BINARY(|)
MT_VEC_BINARY(^)
MT_VEC_BINARY(<<)
MT_VEC_BINARY(>>)
#undef MT_VEC_BINARY

#define MT_VEC_COMPARE(op)                                                                 \
  template <class T, int N>                                                                \
  inline vec<bool, N> operator op(const vec<T, N>& a, const vec<T, N>& b) {                \
    vec<bool, N> r;                                                                        \
    for (int i = 0; i < N; ++i) r.v[i] = a.v[i] op b.v[i];                                 \
    return r;                                                                              \
  }                                                                                        \
  template <class T, int N, class S, mtl::detail::if_scalar<S> = 0>                        \
  inline vec<bool, N> operator op(const vec<T, N>& a, S b) {                               \
    return a op vec<T, N>(b);                                                              \
  }                                                                                        \
  template <class T, int N, class S, mtl::detail::if_scalar<S> = 0>                        \
  inline vec<bool, N> operator op(S a, const vec<T, N>& b) {                               \
    return vec<T, N>(a) op b;                                                              \
  }
MT_VEC_COMPARE(<)
MT_VEC_COMPARE(<=)
MT_VEC_COMPARE(>)
MT_VEC_COMPARE(>=)
MT_VEC_COMPARE(==)
MT_VEC_COMPARE(!=)
MT_VEC_COMPARE(&&)
MT_VEC_COMPARE(||)
#undef MT_VEC_COMPARE

template <class T, int N>
inline vec<T, N> operator-(const vec<T, N>& a) {
  vec<T, N> r;
  for (int i = 0; i < N; ++i) r.v[i] = T(-a.v[i]);
  return r;
}
template <class T, int N>
inline vec<T, N> operator~(const vec<T, N>& a) {
  vec<T, N> r;
  for (int i = 0; i < N; ++i) r.v[i] = T(~a.v[i]);
  return r;
}
template <class T, int N>
inline vec<bool, N> operator!(const vec<T, N>& a) {
  vec<bool, N> r;
  for (int i = 0; i < N; ++i) r.v[i] = !a.v[i];
  return r;
}
template <int N>
inline bool all(const vec<bool, N>& a) {
  for (int i = 0; i < N; ++i)
    if (!a.v[i]) return false;
  return true;
}
template <int N>
inline bool any(const vec<bool, N>& a) {
  for (int i = 0; i < N; ++i)
    if (a.v[i]) return true;
  return false;
}
inline bool all(bool b) { return b; }
inline bool any(bool b) { return b; }

template <class To, class From>
inline To as_type(const From& from) {
  return mtl::detail::bit_cast<To>(from);
}

}  // namespace metal

#define MT_VEC_TYPES(T)                \
  typedef metal::vec<T, 2> T##2;      \
  typedef metal::vec<T, 3> T##3;      \
  typedef metal::vec<T, 4> T##4;
MT_VEC_TYPES(float)
MT_VEC_TYPES(half)
MT_VEC_TYPES(bfloat)
MT_VEC_TYPES(int)
MT_VEC_TYPES(uint)
MT_VEC_TYPES(short)
MT_VEC_TYPES(ushort)
MT_VEC_TYPES(char)
MT_VEC_TYPES(uchar)
MT_VEC_TYPES(bool)
MT_VEC_TYPES(long)
MT_VEC_TYPES(ulong)
#undef MT_VEC_TYPES

namespace metal {

// -- numeric limits (MSL 6.6) --------------------------------------------------------------------
template <class T>
struct numeric_limits;
#define MT_INT_LIMITS(T, lo, hi)                              \
  template <>                                                 \
  struct numeric_limits<T> {                                  \
    static constexpr bool is_specialized = true;              \
    static constexpr T min() { return lo; }                   \
    static constexpr T lowest() { return lo; }                \
    static constexpr T max() { return hi; }                   \
  };
MT_INT_LIMITS(bool, false, true)
MT_INT_LIMITS(char, char(-128), char(127))
MT_INT_LIMITS(signed char, -128, 127)
MT_INT_LIMITS(unsigned char, 0, 255)
MT_INT_LIMITS(short, -32768, 32767)
MT_INT_LIMITS(unsigned short, 0, 65535)
MT_INT_LIMITS(int, -2147483647 - 1, 2147483647)
MT_INT_LIMITS(unsigned int, 0u, 4294967295u)
MT_INT_LIMITS(long, -9223372036854775807l - 1, 9223372036854775807l)
MT_INT_LIMITS(unsigned long, 0ul, 18446744073709551615ul)
#undef MT_INT_LIMITS
template <>
struct numeric_limits<float> {
  static constexpr bool is_specialized = true;
  static constexpr float min() { return __FLT_MIN__; }
  static constexpr float lowest() { return -__FLT_MAX__; }
  static constexpr float max() { return __FLT_MAX__; }
  static constexpr float epsilon() { return __FLT_EPSILON__; }
  static constexpr float infinity() { return __builtin_inff(); }
  static constexpr float quiet_NaN() { return __builtin_nanf(""); }
};
#define MT_HALF_LIMITS(T, minbits, maxbits, epsbits)                  \
  template <>                                                         \
  struct numeric_limits<T> {                                          \
    static constexpr bool is_specialized = true;                      \
    static T bits(uint16_t b) {                                       \
      T t;                                                            \
      t.bits_ = b;                                                    \
      return t;                                                       \
    }                                                                 \
    static T min() { return bits(minbits); }                          \
    static T lowest() { return bits(0x8000 | maxbits); }              \
    static T max() { return bits(maxbits); }                          \
    static T epsilon() { return bits(epsbits); }                      \
    static T infinity() { return bits(T##_inf_bits); }                \
    static T quiet_NaN() { return bits(T##_nan_bits); }               \
  };
constexpr uint16_t half_inf_bits = 0x7c00, half_nan_bits = 0x7e00;
constexpr uint16_t bfloat_inf_bits = 0x7f80, bfloat_nan_bits = 0x7fc0;
MT_HALF_LIMITS(half, 0x0400, 0x7bff, 0x1400)
MT_HALF_LIMITS(bfloat, 0x0080, 0x7f7f, 0x3c00)
#undef MT_HALF_LIMITS

// -- math (MSL 6.5) with safe-math semantics: IEEE special values as the C library gives them.
// Half and bfloat compute in float and round the result.
#define MT_MATH1(name, expr)                                           \
  inline float name(float x) { return expr; }                         \
  inline half name(half x) { return half(name(float(x))); }           \
  inline bfloat name(bfloat x) { return bfloat(name(float(x))); }     \
  template <class T, int N>                                           \
  inline vec<T, N> name(const vec<T, N>& a) {                         \
    vec<T, N> r;                                                      \
    for (int i = 0; i < N; ++i) r.v[i] = name(a.v[i]);                \
    return r;                                                         \
  }
#define MT_MATH2(name, expr)                                                              \
  inline float name(float x, float y) { return expr; }                                    \
  inline half name(half x, half y) { return half(name(float(x), float(y))); }             \
  inline bfloat name(bfloat x, bfloat y) { return bfloat(name(float(x), float(y))); }     \
  template <class T, int N>                                                               \
  inline vec<T, N> name(const vec<T, N>& a, const vec<T, N>& b) {                         \
    vec<T, N> r;                                                                          \
    for (int i = 0; i < N; ++i) r.v[i] = name(a.v[i], b.v[i]);                            \
    return r;                                                                             \
  }
MT_MATH1(acos, __builtin_acosf(x))
MT_MATH1(acosh, __builtin_acoshf(x))
MT_MATH1(asin, __builtin_asinf(x))
MT_MATH1(asinh, __builtin_asinhf(x))
MT_MATH1(atan, __builtin_atanf(x))
MT_MATH1(atanh, __builtin_atanhf(x))
MT_MATH1(ceil, __builtin_ceilf(x))
MT_MATH1(cos, __builtin_cosf(x))
MT_MATH1(cosh, __builtin_coshf(x))
MT_MATH1(cospi, __builtin_cosf(x * M_PI_F))
MT_MATH1(exp, __builtin_expf(x))
MT_MATH1(exp2, __builtin_exp2f(x))
MT_MATH1(exp10, __builtin_powf(10.0f, x))
MT_MATH1(fabs, __builtin_fabsf(x))
MT_MATH1(abs, __builtin_fabsf(x))
MT_MATH1(floor, __builtin_floorf(x))
MT_MATH1(fract, __builtin_fminf(x - __builtin_floorf(x), 0x1.fffffep-1f))
MT_MATH1(log, __builtin_logf(x))
MT_MATH1(log2, __builtin_log2f(x))
MT_MATH1(log10, __builtin_log10f(x))
MT_MATH1(rint, __builtin_rintf(x))
MT_MATH1(round, __builtin_roundf(x))
MT_MATH1(rsqrt, 1.0f / __builtin_sqrtf(x))
MT_MATH1(sin, __builtin_sinf(x))
MT_MATH1(sinh, __builtin_sinhf(x))
MT_MATH1(sinpi, __builtin_sinf(x * M_PI_F))
MT_MATH1(sqrt, __builtin_sqrtf(x))
MT_MATH1(tan, __builtin_tanf(x))
MT_MATH1(tanh, __builtin_tanhf(x))
MT_MATH1(tanpi, __builtin_tanf(x * M_PI_F))
MT_MATH1(trunc, __builtin_truncf(x))
MT_MATH1(saturate, __builtin_fminf(__builtin_fmaxf(x, 0.0f), 1.0f))
MT_MATH1(sign, x > 0.0f ? 1.0f : (x < 0.0f ? -1.0f : (x == x ? x * 0.0f : 0.0f)))
MT_MATH2(atan2, __builtin_atan2f(x, y))
MT_MATH2(copysign, __builtin_copysignf(x, y))
MT_MATH2(fdim, __builtin_fdimf(x, y))
MT_MATH2(fmax, __builtin_fmaxf(x, y))
MT_MATH2(fmin, __builtin_fminf(x, y))
MT_MATH2(fmod, __builtin_fmodf(x, y))
MT_MATH2(pow, __builtin_powf(x, y))
MT_MATH2(powr, __builtin_powf(x, y))
MT_MATH2(step, y < x ? 0.0f : 1.0f)

inline float fma(float a, float b, float c) { return __builtin_fmaf(a, b, c); }
inline half fma(half a, half b, half c) { return half(__builtin_fmaf(a, b, c)); }
inline float mix(float x, float y, float a) { return x + (y - x) * a; }
inline half mix(half x, half y, half a) { return half(mix(float(x), float(y), float(a))); }

#define MT_CLASSIFY(name, expr)                     \
  inline bool name(float x) { return expr; }        \
  inline bool name(half x) { return name(float(x)); } \
  inline bool name(bfloat x) { return name(float(x)); }
MT_CLASSIFY(isinf, __builtin_isinf(x))
MT_CLASSIFY(isnan, __builtin_isnan(x))
MT_CLASSIFY(isfinite, __builtin_isfinite(x))
MT_CLASSIFY(isnormal, __builtin_isnormal(x))
MT_CLASSIFY(signbit, __builtin_signbit(x))
#undef MT_CLASSIFY

// max / min / clamp (MSL 6.4, 6.5): for floats as fmax / fmin (a NaN operand yields the other)
inline float max(float a, float b) { return __builtin_fmaxf(a, b); }
inline float min(float a, float b) { return __builtin_fminf(a, b); }
inline half max(half a, half b) { return half(__builtin_fmaxf(a, b)); }
inline half min(half a, half b) { return half(__builtin_fminf(a, b)); }
inline bfloat max(bfloat a, bfloat b) { return bfloat(__builtin_fmaxf(a, b)); }
inline bfloat min(bfloat a, bfloat b) { return bfloat(__builtin_fminf(a, b)); }
template <class T, mtl::detail::if_int<T> = 0>
inline T max(T a, T b) { return a < b ? b : a; }
template <class T, mtl::detail::if_int<T> = 0>
inline T min(T a, T b) { return b < a ? b : a; }
template <class T, int N>
inline vec<T, N> max(const vec<T, N>& a, const vec<T, N>& b) {
  vec<T, N> r;
  for (int i = 0; i < N; ++i) r.v[i] = max(a.v[i], b.v[i]);
  return r;
}
template <class T, int N>
inline vec<T, N> min(const vec<T, N>& a, const vec<T, N>& b) {
  vec<T, N> r;
  for (int i = 0; i < N; ++i) r.v[i] = min(a.v[i], b.v[i]);
  return r;
}
template <class T>
inline T clamp(T x, T lo, T hi) { return min(max(x, lo), hi); }
template <class T>
inline T select(T a, T b, bool c) { return c ? b : a; }

inline int abs(int x) { return x < 0 ? -x : x; }
inline long abs(long x) { return x < 0 ? -x : x; }
inline short abs(short x) { return short(x < 0 ? -x : x); }
inline char abs(char x) { return char(x < 0 ? -x : x); }
inline uint abs(uint x) { return x; }
template <class T, mtl::detail::if_int<T> = 0>
inline T popcount(T x) { return T(__builtin_popcountll((unsigned long long)(std::make_unsigned_t<T>)x)); }
inline int clz(int x) { return x ? __builtin_clz(uint(x)) : 32; }
inline uint clz(uint x) { return x ? uint(__builtin_clz(x)) : 32u; }
inline int ctz(int x) { return x ? __builtin_ctz(uint(x)) : 32; }
inline uint ctz(uint x) { return x ? uint(__builtin_ctz(x)) : 32u; }

namespace precise {
using metal::acos; using metal::acosh; using metal::asin; using metal::asinh; using metal::atan;
using metal::atan2; using metal::atanh; using metal::ceil; using metal::cos; using metal::cosh;
using metal::exp; using metal::exp2; using metal::exp10; using metal::fabs; using metal::floor;
using metal::fmax; using metal::fmin; using metal::fmod; using metal::log; using metal::log2;
using metal::log10; using metal::pow; using metal::powr; using metal::rint; using metal::round;
using metal::rsqrt; using metal::sin; using metal::sinh; using metal::sqrt; using metal::tan;
using metal::tanh; using metal::trunc;
inline float divide(float x, float y) { return x / y; }
}  // namespace precise

namespace fast {
using metal::acos; using metal::acosh; using metal::asin; using metal::asinh; using metal::atan;
using metal::atan2; using metal::atanh; using metal::ceil; using metal::cos; using metal::cosh;
using metal::exp2; using metal::exp10; using metal::fabs; using metal::floor; using metal::fmax;
using metal::fmin; using metal::fmod; using metal::log; using metal::log2; using metal::log10;
using metal::pow; using metal::powr; using metal::rint; using metal::round; using metal::rsqrt;
using metal::sin; using metal::sinh; using metal::sqrt; using metal::tan; using metal::tanh;
using metal::trunc;
// The GPU's fast exponential is its base-2 exponential of x * log2(e); the rounding of that
// product makes it a few ulp less accurate than exp, and exp(-inf) is still 0.
inline float exp(float x) { return __builtin_exp2f(x * M_LOG2E_F); }
inline half exp(half x) { return half(exp(float(x))); }
inline float divide(float x, float y) { return x / y; }
}  // namespace fast

}  // namespace metal

// -- checked memory ------------------------------------------------------------------------------
namespace mtl {

template <class T>
struct device_ptr;

namespace detail {

inline void check_device(const rt::Buffer* b, int64_t off, size_t size, size_t align,
                         int line, const char* what) {
  if (off < 0 || off + int64_t(size) > b->nbytes) {
    const int64_t e = b->elem_size;
    rt::fail(line, "out-of-bounds %s of %s at element %lld (%lld bytes at byte %lld): %s holds "
             "%lld elements", what, b->name, (long long)(off >= 0 ? off / e : -((-off + e - 1) / e)),
             (long long)size, (long long)off, b->name, (long long)(b->nbytes / e));
  }
  if (off % int64_t(align) != 0) {
    rt::fail(line, "misaligned %s of %s: %lld bytes at byte offset %lld need %lld-byte alignment",
             what, b->name, (long long)size, (long long)off, (long long)align);
  }
}

// An output element written by another thread of the same launch (no ordering between them)
inline void on_device_write(rt::Buffer* b, int64_t off, size_t size, int line) {
  const int64_t e = b->elem_size;
  for (int64_t i = off / e; i < (off + int64_t(size) + e - 1) / e; ++i) {
    int32_t& w = b->writer[i];
    const int32_t me = int32_t(rt::current->gid + 1);
    if (w > 0 && w != me)
      rt::fail(line, "%s[%lld] written by two threads (grid-linear ids %d and %d) in one launch",
               b->name, (long long)i, w - 1, me - 1);
    if (w == rt::kAtomic) rt::fail(line, "%s[%lld] written both atomically and plainly", b->name, (long long)i);
    w = me;
  }
}

inline void on_device_read(rt::Buffer* b, int64_t off, size_t size, int line) {
  if (!b->writer) return;  // an input
  const int64_t e = b->elem_size;
  for (int64_t i = off / e; i < (off + int64_t(size) + e - 1) / e; ++i) {
    const int32_t w = b->writer[i];
    if (w == rt::kUnwritten)
      rt::fail(line, "read of %s[%lld], an output element nothing wrote yet", b->name, (long long)i);
    if (w > 0 && w != int32_t(rt::current->gid + 1))
      rt::fail(line, "read of %s[%lld], written by another thread (grid-linear id %d) of the same "
               "launch", b->name, (long long)i, w - 1);
  }
}

// A writable device element: loads and stores through it are checked and recorded.
template <class T>
struct device_ref {
  rt::Buffer* b;
  int64_t off;
  int line;
  T load() const {
    check_device(b, off, sizeof(T), alignof(T), line, "read");
    on_device_read(b, off, sizeof(T), line);
    T t;
    __builtin_memcpy(&t, b->data + off, sizeof(T));
    return t;
  }
  void store(const T& t) const {
    check_device(b, off, sizeof(T), alignof(T), line, "write");
    on_device_write(b, off, sizeof(T), line);
    __builtin_memcpy(b->data + off, &t, sizeof(T));
  }
  operator T() const { return load(); }
  template <class U, std::enable_if_t<!std::is_same<U, T>::value, int> = 0>
  explicit operator U() const { return static_cast<U>(load()); }
  const device_ref& operator=(const T& t) const { store(t); return *this; }
  const device_ref& operator=(const device_ref& o) const { store(o.load()); return *this; }
  template <class U>
  const device_ref& operator+=(const U& u) const { store(T(load() + u)); return *this; }
  template <class U>
  const device_ref& operator-=(const U& u) const { store(T(load() - u)); return *this; }
  template <class U>
  const device_ref& operator*=(const U& u) const { store(T(load() * u)); return *this; }
  template <class U>
  const device_ref& operator/=(const U& u) const { store(T(load() / u)); return *this; }
  device_ptr<T> operator&() const;
};

}  // namespace detail

// A pointer into one device (or constant) buffer: carries the buffer, so every access is
// checked against it, and the source line of the access for the error message.
template <class T>
struct device_ptr {
  rt::Buffer* b;
  int64_t off;  // bytes from the start of the buffer
  int line;
  device_ptr() : b(nullptr), off(0), line(0) {}
  explicit device_ptr(rt::Buffer& buffer) : b(&buffer), off(0), line(0) {}
  device_ptr(rt::Buffer* buffer, int64_t offset, int at) : b(buffer), off(offset), line(at) {}
  template <class U, std::enable_if_t<std::is_same<const U, T>::value && !std::is_same<U, T>::value, int> = 0>
  device_ptr(const device_ptr<U>& o) : b(o.b), off(o.off), line(o.line) {}
  device_ptr operator()(int at) const { return device_ptr(b, off, at); }
  device_ptr operator+(int64_t i) const { return device_ptr(b, off + i * int64_t(sizeof(T)), line); }
  device_ptr operator-(int64_t i) const { return device_ptr(b, off - i * int64_t(sizeof(T)), line); }
  device_ptr& operator+=(int64_t i) { off += i * int64_t(sizeof(T)); return *this; }
  device_ptr& operator-=(int64_t i) { off -= i * int64_t(sizeof(T)); return *this; }
  device_ptr& operator++() { off += sizeof(T); return *this; }
  explicit operator bool() const { return b != nullptr; }

  template <class U = T, std::enable_if_t<std::is_const<U>::value, int> = 0>
  std::remove_const_t<T> at(int64_t o) const {
    detail::check_device(b, o, sizeof(T), alignof(T), line, "read");
    detail::on_device_read(b, o, sizeof(T), line);
    std::remove_const_t<T> t;
    __builtin_memcpy(static_cast<void*>(&t), b->data + o, sizeof(T));
    return t;
  }
  template <class U = T, std::enable_if_t<!std::is_const<U>::value, int> = 0>
  detail::device_ref<T> at(int64_t o) const { return detail::device_ref<T>{b, o, line}; }
  decltype(auto) operator[](int64_t i) const { return at(off + i * int64_t(sizeof(T))); }
  decltype(auto) operator*() const { return at(off); }
};

template <class T>
device_ptr<T> detail::device_ref<T>::operator&() const { return device_ptr<T>(b, off, line); }

// reinterpret_cast<P>(p) as the translator writes it: a device pointer keeps its buffer
// (alignment and bounds are checked at the access); any other pointer casts as in C++.
template <int Line, class P, class T>
inline device_ptr<std::remove_pointer_t<P>> reinterpret_at(const device_ptr<T>& p) {
  static_assert(std::is_pointer<P>::value, "reinterpret_cast of a device pointer to a non-pointer");
  return device_ptr<std::remove_pointer_t<P>>(p.b, p.off, Line);
}
template <int Line, class P, class Q>
inline P reinterpret_at(Q q) {
  return reinterpret_cast<P>(q);
}

// -- threadgroup memory -----------------------------------------------------------------------
namespace detail {

inline bool ordered(const rt::Shadow& s, bool write_side, int other) {
  // An access is ordered after another thread's when a threadgroup barrier separates them, or a
  // simdgroup barrier does and both threads are in one SIMD-group.
  const uint32_t phase = write_side ? s.wphase : s.rphase;
  if (phase != rt::group->phase) return true;
  const rt::Thread* t = rt::current;
  if (other < 0 || uint32_t(other) / 32 != t->simd) return false;
  return (write_side ? s.wsimd : s.rsimd) != uint16_t(rt::group->simd_phase[t->simd]);
}

inline void on_tg_read(rt::Shadow& s, const char* name, int64_t i, int line) {
  const rt::Thread* t = rt::current;
  if (s.writer == -1)
    rt::fail(line, "read of threadgroup memory %s[%lld] before any thread wrote it", name, (long long)i);
  if (s.writer != int16_t(t->lid) && !ordered(s, true, s.writer))
    rt::fail(line, "race on threadgroup memory %s[%lld]: thread %d reads what thread %d wrote with no "
             "barrier between", name, (long long)i, int(t->lid), int(s.writer));
  if (s.rphase != rt::group->phase || s.reader == -1) {
    s.reader = int16_t(t->lid);
    s.rphase = rt::group->phase;
    s.rsimd = uint16_t(rt::group->simd_phase[t->simd]);
  } else if (s.reader != int16_t(t->lid)) {
    s.reader = -2;
  }
}

inline void on_tg_write(rt::Shadow& s, const char* name, int64_t i, int line) {
  const rt::Thread* t = rt::current;
  if (s.writer >= 0 && s.writer != int16_t(t->lid) && !ordered(s, true, s.writer))
    rt::fail(line, "race on threadgroup memory %s[%lld]: threads %d and %d write it with no barrier "
             "between", name, (long long)i, int(s.writer), int(t->lid));
  if (s.reader != -1 && s.reader != int16_t(t->lid) && !ordered(s, false, s.reader))
    rt::fail(line, "race on threadgroup memory %s[%lld]: thread %d overwrites what %s read with no "
             "barrier between", name, (long long)i, int(t->lid),
             s.reader == -2 ? "several threads" : "another thread");
  s.writer = int16_t(t->lid);
  s.wphase = rt::group->phase;
  s.wsimd = uint16_t(rt::group->simd_phase[t->simd]);
  s.reader = -1;
}

template <class T>
struct tg_ref {
  T* p;
  rt::Shadow* s;
  const char* name;
  int64_t i;
  int line;
  T load() const {
    on_tg_read(*s, name, i, line);
    return *p;
  }
  void store(const T& t) const {
    on_tg_write(*s, name, i, line);
    *p = t;
  }
  operator T() const { return load(); }
  template <class U, std::enable_if_t<!std::is_same<U, T>::value, int> = 0>
  explicit operator U() const { return static_cast<U>(load()); }
  const tg_ref& operator=(const T& t) const { store(t); return *this; }
  const tg_ref& operator=(const tg_ref& o) const { store(o.load()); return *this; }
  template <class U>
  const tg_ref& operator+=(const U& u) const { store(T(load() + u)); return *this; }
  template <class U>
  const tg_ref& operator-=(const U& u) const { store(T(load() - u)); return *this; }
  template <class U>
  const tg_ref& operator*=(const U& u) const { store(T(load() * u)); return *this; }
  template <class U>
  const tg_ref& operator/=(const U& u) const { store(T(load() / u)); return *this; }
};

}  // namespace detail

// `threadgroup T name[N];` as the translator writes it: storage shared by the threadgroup's
// threads, allocated when the first of them reaches the declaration.
template <class T, int64_t N>
struct threadgroup_array {
  T* data;
  rt::Shadow* shadow;
  const char* name;
  int line;
  detail::tg_ref<T> operator[](int64_t i) const {
    if (i < 0 || i >= N)
      rt::fail(line, "out-of-bounds access of threadgroup memory %s[%lld]: it holds %lld elements",
               name, (long long)i, (long long)N);
    return detail::tg_ref<T>{data + i, shadow + i, name, i, line};
  }
  threadgroup_array operator()(int at) const { return threadgroup_array{data, shadow, name, at}; }
};

template <class T, int64_t N>
inline threadgroup_array<T, N> threadgroup_alloc(int line, const char* name) {
  static_assert(std::is_trivially_copyable<T>::value, "threadgroup arrays of plain types only");
  rt::Shadow* shadow;
  T* data = reinterpret_cast<T*>(rt::tg_alloc(line, name, sizeof(T) * N, N, &shadow));
  return threadgroup_array<T, N>{data, shadow, name, line};
}

}  // namespace mtl

// -- synchronization (MSL 6.9.1) -------------------------------------------------------------------
namespace metal {

enum class mem_flags {
  mem_none = 0, mem_device = 1, mem_threadgroup = 2, mem_texture = 4,
  mem_threadgroup_imageblock = 8, mem_object_data = 16
};
inline constexpr mem_flags operator|(mem_flags a, mem_flags b) { return mem_flags(int(a) | int(b)); }

inline void threadgroup_barrier(mem_flags flags, int line = __builtin_LINE()) {
  mtl::rt::barrier(int(flags), line, 0);
}
inline void simdgroup_barrier(mem_flags flags, int line = __builtin_LINE()) {
  mtl::rt::barrier(int(flags), line, 1);
}

}  // namespace metal

// -- SIMD-group functions (MSL 6.9.2) -----------------------------------------------------------
namespace mtl {
namespace simd {

constexpr int kWidth = 32;

template <class T, class D>
struct dependent {
  using type = T;
};
// The element types SIMD-group functions take (MSL 6.9.2)
template <class T>
using if_simd = std::enable_if_t<
    std::is_same<T, float>::value || std::is_same<T, half>::value || std::is_same<T, bfloat>::value ||
        std::is_same<T, int>::value || std::is_same<T, uint>::value || std::is_same<T, short>::value ||
        std::is_same<T, ushort>::value || std::is_same<T, char>::value || std::is_same<T, uchar>::value,
    int>;

template <class T>
struct lanes_of {
  using elem = T;
  static constexpr int n = 1;
};
template <class T, int N>
struct lanes_of<metal::vec<T, N>> {
  using elem = T;
  static constexpr int n = N;
};

template <class T>
inline T in(const rt::Thread* t) {
  T v;
  __builtin_memcpy(static_cast<void*>(&v), t->in, sizeof(T));
  return v;
}
template <class T>
inline void out(rt::Thread* t, const T& v) {
  __builtin_memcpy(t->out, &v, sizeof(T));
}

// Component c of a scalar or vector value.
template <class T>
inline typename lanes_of<T>::elem& part(T& v, int c) {
  if constexpr (lanes_of<T>::n == 1) {
    (void)c;
    return v;
  } else {
    return v.v[c];
  }
}

// Arguments such as a shuffle's mask or a broadcast's lane must be the same in every lane
// (MSL 6.9.2); a differing one is undefined on the GPU and an error here.
inline bool uniform_arg(rt::Thread* const* lanes, int line, const char* what) {
  const rt::Thread* first = nullptr;
  for (int l = 0; l < kWidth; ++l) {
    if (!lanes[l]) continue;
    if (!first) first = lanes[l];
    if (lanes[l]->arg != first->arg) {
      rt::report(line, "%s: lanes %d and %d pass different arguments (%u and %u); they must agree",
                 what, int(first->lid % 32), l, first->arg, lanes[l]->arg);
      return false;
    }
  }
  return true;
}

// A reduction over the active lanes, combined pairwise (a tree, as the hardware reduces), the
// same result in every lane.
template <class T, class F>
inline void reduce(rt::Thread* const* lanes, F combine) {
  using E = typename lanes_of<T>::elem;
  constexpr int n = lanes_of<T>::n;
  T result;
  for (int c = 0; c < n; ++c) {
    E vals[kWidth];
    bool have[kWidth];
    for (int l = 0; l < kWidth; ++l) {
      have[l] = lanes[l] != nullptr;
      if (have[l]) {
        T v = in<T>(lanes[l]);
        vals[l] = part(v, c);
      }
    }
    for (int stride = 1; stride < kWidth; stride *= 2) {
      for (int l = 0; l + stride < kWidth; l += 2 * stride) {
        if (have[l] && have[l + stride]) vals[l] = combine(vals[l], vals[l + stride]);
        else if (have[l + stride]) { vals[l] = vals[l + stride]; have[l] = true; }
      }
    }
    part(result, c) = vals[0];
  }
  for (int l = 0; l < kWidth; ++l)
    if (lanes[l]) out(lanes[l], result);
}

// Inclusive or exclusive scan in lane order over the active lanes.
template <class T, class F>
inline void scan(rt::Thread* const* lanes, F combine, bool inclusive, typename lanes_of<T>::elem identity) {
  using E = typename lanes_of<T>::elem;
  constexpr int n = lanes_of<T>::n;
  E acc[n];
  for (int c = 0; c < n; ++c) acc[c] = identity;
  for (int l = 0; l < kWidth; ++l) {
    if (!lanes[l]) continue;
    T v = in<T>(lanes[l]), r;
    for (int c = 0; c < n; ++c) {
      const E next = combine(acc[c], part(v, c));
      part(r, c) = inclusive ? next : acc[c];
      acc[c] = next;
    }
    out(lanes[l], r);
  }
}

// Every lane reads the value of lane source(l); reading a lane that does not exist or has
// returned is undefined on the GPU and an error here. ``keep`` lets a lane keep its own value
// (shuffle_up / shuffle_down past the edge).
template <class T, class S>
inline void gather(rt::Thread* const* lanes, int line, const char* what, S source) {
  T got[kWidth];
  for (int l = 0; l < kWidth; ++l) {
    if (!lanes[l]) continue;
    const int src = source(l, lanes[l]->arg);
    if (src < 0 || src >= kWidth || !lanes[src]) {
      rt::report(line, "%s: lane %d reads lane %d, which %s", what, l, src,
                 src < 0 || src >= kWidth ? "is outside the SIMD-group"
                                          : "is inactive (past the threadgroup's end, or returned)");
      return;
    }
    got[l] = in<T>(lanes[src]);
  }
  for (int l = 0; l < kWidth; ++l)
    if (lanes[l]) out(lanes[l], got[l]);
}

template <class T>
inline T call(const T& x, uint32_t arg, rt::SimdFn fn, int line, const char* what) {
  static_assert(sizeof(T) <= sizeof(rt::Thread::in), "SIMD-group value too large");
  rt::Thread* t = rt::current;
  __builtin_memcpy(t->in, &x, sizeof(T));
  t->arg = arg;
  t->fn = fn;
  t->line = line;
  t->what = what;
  rt::wait(t, rt::kAtSimd);
  T r;
  __builtin_memcpy(static_cast<void*>(&r), t->out, sizeof(T));
  return r;
}

template <class E>
inline E add(E a, E b) { return E(a + b); }
template <class E>
inline E mul(E a, E b) { return E(a * b); }
template <class E>
inline E max_of(E a, E b) { return metal::max(a, b); }
template <class E>
inline E min_of(E a, E b) { return metal::min(a, b); }

template <class T> void op_sum(rt::Thread* const* l, int) { reduce<T>(l, add<typename lanes_of<T>::elem>); }
template <class T> void op_product(rt::Thread* const* l, int) { reduce<T>(l, mul<typename lanes_of<T>::elem>); }
template <class T> void op_max(rt::Thread* const* l, int) { reduce<T>(l, max_of<typename lanes_of<T>::elem>); }
template <class T> void op_min(rt::Thread* const* l, int) { reduce<T>(l, min_of<typename lanes_of<T>::elem>); }
template <class T> void op_and(rt::Thread* const* l, int) {
  reduce<T>(l, [](auto a, auto b) { return decltype(a)(a & b); });
}
template <class T> void op_or(rt::Thread* const* l, int) {
  reduce<T>(l, [](auto a, auto b) { return decltype(a)(a | b); });
}
template <class T> void op_xor(rt::Thread* const* l, int) {
  reduce<T>(l, [](auto a, auto b) { return decltype(a)(a ^ b); });
}
template <class T> void op_prefix_inclusive_sum(rt::Thread* const* l, int) {
  scan<T>(l, add<typename lanes_of<T>::elem>, true, typename lanes_of<T>::elem(0));
}
template <class T> void op_prefix_exclusive_sum(rt::Thread* const* l, int) {
  scan<T>(l, add<typename lanes_of<T>::elem>, false, typename lanes_of<T>::elem(0));
}
template <class T> void op_prefix_inclusive_product(rt::Thread* const* l, int) {
  scan<T>(l, mul<typename lanes_of<T>::elem>, true, typename lanes_of<T>::elem(1));
}
template <class T> void op_prefix_exclusive_product(rt::Thread* const* l, int) {
  scan<T>(l, mul<typename lanes_of<T>::elem>, false, typename lanes_of<T>::elem(1));
}
template <class T> void op_shuffle(rt::Thread* const* l, int line) {
  gather<T>(l, line, "simd_shuffle", [](int, uint32_t a) { return int(a); });
}
template <class T> void op_shuffle_xor(rt::Thread* const* l, int line) {
  if (uniform_arg(l, line, "simd_shuffle_xor"))
    gather<T>(l, line, "simd_shuffle_xor", [](int lane, uint32_t a) { return lane ^ int(a); });
}
template <class T> void op_shuffle_up(rt::Thread* const* l, int line) {
  if (uniform_arg(l, line, "simd_shuffle_up"))
    gather<T>(l, line, "simd_shuffle_up", [](int lane, uint32_t a) { return lane >= int(a) ? lane - int(a) : lane; });
}
template <class T> void op_shuffle_down(rt::Thread* const* l, int line) {
  if (uniform_arg(l, line, "simd_shuffle_down"))
    gather<T>(l, line, "simd_shuffle_down",
              [](int lane, uint32_t a) { return lane + int(a) < kWidth ? lane + int(a) : lane; });
}
template <class T> void op_shuffle_rotate_up(rt::Thread* const* l, int line) {
  if (uniform_arg(l, line, "simd_shuffle_rotate_up"))
    gather<T>(l, line, "simd_shuffle_rotate_up", [](int lane, uint32_t a) { return (lane - int(a % kWidth) + kWidth) % kWidth; });
}
template <class T> void op_shuffle_rotate_down(rt::Thread* const* l, int line) {
  if (uniform_arg(l, line, "simd_shuffle_rotate_down"))
    gather<T>(l, line, "simd_shuffle_rotate_down", [](int lane, uint32_t a) { return (lane + int(a % kWidth)) % kWidth; });
}
template <class T> void op_broadcast(rt::Thread* const* l, int line) {
  if (uniform_arg(l, line, "simd_broadcast"))
    gather<T>(l, line, "simd_broadcast", [](int, uint32_t a) { return int(a); });
}
template <class T> void op_broadcast_first(rt::Thread* const* l, int line) {
  int first = 0;
  while (first < kWidth && !l[first]) ++first;
  gather<T>(l, line, "simd_broadcast_first", [first](int, uint32_t) { return first; });
}
// quad_*: the same within each group of four lanes
template <class T> void op_quad_shuffle_xor(rt::Thread* const* l, int line) {
  if (uniform_arg(l, line, "quad_shuffle_xor"))
    gather<T>(l, line, "quad_shuffle_xor", [](int lane, uint32_t a) { return (lane & ~3) | ((lane ^ int(a)) & 3); });
}
template <class T> void op_quad_broadcast(rt::Thread* const* l, int line) {
  if (uniform_arg(l, line, "quad_broadcast"))
    gather<T>(l, line, "quad_broadcast", [](int lane, uint32_t a) { return (lane & ~3) | int(a & 3); });
}
template <class T> void op_quad_sum(rt::Thread* const* l, int) {
  for (int q = 0; q < kWidth; q += 4) {
    rt::Thread* sub[kWidth] = {};
    for (int k = 0; k < 4; ++k) sub[k] = l[q + k];
    reduce<T>(sub, add<typename lanes_of<T>::elem>);
  }
}

inline void op_vote(rt::Thread* const* l, int) {
  uint64_t bits = 0;
  for (int lane = 0; lane < kWidth; ++lane)
    if (l[lane] && in<bool>(l[lane])) bits |= uint64_t(1) << lane;
  for (int lane = 0; lane < kWidth; ++lane)
    if (l[lane]) out(l[lane], bits);
}

}  // namespace simd
}  // namespace mtl

namespace metal {

struct simd_vote {
  typedef uint64_t vote_t;
  vote_t v;
  explicit constexpr simd_vote(vote_t x = 0) : v(x) {}
  explicit constexpr operator vote_t() const { return v; }
  bool any() const { return v != 0; }
};

inline bool simd_all(bool b, int line = __builtin_LINE()) {
  using namespace mtl::simd;
  const uint64_t active = call<uint64_t>(1, 0, op_vote, line, "simd_all");  // which lanes run
  return call<uint64_t>(b, 0, op_vote, line, "simd_all") == active;
}
inline bool simd_any(bool b, int line = __builtin_LINE()) {
  return mtl::simd::call<uint64_t>(b, 0, mtl::simd::op_vote, line, "simd_any") != 0;
}
inline simd_vote simd_ballot(bool b, int line = __builtin_LINE()) {
  return simd_vote(mtl::simd::call<uint64_t>(b, 0, mtl::simd::op_vote, line, "simd_ballot"));
}
inline simd_vote simd_active_threads_mask(int line = __builtin_LINE()) {
  return simd_vote(mtl::simd::call<uint64_t>(true, 0, mtl::simd::op_vote, line, "simd_active_threads_mask"));
}
inline bool simd_is_first(int line = __builtin_LINE()) {
  const uint64_t active = mtl::simd::call<uint64_t>(true, 0, mtl::simd::op_vote, line, "simd_is_first");
  return (active & ((uint64_t(1) << (mtl::rt::current->lid % 32)) - 1)) == 0;
}

// One overload per scalar type the MSL lists (float, half, bfloat, int, uint, short, ushort,
// char, uchar; no 64-bit types), so implicit conversions pick one as on the GPU; each is a
// template only so that its body is instantiated when called. Vectors of those types take
// vector overloads.
#define MT_SIMD1(T, name, op)                                                                   \
  template <class D = void>                                                                     \
  inline T name(T x, int line = __builtin_LINE()) {                                             \
    using U = typename mtl::simd::dependent<T, D>::type;                                        \
    return mtl::simd::call<U>(x, 0, mtl::simd::op<U>, line, #name);                             \
  }
#define MT_SIMD2(T, name, op)                                                                   \
  template <class D = void>                                                                     \
  inline T name(T x, ushort arg, int line = __builtin_LINE()) {                                 \
    using U = typename mtl::simd::dependent<T, D>::type;                                        \
    return mtl::simd::call<U>(x, arg, mtl::simd::op<U>, line, #name);                           \
  }
#define MT_SIMDV1(name, op)                                                                     \
  template <class T, int N, mtl::simd::if_simd<T> = 0>                                          \
  inline vec<T, N> name(vec<T, N> x, int line = __builtin_LINE()) {                             \
    return mtl::simd::call<vec<T, N>>(x, 0, mtl::simd::op<vec<T, N>>, line, #name);             \
  }
#define MT_SIMDV2(name, op)                                                                     \
  template <class T, int N, mtl::simd::if_simd<T> = 0>                                          \
  inline vec<T, N> name(vec<T, N> x, ushort arg, int line = __builtin_LINE()) {                 \
    return mtl::simd::call<vec<T, N>>(x, arg, mtl::simd::op<vec<T, N>>, line, #name);           \
  }
#define MT_SIMD_OPS(M1, M2, ...)                                                \
  M1(__VA_ARGS__ simd_sum, op_sum)                                              \
  M1(__VA_ARGS__ simd_product, op_product)                                      \
  M1(__VA_ARGS__ simd_max, op_max)                                              \
  M1(__VA_ARGS__ simd_min, op_min)                                              \
  M1(__VA_ARGS__ simd_prefix_inclusive_sum, op_prefix_inclusive_sum)            \
  M1(__VA_ARGS__ simd_prefix_exclusive_sum, op_prefix_exclusive_sum)            \
  M1(__VA_ARGS__ simd_prefix_inclusive_product, op_prefix_inclusive_product)    \
  M1(__VA_ARGS__ simd_prefix_exclusive_product, op_prefix_exclusive_product)    \
  M1(__VA_ARGS__ simd_broadcast_first, op_broadcast_first)                      \
  M1(__VA_ARGS__ quad_sum, op_quad_sum)                                         \
  M2(__VA_ARGS__ simd_shuffle, op_shuffle)                                      \
  M2(__VA_ARGS__ simd_shuffle_xor, op_shuffle_xor)                              \
  M2(__VA_ARGS__ simd_shuffle_up, op_shuffle_up)                                \
  M2(__VA_ARGS__ simd_shuffle_down, op_shuffle_down)                            \
  M2(__VA_ARGS__ simd_shuffle_rotate_up, op_shuffle_rotate_up)                  \
  M2(__VA_ARGS__ simd_shuffle_rotate_down, op_shuffle_rotate_down)              \
  M2(__VA_ARGS__ simd_broadcast, op_broadcast)                                  \
  M2(__VA_ARGS__ quad_shuffle_xor, op_quad_shuffle_xor)                         \
  M2(__VA_ARGS__ quad_broadcast, op_quad_broadcast)
#define MT_SIMD_BITS(T)                \
  MT_SIMD1(T, simd_and, op_and)        \
  MT_SIMD1(T, simd_or, op_or)          \
  MT_SIMD1(T, simd_xor, op_xor)
MT_SIMD_OPS(MT_SIMD1, MT_SIMD2, float,)
MT_SIMD_OPS(MT_SIMD1, MT_SIMD2, half,)
MT_SIMD_OPS(MT_SIMD1, MT_SIMD2, bfloat,)
MT_SIMD_OPS(MT_SIMD1, MT_SIMD2, int,)
MT_SIMD_OPS(MT_SIMD1, MT_SIMD2, uint,)
MT_SIMD_OPS(MT_SIMD1, MT_SIMD2, short,)
MT_SIMD_OPS(MT_SIMD1, MT_SIMD2, ushort,)
MT_SIMD_OPS(MT_SIMD1, MT_SIMD2, char,)
MT_SIMD_OPS(MT_SIMD1, MT_SIMD2, uchar,)
MT_SIMD_OPS(MT_SIMDV1, MT_SIMDV2)
MT_SIMD_BITS(int)
MT_SIMD_BITS(uint)
MT_SIMD_BITS(short)
MT_SIMD_BITS(ushort)
MT_SIMD_BITS(char)
MT_SIMD_BITS(uchar)
MT_SIMDV1(simd_and, op_and)
MT_SIMDV1(simd_or, op_or)
MT_SIMDV1(simd_xor, op_xor)
#undef MT_SIMD_OPS
#undef MT_SIMD_BITS
#undef MT_SIMD1
#undef MT_SIMD2
#undef MT_SIMDV1
#undef MT_SIMDV2

// -- atomics (MSL 6.15): device atomics of outputs (atomic_outputs=True) --------------------------
enum memory_order { memory_order_relaxed = 0, memory_order_seq_cst = 5 };
template <class T>
struct atomic {
  T value;
};
typedef atomic<int> atomic_int;
typedef atomic<uint> atomic_uint;
typedef atomic<float> atomic_float;
typedef atomic<bool> atomic_bool;

}  // namespace metal

namespace mtl {
namespace detail {

// Threads of one launch run one at a time, so each atomic operation is indivisible; the output
// element is marked as atomically written, and a plain write of it by another thread fails.
template <class T>
inline T* atomic_slot(const device_ptr<metal::atomic<T>>& p, const char* what) {
  check_device(p.b, p.off, sizeof(T), alignof(T), p.line, what);
  const int64_t i = p.off / p.b->elem_size;
  if (p.b->writer) {
    int32_t& w = p.b->writer[i];
    if (w > 0) rt::fail(p.line, "%s[%lld] written both plainly and atomically", p.b->name, (long long)i);
    w = rt::kAtomic;
  }
  return reinterpret_cast<T*>(p.b->data + p.off);
}

}  // namespace detail
}  // namespace mtl

namespace metal {

#define MT_ATOMIC_RMW(name, expr)                                                           \
  template <class T, class U>                                                               \
  inline T atomic_##name##_explicit(const mtl::device_ptr<atomic<T>>& p, U operand,         \
                                    memory_order) {                                         \
    T* slot = mtl::detail::atomic_slot(p, "atomic_" #name "_explicit");                     \
    const T old = *slot, v = T(operand);                                                    \
    *slot = (expr);                                                                         \
    return old;                                                                             \
  }
MT_ATOMIC_RMW(fetch_add, T(old + v))
MT_ATOMIC_RMW(fetch_sub, T(old - v))
MT_ATOMIC_RMW(fetch_max, max(old, v))
MT_ATOMIC_RMW(fetch_min, min(old, v))
MT_ATOMIC_RMW(fetch_and, T(old & v))
MT_ATOMIC_RMW(fetch_or, T(old | v))
MT_ATOMIC_RMW(fetch_xor, T(old ^ v))
MT_ATOMIC_RMW(exchange, v)
#undef MT_ATOMIC_RMW

template <class T, class U>
inline void atomic_store_explicit(const mtl::device_ptr<atomic<T>>& p, U v, memory_order) {
  *mtl::detail::atomic_slot(p, "atomic_store_explicit") = T(v);
}
template <class T>
inline T atomic_load_explicit(const mtl::device_ptr<atomic<T>>& p, memory_order) {
  return *mtl::detail::atomic_slot(p, "atomic_load_explicit");
}
template <class T, class U>
inline bool atomic_compare_exchange_weak_explicit(const mtl::device_ptr<atomic<T>>& p, T* expected,
                                                  U desired, memory_order, memory_order) {
  T* slot = mtl::detail::atomic_slot(p, "atomic_compare_exchange_weak_explicit");
  if (*slot == *expected) {
    *slot = T(desired);
    return true;
  }
  *expected = *slot;
  return false;
}

}  // namespace metal
