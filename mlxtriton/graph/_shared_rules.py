"""Graph layer: evaluation helpers written once for any array namespace ``xp`` (``mlx.core`` or
``jax.numpy``), for primitives that neither library exposes as one public op. Both evaluators
(evaluate_mlx, evaluate_jax) use them, so the MLX rule and the oracle share one definition of the
semantics, checked against MLX itself in tests/graph/test_op_table.py. Imports nothing; the caller
passes its namespace.
"""

from __future__ import annotations

import math
from typing import Sequence


def broadcast_shape(*shapes: Sequence[int]) -> tuple[int, ...]:
    """NumPy broadcasting of shapes."""
    ndim = max((len(s) for s in shapes), default=0)
    out = []
    for i in range(ndim):
        sizes = {s[i - ndim + len(s)] for s in shapes if i - ndim + len(s) >= 0} - {1}
        if len(sizes) > 1:
            raise ValueError(f"shapes {shapes} do not broadcast")
        out.append(sizes.pop() if sizes else 1)
    return tuple(out)


def _wrap_negative(xp, index, size: int):
    # MLX's gather/scatter kernels read a negative index i as i + size (offset_neg_idx).
    index = index.astype(xp.int32)
    return xp.where(index < 0, index + size, index)


def gather_index(xp, shape, axes, indices, slice_sizes) -> tuple:
    """Index arrays, one per axis of ``x``, with which ``x[index]`` is MLX's Gather.

    Gather(axes, slice_sizes) on x with index arrays I_k (one per axis in ``axes``, broadcast to a
    common shape B) gives out[b, s_0, ..., s_n-1] = x[..., I_k[b] + s_axes[k], ..., s_d, ...]: for
    each index position, a slice of size ``slice_sizes`` starting at the indexed point.
    """
    nd = len(shape)
    idx_shape = broadcast_shape(*(tuple(i.shape) for i in indices))
    nb = len(idx_shape)
    out = []
    for d in range(nd):
        ramp_shape = (1,) * nb + tuple(slice_sizes[d] if j == d else 1 for j in range(nd))
        ramp = xp.arange(slice_sizes[d], dtype=xp.int32).reshape(ramp_shape)
        if d in axes:
            start = _wrap_negative(xp, indices[list(axes).index(d)], shape[d])
            start = xp.broadcast_to(start, idx_shape).reshape(idx_shape + (1,) * nd)
            out.append(start + ramp)
        else:
            out.append(ramp)
    full = idx_shape + tuple(slice_sizes)
    return tuple(xp.broadcast_to(i, full) for i in out)


def scatter_index(xp, shape, axes, indices, update_shape) -> tuple:
    """Index arrays with which ``x[index] (op)= updates`` is MLX's Scatter.

    The updates hold one slice per index position: update_shape = B + slice_shape, where B is the
    indices' broadcast shape and slice_shape has x's rank.
    """
    nb = len(update_shape) - len(shape)
    return gather_index(xp, shape, axes, indices, tuple(update_shape[nb:]))


def along_axis_index(xp, shape, indices, axis: int) -> tuple:
    """Index arrays with which ``x[index]`` is take_along_axis(x, indices, axis)."""
    nd = len(shape)
    axis = axis % nd
    out = []
    for d in range(nd):
        if d == axis:
            out.append(_wrap_negative(xp, indices, shape[d]))
        else:
            ramp = xp.arange(indices.shape[d], dtype=xp.int32)
            out.append(xp.broadcast_to(ramp.reshape(tuple(-1 if j == d else 1 for j in range(nd))), indices.shape))
    return tuple(out)


def masked_scatter(xp, x, mask, src):
    """MaskedScatter: along the leading batch axis b, the k-th True of mask[b] (row-major) takes
    src[b].flat[k]; other elements keep x. A select between copies, so exact."""
    batch = x.shape[0] if x.ndim else 1
    # Sizes spelled out: a -1 cannot be inferred when the batch is empty.
    flat_x = x.reshape(batch, x.size // batch if batch else 0)
    flat_mask = mask.reshape(batch, mask.size // batch if batch else 0)
    values = src.reshape(batch, src.size // batch if batch else 0)
    if values.shape[1] == 0 or flat_x.shape[1] == 0:
        return xp.where(flat_mask, flat_x, flat_x).reshape(x.shape)
    position = xp.cumsum(flat_mask.astype(xp.int32), axis=1) - 1
    position = xp.clip(position, 0, values.shape[1] - 1)
    picked = xp.take_along_axis(values, position, axis=1).astype(x.dtype)
    return xp.where(flat_mask, picked, flat_x).reshape(x.shape)


# Threefry-2x32 with 20 rounds, as mlx/backend/cpu/threefry.cpp (the same hash as JAX's PRNG).
_ROTATIONS = ((13, 15, 26, 6), (17, 29, 16, 24))


def threefry2x32(k0, k1, c0, c1):
    """Hash counters (c0, c1) with key (k0, k1); all uint32 arrays that broadcast together."""
    ks = (k0, k1, k0 ^ k1 ^ 0x1BD11BDA)
    x0, x1 = c0 + k0, c1 + k1
    for i in range(5):
        for r in _ROTATIONS[i % 2]:
            x0 = x0 + x1
            x1 = (x1 << r) | (x1 >> (32 - r))
            x1 = x1 ^ x0
        x0 = x0 + ks[(i + 1) % 3]
        x1 = x1 + ks[(i + 2) % 3] + (i + 1)
    return x0, x1


def random_words(xp, keys, size: int, width: int):
    """The uint32 words MLX's RandomBits writes for each key, shape (num_keys, words), and the
    number of bytes per key the output keeps.

    RandomBits::eval_cpu fills each key's bytes_per_key = width * size / num_keys bytes with
    words = ceil(bytes / 4) uint32 words: with half = words // 2 and odd = words % 2, counter pair
    (j, j + half + odd) gives word j (first hash) and word j + half + odd (second hash) for
    j < half, and when words is odd, counter (half, 0) gives word half (first hash). The last word
    is cut to the bytes that remain (little-endian).
    """
    keys = keys.reshape(-1, 2)
    num_keys = keys.shape[0]
    per_key_bytes = width * size // num_keys if num_keys else 0
    words = (per_key_bytes + 3) // 4
    half, odd = words // 2, words % 2
    w = xp.arange(words, dtype=xp.uint32)
    low = w < half
    mid = (w == half) if odd else xp.zeros(w.shape, dtype=xp.bool_)
    c0 = xp.where(low, w, xp.where(mid, half, w - (half + odd)))
    c1 = xp.where(low, w + (half + odd), xp.where(mid, 0, w))
    c0, c1 = c0.astype(xp.uint32), c1.astype(xp.uint32)
    x0, x1 = threefry2x32(keys[:, 0:1], keys[:, 1:2], c0[None], c1[None])
    return xp.where((low | mid)[None], x0, x1), per_key_bytes


def random_bits_dtype(width: int) -> str:
    try:
        return {1: "uint8", 2: "uint16", 4: "uint32"}[width]
    except KeyError:
        raise ValueError(f"RandomBits width must be 1, 2 or 4, got {width}") from None


def number_of_elements(shape, axes, inverted: bool) -> float:
    """NumberOfElements: the product of the sizes of ``axes`` (or its reciprocal), in double."""
    n = float(math.prod(shape[a] for a in axes))
    return 1.0 / n if inverted else n


def arange_length(start: float, stop: float, step: float) -> int:
    """Arange's length, as MLX computes it: ceil((stop - start) / step) in double, at least 0."""
    return max(int(math.ceil((stop - start) / step)), 0)


def broadcast_target(x, refs, shape) -> tuple[int, ...]:
    """Broadcast's target shape. A shapeless export adds the arrays x broadcasts against as
    extra inputs (their shapes, not their values, matter); the result then follows them."""
    return broadcast_shape(tuple(x.shape), *(tuple(r.shape) for r in refs)) if refs else tuple(shape)


def broadcast_axes_shape(shapes, ignore_axes) -> tuple[int, ...]:
    """BroadcastAxes' output: the inputs broadcast together except on ``ignore_axes`` (negative,
    counted from the end), where input 0 keeps its own sizes."""
    n = len(ignore_axes)
    batch = broadcast_shape(*(tuple(s)[: len(s) - n] for s in shapes))
    return batch + tuple(shapes[0])[len(shapes[0]) - n :]


def slices(start, stop, strides) -> tuple[slice, ...]:
    """Python slices equal to MLX's Slice/SliceUpdate state: the exporter reports the values the
    Python front end passed, which follow Python's slice normalization (negative = from the end;
    a negative stride's stop of -(n + 1) means "before index 0"), except a negative stride's
    start: the front end has already added n to it, so one still negative is before index 0 and
    the axis is empty (``x[-2::-2]`` of one row: start -1, where Python's -1 is the last row)."""
    return tuple(slice(0, 0) if c < 0 and a < 0 else slice(a, b, c)
                 for a, b, c in zip(start, stop, strides))


def sdpa_scores(xp, q, k, mask, sinks, scale: float, do_causal: bool):
    """The scaled, masked attention scores of MLX's SDPA fallback (mlx/fast.cpp), grouped by
    key/value head: shape (B, H_kv, H_q // H_kv, L_q, L_k), with the sinks (if any) prepended as
    an extra first column of the last axis."""
    batch, q_heads, q_len, head_dim = q.shape
    kv_heads, k_len = k.shape[1], k.shape[2]
    repeats = q_heads // kv_heads
    # The fallback scales q first, with the scale cast to q's dtype.
    q = (xp.array(scale, dtype=q.dtype) * q).reshape(batch, kv_heads, repeats, q_len, head_dim)
    k = xp.expand_dims(k, 2)
    scores = xp.matmul(q, xp.swapaxes(k, -1, -2))
    if do_causal:
        offset = k_len - q_len
        rows = xp.arange(offset, q_len + offset, dtype=xp.int32)[:, None]
        mask = rows >= xp.arange(0, k_len, dtype=xp.int32)[None, :]
    elif mask is not None:
        mask = mask.reshape(batch, kv_heads, repeats, q_len, k_len)
    if mask is not None:
        if mask.dtype == xp.bool_:
            lowest = xp.array(xp.finfo(scores.dtype).min, dtype=scores.dtype)
            scores = xp.where(mask, scores, lowest)
        else:
            scores = scores + mask
    if sinks is not None:
        column = xp.broadcast_to(sinks.reshape(1, kv_heads, repeats, 1, 1), scores.shape[:-1] + (1,))
        scores = xp.concatenate([column.astype(scores.dtype), scores], axis=-1)
    return scores


def sdpa_merge_heads(xp, grouped, q_heads: int, kv_heads: int):
    """(B, H_kv, R, L, D) -> (B, H_q, L, D)."""
    return grouped.reshape((grouped.shape[0], q_heads) + tuple(grouped.shape[3:]))
