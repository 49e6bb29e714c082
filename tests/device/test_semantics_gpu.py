"""Generated kernels launched on the GPU against MLX's own ops on the same device, where the NumPy
interpreter cannot see the rendered code: ``all`` / ``any`` over values other than 0 and 1, special
values through every reduction family (split ones too), special values through pointwise math and
casts, size-0 and size-1 axes. Runs on the lent H200 (``pytest -m cuda``) and on Apple silicon
(``-m metal``)."""

import mlx.core as mx
import numpy as np
import pytest

import mlxtriton
from tests.codegen.test_ops_mlx import SPECIAL_FLOATS, to_mx, truth_rows
from tests.test_special_values import (EDGE_FUNCTIONS, EDGE_SHAPES, FAMILIES, _outcome,
                                       assert_same, special_rows)

pytestmark = [pytest.mark.cuda, pytest.mark.metal]


def _generated(fn, *args):
    """``optimize(fn)``, checked to launch at least one generated kernel for these arguments."""
    f = mlxtriton.optimize(fn)
    assert len(f.lower(*args)) >= 1, f.explain(*args)
    return f


@pytest.mark.parametrize("dtype", ["float32", "float16", "bfloat16", "int32", "uint8", "bool"])
@pytest.mark.parametrize("length", [5, 37, 300, 3000, 1 << 20])
def test_all_and_any_take_each_elements_truth(dtype, length):
    """Rows of values other than 0 and 1 (0.5, NaN, infinities, 2, 3, -1), of zeros (-0.0 too),
    one zero, one nonzero, mixed; rows of 2^20 split in two levels. The rendered reduction once
    cast each element to int32 and combined bitwise: all([1, 2]) and any(nan) were False."""
    x = to_mx(truth_rows(dtype, length, seed=length), dtype)
    for fn in (lambda x: mx.all(x, axis=-1), lambda x: mx.any(x, axis=-1), lambda x: mx.all(x),
               lambda x: mx.any(x, axis=0) if x.shape[-1] < 4096 else mx.any(x)):
        f = mlxtriton.optimize(fn)
        got, want = f(x), fn(x)
        assert got.dtype == want.dtype and mx.array_equal(got, want).item(), (dtype, length, got, want)


def test_all_and_any_examples_of_the_issue():
    # (times 3: a lone reduction is one MLX kernel already, not a generated one)
    for fn, x, want in ((lambda x: mx.all(x * 3, axis=-1), mx.array([[1, 2]] * 64), True),
                        (lambda x: mx.all(x * 3, axis=-1), mx.array([[2]] * 64), True),
                        (lambda x: mx.all(x * 3, axis=-1), mx.array([[3.0, 4.0]] * 64), True),
                        (lambda x: mx.any(x * 3, axis=-1), mx.array([[float("nan")]] * 64), True),
                        (lambda x: mx.any(x * 3, axis=-1), mx.array([[0.5, -0.25, 0.0]] * 64), True)):
        got = _generated(fn, x)(x)
        assert mx.all(got == want).item() and mx.array_equal(got, fn(x)).item(), (x, got)


@pytest.mark.parametrize("length", [1, 7, 129, 1000, 4097])
def test_special_values_through_every_reduction_family(length):
    x = mx.array(special_rows(length))
    for name, fn in FAMILIES.items():
        assert_same(mlxtriton.optimize(fn)(x), fn(x), f"{name} over rows of {length}", tol=1e-4)


@pytest.mark.parametrize("family", ["sum", "max", "prod", "logsumexp", "softmax", "argmax", "all"])
def test_special_values_through_split_reductions(family):
    fn = FAMILIES[family]
    rows = special_rows(1 << 20)[[0, 1, 3, 4, 5, 9]]
    for k in range(0, len(rows), 2):
        x = mx.array(rows[k:k + 2])
        assert_same(mlxtriton.optimize(fn)(x), fn(x), f"{family} split, rows {k}, {k + 1}", tol=1e-4)


def test_mean_over_columns_holding_both_infinities():
    """The fuzzer's program: MLX gives NaN where a column holds +inf and -inf."""
    x = np.random.default_rng(1).normal(size=(8, 129, 1)).astype(np.float32)
    x[0, ::2], x[3, ::3], x[5, 1::4] = np.inf, -np.inf, np.nan
    fn = lambda x: mx.log(2 * mx.mean(x, axis=0))
    x = mx.array(x)
    assert_same(_generated(fn, x)(x), fn(x), "mean over axis 0", tol=1e-4)


POINTWISE = {
    "power": lambda x, y: (1.0 - x) ** 0.5 + y * 0,
    "power_xy": lambda x, y: mx.power(x, y) * 2,
    "logaddexp": lambda x, y: mx.logaddexp(x, y) * 2,
    "log1p": lambda x, y: mx.log1p(x) * 2 + mx.expm1(y),
    "maximum": lambda x, y: mx.maximum(x, y) * mx.minimum(x, y),
    "remainder": lambda x, y: mx.remainder(x, y) + mx.floor_divide(x, y),
    "sign_round": lambda x, y: mx.sign(x) + mx.round(y) * 2,
    "sigmoid_erf": lambda x, y: mx.sigmoid(x) + mx.erf(y),
}


@pytest.mark.parametrize("name", sorted(POINTWISE))
def test_special_values_through_pointwise_math(name):
    values = np.array(SPECIAL_FLOATS, np.float32)
    x, y = (mx.array(a.ravel()) for a in np.meshgrid(values, values))
    fn = POINTWISE[name]
    assert_same(_generated(fn, x, y)(x, y), fn(x, y), name, tol=1e-5, elementwise=True)


def test_casts_of_special_values_to_int32():
    """In range, casts are exact; out of range (NaN, infinities, 1e10) C leaves them undefined,
    the kernel IR saturates and takes NaN to 0, and so do CUDA's and Metal's conversions that
    MLX's own casts compile to."""
    x = mx.array(SPECIAL_FLOATS + [2.5e9, -2.5e9, 2147483520.0, -2147483648.0], mx.float32)
    fn = lambda x: (x * 1.0).astype(mx.int32) + 1
    assert mx.array_equal(_generated(fn, x)(x), fn(x)).item()


# MLX 0.32.4's own CUDA kernels abort the process on an empty input (measured on an H100: the
# plain functions, before optimize is called)
MLX_ABORTS_ON_EMPTY = {"layer_norm", "rms_norm", "cross_entropy"}


@pytest.mark.parametrize("shape", EDGE_SHAPES, ids=lambda s: "x".join(map(str, s)))
def test_size_0_and_size_1_axes(shape):
    x = mx.random.normal(shape, key=mx.random.key(0))
    for name, fn in EDGE_FUNCTIONS.items():
        if 0 in shape and name in MLX_ABORTS_ON_EMPTY:
            continue
        want, got = _outcome(fn, x), _outcome(mlxtriton.optimize(fn), x)
        if isinstance(want, ValueError):
            assert isinstance(got, ValueError) and str(got) == str(want), (name, got, want)
        else:
            assert isinstance(got, mx.array), (name, got)
            assert_same(got, want, f"{name} of {shape}", tol=1e-4)


@pytest.mark.parametrize("length", [41, 47, 4096, 4097])
def test_layer_norm_without_eps_over_constant_rows(length):
    """mx.fast.layer_norm with eps = 0: a constant row is 0 / 0, NaN in MLX's kernel wherever
    its mean is exact (41 / 41 is 1); the generated kernel divides its sums as MLX's does."""
    x = mx.concatenate([mx.ones((2, length)), mx.full((2, length), 3.0),
                        mx.random.normal((2, length), key=mx.random.key(5))])
    w, b = mx.random.normal((length,), key=mx.random.key(6)), mx.zeros((length,))
    fn = lambda x: mx.fast.layer_norm(x, w, b, 0.0) * 2
    assert_same(_generated(fn, x)(x), fn(x), f"layer norm over rows of {length}", tol=1e-4)
