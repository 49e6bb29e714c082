"""Shared checks of the pattern tests: trace, rewrite (verifying after every single rewrite), and
compare the rewritten graph run with MLX against the JAX oracle on the unoptimised graph."""

from __future__ import annotations

import mlx.core as mx
import numpy as np

import mlxtriton
from mlxtriton.graph import evaluate, verify
from mlxtriton.patterns import optimize_patterns

# Tolerances against the oracle, by output dtype. The rewrites change rounding: a fused SDPA
# scales q before the product, a fast norm rounds once, x / s becomes x * (1/s); in half
# precision that is a few ulps of values of order 1 (bfloat16's ulp at 1 is 2^-7).
TOL = {"float32": 2e-5, "float16": 1e-2, "bfloat16": 6e-2}


def rewritten(fn, *args, rules=None):
    """``(graph, rewritten graph, report)`` for ``fn(*args)``; every intermediate graph verifies."""
    g = mlxtriton.trace(fn)(*args)
    g2, report = optimize_patterns(g, rules=rules, on_rewrite=verify)
    verify(g2)
    return g, g2, report


def oracle(g, args):
    """``evaluate(g, *args, backend="jax")``, its rules traced once under ``jax.jit`` (one XLA
    compile of the whole graph instead of one per primitive and shape: 0.8 s instead of 5.7 s for
    the Llama attention module), falling back to op-by-op where a rule needs concrete values."""
    import jax

    from mlxtriton.graph.evaluate import _jax_rules, run
    from mlxtriton.graph.evaluate_jax import from_jax, to_jax

    flat = [to_jax(a) for a in (*args, *g.state_values)]  # state as it was when traced
    try:
        outs = jax.jit(lambda *a: run(g, list(a), _jax_rules(), to_jax))(*flat)
    except (jax.errors.ConcretizationTypeError, jax.errors.TracerArrayConversionError,
            jax.errors.TracerBoolConversionError, jax.errors.TracerIntegerConversionError):
        return evaluate(g, *args, backend="jax")
    outs = [from_jax(o) for o in outs[:len(outs) - len(g.state_outputs)]]
    return outs[0] if len(outs) == 1 else tuple(outs)


def assert_oracle(g, g2, args, tol: float | None = None):
    """The rewritten graph (MLX) equals the JAX oracle on the original graph."""
    want = oracle(g, args)
    got = evaluate(g2, *args)
    want = want if isinstance(want, tuple) else (want,)
    got = got if isinstance(got, tuple) else (got,)
    assert len(want) == len(got)
    for w, y in zip(want, got):
        assert tuple(y.shape) == tuple(w.shape)
        dtype = str(y.dtype).split(".")[-1]
        t = TOL.get(dtype, 0) if tol is None else tol
        np.testing.assert_allclose(np.array(y.astype(mx.float32)) if isinstance(y, mx.array) else y,
                                   np.asarray(w, dtype=np.float32), rtol=t, atol=t)


def check(fn, *args, tol=None, rules=None):
    g, g2, report = rewritten(fn, *args, rules=rules)
    assert_oracle(g, g2, args, tol)
    return g2, report


def fired(report) -> list[str]:
    return [f.rule for f in report.fired if f.group != "cleanup"]


def misses(report) -> list[str]:
    return [m.as_text() for m in report.near_misses]
