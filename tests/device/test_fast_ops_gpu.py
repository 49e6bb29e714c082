"""Fast ops on a GPU stream are primitives (on the CPU stream they decompose): trace them live on
the device, check the decoded params, evaluate with MLX (bit-identical) and with the JAX oracle.
Runs on the lent H200 (``pytest -m cuda``) and on Apple silicon (``-m metal``)."""

import mlx.core as mx
import numpy as np
import pytest

import mlxtriton
from mlxtriton.graph import verify

pytestmark = [pytest.mark.cuda, pytest.mark.metal]


def _check(fn, args, primitive, expected_params, rtol=2e-5, atol=2e-5, required=True):
    graph = verify(mlxtriton.trace(fn)(*args))
    eqns = [e for e in graph.eqns if e.primitive == primitive]
    if required:
        assert eqns, f"{primitive} did not appear as a primitive on the GPU stream:\n{graph}"
    for k, v in expected_params.items() if eqns else ():
        got = eqns[0].params[k]
        assert got == pytest.approx(v) if isinstance(v, float) else got == v, (k, got, v)
    expected = fn(*args)
    got = mlxtriton.evaluate(graph, *args)
    outs = expected if isinstance(expected, tuple) else (expected,)
    gots = got if isinstance(got, tuple) else (got,)
    for e, g in zip(outs, gots):
        assert mx.array_equal(e, g).item()
    oracle = mlxtriton.evaluate(graph, *args, backend="jax")
    oracles = oracle if isinstance(oracle, tuple) else (oracle,)
    for e, o in zip(outs, oracles):
        np.testing.assert_allclose(np.asarray(o, np.float32), np.array(e.astype(mx.float32)), rtol=rtol, atol=atol)
    return graph


def test_rms_norm():
    x, w = mx.random.normal((4, 64)), mx.random.normal((64,))
    _check(lambda x, w: mx.fast.rms_norm(x, w, 1e-5), (x, w), "RMSNorm", {"eps": 1e-5})
    _check(lambda x: mx.fast.rms_norm(x, None, 1e-6), (x,), "RMSNorm", {"eps": 1e-6})


def test_layer_norm():
    x, w, b = mx.random.normal((4, 64)), mx.random.normal((64,)), mx.random.normal((64,))
    _check(lambda x, w, b: mx.fast.layer_norm(x, w, b, 1e-5), (x, w, b), "LayerNorm", {"eps": 1e-5})
    _check(lambda x: mx.fast.layer_norm(x, None, None, 1e-4), (x,), "LayerNorm", {"eps": 1e-4})


@pytest.mark.parametrize("traditional", [False, True])
def test_rope(traditional):
    x = mx.random.normal((1, 2, 8, 16))
    fn = lambda x: mx.fast.rope(x, 16, traditional=traditional, base=10000.0, scale=1.0, offset=3)  # noqa: E731
    _check(fn, (x,), "RoPE", {"dims": 16, "traditional": traditional, "base": 10000.0, "scale": 1.0},
           rtol=1e-4, atol=1e-4)


# MLX runs SDPA as one primitive only where it has a kernel for the case (on CUDA: a vector kernel
# for short queries, cuDNN for float16/bfloat16 prefill); elsewhere it decomposes even on a GPU.
SDPA_CASES = {
    "decode": ((1, 4, 1, 64), (1, 2, 32, 64), mx.float32),
    "prefill_f16": ((1, 4, 128, 64), (1, 2, 128, 64), mx.float16),
}


@pytest.mark.parametrize("case", sorted(SDPA_CASES))
@pytest.mark.parametrize("mask", [None, "causal", "array"])
def test_scaled_dot_product_attention(case, mask):
    q_shape, kv_shape, dtype = SDPA_CASES[case]
    if case == "decode" and mask == "causal":
        pytest.skip("a one-token query has nothing to mask causally")
    q, k, v = (mx.random.normal(s, key=mx.random.key(i)).astype(dtype)
               for i, s in enumerate((q_shape, kv_shape, kv_shape)))
    # MLX's CUDA vector kernel (a one-token query) is within 2e-4 of exact float32 attention
    tol = 5e-4 if dtype == mx.float32 else 2e-2
    if mask == "array":
        m = mx.random.normal((1, 1, q_shape[2], kv_shape[2])).astype(dtype)
        fn = lambda q, k, v, m: mx.fast.scaled_dot_product_attention(q, k, v, scale=0.125, mask=m)  # noqa: E731
        args = (q, k, v, m)
    else:
        fn = lambda q, k, v: mx.fast.scaled_dot_product_attention(q, k, v, scale=0.125, mask=mask)  # noqa: E731
        args = (q, k, v)
    # Which masks each MLX kernel takes is MLX's choice: the graph must hold the primitive for the
    # plain cases and, either way, evaluate to what MLX computes.
    required = mask is None or (case == "prefill_f16" and mask == "causal")
    g = _check(fn, args, "ScaledDotProductAttention", {"scale": 0.125}, rtol=tol, atol=tol,
               required=required)
    for e in g.eqns:
        if e.primitive == "ScaledDotProductAttention":
            assert e.params["do_causal"] == (mask == "causal")


def test_llama_block_with_fast_attention_traces_on_gpu():
    from mlxtriton import examples

    block = examples.init_eval(examples.LlamaBlock(fast_attention=True))
    (x,) = examples.example_inputs("llama")
    graph = verify(mlxtriton.trace(block)(x))
    counts = graph.primitive_counts()
    assert counts.get("RMSNorm") == 2 and counts.get("RoPE") == 2
    assert mx.array_equal(mlxtriton.evaluate(graph, x), block(x)).item()


@pytest.mark.parametrize("dtype", [mx.float32, mx.bfloat16], ids=["f32", "bf16"])
def test_cross_entropy_traces_on_the_gpu_as_its_definition(dtype):
    """mx.fast.cross_entropy has no exportable state on the GPU: it is traced as its definition
    (float32 logsumexp minus the target's logit) on the GPU stream, with no CPU-stream fallback,
    so nn.losses.cross_entropy keeps its GPU branch and rows holding infinities give MLX's
    kernel's infinities."""
    import warnings

    import mlx.nn as nn

    x = mx.random.normal((6, 300), key=mx.random.key(0)).astype(dtype)
    x[1, 7] = float("inf")
    x[2, 3] = float("-inf")
    t = mx.array([0, 1, 3, 299, 5, 6])
    fn = lambda x: nn.losses.cross_entropy(x, t)  # noqa: E731
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        graph = mlxtriton.trace(fn)(x)
        got = mlxtriton.optimize(fn)(x)
    assert "LogSumExp" in graph.primitive_counts()
    want = fn(x)
    assert got.dtype == want.dtype
    np.testing.assert_allclose(np.array(got.astype(mx.float32)), np.array(want.astype(mx.float32)),
                               rtol=1e-2 if dtype == mx.bfloat16 else 1e-5)
