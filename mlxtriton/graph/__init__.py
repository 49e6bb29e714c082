"""Graph layer: mlxtriton's typed graph IR, its primitive table, printer, verifier, evaluators and
the utilities every pass uses. Knows nothing of the layers above (trace, fusion, codegen, runtime).
"""

from mlxtriton.graph.core import Eqn, Graph, Params, Var
from mlxtriton.graph.evaluate import EvaluationError, abstract_eval, evaluate
from mlxtriton.graph.primitives import PRIMITIVES, Family, Primitive, UnsupportedPrimitiveError
from mlxtriton.graph.printer import pretty
from mlxtriton.graph.pytree import PyTreeError
from mlxtriton.graph.transforms import (
    GraphBuilder,
    GraphError,
    cse,
    dce,
    fold_constants,
    make_eqn,
    replace_subgraph,
    substitute,
    topological_sort,
)
from mlxtriton.graph.verify import VerificationError, verify

__all__ = [
    "Eqn", "Graph", "Params", "Var", "PRIMITIVES", "Family", "Primitive", "UnsupportedPrimitiveError",
    "EvaluationError", "PyTreeError", "GraphError", "VerificationError", "GraphBuilder",
    "abstract_eval", "evaluate", "pretty", "verify", "cse", "dce", "fold_constants", "make_eqn",
    "replace_subgraph", "substitute", "topological_sort",
]
