"""The pattern stage in the runtime: `optimize` runs patterns -> fuse -> layout -> cache,
`mlxtriton.rewrite` is the stage alone and composes with the others, `.graph()` is the optimised
graph, `.explain()` says which rule fired where and why near misses did not, and the example
model blocks keep their outputs."""

import mlx.core as mx
import numpy as np

import mlxtriton
from mlxtriton import examples
from mlxtriton.runtime.compiled import PIPELINE


def close(a, b, tol=1e-4):
    np.testing.assert_allclose(np.array(a), np.array(b), rtol=tol, atol=tol)


def test_pipeline_order_and_combinators():
    assert PIPELINE == ("patterns", "fuse", "layout", "cache")
    f = mlxtriton.rewrite(mlxtriton.fuse(mx.exp))
    assert f.passes == {"patterns", "fuse"}
    assert mlxtriton.optimize(mx.exp).passes == set(PIPELINE)
    assert "patterns" not in mlxtriton.kernel(mx.exp).passes  # one generated kernel, not mx.fast


def test_llama_block_optimized_graph_and_explanation():
    block = examples.init_eval(examples.LlamaBlock())
    (x,) = examples.example_inputs("llama")
    f = mlxtriton.optimize(block)
    close(f(x), block(x))
    counts = f.graph(x).primitive_counts()
    assert counts["ScaledDotProductAttention"] == 1 and counts["RMSNorm"] == 2 and counts["RoPE"] == 2
    assert "Softmax" not in counts and "Square" not in counts
    explanation = f.explain(x)
    assert [s.stage for s in explanation.stages] == list(PIPELINE)
    report = explanation.stages[0].report
    assert {r.rule for r in report.fired} >= {"attention", "rms_norm", "rope", "matmul_add"}
    text = str(explanation)
    assert "-- patterns:" in text and "rewrote attention at #" in text and "(4:2 heads)" in text
    assert "recognised swiglu_gate at #" in text


def test_explain_names_near_misses():
    q = mx.random.normal((1, 2, 4, 8))

    def attention_over_queries(q, k, v):
        return mx.softmax(q @ k.swapaxes(-1, -2), axis=2) @ v

    text = str(mlxtriton.optimize(attention_over_queries).explain(q, q, q))
    assert "near miss: attention at #" in text and "softmax over axis 2, not the last axis" in text

    def probabilities_too(q, k, v):
        p = mx.softmax(q @ k.swapaxes(-1, -2), axis=-1)
        return p @ v, p

    text = str(mlxtriton.rewrite(probabilities_too).explain(q, q, q))
    assert "intermediate #" in text and "is also used elsewhere" in text


def test_model_blocks_keep_their_outputs():
    for name, module in (("mlp", examples.MLP()), ("conv", examples.ConvBNReLU())):
        m = examples.init_eval(module)
        args = examples.example_inputs(name)
        f = mlxtriton.optimize(m)
        close(f(*args), m(*args))
    g = mlxtriton.optimize(examples.init_eval(examples.MLP())).graph(*examples.example_inputs("mlp"))
    assert g.primitive_counts()["LayerNorm"] == 1
