"""Fusion preserves values and structure on random programs: `evaluate(fuse(g))` equals
`evaluate(g)` bit for bit with MLX on CPU (a region's body is the same MLX ops), every fused graph
and every body verifies, and every body is one index space of the kind its equation claims. For a
chip, the passes that split reductions and move column sums into row kernels as partial sums
keep the graph acyclic and its values up to the order of the additions."""

import itertools

import mlx.core as mx
import numpy as np
import pytest
from hypothesis import given, settings

import mlxtriton
from mlxtriton.fusion import fuse_with_report, index_space, layout
from mlxtriton.fusion import _movement
from mlxtriton.fusion._rules import REDUCTIONS, Role, role
from mlxtriton.graph import evaluate, verify
from tests.strategies import programs, row_programs


def assert_same(a, b):
    a = a if isinstance(a, tuple) else (a,)
    b = b if isinstance(b, tuple) else (b,)
    assert len(a) == len(b)
    for x, y in zip(a, b):
        assert x.shape == y.shape and x.dtype == y.dtype
        assert mx.array_equal(x, y, equal_nan=True).item()


def check_index_space(body):
    """The analysis' claims, checked against each op's semantics: every value's dims are distinct
    domain axes in order; elementwise operands agree; a movement op of a computed value maps each
    output element to the input element its rule reads; reductions reduce exactly the domain's
    reduced axes; a row or column region has no axis its reductions do not iterate."""
    space = index_space(body)
    loads = {(l.eqn, l.slot): l.axes for l in space.loads}

    def axes(k, slot, v):
        return loads[(k, slot)] if (k, slot) in loads else space.axes[v]

    for v, m in space.axes.items():
        present = [a for a in m if a is not None]
        assert present == sorted(set(present))
        assert all(space.shape[a] == d for a, d in zip(m, v.shape) if a is not None)
        assert all(d == 1 for a, d in zip(m, v.shape) if a is None)
    sources = set()
    for k, e in enumerate(body.eqns):
        r = role(e)[0]
        if any(v in space.blocks for v in e.outputs):
            continue  # a block column sum (fusion/partials.py): test_partials checks its values
        if r is Role.ELEMENTWISE:
            assert len({axes(k, i, v) for i, v in enumerate(e.inputs)} | {space.axes[v] for v in e.outputs}) == 1
        elif r is Role.MOVEMENT and e.outputs[0] in space.axes:
            src, out = e.inputs[0], e.outputs[0]
            m_in, m_out = space.axes[src], space.axes[out]
            for coord in itertools.product(*(range(d) for d in out.shape)):
                point = {a: c for a, c in zip(m_out, coord) if a is not None}
                want = _movement.source_coordinate(e, coord)
                got = tuple(point.get(a, 0) if a is not None else 0 for a in m_in)
                assert tuple(w if d != 1 else 0 for w, d in zip(want, src.shape)) == got, e
        elif r is Role.REDUCTION:
            spec = REDUCTIONS[e.primitive](e)
            m_src = axes(k, spec.source, e.inputs[spec.source])
            m_out = space.axes[e.outputs[0]]
            assert {m_src[a] for a in spec.axes if m_src[a] is not None} == set(space.reduced)
            for d, a in enumerate(m_src):
                if d not in spec.axes or spec.full:
                    assert m_out[d] == a
            sources.update(a for a in m_src if a is not None)
    if space.reduced:
        assert sources == set(range(len(space.shape)))
        trailing = tuple(range(len(space.shape) - len(space.reduced), len(space.shape)))
        assert (space.kind == "row") == (space.reduced == trailing)
    else:
        assert space.kind == "pointwise"
    return space


def check_bodies(fused):
    for e in fused.eqns:
        if e.primitive != "Fused":
            continue
        body = e.params["body"]
        verify(body)
        space = check_index_space(body)
        assert space.kind == e.params["kind"]
        assert all(role(b)[0] is not Role.STAYS for b in body.eqns)
        assert e.params["schedule"] is None
        # Outputs are written once per domain element, or once per row.
        spans = ({*range(len(space.shape))}, set(space.rows) if space.reduced else None)
        assert all(v in space.blocks or {a for a in space.axes[v] if a is not None} in spans
                   for v in body.outputs)


def check_fused(g, args):
    fused, report = fuse_with_report(g)
    verify(fused)
    assert sum(e.primitive == "Fused" for e in fused.eqns) == len(report.regions)
    check_bodies(fused)
    expected = evaluate(g, *args)
    assert_same(evaluate(fused, *args), expected)
    laid = verify(layout(fused))
    check_bodies(laid)
    assert_same(evaluate(laid, *args), expected)
    return fused, report


@settings(max_examples=200)
@given(programs())
def test_fuse_preserves_values(case):
    fn, args = case
    check_fused(mlxtriton.trace(fn)(*args), args)


@settings(max_examples=30)
@given(programs())
def test_fuse_is_idempotent(case):
    fn, args = case
    once = fuse_with_report(mlxtriton.trace(fn)(*args))[0]
    assert fuse_with_report(once)[0] == once


@pytest.mark.parametrize("chip", ["m3", "h200", "cpu"])
@settings(max_examples=40)
@given(case=row_programs())
def test_fuse_for_a_chip_is_acyclic_and_preserves_values(chip, case):
    # Column sums that row regions read back (softmax(x) * sum(x, axis=0)) must not move into
    # those row regions: the partials would wait for themselves.
    fn, args = case
    g = mlxtriton.trace(fn)(*args)
    fused, report = fuse_with_report(g, chip)
    verify(fused)  # each equation reads only what is defined before it
    check_bodies(fused)
    if chip == "cpu":  # no generated kernels: nothing to split or to give blocks of rows
        assert not report.splits and not report.partials
    want, got = evaluate(g, *args), evaluate(fused, *args)
    for w, y in zip(want, got):
        assert w.shape == y.shape and w.dtype == y.dtype
        w, y = np.array(w), np.array(y)
        np.testing.assert_allclose(y, w, rtol=1e-5, atol=1e-5 * max(1.0, float(np.abs(w).max(initial=0))))
