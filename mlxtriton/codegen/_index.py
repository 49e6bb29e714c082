"""Codegen layer: index arithmetic. A region's domain axes merge where every access steps
through them as one, and are expressed through ``idx`` (pointwise) or ``row``/``col`` (row
kernels); `lane_access` says how a per-element access behaves across a vector's lanes.
May import the graph layer's dtypes and the codegen IR.
"""

from __future__ import annotations

import math
from typing import NamedTuple

from mlxtriton.codegen.kernel_ir import Access, Ops, UOp, map_nodes
from mlxtriton.codegen._lower_ops import Lowering
from mlxtriton.graph import dtypes as _dtypes


class _Affine(NamedTuple):
    const: int
    coeffs: dict[UOp, int]  # index variable -> coefficient
    rest: tuple[UOp, ...]  # terms that are not affine (data-dependent, div/mod)


def _affine(u: UOp, atoms: frozenset[UOp] = frozenset()) -> _Affine:
    """``u`` as const + sum(coeff * var) + rest; ``atoms`` are treated as variables too."""
    if u in atoms:
        return _Affine(0, {u: 1}, ())
    if u.op is Ops.CONST and isinstance(u.arg, int) and not isinstance(u.arg, bool):
        return _Affine(u.arg, {}, ())
    if u.op is Ops.SPECIAL:
        return _Affine(0, {u: 1}, ())
    if u.op is Ops.ADD and u.dtype in _dtypes.INTEGER:
        a, b = _affine(u.src[0], atoms), _affine(u.src[1], atoms)
        coeffs = dict(a.coeffs)
        for var, c in b.coeffs.items():
            coeffs[var] = coeffs.get(var, 0) + c
        return _Affine(a.const + b.const, coeffs, a.rest + b.rest)
    if u.op is Ops.MUL and u.src[1].op is Ops.CONST and u.dtype in _dtypes.INTEGER:
        a, c = _affine(u.src[0], atoms), u.src[1].arg
        if not a.rest:
            return _Affine(a.const * c, {var: k * c for var, k in a.coeffs.items()}, ())
    return _Affine(0, {}, (u,))


def _collapse(dims: tuple[UOp, ...], classes: list[int], accesses: list[_Affine]):
    """Merge neighbouring axes of one class (outer/inner) wherever every affine access steps
    through them as one axis; returns groups of axis indices."""
    groups: list[list[int]] = []
    for k, d in enumerate(dims):
        if d.op is not Ops.SPECIAL:
            continue  # size-1 axis
        if groups and classes[groups[-1][-1]] == classes[k]:
            prev = dims[groups[-1][-1]]
            n = d.arg[1]
            if all(a.coeffs.get(prev, 0) == a.coeffs.get(d, 0) * n for a in accesses):
                groups[-1].append(k)
                continue
        groups.append([k])
    return groups


class Space(NamedTuple):
    var_of_dim: dict[UOp, UOp]  # DIM special -> its expression over idx/row/col
    # (axes, group coordinate, idx/row/col variable, product of the variable's faster groups)
    group_vars: list[tuple[list[int], UOp, UOp, int]]
    lane_group: tuple[list[int], int] | None  # axes and size of the fastest element group

    @property
    def coords(self) -> frozenset[UOp]:
        return frozenset(coord for _, coord, _, _ in self.group_vars)

    @property
    def lane_coord(self) -> UOp | None:
        if self.lane_group is None:
            return None
        return next(coord for g, coord, _, _ in self.group_vars if g is self.lane_group[0])

    @property
    def row_coord(self) -> UOp | None:
        """The fastest-varying coordinate across rows (listed first among the row groups)."""
        return next((coord for _, coord, var, _ in self.group_vars if var.arg[0] == "row"), None)

    def group_coeffs(self, index: UOp) -> tuple[_Affine, dict[UOp, int]]:
        """An index's affine form and its coefficient on each group coordinate (a whole
        variable counts as sum(coord * inner))."""
        aff = _affine(index, self.coords)
        out: dict[UOp, int] = {}
        for _, coord, var, inner in self.group_vars:
            c = aff.coeffs.get(coord, 0)
            if coord is not var:
                c += aff.coeffs.get(var, 0) * inner
            out[coord] = c
        return aff, out


def index_space(ctx: Lowering, stores: list[UOp]) -> Space:
    accesses = [_affine(u.src[1]) for s in stores for u in s.toposort
                if u.op in (Ops.LOAD, Ops.STORE)]
    n = len(ctx.dims)
    classes = [1 if k in ctx.reduce_axes else 0 for k in range(n)]
    groups = _collapse(ctx.dims, classes, accesses)
    if ctx.is_row:
        rows = math.prod(ctx.domain[k] for k in range(n) if classes[k] == 0)
        length = math.prod(ctx.domain[k] for k in range(n) if classes[k] == 1)
        spaces = {0: UOp(Ops.SPECIAL, ctx.index_dtype, (), ("row", rows)),
                  1: UOp(Ops.SPECIAL, ctx.index_dtype, (), ("col", length))}
    else:
        spaces = {0: UOp(Ops.SPECIAL, ctx.index_dtype, (), ("idx", math.prod(ctx.domain)))}
    var_of_dim: dict[UOp, UOp] = {}
    group_vars = []
    for cls, var in spaces.items():
        mine = [g for g in groups if classes[g[0]] == cls]
        inner = 1
        for g in reversed(mine):
            size = math.prod(ctx.domain[k] for k in g)
            coord = (var // inner) % size
            group_vars.append((g, coord, var, inner))
            sub = 1
            for k in reversed(g):
                var_of_dim[ctx.dims[k]] = (coord // sub) % ctx.domain[k]
                sub *= ctx.domain[k]
            inner *= size
    element_class = 1 if ctx.is_row else 0
    element_groups = [g for g in groups if classes[g[0]] == element_class]
    lane = (element_groups[-1], math.prod(ctx.domain[k] for k in element_groups[-1])) \
        if element_groups else None
    return Space(var_of_dim, group_vars, lane)


def _rebuild_index(ctx: Lowering, space: Space, index: UOp, done: dict[UOp, UOp]) -> UOp:
    """An index over DIM axes rebuilt over the merged groups: one multiply-add per group."""
    aff = _affine(index)
    out = UOp.const(ctx.index_dtype, aff.const)
    by_var: dict[UOp, list[tuple[UOp, int, int]]] = {}
    for axes, coord, var, inner in space.group_vars:
        by_var.setdefault(var, []).append((coord, aff.coeffs.get(ctx.dims[axes[-1]], 0), inner))
    for var, terms in by_var.items():
        scale = terms[0][1] // terms[0][2]
        if all(c == scale * inner for _, c, inner in terms):
            out = out + var * scale  # walks the variable's groups contiguously: no div/mod
        else:
            for coord, c, _ in terms:
                out = out + coord * c
    for term in aff.rest:
        out = out + done[term]
    return out


def lower_index_space(ctx: Lowering, stores: list[UOp], space: Space) -> list[UOp]:
    def fn(node, src, done):
        if node in space.var_of_dim:
            return space.var_of_dim[node]
        if node.op in (Ops.LOAD, Ops.STORE):
            new_src = list(src)
            new_src[1] = _rebuild_index(ctx, space, node.src[1], done)
            return UOp(node.op, node.dtype, tuple(new_src), node.arg)
        return None

    return map_nodes(stores, fn)


def lane_access(u: UOp, V: int, space: Space) -> Access:
    """How a per-element LOAD/STORE behaves across V lanes starting at an element index that is
    a multiple of V."""
    if V == 1 or space.lane_group is None:
        return Access.SCALAR
    axes, size = space.lane_group
    if size % V:
        return Access.SCALAR
    aff, coeffs = space.group_coeffs(u.src[1])
    if any(t.per_element for t in aff.rest):
        return Access.SCALAR
    c = coeffs.get(space.lane_coord, 0)
    if c == 0:
        return Access.UNIFORM
    if c != 1 or aff.rest or u.src[0].arg.size < 8:
        # Metal passes buffers of fewer than 8 elements in the constant address space; no
        # vector loads there (and no use for them).
        return Access.SCALAR
    others = [k for coord, k in coeffs.items() if coord is not space.lane_coord]
    if aff.const % V or any(k % V for k in others):
        return Access.SCALAR  # start not aligned to the vector
    return Access.VECTOR


def pow2ceil(n: int) -> int:
    return 1 << max(0, (n - 1).bit_length())
