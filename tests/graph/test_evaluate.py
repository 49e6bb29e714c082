"""`evaluate` takes MLX, NumPy and JAX arrays on both backends, checks them against the trace, and
names the extra to install when the JAX oracle is missing."""

import pathlib
import subprocess
import sys

import mlx.core as mx
import numpy as np
import pytest

import mlxtriton
from mlxtriton.graph import EvaluationError


def _graph():
    def f(tree, scale):
        return mx.softmax(tree["x"], axis=-1) * tree["w"].astype(mx.float32) * scale

    x, w = mx.random.normal((3, 5), key=mx.random.key(0)), mx.arange(5).astype(mx.bfloat16)
    return mlxtriton.trace(f)({"x": x, "w": w}, 2.0), x, w


def test_numpy_and_jax_arrays_evaluate_like_mlx_arrays_on_both_backends():
    jnp = pytest.importorskip("jax.numpy")
    ml_dtypes = pytest.importorskip("ml_dtypes")
    graph, x, w = _graph()
    want = np.array(mlxtriton.evaluate(graph, {"x": x, "w": w}, 2.0))
    w_np = np.arange(5).astype(ml_dtypes.bfloat16)
    for x_in, w_in in ((np.array(x), w_np), (jnp.asarray(np.array(x)), jnp.asarray(w_np))):
        got_mlx = mlxtriton.evaluate(graph, {"x": x_in, "w": w_in}, 2.0)
        assert isinstance(got_mlx, mx.array) and np.array_equal(np.array(got_mlx), want)
        got_jax = mlxtriton.evaluate(graph, {"x": x_in, "w": w_in}, 2.0, backend="jax")
        np.testing.assert_allclose(np.asarray(got_jax), want, rtol=1e-6, atol=1e-7)


def test_a_foreign_array_of_another_dtype_or_a_static_value_change_is_named():
    graph, x, w = _graph()
    with pytest.raises(EvaluationError, match=r"input 0 was traced as f32\[3,5\] but got f64\[3,5\]"):
        mlxtriton.evaluate(graph, {"x": np.array(x).astype(np.float64), "w": w}, 2.0)
    with pytest.raises(mlxtriton.PyTreeError, match="do not match the traced structure"):
        mlxtriton.evaluate(graph, {"x": np.array(x), "w": w}, 3.0)


def test_the_oracle_without_jax_names_the_extra_to_install():
    code = (
        "import sys; sys.modules['jax'] = None\n"  # `import jax` now fails as if not installed
        "import mlx.core as mx, mlxtriton\n"
        "g = mlxtriton.trace(lambda x: x + 1)(mx.ones(2))\n"
        "try:\n"
        "    mlxtriton.evaluate(g, mx.ones(2), backend='jax')\n"
        "except ModuleNotFoundError as e:\n"
        "    print(e)\n"
    )
    root = pathlib.Path(__file__).resolve().parents[2]
    out = subprocess.run([sys.executable, "-c", code], cwd=root, capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    assert "pip install 'mlxtriton[oracle]'" in out.stdout and "needs JAX" in out.stdout
