// Stand-in for MLX's mlx/backend/cuda/device/utils.cuh (MLX 0.32), which MLX's cuda_kernel
// wrapper includes first: its includes, the Shape / Strides types the wrapper's shape
// parameters have and the aligned vector its kernels load with; nothing that takes a raw
// address (is_aligned, load_vector) or complex numbers.
#pragma once

#include <cuda_bf16.h>
#include <cuda_fp16.h>
#include <cuda/std/array>
#include <cuda/std/limits>
#include <cuda/std/tuple>

#define MAX_NDIM 10  // mlx/backend/cuda/device/config.h

namespace mlx {
namespace core {
namespace cu {

using Shape = cuda::std::array<int32_t, MAX_NDIM>;
using Strides = cuda::std::array<int64_t, MAX_NDIM>;

template <typename T, int N>
struct alignas(sizeof(T) * N) AlignedVector {
  T val[N];
  T& operator[](int i) { return val[i]; }
  T operator[](int i) const { return val[i]; }
};

}  // namespace cu
}  // namespace core
}  // namespace mlx
