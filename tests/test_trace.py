"""Tracing unmodified MLX code: pytrees in and out, static arguments, captured state, module
parameters as inputs, and the clear errors for bad input."""

import mlx.core as mx
import mlx.nn as nn
import numpy as np
import pytest

import mlxtriton
from mlxtriton import examples
from mlxtriton.graph import EvaluationError, PyTreeError, UnsupportedPrimitiveError, verify
from mlxtriton.graph import primitives


def test_pytrees_in_and_out_are_rebuilt():
    def f(inputs, scale=1.0):
        a, (b, c) = inputs["a"], inputs["pair"]
        return {"sum": a + b * scale, "parts": [mx.exp(c), (a * 2.0,)]}

    args = {"a": mx.ones((2, 3)), "pair": (mx.full((2, 3), 2.0), mx.zeros((4,)))}
    g = verify(mlxtriton.trace(f)(args, scale=3.0))
    assert len(g.inputs) == 3
    out = mlxtriton.evaluate(g, args, scale=3.0)
    ref = f(args, scale=3.0)
    assert set(out) == {"sum", "parts"} and isinstance(out["parts"], list)
    assert isinstance(out["parts"][1], tuple)
    for a, b in [(out["sum"], ref["sum"]), (out["parts"][0], ref["parts"][0]),
                 (out["parts"][1][0], ref["parts"][1][0])]:
        assert mx.array_equal(a, b).item()


def test_python_scalars_are_static_and_part_of_the_identity():
    f = lambda x, n: x * n  # noqa: E731
    g2 = mlxtriton.trace(f)(mx.ones(3), 2.0)
    g3 = mlxtriton.trace(f)(mx.ones(3), 3.0)
    assert len(g2.inputs) == 1 and g2 != g3
    with pytest.raises(PyTreeError, match="expected"):
        mlxtriton.evaluate(g2, mx.ones(3), 3.0)  # traced with n=2.0


def test_static_argnums_and_argnames():
    class Mode:  # an arbitrary hashable object, allowed once declared static
        def __init__(self, k):
            self.k = k

        def __hash__(self):
            return hash(self.k)

        def __eq__(self, other):
            return isinstance(other, Mode) and other.k == self.k

    def f(x, mode, *, axis):
        return mx.sum(x * mode.k, axis=axis)

    x = mx.ones((2, 3))
    # undeclared, an object is state: its Python values are part of the graph's identity
    assert mlxtriton.trace(f)(x, Mode(2), axis=1) != mlxtriton.trace(f)(x, Mode(3), axis=1)
    with pytest.raises(PyTreeError, match="argument 1 is a .*function"):
        mlxtriton.trace(lambda x, fn: fn(x))(x, lambda v: v)
    g = mlxtriton.trace(f, static_argnums=1, static_argnames="axis")(x, Mode(2), axis=1)
    assert g.outputs[0].shape == (2,)
    assert mx.array_equal(mlxtriton.evaluate(g, x, Mode(2), axis=1), f(x, Mode(2), axis=1)).item()
    with pytest.raises(PyTreeError):
        mlxtriton.evaluate(g, x, Mode(3), axis=1)


def test_non_array_arguments_get_a_clear_error():
    g = mlxtriton.trace(lambda d: d["w"] * 2)({"w": np.ones(3, np.float32)})  # as MLX converts
    assert g.inputs[0].type_str() == "f32[3]"
    with pytest.raises(PyTreeError, match="static argument 1 is not hashable: it is a list of 2"):
        mlxtriton.trace(lambda x, s: x, static_argnums=1)(mx.ones(2), [1, 2])


def test_non_array_results_are_rejected():
    with pytest.raises(mlxtriton.TraceError, match="must return arrays"):
        mlxtriton.trace(lambda x: (x, 3))(mx.ones(2))


def test_captured_arrays_become_constants():
    w = mx.arange(6, dtype=mx.float32).reshape(2, 3)
    g = mlxtriton.trace(lambda x: x * w)(mx.ones((2, 3)))
    assert len(g.inputs) == 1
    assert any(mx.array_equal(a, w).item() for _, a in g.constants)


def test_lazily_initialised_module_state_never_leaks_into_the_graph():
    model = nn.Sequential(nn.Linear(4, 8), nn.ReLU(), nn.Linear(8, 2))  # weights still lazy
    g = verify(mlxtriton.trace(model)(mx.ones((3, 4))))
    families = {primitives.get(e.primitive).family for e in g.eqns}
    assert primitives.Family.RANDOM not in families
    assert len(g.constants) >= 4  # two weights, two biases


def test_functionalize_makes_parameters_inputs():
    model = examples.init_eval(examples.MLP(dims=8, hidden_dims=16))
    apply, params = mlxtriton.functionalize(model)
    x = mx.random.normal((2, 8))
    g = verify(mlxtriton.trace(apply)(params, x))
    n_params = len(nn.utils.tree_flatten(params))
    assert len(g.inputs) == n_params + 1
    assert all(a.size <= 1 for _, a in g.constants)  # only scalars (eps, 1/N, ...) remain
    assert mx.array_equal(mlxtriton.evaluate(g, params, x), model(x)).item()
    # new weights, same graph: no retracing needed
    new = nn.utils.tree_map(lambda p: p * 0.5, params)
    assert mx.array_equal(mlxtriton.evaluate(g, new, x), apply(new, x)).item()
    # the module itself is left as it was
    assert mx.array_equal(model(x), apply(params, x)).item()
    with pytest.raises(PyTreeError, match="do not match"):
        apply({"fc1": params["fc1"]}, x)


def test_unsupported_primitive_is_named(monkeypatch):
    monkeypatch.delitem(primitives.PRIMITIVES, "Sin")
    with pytest.raises(UnsupportedPrimitiveError, match="'Sin'"):
        mlxtriton.trace(lambda x: mx.sin(x) + 1.0)(mx.ones(3))


def test_evaluate_checks_shapes_dtypes_and_counts():
    g = mlxtriton.trace(lambda x: mx.exp(x))(mx.ones((2, 3)))
    with pytest.raises(EvaluationError, match=r"input 0 was traced as f32\[2,3\] but got f32\[3,2\]"):
        mlxtriton.evaluate(g, mx.ones((3, 2)))
    with pytest.raises(EvaluationError, match=r"but got f16\[2,3\]"):
        mlxtriton.evaluate(g, mx.ones((2, 3), dtype=mx.float16))
    with pytest.raises(PyTreeError):
        mlxtriton.evaluate(g, mx.ones((2, 3)), mx.ones((2, 3)))
    with pytest.raises(PyTreeError):
        mlxtriton.evaluate(g, [mx.ones((2, 3))])
    with pytest.raises(ValueError, match="unknown backend"):
        mlxtriton.evaluate(g, mx.ones((2, 3)), backend="torch")


def test_identity_and_constant_outputs():
    c = mx.array([1.0, 2.0])
    g = verify(mlxtriton.trace(lambda x: (x, c, x))(mx.zeros(2)))
    a, b, d = mlxtriton.evaluate(g, mx.ones(2))
    assert mx.array_equal(a, mx.ones(2)).item() and mx.array_equal(b, c).item()
    assert g.outputs[0] is g.outputs[2]


def test_fast_cross_entropy_traces_as_its_definition():
    """mx.fast.cross_entropy (no exportable state on a GPU) is traced as logsumexp(x) - x[t]:
    the same values as MLX's, special values included, and no trace of it left afterwards."""
    x = mx.array([[1.0, float("inf"), 0.5], [0.0, 2.0, -1.0], [float("-inf"), 1.0, float("nan")]])
    t = mx.array([0, 2, 1])
    fn = lambda x: mx.fast.cross_entropy(x, t)  # noqa: E731
    graph = mlxtriton.trace(fn)(x)
    assert "LogSumExp" in graph.primitive_counts()
    want = fn(x)
    got = mlxtriton.optimize(fn)(x)
    assert got.dtype == want.dtype == mx.float32
    assert np.array_equal(np.array(got), np.array(want), equal_nan=True)
    assert mx.fast.cross_entropy is not None and "mlxtriton" not in getattr(
        mx.fast.cross_entropy, "__module__", "")


def _branches_on_a_value(x):
    if x.sum() > 0:
        return x * 2
    return x - 1


def test_reading_an_array_value_while_tracing_is_a_clear_error_naming_the_line():
    with pytest.raises(mlxtriton.TraceError) as info:
        mlxtriton.optimize(_branches_on_a_value)(mx.ones(3))
    message = str(info.value)
    assert message.startswith("cannot trace _branches_on_a_value: it reads an array's value at ")
    assert "test_trace.py" in message and "(if x.sum() > 0:)" in message
    assert "static_argnums" in message and "mx.where" in message


COUNT = mx.array(0.0)


def test_rebinding_a_captured_name_is_a_clear_error():
    """``global`` / ``nonlocal`` rebinding runs once, when traced: later calls would neither see
    nor make it (silently). The trace refuses, naming it, and puts the old value back."""
    def counts(x):
        global COUNT
        COUNT = COUNT + 1
        return x * COUNT

    with pytest.raises(mlxtriton.TraceError, match="rebinds the global 'COUNT'"):
        mlxtriton.optimize(counts)(mx.ones(2))
    assert COUNT.item() == 0.0

    def make():
        total = mx.array(0.0)

        def accumulate(x):
            nonlocal total
            total = total + x.sum()
            return total

        return accumulate, lambda: total

    accumulate, total = make()
    with pytest.raises(mlxtriton.TraceError, match="rebinds the nonlocal 'total'"):
        mlxtriton.optimize(accumulate)(mx.ones(2))
    assert total().item() == 0.0

    class Counting(nn.Module):  # a module's __call__ alike
        def __call__(self, x):
            global COUNT
            COUNT = COUNT + 1
            return x * COUNT

    with pytest.raises(mlxtriton.TraceError, match="rebinds the global 'COUNT'"):
        mlxtriton.optimize(Counting())(mx.ones(2))
    assert COUNT.item() == 0.0
