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
# # 1. Tracing: an unmodified MLX block becomes a graph
#
# `mlxtriton.trace(fn)(*args)` runs nothing new: it records what MLX would compute (through
# `mx.export_function`) as an immutable, typed graph, jaxpr style. Here a Llama-style decoder block
# written in plain `mlx.nn` (`mlxtriton.examples.LlamaBlock`) is traced, printed, drawn, and
# evaluated twice: with MLX (bit-identical to calling the block) and with the JAX oracle.
#
# Runs on any machine with MLX, the CPU included.

# %%
import shutil

import matplotlib.pyplot as plt
import mlx.core as mx
import numpy as np

import mlxtriton
from mlxtriton import examples
from mlxtriton.graph.primitives import get as get_primitive

print(f"mlxtriton {mlxtriton.__version__}, MLX {mx.__version__}, device {mx.default_device()}")

# %% [markdown]
# ## Trace
# The block's parameters become constants of the graph; `functionalize` (at the end) makes them
# inputs instead.

# %%
block = examples.init_eval(examples.LlamaBlock())  # dims 64, 4 heads (2 KV heads), SwiGLU 128
(x,) = examples.example_inputs("llama")  # (batch 2, length 8, dims 64)
graph = mlxtriton.trace(block)(x)
mlxtriton.verify(graph)
print(f"{len(graph.eqns)} equations, {len(graph.constants)} constants, inputs "
      f"{[v.type_str() for v in graph.inputs]}, outputs {[v.type_str() for v in graph.outputs]}")
print(graph.primitive_counts())

# %%
lines = str(graph).splitlines()
print("\n".join(lines[:30] + ["    ..."] + lines[-4:]))

# %% [markdown]
# ## Draw
# Graphviz renders the graph where both the `graphviz` package and its `dot` program are installed;
# otherwise matplotlib draws the same DAG in layers (each equation one level below the deepest
# equation it reads from). Colour marks the primitive's family.

# %%
FAMILY_COLOURS = {"matmul": "#d62728", "reduce": "#1f77b4", "movement": "#c7c7c7", "fast": "#9467bd",
                  "binary": "#2ca02c", "unary": "#98df8a", "ternary": "#bcbd22", "fused": "#ff7f0e",
                  "opaque": "#ffffff"}


def family(eqn) -> str:
    return get_primitive(eqn.primitive).family.value


def to_dot(g) -> str:
    """The graph in Graphviz's DOT language: one node per equation, edges along the data."""
    producer = {v: i for i, e in enumerate(g.eqns) for v in e.outputs}
    out = ["digraph G {", "  rankdir=TB; node [shape=box, style=filled, fontsize=10];"]
    for i, e in enumerate(g.eqns):
        colour = FAMILY_COLOURS.get(family(e), "#ffffff")
        out.append(f'  e{i} [label="{e.primitive}\\n{e.outputs[0].type_str()}", fillcolor="{colour}"];')
        for v in e.inputs:
            if v in producer:
                out.append(f"  e{producer[v]} -> e{i};")
    return "\n".join(out + ["}"])


def draw_layers(g, ax, label: bool = True):
    """Matplotlib fallback: equations left to right by depth (one more than the deepest equation
    they read from), each layer ordered by where its producers sit, edges along the data."""
    producer = {v: i for i, e in enumerate(g.eqns) for v in e.outputs}
    preds = [[producer[v] for v in e.inputs if v in producer] for e in g.eqns]
    depth = []
    for p in preds:  # equations are in topological order
        depth.append(1 + max((depth[i] for i in p), default=-1))
    y = [0.0] * len(g.eqns)
    for d in range(max(depth, default=-1) + 1):
        layer = [i for i in range(len(g.eqns)) if depth[i] == d]
        layer.sort(key=lambda i: (np.mean([y[j] for j in preds[i]]) if preds[i] else i))
        for k, i in enumerate(layer):
            y[i] = k - (len(layer) - 1) / 2
    for i, p in enumerate(preds):
        for j in p:
            ax.plot([depth[j], depth[i]], [y[j], y[i]], color="#999999", lw=0.5, zorder=1)
    for i, e in enumerate(g.eqns):
        ax.scatter(depth[i], y[i], s=60, color=FAMILY_COLOURS.get(family(e), "#ffffff"), edgecolor="k", zorder=2)
        if label:
            ax.annotate(e.primitive, (depth[i], y[i]), fontsize=6, rotation=30, xytext=(3, 3),
                        textcoords="offset points")
    handles = [plt.Line2D([], [], marker="o", ls="", color=c, label=f) for f, c in FAMILY_COLOURS.items()]
    ax.legend(handles=handles, fontsize=7, loc="upper right", ncol=2)
    ax.set_xlabel("depth (data flows left to right)")
    ax.set_yticks([])
    for side in ("top", "right", "left"):
        ax.spines[side].set_visible(False)


dot = to_dot(graph)
print("\n".join(dot.splitlines()[:6]) + "\n  ...")
try:  # graphviz draws in a notebook where its Python package and its `dot` program are installed
    import graphviz
    from IPython.display import display

    have_graphviz = shutil.which("dot") is not None
except ImportError:
    have_graphviz = False

if have_graphviz:
    display(graphviz.Source(dot))
else:
    fig, ax = plt.subplots(figsize=(14, 5))
    draw_layers(graph, ax, label=False)
    ax.set_title(f"LlamaBlock: {len(graph.eqns)} equations (graphviz not installed: matplotlib layers)")
    plt.show()

# %% [markdown]
# After fusion the same block is a much smaller graph: `Fused` regions (orange) are generated
# kernels, matmuls (red) stay MLX's GEMMs.

# %%
fused = mlxtriton.fuse(block, chip="m3").graph(x)
print(fused.primitive_counts())
fig, ax = plt.subplots(figsize=(14, 5))
draw_layers(fused, ax)
ax.set_title(f"after mlxtriton.fuse: {len(fused.eqns)} equations")
plt.show()

# %% [markdown]
# ## Evaluate with MLX, then with the JAX oracle
# `evaluate(graph, x)` replays the graph with MLX ops: the same result bits as calling the block.
# `backend="jax"` evaluates it with JAX, written to MLX's semantics; every pass is tested against it.

# %%
expected = block(x)
got = mlxtriton.evaluate(graph, x)
print("evaluate(graph, x) == block(x) exactly:", mx.array_equal(got, expected).item())

# %%
try:
    oracle = mlxtriton.evaluate(graph, x, backend="jax")
    diff = np.abs(np.asarray(oracle, np.float64) - np.array(expected, np.float64))
    print(f"max |jax - mlx| = {diff.max():.2e} over {diff.size} values")
    fig, ax = plt.subplots(figsize=(6, 3))
    ax.hist(diff.ravel(), bins=40)
    ax.set_xlabel("|JAX oracle - MLX|")
    ax.set_ylabel("values")
    ax.set_title("the oracle agrees to float32 rounding")
    plt.show()
except ImportError:
    print("jax is not installed (pip install 'mlxtriton[test]'): the oracle is skipped")

# %% [markdown]
# ## Parameters as inputs: `functionalize`
# For training, or to swap weights without retracing, make the parameters graph inputs.

# %%
apply, params = mlxtriton.functionalize(block)
g2 = mlxtriton.trace(apply)(params, x)
print(f"{len(g2.inputs)} inputs ({len(g2.inputs) - 1} parameters + x), {len(g2.constants)} constants")
print("same result:", mx.allclose(mlxtriton.evaluate(g2, params, x), expected).item())
