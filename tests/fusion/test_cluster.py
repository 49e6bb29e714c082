"""Fusion clustering on the functions it exists for: how many regions of which kind each becomes,
what stays an MLX op and why, and the boundaries it must respect (index spaces, cycles, limits)."""

import collections
import doctest
import importlib

import mlx.core as mx
import mlx.nn as nn
import pytest

import mlxtriton
from mlxtriton import examples
from mlxtriton.fusion import fuse, fuse_with_report, index_space
from mlxtriton.fusion.cluster import DEFAULT_MAX_ARRAYS, MAX_EQUATIONS
from mlxtriton.graph import evaluate, verify
from tests.fusion.test_properties import assert_same, check_bodies

mx.random.seed(0)
X = mx.random.normal((4, 16))
G = mx.random.normal((4, 16))
W = mx.random.normal((16,))
B = mx.random.normal((16,))
LABELS = mx.array([1, 5, 0, 15], dtype=mx.int32)


def decomposed_softmax(x):
    e = mx.exp(x - x.max(-1, keepdims=True))
    return e / e.sum(-1, keepdims=True)


def rms_norm_silu_gate(x, g):
    return mx.fast.rms_norm(x, W, 1e-5) * nn.silu(g)


def residual_norm(x, r):
    h = x + r
    return h, mx.fast.rms_norm(h, W, 1e-5)


def pointwise_dag(x, v):
    y = mx.exp(x) * v + 1.0  # v broadcasts along the rows; 1.0 is a traced scalar constant
    return mx.where(y > 2.0, y, -y), mx.tanh(y) - v


# name -> (function, args, {kind: regions}, primitives that stay MLX ops)
CASES = {
    "softmax": (lambda x: mx.softmax(x, axis=-1), (X,), {"row": 1}, set()),
    "softmax_decomposed": (decomposed_softmax, (X,), {"row": 1}, set()),
    "log_softmax": (nn.log_softmax, (X,), {"row": 1}, set()),
    "layer_norm_fast": (lambda x: mx.fast.layer_norm(x, W, B, 1e-5), (X,), {"row": 1}, set()),
    "layer_norm_nn": (examples.init_eval(nn.LayerNorm(16)), (X,), {"row": 1}, set()),
    "rms_norm_nn": (examples.init_eval(nn.RMSNorm(16)), (X,), {"row": 1}, set()),
    "rms_norm_silu_gate": (rms_norm_silu_gate, (X, G), {"row": 1}, set()),
    "residual_norm": (residual_norm, (X, G), {"row": 1}, set()),
    "logsumexp": (lambda x: mx.logsumexp(x, axis=-1), (X,), {"row": 1}, set()),
    "variance": (lambda x: mx.var(x, axis=-1), (X,), {"row": 1}, set()),
    "cross_entropy": (nn.losses.cross_entropy, (X, LABELS), {"row": 1}, set()),
    "argmax": (lambda x: mx.argmax(x, axis=-1), (X,), {"row": 1}, set()),
    "mean_of_all": (lambda x: mx.mean(x), (X,), {"row": 1}, set()),
    "column_sum": (lambda x: x.sum(axis=0), (X,), {"column": 1}, set()),
    "softmax_over_columns": (lambda x: mx.softmax(x, axis=0), (X,), {"column": 1}, set()),
    "pointwise_dag": (pointwise_dag, (X, W), {"pointwise": 1}, set()),
    "softmax_of_matmul": (lambda x, w: mx.softmax(x @ w * 0.25, -1), (X, mx.ones((16, 8))),
                          {"row": 1}, {"Matmul"}),
    "mean_cross_entropy": (examples.cross_entropy_loss, (X, LABELS), {"row": 2}, set()),
    "mlp": (examples.init_eval(examples.MLP()), examples.example_inputs("mlp"),
            {"pointwise": 1, "row": 1}, {"AddMM"}),
    "conv_bn_relu": (examples.init_eval(examples.ConvBNReLU()), examples.example_inputs("conv"),
                     {"pointwise": 1}, {"Convolution"}),
}


def run_case(name):
    fn, args, _, _ = CASES[name]
    g = mlxtriton.trace(fn)(*args)
    fused, report = fuse_with_report(g)
    verify(fused)
    check_bodies(fused)
    assert_same(evaluate(fused, *args), evaluate(g, *args))
    return g, fused, report


MOVEMENT = {"Broadcast", "Reshape", "Transpose", "Flatten", "Unflatten", "Squeeze", "ExpandDims", "Slice"}


@pytest.mark.parametrize("name", sorted(CASES))
def test_model_shapes_fuse(name):
    _, fused, report = run_case(name)
    kinds = collections.Counter(e.params["kind"] for e in fused.eqns if e.primitive == "Fused")
    assert dict(kinds) == CASES[name][2], report.as_text()
    stays = {e.primitive for e in fused.eqns if e.primitive != "Fused"} - MOVEMENT
    assert stays == CASES[name][3], report.as_text()


def test_regions_write_rows_and_reduced_values_at_once():
    def norm_and_stats(x):
        mu = x.mean(-1, keepdims=True)
        return (x - mu) * mx.rsqrt(mx.var(x, -1, keepdims=True) + 1e-5), mu.squeeze(-1)

    g = mlxtriton.trace(norm_and_stats)(X)
    fused, report = fuse_with_report(g)
    (region,) = report.regions
    assert region.kind == "row" and sorted(region.outputs) == ["f32[4,16]", "f32[4]"]
    assert_same(evaluate(fused, X), evaluate(g, X))


def test_residual_is_written_once_and_read_by_the_norm():
    _, fused, report = run_case("residual_norm")
    (region,) = report.regions
    assert region.outputs == ("f32[4,16]", "f32[4,16]")
    assert region.primitives[0] == "Add" and "Reduce" in region.primitives


def test_cross_entropy_label_pick_is_a_row_load():
    _, fused, report = run_case("cross_entropy")
    (region,) = report.regions
    assert "GatherAxis" in region.primitives and region.inputs == ("f32[4,16]", "i32[4]")


def test_layer_norm_is_one_multi_pass_row_region():
    _, fused, report = run_case("layer_norm_fast")
    (e,) = fused.eqns
    body = e.params["body"]
    assert [b.params.get("kind") for b in body.eqns if b.primitive == "Reduce"] == ["sum", "sum"]
    # The scalars (1/N, eps) are body constants; the weight and bias are bound arrays.
    assert all(a.size == 1 for _, a in body.constants) and len(body.constants) >= 2
    assert [v.type_str() for v in body.inputs] == ["f32[4,16]", "f32[16]", "f32[16]"]
    assert index_space(body).shape == (4, 16) and index_space(body).reduced == (1,)


def test_llama_block_norms_softmax_and_gate_fuse_matmuls_stay():
    block = examples.init_eval(examples.LlamaBlock())
    (x,) = examples.example_inputs("llama")
    g = mlxtriton.trace(block)(x)
    fused, report = fuse_with_report(g)
    verify(fused)
    assert_same(evaluate(fused, x), evaluate(g, x))
    regions = report.regions
    norms = [r for r in regions if r.kind == "row" and r.primitives.count("Reduce") == 1 and "Sqrt" in r.primitives]
    assert len(norms) == 2  # attention norm; residual add + MLP norm
    assert any(r.primitives[0] == "Add" for r in norms)  # the residual joins the MLP norm
    assert sum("Softmax" in r.primitives for r in regions) == 1
    assert any(r.kind == "pointwise" and r.primitives == ("Sigmoid", "Multiply", "Multiply") for r in regions)
    assert sum(e.primitive == "Matmul" for e in fused.eqns) == sum(e.primitive == "Matmul" for e in g.eqns)
    matmuls = [u for u in report.unfused if u.primitive == "Matmul"]
    assert matmuls and all("matmul-like" in u.reason for u in matmuls)
    # The final residual add reads the MLP's output, which reads the norm region: a cycle.
    assert any("cycle" in b.reason for b in report.boundaries)


def test_cycle_through_an_unfused_op_splits_regions():
    w = mx.ones((16, 16))

    def f(x):
        a = mx.exp(x) * 2.0
        return mx.sin(a + a @ w) * 3.0

    g = mlxtriton.trace(f)(X)
    fused, report = fuse_with_report(g)
    verify(fused)
    assert len(report.regions) == 2
    assert any("cycle" in b.reason for b in report.boundaries)
    assert_same(evaluate(fused, X), evaluate(g, X))


def test_a_cycle_back_through_another_region_is_seen_when_it_starts_after_the_members():
    """Two regions merged as siblings (both read the cosines) while another region already read
    one of them and fed the other: the path leaves the pair at its last member, runs past it to
    that region, and comes back through the region's earliest member (the gradient of an
    exclusive cumprod)."""
    def f(x):
        weights = mx.cos(mx.arange(64, dtype=mx.float32)).reshape(8, 8)
        return (mx.cumprod(x, axis=-1, inclusive=False) * weights).sum()

    x = mx.random.normal((8, 8), key=mx.random.key(0))
    fast = mlxtriton.optimize(mx.grad(f), chip="h200")  # the pattern pass makes the siblings
    assert_same(fast(x), mx.grad(f)(x))
    verify(fast.graph(x))


def test_reductions_over_other_axes_are_another_region():
    def f(x):
        y = mx.exp(x)
        return y.sum(-1), y.sum(0)

    g = mlxtriton.trace(f)(X)
    fused, report = fuse_with_report(g)
    assert sorted(r.kind for r in report.regions) == ["column", "row"]
    assert any("Reduce over axis 0 of f32[4,16] in a region reducing axis 1" in b.reason for b in report.boundaries)


def test_transposing_a_computed_value_ends_the_region():
    g = mlxtriton.trace(lambda x: (mx.exp(x) * 2.0).T.sum(-1))(X)
    _, report = fuse_with_report(g)
    assert any("Transpose" in b.reason and "reorders its elements" in b.reason for b in report.boundaries)


def test_movement_of_inputs_folds_into_the_body():
    g = mlxtriton.trace(lambda x: mx.softmax(x.T[::2] * 2.0, axis=-1))(X)
    fused, report = fuse_with_report(g)
    (e,) = fused.eqns
    assert [v.type_str() for v in e.inputs] == ["f32[4,16]"]  # the un-moved array
    assert report.regions[0].folded[:2] == ("Transpose", "Slice")


def test_a_lone_cheap_op_is_not_a_kernel():
    labels = mx.zeros((4, 1), dtype=mx.int32)
    for fn in (lambda x: mx.exp(x), lambda x: x.astype(mx.float16), lambda x: x.reshape(16, 4) + 0,
               lambda x: mx.take_along_axis(x, labels, axis=-1)):
        g = mlxtriton.trace(fn)(X)
        fused, report = fuse_with_report(g)
        assert fused == g and not report.regions
    _, report = fuse_with_report(mlxtriton.trace(lambda x: mx.exp(x))(X))
    assert "not worth" in report.unfused[0].reason


def test_what_stays_says_why():
    def f(x, idx):
        y = mx.sort(x, axis=-1) @ mx.ones((16, 16))
        return mx.take(y, idx, axis=0), mx.cumsum(x, axis=-1)

    g = mlxtriton.trace(f)(X, mx.array([0, 2], dtype=mx.int32))
    _, report = fuse_with_report(g)
    reasons = {u.primitive: u.reason for u in report.unfused}
    assert "matmul-like" in reasons["Matmul"]
    assert "stays an MLX op" in reasons["Sort"]
    assert "gather/scatter" in reasons["Gather"]
    assert "scan" in reasons["Scan"]
    text = report.as_text()
    assert "Matmul" in text and "left as MLX ops" in text


def test_gather_with_several_indices_per_row_stays():
    idx = mx.array([[0, 1], [2, 3], [4, 5], [6, 7]], dtype=mx.int32)
    g = mlxtriton.trace(lambda x, i: mx.take_along_axis(mx.exp(x), i, axis=-1) * 2.0)(X, idx)
    _, report = fuse_with_report(g)
    assert any(u.primitive == "GatherAxis" and "several indices per row" in u.reason for u in report.unfused)


def test_argument_limit_depends_on_the_chip():
    xs = [mx.full((4, 16), float(i)) for i in range(30)]

    def total(*xs):
        acc = mx.exp(xs[0])
        for x in xs[1:]:
            acc = acc + x
        return acc

    g = mlxtriton.trace(total)(*xs)
    strict, report = fuse_with_report(g)
    bodies = [e.params["body"] for e in strict.eqns if e.primitive == "Fused"]
    assert len(bodies) >= 2 and all(len(b.inputs) + len(b.outputs) <= DEFAULT_MAX_ARRAYS for b in bodies)
    assert any("kernel limit" in b.reason for b in report.boundaries)
    assert sum(e.primitive == "Fused" for e in fuse(g, chip="h200").eqns) == 1
    assert_same(evaluate(strict, *xs), evaluate(g, *xs))


def test_long_chains_split_at_the_equation_limit():
    def chain(x):
        for _ in range(MAX_EQUATIONS):
            x = mx.sin(x) + 1.0
        return x

    g = mlxtriton.trace(chain)(X)
    fused, report = fuse_with_report(g)
    assert all(len(r.primitives) <= MAX_EQUATIONS for r in report.regions) and len(report.regions) == 2
    assert_same(evaluate(fused, X), evaluate(g, X))


def test_unrelated_parts_joined_by_a_scalar_stay_apart():
    # Two computations over different shapes share only a 0-d value: one kernel would iterate
    # the product of their index spaces.
    def f(x, y, s):
        t = mx.exp(s) * 2.0
        return mx.sin(x) * t + 1.0, mx.cos(y) * t - 1.0

    args = (X, mx.ones((3, 5)), mx.array(0.5))
    g = mlxtriton.trace(f)(*args)
    fused, report = fuse_with_report(g)
    assert all(max(r.shape, default=1) <= 16 and len(r.shape) <= 2 for r in report.regions)
    assert any("share no index space" in b.reason or "whole index space" in b.reason for b in report.boundaries)
    assert_same(evaluate(fused, *args), evaluate(g, *args))


@pytest.mark.parametrize("module", ["cluster", "index_space", "layout", "report"])
def test_docstring_examples(module):
    m = importlib.import_module(f"mlxtriton.fusion.{module}")
    result = doctest.testmod(m, extraglobs={"mx": mx}, optionflags=doctest.NORMALIZE_WHITESPACE)
    assert result.failed == 0 and result.attempted > 0


@pytest.mark.parametrize("name", ["layer_norm_fast", "cross_entropy", "rms_norm_silu_gate", "softmax_of_matmul"])
def test_golden_fused_graphs_and_reports(name):
    from tests.golden import check_golden

    _, fused, report = run_case(name)
    check_golden(f"fusion/{name}.txt", str(fused) + "\n\n" + report.as_text())
