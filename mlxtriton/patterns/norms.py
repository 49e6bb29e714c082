"""Patterns layer: decomposed RMSNorm and LayerNorm become the ``RMSNorm`` / ``LayerNorm``
primitives (``mx.fast.rms_norm`` / ``mx.fast.layer_norm``), or stay decomposed for the fuse stage
where the chip runs them faster so (issue 5, rule 2). May import mlxtriton.graph.
"""

from __future__ import annotations

from mlxtriton.graph import dtypes
from mlxtriton.graph.core import Var

from mlxtriton.patterns._values import close
from mlxtriton.patterns.pattern import P, Pat
from mlxtriton.patterns.rewrite import Match, Miss, Note, Rules

# Small rules that compose: the normalisation itself first (weight 1, bias 0), then the float32
# casts around it, then the weight, then the bias. The spellings are those of MLX's CPU fallbacks
# and of model code after the clean-ups (x / sqrt(v) is x * rsqrt(v), a mean is sum * (1/N)).
# Where the fuse stage follows and a generated row kernel runs a norm at least as fast as MLX's
# fast op (measured: GENERATED_AT_LEAST_AS_FAST), the choice turns round: the norm is left
# decomposed for fusion, and where the generated kernel is clearly faster (GENERATED_FASTER) a
# fast-op primitive from a GPU trace is decomposed for it.

_HALF = frozenset({"float16", "bfloat16"})

# Row norms whose generated row kernel (the fuse stage) measured at least as fast as MLX's fast
# op, per backend: there, when the fuse stage follows, a decomposed norm is left decomposed (it
# also fuses with its neighbours: a residual add, a gate). H200, MLX 0.32.4, 32768 x 4096
# (benchmarks/results/row_kernels_h200_quick.json): RMSNorm f32 271 us generated vs 270 us
# mx.fast.rms_norm, bf16 136 vs 136; LayerNorm f32 271 vs 684, bf16 136 vs 324. No such
# measurement on Metal yet: there the fast ops are used.
GENERATED_AT_LEAST_AS_FAST: dict[str, frozenset[str]] = {"cuda": frozenset({"RMSNorm", "LayerNorm"})}
# ... and clearly faster (2.4x): a LayerNorm primitive (what a GPU trace of nn.LayerNorm holds)
# is decomposed for the fuse stage there.
GENERATED_FASTER: dict[str, frozenset[str]] = {"cuda": frozenset({"LayerNorm"})}


def _left_for_fusion(m: Match, primitive: str, table: dict) -> bool:
    return bool(m.context.get("fusing")) and primitive in table.get(m.context.get("backend"), ())


def mean(of: Pat, name: str) -> Pat:
    """``sum(of, axes) * (1/N)``: a mean with its axes kept (``name``: the Reduce, ``name_n``: 1/N)."""
    return P("Multiply", P("Reduce", of, name=name, where=lambda e: e.params["kind"] == "sum"),
             P.scalar(name + "_n"))


def mean_over_last_axis(m: Match, name: str, x: Var) -> str | None:
    """Why the mean bound as ``name`` is not a mean of ``x``'s rows (None when it is)."""
    axes = tuple(a % x.ndim for a in m.eqn(name).params["axes"])
    if axes != (x.ndim - 1,):
        return f"the mean is over axes {axes}, not the last axis"
    if not close(m.value(name + "_n"), 1.0 / x.shape[-1]):
        return f"the mean divides by {1.0 / m.value(name + '_n'):.6g}, not the row length {x.shape[-1]}"
    return None


def row_vector(m: Match, name: str, d: int) -> Var | None:
    """The bound var as a length-``d`` vector (a weight or bias broadcast over rows), or None."""
    w = m[name]
    if w.shape[-1:] != (d,) or any(s != 1 for s in w.shape[:-1]):
        return None
    return m.reshape(w, (d,))


def _is_centered(m: Match, x: Var) -> bool:
    """``x`` is ``y - broadcast(sum(y) * c)`` (a row-centred value)."""
    e = m.graph.producer(x)
    if e is None or e.primitive != "Subtract":
        return False
    b = m.graph.producer(e.inputs[1])
    mean = m.graph.producer(b.inputs[0]) if b is not None and b.primitive == "Broadcast" else None
    total = next((m.graph.producer(v) for v in mean.inputs if m.graph.producer(v) is not None
                  and m.graph.producer(v).primitive == "Reduce"), None) if mean is not None else None
    return total is not None and total.inputs[0] is e.inputs[0]


def _float_rows(x: Var) -> bool:
    return x.dtype in dtypes.FLOATING and x.ndim >= 1 and x.shape[-1] > 0


def rms_norm(m: Match):  # x * rsqrt(mean(x^2) + eps) -> RMSNorm(x, 1)
    x = m["x"]
    if not _float_rows(x):
        return None
    why = mean_over_last_axis(m, "ms", x)
    if why:
        return Miss(why)
    if _left_for_fusion(m, "RMSNorm", GENERATED_AT_LEAST_AS_FAST):
        if _is_centered(m, x):
            return None  # the RMS of x - mean(x): the LayerNorm rule speaks for it
        return Note(_FOR_FUSION.format(norm="RMSNorm", backend=m.context["backend"]))
    eps = float(m.value("eps"))
    m.detail = f"RMSNorm[eps={eps:.3g}] over rows of {x.type_str()}"
    return m.add("RMSNorm", [x, m.constant(1, x.dtype)], eps=eps)


def layer_norm(m: Match):  # (x - mean(x)) * rsqrt(var(x) + eps) -> LayerNorm(x, 1, 0)
    x = m["x"]
    if not _float_rows(x):
        return None
    why = mean_over_last_axis(m, "mu", x) or mean_over_last_axis(m, "var", x)
    if why:
        return Miss(why)
    if _left_for_fusion(m, "LayerNorm", GENERATED_AT_LEAST_AS_FAST):
        return Note(_FOR_FUSION.format(norm="LayerNorm", backend=m.context["backend"]))
    eps = float(m.value("eps"))
    m.detail = f"LayerNorm[eps={eps:.3g}] over rows of {x.type_str()}"
    return m.add("LayerNorm", [x, m.constant(1, x.dtype), m.constant(0, x.dtype)], eps=eps)


_FOR_FUSION = ("{norm} left decomposed for the fuse stage: on {backend} its generated row kernel "
               "measured at least as fast as MLX's fast op, and fuses with its neighbours")


def layer_norm_for_fusion(m: Match):  # LayerNorm(x, w, b) -> its decomposition, for the fuse stage
    if not _left_for_fusion(m, "LayerNorm", GENERATED_FASTER):
        return None
    x, w, b = m.root.inputs
    out = m.root.outputs[0]
    n = x.shape[-1]
    # MLX's fallback (mlx/fast.cpp), op for op: float32 statistics, one cast back.
    xf = m.astype(x, "float32")

    def mean(v):
        total = m.add("Reduce", [v], kind="sum", axes=(v.ndim - 1,))
        return m.add("Multiply", [total, m.splat(1.0 / n, total)])

    d = m.add("Subtract", [xf, m.add("Broadcast", [mean(xf)], shape=xf.shape)])
    var = mean(m.add("Square", [d]))
    inv = m.add("Sqrt", [m.add("Add", [var, m.splat(m.root.params["eps"], var)])], reciprocal=True)
    y = m.astype(m.add("Multiply", [d, m.add("Broadcast", [inv], shape=xf.shape)]), out.dtype)
    if not _unit(m, "w", 1):
        y = m.add("Multiply", [y, m.add("Broadcast", [m.astype(w, out.dtype)], shape=out.shape)])
    if not _unit(m, "b", 0):
        y = m.add("Add", [y, m.add("Broadcast", [m.astype(b, out.dtype)], shape=out.shape)])
    m.detail = (f"LayerNorm decomposed for the fuse stage: on {m.context['backend']} its generated "
                "row kernel measured 2.4x mx.fast.layer_norm")
    return y


def _unit(m: Match, name: str, value: float) -> bool:
    v = m[name]
    return v.ndim == 0 and m.values.scalar(v) == value


def norm_in_float32(m: Match):  # astype(norm(astype(x, f32)), h) -> norm(x) (computed in f32 anyway)
    x, out, norm = m["x"], m.root.outputs[0], m.eqn("norm")
    if x.dtype not in _HALF or out.dtype != x.dtype or m["up"].dtype != "float32":
        return None
    if not _unit(m, "w", 1) or (norm.primitive == "LayerNorm" and not _unit(m, "b", 0)):
        return None
    consts = [m.constant(1, x.dtype)] + ([m.constant(0, x.dtype)] if norm.primitive == "LayerNorm" else [])
    m.detail = f"float32 casts around {norm.primitive} dropped (the fast op computes in float32)"
    return m.add(norm.primitive, [x, *consts], **norm.params)


def norm_weight(m: Match):  # norm(x, 1[, 0]) * w -> norm(x, w[, 0])
    x, norm = m["x"], m.eqn("norm")
    if not _unit(m, "one", 1) or (norm.primitive == "LayerNorm" and not _unit(m, "b", 0)):
        return None
    w = row_vector(m, "w", x.shape[-1])
    if w is None or w.dtype not in dtypes.FLOATING or m.values.depends_on(m["w"], m["norm"]):
        return None
    rest = norm.inputs[2:]
    y = m.add(norm.primitive, [x, w, *rest], **norm.params)
    m.detail = f"weight {m['w'].type_str()} folded into {norm.primitive}"
    return y if y.aval == m.root.outputs[0].aval else None


def norm_bias(m: Match):  # LayerNorm(x, w, 0) + b -> LayerNorm(x, w, b)
    x = m["x"]
    if not _unit(m, "zero", 0):
        return None
    b = row_vector(m, "b", x.shape[-1])
    if b is None or b.dtype not in dtypes.FLOATING or m.values.depends_on(m["b"], m["norm"]):
        return None
    y = m.add("LayerNorm", [x, m["w"], b], **m.eqn("norm").params)
    m.detail = f"bias {m['b'].type_str()} folded into LayerNorm"
    return y if y.aval == m.root.outputs[0].aval else None


_recip = dict(where=lambda e: e.params["reciprocal"])
_x = P.var("x")
_rms = P("Multiply", _x, P("Broadcast", P("Sqrt", P("Add", mean(P("Square", _x), "ms"), P.scalar("eps")), **_recip)))
_centered = P("Subtract", _x, P("Broadcast", mean(_x, "mu")), name="d")
_layer = P("Multiply", _centered,
           P("Broadcast", P("Sqrt", P("Add", mean(P("Square", P.var("d")), "var"), P.scalar("eps")), **_recip)))
_up = P("AsType", _x, name="up", where=lambda e: e.params["dtype"] == "float32")
_vector = P("Broadcast", P.var("w")) | P.var("w")

NORMS = Rules(
    [
        (P("LayerNorm", P.var("x"), P.var("w"), P.var("b")), layer_norm_for_fusion),
        (_layer, layer_norm),  # first: LayerNorm(x) is also RMSNorm(x - mean(x))
        (_rms, rms_norm),
        (P("AsType", P("RMSNorm", _up, P.var("w"), name="norm")), norm_in_float32),
        (P("AsType", P("LayerNorm", _up, P.var("w"), P.var("b"), name="norm")), norm_in_float32),
        (P("Multiply", P("RMSNorm", _x, P.var("one"), name="norm"), _vector), norm_weight),
        (P("Multiply", P("LayerNorm", _x, P.var("one"), P.var("b"), name="norm"), _vector), norm_weight),
        (P("Add", P("LayerNorm", _x, P.var("w"), P.var("zero"), name="norm"),
           P("Broadcast", P.var("b")) | P.var("b")), norm_bias),
    ],
    group="norm",
)
