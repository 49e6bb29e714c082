"""Patterns layer: a decomposed rotary embedding becomes the ``RoPE`` primitive
(``mx.fast.rope``) where it is exactly that function (issue 5, rule 2).
May import mlx, numpy and mlxtriton.graph.
"""

from __future__ import annotations

import math

import mlx.core as mx
import numpy as np

from mlxtriton.graph import dtypes
from mlxtriton.graph.core import Var

from mlxtriton.patterns.pattern import P
from mlxtriton.patterns.rewrite import Match, Miss, Rules

# The shape is MLX's own CPU fallback and the usual model code: halves (or even/odd lanes, the
# "traditional" layout) of x's last axis rotated by cos/sin tables, x1 cos - x2 sin and
# x1 sin + x2 cos, concatenated (with the unrotated rest when only `dims` lanes rotate).
# "Exactly" means: the angle table is a constant of optimize time, and it equals, to float32
# rounding, (arange(L) + offset) * scale * base ** (-i / (dims / 2)) for one integer offset and
# one scale and base, with positions along x's second-to-last axis (precomputed cos and sin tables
# must match the cos and sin of such angles to their own precision); or it is MLX's own fallback
# computing that table from an offset that is an argument (an mlx-lm cache's, on the CPU stream,
# where `mx.fast.rope` decomposes), with such a base or with 1 / freqs of an argument (llama3's
# frequencies). Other tables of arguments, or other frequencies, are near misses.

# Angles recomputed from the fitted (offset, scale, base) must agree with the table to this
# relative tolerance (float32 evaluation of the same formula written differently differs by a
# few ulps; a different frequency law differs by far more).
ANGLE_RTOL = 1e-5


def _table(m: Match, v: Var, trig: str) -> Var | None:
    """The angle var under ``v`` = broadcast(cast(trig(angles)))."""
    e = m.graph.producer(v)
    while e is not None and e.primitive in ("Broadcast", "AsType", "Reshape", "ExpandDims"):
        e = m.graph.producer(e.inputs[0])
    if e is None or e.primitive != trig:
        return None
    return e.inputs[0]


def _fit(theta: mx.array, half: int):
    """``(offset, scale, base)`` with theta[l, i] = (l + offset) * scale * base ** (-i / half), or
    None when no such triple reproduces the table."""
    length = theta.shape[0]
    pos = theta[:, 0]
    if length >= 2:
        scale = (pos[1] - pos[0]).item()
        if scale == 0:
            return None
        offset = pos[0].item() / scale
    else:
        scale, offset = 1.0, pos[0].item()
    if abs(offset - round(offset)) > 1e-3:
        return None
    offset = int(round(offset))
    row = int(mx.argmax(mx.abs(pos)).item())
    base = 10000.0  # any base: with all positions 0 (or a single frequency) the angles are equal
    if half > 1 and pos[row].item() != 0:
        ratio = (theta[row, 1] / pos[row]).item()
        if not 0 < ratio < 1:
            return None
        base = ratio ** (-half)
    # The base read off one ratio carries float32 rounding (10000.0005); a round base that
    # reproduces the table as well is the one the model wrote.
    for candidate in (float(round(base)), base):
        if _reproduces(theta, offset, scale, candidate, half):
            return offset, float(scale), float(candidate)
    return None


def _angles(length: int, offset: int, scale: float, base: float, half: int) -> mx.array:
    # MLX's fallback formula (mlx/fast.cpp): positions times exp(-i * log(base) / half).
    inv = mx.exp(mx.arange(0, -half, -1, dtype=mx.float32) * (math.log(base) / half))
    positions = (mx.arange(length, dtype=mx.float32) + offset) * scale
    return positions[:, None] * inv[None]


def _reproduces(theta: mx.array, offset: int, scale: float, base: float, half: int) -> bool:
    if base <= 0:
        return False
    want = _angles(theta.shape[0], offset, scale, base, half)
    tol = ANGLE_RTOL * max(1.0, mx.max(mx.abs(want)).item())
    return bool(mx.all(mx.abs(want - theta) <= tol).item())


def _fit_tables(cos: mx.array, sin: mx.array, half: int, eps: float):
    """``(offset, scale, base)`` from precomputed cos and sin tables (no angle table in the
    graph): angles unwrapped along the positions give each frequency's step; the slowest
    frequency gives the offset; the tables recomputed from the fit must agree to ``eps``."""
    length = cos.shape[0]
    if length < 2:
        return None
    ang = np.unwrap(np.arctan2(np.array(sin, dtype=np.float64), np.array(cos, dtype=np.float64)), axis=0)
    step = (ang[-1] - ang[0]) / (length - 1)
    scale = float(step[0])
    if scale <= 0:
        return None
    inv = step / scale
    base = 10000.0
    if half > 1:
        if not 0 < inv[1] < 1:
            return None
        base = float(inv[1] ** (-half))
    offset = int(round(ang[0, -1] / (scale * inv[-1])))
    # Round values the model wrote (scale 1.0, base 10000) before the ones read off the tables.
    for s_, b_ in ((float(f"{scale:.4g}"), float(round(base))), (scale, float(round(base))), (scale, base)):
        want = _angles(length, offset, s_, b_, half)
        if (mx.all(mx.abs(mx.cos(want) - cos) <= eps).item()
                and mx.all(mx.abs(mx.sin(want) - sin) <= eps).item()):
            return offset, s_, b_
    return None


def _constant_table(m: Match, v: Var, length: int, half: int):
    """The values of a constant cos or sin table broadcast over x, as a float32 [L, half]."""
    e = m.graph.producer(v)
    src = e.inputs[0] if e is not None and e.primitive == "Broadcast" else v
    if src.shape[-2:] != (length, half) or any(s != 1 for s in src.shape[:-2]) or not m.values.is_constant(src):
        return None
    value = m.values.value(src)
    return None if value is None else value.reshape(length, half).astype(mx.float32)


def _slice_of(m: Match, name: str, x: Var, start: int, stop: int, stride: int) -> bool:
    e = m.eqn(name)
    n = x.ndim
    want_start = (0,) * (n - 1) + (start,)
    want_stop = x.shape[:-1] + (stop,)
    want_strides = (1,) * (n - 1) + (stride,)
    return (e.inputs[0] is x and tuple(e.params["start"]) == want_start
            and tuple(min(s, d) for s, d in zip(e.params["stop"], x.shape)) == want_stop
            and tuple(e.params["strides"]) == want_strides)


def _rope(m: Match, traditional: bool):
    x = m["x"]
    out = m.root.outputs[0]
    if x.ndim < 3 or x.dtype not in dtypes.FLOATING or out.aval != x.aval:
        return None
    d = x.shape[-1]
    half = m["x1"].shape[-1]
    dims = 2 * half
    if traditional:
        if dims != d or not (_slice_of(m, "x1", x, 0, d, 2) and _slice_of(m, "x2", x, 1, d, 2)):
            return None
    else:
        if not (_slice_of(m, "x1", x, 0, half, 1) and _slice_of(m, "x2", x, half, dims, 1)):
            return None
        if ("rest" in m) != (dims < d) or ("rest" in m and not _slice_of(m, "rest", x, dims, d, 1)):
            return None
    cat = m.eqn("cat")
    if cat.params["axis"] % cat.outputs[0].ndim != cat.outputs[0].ndim - 1:
        return None
    length = x.shape[-2]
    theta = _table(m, m["cos"], "Cos")
    if theta is None or theta is not _table(m, m["sin"], "Sin"):
        cos, sin = _constant_table(m, m["cos"], length, half), _constant_table(m, m["sin"], length, half)
        if cos is None or sin is None:
            return Miss("the rotation's cos and sin tables are not of one angle table known at optimize time")
        # tables rounded to half precision agree to that precision only
        eps = 1e-5 if m["cos"].dtype == "float32" else 4 * float(mx.finfo(dtypes.to_mx(m["cos"].dtype)).eps)
        fit = _fit_tables(cos, sin, half, eps)
        if fit is None:
            return Miss("the cos and sin tables are not of angles (position + offset) * scale * base^(-i/(dims/2))")
        return _replace(m, x, dims, traditional, *fit)
    if theta.shape[-2:] != (length, half) or any(s != 1 for s in theta.shape[:-2]):
        return Miss(f"angle table {theta.type_str()} is not one row per position along axis -2 "
                    f"(RoPE rotates x[..., L={length}, :])")
    if not m.values.is_constant(theta):
        found = _angles_of_offset(m, theta, length, half)
        if found is None:
            return Miss("the angle table is computed from arguments, not known at optimize time")
        offset, scale, base, freqs = found
        m.detail = (f"RoPE[dims={dims}, traditional={traditional}, scale={scale:.6g}, "
                    f"{'frequencies ' + freqs.type_str() if freqs else f'base={base:.6g}'}, offset "
                    f"{offset.type_str()}] on {x.type_str()}")
        return m.add("RoPE", [x, offset, *([freqs] if freqs else [])], dims=dims,
                     traditional=traditional, base=1.0 if freqs else base, scale=scale, forward=True)
    value = m.values.value(theta)
    if value is None:
        return None
    fit = _fit(value.reshape(length, half).astype(mx.float32), half)
    if fit is None:
        return Miss("the angle table is not (position + offset) * scale * base^(-i/(dims/2))")
    return _replace(m, x, dims, traditional, *fit)


_VIEWS = ("Broadcast", "ExpandDims", "Reshape")


def _under_views(m: Match, v: Var) -> Var:
    """``v`` before the broadcasts and reshapes that made it."""
    while (e := m.graph.producer(v)) is not None and e.primitive in _VIEWS:
        v = e.inputs[0]
    return v


def _before_broadcasts(m: Match, v: Var) -> Var:
    """``v`` before the broadcasts that made it."""
    while (e := m.graph.producer(v)) is not None and e.primitive == "Broadcast":
        v = e.inputs[0]
    return v


def _made(m: Match, v: Var, primitive: str):
    e = m.graph.producer(_under_views(m, v))
    return e if e is not None and e.primitive == primitive else None


def _angles_of_offset(m: Match, theta: Var, length: int, half: int):
    """``(offset, scale, base, freqs)`` when ``theta`` is MLX's fallback angle table of an offset
    that is an argument: ((arange(L) + offset) * scale) times inv_freq, inv_freq = 1 / freqs
    (freqs an argument: base None) or a constant base^(-i / half); else None. One offset (an
    int32 of one element) only."""
    e = m.graph.producer(theta)
    if e is None or e.primitive != "Multiply":
        return None
    for a, b in (e.inputs, e.inputs[::-1]):
        # positions along axis -2 (one per row of the table), frequencies along the last axis
        rows, columns = _before_broadcasts(m, a).shape, _before_broadcasts(m, b).shape
        along_rows = half == 1 or rows[-1:] == (1,)
        along_columns = columns[-1:] == (half,) and (length == 1 or columns[-2:-1] in ((), (1,)))
        if not (along_rows and along_columns):
            continue
        scaled = _made(m, a, "Multiply")  # absent where the clean-ups dropped a scale of 1
        for pos, scale in ([(p, m.values.scalar(q)) for p, q in (scaled.inputs, scaled.inputs[::-1])]
                           if scaled is not None else [(a, 1.0)]):
            added = _made(m, pos, "Add")
            if scale is None or added is None:
                continue
            for ar, off in (added.inputs, added.inputs[::-1]):
                arange, cast = _made(m, ar, "Arange"), _made(m, off, "AsType")
                if arange is None or cast is None or arange.outputs[0].size != length:
                    continue
                if (arange.params["start"], arange.params["step"]) != (0, 1):
                    continue
                offset = cast.inputs[0]
                if offset.dtype != "int32" or offset.size != 1:
                    continue
                inv = _inverse_frequencies(m, b, half)
                if inv is not None:
                    return (offset, float(scale), *inv)
    return None


def _inverse_frequencies(m: Match, v: Var, half: int):
    """``(base, None)`` for a constant table base^(-i / half), ``(None, freqs)`` for 1 / freqs
    of a float32 argument of ``half`` values; else None."""
    src = _under_views(m, v)
    if src.size != half:
        return None
    if m.values.is_constant(src):
        value = m.values.value(src)
        if value is None:
            return None
        inv = value.reshape(half).astype(mx.float32)
        base = float(inv[1].item() ** (-half)) if half > 1 else 10000.0
        for candidate in (float(round(base)), base):
            want = mx.exp(mx.arange(0, -half, -1, dtype=mx.float32) * (math.log(candidate) / half))
            if mx.all(mx.abs(want - inv) <= ANGLE_RTOL * mx.abs(want)).item():
                return candidate, None
        return None
    e = m.graph.producer(src)
    if e is None or e.primitive != "Divide" or m.values.scalar(e.inputs[0]) != 1.0:
        return None
    freqs = _under_views(m, e.inputs[1])
    if freqs.dtype != "float32" or freqs.shape != (half,):
        return None
    return None, freqs


def _replace(m: Match, x: Var, dims: int, traditional: bool, offset: int, scale: float, base: float) -> Var:
    m.detail = (f"RoPE[dims={dims}, traditional={traditional}, base={base:.6g}, scale={scale:.6g}, "
                f"offset={offset}] on {x.type_str()}")
    return m.add("RoPE", [x, m.constant(offset, "int32")], dims=dims, traditional=traditional,
                 base=base, scale=scale, forward=True)


def rope(m: Match):  # concat(x1 cos - x2 sin, x1 sin + x2 cos[, rest]) -> RoPE(x)
    return _rope(m, traditional=False)


def rope_traditional(m: Match):  # interleave(x_even cos - x_odd sin, x_even sin + x_odd cos) -> RoPE(x)
    return _rope(m, traditional=True)


_x = P.var("x")
_x1, _x2 = P.var("x1"), P.var("x2")
_cos, _sin = P.var("cos"), P.var("sin")
_first = P("Subtract", P("Multiply", P("Slice", _x, name="x1"), _cos), P("Multiply", P("Slice", _x, name="x2"), _sin))
_second = P("Add", P("Multiply", _x1, _sin), P("Multiply", _x2, _cos))
_last = dict(where=lambda e: e.params["axes"] == (e.inputs[0].ndim,))

ROPE = Rules(
    [
        (P("Concatenate", _first, _second, name="cat")
         | P("Concatenate", _first, _second, P("Slice", _x, name="rest"), name="cat"), rope),
        (P("Reshape", P("Concatenate", P("ExpandDims", _first, **_last), P("ExpandDims", _second, **_last),
                        name="cat")),
         rope_traditional),
    ],
    group="rope",
)
