"""mlxtriton: trace unmodified MLX functions into a typed graph IR, transform it, and run it as few,
fused, generated GPU kernels (Metal on Apple silicon, CUDA on MLX's CUDA backend).

The public API composes the layers below it: graph <- trace <- passes <- codegen <- runtime.
"""

from mlxtriton.graph import (
    Eqn,
    EvaluationError,
    Graph,
    PyTreeError,
    UnsupportedPrimitiveError,
    Var,
    VerificationError,
    evaluate,
    verify,
)
from mlxtriton.trace import TraceError, TraceWarning, functionalize, trace
from mlxtriton._api import cache, fuse, kernel, layout, optimize, rewrite
from mlxtriton.runtime.compiled import (CacheInfo, Compiled, Explanation, Lowered, RebuildWarning,
                                        SingleKernelError)
from mlxtriton.state import StateError
from mlxtriton import hw

__version__ = "0.1.0"

__all__ = [
    "rewrite", "fuse", "layout", "cache", "optimize", "kernel", "Compiled", "Lowered", "Explanation",
    "SingleKernelError", "TraceWarning", "hw", "CacheInfo", "RebuildWarning", "StateError",
    "trace", "functionalize", "evaluate", "verify", "Graph", "Eqn", "Var",
    "TraceError", "EvaluationError", "PyTreeError", "UnsupportedPrimitiveError", "VerificationError",
]
