"""Patterns layer: attention written out becomes ``ScaledDotProductAttention``, a decomposed
softmax the ``Softmax`` primitive (issue 5, rule 1); where the target runs SDPA with an array mask
op by op at decode, SDPA becomes one attention kernel region (a boolean mask), else two batched
products around one row kernel.
May import mlx and mlxtriton.graph.
"""

from __future__ import annotations

import mlx.core as mx

from mlxtriton.graph import dtypes
from mlxtriton.graph.attention import attention_region, decode_attention
from mlxtriton.graph.core import Var
from mlxtriton.graph.primitives import RESHAPES

from mlxtriton.patterns._values import MAX_EVALUATED
from mlxtriton.patterns.pattern import P
from mlxtriton.patterns.rewrite import Match, Miss, Rules

# Attention is softmax(scale * q @ k^T + mask) @ v: the scale may sit on q or on the scores (or be
# absent), the mask may be additive (+ mask) or boolean (where(mask, s, -inf)) and is recognised
# as causal when it is a constant equal to MLX's causal mask, float32 casts may surround the
# softmax, and grouped-query heads repeated with mx.repeat / broadcasts are un-repeated (SDPA reads
# each kv head once). Float32 casts around a half-precision softmax make it precise. A scale after
# the softmax, or a softmax over another axis, is a near miss.
#
# The rewrites keep every value up to rounding, special values included; where they would not,
# they are near misses: a softmax without the max subtraction (exp overflows where Softmax does
# not), a float16 scale applied to q @ k^T (the product overflows past 65504 before the scale,
# SDPA scales q first). A boolean mask filling with -inf gives NaN on a row it hides entirely,
# where SDPA fills with the lowest value and averages v: unless the mask is a constant that hides
# no row, such rows are set to NaN after SDPA. The one difference left is in scores that are
# themselves infinite or NaN (from infinite or NaN q or k): SDPA's mask fill is the lowest finite
# value, the decomposed softmax meets -inf, and a row whose kept scores are all -inf, or a NaN
# score under an additive mask, comes out differently.


# Backends where attention with an array mask and a short query, when the fuse stage follows, is
# written as one batched q @ k^T over the query heads grouped per kv head, one row kernel (scale,
# mask, softmax) and one batched @ v, instead of SDPA. There MLX's SDPA has no fused kernel for an
# array mask at decode: sdpa_vector takes no array mask at all, and cuDNN takes one only for
# half-precision queries longer than one token with head dims a multiple of 8 up to 128
# (mlx/backend/cuda/scaled_dot_product_attention.cpp, use_cudnn_for_decoding and
# supports_sdpa_cudnn; .cu, supports_sdpa_vector), so SDPA runs mlx/fast.cpp's fallback op by op:
# q * scale, a 5-d q @ k^T over the kv heads broadcast (a gemv), where, softmax, a 5-d @ v whose
# broadcast batch takes cuBLAS's pointer-array path (two launches), about six kernels a call
# where the grouped form launches three (mlx/backend/cuda/matmul.cpp: one strided-batched GEMM
# each, k^T read in place). Decoding with a still-shaped cache is paced by those launches. Not on
# Metal: its sdpa_vector takes array masks (mlx/backend/metal/scaled_dot_product_attention.cpp,
# has_fused_kernel), one kernel.
GROUPED_AT_DECODE: frozenset[str] = frozenset({"cuda"})
# A short query: fewer rows than this, the bound of MLX's own vector kernel (sdpa_vector takes
# query_sequence_length < 4): the scores of a query head are a few rows, which one row kernel
# normalises; a longer query keeps SDPA.
_SHORT_QUERY = 4

# An additive mask entry that makes exp(score + mask - max) exactly 0 in float32 for any score
# of ordinary size (exp underflows to 0 below about -104): -inf, a dtype's lowest value, -1e9 ...
MASKED = -1e4


def _kind(kind):
    return lambda e: e.params["kind"] == kind


_x = P.var("x")
_max = P("Reduce", _x, name="max", where=_kind("max"))
_shifted = P("Subtract", _x, P("Broadcast", P.opt("StopGradient", _max)))
_exp = P("Exp", _shifted | _x, name="ex")
# exp(x - max(x)) / sum(exp(x - max(x))), the max optional (then it is softmax only where exp does
# not overflow; the Softmax primitive is the safer spelling of the same function).
SOFTMAX_DECOMPOSED = P("Divide", _exp, P("Broadcast", P("Reduce", P.var("ex"), name="sum", where=_kind("sum"))),
                       name="sm")


def _softmax_axis(m: Match) -> tuple[int, ...]:
    x = m["x"]
    axes = tuple(sorted(a % x.ndim for a in m.eqn("sum").params["axes"]))
    if "max" in m and tuple(sorted(a % x.ndim for a in m.eqn("max").params["axes"])) != axes:
        return ()
    return axes


_NO_MAX = ("exp(x) / sum(exp(x)) without the row max subtracted: exp overflows to inf (and the "
           "quotient to NaN) where Softmax does not, so it is not the same function")


def softmax(m: Match):  # exp(x - max x) / sum(exp(x - max x)) over the last axis -> Softmax(x)
    x = m["x"]
    axes = _softmax_axis(m)
    if not axes:
        return None
    if axes != (x.ndim - 1,):
        return Miss(f"softmax over axis {axes[0] if len(axes) == 1 else axes}, not the last axis")
    if "max" not in m:
        return Miss(_NO_MAX)
    # The composed sum accumulates in float32 (MLX's Reduce does for half types) where MLX's
    # non-precise half softmax accumulates in the half type: on the CPU a bfloat16 row of 4097
    # then sums to 2.5, not 1. Precise keeps the composed function's accumulation.
    precise = x.dtype in ("float16", "bfloat16")
    m.detail = f"Softmax over the last axis of {x.type_str()}" + (
        " (precise: the composed sum accumulates in float32)" if precise else "")
    return m.add("Softmax", [x], precise=precise)


def softmax_in_float32(m: Match):  # astype(softmax(astype(x, f32)), h) -> Softmax[precise](x)
    x, out = m["x"], m.root.outputs[0]
    if x.dtype not in ("float16", "bfloat16") or out.dtype != x.dtype:
        return None
    m.detail = "float32 casts around the softmax: Softmax[precise=True]"
    return m.add("Softmax", [x], precise=True)


def softmax_of_a_transpose(m: Match):  # Softmax(Transpose(x)) -> Transpose(softmax of x over its axis)
    """A softmax whose rows are a strided axis of ``x`` (the last axis of a transpose): the rows
    become columns of ``x``, which the fuse stage reads coalesced along ``x``'s contiguous axis
    as a column region; the transpose after it is a view. Kept only where every reader of the
    result is a graph output, or a matmul and the transpose swaps the last two axes (both read
    the view in place): a pointwise reader would read it strided instead."""
    if not m.context.get("fusing") or m.context.get("backend") is None:
        return None
    x, sm = m["x"], m.root
    perm = tuple(m.eqn("t").params["axes"])
    axis = perm[-1]
    if axis == x.ndim - 1 or x.dtype not in dtypes.FLOATING or x.size == 0:
        return None
    out = sm.outputs[0]
    last_two = perm == (*range(x.ndim - 2), x.ndim - 1, x.ndim - 2)  # what a matmul reads in place
    if any(e.primitive != "Matmul" or not last_two for e in m.graph.users(out)):
        return None
    # mx.softmax over a non-last axis (mlx/ops.cpp): max kept out of the gradient, exp, sum,
    # divide; in float32 as MLX's softmax kernels accumulate half types.
    xf = m.astype(x, "float32") if x.dtype != "float32" else x
    peak = m.add("StopGradient", [m.add("Reduce", [xf], kind="max", axes=(axis,))])
    ex = m.add("Exp", [m.add("Subtract", [xf, m.add("Broadcast", [peak], shape=xf.shape)])])
    total = m.add("Reduce", [ex], kind="sum", axes=(axis,))
    y = m.add("Divide", [ex, m.add("Broadcast", [total], shape=xf.shape)])
    if y.dtype != x.dtype:
        y = m.astype(y, x.dtype)
    m.detail = (f"softmax of a transpose of {x.type_str()} as a softmax over its axis {axis}, "
                "read coalesced, then the transpose (a view)")
    return m.add("Transpose", [y], axes=perm)


# ---- attention ----

def _floating_cast(e) -> bool:
    return e.primitive == "AsType" and e.inputs[0].dtype in dtypes.FLOATING and e.outputs[0].dtype in dtypes.FLOATING


def _scaled(m: Match, v: Var) -> tuple[Var, float] | None:
    """``(x, s)`` when ``v`` is ``x * s`` or ``x / (1 / s)`` for a known scalar ``s``."""
    e = m.graph.producer(v)
    if e is None or e.primitive not in ("Multiply", "Divide"):
        return None
    pairs = (e.inputs,) if e.primitive == "Divide" else (e.inputs, e.inputs[::-1])
    for a, b in pairs:
        s = m.values.scalar(b)
        if s is not None and not m.values.is_constant(a) and isinstance(s, (int, float)):
            if e.primitive == "Multiply":
                return a, float(s)
            return (a, 1.0 / s) if s else None
    return None


def _leads_to_matmul(m: Match, v: Var) -> bool:
    for _ in range(6):
        e = m.graph.producer(v)
        if e is None:
            return False
        if e.primitive == "Matmul":
            return True
        if _floating_cast(e):
            v = e.inputs[0]
        elif (sc := _scaled(m, v)) is not None:
            v = sc[0]
        else:
            return False
    return False


class _Scores:
    """What lies between q @ k^T and the softmax: scale, mask, casts (in any order)."""

    def __init__(self):
        self.scale = 1.0
        self.scores_scaled = False  # a scale applied to q @ k^T itself (not to q)
        self.mask: Var | None = None
        self.boolean = False
        self.inverted = False
        self.fill = 0.0  # what a boolean mask puts in the scores it hides
        self.qk = None


def _walk_scores(m: Match, s: Var) -> _Scores | Miss:
    w = _Scores()
    v = s
    for _ in range(16):
        e = m.graph.producer(v)
        if e is None:
            return Miss("the softmax input is no q @ k^T (it is a graph input or constant)")
        if e.primitive == "Matmul":
            m.cover(e)
            w.qk = e
            return w
        if _floating_cast(e):
            m.cover(e)
            v = e.inputs[0]
            continue
        if (sc := _scaled(m, v)) is not None:
            m.cover(e)
            w.scale *= sc[1]
            w.scores_scaled = w.scores_scaled or sc[1] != 1
            v = sc[0]
            continue
        if e.primitive == "Add" and w.mask is None:
            a, b = e.inputs
            if not _leads_to_matmul(m, a) and _leads_to_matmul(m, b):
                a, b = b, a
            if _leads_to_matmul(m, a):
                m.cover(e)
                w.mask, v = b, a
                continue
        if e.primitive == "Select" and w.mask is None:
            cond, a, b = e.inputs
            fa, fb = m.values.scalar(a), m.values.scalar(b)
            if isinstance(fb, float) and fb <= MASKED and _leads_to_matmul(m, a):
                m.cover(e)
                w.mask, w.boolean, w.fill, v = cond, True, fb, a
                continue
            if isinstance(fa, float) and fa <= MASKED and _leads_to_matmul(m, b):
                m.cover(e)
                w.mask, w.boolean, w.inverted, w.fill, v = cond, True, True, fa, b
                continue
        return Miss(f"the scores reach the softmax through {e.primitive} {e.outputs[0].type_str()}, "
                    "which is no scale, mask or cast")
    return Miss("too many steps between q @ k^T and the softmax")


def _swap_last_two(m: Match, v: Var) -> Var:
    """``v`` with its last two axes swapped, undoing a transpose that made it where there is one."""
    n = v.ndim
    swap = tuple(range(n - 2)) + (n - 1, n - 2)
    e = m.graph.producer(v)
    if e is not None and e.primitive == "Transpose":
        composed = tuple(e.params["axes"][a] for a in swap)
        if composed == tuple(range(n)):
            return e.inputs[0]
        return m.add("Transpose", [e.inputs[0]], axes=composed)
    return m.add("Transpose", [v], axes=swap)


def _broadcast_source(m: Match, v: Var) -> Var:
    e = m.graph.producer(v)
    return e.inputs[0] if e is not None and e.primitive == "Broadcast" else v


def _unrepeat(m: Match, v: Var) -> tuple[Var, int]:
    """``(kv, r)`` when ``v`` [B, H*r, L, D] is ``mx.repeat(kv, r, axis=1)`` (each kv head
    repeated r times in a row: what SDPA's grouped-query heads mean), else ``(v, 1)``."""
    e = m.graph.producer(v)
    if e is None or e.primitive not in ("Reshape", "Flatten"):
        return v, 1
    src = e.inputs[0]
    if src.ndim != 5 or v.ndim != 4:
        return v, 1
    b, h, r, length, d = src.shape
    if (b, h * r, length, d) != v.shape:
        return v, 1
    bsrc = m.graph.producer(src)
    if bsrc is None or bsrc.primitive != "Broadcast" or bsrc.inputs[0].shape != (b, h, 1, length, d):
        return v, 1
    return m.reshape(bsrc.inputs[0], (b, h, length, d)), r


def _ungroup(m: Match, v: Var) -> Var | None:
    """For 5-d grouped attention ([B, Hkv, R, L, D], the shape MLX's own SDPA fallback uses):
    the [B, Hkv, L, D] that ``v`` broadcasts along axis 2."""
    src = _broadcast_source(m, v)
    b, h, _, rows, cols = v.shape
    if src.ndim != 5 or src.shape != (b, h, 1, rows, cols):
        return None
    e = m.graph.producer(src)
    if e is not None and e.primitive == "Transpose" and e.params["axes"][:3] == (0, 1, 2):
        # k^T as MLX's fallback builds it: transpose(expand_dims(k, 2)); undo both at once
        inner = m.graph.producer(e.inputs[0])
        if inner is not None and inner.primitive == "ExpandDims" and inner.params["axes"] == (2,):
            perm = tuple(a - (a > 2) for a in e.params["axes"] if a != 2)
            return m.add("Transpose", [inner.inputs[0]], axes=perm)
    return m.reshape(src, (b, h, rows, cols))


def _causal(m: Match, w: _Scores, lq: int, lk: int) -> bool:
    """True when the mask is a constant equal to MLX's causal mask for these lengths (position
    i attends to j <= i + lk - lq)."""
    src = _broadcast_source(m, w.mask)
    if lq > lk or not m.values.is_constant(src) or src.size > MAX_EVALUATED:
        return False
    if src.shape[-2:] != (lq, lk) or any(s != 1 for s in src.shape[:-2]):
        return False
    value = m.values.value(src)
    if value is None:
        return False
    value = value.reshape(lq, lk)
    keep = mx.arange(lq)[:, None] + (lk - lq) >= mx.arange(lk)[None]
    if w.boolean:
        got = mx.logical_not(value) if w.inverted else value
        return bool(mx.array_equal(got, keep).item())
    value = value.astype(mx.float32)
    return bool(mx.all(mx.where(keep, value == 0, value <= MASKED)).item())


def _no_row_hidden(m: Match, w: _Scores) -> bool:
    """True when the boolean mask is a constant that keeps at least one key in every row."""
    src = _broadcast_source(m, w.mask)
    if not m.values.is_constant(src) or src.size > MAX_EVALUATED:
        return False
    value = m.values.value(src)
    if value is None:
        return False
    keep = mx.logical_not(value) if w.inverted else value
    if src.ndim == 0:
        return bool(keep.item())
    return src.shape[-1] > 0 and bool(mx.all(mx.any(keep, axis=-1)).item())


def _nan_where_hidden(m: Match, w: _Scores, score_shape, out: Var) -> Var:
    """``out`` with NaN in the rows whose mask hides every key (a softmax over -inf only)."""
    keep = m.add("LogicalNot", [w.mask]) if w.inverted else w.mask
    keep = m.reshape(keep, (1,) * (len(score_shape) - keep.ndim) + keep.shape)
    if keep.shape != tuple(score_shape):
        keep = m.add("Broadcast", [keep], shape=tuple(score_shape))
    any_key = m.add("Reduce", [keep], kind="or", axes=(len(score_shape) - 1,))
    any_key = m.add("Broadcast", [any_key], shape=out.shape)
    return m.add("Select", [any_key, out, m.splat(float("nan"), out)])


def _sdpa_mask(m: Match, w: _Scores, rank: int, q4: Var, score_shape) -> Var:
    """The mask in a shape SDPA broadcasts to [B, Hq, Lq, Lk]: additive in q's dtype, or boolean."""
    src = _broadcast_source(m, w.mask)
    if w.boolean and w.inverted:
        src = m.add("LogicalNot", [src])
    if not w.boolean:
        src = m.astype(src, q4.dtype)
    src = m.reshape(src, (1,) * (rank - src.ndim) + src.shape)
    if rank == 3:
        return m.reshape(src, (1,) + src.shape)
    if rank == 5:
        if src.shape[1:3] == (1, 1):
            return m.reshape(src, (src.shape[0], 1) + src.shape[3:])
        full = m.add("Broadcast", [src], shape=tuple(score_shape))
        return m.reshape(full, (score_shape[0], score_shape[1] * score_shape[2]) + tuple(score_shape[3:]))
    return src


# ---- attention at decode, grouped per kv head (GROUPED_AT_DECODE) ----

def _grouped_at_decode(m: Match, dtype: str, lq: int, d: int, dv: int) -> bool:
    """The target runs this attention with an array mask op by op (`GROUPED_AT_DECODE`), the
    fuse stage follows, and the query is short (``lq`` rows per head)."""
    if not m.context.get("fusing") or m.context.get("backend") not in GROUPED_AT_DECODE:
        return False
    cudnn = dtype in ("float16", "bfloat16") and lq > 1 and all(n % 8 == 0 and n <= 128 for n in (d, dv))
    return lq < _SHORT_QUERY and not cudnn


# Movement ops through which a mask keeps its key axis: each reads key j of its input for key j
# of its output when both end in the key axis (a row-major reshape that keeps the last dim keeps
# every element's last index).
_KEEPS_KEYS = frozenset({"Broadcast", "Reshape", "Unflatten", "Flatten", "ExpandDims", "Squeeze"})


def _mask_row(m: Match, mask: Var, lk: int) -> Var | None:
    """The one row of ``lk`` values that every head and query of ``mask`` reads (a causal mask
    over a cache at decode), seen through movement ops that keep the key axis; else None."""
    v = mask
    while v.shape[-1:] == (lk,):
        if v.size == lk:
            return v
        e = m.graph.producer(v)
        if e is None or e.primitive not in _KEEPS_KEYS or e.inputs[0].shape[-1:] != (lk,):
            return None
        v = e.inputs[0]
    return None


def _grouped_mask(m: Match, row: Var | None, full: Var | None, q: Var, kv_heads: int, lk: int,
                  dtype: str | None) -> Var:
    """The mask laid out as the grouped scores [B, Hkv, R*Lq, Lk]: its one ``row`` broadcast
    (read in place by the fuse stage), else ``full`` (broadcastable to SDPA's [B, Hq, Lq, Lk])
    broadcast and reshaped; cast to ``dtype`` (an additive mask) or boolean (None)."""
    b, heads, lq, _ = q.shape
    grouped = (b, kv_heads, heads // kv_heads * lq, lk)
    if row is not None:
        src = m.reshape(row if dtype is None else m.astype(row, dtype), (1, 1, 1, lk))
        return m.add("Broadcast", [src], shape=grouped)
    src = _broadcast_source(m, full)
    src = m.reshape(src if dtype is None else m.astype(src, dtype), (1,) * (4 - src.ndim) + src.shape)
    if src.shape != (b, heads, lq, lk):
        src = m.add("Broadcast", [src], shape=(b, heads, lq, lk))
    return m.reshape(src, grouped)


def _grouped_attention(m: Match, q: Var, k: Var, v: Var, row: Var | None, full: Var | None,
                       fill: float | None, scale: float) -> Var:
    """softmax(scale * q @ k^T, masked) @ v for q [B, Hq, Lq, D], k [B, Hkv, Lk, D], v [B, Hkv,
    Lk, Dv]: the query heads of each kv head become rows of one [B, Hkv, R*Lq, D] matrix (a
    reshape, no copy), so k and v are read in place by one batched product each, and the scale,
    the mask (`_grouped_mask`; boolean: ``fill`` where it is False; additive: ``fill`` None) and
    a float32 softmax in between are one row region for the fuse stage. In float16 the scale goes
    on q, as MLX's fallback does: q @ k^T could pass 65504 before it."""
    b, heads, lq, d = q.shape
    kv_heads, lk = k.shape[1], k.shape[2]
    q4 = m.reshape(q, (b, kv_heads, heads // kv_heads * lq, d))
    scale_q = q.dtype == "float16" and scale != 1.0
    if scale_q:
        q4 = m.add("Multiply", [q4, m.splat(scale, q4)])
    s = m.add("Matmul", [q4, _swap_last_two(m, k)])
    if scale != 1.0 and not scale_q:
        s = m.add("Multiply", [s, m.splat(scale, s)])
    g = _grouped_mask(m, row, full, q, kv_heads, lk, None if fill is not None else s.dtype)
    if fill is None:
        s = m.add("Add", [s, g])
    else:
        s = m.add("Select", [g, s, m.splat(fill, s)])
    p = m.add("Softmax", [s], precise=True)
    out = m.add("Matmul", [p, v])
    return m.reshape(out, (b, heads, lq, v.shape[-1]))


def _grouped_detail(q: Var, k: Var, boolean: bool) -> str:
    r = q.shape[1] // k.shape[1]
    return (f"attention at decode with {'a boolean' if boolean else 'an additive'} mask as "
            f"{r * q.shape[2]} query rows per kv head: q @ k^T, one row kernel (scale, mask, softmax), "
            f"@ v over k, v {k.type_str()} read in place (MLX's CUDA SDPA has no fused kernel for an "
            "array mask here and runs its fallback op by op)")


def attention(m: Match):  # softmax(scale * q @ k^T + mask) @ v -> ScaledDotProductAttention(q, k, v)
    if "post" in m:
        return Miss("a scale after the softmax: softmax(s) * c @ v is not what SDPA computes")
    sm = m.eqn("sm")
    if sm.primitive == "Divide":
        axes = _softmax_axis(m)
        if not axes:
            return None
        if axes != (m["x"].ndim - 1,):
            return Miss(f"softmax over axis {axes[0] if len(axes) == 1 else axes}, not the last axis")
        if "max" not in m:
            return Miss(_NO_MAX)
    s = sm.inputs[0] if sm.primitive == "Softmax" else m["x"]
    w = _walk_scores(m, s)
    if isinstance(w, Miss):
        return w
    q, kt = w.qk.inputs
    while True:  # q * s, also seen through a reshape of the heads (MLX's 5-d fallback)
        view = m.graph.producer(q)
        inner = view.inputs[0] if view is not None and view.primitive in RESHAPES else q
        if (sc := _scaled(m, inner)) is None:
            break
        m.cover(view, m.graph.producer(inner))
        w.scale *= sc[1]
        q = m.reshape(sc[0], q.shape)
    v = m["v"]
    rank = q.ndim
    if kt.ndim != rank or v.ndim != rank or rank not in (3, 4, 5):
        return Miss(f"rank-{rank} attention (SDPA takes [batch, heads, length, dim])")
    if not (q.shape[:-2] == kt.shape[:-2] == v.shape[:-2]):
        return Miss("q, k and v have different batch or head axes")
    if not (q.dtype == kt.dtype == v.dtype) or q.dtype not in dtypes.FLOATING:
        return Miss(f"q, k, v are {q.dtype}, {kt.dtype}, {v.dtype}: SDPA takes one floating dtype")
    score_shape = w.qk.outputs[0].shape
    lq, lk = q.shape[-2], kt.shape[-1]
    if rank == 5:
        kt4, v4 = _ungroup(m, kt), _ungroup(m, v)
        if kt4 is None or v4 is None:
            return Miss("5-d attention whose k and v are not broadcast along the group axis")
        k4 = _swap_last_two(m, kt4)
        b, h, r = q.shape[:3]
        q4 = m.reshape(q, (b, h * r) + q.shape[3:])
    elif rank == 3:
        k = _swap_last_two(m, kt)
        q4, k4, v4 = (m.reshape(t, (1,) + t.shape) for t in (q, k, v))
    else:
        k = _swap_last_two(m, kt)
        q4 = q
        (k4, rk), (v4, rv) = _unrepeat(m, k), _unrepeat(m, v)
        if rk != rv or k4.shape[1] != v4.shape[1]:
            k4, v4 = k, v
    if w.scores_scaled and w.qk.outputs[0].dtype == "float16":
        return Miss("a scale applied to float16 scores q @ k^T: the product overflows past 65504 "
                    "before the scale, where SDPA scales q first")
    causal = w.mask is not None and _causal(m, w, lq, lk)
    inputs = [q4, k4, v4]
    if w.mask is not None and not causal:
        inputs.append(_sdpa_mask(m, w, rank, q4, score_shape))
    out = m.add("ScaledDotProductAttention", inputs, scale=float(w.scale), do_causal=causal,
                has_sinks=False, output_logsumexp=False, force_fused=False)
    out = m.reshape(out, m.root.outputs[0].shape)
    out = m.astype(out, m.root.outputs[0].dtype)
    if w.boolean and not causal and w.fill == -float("inf") and not _no_row_hidden(m, w):
        out = _nan_where_hidden(m, w, score_shape, out)
    mask = "causal" if causal else ("no mask" if w.mask is None else
                                     f"{'boolean' if w.boolean else 'additive'} mask {inputs[3].type_str()}")
    heads = f"{q4.shape[1]}:{k4.shape[1]} heads" if q4.shape[1] != k4.shape[1] else f"{q4.shape[1]} heads"
    m.detail = (f"ScaledDotProductAttention[scale={w.scale:.6g}, {mask}] on q {q4.type_str()}, "
                f"k {k4.type_str()}, v {v4.type_str()} ({heads})")
    return out


def attention_for_fusion(m: Match):  # SDPA(q, k, v, array mask) at decode -> attention kernel, or q @ k^T, row kernel, @ v
    e = m.root
    p = e.params
    if p["do_causal"] or p["has_sinks"] or p["output_logsumexp"] or len(e.inputs) != 4:
        return None  # no array mask, or sinks (left to SDPA's own fallback)
    q, k, v, mask = e.inputs
    if not _grouped_at_decode(m, q.dtype, q.shape[2], q.shape[-1], v.shape[-1]):
        return None
    source = _broadcast_source(m, mask)
    spec = decode_attention(q, k, v, source, p["scale"])
    if not isinstance(spec, str):
        out = Var(e.outputs[0].shape, e.outputs[0].dtype)
        m.eqns.append(attention_region(q, k, v, source, mask, out, p["scale"]))
        m.detail = (f"attention at decode as one kernel: {q.shape[2]} query row(s) of {q.shape[1]} heads "
                    f"over k {k.type_str()}, v {v.type_str()}, the boolean mask "
                    f"{source.type_str()} read in place, hidden keys never loaded (MLX's CUDA SDPA "
                    "has no fused kernel for an array mask here)")
        return out
    # MLX's fallback (mlx/fast.cpp) fills a boolean mask's hidden scores with the lowest finite
    # value of the scores' dtype, and casts an additive mask to it.
    fill = float(mx.finfo(dtypes.to_mx(q.dtype)).min) if mask.dtype == "bool" else None
    out = _grouped_attention(m, q, k, v, _mask_row(m, mask, k.shape[2]), mask, fill, float(p["scale"]))
    m.detail = f"{_grouped_detail(q, k, mask.dtype == 'bool')}; not one attention kernel: {spec}"
    return out


_probs = P.opt("AsType", P("Softmax", P.var("s"), name="sm") | SOFTMAX_DECOMPOSED)

SOFTMAX = Rules(
    [
        (SOFTMAX_DECOMPOSED, softmax),
        (P("AsType", P("Softmax", P("AsType", _x, where=lambda e: e.params["dtype"] == "float32"))),
         softmax_in_float32),
    ],
    group="softmax",
)

ATTENTION = Rules(
    [(P("Matmul", _probs | P("Multiply", _probs, P.scalar("post")), P.var("v")), attention)],
    group="attention",
)

# Applied once the model rules have settled (`mlxtriton.patterns.TARGET_RULES`): every attention
# is SDPA by then, and the grouped form it writes is not read back as attention (seen as
# attention over Hkv heads and R*Lq queries it would be SDPA again).
ATTENTION_FOR_FUSION = Rules(
    [(P("ScaledDotProductAttention", P.var("q"), P.var("k"), P.var("v"), P.var("mask")), attention_for_fusion),
     (P("Softmax", P("Transpose", _x, name="t")), softmax_of_a_transpose)],
    group="attention",
)

