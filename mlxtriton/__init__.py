"""mlxtriton: trace MLX functions into a typed graph IR and run them as fused generated kernels."""
