"""The graph IR itself: immutability, structural hashing, printing, the verifier and the
graph -> graph utilities (dce, cse, constant folding, substitution, sub-graph replacement)."""

import dataclasses

import mlx.core as mx
import numpy as np
import pytest

import mlxtriton
from mlxtriton.graph import (
    Eqn,
    Graph,
    GraphBuilder,
    GraphError,
    Params,
    Var,
    VerificationError,
    cse,
    dce,
    evaluate,
    fold_constants,
    replace_subgraph,
    topological_sort,
    verify,
)


def scaled_exp(x):
    return mx.exp(x) * 2.0


def test_graph_is_immutable():
    g = mlxtriton.trace(scaled_exp)(mx.ones((2, 3)))
    with pytest.raises(dataclasses.FrozenInstanceError):
        g.eqns = ()
    with pytest.raises(dataclasses.FrozenInstanceError):
        g.eqns[0].primitive = "Log"
    assert isinstance(g.eqns, tuple) and isinstance(g.inputs, tuple)


def test_structural_hash_ignores_var_identity_and_input_values():
    g1 = mlxtriton.trace(scaled_exp)(mx.ones((2, 3)))
    g2 = mlxtriton.trace(scaled_exp)(mx.zeros((2, 3)))
    assert g1 is not g2 and g1.eqns[0].outputs[0] is not g2.eqns[0].outputs[0]
    assert g1 == g2 and hash(g1) == hash(g2) and g1.structural_hash == g2.structural_hash
    assert len({g1, g2}) == 1


def test_structural_hash_sees_shapes_dtypes_constants_and_structure():
    base = mlxtriton.trace(scaled_exp)(mx.ones((2, 3)))
    others = [
        mlxtriton.trace(scaled_exp)(mx.ones((3, 2))),
        mlxtriton.trace(scaled_exp)(mx.ones((2, 3), dtype=mx.float16)),
        mlxtriton.trace(lambda x: mx.exp(x) * 3.0)(mx.ones((2, 3))),
        mlxtriton.trace(lambda x: mx.log(x) * 2.0)(mx.ones((2, 3))),
        mlxtriton.trace(lambda x: (mx.exp(x) * 2.0,))(mx.ones((2, 3))),  # other output tree
    ]
    hashes = {base.structural_hash} | {g.structural_hash for g in others}
    assert len(hashes) == 1 + len(others)
    assert all(g != base for g in others)


def test_params_are_hashable_sorted_and_immutable():
    p = Params({"b": (1, 2), "a": "sum"})
    assert list(p) == ["a", "b"] and p["b"] == (1, 2)
    assert hash(p) == hash(Params([("a", "sum"), ("b", (1, 2))]))
    assert p.set(a="max")["a"] == "max" and p["a"] == "sum"
    with pytest.raises(TypeError):
        p["a"] = "max"


def test_printer_is_deterministic_and_readable():
    g = mlxtriton.trace(lambda x, y: (mx.sum(mx.exp(x) * 2.0, axis=1), y.T))(
        mx.ones((2, 3)), mx.ones((3, 4))
    )
    text = str(g)
    assert text == str(mlxtriton.trace(lambda x, y: (mx.sum(mx.exp(x) * 2.0, axis=1), y.T))(
        mx.zeros((2, 3)), mx.zeros((3, 4))))
    assert text == """\
{ lambda a:f32[] = 2.0 ; b:f32[2,3] c:f32[3,4]. let
    d:f32[2,3] = Exp b
    e:f32[2,3] = Broadcast[shape=(2, 3)] a
    f:f32[2,3] = Multiply d e
    g:f32[2,1] = Reduce[axes=(1,), kind='sum'] f
    h:f32[2] = Squeeze[axes=(1,)] g
    i:f32[4,3] = Transpose[axes=(1, 0)] c
  in (h, i) }"""


def test_dce_drops_unused_equations_and_constants():
    b = GraphBuilder()
    x = b.input((4,), "float32")
    c = b.constant(mx.array([1.0, 2.0, 3.0, 4.0]))
    (dead,) = b.add("Multiply", [x, c])
    (live,) = b.add("Exp", [x])
    g = b.build([live])
    out = verify(dce(g))
    assert [e.primitive for e in out.eqns] == ["Exp"] and out.constants == ()
    assert dce(out) is out  # nothing to do: the same graph back


def test_cse_merges_repeated_work_and_equal_constants():
    # MLX's exporter already merges identical subexpressions, so build the repetition by hand.
    b = GraphBuilder()
    x = b.input((3, 5), "float32")
    c1, c2 = b.constant(mx.full((3, 5), 2.0)), b.constant(mx.full((3, 5), 2.0))
    (e1,), (e2,), (e3,) = b.add("Exp", [x]), b.add("Exp", [x]), b.add("Exp", [x])
    (m1,), (m2,) = b.add("Multiply", [e2, c1]), b.add("Multiply", [e3, c2])
    (s1,) = b.add("Add", [e1, m1])
    (s2,) = b.add("Add", [s1, m2])
    g = verify(b.build([s2]))
    out = verify(cse(g))
    assert g.primitive_counts()["Exp"] == 3 and out.primitive_counts()["Exp"] == 1
    assert out.primitive_counts()["Multiply"] == 1 and len(out.constants) == 1
    xv = mx.random.normal((3, 5))
    assert mx.array_equal(evaluate(out, xv), evaluate(g, xv)).item()


def test_fold_constants_evaluates_small_constant_subgraphs_only():
    small = mx.array([1.0, 2.0])
    big = mx.ones((64, 64))

    def f(x, y):
        return x * (mx.exp(small) + 1.0), y + big * 2.0

    x, y = mx.ones((2,)), mx.ones((64, 64))
    g = mlxtriton.trace(f)(x, y)
    out = verify(fold_constants(g, max_elements=16))
    assert "Exp" not in out.primitive_counts()  # exp(small) + 1 folded to one constant
    assert any(v.shape == (64, 64) for v, _ in g.constants)
    # the 4096-element product big * 2 is above the limit: still computed at run time
    assert out.primitive_counts().get("Multiply", 0) >= 2
    for a, b in zip(evaluate(out, x, y), evaluate(g, x, y)):
        assert mx.array_equal(a, b).item()


def test_replace_subgraph_swaps_a_region_and_keeps_order():
    x = mx.random.normal((2, 3))
    g = mlxtriton.trace(lambda x: mx.log(mx.exp(x) * 2.0) + x)(x)
    exp_eqn = next(e for e in g.eqns if e.primitive == "Exp")
    mul_eqn = next(e for e in g.eqns if e.primitive == "Multiply")
    # exp(x) * 2  ->  exp(x + log 2) in a hand-built replacement
    b = GraphBuilder()
    xin = b.input((2, 3), "float32")
    c = b.constant(mx.full((2, 3), float(np.log(2.0))))
    (s,) = b.add("Add", [xin, c])
    (r,) = b.add("Exp", [s])
    repl = b.build([r])
    out = verify(replace_subgraph(g, [exp_eqn, mul_eqn], repl, [g.inputs[0]], [mul_eqn.outputs[0]]))
    assert "Multiply" not in out.primitive_counts()
    np.testing.assert_allclose(np.array(evaluate(out, x)), np.array(evaluate(g, x)), rtol=1e-6)


def test_replace_subgraph_refuses_to_drop_a_value_still_in_use():
    def f(x):
        y = mx.exp(x)
        return y * 2.0, y  # y is also an output: removing its producer must be refused

    g = mlxtriton.trace(f)(mx.ones((2,)))
    exp_eqn = next(e for e in g.eqns if e.primitive == "Exp")
    mul_eqn = next(e for e in g.eqns if e.primitive == "Multiply")
    b = GraphBuilder()
    xin = b.input((2,), "float32")
    repl = b.build(list(b.add("Exp", [xin])))
    with pytest.raises(GraphError, match="removed"):
        replace_subgraph(g, [exp_eqn, mul_eqn], repl, [g.inputs[0]], [mul_eqn.outputs[0]])


def test_topological_sort_restores_order_and_detects_cycles():
    g = mlxtriton.trace(lambda x: mx.exp(mx.log(x)) * 2.0)(mx.ones((2,)))
    shuffled = tuple(reversed(g.eqns))
    ordered = topological_sort(shuffled, list(g.inputs) + [v for v, _ in g.constants])
    verify(g.replace(eqns=ordered))
    a, b = Var((2,), "float32"), Var((2,), "float32")
    cyc = (Eqn("Exp", (b,), (a,)), Eqn("Exp", (a,), (b,)))
    with pytest.raises(GraphError, match="cycle"):
        topological_sort(cyc, [])


def test_verifier_rejects_malformed_and_mistyped_graphs():
    x = Var((2, 3), "float32")
    y = Var((2, 3), "float32")
    undefined = Var((2, 3), "float32")
    with pytest.raises(VerificationError, match="before it is defined"):
        verify(Graph((x,), (Eqn("Exp", (undefined,), (y,)),), (y,)))
    with pytest.raises(VerificationError, match="defined twice"):
        verify(Graph((x,), (Eqn("Exp", (x,), (x,)),), (x,)))
    wrong = Var((3, 2), "float32")
    with pytest.raises(VerificationError, match="MLX infers f32\\[2,3\\]"):
        verify(Graph((x,), (Eqn("Exp", (x,), (wrong,)),), (wrong,)))
    wrong_dtype = Var((2, 3), "int32")
    with pytest.raises(VerificationError, match="declares i32"):
        verify(Graph((x,), (Eqn("Exp", (x,), (wrong_dtype,)),), (wrong_dtype,)))
    with pytest.raises(VerificationError, match="undeclared primitive"):
        verify(Graph((x,), (Eqn("NoSuchOp", (x,), (y,)),), (y,)))
    with pytest.raises(VerificationError, match="never defined"):
        verify(Graph((x,), (), (y,)))
    v4, z = Var((4,), "float32"), Var((2, 3), "float32")
    with pytest.raises(VerificationError, match="MLX rejects"):
        verify(Graph((x, v4), (Eqn("Add", (x, v4), (z,)),), (z,)))
