"""Patterns layer: graph -> graph rewriting with (pattern, fn) rule tables, and the rules that
turn decomposed model code into the best MLX has: attention -> SDPA, norms and RoPE -> fast ops,
matmul + addend -> AddMM, batch-norm folded into convolutions, and the algebraic clean-ups they
build on. May import mlxtriton.graph, mlxtriton.hw and mlxtriton.fusion.
"""

from __future__ import annotations

from typing import Any, Callable

from mlxtriton import hw
from mlxtriton.graph.core import Graph

from mlxtriton.patterns.attention import ATTENTION, ATTENTION_FOR_FUSION, SOFTMAX, SOFTMAX_DECOMPOSED
from mlxtriton.patterns.cleanups import CLEANUPS
from mlxtriton.patterns.conv import CONV
from mlxtriton.patterns.linear import LINEAR, activations
from mlxtriton.patterns.norms import NORMS
from mlxtriton.patterns.pattern import COMMUTATIVE, P, Pat
from mlxtriton.patterns.report import Fired, NearMiss, PatternReport, Recognised
from mlxtriton.patterns.rewrite import Match, Miss, Note, RewriteError, Rule, Rules, rewrite
from mlxtriton.patterns.rope import ROPE

# Clean-ups first (an equation is tried against rules in table order): model rules then see the
# canonical spellings. Norms and softmax come before attention, which reads a Softmax primitive.
DEFAULT_RULES = CLEANUPS + SOFTMAX + NORMS + ROPE + ATTENTION + CONV + LINEAR
# Applied once DEFAULT_RULES have settled: rules that write a fast op in the form the target runs
# best, whose output the model rules would read back as the fast op (a second phase, as a rewrite
# pipeline of separate pattern tables).
TARGET_RULES = CLEANUPS + ATTENTION_FOR_FUSION


def optimize_patterns(graph: Graph, chip: Any = None, rules: Rules | None = None,
                      on_rewrite: Callable[[Graph], Any] | None = None,
                      fusing: bool = False) -> tuple[Graph, PatternReport]:
    """The ``patterns`` stage of the pipeline: rewrite with the rule tables to a fixed point.

    Args:
        graph: a traced graph.
        chip: the target chip (a name or `mlxtriton.hw.Profile`; None: no chip-dependent
            choice). Its backend decides, with ``fusing``, whether a row norm becomes MLX's fast
            op or stays for the fuse stage (its tuning row's ``norms_generated_at_least_as_fast``).
        rules: the table to apply, or tables applied one after another, each to a fixed point
            (default `DEFAULT_RULES`, then `TARGET_RULES`).
        on_rewrite: called with the graph after every rewrite (e.g. `mlxtriton.verify`).
        fusing: the fuse stage runs after this one (`mlxtriton.optimize`), so a norm the chip
            runs faster as a generated row kernel is left for it.

    Returns:
        ``(graph, report)``; equations in the report are named by their position in ``graph``.

    Example:
        >>> g = mlxtriton.trace(lambda x, w: mx.fast.rms_norm(x, w, 1e-5))(x, w)  # CPU: decomposed
        >>> optimize_patterns(g)[0].primitive_counts()
        {'RMSNorm': 1}
    """
    profile = hw.resolve(chip) if chip is not None else None
    backend = profile.backend if profile is not None else None
    tuning = hw.tuning.tuning(profile) if profile is not None and profile.is_gpu else None
    return rewrite(graph, (DEFAULT_RULES, TARGET_RULES) if rules is None else rules, on_rewrite=on_rewrite,
                   context={"backend": backend, "fusing": fusing, "tuning": tuning})


__all__ = [
    "P", "Pat", "COMMUTATIVE", "Rule", "Rules", "Match", "Miss", "Note", "RewriteError", "rewrite",
    "optimize_patterns", "PatternReport", "Fired", "NearMiss", "Recognised", "DEFAULT_RULES",
    "TARGET_RULES", "ATTENTION_FOR_FUSION",
    "CLEANUPS", "SOFTMAX", "NORMS", "ROPE", "ATTENTION", "CONV", "LINEAR", "SOFTMAX_DECOMPOSED",
    "activations",
]
