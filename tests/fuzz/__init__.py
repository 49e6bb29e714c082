"""Differential fuzzing of the public API against plain MLX.

`programs` draws random MLX programs as Python source (so every one prints as a standalone
reproduction), `differential` runs one through every path (`optimize` per chip, the same with the
NumPy interpreter running the generated kernels, `@kernel`, the JAX oracle) and compares each
with plain MLX, and ``python -m tests.fuzz`` runs thousands of them and prints the disagreements
grouped by class, each with a reduced reproduction. tests/test_fuzz.py is the CI profile.
"""
