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

#include "emu.h"

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

// -- half (MSL 2.1): every operation on two halves rounds its result to half, as the GPU's
// 16-bit ALU does; with a float operand, the operation is in float (usual arithmetic
// conversions), with an integer one, in half.
struct half {
  uint16_t bits_;
  half() = default;
  half(float f) : bits_(emu::detail::float_to_half_bits(f)) {}
  half(double d) : half(float(d)) {}  // Metal has no double: a literal such as 1.0 is a float
  template <class I, emu::detail::if_int<I> = 0>
  half(I i) : half(float(i)) {}
  operator float() const { return emu::detail::half_bits_to_float(bits_); }
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
  explicit bfloat(float f) : bits_(emu::detail::float_to_bfloat_bits(f)) {}
  explicit bfloat(double d) : bfloat(float(d)) {}
  explicit bfloat(half h) : bfloat(float(h)) {}
  template <class I, emu::detail::if_int<I> = 0>
  explicit bfloat(I i) : bfloat(float(i)) {}
  operator float() const { return emu::detail::bfloat_bits_to_float(bits_); }
};

#define MT_HALF_ARITH(op)                                                                   \
  inline half operator op(half a, half b) { return half(float(a) op float(b)); }            \
  inline float operator op(half a, float b) { return float(a) op b; }                       \
  inline float operator op(float a, half b) { return a op float(b); }                       \
  inline float operator op(half a, double b) { return float(a) op float(b); }               \
  inline float operator op(double a, half b) { return float(a) op float(b); }               \
  template <class I, emu::detail::if_int<I> = 0>                                            \
  inline half operator op(half a, I b) { return half(float(a) op float(half(b))); }         \
  template <class I, emu::detail::if_int<I> = 0>                                            \
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
  template <class I, emu::detail::if_int<I> = 0>                                       \
  inline bool operator op(half a, I b) { return float(a) op float(half(b)); }          \
  template <class I, emu::detail::if_int<I> = 0>                                       \
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

namespace emu {
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
}  // namespace emu

namespace metal {

template <class T, int N>
struct alignas(sizeof(T) * (N == 3 ? 4 : N)) vec : emu::detail::vec_storage<T, N> {
  using value_type = T;
  vec() = default;
  template <class S, emu::detail::if_scalar<S> = 0>
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

// An operator lane by lane, each lane's result an R (the lanes' type, or bool for a comparison),
// of two vectors or of a vector and a scalar broadcast to its lanes.
#define MT_VEC_LANEWISE(op, R)                                                             \
  template <class T, int N>                                                                \
  inline vec<R, N> operator op(const vec<T, N>& a, const vec<T, N>& b) {                   \
    vec<R, N> r;                                                                           \
    for (int i = 0; i < N; ++i) r.v[i] = R(a.v[i] op b.v[i]);                              \
    return r;                                                                              \
  }                                                                                        \
  template <class T, int N, class S, emu::detail::if_scalar<S> = 0>                        \
  inline vec<R, N> operator op(const vec<T, N>& a, S b) {                                  \
    return a op vec<T, N>(b);                                                              \
  }                                                                                        \
  template <class T, int N, class S, emu::detail::if_scalar<S> = 0>                        \
  inline vec<R, N> operator op(S a, const vec<T, N>& b) {                                  \
    return vec<T, N>(a) op b;                                                              \
  }
#define MT_VEC_BINARY(op)                                                                  \
  MT_VEC_LANEWISE(op, T)                                                                   \
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
MT_VEC_LANEWISE(<, bool)
MT_VEC_LANEWISE(<=, bool)
MT_VEC_LANEWISE(>, bool)
MT_VEC_LANEWISE(>=, bool)
MT_VEC_LANEWISE(==, bool)
MT_VEC_LANEWISE(!=, bool)
MT_VEC_LANEWISE(&&, bool)
MT_VEC_LANEWISE(||, bool)
#undef MT_VEC_LANEWISE

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
  return emu::detail::bit_cast<To>(from);
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
template <class T, emu::detail::if_int<T> = 0>
inline T max(T a, T b) { return a < b ? b : a; }
template <class T, emu::detail::if_int<T> = 0>
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
template <class T, emu::detail::if_int<T> = 0>
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

// -- synchronization (MSL 6.9.1) -------------------------------------------------------------------
namespace metal {

enum class mem_flags {
  mem_none = 0, mem_device = 1, mem_threadgroup = 2, mem_texture = 4,
  mem_threadgroup_imageblock = 8, mem_object_data = 16
};
inline constexpr mem_flags operator|(mem_flags a, mem_flags b) { return mem_flags(int(a) | int(b)); }

inline void threadgroup_barrier(mem_flags flags, int line = __builtin_LINE()) {
  emu::rt::barrier(int(flags), line, 0, "threadgroup_barrier");
}
inline void simdgroup_barrier(mem_flags flags, int line = __builtin_LINE()) {
  emu::rt::barrier(int(flags), line, 1, "simdgroup_barrier");
}

}  // namespace metal

// -- SIMD-group functions (MSL 6.9.2) over the emulator's lanes (emu.h) -----------------------
namespace emu {
namespace simd {

// The element types SIMD-group functions take (MSL 6.9.2)
template <class T>
using if_simd = std::enable_if_t<
    std::is_same<T, float>::value || std::is_same<T, half>::value || std::is_same<T, bfloat>::value ||
        std::is_same<T, int>::value || std::is_same<T, uint>::value || std::is_same<T, short>::value ||
        std::is_same<T, ushort>::value || std::is_same<T, char>::value || std::is_same<T, uchar>::value,
    int>;

template <class T, int N>
struct lanes_of<metal::vec<T, N>> {
  using elem = T;
  static constexpr int n = N;
};

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
  gather<T>(l, line, "simd_shuffle", [](int, const rt::Thread* t) { return int(t->arg); });
}
template <class T> void op_shuffle_xor(rt::Thread* const* l, int line) {
  if (uniform_arg(l, line, "simd_shuffle_xor"))
    gather<T>(l, line, "simd_shuffle_xor", [](int lane, const rt::Thread* t) { return lane ^ int(t->arg); });
}
template <class T> void op_shuffle_up(rt::Thread* const* l, int line) {
  if (uniform_arg(l, line, "simd_shuffle_up"))
    gather<T>(l, line, "simd_shuffle_up", [](int lane, const rt::Thread* t) { return lane >= int(t->arg) ? lane - int(t->arg) : lane; });
}
template <class T> void op_shuffle_down(rt::Thread* const* l, int line) {
  if (uniform_arg(l, line, "simd_shuffle_down"))
    gather<T>(l, line, "simd_shuffle_down",
              [](int lane, const rt::Thread* t) { return lane + int(t->arg) < kWidth ? lane + int(t->arg) : lane; });
}
template <class T> void op_shuffle_rotate_up(rt::Thread* const* l, int line) {
  if (uniform_arg(l, line, "simd_shuffle_rotate_up"))
    gather<T>(l, line, "simd_shuffle_rotate_up", [](int lane, const rt::Thread* t) { return (lane - int(t->arg % kWidth) + kWidth) % kWidth; });
}
template <class T> void op_shuffle_rotate_down(rt::Thread* const* l, int line) {
  if (uniform_arg(l, line, "simd_shuffle_rotate_down"))
    gather<T>(l, line, "simd_shuffle_rotate_down", [](int lane, const rt::Thread* t) { return (lane + int(t->arg % kWidth)) % kWidth; });
}
template <class T> void op_broadcast(rt::Thread* const* l, int line) {
  if (uniform_arg(l, line, "simd_broadcast"))
    gather<T>(l, line, "simd_broadcast", [](int, const rt::Thread* t) { return int(t->arg); });
}
template <class T> void op_broadcast_first(rt::Thread* const* l, int line) {
  int first = 0;
  while (first < kWidth && !l[first]) ++first;
  gather<T>(l, line, "simd_broadcast_first", [first](int, const rt::Thread*) { return first; });
}
// quad_*: the same within each group of four lanes
template <class T> void op_quad_shuffle_xor(rt::Thread* const* l, int line) {
  if (uniform_arg(l, line, "quad_shuffle_xor"))
    gather<T>(l, line, "quad_shuffle_xor", [](int lane, const rt::Thread* t) { return (lane & ~3) | ((lane ^ int(t->arg)) & 3); });
}
template <class T> void op_quad_broadcast(rt::Thread* const* l, int line) {
  if (uniform_arg(l, line, "quad_broadcast"))
    gather<T>(l, line, "quad_broadcast", [](int lane, const rt::Thread* t) { return (lane & ~3) | int(t->arg & 3); });
}
template <class T> void op_quad_sum(rt::Thread* const* l, int) {
  for (int q = 0; q < kWidth; q += 4) {
    rt::Thread* sub[kWidth] = {};
    for (int k = 0; k < 4; ++k) sub[k] = l[q + k];
    reduce<T>(sub, add<typename lanes_of<T>::elem>);
  }
}

}  // namespace simd
}  // namespace emu


namespace metal {

struct simd_vote {
  typedef uint64_t vote_t;
  vote_t v;
  explicit constexpr simd_vote(vote_t x = 0) : v(x) {}
  explicit constexpr operator vote_t() const { return v; }
  bool any() const { return v != 0; }
};

inline bool simd_all(bool b, int line = __builtin_LINE()) {
  using namespace emu::simd;
  const uint64_t active = call<uint64_t>(1, 0, op_vote, line, "simd_all");  // which lanes run
  return call<uint64_t>(b, 0, op_vote, line, "simd_all") == active;
}
inline bool simd_any(bool b, int line = __builtin_LINE()) {
  return emu::simd::call<uint64_t>(b, 0, emu::simd::op_vote, line, "simd_any") != 0;
}
inline simd_vote simd_ballot(bool b, int line = __builtin_LINE()) {
  return simd_vote(emu::simd::call<uint64_t>(b, 0, emu::simd::op_vote, line, "simd_ballot"));
}
inline simd_vote simd_active_threads_mask(int line = __builtin_LINE()) {
  return simd_vote(emu::simd::call<uint64_t>(true, 0, emu::simd::op_vote, line, "simd_active_threads_mask"));
}
inline bool simd_is_first(int line = __builtin_LINE()) {
  const uint64_t active = emu::simd::call<uint64_t>(true, 0, emu::simd::op_vote, line, "simd_is_first");
  return (active & ((uint64_t(1) << (emu::rt::current->lid % 32)) - 1)) == 0;
}

// One overload per scalar type the MSL lists (float, half, bfloat, int, uint, short, ushort,
// char, uchar; no 64-bit types), so implicit conversions pick one as on the GPU; each is a
// template only so that its body is instantiated when called. Vectors of those types take
// vector overloads.
#define MT_SIMD1(T, name, op)                                                                   \
  template <class D = void>                                                                     \
  inline T name(T x, int line = __builtin_LINE()) {                                             \
    using U = typename emu::simd::dependent<T, D>::type;                                        \
    return emu::simd::call<U>(x, 0, emu::simd::op<U>, line, #name);                             \
  }
#define MT_SIMD2(T, name, op)                                                                   \
  template <class D = void>                                                                     \
  inline T name(T x, ushort arg, int line = __builtin_LINE()) {                                 \
    using U = typename emu::simd::dependent<T, D>::type;                                        \
    return emu::simd::call<U>(x, arg, emu::simd::op<U>, line, #name);                           \
  }
#define MT_SIMDV1(name, op)                                                                     \
  template <class T, int N, emu::simd::if_simd<T> = 0>                                          \
  inline vec<T, N> name(vec<T, N> x, int line = __builtin_LINE()) {                             \
    return emu::simd::call<vec<T, N>>(x, 0, emu::simd::op<vec<T, N>>, line, #name);             \
  }
#define MT_SIMDV2(name, op)                                                                     \
  template <class T, int N, emu::simd::if_simd<T> = 0>                                          \
  inline vec<T, N> name(vec<T, N> x, ushort arg, int line = __builtin_LINE()) {                 \
    return emu::simd::call<vec<T, N>>(x, arg, emu::simd::op<vec<T, N>>, line, #name);           \
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

namespace emu {
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
}  // namespace emu

namespace metal {

#define MT_ATOMIC_RMW(name, expr)                                                           \
  template <class T, class U>                                                               \
  inline T atomic_##name##_explicit(const emu::device_ptr<atomic<T>>& p, U operand,         \
                                    memory_order) {                                         \
    T* slot = emu::detail::atomic_slot(p, "atomic_" #name "_explicit");                     \
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
inline void atomic_store_explicit(const emu::device_ptr<atomic<T>>& p, U v, memory_order) {
  *emu::detail::atomic_slot(p, "atomic_store_explicit") = T(v);
}
template <class T>
inline T atomic_load_explicit(const emu::device_ptr<atomic<T>>& p, memory_order) {
  return *emu::detail::atomic_slot(p, "atomic_load_explicit");
}
template <class T, class U>
inline bool atomic_compare_exchange_weak_explicit(const emu::device_ptr<atomic<T>>& p, T* expected,
                                                  U desired, memory_order, memory_order) {
  T* slot = emu::detail::atomic_slot(p, "atomic_compare_exchange_weak_explicit");
  if (*slot == *expected) {
    *slot = T(desired);
    return true;
  }
  *expected = *slot;
  return false;
}

}  // namespace metal
