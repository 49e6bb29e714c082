"""Graph layer: evaluate one primitive with MLX ops, bit-identical on CPU to the op that traced it.

``MLX_RULES[name](*inputs, **params)`` returns an ``mx.array``, or a tuple exactly when the
equation has several outputs. Each rule calls the public MLX op that creates that primitive with
the same arguments, so on CPU it runs the same kernel; where no public op exists (Gather, Scatter,
MaskedScatter, RandomBits, the fast-op VJPs) the rule rebuilds the primitive from exact public
ops (copies, selects, uint32 arithmetic) or from MLX's own fallback formula. Every declared
primitive has an entry; those in ``NOT_EVALUATED`` raise `UnsupportedPrimitiveError` with the
reason. May import mlx, numpy and the graph layer.
"""

from __future__ import annotations

import math
from typing import Callable

import mlx.core as mx

from mlxtriton.graph import _shared_rules as shared
from mlxtriton.graph import dtypes, fused, primitives
from mlxtriton.graph.primitives import UnsupportedPrimitiveError

MLX_RULES: dict[str, Callable] = {}

NOT_EVALUATED: dict[str, str] = {
    # The graph layer never launches kernels (only mlxtriton.runtime calls mx.fast.*_kernel), and
    # a CPU-only MLX cannot run one. The params keep the wrapped source, grid, threadgroup and
    # output avals a GPU runtime needs to relaunch it.
    "CustomKernel": "a custom Metal/CUDA kernel runs only on its GPU, launched by mlxtriton.runtime",
}


def _register(name: str, rule: Callable) -> None:
    primitives.get(name)  # only declared primitives get rules
    if name in MLX_RULES:
        raise ValueError(f"MLX rule for {name} registered twice")
    MLX_RULES[name] = rule


def _results(outs) -> mx.array | tuple[mx.array, ...]:
    """The rule convention: a tuple exactly when there are several outputs."""
    outs = tuple(outs)
    return outs if len(outs) > 1 else outs[0]


def _copy(x: mx.array) -> mx.array:
    return mx.array(x)  # a fresh array; AsType to its own dtype copies every bit


# --- elementwise -----------------------------------------------------------------------------

_UNARY = {
    "Abs": mx.abs, "ArcCos": mx.arccos, "ArcCosh": mx.arccosh, "ArcSin": mx.arcsin,
    "ArcSinh": mx.arcsinh, "ArcTan": mx.arctan, "ArcTanh": mx.arctanh, "Ceil": mx.ceil,
    "Conjugate": mx.conjugate, "Copy": _copy, "Cos": mx.cos, "Cosh": mx.cosh, "Erf": mx.erf,
    "ErfInv": mx.erfinv, "Exp": mx.exp, "Expm1": mx.expm1, "Floor": mx.floor, "Imag": mx.imag,
    "Log1p": mx.log1p, "LogicalNot": mx.logical_not, "Negative": mx.negative, "Real": mx.real,
    "Round": mx.round, "Sigmoid": mx.sigmoid, "Sign": mx.sign, "Sin": mx.sin, "Sinh": mx.sinh,
    "Square": mx.square, "StopGradient": mx.stop_gradient, "Tan": mx.tan, "Tanh": mx.tanh,
}
_BINARY = {
    "Add": mx.add, "ArcTan2": mx.arctan2, "Divide": mx.divide, "FloorDivide": mx.floor_divide,
    "Greater": mx.greater, "GreaterEqual": mx.greater_equal, "Less": mx.less,
    "LessEqual": mx.less_equal, "LogAddExp": mx.logaddexp, "LogicalAnd": mx.logical_and,
    "LogicalOr": mx.logical_or, "Maximum": mx.maximum, "Minimum": mx.minimum,
    "Multiply": mx.multiply, "NotEqual": mx.not_equal, "Power": mx.power,
    "Remainder": mx.remainder, "Subtract": mx.subtract, "Select": mx.where,
}


def _nary(fn: Callable) -> Callable:
    return lambda *xs: fn(*xs)


for _name, _fn in {**_UNARY, **_BINARY}.items():
    _register(_name, _nary(_fn))

_LOG = {"two": mx.log2, "ten": mx.log10, "e": mx.log}
_register("Log", lambda x, *, base: _LOG[base](x))
_register("Sqrt", lambda x, *, reciprocal: mx.rsqrt(x) if reciprocal else mx.sqrt(x))
_register("AsType", lambda x, *, dtype: x.astype(dtypes.to_mx(dtype)))
_register("DivMod", lambda x, y: tuple(mx.divmod(x, y)))


def _equal(x, y, *, equal_nan):
    # NaNEqual only comes out of array_equal(equal_nan=True), which reduces it; elementwise it is
    # (x == y) or both NaN, exactly (a boolean).
    eq = mx.equal(x, y)
    return mx.logical_or(eq, mx.logical_and(mx.isnan(x), mx.isnan(y))) if equal_nan else eq


_register("Equal", _equal)
_BITWISE = {
    "and": mx.bitwise_and, "or": mx.bitwise_or, "xor": mx.bitwise_xor,
    "left_shift": mx.left_shift, "right_shift": mx.right_shift,
}
_register("BitwiseBinary", lambda x, y, *, op: _BITWISE[op](x, y))

# --- reductions and scans --------------------------------------------------------------------

# MLX reports every reduction with its axes kept (a Squeeze follows), hence keepdims=True.
_REDUCE = {"and": mx.all, "or": mx.any, "sum": mx.sum, "prod": mx.prod, "min": mx.min, "max": mx.max}
_register("Reduce", lambda x, *, kind, axes: _REDUCE[kind](x, axis=list(axes), keepdims=True))
_ARG_REDUCE = {"argmin": mx.argmin, "argmax": mx.argmax}
_register("ArgReduce", lambda x, *, kind, axis: _ARG_REDUCE[kind](x, axis=axis, keepdims=True))
_register("LogSumExp", lambda x: mx.logsumexp(x, axis=-1, keepdims=True))
_register("Softmax", lambda x, *, precise: mx.softmax(x, axis=-1, precise=precise))
_SCAN = {"sum": mx.cumsum, "prod": mx.cumprod, "max": mx.cummax, "min": mx.cummin, "logaddexp": mx.logcumsumexp}
_register(
    "Scan",
    lambda x, *, kind, axis, reverse, inclusive: _SCAN[kind](x, axis=axis, reverse=reverse, inclusive=inclusive),
)

# --- movement --------------------------------------------------------------------------------

_register("Broadcast", lambda x, *refs, shape: mx.broadcast_to(x, shared.broadcast_target(x, refs, shape)))
_register(
    "BroadcastAxes",
    lambda *xs, ignore_axes: mx.broadcast_to(
        xs[0], shared.broadcast_axes_shape([x.shape for x in xs], ignore_axes)
    ),
)
_register("Reshape", lambda x, *, shape: mx.reshape(x, shape))
_register("Transpose", lambda x, *, axes: mx.transpose(x, axes))
_register("Squeeze", lambda x, *, axes: mx.squeeze(x, axes))
_register("ExpandDims", lambda x, *, axes: mx.expand_dims(x, axes))
_register("Flatten", lambda x, *, start_axis, end_axis: mx.flatten(x, start_axis, end_axis))
_register("Unflatten", lambda x, *, axis, shape: mx.unflatten(x, axis, shape))
_register("Slice", lambda x, *, start, stop, strides: x[shared.slices(start, stop, strides)])
_register("Concatenate", lambda *xs, axis: mx.concatenate(list(xs), axis))
_register("Split", lambda x, *, indices, axis: _results(mx.split(x, list(indices), axis)))
_register("AsStrided", lambda x, *, shape, strides, offset: mx.as_strided(x, shape, strides, offset))
_register("View", lambda x, *, dtype: x.view(dtypes.to_mx(dtype)))
# Full materializes its broadcast input. A copy through AsType would keep the input's zero
# strides, which MLX's CUDA SDPA kernel misreads when such an array is its sinks input (seen live
# on the H200 with MLX 0.32.4): make the copy row-contiguous, as Full's own kernel does.
_register("Full", mx.contiguous)


def _pad(x, value, *, axes, low_pad, high_pad):
    width = [(0, 0)] * x.ndim
    for axis, lo, hi in zip(axes, low_pad, high_pad):
        width[axis] = (lo, hi)
    return mx.pad(x, width, constant_values=value)


_register("Pad", _pad)

# x.at[...] on slices makes SliceUpdate with that reduction; on index arrays, Scatter.
_AT = {"sum": "add", "prod": "multiply", "max": "maximum", "min": "minimum"}


def _update(x, index, updates, kind):
    if kind == "none":
        out = _copy(x)
        out[index] = updates
        return out
    return getattr(x.at[index], _AT[kind])(updates)


_register(
    "SliceUpdate",
    lambda x, update, *, kind, start, stop, strides: _update(
        x, shared.slices(start, stop, strides), update, kind
    ),
)

# --- indexing --------------------------------------------------------------------------------


def _gather(x, *indices, axes, slice_sizes):
    # No public op takes Gather's (axes, slice_sizes); advanced indexing with one index array per
    # axis copies the same elements (copies are exact).
    return x[shared.gather_index(mx, x.shape, axes, indices, slice_sizes)]


def _scatter(x, *rest, kind, axes):
    *indices, updates = rest
    return _update(x, shared.scatter_index(mx, x.shape, axes, indices, updates.shape), updates, kind)


def _scatter_axis(x, indices, updates, *, kind, axis):
    if kind == "none":
        return mx.put_along_axis(x, indices, updates, axis)
    # Sum: each destination adds its updates in ascending update order, as ScatterAxis does.
    return x.at[shared.along_axis_index(mx, x.shape, indices, axis)].add(updates)


_register("Gather", _gather)
_register("GatherAxis", lambda x, indices, *, axis: mx.take_along_axis(x, indices, axis))
_register("Scatter", _scatter)
_register("ScatterAxis", _scatter_axis)
_register("MaskedScatter", lambda x, mask, src: shared.masked_scatter(mx, x, mask, src))
_register("DynamicSlice", lambda x, start, *, axes, slice_size: mx.slice(x, start, axes, slice_size))
_register("DynamicSliceUpdate", lambda x, update, start, *, axes: mx.slice_update(x, update, start, axes))

# --- matmul, convolution ---------------------------------------------------------------------

_register("Matmul", lambda a, b: mx.matmul(a, b))
_register("AddMM", lambda a, b, c, *, alpha, beta: mx.addmm(c, a, b, alpha=alpha, beta=beta))


def _block_masked_mm(a, b, *masks, block_size):
    # (a, b, [mask_out], [mask_lhs, mask_rhs]): the operand masks come as a pair or not at all.
    mask_out = masks[0] if len(masks) in (1, 3) else None
    mask_lhs, mask_rhs = masks[-2:] if len(masks) >= 2 else (None, None)
    return mx.block_masked_mm(a, b, block_size, mask_out, mask_lhs, mask_rhs)


_register("BlockMaskedMM", _block_masked_mm)
# left_sorted is a scheduling hint the Python API never sets; the product does not depend on it.
_register(
    "GatherMM",
    lambda a, b, lhs, rhs, *, left_sorted, right_sorted: mx.gather_mm(
        a, b, lhs, rhs, sorted_indices=right_sorted
    ),
)


def _quantized_extras(mode: str, extras) -> tuple:
    """(biases, global_scale) from the inputs after the scales: affine has biases, nvfp4 may have
    a global scale, the other modes neither."""
    if not extras:
        return None, None
    return (extras[0], None) if mode == "affine" else (None, extras[0])


def _quantized_matmul(x, w, scales, *extras, group_size, bits, mode, transpose):
    biases, _ = _quantized_extras(mode, extras)
    return mx.quantized_matmul(x, w, scales, biases, transpose, group_size, bits, mode)


def _gather_qmm(x, w, scales, *rest, group_size, bits, mode, transpose, left_sorted, right_sorted):
    *extras, lhs, rhs = rest
    biases, global_scale = _quantized_extras(mode, extras)
    return mx.gather_qmm(
        x, w, scales, biases, lhs, rhs, transpose, group_size, bits, mode,
        global_scale=global_scale, sorted_indices=right_sorted,
    )


def _quantize(w, *rest, group_size, bits, mode, dequantize, dtype):
    if not dequantize:
        return tuple(mx.quantize(w, group_size, bits, mode, global_scale=rest[0] if rest else None))
    scales, *extras = rest
    biases, global_scale = _quantized_extras(mode, extras)
    return mx.dequantize(
        w, scales, biases, group_size, bits, mode, global_scale=global_scale, dtype=dtypes.to_mx(dtype)
    )


_register("QuantizedMatmul", _quantized_matmul)
_register("GatherQMM", _gather_qmm)
_register("Quantize", _quantize)


def _convolution(x, w, *, strides, padding_lo, padding_hi, kernel_dilation, input_dilation, groups, flip):
    return mx.conv_general(
        x, w, stride=list(strides), padding=(list(padding_lo), list(padding_hi)),
        kernel_dilation=list(kernel_dilation), input_dilation=list(input_dilation),
        groups=groups, flip=flip,
    )


_register("Convolution", _convolution)

# --- fast ops --------------------------------------------------------------------------------
# On the CPU stream mx.fast.* runs MLX's fallback (plain ops), which is what a CPU trace holds
# instead of these primitives; a graph traced on a GPU evaluates here through the same fallback.
# Without a weight or bias MLX passes a 0-d one, which the fallback ignores.

_register("RMSNorm", lambda x, w, *, eps: mx.fast.rms_norm(x, w if w.ndim else None, eps))
_register(
    "LayerNorm",
    lambda x, w, b, *, eps: mx.fast.layer_norm(x, w if w.ndim else None, b if b.ndim else None, eps),
)


def _rms_norm_vjp(x, w, g, *, eps):
    # RMSNorm::vjp's fallback (mlx/fast.cpp), op for op.
    n = mx.rsqrt(mx.mean(mx.square(x), axis=-1, keepdims=True) + mx.array(eps, x.dtype))
    n3 = mx.power(n, mx.array(3, x.dtype))
    gw = g * w
    t = mx.mean(gw * x, axis=-1, keepdims=True)
    dx = gw * n - (x * t) * n3
    axes = list(range(g.ndim - 1))
    dw = mx.zeros_like(w) if w.ndim == 0 else mx.sum(g * (x * n), axis=axes)
    return dx, dw


def _layer_norm_vjp(x, w, b, g, *, eps):
    # LayerNorm::vjp's fallback (mlx/fast.cpp), op for op.
    norm = mx.array(1.0 / x.shape[-1], x.dtype)
    mu = mx.sum(x, axis=-1, keepdims=True) * norm
    mu2 = mx.sum(mx.square(x), axis=-1, keepdims=True) * norm
    n = mx.rsqrt(mu2 - mx.square(mu) + mx.array(eps, x.dtype))
    n3 = mx.power(n, mx.array(3, x.dtype))
    xc = x - mu
    wg = w * g
    sumwg = mx.sum(wg, axis=-1, keepdims=True) * norm
    sumwgxc = mx.sum(wg * xc, axis=-1, keepdims=True) * norm
    dx = (wg - sumwg) * n - (xc * sumwgxc) * n3
    axes = list(range(g.ndim - 1))
    dw = mx.zeros_like(w) if w.ndim == 0 else mx.sum(g * (xc * n), axis=axes)
    db = mx.zeros_like(b) if b.ndim == 0 else mx.sum(g, axis=axes)
    return dx, dw, db


_register("RMSNormVJP", _rms_norm_vjp)
_register("LayerNormVJP", _layer_norm_vjp)


def _rope(x, offset, *freqs, dims, traditional, base, scale, forward):
    # forward=False (RoPE's VJP, a GPU primitive) rotates by -theta. The public op has no such
    # flag, but positions times -scale negate theta exactly, and MLX's CPU cos(-t) == cos(t),
    # sin(-t) == -sin(t) bit for bit (tests/graph/test_op_table.py checks), so the fallback's
    # products and sums match term for term (a - (-b) == a + b, a + b == b + a in IEEE
    # arithmetic) except for the sign of a zero at a zero angle (MLX's sin(-0.0) is +0.0). On
    # the H200 the CUDA kernel with -scale matched forward=False exactly in bf16 / f16 and within
    # 5e-7 in f32.
    return mx.fast.rope(
        x, dims, traditional=traditional, base=None if freqs else base,
        scale=scale if forward else -scale, offset=offset, freqs=freqs[0] if freqs else None,
    )


_register("RoPE", _rope)


def _sdpa(q, k, v, *rest, scale, do_causal, has_sinks, output_logsumexp, force_fused):
    # force_fused only asks for the fused kernel; the CPU has none, and the math is the same.
    sinks = rest[-1] if has_sinks else None
    mask = rest[0] if len(rest) - has_sinks == 1 else None
    out = mx.fast.scaled_dot_product_attention(
        q, k, v, scale=scale, mask="causal" if do_causal else mask, sinks=sinks
    )
    if not output_logsumexp:
        return out
    # The second output (GPU training path): the rows' logsumexp of the scaled, masked scores,
    # float32, shape (B, Hq, Lq, 1), computed here from the fallback's scores.
    scores = shared.sdpa_scores(mx, q, k, mask, sinks, scale, do_causal)
    lse = mx.logsumexp(scores.astype(mx.float32), axis=-1, keepdims=True)
    return out, shared.sdpa_merge_heads(mx, lse, q.shape[1], k.shape[1])


_register("ScaledDotProductAttention", _sdpa)

# --- random, creation, sorting, linear algebra, the rest -------------------------------------


def _random_bits(key, *, shape, width):
    # The Python API has no random.bits; Threefry is exact uint32 arithmetic, so rebuilding it
    # from MLX ops gives RandomBits' bits (tests check against mx.random.split / uniform).
    size = math.prod(shape)
    dtype = dtypes.to_mx(shared.random_bits_dtype(width))
    if size == 0 or key.size == 0:
        return mx.zeros(shape, dtype)
    words, per_key_bytes = shared.random_words(mx, key, size, width)
    if width == 4:
        return words.reshape(shape)
    raw = mx.contiguous(words.view(mx.uint8)[:, :per_key_bytes])
    return raw.view(dtype).reshape(shape)


_register("RandomBits", _random_bits)
_register(
    "Arange",
    lambda *, start, stop, step, dtype: mx.arange(start, stop, step, dtype=dtypes.to_mx(dtype)),
)
_register("ArgSort", lambda x, *, axis: mx.argsort(x, axis=axis))
_register("Sort", lambda x, *, axis: mx.sort(x, axis=axis))
_register("ArgPartition", lambda x, *, kth, axis: mx.argpartition(x, kth, axis=axis))
_register("Partition", lambda x, *, kth, axis: mx.partition(x, kth, axis=axis))
_register(
    "SearchSorted",
    lambda a, v, *, right: mx.searchsorted(a, v, side="right" if right else "left"),
)


def _fft(x, *, axes, inverse, real, odd_out):
    axes = list(axes)
    if real and inverse:
        # The output length of an inverse real transform is 2 (n - 1) + odd_out on the last axis.
        sizes = [x.shape[a] for a in axes]
        sizes[-1] = 2 * (sizes[-1] - 1) + int(odd_out)
        return mx.fft.irfftn(x, s=sizes, axes=axes)
    fn = mx.fft.rfftn if real else (mx.fft.ifftn if inverse else mx.fft.fftn)
    return fn(x, axes=axes)


_register("FFT", _fft)
_register("Hadamard", lambda x, *, scale: mx.hadamard_transform(x, scale=scale))

# MLX's linear algebra runs on the CPU stream only.
_register("QRF", lambda x: tuple(mx.linalg.qr(x, stream=mx.cpu)))
_register(
    "SVD",
    lambda x, *, compute_uv: _results(mx.linalg.svd(x, compute_uv=compute_uv, stream=mx.cpu))
    if compute_uv else mx.linalg.svd(x, compute_uv=False, stream=mx.cpu),
)
_register(
    "Inverse",
    lambda x, *, tri, upper: mx.linalg.tri_inv(x, upper=upper, stream=mx.cpu)
    if tri else mx.linalg.inv(x, stream=mx.cpu),
)
_register("Cholesky", lambda x, *, upper: mx.linalg.cholesky(x, upper=upper, stream=mx.cpu))
_register(
    "Eig",
    lambda x, *, compute_eigenvectors: tuple(mx.linalg.eig(x, stream=mx.cpu))
    if compute_eigenvectors else mx.linalg.eigvals(x, stream=mx.cpu),
)
_register(
    "Eigh",
    lambda x, *, uplo, compute_eigenvectors: tuple(mx.linalg.eigh(x, UPLO=uplo, stream=mx.cpu))
    if compute_eigenvectors else mx.linalg.eigvalsh(x, UPLO=uplo, stream=mx.cpu),
)
_register(
    "NumberOfElements",
    lambda x, *, axes, inverted, dtype: mx.array(
        shared.number_of_elements(x.shape, axes, inverted), dtype=dtypes.to_mx(dtype)
    ),
)
# The first num_outputs inputs, ordered after the others (a rematerialized checkpoint's copy
# runs once the outputs it depends on exist, and mx.compile keeps it apart from the original).
_register("Depends", lambda *xs, num_outputs: _results(
    mx.depends(list(xs[:num_outputs]), list(xs[num_outputs:])) if len(xs) > num_outputs
    else xs))
_register("Fused", fused.mlx_rule)

# --- collectives -----------------------------------------------------------------------------
# Each calls MLX's own collective over the group the equation names, on the stream MLX picks for
# that group's backend (ring, MPI: the CPU; NCCL: the GPU), so gradients are MLX's own VJPs. The
# functions are looked up at each call: inside a trace, the tracer's stand-ins record them.

_GROUPS: dict[tuple[int, int], "mx.distributed.Group"] = {}


def _group(size: int, rank: int) -> "mx.distributed.Group":
    """The group of a collective equation: MLX's world group (``mx.distributed.init()``), which
    must have that size and this process that rank (the tracer records no other group)."""
    group = _GROUPS.get((size, rank))
    if group is None:
        world = mx.distributed.init()
        if (world.size(), world.rank()) != (size, rank):
            raise UnsupportedPrimitiveError(
                f"a collective over {size} processes as rank {rank} cannot run in this process, "
                f"rank {world.rank()} of {world.size()}: start one process per rank (mlx.launch)"
            )
        # One Group object per process: mlx.nn's sum_gradients caches its function per object.
        group = _GROUPS[(size, rank)] = world
    return group


_ALL_REDUCE = {"sum": "all_sum", "max": "all_max", "min": "all_min"}


def _all_reduce(x, *, kind, size, rank):
    return getattr(mx.distributed, _ALL_REDUCE[kind])(x, group=_group(size, rank))


def _reduce_scatter(x, *, kind, size, rank):
    if kind != "sum":
        raise UnsupportedPrimitiveError(f"ReduceScatter of kind {kind!r}: MLX's Python API has sum_scatter only")
    return mx.distributed.sum_scatter(x, group=_group(size, rank))


def _sum_gradients(x, *, size, rank):
    import mlx.nn.layers.distributed as nn_distributed

    return nn_distributed.sum_gradients(_group(size, rank))(x)


_register("AllReduce", _all_reduce)
_register("AllGather", lambda x, *, size, rank: mx.distributed.all_gather(x, group=_group(size, rank)))
_register("ReduceScatter", _reduce_scatter)
_register("Send", lambda x, *, dst, size, rank: mx.distributed.send(x, dst, group=_group(size, rank)))
_register(
    "Recv",
    lambda *, src, shape, dtype, size, rank: mx.distributed.recv(
        shape, dtypes.to_mx(dtype), src, group=_group(size, rank)
    ),
)
_register("SumGradients", _sum_gradients)


def _not_evaluated(name: str, reason: str) -> Callable:
    def rule(*inputs, **params):
        raise UnsupportedPrimitiveError(f"cannot evaluate {name} with MLX: {reason}")

    return rule


for _name, _reason in NOT_EVALUATED.items():
    _register(_name, _not_evaluated(_name, _reason))

# The primitives MLX_RULES really evaluates.
EVALUATED: frozenset[str] = frozenset(MLX_RULES) - frozenset(NOT_EVALUATED)
