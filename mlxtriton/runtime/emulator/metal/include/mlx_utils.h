// Stand-in for MLX's Metal utilities header (metal::utils(), which MLX prepends to every custom
// kernel: mlx/backend/metal/kernels/utils.h with bf16.h, bf16_math.h, defines.h): the parts a
// custom kernel can rely on, as MLX defines them. complex64_t is not emulated.
#pragma once
#include <metal_stdlib>

using namespace metal;

typedef bfloat bfloat16_t;
typedef half float16_t;

inline uint16_t bfloat16_to_uint16(const bfloat16_t x) { return as_type<uint16_t>(x); }
inline bfloat16_t uint16_to_bfloat16(const uint16_t x) { return as_type<bfloat16_t>(x); }

#define MLX_MTL_PRAGMA_UNROLL _Pragma("clang loop unroll(full)")

template <typename U>
struct WorkPerThread {
  static_assert(sizeof(U) <= 8, "Type too large");
  static constexpr int n = 8 / sizeof(U);
};

template <typename U>
struct Limits;
#define MT_INT_LIMIT(T)                                                    \
  template <>                                                              \
  struct Limits<T> {                                                       \
    static constexpr T max = metal::numeric_limits<T>::max();              \
    static constexpr T min = metal::numeric_limits<T>::min();              \
    static constexpr T finite_max = metal::numeric_limits<T>::max();       \
    static constexpr T finite_min = metal::numeric_limits<T>::min();       \
  };
MT_INT_LIMIT(uint8_t)
MT_INT_LIMIT(uint16_t)
MT_INT_LIMIT(uint32_t)
MT_INT_LIMIT(uint64_t)
MT_INT_LIMIT(int8_t)
MT_INT_LIMIT(int16_t)
MT_INT_LIMIT(int32_t)
MT_INT_LIMIT(int64_t)
#undef MT_INT_LIMIT
template <>
struct Limits<float> {
  static constexpr float max = __builtin_inff();
  static constexpr float min = -__builtin_inff();
  static constexpr float finite_max = __FLT_MAX__;
  static constexpr float finite_min = -__FLT_MAX__;
};
#define MT_HALF_LIMIT(T)                                                     \
  template <>                                                                \
  struct Limits<T> {                                                         \
    static inline const T max = metal::numeric_limits<T>::infinity();        \
    static inline const T min = -metal::numeric_limits<T>::infinity();       \
    static inline const T finite_max = metal::numeric_limits<T>::max();      \
    static inline const T finite_min = metal::numeric_limits<T>::lowest();   \
  };
MT_HALF_LIMIT(half)
#undef MT_HALF_LIMIT
template <>
struct Limits<bfloat> {
  static inline const bfloat max = metal::numeric_limits<bfloat>::infinity();
  static inline const bfloat min = bfloat(-__builtin_inff());
  static inline const bfloat finite_max = metal::numeric_limits<bfloat>::max();
  static inline const bfloat finite_min = metal::numeric_limits<bfloat>::lowest();
};
template <>
struct Limits<bool> {
  static constexpr bool max = true;
  static constexpr bool min = false;
};

template <typename IdxT = int64_t>
inline IdxT elem_to_loc(IdxT elem, ::emu::device_ptr<const int> shape,
                        ::emu::device_ptr<const int64_t> strides, int ndim) {
  IdxT loc = 0;
  for (int i = ndim - 1; i >= 0 && elem > 0; --i) {
    loc += (elem % shape[i]) * IdxT(strides[i]);
    elem /= shape[i];
  }
  return loc;
}

template <typename T, typename U>
inline T ceildiv(T N, U M) {
  return (N + M - 1) / M;
}

// https://docs.oracle.com/cd/E19957-01/806-3568/ncg_goldberg.html#1202
inline float log1p(float x) {
  float xp1 = 1.0f + x;
  if (xp1 == Limits<float>::max) return Limits<float>::max;
  if (xp1 == 1.0f) return x;
  return x * (metal::log(xp1) / (xp1 - 1.0f));
}

// 64-bit and bool values shuffle as MLX does: through 32-bit lanes
#define MT_SHUFFLE64(name)                                                                  \
  inline uint64_t name(uint64_t data, uint16_t arg, int line = __builtin_LINE()) {         \
    return as_type<uint64_t>(metal::name(as_type<uint2>(data), arg, line));                 \
  }                                                                                         \
  inline int64_t name(int64_t data, uint16_t arg, int line = __builtin_LINE()) {           \
    return as_type<int64_t>(metal::name(as_type<uint2>(data), arg, line));                  \
  }                                                                                         \
  inline bool name(bool data, uint16_t arg, int line = __builtin_LINE()) {                 \
    return metal::name(static_cast<uint32_t>(data), arg, line);                             \
  }
MT_SHUFFLE64(simd_shuffle_down)
MT_SHUFFLE64(simd_shuffle_up)
MT_SHUFFLE64(simd_shuffle)
#undef MT_SHUFFLE64

template <typename U, typename T>
inline U cast_to(T val) {
  return static_cast<U>(val);
}
