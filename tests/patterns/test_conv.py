"""Rule 5: batch-norm with constant statistics after a convolution folds into its weights and
bias at optimize time when the weights are constants (with weights that are arguments the scale
stays in the fused epilogue); the ReLU after it fuses with the bias add; batch-norm in training
mode is left alone."""

import mlx.core as mx
import mlx.nn as nn
import numpy as np
from hypothesis import given, settings, strategies as st

import mlxtriton
from mlxtriton import examples
from tests.patterns._check import check, misses


def conv_bn(cin=3, cout=8, bias=False, seed=0):
    m = examples.ConvBNReLU(cin, cout)
    if bias:
        m.conv = nn.Conv2d(cin, cout, 3, padding=1, bias=True)
    examples.init_eval(m, seed)
    bn = m.bn
    bn.weight = 1 + 0.1 * mx.random.normal((cout,), key=mx.random.key(seed + 1))
    bn.bias = 0.1 * mx.random.normal((cout,), key=mx.random.key(seed + 2))
    mx.eval(m.parameters())
    return m


def x_of(n=2, hw=6, c=3, dtype=mx.float32):
    return mx.random.normal((n, hw, hw, c), key=mx.random.key(7)).astype(dtype)


def test_inference_batch_norm_folds_into_constant_weights():
    for bias in (False, True):
        m = conv_bn(bias=bias)
        g2, report = check(m, x_of(), tol=1e-4)
        assert set(g2.primitive_counts()) == {"Convolution", "Add", "Broadcast", "Maximum"}, g2
        conv = next(e for e in g2.eqns if e.primitive == "Convolution")
        w = g2.const_values[conv.inputs[1]]
        assert not np.allclose(np.array(w), np.array(m.conv.weight))  # new, folded weights
        assert {f.rule for f in report.fired} >= {"conv_shift", "conv_scale"}


def test_weights_that_are_arguments_keep_the_scale_in_the_fused_epilogue():
    m = conv_bn()
    f = mlxtriton.optimize(m)  # a module's parameters are graph inputs
    x = x_of()
    np.testing.assert_allclose(np.array(f(x)), np.array(m(x)), rtol=1e-4, atol=1e-4)
    g = f.graph(x)
    (conv,) = [e for e in g.eqns if e.primitive == "Convolution"]
    assert conv.inputs[1] in g.inputs  # the weights as passed
    (epilogue,) = [e for e in g.eqns if e.primitive == "Fused" and conv.outputs[0] in e.inputs]
    assert "Maximum" in epilogue.params["body"].primitive_counts()  # shift, scale and ReLU: one kernel
    text = str(f.explain(x))
    assert "rewrote conv_shift at #" in text and "are arguments, not constants" in text


def test_training_mode_is_left_alone():
    m = conv_bn()
    m.train()
    g2, report = check(m, x_of(), tol=1e-4)
    assert "Reduce" in g2.primitive_counts()
    assert any("batch-norm in training mode" in s for s in misses(report))


@settings(max_examples=5)
@given(cout=st.sampled_from([1, 4, 8]), dtype=st.sampled_from([mx.float32, mx.bfloat16]), bias=st.booleans())
def test_folding_matches_the_oracle(cout, dtype, bias):
    m = conv_bn(cout=cout, bias=bias)
    m.set_dtype(dtype)
    g2, _ = check(m, x_of(dtype=dtype), tol=1e-4 if dtype == mx.float32 else 1e-1)
    assert "Subtract" not in g2.primitive_counts()
