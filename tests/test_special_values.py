"""Special values and edge shapes through the whole path: `mlxtriton.optimize` with the generated
kernels run by the NumPy interpreter (MLXTRITON_INTERPRET=1), against the plain MLX function.

NaN, infinities, signed zeros and values near float32's limits through every reduction and norm
family (row kernels in registers and streamed, column kernels, reductions split in two levels);
``all`` / ``any`` over values other than 0 and 1; size-0 and size-1 axes, where `optimize` returns
what MLX returns or raises what MLX raises."""

from __future__ import annotations

import mlx.core as mx
import mlx.nn as nn
import numpy as np
import pytest

import mlxtriton
from mlxtriton.runtime.launch import INTERPRET_ENV
from tests.codegen.test_ops_mlx import from_mx, to_mx, truth_rows

inf, nan = np.inf, np.nan


@pytest.fixture(autouse=True)
def _interpreted(monkeypatch):
    monkeypatch.setenv(INTERPRET_ENV, "1")


def special_rows(length: int, seed: int = 0) -> np.ndarray:
    """One row per case: ordinary values; one +inf; one -inf; +inf and -inf; a NaN; all -inf;
    all +inf; all 1.0 (sums exact in any order); all -0.0; two values near float32's largest;
    two +inf; a -inf and a NaN."""
    rng = np.random.default_rng(seed)
    rows = rng.normal(size=(12, length)).astype(np.float32)
    at = [rng.choice(length, size=min(2, length), replace=False) for _ in rows]
    rows[1, at[1][0]] = inf
    rows[2, at[2][0]] = -inf
    rows[3, at[3]] = [inf, -inf][:length]
    rows[4, at[4][0]] = nan
    rows[5], rows[6], rows[7], rows[8] = -inf, inf, 1.0, -0.0
    rows[9, at[9]] = [3e38, 3e38][:length]
    rows[10, at[10]] = [inf, inf][:length]
    rows[11, at[11]] = [-inf, nan][:length]
    return rows


def assert_same(got: mx.array, want: mx.array, what: str, tol: float = 2e-5,
                elementwise: bool = False) -> None:
    """Same shape and dtype; the same NaNs, the same infinities; finite values close, relative to
    the largest (a sum's rounding is the row's) or, ``elementwise``, to each value."""
    assert got.shape == want.shape and got.dtype == want.dtype, (what, got, want)
    g, w = from_mx(got).astype(np.float64), from_mx(want).astype(np.float64)
    finite = np.isfinite(g) & np.isfinite(w)
    scale = 1.0 if elementwise else np.max(np.abs(np.where(finite, w, 0)), initial=1.0)
    err = np.abs(np.where(finite, g, 0) - np.where(finite, w, 0))
    close = finite & (err <= tol * (np.abs(np.where(finite, w, 0)) + scale))
    same = (np.isnan(g) & np.isnan(w)) | (g == w) | close
    bad = np.argwhere(~same)
    assert not bad.size, f"{what}: at {bad[:4].tolist()} got {g[~same][:4]} want {w[~same][:4]}"


def _log_softmax(x):
    return x - mx.logsumexp(x, axis=-1, keepdims=True)


# Every reduction and norm family: over the last axis (row kernels), over the first (column
# kernels), over everything.
FAMILIES = {
    "sum": lambda x: mx.sum(x, axis=-1), "mean": lambda x: mx.mean(x, axis=-1),
    "max": lambda x: mx.max(x, axis=-1), "min": lambda x: mx.min(x, axis=-1),
    "prod": lambda x: mx.prod(x, axis=-1), "logsumexp": lambda x: mx.logsumexp(x, axis=-1),
    "softmax": lambda x: mx.softmax(x, axis=-1), "log_softmax": _log_softmax,
    "var": lambda x: mx.var(x, axis=-1), "std": lambda x: mx.std(x, axis=-1),
    "argmax": lambda x: mx.argmax(x, axis=-1), "argmin": lambda x: mx.argmin(x, axis=-1),
    "all": lambda x: mx.all(x, axis=-1), "any": lambda x: mx.any(x, axis=-1),
    "rms_norm": lambda x: mx.fast.rms_norm(x, None, 1e-5),
    "layer_norm": lambda x: mx.fast.layer_norm(x, None, None, 1e-5),
    "layer_norm_eps0": lambda x: mx.fast.layer_norm(x, None, None, 0.0),
    "rms_norm_eps0": lambda x: mx.fast.rms_norm(x, None, 0.0),
    "cross_entropy": lambda x: nn.losses.cross_entropy(x, mx.zeros(x.shape[:-1], mx.int32)),
    "sum_axis0": lambda x: mx.sum(x, axis=0), "mean_axis0": lambda x: mx.mean(x, axis=0),
    "max_axis0": lambda x: mx.max(x, axis=0), "softmax_axis0": lambda x: mx.softmax(x, axis=0),
    "sum_all": lambda x: mx.sum(x), "logsumexp_all": lambda x: mx.logsumexp(x),
}


@pytest.mark.parametrize("length", [1, 7, 129, 1000, 4097])
@pytest.mark.parametrize("chip", ["m3", "h200"])
def test_special_values_through_every_reduction_family(chip, length):
    x = mx.array(special_rows(length))
    for name, fn in FAMILIES.items():
        assert_same(mlxtriton.optimize(fn, chip=chip)(x), fn(x), f"{name} over rows of {length}")


@pytest.mark.parametrize("family", ["sum", "max", "prod", "logsumexp", "softmax", "argmax", "all"])
def test_special_values_through_split_reductions(family):
    """Rows of 2^18 on a chip of 132 cores: each row is cut into segments reduced by one kernel,
    their partials by a second (fusion/split.py)."""
    fn = FAMILIES[family]
    rows = special_rows(1 << 18)[[0, 1, 3, 4, 5, 9]]  # rows of 1.0 sum in another order than MLX's
    for k in range(0, len(rows), 2):  # two rows at a time: too few to fill the chip, so split
        x = mx.array(rows[k:k + 2])
        f = mlxtriton.optimize(fn, chip="h200")
        assert "split" in str(f.explain(x)), family
        assert_same(f(x), fn(x), f"{family} split, rows {k}, {k + 1}")


def test_mean_over_columns_holding_both_infinities():
    """The fuzzer's program: a column reduction over 8 rows of (8, 129, 1), each column with
    +inf and -inf, and columns with one of them or neither."""
    x = np.random.default_rng(1).normal(size=(8, 129, 1)).astype(np.float32)
    x[0, ::2], x[3, ::3], x[5, 1::4] = inf, -inf, nan
    fn = lambda x: mx.log(2 * mx.mean(x, axis=0))
    for chip in ("m1", "m3", "h200"):
        assert_same(mlxtriton.optimize(fn, chip=chip)(mx.array(x)), fn(mx.array(x)), chip, tol=1e-4)


@pytest.mark.parametrize("dtype", ["float32", "float16", "bfloat16", "int32", "uint8", "bool"])
@pytest.mark.parametrize("chip", ["m3", "h200"])
def test_all_and_any_through_optimize(dtype, chip):
    for length in (5, 300):
        x = to_mx(truth_rows(dtype, length, seed=length), dtype)
        for fn in (lambda x: mx.all(x, axis=-1), lambda x: mx.any(x, axis=-1),
                   lambda x: mx.all(x), lambda x: mx.any(x, axis=0),
                   lambda x: mx.any(x * 2 if x.dtype != mx.bool_ else x, axis=-1)):
            got, want = mlxtriton.optimize(fn, chip=chip)(x), fn(x)
            assert got.dtype == want.dtype and mx.array_equal(got, want).item(), (dtype, got, want)
    # the example
    f = mlxtriton.optimize(lambda x: mx.any(x), chip=chip)
    assert f(mx.array([0.5, -0.25, 0.0])).item() is True


# ---- size-0 and size-1 axes --------------------------------------------------------------------

EDGE_FUNCTIONS = {
    "sum": lambda x: mx.sum(x * 2, axis=-1), "sum_axis0": lambda x: mx.sum(x * 2, axis=0),
    "sum_all": lambda x: mx.sum(x * x), "mean": lambda x: mx.mean(x, axis=-1) + 1,
    "max": lambda x: mx.max(x, axis=-1) + 1, "max_axis0": lambda x: mx.max(x, axis=0) + 1,
    "prod": lambda x: mx.prod(x, axis=-1), "all": lambda x: mx.all(x > 0, axis=-1),
    "any_axis0": lambda x: mx.any(x, axis=0), "argmax": lambda x: mx.argmax(x, axis=-1),
    "logsumexp": lambda x: mx.logsumexp(x, axis=-1), "softmax": lambda x: mx.softmax(x * 2, axis=-1),
    "softmax_axis0": lambda x: mx.softmax(x, axis=0), "var": lambda x: mx.var(x, axis=-1),
    "layer_norm": lambda x: mx.fast.layer_norm(x, None, None, 1e-5),
    "rms_norm": lambda x: mx.fast.rms_norm(x, None, 1e-5),
    "sum_transposed": lambda x: mx.sum(mx.swapaxes(x, 0, -1) * 2, axis=-1),
    "cross_entropy": lambda x: nn.losses.cross_entropy(x, mx.zeros(x.shape[:-1], mx.int32)),
    "softmax_times_column_sum": lambda x: mx.softmax(x, axis=-1) * mx.sum(x, axis=0, keepdims=True),
    "pointwise": lambda x: mx.exp(x) * 2 + 1,
}
EDGE_SHAPES = [(4, 0), (0, 4), (0, 0), (3, 4, 0), (3, 0, 4), (0, 3, 4), (1, 0), (0, 1), (1, 4),
               (4, 1), (1, 1), (1, 1, 5), (5, 1, 1)]


def _outcome(fn, x):
    try:
        y = fn(x)
        mx.eval(y)
        return y
    except ValueError as err:
        return err


@pytest.mark.parametrize("shape", EDGE_SHAPES, ids=lambda s: "x".join(map(str, s)))
@pytest.mark.parametrize("chip", ["m3", "h200"])
def test_size_0_and_size_1_axes(chip, shape):
    """Rows, columns and outer axes of size 0 or 1: where MLX returns a result (an empty array,
    a sum of nothing), `optimize` returns the same; where MLX raises (a max of nothing), the
    call raises MLX's error."""
    # (an MLX array made from an empty NumPy array takes MLX seconds to reduce)
    x = mx.random.normal(shape, key=mx.random.key(0))
    for name, fn in EDGE_FUNCTIONS.items():
        want = _outcome(fn, x)
        got = _outcome(mlxtriton.optimize(fn, chip=chip), x)
        what = f"{name} of {shape}"
        if isinstance(want, ValueError):
            assert isinstance(got, ValueError) and str(got) == str(want), (what, got, want)
        else:
            assert isinstance(got, mx.array), (what, got)
            assert_same(got, want, what)


@pytest.mark.parametrize("shape", [(4, 0), (0, 4), (3, 0, 4)], ids=lambda s: "x".join(map(str, s)))
def test_a_region_over_an_empty_array_launches_no_kernel(shape, monkeypatch):
    """Nothing to compute: the region runs as MLX ops (an empty buffer would reach the GPU
    kernel otherwise), `lower` says why, and `@kernel` refuses with that reason."""
    from mlxtriton.runtime import compiled, launch

    x = mx.zeros(shape)
    fn = lambda x: mx.sum(mx.exp(x) * 2, axis=-1) + 1  # noqa: E731
    lowered = mlxtriton.optimize(fn, chip="h100").trace(x).lower("cuda")
    assert len(lowered) == 0 and lowered.fallbacks
    assert all("an empty array" in why for _, why in lowered.fallbacks)
    monkeypatch.setenv(launch.INTERPRET_ENV, "1")  # kernels would run here: none may

    def no_launch(*args):
        raise AssertionError("a kernel was launched over an empty array")

    monkeypatch.setattr(compiled, "launcher", no_launch)
    got = mlxtriton.optimize(fn, chip="h100")(x)
    assert got.shape == fn(x).shape and mx.array_equal(got, fn(x)).item()
    with pytest.raises(mlxtriton.SingleKernelError, match="an empty array"):
        mlxtriton.kernel(fn, chip="h100")(x)


def test_a_graph_holding_an_empty_array_runs_op_by_op(monkeypatch):
    """MLX's CUDA backend aborts running a compiled graph that holds an empty array: such a call
    runs its ops one by one, and the function's other shapes keep their compiled dispatch."""
    monkeypatch.delenv(INTERPRET_ENV)  # the compiled dispatch is for calls that launch no interpreter
    f = mlxtriton.optimize(lambda x: mx.sum(mx.exp(x) * 2, axis=-1) + 1)
    empty = mx.zeros((4, 0))
    (entry,) = [e for e in [f(empty)] and f._cache.values()]
    assert entry.executable.empty and not entry.executable.traceable
    assert mx.array_equal(f(empty), mx.ones((4,))).item()
    x = mx.ones((4, 3))
    assert mx.allclose(f(x), mx.sum(mx.exp(x) * 2, axis=-1) + 1).item()
    assert f._dispatch is not None and f.cache_info().builds == 2
