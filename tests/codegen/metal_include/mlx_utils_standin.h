// Stand-in for MLX's Metal utilities header (metal::utils(), prepended to every custom kernel).
// The wrapper MLX writes needs only the type names it uses in signatures; mlxtriton's kernels use
// nothing else from it (they include <metal_stdlib> themselves). Deliberately no
// `using namespace metal`: generated code must qualify the standard library.
#pragma once
#include <metal_stdlib>
typedef half float16_t;
typedef bfloat bfloat16_t;
