"""Fusion layer: the products of a few rows by weight matrices (a decode step's projections)
become projection regions (`mlxtriton.graph.projection`): every ``x @ W^T`` (with a bias vector
added or not) and affine ``quantized_matmul(x, W)`` reading one x, with weights the graph's
inputs or constants, is one kernel reading each weight once; a SwiGLU gate ``silu(y_g) * y_u`` of
two of its products, or a product's RoPE (attention's q and k), where nothing else reads them, is
computed in its epilogue (one output, no kernel of its own). Which products qualify on a chip is
its tuning data (`mlxtriton.hw.tuning`: ``projection_max_rows``, ``projection_lone_rows``,
``projection_quantized``, ``projection_epilogues``). May import
mlxtriton.graph and mlxtriton.hw.
"""

from __future__ import annotations

from dataclasses import dataclass

from mlxtriton.graph.core import Eqn, Graph, Params, Var
from mlxtriton.graph.projection import (Epilogue, Projection, before_reshapes, bias_vector, dense_weight,
                                        gate_of, merged, projection_of, projection_region, rope_of)
from mlxtriton.graph.transforms import dce, topological_sort


@dataclass(frozen=True)
class ProjectionDecision:
    """One projection region, or a product of few rows left to MLX, and why."""

    region: str
    reason: str

    def as_text(self) -> str:
        return f"{self.region}: {self.reason}"


def _operands(graph: Graph, e: Eqn) -> tuple[Var, ...] | None:
    """The weight operands of a product (after x), when it is one the kernel reads."""
    if e.primitive == "Matmul" and len(e.inputs) == 2:
        w = dense_weight(graph.producer, e)
        return None if w is None else (w,)
    if e.primitive == "AddMM" and len(e.inputs) == 3:
        w, b = dense_weight(graph.producer, e), bias_vector(graph.producer, e)
        return None if w is None or b is None else (w, b)
    if e.primitive == "QuantizedMatmul" and len(e.inputs) == 4:
        return tuple(e.inputs[1:])
    return None


def _private(graph: Graph, eqns: list[Eqn], values: list[Var]) -> bool:
    """Whether only ``eqns`` read ``values`` and every value ``eqns`` define but the last."""
    inside = set(eqns)
    inner = [*values, *(v for q in eqns[:-1] for v in q.outputs)]
    return not any(graph.is_output(v) or not set(graph.users(v)) <= inside for v in inner)


def _reads_any(graph: Graph, v: Var, eqns: set[Eqn]) -> bool:
    """Whether computing ``v`` involves any of ``eqns``."""
    stack, seen = [v], set()
    while stack:
        e = graph.producer(stack.pop())
        if e is None or e in seen:
            continue
        if e in eqns:
            return True
        seen.add(e)
        stack.extend(e.inputs)
    return False


def _candidates(graph: Graph) -> list[tuple[Eqn, tuple | None, tuple | None]]:
    """Every SwiGLU gate (`gate_of`) and RoPE (`rope_of`) of ``graph``: (equation, gate, rope)."""
    found = []
    for e in graph.eqns:
        gate = gate_of(graph.producer, e.outputs[0]) if e.primitive == "Multiply" else None
        rope = rope_of(graph.producer, e.outputs[0]) if e.primitive == "RoPE" else None
        if gate is not None or rope is not None:
            found.append((e, gate, rope))
    return found


def _epilogues(graph: Graph, candidates, members: list[Eqn], spec: Projection
               ) -> list[tuple[Epilogue, list[Eqn]]]:
    """The SwiGLU gates ``silu(y_g) * y_u`` of two of the ``members``' products (one width) and
    the RoPEs of one (heads of its rows) among ``candidates`` (`_candidates`), each seen through
    reshapes and read by nothing else, with the equations each replaces."""
    index = {e.outputs[0]: i for i, e in enumerate(members)}
    found, taken = [], set()
    for e, gate, rope in candidates:
        if gate is not None:
            (g, g_moves), (u, u_moves) = (before_reshapes(graph.producer, v) for v in gate[:2])
            if g not in index or u not in index or g is u or {g, u} & taken:
                continue
            if spec.widths[index[g]] != spec.widths[index[u]]:
                continue
            eqns = [*g_moves, *u_moves, *gate[2]]
            if _private(graph, eqns, [g, u]):
                found.append((Epilogue((index[g], index[u]), e.outputs[0]), eqns))
                taken |= {g, u}
        elif rope is not None:
            y, eqns, _, extra = rope
            b, heads, length, dim = e.outputs[0].shape
            if y not in index or y in taken or b * length != spec.rows:
                continue
            if heads * dim != spec.widths[index[y]] or any(_reads_any(graph, v, set(members)) for v in extra):
                continue
            if _private(graph, eqns, [y]):
                found.append((Epilogue((index[y],), e.outputs[0], e), eqns))
                taken.add(y)
    return found


def group_projections(graph: Graph, max_rows: int, lone_rows: int, quantized: bool = True,
                      epilogues: bool = True) -> tuple[Graph, list[ProjectionDecision]]:
    """Make projection regions of ``graph``'s products of at most ``max_rows`` rows.

    Products reading the same x with the same kind of weight (dense, or quantized alike) become
    one region; a product alone on its x becomes one up to ``lone_rows`` rows; quantized
    products only with ``quantized``; gates and RoPEs in the kernel's epilogue only with
    ``epilogues``. A weight (and a bias vector) must be one of the graph's inputs or constants,
    so that the region reads nothing a member computes.

    Returns:
        ``(graph, decisions)``: the graph computes the same values (a region's body is the same
        MLX ops).
    """
    if max_rows <= 0:
        return graph, []
    fixed = set(graph.inputs) | {v for v, _ in graph.constants}
    groups: dict[tuple, list[tuple[Eqn, tuple[Var, ...], Projection]]] = {}
    decisions: list[ProjectionDecision] = []
    for e in graph.eqns:
        operands = _operands(graph, e)
        if operands is None:
            continue
        spec = projection_of(e, operands)
        if isinstance(spec, str):
            decisions.append(ProjectionDecision(e.primitive, f"left to MLX: {spec}"))
            continue
        if spec.rows > max_rows:
            continue  # a matrix product: MLX's GEMM
        if spec.bits and not quantized:
            decisions.append(ProjectionDecision(e.primitive, "left to MLX: quantized weights "
                                                "(this chip's rule: MLX's quantized kernels)"))
            continue
        if not all(v in fixed for v in operands):
            decisions.append(ProjectionDecision(e.primitive, "left to MLX: a weight the graph computes"))
            continue
        key = (e.inputs[0], spec.bits, spec.group_size)
        groups.setdefault(key, []).append((e, operands, spec))
    replaced: dict[Eqn, Eqn | None] = {}
    extra: list[Eqn] = []  # views giving a gate's output its shape
    candidates = _candidates(graph) if epilogues and groups else []
    for (x, _, _), members in groups.items():
        if len(members) == 1 and members[0][2].rows > lone_rows:
            continue
        spec = merged([s for _, _, s in members])
        if spec is None:
            continue
        eqns = [e for e, _, _ in members]
        outputs = []  # the region's epilogues
        for ep, gone in _epilogues(graph, candidates, eqns, spec):
            out = ep.out
            if ep.rope is None and out.shape != (*spec.lead, spec.widths[ep.products[0]]):
                # the kernel writes a gate in its products' shape; a view gives out's
                out = Var((*spec.lead, spec.widths[ep.products[0]]), out.dtype)
                extra.append(Eqn("Reshape", (out,), (ep.out,), Params({"shape": ep.out.shape})))
            outputs.append(ep._replace(out=out))
            replaced.update(dict.fromkeys(gone))
        region = projection_region(x, [o for _, o, _ in members], eqns, tuple(outputs))
        for e in eqns[:-1]:
            replaced[e] = None
        replaced[eqns[-1]] = region
        weights = (f"{spec.bits}-bit weights in groups of {spec.group_size}" if spec.bits
                   else f"{spec.dtype} weights") + (", bias vectors added" if any(spec.biased) else "")
        epilogue = "".join(
            f"; silu(product {ep.products[0] + 1}) * product {ep.products[1] + 1} in its epilogue"
            if ep.rope is None else f"; product {ep.products[0] + 1}'s RoPE in its epilogue"
            for ep in outputs)
        decisions.append(ProjectionDecision(
            region.params["name"],
            f"{len(eqns)} product(s) of {spec.rows} row(s) of {spec.depth} as one kernel: "
            f"{' + '.join(map(str, spec.widths))} columns of {weights}, each weight read once"
            + epilogue))
    if not replaced:
        return graph, decisions
    eqns = [replaced.get(e, e) for e in graph.eqns] + extra
    eqns = [e for e in eqns if e is not None]
    defined = [*graph.inputs, *(v for v, _ in graph.constants)]
    return dce(graph.replace(eqns=topological_sort(eqns, defined))), decisions


__all__ = ["ProjectionDecision", "group_projections"]
