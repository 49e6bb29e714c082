"""Fusion layer: the graph -> graph pass that splits a long reduction over few rows into two
levels, so that a row kernel has enough threadgroups to fill the chip. May import mlxtriton.graph
and mlxtriton.hw.

A row kernel gives each row one threadgroup. ``mx.sum(x * x)`` over 4M elements is one row: one
threadgroup on one core streams the whole array while the others idle. Splitting the row into
``S`` segments turns it into two reductions, each an ordinary row kernel:

    sum(f(x))  ->  sum(sum(f(reshape(x, [S, L/S])), axis=-1))

the first over ``R * S`` rows of ``L / S`` elements (``f``, the pointwise work feeding the
reduction, is rebuilt on the reshaped inputs so that it fuses into that kernel: a reshape may only
sit on a region's loads), the second over ``R`` rows of ``S`` partials. Sums and products of
float16 / bfloat16 keep their partials in float32 and round once, as MLX's own reductions do.
``LogSumExp`` splits as the logsumexp of the segments' logsumexps (in float32). ``Softmax``
becomes ``exp((x - m) - log(s))``, ``m`` the row's max and ``s`` the sum of ``exp(x - m)``, both
gathered from the segments' maxima and the logs of their own shifted sums: three kernels, three
passes over memory, each with the whole chip. ``argmax`` / ``argmin`` pick the segment holding the extreme (from the segments' max or
min), then the index within it.

A sum, product, max, min, all or any over other axes (a column reduction: over leading axes, or
several apart, as NHWC batch-norm statistics over (0, 1, 2)) whose columns leave cores idle is cut
the same way along its outermost reduced axis: the first level is a column kernel over segments.
``mx.var``'s sum of squared deviations from the mean is rebuilt from the segments of the mean's
own sum (Chan's update, `_split_centred`), so both statistics read the input once.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import mlx.core as mx

from mlxtriton.graph.core import Eqn, Graph, Var
from mlxtriton.graph.transforms import dce, make_eqn, substitute, topological_sort

from mlxtriton.fusion._rules import ELEMENTWISE

SPLITTABLE = frozenset({"sum", "prod", "max", "min", "and", "or"})  # Reduce kinds; also ArgReduce,
# LogSumExp and Softmax over the last axis

# How many threadgroups a split aims for per core, from how many bytes it splits, and how long
# its segments stay are the chip's tuning data (`mlxtriton.hw.tuning`: split_groups_per_core,
# split_min_bytes, arg_split_min_bytes, split_min_segment): a reduction smaller than the minimum
# stays one level, as one threadgroup streams it in about the time the second kernel costs.
# Partials the second level combines at most: one row kernel's threadgroup.
MAX_SEGMENTS = 1024

_WIDE = {"float16": "float32", "bfloat16": "float32"}


@dataclass(frozen=True)
class SplitDecision:
    """One reduction split in two levels: ``rows`` rows (or, a column reduction, ``rows``
    columns) of ``length`` elements became ``rows * segments`` of ``length // segments``, then
    ``rows`` of ``segments``."""

    equation: int  # position in the graph the pass read
    kind: str
    rows: int
    length: int
    segments: int
    cores: int
    row: bool = True  # a reduction over trailing axes (else over others: a column reduction)

    def as_text(self) -> str:
        what = f"Reduce {self.kind}" if self.kind in SPLITTABLE else self.kind
        unit = "row(s)" if self.row else "column(s)"
        return (f"split: traced eqn {self.equation} {what} of {self.rows} {unit} x {self.length} "
                f"-> {self.rows * self.segments} x {self.length // self.segments} then "
                f"{self.rows} x {self.segments} (too few {unit[:-3]}s for {self.cores} cores)")


def segments(rows: int, length: int, first: int, itemsize: int, cores: int, tuned,
             min_bytes: int | None = None) -> int:
    """How many segments to cut each row into (1: leave it): a divisor ``S`` of ``first`` (the
    outermost reduced extent that can be cut) filling ``split_groups_per_core * cores``
    threadgroups, for at least ``min_bytes`` (default the tuning data's ``split_min_bytes``) of
    input; ``tuned`` is the chip's `mlxtriton.hw.tuning.Tuning`."""
    min_bytes = tuned.split_min_bytes if min_bytes is None else min_bytes
    if rows >= cores or rows * length * itemsize < min_bytes:
        return 1
    want = min(MAX_SEGMENTS, -(-tuned.split_groups_per_core * cores // rows),
               length // tuned.split_min_segment)
    return max((d for d in range(2, want + 1) if first % d == 0), default=1)


def column_segments(columns: int, length: int, first: int, itemsize: int, cores: int,
                    simd_width: int, tuned) -> int:
    """How many segments to cut a column reduction into (1: leave it): a divisor ``S`` of
    ``first`` (the extent that can be cut) for at least ``split_min_bytes`` of input whose columns
    leave cores without a threadgroup, as `segments` does for rows. A column kernel's
    threadgroup reads up to a SIMD-group's width of neighbouring columns
    (codegen/schedule.py `_column_threads`), so ``S`` aims at ``split_groups_per_core * cores``
    threadgroups of at least ``split_min_segment`` elements each."""
    if columns * length == 0 or columns * length * itemsize < tuned.split_min_bytes:
        return 1
    group = min(simd_width, columns)
    groups = -(-columns // group)
    if groups >= cores:
        return 1
    want = min(MAX_SEGMENTS, -(-tuned.split_groups_per_core * cores // groups),
               length * group // tuned.split_min_segment)
    return max((d for d in range(2, want + 1) if first % d == 0), default=1)


@dataclass(frozen=True)
class _Cut:
    """Where a reduction's operand is cut in segments: ``count`` of its reduced dims from
    ``first`` (the outermost alone, or several neighbours flattened) become ``(s, extent / s)``;
    the other dims stay. A rank-aligned shape with those dims all 1 (a broadcast source) keeps
    them 1; any other shape there cannot be cut."""

    operand: tuple[int, ...]
    reduced: tuple[int, ...]  # the reduction's axes of the operand
    first: int
    count: int
    s: int

    def shape(self, q: tuple[int, ...]) -> tuple[int, ...] | None:
        block, full = q[self.first:self.first + self.count], self.operand[self.first:self.first + self.count]
        if block == full:
            head = (self.s, math.prod(full) // self.s)
        elif all(d == 1 for d in block):
            head = (1, 1)
        else:
            return None
        return q[:self.first] + head + q[self.first + self.count:]

    @property
    def inner(self) -> tuple[int, ...]:
        """The first level's reduced axes in the cut shape (the segment axis is ``first``)."""
        shift = 1 - self.count
        return (self.first + 1,) + tuple(a + shift + 1 for a in self.reduced
                                         if a >= self.first + self.count)

    @property
    def segment(self) -> int:
        """Elements of the operand one segment reduces for one output element."""
        return math.prod(self.operand[a] for a in self.reduced) // self.s


class _Cone:
    """Rebuilds the pointwise work feeding a reduction on inputs whose reduced dims are cut in
    two (`_Cut`); values the cone reads from outside are reshaped (a load's index arithmetic)."""

    def __init__(self, graph: Graph, operand: Var, cut: _Cut, shared: dict):
        self.graph, self.operand, self.cut = graph, operand, cut
        self.eqns: list[Eqn] = []
        self.memo: dict[Var, Var] = {}
        # (value, shape) -> its reshape, shared by every split of the graph: two reductions of x
        # read one reshaped x, so clustering sees one load and may merge their kernels
        self.shared = shared
        self.added: list[tuple[Var, tuple[int, ...]]] = []

    def emit(self, primitive: str, inputs, **params) -> Var:
        e = make_eqn(primitive, inputs, params)
        self.eqns.append(e)
        return e.outputs[0]

    def reshape(self, v: Var, shape: tuple[int, ...]) -> Var:
        if v.shape == shape:
            return v
        if (v, shape) not in self.shared:
            self.shared[v, shape] = self.emit("Reshape", [v], shape=shape)
            self.added.append((v, shape))
        return self.shared[v, shape]

    def abandon(self) -> None:
        """Forget this cone's reshapes: its equations are dropped, so no later cone may read them."""
        for key in self.added:
            del self.shared[key]

    def new_shape(self, shape: tuple[int, ...]) -> tuple[int, ...] | None:
        return self.cut.shape(shape)

    def value(self, v: Var) -> Var | None:
        """``v`` (shaped like the operand) in the cut shape; None where it cannot be cut."""
        if v in self.memo:
            return self.memo[v]
        out = self.operand.shape
        e = self.graph.producer(v)
        if e is not None and e.primitive in ELEMENTWISE and len(e.outputs) == 1 and all(
                u.shape == out for u in e.inputs):
            inputs = [self.value(u) for u in e.inputs]
            if any(u is None for u in inputs):
                return None
            new = self.emit(e.primitive, inputs, **dict(e.params))
        elif e is not None and e.primitive == "Broadcast" and len(e.inputs) == 1:
            src = e.inputs[0]
            aligned = (1,) * (len(out) - src.ndim) + src.shape
            target = self.new_shape(aligned)
            if target is None:
                return None
            new = self.emit("Broadcast", [self.reshape(src, target)], shape=self.new_shape(out))
        else:
            new = self.reshape(v, self.new_shape(out))
        self.memo[v] = new
        return new


def split_reductions(graph: Graph, chip) -> tuple[Graph, list[SplitDecision]]:
    """Split every reduction whose rows (or columns) are too few for ``chip``'s cores and long
    enough to be worth a second kernel (`segments`, `column_segments`).

    Args:
        graph: a graph from `mlxtriton.trace` (before `fuse`).
        chip: a chip name or `mlxtriton.hw.Profile`; None, or a chip that runs no generated
            kernels (the CPU), leaves the graph as it is (the core count decides the split).

    Returns:
        ``(graph, decisions)``: the graph computes the same values up to the order of the
        additions; one decision per split reduction.

    Example:
        >>> import mlx.core as mx, mlxtriton
        >>> g = mlxtriton.trace(lambda x: mx.sum(x * x))(mx.ones((1 << 20,)))
        >>> split, decisions = split_reductions(g, "h200")
        >>> decisions[0].segments, split.primitive_counts()["Reduce"]
        (256, 2)
    """
    if chip is None:
        return graph, []
    from mlxtriton import hw

    profile = hw.resolve(chip)
    if not profile.is_gpu:
        return graph, []
    cores = max(profile.gpu_cores or (1,))
    tuned = hw.tuning.tuning(profile)
    simd_width = profile.simd_width or 32  # unknown: NVIDIA's warp and every Apple SIMD-group
    mapping: dict[Var, Var] = {}
    new_eqns: list[Eqn] = []
    decisions: list[SplitDecision] = []
    reshapes: dict[tuple[Var, tuple[int, ...]], Var] = {}
    constants: list[tuple[Var, mx.array]] = []
    # first levels of split sums, (operand, axes) -> (cone, float32 partials), for the
    # centred sums of squares that read them (`_split_centred`)
    sums: dict[tuple[Var, tuple[int, ...]], tuple[_Cone, Var, Var]] = {}
    for i, e in enumerate(graph.eqns):
        if e.primitive == "Reduce" and e.params["kind"] in SPLITTABLE:
            kind = e.params["kind"]
            axes = tuple(sorted(a % e.inputs[0].ndim for a in e.params["axes"]))
        elif e.primitive in ("LogSumExp", "Softmax"):
            kind, axes = e.primitive, (e.inputs[0].ndim - 1,)
        elif e.primitive == "ArgReduce":
            kind, axes = e.params["kind"], (e.params["axis"] % e.inputs[0].ndim,)
        else:
            continue
        x, out = e.inputs[0], e.outputs[0]
        lead = x.ndim - len(axes)
        row = bool(axes) and axes == tuple(range(lead, x.ndim))
        if not row and e.primitive != "Reduce" or not axes:
            continue
        reduced = tuple(x.shape[a] for a in axes)
        rows, length = math.prod(x.shape) // max(1, math.prod(reduced)), math.prod(reduced)
        min_bytes = tuned.arg_split_min_bytes if kind in ("argmax", "argmin") else None
        # Several neighbouring reduced dims: cut them flattened into one when every broadcast
        # feeding the reduction is full or constant over them (the cone says), else cut the
        # outermost.
        together = axes == tuple(range(axes[0], axes[0] + len(axes)))
        centred = _centred_square(graph, e) if kind == "sum" else None
        if centred is not None and (centred[0], axes) in sums:
            # mx.var's second sum: from the first level of the sum its shift comes from
            cone, values, partial = sums[centred[0], axes]
            mark = len(cone.eqns)
            total = cone.reshape(_split_centred(cone, values, partial, centred[1], out.dtype,
                                                constants), out.shape)
            new_eqns.extend(cone.eqns[mark:])
            mapping[out] = total
            decisions.append(SplitDecision(i, "centred sum of squares", rows, length, cone.cut.s,
                                           cores, row))
            continue
        for flat in (True, False) if len(axes) > 1 and together else (False,):
            extent = length if flat else reduced[0]
            s = (segments(rows, length, extent, _itemsize(x.dtype), cores, tuned, min_bytes) if row
                 else column_segments(rows, length, extent, _itemsize(x.dtype), cores, simd_width,
                                      tuned))
            if s == 1:
                continue
            cut = _Cut(x.shape, axes, axes[0], len(axes) if flat else 1, s)
            cone = _Cone(graph, x, cut, reshapes)
            cutx = cone.value(x)
            if cutx is not None:
                break
            cone.abandon()
        else:
            continue
        if kind in ("argmax", "argmin"):
            total = _split_arg(cone, cutx, kind, lead, length // s, constants)
        elif kind == "Softmax":
            total = _split_softmax(cone, x, cutx, lead, s, out.dtype, constants)
        elif kind == "LogSumExp":
            total = _split_logsumexp(cone, cutx, lead, s)
            if total.dtype != out.dtype:
                total = cone.emit("AsType", [total], dtype=out.dtype)
        else:
            total, summed, partial = _split_reduce(cone, cutx, kind, out.dtype)
            if kind == "sum" and partial.dtype == "float32":
                sums[x, axes] = (cone, summed, partial)
        total = cone.reshape(total, out.shape)
        assert total.aval == out.aval, (e.primitive, total.aval, out.aval)
        new_eqns.extend(cone.eqns)
        mapping[out] = total
        decisions.append(SplitDecision(i, kind, rows, length, s, cores, row))
    if not decisions:
        return graph, []
    g = graph.replace(eqns=graph.eqns + tuple(new_eqns), constants=graph.constants + tuple(constants))
    g = substitute(g, mapping)
    g = g.replace(eqns=topological_sort(g.eqns, list(g.inputs) + [v for v, _ in g.constants]))
    return dce(g), decisions


def _split_reduce(cone: _Cone, cut: Var, kind: str, dtype: str) -> tuple[Var, Var, Var]:
    """reduce(reduce(cut over each segment) over the segments), the values reduced (float32
    for half sums and products) and their partials."""
    wide = _WIDE.get(dtype) if kind in ("sum", "prod") else None
    if wide and cut.dtype == dtype:
        cut = cone.emit("AsType", [cut], dtype=wide)
    inner = cone.cut.inner
    partial = cone.emit("Reduce", [cut], kind=kind, axes=inner)
    total = cone.emit("Reduce", [partial], kind=kind, axes=(cone.cut.first,) + inner)
    return (total if total.dtype == dtype else cone.emit("AsType", [total], dtype=dtype)), cut, partial


def _centred_square(graph: Graph, e: Eqn) -> tuple[Var, Var] | None:
    """``(a, k)`` when ``e`` sums ``(a - k)^2`` over its axes with ``k`` a scalar multiple (or
    quotient) of the sum of ``a`` over the same axes (the second reduction of `mx.var`), else
    None."""
    (v,) = e.inputs
    sq = graph.producer(v)
    if sq is None or not (sq.primitive == "Square" or sq.primitive == "Multiply"
                          and sq.inputs[0] is sq.inputs[1]):
        return None
    diff = graph.producer(sq.inputs[0])
    if diff is None or diff.primitive != "Subtract":
        return None
    a, broadcast = diff.inputs
    bp = graph.producer(broadcast)
    if bp is None or bp.primitive != "Broadcast":
        return None
    k = bp.inputs[0]
    scale = graph.producer(k)
    if scale is None or scale.primitive not in ("Multiply", "Divide"):
        return None
    axes = tuple(sorted(x % a.ndim for x in e.params["axes"]))
    for total, factor in ((scale.inputs[0], scale.inputs[1]),) + (
            ((scale.inputs[1], scale.inputs[0]),) if scale.primitive == "Multiply" else ()):
        r, f = graph.producer(total), graph.producer(factor)
        if (r is not None and r.primitive == "Reduce" and r.params["kind"] == "sum"
                and r.inputs[0] is a and tuple(sorted(x % a.ndim for x in r.params["axes"])) == axes
                and (factor in graph.const_values or f is not None and f.primitive == "Broadcast"
                     and f.inputs[0] in graph.const_values and f.inputs[0].size == 1)):
            return a, k
    return None


def _split_centred(cone: _Cone, values: Var, partial: Var, shift: Var, dtype: str,
                   constants: list) -> Var:
    """sum((a - k)^2) from each segment's sum (``partial``, the first level of the split sum of
    ``a``, whose cut ``values`` it sums) and its sum of squares about its own mean (Chan, Golub &
    LeVeque 1979):
    sum((a - k)^2) = sum_s [q_s + n (m_s - k)^2], ``m_s`` the mean of segment s, ``q_s`` the
    sum of (a - m_s)^2 over it, ``n`` its length. Exact in real arithmetic for any ``k``
    constant over the segments. Each segment's two passes read data its kernel holds on chip,
    so ``a`` is read once; split as a sum of its own, the second reduction would read ``a``
    again once ``k`` is known. In float32."""
    cut, n = cone.cut, cone.cut.segment
    af = values if values.dtype == "float32" else cone.emit("AsType", [values], dtype="float32")
    mean = cone.emit("Multiply", [partial, _scalar(cone, 1.0 / n, partial.shape, constants)])
    dev = cone.emit("Subtract", [af, cone.emit("Broadcast", [mean], shape=af.shape)])
    q = cone.emit("Reduce", [cone.emit("Square", [dev])], kind="sum", axes=cut.inner)
    kf = shift if shift.dtype == "float32" else cone.emit("AsType", [shift], dtype="float32")
    kk = cone.emit("Broadcast", [cone.reshape(kf, cut.shape(shift.shape))], shape=mean.shape)
    far = cone.emit("Square", [cone.emit("Subtract", [mean, kk])])
    t = cone.emit("Add", [q, cone.emit("Multiply", [far, _scalar(cone, float(n), far.shape, constants)])])
    total = cone.emit("Reduce", [t], kind="sum", axes=(cut.first,) + cut.inner)
    return total if total.dtype == dtype else cone.emit("AsType", [total], dtype=dtype)


def _scalar(cone: _Cone, value: float, shape: tuple[int, ...], constants: list) -> Var:
    """A float32 constant broadcast to ``shape``."""
    c = Var((), "float32")
    constants.append((c, mx.array(value, dtype=mx.float32)))
    return cone.emit("Broadcast", [c], shape=shape)


def _split_arg(cone: _Cone, cut: Var, kind: str, lead: int, segment: int, constants: list) -> Var:
    """The segment holding the extreme (the first, a NaN counting as the extreme as in MLX's
    argmax: the segments' max or min propagates it), then the index within it."""
    extreme = cone.emit("Reduce", [cut], kind="max" if kind == "argmax" else "min", axes=(lead + 1,))
    within = cone.emit("ArgReduce", [cut], kind=kind, axis=lead + 1)  # [rows..., S, 1]
    shape = cut.shape[:lead + 1]
    best = cone.emit("ArgReduce", [cone.reshape(extreme, shape)], kind=kind, axis=lead)
    picked = cone.emit("GatherAxis", [cone.reshape(within, shape), best], axis=lead)
    size = Var((), best.dtype)
    constants.append((size, mx.array(segment, dtype=mx.uint32)))
    offset = cone.emit("Multiply", [best, cone.emit("Broadcast", [size], shape=best.shape)])
    return cone.emit("Add", [offset, picked])


def _split_logsumexp(cone: _Cone, cut: Var, lead: int, s: int) -> Var:
    """logsumexp of each segment, then of the segments' (in float32): exact, and MLX's edge
    cases hold (a segment of -inf gives -inf and weighs nothing; +inf and NaN propagate)."""
    if cut.dtype != "float32":
        cut = cone.emit("AsType", [cut], dtype="float32")
    partial = cone.emit("LogSumExp", [cut])  # [rows..., S, 1]
    return cone.emit("LogSumExp", [cone.reshape(partial, partial.shape[:lead] + (s,))])


def _split_softmax(cone: _Cone, x: Var, cut: Var, lead: int, s: int, dtype: str,
                   constants: list) -> Var:
    """softmax(x) = exp((x - m) - log(s)) in float32, ``m`` the row's max and ``s`` the sum of
    exp(x - m), as MLX computes it. Each segment gives its max ``m_i`` and ``l_i``, the log of
    the sum of exp(x - m_i) over it (a small number); then m = max(m_i) and
    log(s) = logsumexp(m_i - m + l_i). Never exp(x - logsumexp(x)): logsumexp(x) rounds at the
    scale of x, so with logits of 3e38 a row of two maxima gave 1 each, not 1/2.

    MLX's special values hold: a row holding +inf (its max) or NaN is NaN everywhere (inf - inf);
    a row of -inf is NaN (-inf - -inf); a segment of -inf, shifted by 0 rather than by its own
    max, weighs nothing."""
    xf = x if x.dtype == "float32" else cone.emit("AsType", [x], dtype="float32")
    cutf = cut if cut.dtype == "float32" else cone.emit("AsType", [cut], dtype="float32")
    minus_inf, zero = Var((), "float32"), Var((), "float32")
    constants += [(minus_inf, mx.array(-float("inf"))), (zero, mx.array(0.0))]
    m = cone.emit("Reduce", [cutf], kind="max", axes=(cut.ndim - 1,))  # [rows..., S, 1]
    empty = cone.emit("Equal", [m, cone.emit("Broadcast", [minus_inf], shape=m.shape)],
                      equal_nan=False)
    shift = cone.emit("Select", [empty, cone.emit("Broadcast", [zero], shape=m.shape), m])
    shifted = cone.emit("Subtract", [cutf, cone.emit("Broadcast", [shift], shape=cut.shape)])
    logs = cone.emit("LogSumExp", [shifted])  # [rows..., S, 1]
    segments = m.shape[:lead] + (s,)
    m, logs = cone.reshape(m, segments), cone.reshape(logs, segments)
    top = cone.emit("Reduce", [m], kind="max", axes=(lead,))  # [rows..., 1]
    weights = cone.emit("Add", [cone.emit("Subtract", [m, cone.emit("Broadcast", [top], shape=segments)]),
                                logs])
    log_sum = cone.emit("LogSumExp", [weights])  # [rows..., 1]
    centred = cone.emit("Subtract", [xf, cone.emit("Broadcast", [top], shape=x.shape)])
    y = cone.emit("Exp", [cone.emit("Subtract", [centred,
                                                 cone.emit("Broadcast", [log_sum], shape=x.shape)])])
    return y if dtype == "float32" else cone.emit("AsType", [y], dtype=dtype)


def _itemsize(dtype: str) -> int:
    from mlxtriton.graph import dtypes

    return dtypes.itemsize(dtype)
