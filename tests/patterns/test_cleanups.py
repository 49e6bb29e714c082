"""Rule 6: the algebraic clean-ups, one spelling each, the structure they leave, what they leave
alone because it is no identity, and a property over random programs: the clean-ups (and the
whole default table) keep every value. tests/patterns/test_rules.py checks each rule on its own."""

import mlx.core as mx
import numpy as np
from hypothesis import given, settings

import mlxtriton
from mlxtriton.graph import evaluate, verify
from mlxtriton.patterns import CLEANUPS, DEFAULT_RULES, rewrite
from tests.patterns._check import check
from tests.strategies import programs

X = mx.random.uniform(0.5, 2.0, (3, 4), key=mx.random.key(0))


def counts(fn, *args):
    g2, report = check(fn, *args, rules=CLEANUPS)
    return g2.primitive_counts(), report


def test_times_one_plus_zero_divide_by_one_disappear():
    for fn in (lambda x: x * 1.0, lambda x: 1.0 * x, lambda x: x + -0.0, lambda x: -0.0 + x,
               lambda x: x - 0.0, lambda x: x / 1.0):
        assert counts(fn, X)[0] == {}
    for fn in (lambda x: x + 0, lambda x: x - 0, lambda x: 0 + x):
        assert counts(fn, mx.array([[1, -2]], mx.int32))[0] == {}


def test_exp_of_log_keeps_the_nan_of_negatives():
    f = lambda x: mx.exp(mx.log(x)) * 1.5  # noqa: E731
    x = mx.array([-1.0, 2.0, 0.0])
    g2, _ = rewrite(mlxtriton.trace(f)(x), DEFAULT_RULES)
    np.testing.assert_array_equal(np.array(evaluate(g2, x)), np.array(f(x)))  # [nan, 3, 0]


def test_what_is_no_identity_stays():
    # -0.0 + 0.0 is 0.0; exp(log(x)) is NaN for x < 0 and rounds twice elsewhere.
    assert counts(lambda x: x + 0.0, X)[0] == {"Add": 1, "Broadcast": 1}
    assert counts(lambda x: x - -0.0, X)[0] == {"Subtract": 1, "Broadcast": 1}
    assert counts(lambda x: mx.exp(mx.log(x)), X)[0] == {"Exp": 1, "Log": 1}


def test_transpose_of_transpose_composes_or_vanishes():
    y = mx.ones((2, 3, 4))
    assert counts(lambda x: x.transpose(1, 0, 2).transpose(1, 0, 2), y)[0] == {}
    c, _ = counts(lambda x: x.transpose(1, 0, 2).transpose(0, 2, 1), y)
    assert c == {"Transpose": 1}


def test_reshape_chains_become_one_reshape():
    y = mx.ones((2, 3, 4))
    assert counts(lambda x: x.reshape(6, 4).reshape(24)[None], y)[0] == {"Reshape": 1}
    assert counts(lambda x: x.reshape(6, 4).reshape(2, 3, 4), y)[0] == {}


def test_division_by_a_power_of_two_is_a_multiplication_and_a_mean_is_sum_times_one_over_n():
    c, report = counts(lambda x: x / -4.0, X)
    assert c == {"Broadcast": 1, "Multiply": 1} and report.rules_fired()["divide_by_scalar"] == 1
    assert counts(lambda x: x / 3.0, X)[0] == {"Broadcast": 1, "Divide": 1}  # 1/3 rounds
    assert counts(lambda x: x / 2.0 ** -130, X)[0] == {"Broadcast": 1, "Divide": 1}  # 2^130 is no float32
    mean_by_hand, _ = counts(lambda x: x.sum(-1, keepdims=True) / x.shape[-1], X)  # 4 columns
    mean, _ = counts(lambda x: x.mean(-1, keepdims=True), X)
    assert mean_by_hand == mean == {"Broadcast": 1, "Multiply": 1, "Reduce": 1}


def test_rsqrt_and_square_spellings():
    assert counts(lambda x, y: x / mx.sqrt(y), X, X)[0] == {"Divide": 1, "Sqrt": 1}  # rsqrt rounds apart
    assert counts(lambda y: 1.0 / mx.sqrt(y), X)[0] == {"Sqrt": 1}
    assert counts(lambda x: x * x, X)[0] == {"Square": 1}
    assert counts(lambda x: x ** 2, X.astype(mx.bfloat16))[0] == {"Square": 1}
    assert counts(lambda x: x ** 2, X)[0] == {"Broadcast": 1, "Power": 1}  # float32 powf is not x * x


def test_constants_fold_and_scalars_become_broadcast_zero_d_constants():
    c0, k = mx.array(2.0), mx.array([[3.0]])
    g2, report = check(lambda x: x * (c0 * 3.0) + k, X, rules=CLEANUPS)
    assert report.rules_fired()["fold"] == 1 and report.rules_fired()["canonical_scalar"] >= 1
    assert all(v.ndim == 0 for v, _ in g2.constants)


def test_duplicates_merge_and_exact_casts_vanish():
    assert counts(lambda x: mx.exp(x) + mx.exp(x), X)[0] == {"Add": 1, "Exp": 1}
    h = X.astype(mx.bfloat16)
    assert counts(lambda x: x.astype(mx.float32).astype(mx.bfloat16), h)[0] == {}
    assert counts(lambda x: x.astype(mx.float16).astype(mx.float32), X)[0] == {"AsType": 2}  # rounds


def _close(a, b):
    a = a if isinstance(a, tuple) else (a,)
    b = b if isinstance(b, tuple) else (b,)
    for x, y in zip(a, b):
        assert x.shape == y.shape and x.dtype == y.dtype
        tol = 2e-5 if x.dtype == mx.float32 else 3e-2
        np.testing.assert_allclose(np.array(x.astype(mx.float32)), np.array(y.astype(mx.float32)),
                                   rtol=tol, atol=tol)


@settings(max_examples=40)
@given(programs())
def test_rules_keep_the_values_of_random_programs(case):
    fn, args = case
    g = mlxtriton.trace(fn)(*args)
    want = evaluate(g, *args)
    for rules in (CLEANUPS, DEFAULT_RULES):
        g2, _ = rewrite(g, rules)
        verify(g2)
        _close(evaluate(g2, *args), want)


def test_a_scatter_of_one_index_per_row_into_zeros_is_a_compare_and_select():
    # MLX's VJP of take_along_axis (cross-entropy's label pick) is this scatter; negative indices
    # wrap. The select fuses into the kernel reading it, the scatter was three passes of its own.
    u = mx.array([[1.0], [2.0], [3.0], [4.0]])
    for kind in ("put", "add"):
        def one_hot(u, i, kind=kind):
            if kind == "put":
                return mx.put_along_axis(mx.zeros((4, 6)), i, u, axis=1)
            return mx.vjp(lambda x: mx.take_along_axis(x, i, axis=1), [mx.zeros((4, 6))], [u])[1][0]

        # (MLX's CPU VJP of take_along_axis can crash on negative indices: only put wraps here)
        labels = [[5], [-1], [0], [-6]] if kind == "put" else [[5], [1], [0], [3]]
        c, report = counts(one_hot, u, mx.array(labels))
        assert report.rules_fired().get("one_hot_scatter") == 1 and "ScatterAxis" not in c
    two = mx.array([[0, 1]] * 4)  # two indices per row may collide: the scatter stays
    c, _ = counts(lambda v, i: mx.put_along_axis(mx.zeros((4, 6)), i, v, axis=1), mx.ones((4, 2)), two)
    assert c.get("ScatterAxis") == 1
