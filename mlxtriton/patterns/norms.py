"""Patterns layer: decomposed RMSNorm and LayerNorm become the ``RMSNorm`` / ``LayerNorm``
primitives (``mx.fast.rms_norm`` / ``mx.fast.layer_norm``), or stay decomposed for the fuse stage
where the chip runs them faster so (issue 5, rule 2). May import mlxtriton.graph.
"""

from __future__ import annotations

import mlx.core as mx

from mlxtriton.graph import dtypes
from mlxtriton.graph.core import Eqn, Graph, Var
from mlxtriton.graph.transforms import GraphBuilder
from mlxtriton.graph.primitives import Family, family

from mlxtriton.patterns._values import close
from mlxtriton.patterns.pattern import P, Pat
from mlxtriton.patterns.rewrite import Match, Miss, Note, Rules

# Small rules that compose: the normalisation itself first (weight 1, bias 0), then the float32
# casts around it, then the weight, then the bias. The spellings are those of MLX's CPU fallbacks
# (x * rsqrt(v), a mean is sum * (1/N)) and of model code (x / sqrt(v), sum / N). A norm computed
# in float16 stays as it is: its squares overflow past 256 where the fast op's float32 statistics
# do not.
# Where the fuse stage follows and a generated row kernel runs a norm at least as fast as MLX's
# fast op (measured: the chip's tuning row, `norms_generated_at_least_as_fast`), the choice turns
# round: the norm is left decomposed for fusion, and where the generated kernel is clearly faster
# (`norms_generated_faster`) a fast-op primitive from a GPU trace is decomposed for it.

_HALF = frozenset({"float16", "bfloat16"})

# Backends where a norm whose output only pointwise work reads (a gate: `rms_norm(x, w) *
# silu(g)`, a scale, a residual add) goes to the fuse stage, decomposed, whatever the tuning row
# say: one generated row kernel then reads the row and the gate and writes the product, where
# MLX's fast op writes the norm's output for a second kernel to read back (4 passes over memory
# instead of 3). This holds without a measurement, so it is the rule on Apple GPUs, where none of
# the generated norm kernels has been timed yet; on CUDA the generated kernels measured at least
# as fast alone (above). A norm read by anything else (a matmul) keeps MLX's fast op there.
FUSED_WHEN_FEWER_BYTES: frozenset[str] = frozenset({"metal", "cuda"})
# Backends where a norm whose input is computed by pointwise work (a residual add no GEMM took as
# its epilogue, a post-norm's last step) goes to the fuse stage decomposed, whoever reads it: one
# generated row kernel computes the input and the norm and writes both (the sum where the residual
# stream reads it on), where MLX's fast op reads back the sum a second kernel wrote: a pass over
# memory and a launch fewer, the argument above in the other direction, so it holds without a
# measurement too.
FUSED_WITH_ITS_INPUT: frozenset[str] = frozenset({"metal", "cuda"})
_ELEMENTWISE = family(Family.UNARY) | family(Family.BINARY) | family(Family.TERNARY)


def _left_for_fusion(m: Match, primitive: str, rule: str) -> bool:
    """The fuse stage follows and the chip's tuning row lists ``primitive`` under ``rule``."""
    tuning = m.context.get("tuning")
    return bool(m.context.get("fusing")) and tuning is not None and primitive in getattr(tuning, rule)


def _norm_output(graph: Graph, v: Var) -> Var:
    """Where a norm's value ends: ``v`` followed through what the norm rules fold into the fast
    op (a cast, a weight, a bias: a vector along the row), while each step has one reader."""
    while not graph.is_output(v) and len(graph.users(v)) == 1:
        (u,) = graph.users(v)
        other = [w for w in u.inputs if w is not v]
        if u.primitive == "AsType" or (u.primitive in ("Multiply", "Add") and len(other) == 1
                                       and _along_row(graph, other[0], v.shape[-1:])):
            v = u.outputs[0]
        else:
            break
    return v


def _along_row(graph: Graph, w: Var, row: tuple[int, ...]) -> bool:
    e = graph.producer(w)
    if e is not None and e.primitive == "Broadcast":
        w = e.inputs[0]
    return w.shape[-1:] == row and all(d == 1 for d in w.shape[:-1])


def _fused_reads_fewer_bytes(m: Match, v: Var) -> bool:
    """The fuse stage follows and only pointwise work reads the norm's value ``v``
    (`FUSED_WHEN_FEWER_BYTES`)."""
    if not m.context.get("fusing") or m.context.get("backend") not in FUSED_WHEN_FEWER_BYTES:
        return False
    end = _norm_output(m.graph, v)
    readers = m.graph.users(end)
    return not m.graph.is_output(end) and bool(readers) and all(u.primitive in _ELEMENTWISE for u in readers)


def _input_from_pointwise(m: Match, x: Var) -> bool:
    """The fuse stage follows and the norm's input ``x`` is computed by pointwise work
    (`FUSED_WITH_ITS_INPUT`)."""
    if not m.context.get("fusing") or m.context.get("backend") not in FUSED_WITH_ITS_INPUT:
        return False
    e = m.graph.producer(x)
    if (e is not None and e.primitive == "AsType" and x.dtype == "float32"
            and e.inputs[0].dtype in _HALF):  # the norm's own float32 cast (MLX's fallback)
        e = m.graph.producer(e.inputs[0])
    return e is not None and e.primitive in _ELEMENTWISE and e.primitive != "AsType"


def mean(of: Pat, name: str) -> Pat:
    """``sum(of, axes) * (1/N)`` or ``sum(of, axes) / N``: a mean with its axes kept (``name``: the
    Reduce, ``name_n``: 1/N, or ``name_d``: N)."""
    total = P("Reduce", of, name=name, where=lambda e: e.params["kind"] == "sum")
    return P("Multiply", total, P.scalar(name + "_n")) | P("Divide", total, P.scalar(name + "_d"))


def _inverse_count(m: Match, name: str) -> float:
    if name + "_n" in m.scalars:
        return float(m.value(name + "_n"))
    n = m.value(name + "_d")
    return 1.0 / n if n else float("inf")


def mean_over_last_axis(m: Match, name: str, x: Var) -> str | None:
    """Why the mean bound as ``name`` is not a mean of ``x``'s rows (None when it is)."""
    axes = tuple(a % x.ndim for a in m.eqn(name).params["axes"])
    if axes != (x.ndim - 1,):
        return f"the mean is over axes {axes}, not the last axis"
    if not close(_inverse_count(m, name), 1.0 / x.shape[-1]):
        return f"the mean divides by {1.0 / _inverse_count(m, name):.6g}, not the row length {x.shape[-1]}"
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


_IN_FLOAT16 = ("a norm computed in float16: its squares overflow past 256 where the fast op's "
               "float32 statistics do not")


def rms_norm(m: Match):  # x * rsqrt(mean(x^2) + eps) -> RMSNorm(x, 1)
    x = m["x"]
    if not _float_rows(x):
        return None
    why = mean_over_last_axis(m, "ms", x) or (_IN_FLOAT16 if x.dtype == "float16" else None)
    if why:
        return Miss(why)
    if _left_for_fusion(m, "RMSNorm", "norms_generated_at_least_as_fast"):
        if _is_centered(m, x):
            return None  # the RMS of x - mean(x): the LayerNorm rule speaks for it
        return Note(_FOR_FUSION.format(norm="RMSNorm", backend=m.context["backend"]))
    reads = _fused_reads_fewer_bytes(m, m.root.outputs[0])
    if reads or _input_from_pointwise(m, x):
        if _is_centered(m, x):
            return None  # as above
        return Note(f"RMSNorm left decomposed for the fuse stage: {_FEWER_BYTES if reads else _OF_POINTWISE}")
    eps = float(m.value("eps"))
    m.detail = f"RMSNorm[eps={eps:.3g}] over rows of {x.type_str()}"
    return m.add("RMSNorm", [x, m.constant(1, x.dtype)], eps=eps)


def layer_norm(m: Match):  # (x - mean(x)) * rsqrt(var(x) + eps) -> LayerNorm(x, 1, 0)
    x = m["x"]
    if not _float_rows(x):
        return None
    why = (mean_over_last_axis(m, "mu", x) or mean_over_last_axis(m, "var", x)
           or (_IN_FLOAT16 if x.dtype == "float16" else None))
    if why:
        return Miss(why)
    if _left_for_fusion(m, "LayerNorm", "norms_generated_at_least_as_fast"):
        return Note(_FOR_FUSION.format(norm="LayerNorm", backend=m.context["backend"]))
    reads = _fused_reads_fewer_bytes(m, m.root.outputs[0])
    if reads or _input_from_pointwise(m, x):
        return Note(f"LayerNorm left decomposed for the fuse stage: {_FEWER_BYTES if reads else _OF_POINTWISE}")
    eps = float(m.value("eps"))
    m.detail = f"LayerNorm[eps={eps:.3g}] over rows of {x.type_str()}"
    return m.add("LayerNorm", [x, m.constant(1, x.dtype), m.constant(0, x.dtype)], eps=eps)


_FOR_FUSION = ("{norm} left decomposed for the fuse stage: on {backend} its generated row kernel "
               "measured at least as fast as MLX's fast op, and fuses with its neighbours")
_FEWER_BYTES = ("only pointwise work reads it, so one generated kernel reads fewer bytes than MLX's "
                "fast op and a second kernel")
_OF_POINTWISE = ("its input is computed by pointwise work (a residual add, another norm's last step), "
                 "so one generated kernel computes both, where MLX's fast op reads back what a second "
                 "kernel wrote")


# A GPU trace's norm primitive is MLX's GPU kernel, which divides its sums by the row length
# (sum / n); MLX's CPU fallback (mlx/fast.cpp) multiplies by 1 / n, which rounds differently:
# with eps = 0 a layer norm of a constant row of 41 ones is NaN in the kernel (41 / 41 is 1, the
# row centred is 0, times rsqrt(0)) and +-1 the other way (41 * fl(1/41) is not 1). The
# decompositions below are the kernel's. (Metal's kernel takes the variance as
# E[x^2] - mean^2 in one pass; CUDA's, as here, in two.)


def decomposed_rms_norm(m, x: Var, w: Var | None, eps: float, dtype: str) -> Var:
    """RMSNorm(x, w) as MLX's GPU kernels compute it, op for op: float32 statistics, the sum of
    squares divided by the row length (see above), one cast back to ``dtype``, the weight
    (``None``: none). ``m`` builds the equations: a `Match`, or a `NormBuilder`."""
    xf = m.astype(x, "float32")
    total = m.add("Reduce", [m.add("Square", [xf])], kind="sum", axes=(xf.ndim - 1,))
    ms = m.add("Divide", [total, m.splat(float(x.shape[-1]), total)])
    inv = m.add("Sqrt", [m.add("Add", [ms, m.splat(eps, ms)])], reciprocal=True)
    y = m.astype(m.add("Multiply", [xf, m.add("Broadcast", [inv], shape=xf.shape)]), dtype)
    if w is not None:
        y = m.add("Multiply", [y, m.add("Broadcast", [m.astype(w, dtype)], shape=y.shape)])
    return y


def decomposed_layer_norm(m, x: Var, w: Var | None, b: Var | None, eps: float, dtype: str) -> Var:
    """LayerNorm(x, w, b) as MLX's GPU kernels compute it, op for op: float32 statistics, two
    passes (mlx/backend/cuda/layer_norm.cu), sums divided by the row length (see above), one cast
    back to ``dtype``, the weight and the bias (``None``: none). ``m`` as `decomposed_rms_norm`."""
    xf = m.astype(x, "float32")

    def mean(v):
        total = m.add("Reduce", [v], kind="sum", axes=(v.ndim - 1,))
        return m.add("Divide", [total, m.splat(float(x.shape[-1]), total)])

    d = m.add("Subtract", [xf, m.add("Broadcast", [mean(xf)], shape=xf.shape)])
    var = mean(m.add("Square", [d]))
    inv = m.add("Sqrt", [m.add("Add", [var, m.splat(eps, var)])], reciprocal=True)
    y = m.astype(m.add("Multiply", [d, m.add("Broadcast", [inv], shape=xf.shape)]), dtype)
    if w is not None:
        y = m.add("Multiply", [y, m.add("Broadcast", [m.astype(w, dtype)], shape=y.shape)])
    if b is not None:
        y = m.add("Add", [y, m.add("Broadcast", [m.astype(b, dtype)], shape=y.shape)])
    return y


class NormBuilder:
    """The few `Match` building steps the decompositions use, over a `GraphBuilder`."""

    def __init__(self, builder: GraphBuilder):
        self.builder = builder

    def add(self, primitive: str, inputs, **params) -> Var:
        return self.builder.add(primitive, inputs, **params)[0]

    def astype(self, var: Var, dtype: str) -> Var:
        return var if var.dtype == dtype else self.add("AsType", [var], dtype=dtype)

    def splat(self, value, like: Var) -> Var:
        c = self.builder.constant(mx.array(value, dtype=dtypes.to_mx(like.dtype)))
        return c if not like.shape else self.add("Broadcast", [c], shape=like.shape)


def decompose_norm(e: Eqn) -> Graph:
    """An ``RMSNorm`` or ``LayerNorm`` equation as a graph over its inputs computing what MLX's GPU
    kernels compute (a 0-d weight or bias is MLX's "none").

    Raises:
        ValueError: ``e`` is no norm.
    """
    if e.primitive not in ("RMSNorm", "LayerNorm"):
        raise ValueError(f"decompose_norm: {e.primitive} is not RMSNorm or LayerNorm")
    gb = GraphBuilder()
    x, *rest = (gb.input(v.shape, v.dtype) for v in e.inputs)
    rest = [v if v.ndim else None for v in rest]
    m, eps, dtype = NormBuilder(gb), e.params["eps"], e.outputs[0].dtype
    y = (decomposed_rms_norm(m, x, *rest, eps, dtype) if e.primitive == "RMSNorm"
         else decomposed_layer_norm(m, x, *rest, eps, dtype))
    return gb.build([y])


def rms_norm_for_fusion(m: Match):  # RMSNorm(x, w) read by, or of, pointwise work -> its decomposition
    x, w = m.root.inputs
    reads = _fused_reads_fewer_bytes(m, m.root.outputs[0])
    if not (reads or _input_from_pointwise(m, x)):
        return None
    y = decomposed_rms_norm(m, x, None if _unit(m, "w", 1) else w, m.root.params["eps"],
                            m.root.outputs[0].dtype)
    m.detail = f"RMSNorm decomposed for the fuse stage: {_FEWER_BYTES if reads else _OF_POINTWISE}"
    return y


def layer_norm_for_fusion(m: Match):  # LayerNorm(x, w, b) -> its decomposition, for the fuse stage
    x, w, b = m.root.inputs
    measured = _left_for_fusion(m, "LayerNorm", "norms_generated_faster")
    reads = _fused_reads_fewer_bytes(m, m.root.outputs[0])
    if not (measured or reads or _input_from_pointwise(m, x)):
        return None
    y = decomposed_layer_norm(m, x, None if _unit(m, "w", 1) else w, None if _unit(m, "b", 0) else b,
                              m.root.params["eps"], m.root.outputs[0].dtype)
    m.detail = "LayerNorm decomposed for the fuse stage: " + (
        f"on {m.context['backend']} its generated row kernel is faster than mx.fast.layer_norm "
        "(the tuning row's norms_generated_faster)"
        if measured else _FEWER_BYTES if reads else _OF_POINTWISE)
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


def _normalised(x: Pat, variance: Pat) -> Pat:
    """``x * rsqrt(variance)`` or ``x / sqrt(variance)`` (the variance broadcast over rows)."""
    def root(reciprocal: bool) -> Pat:
        return P("Broadcast", P("Sqrt", variance, where=lambda e: e.params["reciprocal"] == reciprocal))

    return P("Multiply", x, root(True)) | P("Divide", x, root(False))


def _square(x: Pat) -> Pat:
    return P("Square", x) | P("Multiply", x, x) | P("Power", x, P.scalar(value=2.0))


_x = P.var("x")
_rms = _normalised(_x, P("Add", mean(_square(_x), "ms"), P.scalar("eps")))
_centered = P("Subtract", _x, P("Broadcast", mean(_x, "mu")), name="d")
_layer = _normalised(_centered, P("Add", mean(_square(P.var("d")), "var"), P.scalar("eps")))
_up = P("AsType", _x, name="up", where=lambda e: e.params["dtype"] == "float32")
_vector = P("Broadcast", P.var("w")) | P.var("w")

NORMS = Rules(
    [
        (P("LayerNorm", P.var("x"), P.var("w"), P.var("b")), layer_norm_for_fusion),
        (P("RMSNorm", P.var("x"), P.var("w")), rms_norm_for_fusion),
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
