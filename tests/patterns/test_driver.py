"""The pattern language and the fixed-point driver: commutative operands, names bound once,
alternatives, dataflow (an intermediate used outside the match blocks it), near misses and notes
in the report, positions named in the graph passed in, and a loud error on a cycle."""

import time

import mlx.core as mx
import pytest

import mlxtriton
from mlxtriton.graph import GraphBuilder, verify
from mlxtriton.patterns import (
    CLEANUPS, DEFAULT_RULES, Miss, Note, P, RewriteError, Rules, rewrite,
)
from mlxtriton.patterns._values import Values
from mlxtriton.patterns.pattern import Matcher


def trace(fn, *shapes):
    return mlxtriton.trace(fn)(*(mx.ones(s) for s in shapes))


def matches(pattern, graph):
    """Names bound by each way ``pattern`` matches the graph's (single) output."""
    m = Matcher(graph, Values(graph))
    return list(m.match(pattern, graph.outputs[0]))


def test_commutative_operands_match_in_either_order():
    twice = P("Multiply", P.var("x"), P.scalar("s", 2.0))
    for fn in (lambda x: x * 2.0, lambda x: 2.0 * x):
        (st,) = matches(twice, trace(fn, (3,)))
        assert st.values["s"] == 2.0
    assert not matches(P("Subtract", P.var("x"), P.scalar(value=2.0)), trace(lambda x: 2.0 - x, (3,)))


def test_a_name_bound_twice_binds_one_var():
    silu = P("Multiply", P.var("x"), P("Sigmoid", P.var("x")))
    assert matches(silu, trace(lambda x: x * mx.sigmoid(x), (4,)))
    assert not matches(silu, trace(lambda x, y: x * mx.sigmoid(y), (4,), (4,)))


def test_alternatives_are_tried_in_order_and_cover_what_they_match():
    pat = P("Exp", P("Negative", P.var("x"), name="n")) | P("Exp", P.var("x"))
    g = trace(lambda x: mx.exp(-x), (2,))
    first, second = matches(pat, g)
    assert "n" in first.vars and "n" not in second.vars
    assert [e.primitive for e in first.covered] == ["Exp", "Negative"]


def test_rules_combine_with_plus_and_index_by_root():
    combined = CLEANUPS + Rules([(P("Sin", P.var("x")), lambda m: None)], "extra")
    assert len(combined) == len(CLEANUPS) + 1
    assert [r.name for r in combined.for_primitive("Sin")][-1] == "<lambda>"


def test_rewrites_reach_a_fixed_point_and_count_per_rule():
    g = trace(lambda x: ((x * 1.0 - 0.0) * 1.0).T.T, (2, 3))
    g2, report = rewrite(g, CLEANUPS, on_rewrite=verify)
    assert g2.eqns == () and g2.outputs == g2.inputs
    counts = report.rules_fired()
    assert counts["times_one"] == 2 and counts["plus_zero"] == 1
    assert "clean-ups:" in report.lines()[0]


def test_positions_name_equations_of_the_graph_passed_in():
    g = trace(lambda x: mx.exp(x).T.T * 1.0, (2, 3))  # Exp, Transpose, Transpose, Broadcast, Multiply
    _, report = rewrite(g, CLEANUPS)
    assert {(f.rule, f.equation) for f in report.fired} == {("transpose_of_transpose", 2), ("times_one", 4)}


def test_an_intermediate_used_elsewhere_blocks_the_rewrite_and_says_so():
    def sin_of_cos(m):  # sin(cos(x)) -> x (nonsense, only the dataflow matters)
        return m["x"]

    rules = Rules([(P("Sin", P("Cos", P.var("x"))), sin_of_cos)], "test")
    g, report = rewrite(trace(lambda x: (mx.sin(mx.cos(x)), mx.cos(x) + 1), (3,)), rules)
    assert g.primitive_counts()["Sin"] == 1
    (miss,) = report.near_misses
    assert miss.rule == "sin_of_cos" and "#0 (Cos" in miss.reason and "also used elsewhere (by Add)" in miss.reason
    g, report = rewrite(trace(lambda x: mx.sin(mx.cos(x)), (3,)), rules)
    assert g.eqns == () and report.rules_fired()["sin_of_cos"] == 1


def test_misses_and_notes_are_reported_not_applied():
    rules = Rules([(P("Exp", P.var("x")), lambda m: Miss("exp is not wanted here"), "no_exp"),
                   (P("Sin", P.var("x")), lambda m: Note("a sine"), "sines")], "test")
    g = trace(lambda x: mx.sin(mx.exp(x)), (3,))
    g2, report = rewrite(g, rules)
    assert g2 == g
    assert report.lines() == ["recognised sines at #1 (Sin): a sine",
                              "near miss: no_exp at #0 (Exp): exp is not wanted here"]


def test_rules_that_cycle_fail_loudly():
    def to_cos(m):
        return m.add("Cos", [m["x"]])

    def to_sin(m):
        return m.add("Sin", [m["x"]])

    rules = Rules([(P("Sin", P.var("x")), to_cos), (P("Cos", P.var("x")), to_sin)], "test")
    with pytest.raises(RewriteError, match="cycle"):
        rewrite(trace(mx.sin, (3,)), rules)


def test_a_replacement_of_another_type_is_an_error():
    rules = Rules([(P("Sin", P.var("x")), lambda m: m.add("AsType", [m["x"]], dtype="float16"), "bad")])
    with pytest.raises(RewriteError, match="bad replaces f32"):
        rewrite(trace(mx.sin, (3,)), rules)


def test_constant_values_and_scalars_are_known_at_optimize_time():
    b = GraphBuilder()
    x = b.input((2, 3), "float32")
    c = b.constant(mx.array(0.5))
    (bc,) = b.add("Broadcast", [c], shape=(2, 3))
    (h,) = b.add("AsType", [bc], dtype="float16")
    (r,) = b.add("Arange", [], start=0.0, stop=3.0, step=1.0, dtype="float32")
    (y,) = b.add("Multiply", [x, bc])
    g = b.build([y, h, r])
    v = Values(g)
    assert v.scalar(bc) == 0.5 and v.scalar(h) == 0.5 and v.scalar(x) is None
    assert v.is_constant(r) and not v.is_constant(y)
    assert v.value(r).tolist() == [0.0, 1.0, 2.0]
    assert v.depends_on(y, x) and not v.depends_on(h, x)


def test_the_default_table_leaves_plain_code_alone():
    g = trace(lambda x, y: mx.maximum(mx.sin(x) @ y, mx.cos(x).sum(0)), (4, 4), (4, 4))
    g2, report = rewrite(g, DEFAULT_RULES)
    assert g2 == g and report.fired == ()


def test_what_rules_read_is_the_graph_as_it_stands_after_every_rewrite():
    # The driver updates its indexes in place; a rule that runs before every other one compares
    # them, whenever the equations changed, with a graph built afresh from the equations.
    from tests import lm_zoo

    checked = []

    def agrees(m):
        if checked and checked[-1] == list(m.graph.eqns):
            return None
        checked.append(list(m.graph.eqns))
        g = m.graph.freeze()
        fresh = Values(g)
        for e in g.eqns:
            assert m.values.earlier_equal(e) is fresh.earlier_equal(e)
            for v in e.outputs:
                assert m.graph.producer(v) is e and m.graph.users(v) == g.users(v)
                assert m.graph.is_output(v) == g.is_output(v)
                assert m.values.is_constant(v) == fresh.is_constant(v)
                assert m.values.scalar(v) == fresh.scalar(v)
        return None

    model = lm_zoo.build("llama")
    traced = mlxtriton.optimize(model).trace(lm_zoo.prompt(5)[None])
    rules = Rules([(P.var("x"), agrees, "agrees")], "check") + DEFAULT_RULES
    g2, report = rewrite(traced.source, rules, on_rewrite=verify)
    assert len(checked) == len(report.fired) + 1
    assert g2 == rewrite(traced.source, DEFAULT_RULES)[0]


def test_a_rewrite_costs_what_it_touches_not_the_size_of_the_graph():
    # 8,000 equations, a quarter of them duplicates: one rewrite each. A driver that rebuilt its
    # indexes after every rewrite took a minute and a half here (quadratic); this one, under a second.
    b = GraphBuilder()
    (x,) = [b.input((4,), "float32")]
    for _ in range(2000):
        (s1,) = b.add("Sin", [x])
        (s2,) = b.add("Sin", [x])
        (c,) = b.add("Cos", [s2])
        (x,) = b.add("Add", [s1, c])
    g = b.build([x])
    start = time.perf_counter()
    g2, report = rewrite(g, CLEANUPS)
    assert report.rules_fired() == {"duplicate": 2000} and len(g2.eqns) == 6000
    assert time.perf_counter() - start < 10
