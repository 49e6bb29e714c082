"""Graph layer: attention at decode as one region (``Fused`` of kind "attention"): the query
rows of a short query against a key / value cache under a boolean mask, one generated kernel
(`mlxtriton.codegen.attention`) where the backend's SDPA has no fused kernel for an array mask;
the patterns stage builds it, codegen renders it. May import the graph layer.
"""

from __future__ import annotations

from dataclasses import dataclass

from mlxtriton.graph.core import Graph, Var
from mlxtriton.graph.fused import fused_eqn
from mlxtriton.graph.transforms import make_eqn

KIND = "attention"

# The kernel's lanes: each of a query row's 32 SIMD groups (warps) reads every 32nd key, and its
# 32 lanes split the head dimension, as MLX's own sdpa_vector does
# (mlx/backend/cuda/scaled_dot_product_attention.cu, kernel_sdpav_1pass).
LANES = 32
FLOATS = ("float32", "float16", "bfloat16")


@dataclass(frozen=True)
class DecodeAttention:
    """What one attention kernel computes: ``softmax(scale * q @ k^T, where mask) @ v`` for q
    [batch, heads, queries, head_dim], k [batch, kv_heads, keys, head_dim], v [batch, kv_heads,
    keys, value_dim] and a boolean mask broadcast to [batch, heads, queries, keys] from an array of
    ``mask_shape`` (right-aligned, as NumPy broadcasts)."""

    batch: int
    heads: int
    kv_heads: int
    queries: int
    keys: int
    head_dim: int
    value_dim: int
    dtype: str
    scale: float
    mask_shape: tuple[int, ...]

    @property
    def mask_strides(self) -> tuple[int, int, int, int]:
        """Element strides of the mask array over [batch, heads, queries, keys]: 0 along an axis
        it broadcasts."""
        shape = (1,) * (4 - len(self.mask_shape)) + self.mask_shape
        strides, step = [], 1
        for n in reversed(shape):
            strides.append(step if n > 1 else 0)
            step *= n
        return tuple(reversed(strides))


def decode_attention(q: Var, k: Var, v: Var, mask: Var, scale: float) -> DecodeAttention | str:
    """The kernel's description of ``ScaledDotProductAttention(q, k, v, mask)`` with ``mask`` the
    array it broadcasts from, or why the kernel does not compute it."""
    if q.ndim != 4 or k.ndim != 4 or v.ndim != 4:
        return "q, k and v are not 4-d"
    b, heads, queries, d = q.shape
    kv_heads, keys, dv = k.shape[1], k.shape[2], v.shape[3]
    if q.dtype not in FLOATS or not q.dtype == k.dtype == v.dtype:
        return f"q, k, v of {q.dtype}, {k.dtype}, {v.dtype}"
    if mask.dtype != "bool":
        return f"an additive mask ({mask.dtype}): the kernel reads boolean masks"
    if k.shape[0] != b or v.shape[:3] != (b, kv_heads, keys) or kv_heads == 0 or heads % kv_heads:
        return f"k {list(k.shape)} and v {list(v.shape)} do not match q {list(q.shape)}"
    if d % LANES or dv % LANES or not d or not dv:
        return f"head dims {d} and {dv}: the kernel's {LANES} lanes split them evenly"
    if 0 in q.shape or keys == 0:
        return "an empty array"
    full = (b, heads, queries, keys)
    if mask.ndim > 4 or any(n not in (1, m) for n, m in zip(reversed(mask.shape), reversed(full))):
        return f"a mask {list(mask.shape)} that does not broadcast to {list(full)}"
    return DecodeAttention(b, heads, kv_heads, queries, keys, d, dv, q.dtype, float(scale),
                           tuple(mask.shape))


def attention_region(q: Var, k: Var, v: Var, mask: Var, sdpa_mask: Var, out: Var, scale: float):
    """The Fused equation of kind "attention" computing ``out = ScaledDotProductAttention(q, k, v,
    sdpa_mask)`` with ``sdpa_mask`` ``mask`` broadcast (or ``mask`` itself): the kernel reads
    ``mask`` in place. Its body is that SDPA, which is how the region runs as MLX ops."""
    inner = [Var(x.shape, x.dtype) for x in (q, k, v, mask)]
    eqns = []
    shown = inner[3]
    if sdpa_mask.shape != mask.shape:
        eqns.append(make_eqn("Broadcast", [shown], {"shape": sdpa_mask.shape}))
        shown = eqns[-1].outputs[0]
    eqns.append(make_eqn("ScaledDotProductAttention", [*inner[:3], shown],
                         {"scale": float(scale), "do_causal": False, "has_sinks": False,
                          "output_logsumexp": False, "force_fused": False}))
    body = Graph(tuple(inner), tuple(eqns), (eqns[-1].outputs[0],))
    if body.outputs[0].aval != out.aval:
        raise ValueError(f"attention region gives {body.outputs[0].type_str()}, not {out.type_str()}")
    return fused_eqn(body, (q, k, v, mask), (out,), KIND, f"{KIND}_{body.structural_hash[:10]}")


def spec_of(body: Graph) -> DecodeAttention:
    """The `DecodeAttention` of an attention region's body (`attention_region`)."""
    sdpa = body.eqns[-1]
    q, k, v, mask = body.inputs
    spec = decode_attention(q, k, v, mask, sdpa.params["scale"])
    if isinstance(spec, str):
        raise ValueError(f"not an attention region: {spec}")
    return spec


__all__ = ["KIND", "LANES", "DecodeAttention", "decode_attention", "attention_region", "spec_of"]
