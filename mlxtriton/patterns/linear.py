"""Patterns layer: what follows a matmul (issue 5, rules 3 and 4): ``a @ b + c`` becomes
``AddMM``; activations and SwiGLU / GeGLU gates are recognised and left for the fuse stage.
May import mlxtriton.graph.
"""

from __future__ import annotations

import math

from mlxtriton.graph.core import Var
from mlxtriton.graph.primitives import RESHAPES

from mlxtriton.patterns._values import close
from mlxtriton.patterns.pattern import P, Pat
from mlxtriton.patterns.rewrite import Match, Miss, Note, Rules

# AddMM does the addition in the GEMM's epilogue (a bias, or a residual). Activations after a
# matmul (ReLU, SiLU, GELU in its erf, tanh and sigmoid forms) and gates act(x @ W1) * (x @ W3)
# are elementwise: the fuse stage makes one kernel of each such region with what follows it. The
# spellings are those of mlx.nn after the clean-ups (x / 2 is x * 0.5; x / sqrt(2) stays a
# division). A float16 product is left alone: it rounds to infinity past 65504 before the add,
# where AddMM adds in float32.

# Backends where a product MLX runs as its matrix-vector kernel keeps its addend out of the GEMM
# when the fuse stage follows: there MLX's AddMM always calls cuBLASLt, which asks for an
# algorithm (cublasLtMatmulAlgoGetHeuristic) and captures the call into the command graph on
# every evaluation, while Matmul of one row by a transposed weight (or of a matrix by one column)
# is a single kernel node (mlx/backend/cuda/matmul.cpp: gemm_and_bias takes the gemv only without
# a bias; AddMM builds a new CublasGemm each call). That is a decode step's residual add after
# the output projections: the add then joins the next norm's generated kernel, and the step
# launches as many kernels with less host work each (evidence: benchmarks/results/
# decode_ab_h100.json, the 1B decode step with and without this rule). Not on Metal: its AddMM
# runs the same matrix-vector kernel with the addend (mlx/backend/metal/matmul.cpp, gemv_axbpy).
ADDEND_KEPT_OUT_OF_GEMV: frozenset[str] = frozenset({"cuda"})

_MM = P("Matmul", P.var("a"), P.var("b"), name="mm")
_MM_VIEW = P(RESHAPES, _MM, name="view") | _MM


def _bias_vector(m: Match, c: Var, n: int) -> Var | None:
    """The length-``n`` vector ``c`` broadcasts along rows, when it is one."""
    e = m.graph.producer(c)
    src = e.inputs[0] if e is not None and e.primitive == "Broadcast" else c
    if src.shape[-1:] == (n,) and all(s == 1 for s in src.shape[:-1]):
        return src
    return None


def matmul_add(m: Match):  # a @ b + c -> addmm(c, a, b); alpha * (a @ b) + c -> addmm(c, a, b, alpha)
    a, b, mm, c = m["a"], m["b"], m["mm"], m["c"]
    out = m.root.outputs[0]
    if a.ndim != 2 or b.ndim != 2 or m.values.depends_on(c, mm):
        return None  # batched products stay Matmul; c must not depend on the product
    if _runs_as_gemv(m, a, b):
        return Miss(f"{a.type_str()} @ {b.type_str()} is a matrix-vector product, which the "
                    f"{m.context['backend']} backend's AddMM would run as a GEMM; the addend is "
                    "left for the fuse stage")
    if mm.dtype == "float16":
        return Miss("a float16 product rounds to infinity past 65504 before the add, where AddMM "
                    "adds in float32")
    alpha = float(m.value("alpha")) if "alpha" in m else 1.0
    n = mm.shape[-1]
    bias = _bias_vector(m, c, n)
    if bias is not None:
        c2 = m.add("Broadcast", [m.reshape(bias, (n,))], shape=mm.shape)
        what = f"bias {bias.type_str()}"
    elif c.size == mm.size:
        c2 = m.reshape(c, mm.shape)
        what = f"addend {c.type_str()}"
    else:
        return None
    y = m.add("AddMM", [a, b, c2], alpha=alpha, beta=1.0)
    if y.dtype != out.dtype:
        return None
    m.detail = f"AddMM[alpha={alpha:g}] of {a.type_str()} @ {b.type_str()} + {what}"
    return m.reshape(y, out.shape)


def _runs_as_gemv(m: Match, a: Var, b: Var) -> bool:
    """The fuse stage follows on a backend of `ADDEND_KEPT_OUT_OF_GEMV` and MLX would run
    ``a @ b`` as its matrix-vector kernel: one row times a transposed matrix, or a matrix times
    one column (`can_use_gemv` in mlx/backend/cuda/gemms/gemv.cu)."""
    if not m.context.get("fusing") or m.context.get("backend") not in ADDEND_KEPT_OUT_OF_GEMV:
        return False

    def transposed(v: Var) -> bool:
        e = m.graph.producer(v)
        return e is not None and e.primitive == "Transpose" and tuple(e.params["axes"])[-2:] == (v.ndim - 1, v.ndim - 2)

    return (a.shape[-2] == 1 and transposed(b)) or (b.shape[-1] == 1 and not transposed(a))


def _after_matmul(m: Match, x: Var) -> str | None:
    e = m.graph.producer(x)
    while e is not None and e.primitive in RESHAPES:
        e = m.graph.producer(e.inputs[0])
    return e.primitive if e is not None and e.primitive in ("Matmul", "AddMM") else None


def _activation_note(name: str):
    def note(m: Match):
        prod = _after_matmul(m, m["x"])
        if prod is None:
            return None
        return Note(f"{name} after {prod}: an elementwise epilogue, left for the fuse stage to put "
                    "in one kernel with what follows")

    note.__name__ = name.split(" ")[0].lower() + "_epilogue"
    return note


def _left_operand(m: Match, x: Var) -> Var | None:
    e = m.graph.producer(x)
    while e is not None and e.primitive in RESHAPES:
        e = m.graph.producer(e.inputs[0])
    if e is None or e.primitive not in ("Matmul", "AddMM"):
        return None
    a = e.inputs[0]
    f = m.graph.producer(a)
    while f is not None and f.primitive in RESHAPES:  # x flattened for each projection
        a = f.inputs[0]
        f = m.graph.producer(a)
    return a


def _gate_note(name: str):
    def note(m: Match):
        gate, up = m["x"], m["up"]
        left = _left_operand(m, gate)
        if left is None or left is not _left_operand(m, up):
            return None
        # evidence for not concatenating W1 and W3: benchmarks/results/llama_block_h200*.json
        return Note(f"{name} gate act(x @ W1) * (x @ W3) after the two matmuls: left for the fuse "
                    "stage (an elementwise region, or, for a few rows where the chip's rule makes "
                    "one, the epilogue of the projection kernel reading both weights)")

    note.__name__ = name.lower() + "_gate"
    return note


def activations(x: Pat) -> dict[str, Pat]:
    """Patterns of the activations of ``mlx.nn`` (after the clean-ups) applied to ``x``."""
    inv_sqrt2 = P.scalar(where=lambda v: close(v, 1 / math.sqrt(2)))
    sqrt2 = P.scalar(where=lambda v: close(v, math.sqrt(2)))
    sqrt_2_pi = P.scalar(where=lambda v: close(v, math.sqrt(2 / math.pi)))
    half, one = P.scalar(value=0.5), P.scalar(value=1.0)
    erf = P("Add", P("Erf", P("Multiply", x, inv_sqrt2) | P("Divide", x, sqrt2)), one)
    cube = P("Power", x, P.scalar(value=3.0)) | P("Multiply", P("Square", x), x)
    inner = P("Multiply", P("Add", x, P("Multiply", cube, P.scalar(where=lambda v: close(v, 0.044715)))), sqrt_2_pi)
    tanh = P("Add", P("Tanh", inner), one)
    return {
        "ReLU": P("Maximum", x, P.scalar(value=0.0)),
        "SiLU": P("Multiply", x, P("Sigmoid", x)),
        "GELU (erf form)": P("Multiply", P("Multiply", x, erf), half) | P("Multiply", P("Multiply", x, half), erf),
        "GELU (tanh form)": P("Multiply", P("Multiply", x, half), tanh) | P("Multiply", P("Multiply", x, tanh), half),
        "GELU (sigmoid form)": P("Multiply", x, P("Sigmoid", P("Multiply", x, P.scalar(where=lambda v: close(v, 1.702, 1e-4))))),
    }


_ACTS = activations(P.var("x"))
_GATES = {"SwiGLU": _ACTS["SiLU"], "GeGLU": _ACTS["GELU (erf form)"] | _ACTS["GELU (tanh form)"] | _ACTS["GELU (sigmoid form)"]}

LINEAR = Rules(
    [
        (P("Add", _MM_VIEW, P.var("c")), matmul_add),
        (P("Add", P("Multiply", _MM_VIEW, P.scalar("alpha")), P.var("c")), matmul_add),
        *[(P("Multiply", gate, P.var("up")), _gate_note(name)) for name, gate in _GATES.items()],
        *[(pat, _activation_note(name)) for name, pat in _ACTS.items()],
    ],
    group="linear",
)
