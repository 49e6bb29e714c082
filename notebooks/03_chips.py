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
# # 3. One transformer block, four chips: M1, M3, M4, H200
#
# `mlxtriton.optimize(fn, chip=...)` makes its decisions for the named chip, on any machine:
# kernels are shaped from the chip's profile (`mlxtriton.hw`), and `.explain()` / `.lower()` show
# the result without running anything. This notebook compiles one Llama-style decoder block
# (d 4096, 32 heads / 8 KV heads, SwiGLU 14336, fp16, batch 2, 2048 tokens: the shapes of an 8B
# model) for each chip and shows what changes: which rewrites apply, threads per row, threadgroup
# sizes, elements per thread, and whether a row stays on chip (in registers) between a kernel's
# passes.
#
# Tracing records shapes only, so the block's 218 M parameters are never materialised here.

# %%
import matplotlib.pyplot as plt
import mlx.core as mx
import numpy as np

import mlxtriton
from mlxtriton import examples, hw

CHIPS = ("m1", "m3", "m4", "h200")
DIALECT = {"m1": "metal", "m3": "metal", "m4": "metal", "h200": "cuda"}


def table(headers, rows) -> str:
    cells = [[str(c) for c in r] for r in [headers, *rows]]
    widths = [max(len(r[i]) for r in cells) for i in range(len(headers))]
    lines = ["  ".join(c.ljust(w) for c, w in zip(r, widths)).rstrip() for r in cells]
    return "\n".join([lines[0], "  ".join("-" * w for w in widths), *lines[1:]])


# %% [markdown]
# ## The profiles' figures that shape kernels
# Every figure comes with a source (`python -m mlxtriton chips m3`); `~` marks an estimate. The
# register budget is a tuning rule derived from the profile: Apple9 chips (M3, M4) allocate
# registers at run time (Dynamic Caching), so a thread may hold twice the row data of an M1
# before occupancy suffers; on the H200 it is half a thread's registers at full occupancy.

# %%
rows = []
for key in CHIPS:
    p = hw.profile(key)
    d = hw.derive(p, 4)
    tf = f"{'~' if p.fp32_tflops_estimated else ''}{p.fp32_tflops}"
    rows.append([p.name, p.family, p.simd_width, p.max_threads_per_threadgroup,
                 f"{p.threadgroup_memory_bytes // 1024}K" + (f"/{p.threadgroup_memory_max_bytes // 1024}K"
                                                               if p.threadgroup_memory_max_bytes != p.threadgroup_memory_bytes else ""),
                 hw.params.register_bytes_per_thread(p), bool(p.dynamic_caching), d.short_row_limit,
                 p.peak_bandwidth_gbs, tf])
print(table(["chip", "family", "SIMD", "threads/tg", "tg memory", "row B/thread", "dyn. caching",
             "short rows <=", "GB/s", "FP32 TF"], rows))

# %% [markdown]
# ## The block, optimized for each chip
# `mlxtriton.optimize` runs patterns -> fuse -> layout -> cache. The pattern stage first rewrites
# decomposed model code into the best MLX already has: the RMSNorms, RoPE and the attention become
# `mx.fast` ops, `x @ W + r` an `addmm`; fusion then puts what is left (the SwiGLU gate) in a
# generated kernel.

# %%
cfg = examples.LlamaConfig(dims=4096, n_heads=32, n_kv_heads=8, hidden_dims=14336)
block = examples.LlamaBlock(cfg)
block.set_dtype(mx.float16)
x = mx.random.normal((2, 2048, 4096)).astype(mx.float16)

optimized = {c: mlxtriton.optimize(block, chip=c).trace(x).explain(DIALECT[c]) for c in CHIPS}
rewrites = {c: next(s.lines for s in optimized[c].stages if s.stage == "patterns") for c in CHIPS}
groups: dict[tuple, list[str]] = {}  # chips whose pattern stage decided alike
for c in CHIPS:
    groups.setdefault(tuple(rewrites[c]), []).append(hw.profile(c).name)
for lines, chips in groups.items():
    print(f"-- {', '.join(chips)}:")
    print("\n".join("   " + line for line in lines))
print("\nthe pattern stage decided " + ("the same on all four chips" if len(groups) == 1 else
      "; ".join(f"alike on {', '.join(chips)}" if len(chips) > 1 else f"its own way on {chips[0]}"
                for chips in groups.values())))
counts = {c: optimized[c].graph.primitive_counts() for c in CHIPS}
print(table(["primitive", *[hw.profile(c).name for c in CHIPS]],
            [[p, *[counts[c].get(p, 0) for c in CHIPS]] for p in sorted(set().union(*counts.values()))]))

# %% [markdown]
# ## The generated kernels, chip by chip
# To see what a chip changes in generated code, compile the block without the pattern stage
# (`mlxtriton.cache(mlxtriton.layout(block))`: fuse -> layout -> cache): the norms, RoPE, the
# attention softmax and the SwiGLU gate all become generated kernels, matmuls stay MLX's GEMMs.
# The table shows each kernel's launch shape per chip.

# %%
explained = {c: mlxtriton.cache(mlxtriton.layout(block), chip=c).trace(x).explain(DIALECT[c]) for c in CHIPS}
first = explained[CHIPS[0]]
print(f"traced {len(first.source.eqns)} equations -> {len(first.graph.eqns)} after the passes, "
      f"{len(first.kernels)} generated kernels per chip\n")


def cell(k) -> str:
    s = k.kernel.arg
    if s.kind == "pointwise":
        return f"tg {s.threadgroup_size}, {s.vector_width}/thread"
    on_chip = {"registers": "regs", "stream": "stream", "none": "-"}[s.on_chip]
    return f"{s.threads_per_row} thr/row x{s.rows_per_group}, {s.elements_per_thread}/thr, {on_chip}"


kernel_rows = []
for i, k in enumerate(first.kernels):
    s = k.kernel.arg
    shape = f"{s.rows}x{s.row_length}" if s.kind == "row" else f"{s.elements} elements"
    kernel_rows.append([f"{s.kind} {shape}", *[cell(explained[c].kernels[i]) for c in CHIPS]])
print(table(["kernel", *[hw.profile(c).name for c in CHIPS]], kernel_rows))

# %% [markdown]
# What the cache pass decided and why, per chip (from `.explain()`):

# %%
for c in CHIPS:
    lines = next(s.lines for s in explained[c].stages if s.stage == "cache")
    print(f"{hw.profile(c).name}:")
    print("\n".join("   " + line for line in lines if not line.endswith("nothing to keep)")))

# %% [markdown]
# In this block every row fits on chip on every chip, so the cache decision is the same; the launch
# shapes are not. M1 spreads a 4096-wide row over twice as many threads as M3 (half the register
# budget per thread), the H200 over four times as many. Float32 pointwise kernels (the RoPE tables) give each
# thread 16 bytes on the H200 and 8 on Apple chips, as MLX's own kernels do; float16 ones get one
# 4-wide vector everywhere. M3 and M4 get identical kernels: both are Apple9 (the same feature
# set, Dynamic Caching, the same limits), and the rules read only the figures that decide a
# kernel's shape. M4's higher bandwidth changes how long the kernels take, not their shape.

# %% [markdown]
# ## Where the row stops fitting on chip
# A softmax reads its row twice (max and sum, then the normalised write). If the row fits the
# chip's on-chip budget it is read from memory once and kept in registers; if not, it is streamed:
# one more read of the row. The sweep below lowers `mx.softmax` over float32 rows of growing
# length for each chip and records the decision (`.lower()`, no device needed).

# %%
lengths = [2**k for k in range(9, 18)]  # 512 .. 131072
sweep = {c: [] for c in CHIPS}
softmax = {c: mlxtriton.cache(lambda a: mx.softmax(a, axis=-1), chip=c) for c in CHIPS}
for n in lengths:
    xs = mx.zeros((256, n))  # rows enough for every chip: no reduction is split in two levels
    for c in CHIPS:
        s = softmax[c].trace(xs).lower(DIALECT[c])[0].kernel.arg
        reads = 1 if s.on_chip == "registers" else s.passes
        sweep[c].append({"n": n, "threads": s.threads_per_row, "tg": s.threadgroup_size,
                         "on_chip": s.on_chip, "bytes_per_element": 4 * (reads + 1)})

print(table(["row length", *[hw.profile(c).name for c in CHIPS]],
            [[n, *[f"{sweep[c][i]['threads']} thr, {sweep[c][i]['on_chip']}" for c in CHIPS]]
             for i, n in enumerate(lengths)]))

# %%
fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(12, 4))
styles = {"m1": ("#1f77b4", "o"), "m3": ("#2ca02c", "s"), "m4": ("#98df8a", "^"), "h200": ("#d62728", "D")}
for i, c in enumerate(CHIPS):
    colour, marker = styles[c]
    xs = np.array(lengths) * (1 + 0.04 * (i - 1.5))  # a small offset so identical lines stay visible
    ax1.plot(xs, [r["threads"] for r in sweep[c]], marker=marker, color=colour, label=hw.profile(c).name)
    ax2.plot(xs, [r["bytes_per_element"] for r in sweep[c]], marker=marker, color=colour, label=hw.profile(c).name)
for ax in (ax1, ax2):
    ax.set_xscale("log", base=2)
    ax.set_xlabel("row length (float32 elements)")
    ax.legend()
    ax.grid(alpha=0.3)
ax1.set_yscale("log", base=2)
ax1.set_ylabel("threads per row")
ax1.set_title("threads that share one row")
ax2.set_ylabel("DRAM bytes per element (model)")
ax2.set_ylim(0, 16)
ax2.set_title("softmax traffic: 8 B resident in registers, 12 B streamed")
fig.tight_layout()
plt.show()

# %% [markdown]
# The step in the right panel is the cache decision. The M1 (64 B of row data per thread, at most
# 1024 threads: 16384 float32) streams rows of 32768 and more; M3 and M4 (128 B per thread) and the
# H200 (which gives a row 1024 threads where 512 threads' registers do not hold it) keep rows of
# 32768 in registers; every chip streams rows of 65536 and more. Streaming costs one extra read of
# the row: 1.5x the memory traffic of a bandwidth-bound kernel.
