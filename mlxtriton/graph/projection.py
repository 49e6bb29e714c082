"""Graph layer: the projections of a few rows as one region (``Fused`` of kind "projection"):
``x @ W_i^T`` (+ a bias) for one or more weights ``W_i`` [N_i, K] read by the same x of few rows
(a decode step's q / k / v or gate / up projections), dense or affine-quantized, one generated kernel
(`mlxtriton.codegen.projection`) that reads each weight once. The fuse stage builds it
(`mlxtriton.fusion.projections`), codegen renders it. May import the graph layer.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from mlxtriton.graph.core import Eqn, Graph, Var
from mlxtriton.graph.fused import fused_eqn
from mlxtriton.graph.transforms import make_eqn

KIND = "projection"
PRODUCTS = ("Matmul", "AddMM", "QuantizedMatmul")
FLOATS = ("float32", "float16", "bfloat16")
# The kernel's lanes each read 16 bytes of a weight row a step.
VECTOR_BYTES = 16


@dataclass(frozen=True)
class Projection:
    """What one projection kernel computes: ``y_i = x @ W_i^T`` for x [*lead, depth] in ``dtype``
    and weights of ``widths[i]`` rows of ``depth``: dense in ``dtype`` (``bits`` 0) or
    affine-quantized as MLX packs them (``bits`` 4 or 8: uint32 words of ``32 / bits`` values,
    the lowest bits first, a float scale and bias in ``dtype`` per ``group_size`` values of a
    row, value = scale * q + bias). ``biased[i]``: product i adds a vector of ``widths[i]``
    values in ``dtype`` to every row (``nn.Linear``'s bias: ``AddMM``); () for none."""

    lead: tuple[int, ...]
    depth: int
    widths: tuple[int, ...]
    dtype: str
    bits: int = 0
    group_size: int = 0
    biased: tuple[bool, ...] = ()

    def has_bias(self, i: int) -> bool:
        """Whether product ``i`` adds a bias vector."""
        return bool(self.biased) and self.biased[i]

    @property
    def rows(self) -> int:
        """Rows of x: its leading axes (``lead``) flattened."""
        return math.prod(self.lead)

    @property
    def chunk(self) -> int:
        """Values of a weight row one lane reads a step (16 bytes of it)."""
        if self.bits:
            return VECTOR_BYTES * 8 // self.bits
        return VECTOR_BYTES // (4 if self.dtype == "float32" else 2)


def dense_weight(graph_producer, eqn: Eqn) -> Var | None:
    """The [N, K] array ``w`` of a ``Matmul(x, Transpose(w))`` or ``AddMM(x, Transpose(w), c)``
    (``graph_producer``: var -> producing equation or None), else None."""
    t = graph_producer(eqn.inputs[1])
    if t is None or t.primitive != "Transpose" or t.inputs[0].ndim != 2:
        return None
    return t.inputs[0] if tuple(t.params["axes"]) == (1, 0) else None


def bias_vector(graph_producer, eqn: Eqn) -> Var | None:
    """The vector an ``AddMM``'s addend broadcasts along its rows, when it is one, else None."""
    c = eqn.inputs[2]
    b = graph_producer(c)
    src = b.inputs[0] if b is not None and b.primitive == "Broadcast" else c
    n = eqn.outputs[0].shape[-1]
    return src if src.shape == (n,) else None


def projection_of(eqn: Eqn, weight: tuple[Var, ...]) -> Projection | str:
    """The one-weight `Projection` of ``eqn`` (a ``Matmul`` of x by ``weight[0]`` transposed, an
    ``AddMM`` of that and the bias vector ``weight[1]``, or a ``QuantizedMatmul`` of x by
    ``weight`` = (w, scales, biases)), or why the kernel does not compute it."""
    x = eqn.inputs[0]
    if x.dtype not in FLOATS:
        return f"x of {x.dtype}"
    if x.ndim < 1 or 0 in x.shape:
        return "an empty x"
    k = x.shape[-1]
    if eqn.primitive in ("Matmul", "AddMM"):
        w = weight[0]
        if w.dtype != x.dtype or w.shape[1] != k:
            return f"x {x.type_str()} and weight {w.type_str()}"
        biased = ()
        if eqn.primitive == "AddMM":
            if (eqn.params["alpha"], eqn.params["beta"]) != (1.0, 1.0):
                return "a scaled product or addend (alpha, beta not 1)"
            if len(weight) != 2 or weight[1].dtype != x.dtype:
                return "an addend that is no bias vector of x's dtype"
            biased = (True,)
        spec = Projection(tuple(x.shape[:-1]), k, (w.shape[0],), x.dtype, biased=biased)
    elif eqn.primitive == "QuantizedMatmul":
        p = eqn.params
        if str(p["mode"]) != "affine" or not p["transpose"] or len(weight) != 3:
            return f"{p['mode']} quantization{'' if p['transpose'] else ', not transposed'}"
        if p["bits"] not in (4, 8):
            return f"{p['bits']}-bit weights (the kernel reads 4 and 8)"
        w, scales, biases = weight
        if x.dtype == "float32":
            return "float32 x with quantized weights (the kernel reads half-precision x)"
        if scales.dtype != x.dtype or biases.dtype != x.dtype or w.dtype != "uint32":
            return f"scales {scales.dtype} and biases {biases.dtype} with x {x.dtype}"
        spec = Projection(tuple(x.shape[:-1]), k, (w.shape[0],), x.dtype, p["bits"], p["group_size"])
        if spec.group_size % spec.chunk or k % spec.group_size:
            return f"groups of {spec.group_size} over rows of {k}"
    else:
        return f"{eqn.primitive} is no projection"
    if k % spec.chunk:
        return f"rows of {k}, not a multiple of the {spec.chunk} values a lane reads a step"
    return spec


def merged(specs: list[Projection]) -> Projection | None:
    """One `Projection` computing every one of ``specs`` (one x, one kind of weight), else None."""
    first = specs[0]
    if any((s.lead, s.depth, s.dtype, s.bits, s.group_size) !=
           (first.lead, first.depth, first.dtype, first.bits, first.group_size) for s in specs):
        return None
    biased = tuple(s.has_bias(i) for s in specs for i in range(len(s.widths)))
    return Projection(first.lead, first.depth, tuple(w for s in specs for w in s.widths),
                      first.dtype, first.bits, first.group_size, biased if any(biased) else ())


def projection_region(x: Var, weights: list[tuple[Var, ...]], eqns: list[Eqn], spec: Projection) -> Eqn:
    """The Fused equation of kind "projection" computing the outputs of ``eqns`` (each a Matmul
    or AddMM of ``x`` by a weight transposed, or a QuantizedMatmul of ``x``; ``weights`` their
    operands after x: the weight and an AddMM's bias vector, or a QuantizedMatmul's arrays) in
    one kernel. Its body is those products, which is how the region runs as MLX ops."""
    inner_x = Var(x.shape, x.dtype)
    inputs, body_eqns, outs = [x], [], []
    inner_inputs = [inner_x]
    for e, operands in zip(eqns, weights):
        inner = [Var(v.shape, v.dtype) for v in operands]
        inputs += operands
        inner_inputs += inner
        if e.primitive == "Matmul":
            t = make_eqn("Transpose", [inner[0]], {"axes": (1, 0)})
            body_eqns += [t, make_eqn("Matmul", [inner_x, t.outputs[0]], dict(e.params))]
        elif e.primitive == "AddMM":
            t = make_eqn("Transpose", [inner[0]], {"axes": (1, 0)})
            c = make_eqn("Broadcast", [inner[1]], {"shape": e.inputs[2].shape})
            body_eqns += [t, c, make_eqn("AddMM", [inner_x, t.outputs[0], c.outputs[0]], dict(e.params))]
        else:
            body_eqns.append(make_eqn(e.primitive, [inner_x, *inner], dict(e.params)))
        if body_eqns[-1].outputs[0].aval != e.outputs[0].aval:
            raise ValueError(f"projection region gives {body_eqns[-1].outputs[0].type_str()}, "
                             f"not {e.outputs[0].type_str()}")
        outs.append(e.outputs[0])
    body = Graph(tuple(inner_inputs), tuple(body_eqns),
                 tuple(e.outputs[0] for e in body_eqns if e.primitive in PRODUCTS))
    return fused_eqn(body, tuple(inputs), tuple(outs), KIND, f"{KIND}_{body.structural_hash[:10]}")


def spec_of(body: Graph) -> Projection:
    """The `Projection` of a projection region's body (`projection_region`)."""
    producer = {o: e for e in body.eqns for o in e.outputs}.get
    specs, x = [], body.inputs[0]
    for e in body.eqns:
        if e.primitive not in PRODUCTS:
            continue
        if e.primitive == "Matmul":
            weight = (dense_weight(producer, e),)
        elif e.primitive == "AddMM":
            weight = (dense_weight(producer, e), bias_vector(producer, e))
        else:
            weight = tuple(e.inputs[1:])
        spec = projection_of(e, weight)
        if isinstance(spec, str) or e.inputs[0] is not x:
            raise ValueError(f"not a projection region: {spec}")
        specs.append(spec)
    spec = merged(specs)
    if spec is None:
        raise ValueError("not a projection region: its products differ in kind")
    return spec


__all__ = ["KIND", "PRODUCTS", "Projection", "dense_weight", "bias_vector", "projection_of", "merged",
           "projection_region", "spec_of"]
