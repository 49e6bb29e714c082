"""MLX's own GPU ops that the optimised decode step shares with plain mlx-lm, checked against
float32 references computed from the same operands: a quantized product against the product by
the dequantized weights, and attention over a cache bucket under a boolean mask (what
mlxtriton.lm's caches hand a model) against attention over exactly the keys written. A failure
here is MLX's and reaches plain mlx-lm; the greedy tests of test_projection_gpu.py compare whole
models, so these say which side of a disagreement to suspect. Runs on the lent GPU
(``-m cuda``) and on Apple silicon (``-m metal``)."""

import mlx.core as mx
import pytest

from mlxtriton import lm

pytestmark = [pytest.mark.cuda, pytest.mark.metal]

# (rows, K, N): a prefill and a decode row at the test models' K (64: equal to the group size,
# MLX 0.32's qmm_sm90 on an H100) and at a 1B model's (2048: qmm_sm80)
PRODUCTS = [(40, 64, 64), (1, 64, 256), (40, 128, 256), (40, 2048, 2048), (1, 2048, 2048),
            (128, 2048, 2048)]
# a product's largest difference from the float32 one, over its largest magnitude: rounding
# stays inside these (MLX's CPU product in bfloat16 comes within 0.1 at K 2048), zeros or
# unrelated values give about 1
TOLERANCE = {mx.float16: 0.02, mx.bfloat16: 0.2, mx.float32: 1e-4}


@pytest.mark.parametrize("group", [32, 64])
@pytest.mark.parametrize("rows,k,n", PRODUCTS, ids=str)
@pytest.mark.parametrize("dtype", [mx.float16, mx.bfloat16, mx.float32], ids=str)
def test_quantized_matmul_matches_the_dequantized_product(dtype, rows, k, n, group):
    mx.random.seed(rows + k + n + group)
    x = (mx.random.normal((1, rows, k)) * 0.5).astype(dtype)
    w = (mx.random.normal((n, k)) * 0.1).astype(dtype)
    packed, scales, biases = mx.quantize(w, group_size=group, bits=4)
    dense = mx.dequantize(packed, scales, biases, group_size=group, bits=4).astype(mx.float32)
    want = x.astype(mx.float32) @ dense.T
    got = mx.quantized_matmul(x, packed, scales, biases, transpose=True, group_size=group,
                              bits=4).astype(mx.float32)
    scale = mx.abs(want).max().item()
    assert mx.abs(got - want).max().item() <= TOLERANCE[dtype] * scale, (
        f"MLX's {dtype} quantized_matmul of {rows}x{k} by {n}x{k} (groups of {group}) is off "
        f"the dequantized product: {(got == 0).sum().item()} of {got.size} outputs are zero")


# (query rows, keys before them, head dimension): a prefill, decode steps, a chunk after a prefix
ATTENTION = [(40, 0, 64), (1, 40, 64), (7, 40, 64), (128, 0, 64), (1, 131, 128)]


@pytest.mark.parametrize("rows,offset,head_dim", ATTENTION, ids=str)
@pytest.mark.parametrize("dtype", [mx.float16, mx.bfloat16, mx.float32], ids=str)
def test_attention_over_a_masked_bucket_matches_the_exact_keys(dtype, rows, offset, head_dim):
    mx.random.seed(rows + offset + head_dim)
    heads, kv_heads, length = 8, 2, offset + rows
    q = mx.random.normal((1, heads, rows, head_dim)).astype(dtype)
    k, v = (mx.random.normal((1, kv_heads, length, head_dim)).astype(dtype) for _ in range(2))
    scale = head_dim ** -0.5
    keys, values = (mx.repeat(a.astype(mx.float32), heads // kv_heads, axis=1) for a in (k, v))
    scores = (q.astype(mx.float32) * scale) @ keys.transpose(0, 1, 3, 2)
    allowed = mx.arange(length)[None] <= mx.arange(rows)[:, None] + offset
    want = mx.softmax(mx.where(allowed, scores, -mx.inf), axis=-1) @ values

    # the bucket and mask a StaticKVCache hands a model: the first keys written, then the mask
    # asked before the rows' own write (as mlx-lm's models ask it)
    cache = lm.StaticKVCache()
    if offset:
        cache.update_and_fetch(k[:, :, :offset], v[:, :, :offset])
    mask = cache.make_mask(rows)
    bucket_keys, bucket_values = cache.update_and_fetch(k[:, :, offset:], v[:, :, offset:])
    exact = mx.fast.scaled_dot_product_attention(q, k, v, scale=scale,
                                                 mask="causal" if rows > 1 else None)
    bucket = mx.fast.scaled_dot_product_attention(q, bucket_keys, bucket_values, scale=scale,
                                                  mask=mask)
    tol = {mx.float16: 5e-3, mx.bfloat16: 4e-2, mx.float32: 1e-4}[dtype]
    for label, got in (("exact keys, causal", exact), ("a masked bucket", bucket)):
        err = mx.abs(got.astype(mx.float32) - want).max().item()
        assert err <= tol, f"MLX's {dtype} attention over {label}: {err} from float32"
