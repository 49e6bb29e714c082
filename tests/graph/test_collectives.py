"""Collective equations in one process: what MLX does for a group of one, and what the graph layer
and the passes promise for any group (never merged, folded or evaluated early; evaluating one
needs its ranks). The multi-process behaviour is tests/distributed's."""

import mlx.core as mx
import pytest

import mlxtriton
from mlxtriton.graph import Eqn, Graph, UnsupportedPrimitiveError, Var, cse, fold_constants, verify
from mlxtriton.graph import VerificationError, evaluate
from mlxtriton.graph.evaluate_jax import jax_rules, to_jax
from mlxtriton.graph.evaluate_mlx import MLX_RULES
from mlxtriton.runtime.compiled import PIPELINE, run_passes

GROUP = {"size": 2, "rank": 0}


def test_a_group_of_one_communicates_nothing():
    # MLX returns the input itself for a group of one: no collective reaches the graph.
    def f(x):
        return (mx.distributed.all_sum(x) + mx.distributed.all_gather(x) + mx.distributed.all_max(x)
                + mx.distributed.sum_scatter(x))

    g = mlxtriton.trace(f)(mx.ones((2, 3)))
    assert g.primitive_counts() == {"Add": 3}


def test_the_stand_ins_live_only_while_tracing():
    originals = (mx.distributed.all_sum, mx.distributed.recv)
    seen = []

    def fails(x):
        seen.append(mx.distributed.all_sum)
        raise ValueError("inside the trace")

    with pytest.raises(ValueError, match="inside the trace"):
        mlxtriton.trace(fails)(mx.ones(3))
    assert seen[0] is not originals[0]
    assert (mx.distributed.all_sum, mx.distributed.recv) == originals


def _two_receives() -> Graph:
    a, b = Var((4,), "float32"), Var((4,), "float32")
    recv = {"src": 1, "shape": (4,), "dtype": "float32", **GROUP}
    summed, total = Var((4,), "float32"), Var((4,), "float32")
    return Graph((), (
        Eqn("Recv", (), (a,), recv), Eqn("Recv", (), (b,), recv),
        Eqn("Add", (a, b), (summed,)), Eqn("AllReduce", (summed,), (total,), {"kind": "sum", **GROUP}),
    ), (total,))


def test_two_equal_receives_stay_two():
    # Each receive takes the next message: merging them would lose one and hang the sender.
    g = _two_receives()
    assert cse(g) is g
    optimized, _ = run_passes(g, frozenset(PIPELINE), "h200")
    assert optimized.primitive_counts()["Recv"] == 2


def test_collectives_of_constants_are_not_folded():
    c, out = Var((2,), "float32"), Var((2,), "float32")
    g = Graph((), (Eqn("AllReduce", (c,), (out,), {"kind": "sum", **GROUP}),), (out,), ((c, mx.ones(2)),))
    assert fold_constants(g) is g
    optimized, _ = run_passes(g, frozenset(PIPELINE), "h200")
    assert optimized.primitive_counts() == {"AllReduce": 1}


def test_running_a_collective_needs_its_ranks():
    g = _two_receives()
    verify(g, check_types=False)
    with pytest.raises(VerificationError, match="2 processes as rank 0 cannot run in this process, rank 0 of 1"):
        verify(g)
    with pytest.raises(UnsupportedPrimitiveError, match="start one process per rank"):
        evaluate(g)
    with pytest.raises(UnsupportedPrimitiveError, match="AllReduce with JAX: its result depends on the other"):
        jax_rules()["AllReduce"](to_jax(mx.ones(2)), kind="sum", **GROUP)


def test_single_process_meanings():
    x = mx.arange(3.0)
    for name, params in (("Send", {"dst": 1, **GROUP}), ("SumGradients", GROUP)):
        assert jax_rules()[name](to_jax(x), **params).tolist() == x.tolist()
    with pytest.raises(UnsupportedPrimitiveError, match="cannot run in this process"):
        MLX_RULES["AllGather"](x, **GROUP)


def test_collectives_print_with_their_group():
    text = str(_two_receives())
    assert "a:f32[4] = Recv[dtype='float32', rank=0, shape=(4,), size=2, src=1]" in text
    assert "d:f32[4] = AllReduce[kind='sum', rank=0, size=2] c" in text
