"""Graph layer: the projections of a few rows as one region (``Fused`` of kind "projection"):
``x @ W_i^T`` (+ a bias) for one or more weights ``W_i`` [N_i, K] read by the same x of few rows
(a decode step's q / k / v or gate / up projections), dense or affine-quantized, one generated kernel
(`mlxtriton.codegen.projection`) that reads each weight once. A SwiGLU gate ``silu(x @ W_g^T) *
(x @ W_u^T)`` of two of its products, or a product's rotary embedding (``mx.fast.rope`` of its
heads, as attention's q and k), is one of its outputs, computed in the kernel's epilogue. The
fuse stage builds it (`mlxtriton.fusion.projections`), codegen renders it. May import the graph
layer.
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass
from typing import NamedTuple

from mlxtriton.graph.core import Eqn, Graph, Var
from mlxtriton.graph.fused import fused_eqn
from mlxtriton.graph.primitives import RESHAPES
from mlxtriton.graph.transforms import make_eqn

KIND = "projection"
PRODUCTS = ("Matmul", "AddMM", "QuantizedMatmul")
FLOATS = ("float32", "float16", "bfloat16")
# The kernel's lanes each read 16 bytes of a weight row a step.
VECTOR_BYTES = 16


@dataclass(frozen=True)
class Rope:
    """MLX's ``RoPE`` (forward, every lane of a head rotated, as ``mx.fast.rope``) of a product's
    output viewed as [B, heads, length, head_dim]: x's rows are B sequences of ``length``
    positions, and lanes (i, i + head_dim / 2) of a head (``traditional``: 2i, 2i + 1) at position
    l of sequence b turn by (offset[b] + l) * scale * inv_freq_i, inv_freq_i = 1 / freqs[i] (an
    input of head_dim / 2 floats, ``base`` None) or base^(-i / (head_dim / 2)). ``offsets``: the
    shape of the int32 offset: () or (1,) (every sequence at one offset) or (B,)."""

    heads: int
    length: int
    traditional: bool
    scale: float
    base: float | None
    offsets: tuple[int, ...]


@dataclass(frozen=True)
class Result:
    """One output of a projection kernel: ``products`` ``(i,)`` is y_i, rotated by ``rope``
    where it has one (then of shape [B, heads, length, head_dim]); ``(g, u)`` is ``silu(y_g) *
    y_u`` of two products of one width (a SwiGLU gate)."""

    products: tuple[int, ...]
    rope: Rope | None = None


@dataclass(frozen=True)
class Projection:
    """What one projection kernel computes: ``y_i = x @ W_i^T`` for x [*lead, depth] in ``dtype``
    and weights of ``widths[i]`` rows of ``depth``: dense in ``dtype`` (``bits`` 0) or
    affine-quantized as MLX packs them (``bits`` 4 or 8: uint32 words of ``32 / bits`` values,
    the lowest bits first, a float scale and bias in ``dtype`` per ``group_size`` values of a
    row, value = scale * q + bias). ``biased[i]``: product i adds a vector of ``widths[i]``
    values in ``dtype`` to every row (``nn.Linear``'s bias: ``AddMM``); () for none.
    ``results``: the kernel's outputs (`Result`); () for y_i of every i."""

    lead: tuple[int, ...]
    depth: int
    widths: tuple[int, ...]
    dtype: str
    bits: int = 0
    group_size: int = 0
    biased: tuple[bool, ...] = ()
    results: tuple[Result, ...] = ()

    @property
    def outputs(self) -> tuple[Result, ...]:
        """The kernel's outputs (`results`, or one per product)."""
        return self.results or tuple(Result((i,)) for i in range(len(self.widths)))

    def units(self, r: Result) -> int:
        """Columns of the kernel's grid output ``r`` takes: its width, or its pairs of lanes."""
        width = self.widths[r.products[0]]
        return width // 2 if r.rope else width

    @property
    def columns(self) -> tuple[int, ...]:
        """Columns of the kernel's grid each output takes (`units`)."""
        return tuple(self.units(r) for r in self.outputs)

    def shape(self, r: Result) -> tuple[int, ...]:
        """The shape of output ``r``."""
        width = self.widths[r.products[0]]
        if r.rope is None:
            return (*self.lead, width)
        q = r.rope
        return (self.rows // q.length, q.heads, q.length, width // q.heads)

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


def before_reshapes(graph_producer, v: Var) -> tuple[Var, list[Eqn]]:
    """The value ``v`` is a reshape of (through `mlxtriton.graph.primitives.RESHAPES`: every
    element keeps its row-major index), and those reshapes, last first."""
    chain = []
    while (e := graph_producer(v)) is not None and e.primitive in RESHAPES:
        chain.append(e)
        v = e.inputs[0]
    return v, chain


def gate_of(graph_producer, out: Var) -> tuple[Var, Var, list[Eqn]] | None:
    """``(g, u, eqns)`` when ``out`` is ``silu(g) * u`` (``g * sigmoid(g) * u``, as mlx.nn
    writes it) of two values of one shape, ``eqns`` the sigmoid and the two products, else None."""
    m = graph_producer(out)
    if m is None or m.primitive != "Multiply":
        return None
    for a, u in (m.inputs, m.inputs[::-1]):
        silu = graph_producer(a)
        if silu is None or silu.primitive != "Multiply":
            continue
        for g, s in (silu.inputs, silu.inputs[::-1]):
            sig = graph_producer(s)
            if (sig is not None and sig.primitive == "Sigmoid" and sig.inputs[0] is g
                    and g.shape == u.shape == out.shape):
                return g, u, [sig, silu, m]
    return None


def rope_of(graph_producer, out: Var) -> tuple[Var, list[Eqn], Rope, tuple[Var, ...]] | None:
    """``(y, eqns, rope, inputs)`` when ``out`` is a `Rope` the kernel computes of ``y`` [..., heads
    * head_dim] (through reshapes) viewed as [B, length, heads, head_dim] and transposed to [B,
    heads, length, head_dim], as mlx-lm's attention writes it: ``eqns`` the reshapes, the transpose
    and the RoPE, ``inputs`` its offset (and freqs), else None."""
    e = graph_producer(out)
    if e is None or e.primitive != "RoPE" or not e.params["forward"]:
        return None
    t = graph_producer(e.inputs[0])
    if t is None or t.primitive != "Transpose" or tuple(t.params["axes"]) != (0, 2, 1, 3):
        return None
    b, length, heads, dim = t.inputs[0].shape
    offset, freqs = e.inputs[1], e.inputs[2:]
    if e.params["dims"] != dim or dim % 2 or offset.dtype != "int32" or offset.size not in (1, b):
        return None
    if offset.ndim > 1 or freqs and (freqs[0].dtype != "float32" or freqs[0].shape != (dim // 2,)):
        return None
    y, moves = before_reshapes(graph_producer, t.inputs[0])
    rope = Rope(heads, length, bool(e.params["traditional"]), float(e.params["scale"]),
                None if freqs else float(e.params["base"]), tuple(offset.shape))
    return y, [*moves, t, e], rope, tuple(e.inputs[1:])


def _gate(g: Var, u: Var) -> list[Eqn]:
    """``silu(g) * u`` as MLX ops, as mlx.nn writes it."""
    sig = make_eqn("Sigmoid", [g])
    silu = make_eqn("Multiply", [g, sig.outputs[0]])
    return [sig, silu, make_eqn("Multiply", [silu.outputs[0], u])]


def _rope(y: Var, shape: tuple[int, ...], rope: Eqn, inputs: list[Var]) -> list[Eqn]:
    """``rope``'s RoPE of ``y`` viewed as ``shape`` [B, heads, length, head_dim], as MLX ops."""
    b, heads, length, dim = shape
    r = make_eqn("Reshape", [y], {"shape": (b, length, heads, dim)})
    t = make_eqn("Transpose", [r.outputs[0]], {"axes": (0, 2, 1, 3)})
    return [r, t, make_eqn("RoPE", [t.outputs[0], *inputs], dict(rope.params))]


class Epilogue(NamedTuple):
    """An output of a projection region computed from its products: a SwiGLU gate (``products``
    (g, u)) or a RoPE of one product (``rope`` the RoPE equation, which ``out`` is the output of)."""

    products: tuple[int, ...]
    out: Var
    rope: Eqn | None = None


def projection_region(x: Var, weights: list[tuple[Var, ...]], eqns: list[Eqn],
                      epilogues: tuple[Epilogue, ...] = ()) -> Eqn:
    """The Fused equation of kind "projection" computing the outputs of ``eqns`` (each a Matmul
    or AddMM of ``x`` by a weight transposed, or a QuantizedMatmul of ``x``; ``weights`` their
    operands after x: the weight and an AddMM's bias vector, or a QuantizedMatmul's arrays) in
    one kernel, ``epilogues`` in place of the products they read (a gate's output of x's leading
    axes and its products' width). Its body is those products and epilogues, which is how the
    region runs as MLX ops."""
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
    products = [e.outputs[0] for e in body_eqns if e.primitive in PRODUCTS]
    read = {i for ep in epilogues for i in ep.products}
    results = [p for i, p in enumerate(products) if i not in read]
    outs = [o for i, o in enumerate(outs) if i not in read]
    for ep in epilogues:
        if ep.rope is None:
            body_eqns += _gate(*(products[i] for i in ep.products))
        else:
            extra = ep.rope.inputs[1:]
            inner = [Var(v.shape, v.dtype) for v in extra]
            inputs += extra
            inner_inputs += inner
            body_eqns += _rope(products[ep.products[0]], ep.out.shape, ep.rope, inner)
        if body_eqns[-1].outputs[0].aval != ep.out.aval:
            raise ValueError(f"projection epilogue gives {body_eqns[-1].outputs[0].type_str()}, "
                             f"not {ep.out.type_str()}")
        results.append(body_eqns[-1].outputs[0])
        outs.append(ep.out)
    body = Graph(tuple(inner_inputs), tuple(body_eqns), tuple(results))
    return fused_eqn(body, tuple(inputs), tuple(outs), KIND, f"{KIND}_{body.structural_hash[:10]}")


def spec_of(body: Graph) -> Projection:
    """The `Projection` of a projection region's body (`projection_region`)."""
    producer = {o: e for e in body.eqns for o in e.outputs}.get
    specs, products, x = [], [], body.inputs[0]
    for e in body.eqns:
        if e.primitive not in PRODUCTS:
            continue
        products.append(e.outputs[0])
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
    if tuple(body.outputs) == tuple(products):
        return spec
    results = []
    for out in body.outputs:
        if out in products:
            results.append(Result((products.index(out),)))
            continue
        gate, rope = gate_of(producer, out), rope_of(producer, out)
        if gate is not None and gate[0] in products and gate[1] in products:
            results.append(Result((products.index(gate[0]), products.index(gate[1]))))
        elif rope is not None and rope[0] in products:
            results.append(Result((products.index(rope[0]),), rope[2]))
        else:
            raise ValueError(f"not a projection region: output {out.type_str()} is no product, "
                             "gate or RoPE")
    spec = dataclasses.replace(spec, results=tuple(results))
    for r, out in zip(results, body.outputs):
        if spec.shape(r) != out.shape:
            raise ValueError(f"not a projection region: output {out.type_str()} is not of shape "
                             f"{list(spec.shape(r))}")
    return spec


__all__ = ["KIND", "PRODUCTS", "Rope", "Result", "Projection", "Epilogue", "dense_weight",
           "bias_vector", "projection_of", "merged", "before_reshapes", "gate_of", "rope_of",
           "projection_region", "spec_of"]
