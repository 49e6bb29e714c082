"""The kernel IR node: hash-consing, immutability, index simplification, pattern rewrites."""

from __future__ import annotations

import math
import pickle

import numpy as np
import pytest

from mlxtriton.codegen.kernel_ir import (Ops, PatternMatcher, UOp, UPat, alu, graph_rewrite,
                                         substitute)


def _var(name="row", extent=16):
    return UOp(Ops.SPECIAL, "int32", (), (name, extent))


def test_equal_nodes_are_one_object():
    a = _var() * 4 + 1
    b = _var() * 4 + 1
    assert a is b and hash(a) == hash(b)
    assert pickle.loads(pickle.dumps(a)) is a


def test_constants_keep_their_sign_and_type():
    assert UOp.const("float32", 0.0) is not UOp.const("float32", -0.0)
    assert UOp.const("int32", 1) is not UOp.const("float32", 1.0)
    assert UOp.const("int8", 200).arg == -56  # wraps to the type
    assert UOp.const("bool", 3).arg is True


def test_nodes_are_immutable():
    with pytest.raises(AttributeError):
        _var().op = Ops.CONST


def test_index_simplification():
    r = _var(extent=16)
    assert r + 0 is r and r * 1 is r and (r * 0).arg == 0
    assert (r * 8) // 4 is r * 2
    assert r // 16 is UOp.const("int32", 0) and r % 16 is r  # ranges: 0 <= r < 16
    assert (r * 4) % 2 is UOp.const("int32", 0)
    assert (r // 4) * 4 + r % 4 is r
    assert ((r + 3) + 4) is r + 7
    assert (r // 2) // 4 is r // 8
    assert (r * 3 + 2).vmin == 2 and (r * 3 + 2).vmax == 47


def test_float_arithmetic_is_not_simplified():
    x = UOp(Ops.LOAD, "float32", (), None)
    assert alu(Ops.ADD, x, UOp.const("float32", 0.0)) is not x  # x + 0.0 is not x for x = -0.0


def test_pattern_rewrite_to_a_fixed_point():
    x = UOp(Ops.SPECIAL, "float32", (), ("x", 1))
    neg = lambda u: alu(Ops.NEG, u)  # noqa: E731
    pm = PatternMatcher(((UPat(Ops.NEG, src=(UPat(Ops.NEG, src=(UPat(name="y"),)),)),
                          lambda y: y),))  # -(-y) -> y
    assert graph_rewrite(neg(neg(neg(neg(x)))), pm) is x
    assert graph_rewrite(neg(neg(neg(x))), pm) is neg(x)


def test_same_capture_name_means_same_node():
    a, b = _var("a"), _var("b")
    pat = UPat(Ops.ADD, src=(UPat(name="v"), UPat(name="v")))
    assert pat.match(alu(Ops.ADD, a, a), {})
    assert not pat.match(alu(Ops.ADD, a, b), {})


def test_rewrite_cycles_fail_loudly():
    x = UOp(Ops.SPECIAL, "float32", (), ("x", 1))
    flip = PatternMatcher(((UPat(Ops.NEG, name="n"), lambda n: alu(Ops.ABS, n.src[0])),
                           (UPat(Ops.ABS, name="n"), lambda n: alu(Ops.NEG, n.src[0]))))
    with pytest.raises(RuntimeError, match="fixed point"):
        graph_rewrite(alu(Ops.NEG, x), flip)


def test_substitute_resimplifies_index_arithmetic():
    r, c = _var("row", 8), _var("col", 8)
    e = r * 8 + c
    assert substitute(e, {c: UOp.const("int32", 0)}) is r * 8


# -- the online softmax the renderer emits, replayed in NumPy -----------------------------------

def _exp(x: float) -> float:
    return math.nan if x != x else math.exp(x)


def _online(values, threads):
    """Per-thread running (max, sum) as rendered, a butterfly combine, then the finalisation."""
    parts = []
    for t in range(threads):
        m, s = -math.inf, 0.0
        for v in values[t::threads]:
            if v > m or v != v:
                s = s * _exp(m - v) + 1.0
                m = v
            else:
                s += 1.0 if v == m else _exp(v - m)
        parts.append((m, s))
    while len(parts) > 1:
        (m1, s1), (m2, s2) = parts[0], parts[1]
        m = m1 if (m1 > m2 or m1 != m1) else m2
        s = s1 * (1.0 if m1 == m else _exp(m1 - m)) + s2 * (1.0 if m2 == m else _exp(m2 - m))
        parts = [(m, s)] + parts[2:]
    m, s = parts[0]
    return math.nan if math.isinf(m) else s


@pytest.mark.parametrize("row", [
    [1.0, 2.0, 3.0, -1.0, 0.5], [-math.inf, -math.inf, 2.0, 1.0], [-math.inf] * 4,
    [math.inf, 1.0, 0.0], [1.0, math.nan, 2.0], [5.0], [-math.inf, 0.0, -math.inf, -math.inf],
])
@pytest.mark.parametrize("threads", [1, 2, 3])
def test_online_sumexp_equals_the_two_pass_sum(row, threads):
    with np.errstate(all="ignore"):
        a = np.array(row, np.float64)
        want = np.sum(np.exp(a - np.max(a)))
    got = _online(row, threads)
    assert (math.isnan(got) and math.isnan(want)) or math.isclose(got, want, rel_tol=1e-12)
