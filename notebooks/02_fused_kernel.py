# ---
# jupyter:
#   jupytext:
#     formats: ipynb,py:percent
#     text_representation:
#       extension: .py
#       format_name: percent
#       format_version: '1.3'
#   kernelspec:
#     display_name: Python 3
#     language: python
#     name: python3
# ---

# %% [markdown]
# # 2. Writing a fused kernel with `@mlxtriton.kernel`
#
# `@mlxtriton.kernel` turns a plain MLX function into exactly one generated kernel, or fails and
# says why. The same kernel IR renders as Metal (for `mx.fast.metal_kernel`) and as CUDA (for
# `mx.fast.cuda_kernel`), and a NumPy interpreter runs it anywhere: the definition of what the
# kernel computes. On a machine without a GPU (CI), `.lower()` still renders both dialects and the
# interpreter still runs them.
#
# The example is an RMS norm whose output is gated by SiLU of a second input, a block in many
# recent models: MLX runs it as `mx.fast.rms_norm` plus three elementwise kernels.

# %%
import os

import matplotlib.pyplot as plt
import mlx.core as mx
import mlx.nn as nn
import numpy as np

import mlxtriton
from mlxtriton.codegen import interpret, print_kernel


@mlxtriton.kernel
def rms_norm_gate(x, w, g):
    return mx.fast.rms_norm(x, w, 1e-5) * nn.silu(g)


x = mx.random.normal((8, 1024), key=mx.random.key(0))
w = mx.random.normal((1024,), key=mx.random.key(1))
g = mx.random.normal((8, 1024), key=mx.random.key(2))
reference = rms_norm_gate.__wrapped__(x, w, g)  # the plain MLX function
print("same result as the plain function:", mx.allclose(rms_norm_gate(x, w, g), reference, atol=1e-5).item())

# %% [markdown]
# ## What the passes decided
# One region (a row kernel: a reduction over each row, then elementwise work on the row), kept in
# registers between its two passes.

# %%
print(rms_norm_gate.trace(x, w, g).explain("metal"))

# %% [markdown]
# ## Metal and CUDA, side by side
# `.trace(*args).lower(target)` returns exactly what the runtime hands to `mx.fast.metal_kernel` /
# `mx.fast.cuda_kernel`: the kernel body (MLX writes the signature), a header, the grid and the
# threadgroup. The two differ only where the dialect table says so: thread indices, SIMD/warp
# reductions, barriers, vector types. The launch shapes differ because the default chip of each
# dialect (an M3 for Metal, the H200 for CUDA) has its own register budget.

# %%
metal = rms_norm_gate.trace(x, w, g).lower("metal")[0]
cuda = rms_norm_gate.trace(x, w, g).lower("cuda")[0]


def side_by_side(left: str, right: str, width: int = 72, titles=("Metal", "CUDA")) -> str:
    def clip(s):
        return s if len(s) <= width else s[: width - 1] + "~"

    a, b = left.splitlines(), right.splitlines()
    rows = [f"{titles[0]:<{width}} | {titles[1]}", "-" * width + "-+-" + "-" * width]
    for i in range(max(len(a), len(b))):
        rows.append(f"{clip(a[i] if i < len(a) else ''):<{width}} | {clip(b[i] if i < len(b) else '')}")
    return "\n".join(rows)


for k in (metal, cuda):
    print(f"{k.target}: {k.name}, grid {k.grid}, threadgroup {k.threadgroup}, "
          f"{len(k.source.splitlines())} lines of body")
print()
print(side_by_side(metal.source, cuda.source))

# %% [markdown]
# ## The kernel IR
# Both sources are renderings of one small, hash-consed IR: loads, an expression DAG, one
# reduction, stores, and a schedule (the first line) saying how the index space maps onto threads.

# %%
print(print_kernel(metal.kernel))

# %% [markdown]
# The schedule's thread layout, drawn: lane `t` of a row owns vector `c` starting at element
# `(c * threads_per_row + t) * vector_width`, so at every step neighbouring lanes read neighbouring
# 16-byte vectors (coalesced).

# %%
fig, axes = plt.subplots(2, 1, figsize=(12, 3))
for ax, k in zip(axes, (metal, cuda)):
    s = k.kernel.arg
    elements = np.arange(s.row_length)
    lane = (elements // s.vector_width) % s.threads_per_row
    ax.imshow(lane[None, :], aspect="auto", cmap="viridis", interpolation="nearest")
    ax.set_yticks([])
    ax.set_title(f"{k.target}: {s.threads_per_row} threads/row x {s.chunks} vectors of {s.vector_width} "
                 f"(colour: the lane that owns each element of a {s.row_length}-element row)", fontsize=9)
axes[-1].set_xlabel("element of the row")
fig.tight_layout()
plt.show()

# %% [markdown]
# ## The interpreter's result
# `mlxtriton.codegen.interpret` runs the kernel IR with NumPy, checking on the way that every
# access the schedule calls contiguous really is. Setting `MLXTRITON_INTERPRET=1` makes every
# kernel launch of a compiled function run through it instead (Triton's `TRITON_INTERPRET=1`).

# %%
(out,) = interpret(metal.kernel, [np.array(x), np.array(w), np.array(g)])
error = np.abs(out - np.array(reference))
print(f"interpreter vs MLX: max abs error {error.max():.2e}, output {out.dtype}{list(out.shape)}")

os.environ["MLXTRITON_INTERPRET"] = "1"
try:
    interpreted = mlxtriton.kernel(rms_norm_gate.__wrapped__)  # a fresh function: built with the flag set
    launched = interpreted(x, w, g)
finally:
    del os.environ["MLXTRITON_INTERPRET"]
print("MLXTRITON_INTERPRET=1 launch matches MLX:", mx.allclose(launched, reference, atol=1e-5).item())

fig, ax = plt.subplots(figsize=(6, 3))
ax.hist(error.ravel(), bins=40)
ax.set_xlabel("|interpreter - MLX|")
ax.set_ylabel("elements")
ax.set_title("the kernel IR computes the function (float32 rounding)")
plt.show()

# %% [markdown]
# ## When a function cannot be one kernel
# A softmax over rows followed by a sum over columns needs two kernels (the second reduction runs
# over a different index space); `@mlxtriton.kernel` says so instead of silently running two.

# %%
@mlxtriton.kernel
def softmax_then_column_sum(x):
    return mx.sum(mx.softmax(x, axis=-1), axis=0)


try:
    softmax_then_column_sum.lower(x)
except mlxtriton.SingleKernelError as e:
    print("SingleKernelError:", e)
