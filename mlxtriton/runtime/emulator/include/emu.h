// What both front ends' kernel-side headers share (metal/include/mtl_emu.h, cuda/include/
// cuda_emu.h): IEEE half and bfloat16 conversions, checked memory (device buffers for bounds,
// alignment and who wrote each output element; threadgroup / shared memory for reads of
// unwritten elements and races between barriers) and the lane exchange that SIMD-group and warp
// operations go through (runtime.cpp schedules the threads). Messages name memory, groups and
// barriers in the front end's words (`rt::words`).
#pragma once
#include <stddef.h>
#include <stdint.h>

#include <type_traits>

#include "emu_rt.h"

namespace emu {
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
}  // namespace emu

// -- checked memory ------------------------------------------------------------------------------
namespace emu {

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

// What a checked reference `R` to a T does, given its load() and store(): it reads as a T (or
// explicitly as any other type), and assignment and +=, -=, *=, /= store a T.
#define EMU_REF_OPERATORS(R)                                                        \
  operator T() const { return load(); }                                             \
  template <class U, std::enable_if_t<!std::is_same<U, T>::value, int> = 0>         \
  explicit operator U() const { return static_cast<U>(load()); }                    \
  const R& operator=(const T& t) const { store(t); return *this; }                  \
  const R& operator=(const R& o) const { store(o.load()); return *this; }           \
  template <class U>                                                                \
  const R& operator+=(const U& u) const { store(T(load() + u)); return *this; }     \
  template <class U>                                                                \
  const R& operator-=(const U& u) const { store(T(load() - u)); return *this; }     \
  template <class U>                                                                \
  const R& operator*=(const U& u) const { store(T(load() * u)); return *this; }     \
  template <class U>                                                                \
  const R& operator/=(const U& u) const { store(T(load() / u)); return *this; }

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
  EMU_REF_OPERATORS(device_ref)
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
  static_assert(!std::is_const<T>::value || std::is_const<std::remove_pointer_t<P>>::value,
                "reinterpret_cast cannot cast away const");
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

// ``unit`` prefixes the index in messages ("byte " where memory is addressed by bytes).
inline void on_tg_read(rt::Shadow& s, const char* name, int64_t i, int line, const char* unit = "") {
  const rt::Thread* t = rt::current;
  if (s.writer == -1)
    rt::fail(line, "read of %s %s[%s%lld] before any thread wrote it", rt::words->memory, name,
             unit, (long long)i);
  if (s.writer != int16_t(t->lid) && !ordered(s, true, s.writer))
    rt::fail(line, "race on %s %s[%s%lld]: thread %d reads what thread %d wrote with no barrier "
             "between", rt::words->memory, name, unit, (long long)i, int(t->lid), int(s.writer));
  if (s.rphase != rt::group->phase || s.reader == -1) {
    s.reader = int16_t(t->lid);
    s.rphase = rt::group->phase;
    s.rsimd = uint16_t(rt::group->simd_phase[t->simd]);
  } else if (s.reader != int16_t(t->lid)) {
    s.reader = -2;
  }
}

inline void on_tg_write(rt::Shadow& s, const char* name, int64_t i, int line, const char* unit = "") {
  const rt::Thread* t = rt::current;
  if (s.writer >= 0 && s.writer != int16_t(t->lid) && !ordered(s, true, s.writer))
    rt::fail(line, "race on %s %s[%s%lld]: threads %d and %d write it with no barrier between",
             rt::words->memory, name, unit, (long long)i, int(s.writer), int(t->lid));
  if (s.reader != -1 && s.reader != int16_t(t->lid) && !ordered(s, false, s.reader))
    rt::fail(line, "race on %s %s[%s%lld]: thread %d overwrites what %s read with no barrier "
             "between", rt::words->memory, name, unit, (long long)i, int(t->lid),
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
  EMU_REF_OPERATORS(tg_ref)
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
      rt::fail(line, "out-of-bounds access of %s %s[%lld]: it holds %lld elements",
               rt::words->memory, name, (long long)i, (long long)N);
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

// Shared memory reached through a pointer (CUDA's `extern __shared__` area and pointers into
// it, as the translator writes them): addressed by bytes and shadowed per byte, so an access of
// any type is checked for bounds, alignment, unwritten bytes and races.
template <class T>
struct shared_ptr;

namespace detail {

inline void check_shared(const char* name, int64_t bytes, int64_t off, size_t size, size_t align,
                         int line, const char* what) {
  if (off < 0 || off + int64_t(size) > bytes)
    rt::fail(line, "out-of-bounds %s of %s %s: %lld bytes at byte %lld of its %lld bytes", what,
             rt::words->memory, name, (long long)size, (long long)off, (long long)bytes);
  if (off % int64_t(align) != 0)
    rt::fail(line, "misaligned %s of %s %s: %lld bytes at byte offset %lld need %lld-byte alignment",
             what, rt::words->memory, name, (long long)size, (long long)off, (long long)align);
}

template <class T>
struct shared_ref {
  char* base;
  rt::Shadow* shadow;
  const char* name;
  int64_t bytes, off;
  int line;
  T load() const {
    check_shared(name, bytes, off, sizeof(T), alignof(T), line, "read");
    for (size_t k = 0; k < sizeof(T); ++k) on_tg_read(shadow[off + k], name, off + k, line, "byte ");
    T t;
    __builtin_memcpy(static_cast<void*>(&t), base + off, sizeof(T));
    return t;
  }
  void store(const T& t) const {
    check_shared(name, bytes, off, sizeof(T), alignof(T), line, "write");
    for (size_t k = 0; k < sizeof(T); ++k) on_tg_write(shadow[off + k], name, off + k, line, "byte ");
    __builtin_memcpy(base + off, &t, sizeof(T));
  }
  EMU_REF_OPERATORS(shared_ref)
};
#undef EMU_REF_OPERATORS

}  // namespace detail

template <class T>
struct shared_ptr {
  char* base;
  rt::Shadow* shadow;
  const char* name;
  int64_t bytes;  // of the whole area
  int64_t off;    // bytes from its start
  int line;
  template <class U, std::enable_if_t<std::is_same<const U, T>::value && !std::is_same<U, T>::value, int> = 0>
  shared_ptr(const shared_ptr<U>& o)
      : base(o.base), shadow(o.shadow), name(o.name), bytes(o.bytes), off(o.off), line(o.line) {}
  shared_ptr(char* b, rt::Shadow* s, const char* n, int64_t size, int64_t o, int at)
      : base(b), shadow(s), name(n), bytes(size), off(o), line(at) {}
  shared_ptr operator()(int at) const { return shared_ptr(base, shadow, name, bytes, off, at); }
  shared_ptr operator+(int64_t i) const {
    return shared_ptr(base, shadow, name, bytes, off + i * int64_t(sizeof(T)), line);
  }
  shared_ptr operator-(int64_t i) const { return *this + (-i); }
  shared_ptr& operator+=(int64_t i) { off += i * int64_t(sizeof(T)); return *this; }
  shared_ptr& operator-=(int64_t i) { off -= i * int64_t(sizeof(T)); return *this; }

  template <class U = T, std::enable_if_t<std::is_const<U>::value, int> = 0>
  std::remove_const_t<T> at(int64_t o) const {
    return detail::shared_ref<std::remove_const_t<T>>{base, shadow, name, bytes, o, line}.load();
  }
  template <class U = T, std::enable_if_t<!std::is_const<U>::value, int> = 0>
  detail::shared_ref<T> at(int64_t o) const { return detail::shared_ref<T>{base, shadow, name, bytes, o, line}; }
  decltype(auto) operator[](int64_t i) const { return at(off + i * int64_t(sizeof(T))); }
  decltype(auto) operator*() const { return at(off); }
};

template <int Line, class P, class T>
inline shared_ptr<std::remove_pointer_t<P>> reinterpret_at(const shared_ptr<T>& p) {
  static_assert(std::is_pointer<P>::value, "reinterpret_cast of a shared-memory pointer to a non-pointer");
  static_assert(!std::is_const<T>::value || std::is_const<std::remove_pointer_t<P>>::value,
                "reinterpret_cast cannot cast away const");
  return shared_ptr<std::remove_pointer_t<P>>(p.base, p.shadow, p.name, p.bytes, p.off, Line);
}

// `extern __shared__ T name[];` as the translator writes it: the launch's dynamic shared memory.
template <class T>
inline shared_ptr<T> dynamic_shared(int line, const char* name) {
  static_assert(std::is_trivially_copyable<T>::value, "shared memory of plain types only");
  size_t bytes;
  rt::Shadow* shadow;
  char* base = rt::dynamic_alloc(line, name, &bytes, &shadow);
  return shared_ptr<T>(base, shadow, name, int64_t(bytes), 0, line);
}

}  // namespace emu

// -- lane exchange: SIMD-group / warp operations run by the scheduler (runtime.cpp) -------------
namespace emu {
namespace simd {

constexpr int kWidth = 32;

template <class T, class D>
struct dependent {
  using type = T;
};
template <class T>
struct lanes_of {
  using elem = T;
  static constexpr int n = 1;
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

// Every lane l reads the value of lane source(l, its thread) (its own lane keeps its value);
// reading a lane that does not exist or has returned is undefined on the GPU and an error here.
template <class T, class S>
inline void gather(rt::Thread* const* lanes, int line, const char* what, S source) {
  T got[kWidth];
  for (int l = 0; l < kWidth; ++l) {
    if (!lanes[l]) continue;
    const int src = source(l, lanes[l]);
    if (src < 0 || src >= kWidth || !lanes[src]) {
      if (src < 0 || src >= kWidth)
        rt::report(line, "%s: lane %d reads lane %d, which is outside the %s", what, l, src,
                   rt::words->simd);
      else
        rt::report(line, "%s: lane %d reads lane %d, which is inactive (past the %s's end, or %s)",
                   what, l, src, rt::words->group, rt::words->exited);
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

inline void op_vote(rt::Thread* const* l, int) {
  uint64_t bits = 0;
  for (int lane = 0; lane < kWidth; ++lane)
    if (l[lane] && in<bool>(l[lane])) bits |= uint64_t(1) << lane;
  for (int lane = 0; lane < kWidth; ++lane)
    if (l[lane]) out(l[lane], bits);
}

}  // namespace simd
}  // namespace emu