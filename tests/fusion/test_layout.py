"""The layout pass: a region keeps reading an input through its movement ops (strided) unless a
copy is cheaper, which it decides per input and per chip, and records."""

import mlx.core as mx
import pytest

import mlxtriton
from mlxtriton.codegen.lowering import kernel_target, rows_held
from mlxtriton.fusion import fuse, layout, layout_with_report
from mlxtriton.graph import evaluate, verify
from tests.fusion.test_properties import assert_same, check_bodies

X = mx.random.normal((64, 32))
W = mx.random.normal((64,))


def laid_out(fn, *args, chip=None):
    g = mlxtriton.trace(fn)(*args)
    fused = fuse(g)
    held = None if chip is None else (lambda e: rows_held(e, kernel_target(chip, chip)))
    out, decisions = layout_with_report(fused, held)
    verify(out)
    check_bodies(out)
    assert_same(evaluate(out, *args), evaluate(g, *args))
    return out, decisions


def body_primitives(graph):
    (e,) = [e for e in graph.eqns if e.primitive == "Fused"]
    return [b.primitive for b in e.params["body"].eqns]


def test_multi_pass_row_over_a_transposed_input_copies_it():
    out, (d,) = laid_out(lambda x: mx.softmax(x.T, axis=-1), X)
    assert d.decision == "copy" and d.folded == ("Transpose",) and "2 passes" in d.reason
    assert "Transpose" in [e.primitive for e in out.eqns]  # MLX moves it; the kernel reads it contiguously
    assert "Transpose" not in body_primitives(out)


def test_each_region_decides_on_its_own():
    # a region reading nothing moved first, then one whose transposed input is worth a copy
    out, (d,) = laid_out(lambda x, y: (mx.exp(x) * 2 + 1, mx.softmax(y.T, axis=-1)), W, X)
    assert d.decision == "copy"
    fused = fuse(mlxtriton.trace(lambda x, y: (mx.exp(x) * 2 + 1, mx.softmax(y.T, axis=-1)))(W, X))
    (d,) = layout_with_report(fused, None, copies=False)[1]
    assert d.decision == "strided" and "one kernel was asked for" in d.reason


def test_a_row_kept_on_chip_is_read_once_so_stays_strided():
    for chip in ("m3", "h200"):
        out, (d,) = laid_out(lambda x: mx.softmax(x.T, axis=-1), X, chip=chip)
        assert d.decision == "strided" and "1 pass" in d.reason
        assert "Transpose" in body_primitives(out)


def test_single_pass_reads_stay_strided():
    for fn in (lambda x: mx.exp(x.T) * 2.0, lambda x: (x.T * 2.0).sum(-1)):
        out, (d,) = laid_out(fn, X)
        assert d.decision == "strided" and "Transpose" in body_primitives(out)


def test_coalesced_and_broadcast_reads_stay_strided():
    out, decisions = laid_out(lambda x: mx.fast.layer_norm(x, W[:32], None, 1e-5), X)
    assert [d.decision for d in decisions] == ["strided"]
    assert "materialize a broadcast" in decisions[0].reason
    _, (d,) = laid_out(lambda x: mx.softmax(x[:, 1:], axis=-1), X)
    assert d.decision == "strided" and "coalesced" in d.reason


def test_layout_keeps_graphs_without_moved_inputs():
    g = fuse(mlxtriton.trace(lambda x: mx.softmax(x, axis=-1))(X))
    assert layout(g) == g
    out, decisions = layout_with_report(mlxtriton.trace(lambda x: x @ x.T)(X))
    assert decisions == ()


@pytest.mark.parametrize("chip", [None, "m1", "h200"])
def test_layout_composes_with_fuse_on_a_norm_of_a_transpose(chip):
    out, decisions = laid_out(lambda x: mx.fast.layer_norm(x.T, W, None, 1e-5), X, chip=chip)
    moved = [d for d in decisions if d.folded == ("Transpose",)]
    assert len(moved) == 1
    assert moved[0].decision == ("copy" if chip is None else "strided")
