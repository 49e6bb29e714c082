"""Public API layer: real model blocks written in plain mlx.nn, used by the demo, the benchmarks,
the notebooks and the tests. Nothing here knows mlxtriton: it is the code users already have.
May import mlx only.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import mlx.core as mx
import mlx.nn as nn


@dataclass(frozen=True)
class LlamaConfig:
    dims: int = 64
    n_heads: int = 4
    n_kv_heads: int = 2
    hidden_dims: int = 128
    norm_eps: float = 1e-5
    rope_base: float = 10000.0


class Attention(nn.Module):
    """Grouped-query attention written out (matmul, scale, causal mask, softmax, matmul), as model
    code commonly has it; ``fast=True`` calls mx.fast.scaled_dot_product_attention instead."""

    def __init__(self, cfg: LlamaConfig, fast: bool = False):
        super().__init__()
        self.n_heads, self.n_kv_heads = cfg.n_heads, cfg.n_kv_heads
        self.head_dim = cfg.dims // cfg.n_heads
        self.scale = self.head_dim**-0.5
        self.fast = fast
        self.q_proj = nn.Linear(cfg.dims, cfg.n_heads * self.head_dim, bias=False)
        self.k_proj = nn.Linear(cfg.dims, cfg.n_kv_heads * self.head_dim, bias=False)
        self.v_proj = nn.Linear(cfg.dims, cfg.n_kv_heads * self.head_dim, bias=False)
        self.o_proj = nn.Linear(cfg.n_heads * self.head_dim, cfg.dims, bias=False)
        self.rope = nn.RoPE(self.head_dim, traditional=False, base=cfg.rope_base)

    def __call__(self, x: mx.array) -> mx.array:
        B, L, _ = x.shape
        q = self.q_proj(x).reshape(B, L, self.n_heads, -1).transpose(0, 2, 1, 3)
        k = self.k_proj(x).reshape(B, L, self.n_kv_heads, -1).transpose(0, 2, 1, 3)
        v = self.v_proj(x).reshape(B, L, self.n_kv_heads, -1).transpose(0, 2, 1, 3)
        q, k = self.rope(q), self.rope(k)
        if self.fast:
            out = mx.fast.scaled_dot_product_attention(q, k, v, scale=self.scale, mask="causal")
        else:
            repeats = self.n_heads // self.n_kv_heads
            k = mx.repeat(k, repeats, axis=1)
            v = mx.repeat(v, repeats, axis=1)
            scores = (q * self.scale) @ k.transpose(0, 1, 3, 2)
            mask = nn.MultiHeadAttention.create_additive_causal_mask(L).astype(scores.dtype)
            scores = mx.softmax(scores + mask, axis=-1, precise=True)
            out = scores @ v
        return self.o_proj(out.transpose(0, 2, 1, 3).reshape(B, L, -1))


class SwiGLU(nn.Module):
    def __init__(self, dims: int, hidden_dims: int):
        super().__init__()
        self.gate_proj = nn.Linear(dims, hidden_dims, bias=False)
        self.up_proj = nn.Linear(dims, hidden_dims, bias=False)
        self.down_proj = nn.Linear(hidden_dims, dims, bias=False)

    def __call__(self, x: mx.array) -> mx.array:
        return self.down_proj(nn.silu(self.gate_proj(x)) * self.up_proj(x))


class LlamaBlock(nn.Module):
    """A Llama-style decoder block: RMSNorm, RoPE, grouped-query attention, SwiGLU MLP."""

    def __init__(self, cfg: LlamaConfig = LlamaConfig(), fast_attention: bool = False):
        super().__init__()
        self.attention_norm = nn.RMSNorm(cfg.dims, eps=cfg.norm_eps)
        self.attention = Attention(cfg, fast=fast_attention)
        self.mlp_norm = nn.RMSNorm(cfg.dims, eps=cfg.norm_eps)
        self.mlp = SwiGLU(cfg.dims, cfg.hidden_dims)

    def __call__(self, x: mx.array) -> mx.array:
        h = x + self.attention(self.attention_norm(x))
        return h + self.mlp(self.mlp_norm(h))


class MLP(nn.Module):
    """A GELU MLP with biases and a layer norm: Linear -> GELU -> Linear -> residual -> LayerNorm."""

    def __init__(self, dims: int = 64, hidden_dims: int = 256):
        super().__init__()
        self.fc1 = nn.Linear(dims, hidden_dims)
        self.fc2 = nn.Linear(hidden_dims, dims)
        self.norm = nn.LayerNorm(dims)

    def __call__(self, x: mx.array) -> mx.array:
        return self.norm(x + self.fc2(nn.gelu(self.fc1(x))))


class ConvBNReLU(nn.Module):
    """conv2d -> batch norm -> ReLU (NHWC, as MLX's convolutions are)."""

    def __init__(self, in_channels: int = 3, out_channels: int = 8, kernel_size: int = 3):
        super().__init__()
        self.conv = nn.Conv2d(in_channels, out_channels, kernel_size, padding=1, bias=False)
        self.bn = nn.BatchNorm(out_channels)

    def __call__(self, x: mx.array) -> mx.array:
        return nn.relu(self.bn(self.conv(x)))


def cross_entropy_loss(logits: mx.array, labels: mx.array) -> mx.array:
    """Mean token cross-entropy from logits and integer labels, as training code writes it."""
    return nn.losses.cross_entropy(logits, labels, reduction="mean")


def indexing_mix(x: mx.array, idx: mx.array) -> mx.array:
    """Slice, Concatenate, Gather and Scan in one function."""
    head, tail = x[:, :2], x[:, 2:]
    y = mx.concatenate([tail, head * 2.0], axis=1)
    picked = mx.take(y, idx, axis=0)
    return mx.cumsum(picked, axis=1) + mx.sum(x[::2], axis=0)


def init_eval(module: nn.Module, seed: int = 0) -> nn.Module:
    """Initialise a module's parameters deterministically and evaluate them (BatchNorm in eval
    mode with non-trivial running statistics, so folding them is observable)."""
    mx.random.seed(seed)
    leaves = [v for _, v in nn.utils.tree_flatten(module.parameters())]
    for m in module.modules():
        if isinstance(m, nn.BatchNorm):
            n = m.running_mean.shape[0]
            m.running_mean = mx.random.normal((n,)) * 0.1
            m.running_var = mx.random.uniform(0.5, 1.5, (n,))
            m.eval()
    mx.eval(module.parameters(), *leaves)
    return module


def example_inputs(name: str, seed: int = 0, batch: int = 2, length: int = 8):
    """Deterministic inputs for the named example: 'llama', 'mlp', 'conv', 'cross_entropy', 'indexing'."""
    key = mx.random.key(seed)
    k1, k2 = mx.random.split(key)
    if name == "llama":
        return (mx.random.normal((batch, length, LlamaConfig.dims), key=k1),)
    if name == "mlp":
        return (mx.random.normal((batch, length, 64), key=k1),)
    if name == "conv":
        return (mx.random.normal((batch, 8, 8, 3), key=k1),)
    if name == "cross_entropy":
        return (
            mx.random.normal((batch * length, 32), key=k1),
            mx.random.randint(0, 32, (batch * length,), key=k2),
        )
    if name == "indexing":
        return (mx.random.normal((6, 5), key=k1), mx.array([3, 0, 1], dtype=mx.int32))
    raise KeyError(f"unknown example {name!r}")


def causal_mask(length: int, dtype=mx.float32) -> mx.array:
    """An additive causal mask (0 on and below the diagonal, -inf above)."""
    idx = mx.arange(length)
    return mx.where(idx[:, None] >= idx[None], 0.0, -math.inf).astype(dtype)
