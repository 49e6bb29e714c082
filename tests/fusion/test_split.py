"""Two-level reductions: a long reduction over too few rows for the chip is split into a row kernel
over segments and a second over the partials. The split graph computes what the traced one does
(JAX oracle, every reducing kind), the pointwise work feeding it moves into the first kernel, and
`@kernel` never splits."""

import math

import mlx.core as mx
import numpy as np
import pytest
from hypothesis import assume, given, settings, strategies as st

import mlxtriton
from mlxtriton.fusion import fuse_with_report
from mlxtriton.fusion.split import split_reductions
from mlxtriton.graph import evaluate, verify
from tests.codegen import metal_check
from tests.codegen.targets import tuned
from tests.fusion.test_properties import check_bodies


# Tiny test arrays split as the chip would split large ones: every chip's tuning data with no
# minimum size and short segments.
SMALL = dict(split_min_bytes=0, arg_split_min_bytes=0, split_min_segment=4)


@pytest.fixture
def small():
    with tuned(None, **SMALL):
        yield


def _np(a):
    a = a.astype(mx.float32) if isinstance(a, mx.array) else a
    return np.asarray(a).astype(np.float64)


def _close(want, got, tol):
    want = want if isinstance(want, (tuple, list)) else (want,)
    got = got if isinstance(got, (tuple, list)) else (got,)
    assert len(want) == len(got)
    for a, b in zip(want, got):
        assert a.shape == b.shape and str(a.dtype) == str(b.dtype)
        t = max(tol, 2e-2) if "bfloat16" in str(a.dtype) else tol
        np.testing.assert_allclose(_np(a), _np(b), rtol=t, atol=t, equal_nan=True)


def _trace(fn, *args):
    return mlxtriton.trace(fn)(*args)


def test_a_full_sum_is_split_to_fill_the_chip():
    g = _trace(lambda x: mx.sum(x * x), mx.ones((1 << 20,)))
    split, decisions = split_reductions(g, "h200")
    (d,) = decisions
    # 4 threadgroups per SM on 132 SMs asks for 528; 1M / 4096 allows 256.
    assert (d.rows, d.length, d.segments, d.cores) == (1, 1 << 20, 256, 132)
    assert "-> 256 x 4096 then 1 x 256" in d.as_text()
    verify(split)
    fused, report = fuse_with_report(g, "h200")
    assert [(r.kind, r.shape) for r in report.regions] == [("row", (256, 4096)), ("row", (256,))]
    assert report.splits == (d,) and str(report).startswith("split: traced eqn 1 Reduce sum")
    # The square fused into the first level, which reads x itself (its reshape is index arithmetic).
    first = next(e for e in fused.eqns if e.primitive == "Fused")
    assert first.inputs[0].shape == (1 << 20,) and "Multiply" in first.params["body"].primitive_counts()
    # An M3 (10 cores) asks for 40: the largest divisor of 2^20 below is 32.
    assert split_reductions(g, "m3")[1][0].segments == 32


@pytest.mark.parametrize("shape, axis, why", [
    ((256, 65536), -1, "rows fill the chip"),
    ((1000,), None, "too small to be worth a second kernel"),
    ((1, 1 << 20), 0, "a million columns fill the chip"),
])
def test_no_split(shape, axis, why):
    g = _trace(lambda x: mx.sum(x, axis=axis), mx.ones(shape))
    assert split_reductions(g, "h200")[1] == [], why
    assert split_reductions(g, None)[1] == []


def test_an_argmax_splits_from_half_the_size():
    # one threadgroup's argmax is slower per element than its sum (split_threshold_h200.json)
    x = mx.ones((1 << 17,))  # 512 KiB
    assert split_reductions(_trace(lambda x: mx.argmax(x), x), "h200")[1]
    assert not split_reductions(_trace(lambda x: mx.sum(x), x), "h200")[1]
    assert not split_reductions(_trace(lambda x: mx.argmax(x), mx.ones((1 << 16,))), "h200")[1]


def test_a_prime_length_has_no_segments():
    g = _trace(lambda x: mx.sum(x), mx.ones((1048573,)))  # prime
    assert split_reductions(g, "h200")[1] == []


_X = mx.random.normal((8, 64), key=mx.random.key(0))
_W = mx.random.normal((64,), key=mx.random.key(1))
_Y3 = mx.random.normal((3, 8, 16), key=mx.random.key(2))
_B3 = mx.random.normal((3, 1, 16), key=mx.random.key(3))
# row 0: one +inf; row 1: all -inf; row 2: a NaN; row 3: one segment of -inf
_INF = mx.concatenate([
    mx.where(mx.arange(64) == 5, mx.array(float("inf")), _X[0])[None],
    mx.full((1, 64), float("-inf")),
    mx.where(mx.arange(64) == 9, mx.array(float("nan")), _X[2])[None],
    mx.where(mx.arange(64) < 16, mx.array(float("-inf")), _X[3])[None], _X[4:]])
_NHWC = mx.random.normal((4, 8, 8, 6), key=mx.random.key(4)) * 3 + 2
_Y4 = mx.random.normal((8, 3, 16, 4), key=mx.random.key(5))
_NAN = mx.where(mx.arange(64 * 8).reshape(8, 64) == 77, mx.array(float("nan")), _X)

CASES = {
    "sum of squares": (lambda x: mx.sum(x * x), (_X,)),
    "mean with a broadcast weight": (lambda x, w: mx.mean((x * w) ** 2), (_X, _W)),
    "two trailing axes, broadcast": (lambda y, b: mx.sum(mx.exp(y - b), axis=(1, 2)), (_Y3, _B3)),
    "keepdims and an epilogue": (lambda y: y / mx.sum(mx.abs(y), axis=(1, 2), keepdims=True), (_Y3,)),
    "variance": (lambda x: mx.var(x), (_X,)),
    "max with NaN": (lambda x: mx.max(x), (_NAN,)),
    "min": (lambda x: mx.min(x * 2.0), (_X,)),
    "prod": (lambda x: mx.prod(1.0 + x * 0.01), (_X,)),
    "all / any": (lambda x: (mx.all(x > -3.0), mx.any(x > 2.5)), (_X,)),
    "int32 sum": (lambda x: mx.sum((x * 10).astype(mx.int32)), (_X,)),
    "bool sum": (lambda x: mx.sum(x > 0), (_X,)),
    "through a transpose": (lambda x: mx.sum(x.T * mx.arange(8)), (_X,)),
    "bfloat16": (lambda x: mx.sum(x.astype(mx.bfloat16) * 3), (_X,)),
    "argmax with ties and NaN": (lambda x: (mx.argmax(mx.round(x), axis=-1), mx.argmin(x, axis=-1),
                                            mx.argmax(_NAN * 1.0, axis=-1)), (_X,)),
    "argmax of a vector": (lambda x: mx.argmax(x.reshape(-1) * 2.0), (_X,)),
    "logsumexp": (lambda x: mx.logsumexp(x * 3.0, axis=-1), (_X,)),
    "logsumexp of a vector": (lambda x: mx.logsumexp(x.reshape(-1)), (_X,)),
    "logsumexp float16": (lambda x: mx.logsumexp(x.astype(mx.float16), axis=-1, keepdims=True), (_X,)),
    "softmax": (lambda x: mx.softmax(x * 2.0, axis=-1), (_X,)),
    "softmax bfloat16": (lambda x: mx.softmax(x.astype(mx.bfloat16), axis=-1), (_X,)),
    "softmax and logsumexp with inf": (lambda x: (mx.softmax(x, axis=-1), mx.logsumexp(x, axis=-1)), (_INF,)),
    # column reductions: too few columns for the cores
    "column sum": (lambda x: mx.sum(x * 2.0, axis=0), (_X,)),
    "batch-norm statistics": (lambda x: (mx.mean(x, axis=(0, 1, 2)), mx.var(x, axis=(0, 1, 2))), (_NHWC,)),
    "batch-norm statistics bfloat16": (lambda x: (mx.mean(x, axis=(0, 1, 2)),
                                                  mx.var(x, axis=(0, 1, 2), ddof=1)),
                                       (_NHWC.astype(mx.bfloat16),)),
    "variance far from zero": (lambda x: mx.var(x * 0.01 + 1000.0, axis=0), (_X,)),
    "column max with NaN and a broadcast": (lambda x, w: mx.max(x * w[:8, None], axis=0), (_NAN, _W)),
    "axes apart": (lambda y: mx.sum(mx.exp(y), axis=(0, 2), keepdims=True), (_Y4,)),
}


@pytest.mark.parametrize("name", sorted(CASES))
def test_split_graph_equals_the_traced_one(name, small):
    fn, args = CASES[name]
    g = _trace(fn, *args)
    split, decisions = split_reductions(g, "h200")
    assert decisions, "the case must split"
    verify(split)
    for backend in ("jax", "mlx"):
        _close(evaluate(g, *args, backend=backend), evaluate(split, *args, backend=backend), 1e-5)
    fused, _ = fuse_with_report(g, "h200")
    check_bodies(fused)


def test_half_partials_stay_float32(small):
    x = (mx.arange(4096) % 7 + 1.0 / 256).astype(mx.bfloat16)
    g = _trace(lambda x: mx.sum(x), x)
    split, (d,) = split_reductions(g, "h200")
    reduces = [e for e in split.eqns if e.primitive == "Reduce"]
    assert [e.outputs[0].dtype for e in reduces] == ["float32", "float32"]
    assert split.outputs[0].dtype == "bfloat16"
    # Partials in float32 and one rounding: the float64 sum rounded to bfloat16.
    exact = np.asarray(x.astype(mx.float32)).astype(np.float64).sum()
    assert evaluate(split, x).item() == mx.array(exact).astype(mx.bfloat16).item()


@pytest.mark.parametrize("name", sorted(CASES))
def test_split_kernels_run_in_the_interpreter(name, small, monkeypatch):
    monkeypatch.setenv("MLXTRITON_INTERPRET", "1")
    fn, args = CASES[name]
    f = mlxtriton.optimize(fn, chip="h200")
    _close(fn(*args), f(*args), 1e-4)


def test_lowered_split_is_two_row_kernels_that_type_check_as_metal():
    f = mlxtriton.optimize(lambda x: mx.sum(x * x), chip="h200")
    x = mx.ones((1 << 20,))
    lowered = f.trace(x).lower("cuda")
    assert [k.output_shapes for k in lowered] == [((256, 1),), ((),)]
    assert [k.grid[0] // k.threadgroup[0] for k in lowered] == [256, 1]  # threadgroups
    assert "split: traced eqn" in str(f.trace(x).explain("cuda"))
    for k in f.trace(x).lower("metal"):
        assert metal_check.check(k) == [], k.as_text()


def test_kernel_never_splits():
    # @kernel promises one kernel: the long reduction stays one threadgroup per row.
    k = mlxtriton.kernel(lambda x: mx.sum(x * x), chip="h200")
    x = mx.ones((1 << 20,))
    (kernel,) = k.trace(x).lower("cuda")
    assert kernel.grid[0] == kernel.threadgroup[0]  # one threadgroup


def test_gradients_through_a_split_reduction(small):
    # The two levels differentiate like the one reduction they replace.
    def loss(x, y):
        return mx.mean((x - y) ** 2) + mx.max(x) * 0.5

    x, y = _X, mx.random.normal(_X.shape, key=mx.random.key(9))
    f = mlxtriton.optimize(loss, chip="h200")
    assert "split:" in str(f.explain(x, y))
    (v, g), (v0, g0) = mx.value_and_grad(f, (0, 1))(x, y), mx.value_and_grad(loss, (0, 1))(x, y)
    _close(v0, v, 1e-5)
    _close(tuple(g0), tuple(g), 1e-5)


@settings(deadline=None, max_examples=25)
@given(data=st.data())
def test_random_reductions_split_like_the_traced_graph(data):
    """Random kinds, row counts, reduced ranks, broadcast operands and dtypes: the split graph
    equals the traced one under the JAX oracle."""
    kind = data.draw(st.sampled_from(["sum", "max", "min", "prod", "all", "any", "argmax", "argmin",
                                      "logsumexp", "softmax"]))
    last_axis = kind.startswith("arg") or kind in ("logsumexp", "softmax")
    lead = data.draw(st.lists(st.integers(1, 3), max_size=2))
    reduced = data.draw(st.lists(st.sampled_from([2, 3, 4, 6, 8, 12, 16]), min_size=1,
                                 max_size=1 if last_axis else 3))
    floats = [mx.float32, mx.float16, mx.bfloat16]
    dtype = data.draw(st.sampled_from(floats if kind in ("logsumexp", "softmax") else floats + [mx.int32]))
    shape = tuple(lead) + tuple(reduced)
    # a second operand broadcast over some of the dims
    bshape = tuple(d if data.draw(st.booleans()) else 1 for d in shape)
    seed = data.draw(st.integers(0, 2**16))
    x = (mx.random.normal(shape, key=mx.random.key(seed)) * 2).astype(dtype)
    b = (mx.random.uniform(shape=bshape, key=mx.random.key(seed + 1)) + 0.5).astype(dtype)
    axes = tuple(range(len(lead), len(shape)))
    fn = {"sum": lambda x, b: mx.sum(x * b, axis=axes), "max": lambda x, b: mx.max(x - b, axis=axes),
          "min": lambda x, b: mx.min(x + b, axis=axes, keepdims=True),
          "prod": lambda x, b: mx.prod(mx.abs(x) * 0.1 + b, axis=axes),
          "all": lambda x, b: mx.all(x > -b, axis=axes), "any": lambda x, b: mx.any(x > b * 2, axis=axes),
          # rounded: ties across segments, where the first must win
          "argmax": lambda x, b: mx.argmax(mx.round(x * b), axis=-1),
          "argmin": lambda x, b: mx.argmin(mx.round(x - b), axis=-1, keepdims=True),
          "logsumexp": lambda x, b: mx.logsumexp(x * b, axis=-1),
          "softmax": lambda x, b: mx.softmax(x - b, axis=-1)}[kind]
    g = _trace(fn, x, b)
    with tuned(None, **SMALL | {"split_min_segment": 1}):
        split, decisions = split_reductions(g, "h200")
    verify(split)
    assume(decisions)
    tol = 5e-2 if dtype in (mx.float16, mx.bfloat16) else 1e-4
    if kind == "sum" and dtype in (mx.float16, mx.bfloat16):
        # a half sum with cancellation: rounding is relative to the terms, not to the result
        terms = float(mx.max(mx.abs((x * b).astype(mx.float32))))
        tol = max(tol, 2**-7 * math.prod(reduced) * terms)
    _close(evaluate(g, x, b, backend="jax"), evaluate(split, x, b, backend="jax"), tol)


def test_two_reductions_of_one_array_share_the_first_level(small):
    # Both cones read one reshaped x, so clustering merges their first levels: x is read once.
    g = _trace(lambda x: (mx.sum(x), mx.max(x)), _X)
    fused, report = fuse_with_report(g, "h200")
    assert len(report.splits) == 2
    firsts = [r for r in report.regions if len(r.shape) == 2]
    assert len(firsts) == 1 and len(firsts[0].outputs) == 2
    _close(evaluate(g, _X), evaluate(fused, _X), 1e-5)


def test_batch_norm_statistics_read_their_input_once():
    # NHWC 32x64x64x256: 256 columns are 8 threadgroups of 32; 64 segments of 2048 rows fill an
    # H100. The variance's sum comes from the mean's segments (Chan's update): one first-level
    # kernel holds each segment on chip for both sums, a second combines 64 partials.
    def stats(x):
        return mx.mean(x, axis=(0, 1, 2)), mx.var(x, axis=(0, 1, 2))

    x = mx.zeros((32, 64, 64, 256), mx.bfloat16)
    g = _trace(stats, x)
    _, decisions = split_reductions(g, "h100")
    assert [(d.kind, d.rows, d.segments, d.row) for d in decisions] == [
        ("sum", 256, 64, False), ("centred sum of squares", 256, 64, False)]
    assert "of 256 column(s) x 131072 -> 16384 x 2048 then 256 x 64" in decisions[0].as_text()
    fused, report = fuse_with_report(g, "h100")
    first, second = report.regions
    assert (first.kind, first.shape, first.reduced) == ("column", (64, 2048, 256), (1,))
    assert first.inputs == ("bf16[32,64,64,256]",) and first.primitives.count("Reduce") == 2
    assert (second.kind, second.shape) == ("column", (64, 256))
    assert second.outputs == ("bf16[256]", "bf16[256]")


@pytest.mark.parametrize("shape, axes, why", [
    ((4096, 16384), (0,), "16384 columns fill the chip"),
    ((64, 256), (0,), "too small to be worth a second kernel"),
])
def test_no_column_split(shape, axes, why):
    g = _trace(lambda x: mx.sum(x, axis=axes), mx.ones(shape))
    assert split_reductions(g, "h100")[1] == [], why


def test_kernel_never_splits_a_column_reduction():
    k = mlxtriton.kernel(lambda x: mx.var(x, axis=(0, 1)), chip="h100")
    (kernel,) = k.trace(mx.ones((256, 512, 8))).lower("cuda")
    assert kernel.output_shapes == ((8,),)


@settings(deadline=None, max_examples=25)
@given(data=st.data())
def test_random_column_reductions_split_like_the_traced_graph(data):
    """Reductions over leading and non-neighbouring axes, variances among them, in every float
    type and int32: the split graph equals the traced one under the JAX oracle."""
    kind = data.draw(st.sampled_from(["sum", "max", "min", "prod", "all", "any", "mean", "var"]))
    ndim = data.draw(st.integers(2, 4))
    shape = tuple(data.draw(st.lists(st.sampled_from([1, 2, 3, 4, 6, 8, 16]), min_size=ndim,
                                     max_size=ndim)))
    axes = tuple(sorted(data.draw(st.sets(st.integers(0, ndim - 2), min_size=1))))
    floats = [mx.float32, mx.float16, mx.bfloat16]
    dtype = data.draw(st.sampled_from(floats if kind in ("mean", "var") else floats + [mx.int32]))
    seed = data.draw(st.integers(0, 2**16))
    x = (mx.random.normal(shape, key=mx.random.key(seed)) * 2 + 3).astype(dtype)
    fn = {"sum": lambda x: mx.sum(x * 2, axis=axes), "max": lambda x: mx.max(x, axis=axes),
          "min": lambda x: mx.min(x - 1, axis=axes, keepdims=True),
          "prod": lambda x: mx.prod(mx.abs(x) * 0.1 + 0.5, axis=axes),
          "all": lambda x: mx.all(x > 0, axis=axes), "any": lambda x: mx.any(x > 6, axis=axes),
          "mean": lambda x: mx.mean(x, axis=axes),
          "var": lambda x: (mx.mean(x, axis=axes), mx.var(x, axis=axes, keepdims=True))}[kind]
    g = _trace(fn, x)
    with tuned(None, split_min_bytes=0, split_min_segment=1):
        split, decisions = split_reductions(g, "h100")
    verify(split)
    assume(decisions)
    assert not any(d.row for d in decisions)
    tol = 5e-2 if dtype in (mx.float16, mx.bfloat16) else 1e-4
    if kind in ("sum", "mean", "var") and dtype in (mx.float16, mx.bfloat16):
        tol = max(tol, 2**-7 * math.prod(shape[a] for a in axes) * 8)  # terms up to ~8
    _close(evaluate(g, x, backend="jax"), evaluate(split, x, backend="jax"), tol)
