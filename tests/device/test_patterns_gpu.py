"""The pattern stage on a GPU stream, with real launches (``pytest -m cuda`` on the H200, ``-m
metal`` on a Mac): traces there hold fast-op primitives, so what the rewrites meet differs from
the CPU's decompositions. Written-out attention becomes mx.fast SDPA; on CUDA a LayerNorm
primitive is decomposed and fused with its residual add into one generated kernel."""

import mlx.core as mx
import numpy as np
import pytest

import mlxtriton
from mlxtriton import examples

pytestmark = [pytest.mark.cuda, pytest.mark.metal]


def _close(got, want, tol):
    np.testing.assert_allclose(np.array(got.astype(mx.float32)), np.array(want.astype(mx.float32)),
                               rtol=tol, atol=tol)


@pytest.mark.parametrize("dtype", [mx.float32, mx.bfloat16], ids=["f32", "bf16"])
def test_written_out_attention_runs_as_sdpa(dtype):
    q = mx.random.normal((2, 8, 128, 64)).astype(dtype)
    k = mx.random.normal((2, 2, 128, 64)).astype(dtype)
    mask = examples.causal_mask(128, dtype)

    def attention(q, k, v):
        k, v = mx.repeat(k, 4, axis=1), mx.repeat(v, 4, axis=1)
        return mx.softmax((q * 0.125) @ k.swapaxes(-1, -2) + mask, axis=-1, precise=True) @ v

    f = mlxtriton.optimize(attention)
    counts = f.graph(q, k, k).primitive_counts()
    assert counts == {"ScaledDotProductAttention": 1}, counts
    _close(f(q, k, k), attention(q, k, k), 1e-4 if dtype == mx.float32 else 3e-2)


def test_layer_norm_with_its_residual_add_is_one_kernel_on_cuda():
    if not (mx.is_available(mx.gpu) and not mx.metal.is_available()):
        pytest.skip("the decomposition is chosen on CUDA (measured there)")
    x, r = mx.random.normal((64, 4096)).astype(mx.bfloat16), mx.random.normal((64, 4096)).astype(mx.bfloat16)
    w, b = mx.random.normal((4096,)).astype(mx.bfloat16), mx.random.normal((4096,)).astype(mx.bfloat16)

    def residual_norm(x, r, w, b):
        return mx.fast.layer_norm(x + r, w, b, 1e-5)

    f = mlxtriton.optimize(residual_norm)
    assert f.graph(x, r, w, b).primitive_counts() == {"Fused": 1}
    _close(f(x, r, w, b), residual_norm(x, r, w, b), 3e-2)
