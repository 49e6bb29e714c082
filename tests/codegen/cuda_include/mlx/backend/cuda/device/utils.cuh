// Stand-in for MLX's mlx/backend/cuda/device/utils.cuh (MLX 0.32) for compile checks: the
// includes and the Shape/Strides types MLX's cuda_kernel wrapper relies on, nothing else.
#pragma once

#include <cuda_bf16.h>
#include <cuda_fp16.h>
#include <cuda/std/array>
#include <cuda/std/limits>
#include <cuda/std/tuple>

#define MAX_NDIM 10

namespace mlx::core::cu {

using Shape = cuda::std::array<int32_t, MAX_NDIM>;
using Strides = cuda::std::array<int64_t, MAX_NDIM>;

}  // namespace mlx::core::cu
