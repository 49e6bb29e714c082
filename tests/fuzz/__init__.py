"""Differential fuzzing of the public API against plain MLX.

`programs` draws random MLX programs as Python source (so every one prints as a standalone
reproduction), `corners` writes one program per op at the corners (special values, empty and
size-1 axes, half types, views, static scalars), `differential` runs a program through every path
(`optimize` per chip, the same with the NumPy interpreter running the generated kernels, `@kernel`,
the JAX oracle) and compares each with plain MLX. tests/test_fuzz.py is the CI profile;
``python -m tests.fuzz`` the long one: thousands of programs, disagreements grouped by class, each
with a reduced reproduction.
"""
