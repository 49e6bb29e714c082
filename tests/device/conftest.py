"""The device suite compares float32 results computed by different groupings of the same matmuls
(``optimize`` against plain mlx-lm, a generated kernel against MLX's): MLX's CUDA backend rounds
float32 matmul inputs to TF32 by default, which moves a small model's logits by ~0.3% between two
groupings. The suite runs in full float32 (``MLX_ENABLE_TF32``, read once per process at its first
matmul) unless the caller sets it."""

import os

os.environ.setdefault("MLX_ENABLE_TF32", "0")
