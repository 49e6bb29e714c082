"""Hypothesis strategies shared by every pass's property tests: random, well-typed MLX programs.

`program(draw)` returns ``(fn, args)``: a plain MLX function (traceable with `mlxtriton.trace`) and
arrays to call it with. A program is a list of steps drawn from one op table; each step reads
earlier values. Shapes and dtypes come from MLX itself (lazy placeholder arrays: no compute), so
every drawn program is well typed by construction.

    from hypothesis import given
    from tests.strategies import programs

    @given(programs())
    def test_pass(case):
        fn, args = case
        g = mlxtriton.trace(fn)(*args)
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, Callable

import mlx.core as mx
import numpy as np
from hypothesis import strategies as st

DIMS = (4, 3, 8, 1, 2, 5)  # hypothesis shrinks towards the first
MAX_ELEMENTS = 512  # keeps every intermediate small: programs stay fast to trace and evaluate
MAX_NDIM = 4


@dataclass(frozen=True)
class Step:
    op: str
    args: tuple[int, ...]  # indices of earlier values (inputs first)
    params: tuple[tuple[str, Any], ...] = ()

    def __repr__(self) -> str:
        ps = ", ".join(f"{k}={v!r}" for k, v in self.params)
        return f"{self.op}({', '.join(f'v{a}' for a in self.args)}{', ' + ps if ps else ''})"


def _float(v: mx.array) -> bool:
    return mx.issubdtype(v.dtype, mx.floating)


# ---- the op table: name -> (apply(values, step) -> array) ----------------------------------------

_UNARY = {
    "exp": mx.exp, "tanh": mx.tanh, "sigmoid": mx.sigmoid, "sin": mx.sin, "abs": mx.abs,
    "negative": mx.negative, "square": mx.square, "sqrt_abs": lambda x: mx.sqrt(mx.abs(x)),
    "log1p_abs": lambda x: mx.log1p(mx.abs(x)), "rsqrt_eps": lambda x: mx.rsqrt(mx.abs(x) + 1e-3),
    "silu": lambda x: x * mx.sigmoid(x),
}
_BINARY = {
    "add": mx.add, "subtract": mx.subtract, "multiply": mx.multiply, "maximum": mx.maximum,
    "minimum": mx.minimum, "divide_safe": lambda a, b: a / (mx.abs(b) + 1.0),
    "where_greater": lambda a, b: mx.where(a > b, a, b),
}
_REDUCE = {
    "sum": mx.sum, "max": mx.max, "min": mx.min, "mean": mx.mean, "prod": mx.prod,
    "logsumexp": mx.logsumexp, "var": mx.var,
}


def _apply(values: list, step: Step) -> mx.array:
    p = dict(step.params)
    a = [values[i] for i in step.args]
    op = step.op
    if op in _UNARY:
        return _UNARY[op](a[0])
    if op in _BINARY:
        return _BINARY[op](a[0], a[1])
    if op == "scalar":
        return a[0] * p["scale"] + p["shift"]
    if op == "cast":
        return a[0].astype(getattr(mx, p["dtype"]))
    if op in _REDUCE:
        return _REDUCE[op](a[0], axis=p["axes"], keepdims=p["keepdims"])
    if op == "argmax":
        return mx.argmax(a[0], axis=p["axis"], keepdims=p["keepdims"]).astype(mx.float32)
    if op == "softmax":
        return mx.softmax(a[0], axis=p["axis"])
    if op == "transpose":
        return mx.transpose(a[0], p["perm"])
    if op == "reshape":
        return mx.reshape(a[0], p["shape"])
    if op == "slice":
        return a[0][tuple(slice(*s) for s in p["slices"])]
    if op == "expand_dims":
        return mx.expand_dims(a[0], p["axis"])
    if op == "squeeze":
        return mx.squeeze(a[0], p["axis"])
    if op == "broadcast_to":
        return mx.broadcast_to(a[0], p["shape"])
    if op == "matmul":
        return a[0] @ a[1]
    if op == "concatenate":
        return mx.concatenate([a[0], a[1]], axis=p["axis"])
    if op == "take_along_axis":
        return mx.take_along_axis(a[0], a[1], axis=-1)
    raise ValueError(f"unknown step {op}")


# ---- drawing steps ----------------------------------------------------------------------------------

def _shape(draw, ndim_min=1, ndim_max=3) -> tuple[int, ...]:
    ndim = draw(st.integers(ndim_min, ndim_max))
    shape = tuple(draw(st.sampled_from(DIMS)) for _ in range(ndim))
    while math.prod(shape) > MAX_ELEMENTS:
        shape = shape[1:]
    return shape


def _broadcast_partner(draw, shape: tuple[int, ...]) -> tuple[int, ...]:
    """A shape that broadcasts against ``shape`` to exactly ``shape``: drop leading dims, set some to 1."""
    lead = draw(st.integers(0, len(shape)))
    return tuple(1 if draw(st.booleans()) and draw(st.booleans()) else d for d in shape[lead:])


def _axes(draw, ndim: int) -> tuple[int, ...]:
    axes = draw(st.lists(st.integers(0, ndim - 1), min_size=1, max_size=ndim, unique=True))
    return tuple(sorted(axes))


def _factorizations(n: int) -> list[tuple[int, ...]]:
    out = [(n,)]
    for a in range(2, n):
        if n % a == 0:
            out.append((a, n // a))
    return out


def _draw_step(draw, values: list, inputs: list, args: list, rng: np.random.Generator) -> Step | None:
    """One step reading earlier values; it may add a fresh input (a weight, a broadcast partner)."""
    # Mostly the latest values (shrinks to the last one), so programs are chains and DAGs, not stars.
    i = len(values) - 1 - draw(st.integers(0, len(values) - 1))
    x = values[i]
    kind = draw(st.sampled_from(
        ["unary"] * 6 + ["binary"] * 6 + ["scalar"] * 2 + ["cast", "reduce", "reduce", "argmax", "softmax",
         "transpose", "reshape", "slice", "expand_dims", "squeeze", "broadcast_to", "matmul",
         "concatenate", "take_along_axis"]
    ))
    floating = _float(x)
    if kind == "unary":
        return Step(draw(st.sampled_from(sorted(_UNARY))), (i,)) if floating else None
    if kind == "binary":
        # A partner: an existing value of a broadcast-compatible shape, or a fresh input.
        partners = [j for j, v in enumerate(values)
                    if _float(v) and _broadcasts_into(v.shape, x.shape)]
        if partners and draw(st.booleans()):
            j = draw(st.sampled_from(partners))
        else:
            shape = _broadcast_partner(draw, x.shape)
            j = _new_input(inputs, args, values, shape, rng)
        order = (i, j) if draw(st.booleans()) else (j, i)
        return Step(draw(st.sampled_from(sorted(_BINARY))), order) if floating else None
    if kind == "scalar" and floating:
        return Step("scalar", (i,), (("scale", draw(st.sampled_from([0.5, 2.0, -1.5]))),
                                     ("shift", draw(st.sampled_from([0.0, 1.0, 1e-5])))))
    if kind == "cast":
        return Step("cast", (i,), (("dtype", draw(st.sampled_from(["float16", "float32", "bfloat16"]))),))
    if x.ndim == 0:
        return None
    if kind == "reduce" and floating:
        return Step(draw(st.sampled_from(sorted(_REDUCE))), (i,),
                    (("axes", _axes(draw, x.ndim)), ("keepdims", draw(st.booleans()))))
    if kind == "argmax" and floating:
        return Step("argmax", (i,), (("axis", draw(st.integers(0, x.ndim - 1))), ("keepdims", draw(st.booleans()))))
    if kind == "softmax" and floating:
        return Step("softmax", (i,), (("axis", draw(st.integers(-x.ndim, x.ndim - 1))),))
    if kind == "transpose" and x.ndim > 1:
        return Step("transpose", (i,), (("perm", tuple(draw(st.permutations(range(x.ndim))))),))
    if kind == "reshape":
        options = [(x.size,)] + [f for f in _factorizations(x.size) if len(f) > 1]
        if x.ndim > 1:
            options.append(x.shape[:-2] + (x.shape[-2] * x.shape[-1],))
        return Step("reshape", (i,), (("shape", draw(st.sampled_from(options))),))
    if kind == "slice":
        slices = []
        for d in x.shape:
            start = draw(st.integers(0, d - 1))
            stop = draw(st.integers(start + 1, d))
            step = draw(st.sampled_from([1, 1, 2]))
            if draw(st.integers(0, 5)) == 0:  # reversed
                slices.append((stop - 1, None if start == 0 else start - 1, -1))
            else:
                slices.append((start, stop, step))
        return Step("slice", (i,), (("slices", tuple(slices)),))
    if kind == "expand_dims" and x.ndim < MAX_NDIM:
        return Step("expand_dims", (i,), (("axis", draw(st.integers(0, x.ndim))),))
    if kind == "squeeze":
        ones = [a for a, d in enumerate(x.shape) if d == 1]
        return Step("squeeze", (i,), (("axis", draw(st.sampled_from(ones))),)) if ones else None
    if kind == "broadcast_to" and x.ndim < MAX_NDIM:
        shape = tuple(draw(st.sampled_from((2, 3))) if d == 1 else d for d in x.shape)
        shape = (draw(st.sampled_from((2, 3))),) + shape
        return Step("broadcast_to", (i,), (("shape", shape),)) if math.prod(shape) <= MAX_ELEMENTS else None
    if kind == "matmul" and floating:
        n = draw(st.sampled_from((2, 4, 8)))
        if x.ndim == 1 or math.prod(x.shape[:-1]) * n > MAX_ELEMENTS:
            return None
        j = _new_input(inputs, args, values, (x.shape[-1], n), rng)
        return Step("matmul", (i, j))
    if kind == "concatenate":
        same = [j for j, v in enumerate(values) if v.shape == x.shape and v.dtype == x.dtype]
        axis = draw(st.integers(0, x.ndim - 1))
        if 2 * x.size > MAX_ELEMENTS:
            return None
        return Step("concatenate", (i, draw(st.sampled_from(same))), (("axis", axis),))
    if kind == "take_along_axis" and floating:
        # One index per row along the last axis, as nn.losses.cross_entropy picks labels.
        labels = rng.integers(0, x.shape[-1], size=x.shape[:-1] + (1,)).astype(np.int32)
        inputs.append(mx.zeros(labels.shape, mx.int32))
        args.append(mx.array(labels))
        values.append(inputs[-1])
        return Step("take_along_axis", (i, len(values) - 1))
    return None


def _broadcasts_into(small: tuple[int, ...], big: tuple[int, ...]) -> bool:
    if len(small) > len(big):
        return False
    return all(s in (1, b) for s, b in zip(reversed(small), reversed(big)))


def _new_input(inputs: list, args: list, values: list, shape, rng) -> int:
    inputs.append(mx.zeros(shape, mx.float32))
    args.append(mx.array(rng.standard_normal(shape).astype(np.float32)))
    values.append(inputs[-1])
    return len(values) - 1


def program(draw, min_steps: int = 4, max_steps: int = 30) -> tuple[Callable, tuple]:
    """Draw a random MLX program: ``(fn, args)`` with ``fn(*args)`` a tuple of arrays.

    Inputs are float32 (and int32 labels for ``take_along_axis``); ops mix elementwise (with
    broadcasts, scalars, casts to float16 / bfloat16), reductions over random axes with and without
    keepdims, argmax, softmax, transposes, reshapes, slices (strided and reversed), expand_dims,
    squeeze, broadcast_to, matmul and concatenate. Values are read through the program, so results
    are a DAG, returned as one to three outputs.
    """
    rng = np.random.default_rng(draw(st.integers(0, 2**32 - 1)))
    inputs: list[mx.array] = []
    args: list[mx.array] = []
    values: list[mx.array] = []
    for _ in range(draw(st.integers(1, 2))):
        _new_input(inputs, args, values, _shape(draw), rng)
    steps: list[Step] = []
    produced: list[int] = []
    target = draw(st.integers(min_steps, max_steps))
    attempts = 0
    while len(steps) < target and attempts < 4 * target:
        attempts += 1
        step = _draw_step(draw, values, inputs, args, rng)
        if step is None:
            continue
        out = _apply(values, step)  # lazy: shape and dtype only
        if out.size == 0 or out.size > MAX_ELEMENTS or out.ndim > MAX_NDIM:
            continue
        steps.append(step)
        values.append(out)
        produced.append(len(values) - 1)
    n_inputs_total = len(inputs)
    # Fresh inputs were appended to `values` between steps: remember where each value comes from.
    input_slots = [k for k, v in enumerate(values) if any(v is a for a in inputs)]
    # Outputs: the values nothing reads (so most steps stay live), the latest three of them.
    read = {a for step in steps for a in step.args}
    leaves = [k for k in produced if k not in read] or input_slots[:1]
    outputs = tuple(leaves[-3:])
    plan = (tuple(input_slots), tuple(steps), outputs)

    def fn(*arrays):
        env: list = [None] * len(values)
        for slot, a in zip(plan[0], arrays):
            env[slot] = a
        k = 0
        for slot in range(len(values)):
            if env[slot] is None:
                env[slot] = _apply(env, plan[1][k])
                k += 1
        return tuple(env[o] for o in plan[2])

    fn.__qualname__ = "program[" + "; ".join(map(repr, steps)) + "]"
    assert len(args) == n_inputs_total
    return fn, tuple(args)


programs = st.composite(program)


def row_program(draw) -> tuple[Callable, tuple]:
    """Draw a program over rows whose column sums feed back into row computations: what fusion's
    split and column-partials passes rewrite for a GPU's cores.

    ``x`` is [R, C] with R in (32, 20, 64) rows (enough for blocks of rows on an M3's ten cores),
    maybe with a [C] weight. Steps are elementwise ops (with the weight, a row statistic or a
    column sum broadcast), row reductions and softmax over the last axis, and column sums and
    means over the rows (kept [1, C]) that later steps read, as ``softmax(x) * sum(x, axis=0)``
    does, or that are returned, as a norm's weight gradient is.
    """
    rng = np.random.default_rng(draw(st.integers(0, 2**32 - 1)))
    rows, cols = draw(st.sampled_from((32, 20, 64))), draw(st.sampled_from((8, 3, 16)))
    inputs: list[mx.array] = []
    args: list[mx.array] = []
    values: list[mx.array] = []
    _new_input(inputs, args, values, (rows, cols), rng)
    if draw(st.booleans()):
        _new_input(inputs, args, values, (cols,), rng)
    steps: list[Step] = []
    for _ in range(draw(st.integers(2, 10))):
        full = [k for k, v in enumerate(values) if v.shape == (rows, cols)]
        i = full[len(full) - 1 - draw(st.integers(0, len(full) - 1))]
        kind = draw(st.sampled_from(["unary", "binary", "binary", "row", "softmax", "column", "column",
                                     "feedback"]))
        if kind == "feedback":  # a row region reading the column sum of what it reads
            for step in (Step("sum", (i,), (("axes", (0,)), ("keepdims", True))), Step("softmax", (i,), (("axis", -1),))):
                steps.append(step)
                values.append(_apply(values, step))
            step = Step("multiply", (len(values) - 1, len(values) - 2))
        elif kind == "unary":
            step = Step(draw(st.sampled_from(sorted(_UNARY))), (i,))
        elif kind == "binary":  # with anything that broadcasts into a row: a weight, a statistic
            j = draw(st.sampled_from([k for k, v in enumerate(values) if _broadcasts_into(v.shape, (rows, cols))]))
            step = Step(draw(st.sampled_from(sorted(_BINARY))), (i, j) if draw(st.booleans()) else (j, i))
        elif kind == "row":
            step = Step(draw(st.sampled_from(["sum", "max", "mean", "logsumexp"])), (i,),
                        (("axes", (1,)), ("keepdims", True)))
        elif kind == "softmax":
            step = Step("softmax", (i,), (("axis", -1),))
        else:
            step = Step(draw(st.sampled_from(["sum", "sum", "mean"])), (i,), (("axes", (0,)), ("keepdims", True)))
        steps.append(step)
        values.append(_apply(values, step))
    input_slots = tuple(range(len(inputs)))
    read = {a for step in steps for a in step.args}
    produced = range(len(inputs), len(values))
    outputs = tuple([k for k in produced if k not in read][-3:] or [len(values) - 1])

    def fn(*arrays):
        env = list(arrays)
        for step in steps:
            env.append(_apply(env, step))
        return tuple(env[o] for o in outputs)

    fn.__qualname__ = "row_program[" + "; ".join(map(repr, steps)) + "]"
    assert len(input_slots) == len(args)
    return fn, tuple(args)


row_programs = st.composite(row_program)
