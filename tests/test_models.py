"""Real model code traced, printed (golden), and evaluated with MLX (bit-identical on CPU to
calling the model) and with the JAX oracle (within float32 tolerance)."""

import mlx.core as mx
import numpy as np
import pytest

import mlxtriton
from mlxtriton import examples
from mlxtriton.graph import verify
from tests.conftest import BACKEND
from tests.golden import check_golden

CASES = {
    "mlp": lambda: examples.init_eval(examples.MLP()),
    "llama": lambda: examples.init_eval(examples.LlamaBlock()),
    "conv": lambda: examples.init_eval(examples.ConvBNReLU()),
    "cross_entropy": lambda: examples.cross_entropy_loss,
    "indexing": lambda: examples.indexing_mix,
}


@pytest.mark.parametrize("name", sorted(CASES))
def test_model_traces_prints_and_evaluates(name):
    fn = CASES[name]()
    args = examples.example_inputs(name)
    graph = verify(mlxtriton.trace(fn)(*args))
    if BACKEND == "cpu":  # other backends trace fast ops as primitives: another graph
        check_golden(f"model_{name}.txt", str(graph))

    expected = fn(*args)
    got = mlxtriton.evaluate(graph, *args)
    assert got.shape == expected.shape and got.dtype == expected.dtype
    if BACKEND == "cpu":
        assert mx.array_equal(got, expected, equal_nan=True).item(), "MLX evaluation is not bit-identical"
    else:  # a GPU may run a fused MLX kernel where the graph holds its decomposition
        np.testing.assert_allclose(np.array(got), np.array(expected), rtol=2e-5, atol=2e-5)

    oracle = mlxtriton.evaluate(graph, *args, backend="jax")
    np.testing.assert_allclose(np.asarray(oracle), np.array(expected), rtol=2e-5, atol=2e-5)
