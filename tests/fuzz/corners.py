"""The corners every op must survive, one program per op: the op table of `programs` applied to
one argument per corner (a transposed (8, 129), a size-1 axis, a size-0 axis, a 0-d array, a
strided row of 4097, a reversed (3, 1, 5)), float32 / float16 / bfloat16 mixed, NaN / +-inf / -0.0
sprinkled in; int32 and bool ops on their own; Python scalars; reductions over every axis and
over 32 rows or more; static scalars whose type changes between the two calls.

`CASES` maps a case's name to its `Case` (family and builder); `merged(family)` is one program
holding every case of a family, for a path that pays per op rather than per program (the JAX
oracle compiles each primitive once per shape and dtype).
"""

from __future__ import annotations

import re
from dataclasses import dataclass, replace
from typing import Callable

import mlx.core as mx

from tests.fuzz.programs import (BITS, BOOL_BINARY, BOOL_UNARY, CLOSE, COMPARISONS, FLOAT_BINARY,
                                 FLOAT_UNARY, FLOATS, INT_BINARY, INT_UNARY, REDUCTIONS, Argument,
                                 Program, Static, coarsest, drop_unused, exactness)

FLOAT_MIX = ("float32", "float16", "bfloat16", "float32", "bfloat16", "float16")


@dataclass(frozen=True)
class Case:
    family: str
    build: Callable[[], Program]
    raises: bool = False  # MLX raises on it: it cannot share a program with other cases


def program(arguments, lines, exact=None, statics=()) -> Program:
    """A hand-written program returning every line's value; ``exact`` per line: a level
    (`programs.BITS`, ...) or a bool (True: bit for bit)."""
    names = tuple(line.split(" = ", 1)[0] for line in lines)
    exact = tuple(exact) if exact is not None else (CLOSE,) * len(names)
    exact = tuple(BITS if e is True else CLOSE if e is False else e for e in exact)
    precision = coarsest([a.dtype for a in arguments])
    return Program(tuple(arguments), tuple(statics), tuple(lines), names, exact, seed=7,
                   facts=tuple((e, False) for e in exact), precision=(precision,) * len(names))


def corner_arguments(dtypes, values, first: int = 0) -> list[Argument]:
    shapes = [((8, 129), ("transposed", (1, 0))), ((1, 7), ()), ((0, 3), ()), ((), ()),
              ((2, 4097), ("strided", 1)), ((3, 1, 5), ("reversed", 2))]
    return [Argument(f"a{first + i}", shape, dtypes[i % len(dtypes)], values, layout)
            for i, (shape, layout) in enumerate(shapes)]


def _mx(dtype: str) -> str:
    return "mx.bool_" if dtype == "bool" else f"mx.{dtype}"


def _unary(template, flags, dtypes, values) -> Program:
    arguments = corner_arguments(dtypes, values)
    lines = [f"v{i} = {template.format(x=a.name, dtype=_mx(a.dtype))}" for i, a in enumerate(arguments)]
    return program(arguments, lines, exact=(exactness(flags),) * len(lines))


def _pairs(dtypes, values) -> list[Argument]:
    """Pairs that broadcast: a row against a transposed matrix, a size-1 axis against a column, a
    size-0 axis against a row, a 0-d array against a strided row of 4097; precisions mixed."""
    specs = [((8, 129), ("transposed", (1, 0)), (129,), ()), ((1, 7), (), (3, 1), ()),
             ((0, 3), (), (1, 3), ()), ((), (), (2, 4097), ("strided", 1))]
    arguments = []
    for i, (shape, layout, other, other_layout) in enumerate(specs):
        for k, (s, l) in enumerate(((shape, layout), (other, other_layout))):
            dtype = dtypes[(i + k) % len(dtypes)]
            v = values if dtype != "bool" else "bools"
            arguments.append(Argument(f"a{2 * i + k}", s, dtype, v, l))
    return arguments


def _binary(template, exact, dtypes, values) -> Program:
    arguments = _pairs(dtypes, values)
    lines = [f"v{i} = {template.format(a=arguments[2 * i].name, b=arguments[2 * i + 1].name)}"
             for i in range(len(arguments) // 2)]
    return program(arguments, lines, exact=(exact,) * len(lines))


def _integer(op) -> Program:
    # divisors are never 0 (a C division by zero is undefined), exponents and shifts in [0, 3]
    second = "nonzero" if op in ("//", "%") else "exponents"
    arguments = [Argument("a0", (8, 129), "int32", "ints", ("transposed", (1, 0))),
                 Argument("a1", (129,), "int32", second), Argument("a2", (0, 3), "int32", "ints"),
                 Argument("a3", (), "int32", second)]
    lines = [f"v0 = a0 {op} a1", f"v1 = a2 {op} a3", f"v2 = a0 {op} a3"]
    return program(arguments, lines, exact=(True,) * 3)


def _casts(dtype) -> Program:
    # float -> int of NaN, inf or out of range is undefined in MLX (C++): int casts read "wide"
    # finite values (|x| ~ 1e4), every other cast the special values
    values = {"int32": "ints", "bool": "bools"}.get(dtype, "special")
    arguments = corner_arguments((dtype,), values)
    finite = corner_arguments((dtype,), "wide" if dtype in FLOATS else values, first=6)
    lines = []
    for to in ("float32", "float16", "bfloat16", "int32", "bool"):
        source = finite if to == "int32" else arguments
        lines += [f"v{len(lines)} = {a.name}.astype({_mx(to)})" for a in source]
    return program(arguments + finite, lines, exact=(True,) * len(lines))


_AXES = {"": None, ", axis=0": (0,), ", axis=-1": (-1,), ", axis=(0, 1)": (0, 1),
         ", axis=1, keepdims=True": (1,)}


def _reduction(kind, name) -> Program:
    dtypes = {"float": FLOAT_MIX, "int": ("int32",), "bool": ("bool",)}[kind]
    values = {"float": "special", "int": "ints", "bool": "bools"}[kind]
    arguments = corner_arguments(dtypes, values)
    if kind == "float":  # half-precision sums accumulate in float32: 4097 x 0.25 is not 64
        arguments += [Argument("a6", (2, 4097), "bfloat16", "constant:0.25", ("strided", 1)),
                      Argument("a7", (3, 16), "float16", "constant:50.0")]
    extra = ", ddof=1" if name == "var" else ""
    lines = []
    for a in arguments:
        n = len(a.shape)
        for text, axes in _AXES.items():
            axes = range(n) if axes is None else axes
            if (text and n == 0) or any(k >= n for k in axes):
                continue
            if any(a.shape[k] == 0 for k in axes) or (name == "logsumexp" and 0 in a.shape):
                continue  # an empty axis (MLX's logsumexp rejects any empty input): "empty" cases
            lines.append(f"v{len(lines)} = mx.{name}({a.name}{text}{extra})")
    return program(arguments, lines, exact=(exactness(REDUCTIONS[kind][name]),) * len(lines))


def _empty(name) -> Program:
    # MLX returns the identity (sum, prod, all, any), NaN (mean, var), an empty array (softmax,
    # cumsum) or raises (max, min, logsumexp, argmax): every path does what MLX does
    arguments = [Argument("a0", (3, 0), "float32", "normal"), Argument("a1", (0,), "int32", "ints")]
    lines = [f"v0 = mx.{name}(a0, axis=-1)", f"v1 = mx.{name}(a1, axis=0)"]
    return program(arguments, lines, exact=(False, True))


ROW_OPS = {
    "softmax": "mx.softmax({x}, axis=-1)",
    "precise softmax over axis 0": "mx.softmax({x}, axis=0, precise=True)",
    "log-softmax": "{x} - mx.logsumexp({x}, axis=-1, keepdims=True)",
    "decomposed softmax": "mx.exp({x} - mx.max({x}, axis=-1, keepdims=True)) / mx.sum(mx.exp({x} "
                          "- mx.max({x}, axis=-1, keepdims=True)), axis=-1, keepdims=True)",
    "decomposed rms norm": "{x} * mx.rsqrt(mx.mean(mx.square({x}), axis=-1, keepdims=True) + 1e-5)",
    "decomposed layer norm, eps 0": "({x} - mx.mean({x}, axis=-1, keepdims=True)) * mx.rsqrt(mx.var("
                                    "{x}, axis=-1, keepdims=True) + 0.0)",
    "log of a column mean": "mx.log(2 * mx.mean({x}, axis=0))",
}


def _row(template) -> Program:
    # special values, and constant rows (a variance of exactly 0)
    arguments = [a for a in corner_arguments(FLOAT_MIX, "special") if a.shape]
    arguments += [a for a in corner_arguments(FLOAT_MIX, "constant:0.25", first=6) if a.shape]
    if "logsumexp" in template:  # MLX's logsumexp rejects any empty input: the "empty" cases
        arguments = [a for a in arguments if 0 not in a.shape]
    if "+ 0.0)" in template:
        # A generated kernel computes half types in float32, rounding at casts and stores only
        # (docs/codegen.md); MLX rounds every op. A constant half row's mean then is the row's
        # value in one and not in the other, and with eps 0 that is 0 * rsqrt(0) = NaN against
        # +-1: only float32 constant rows meet the eps-0 layer norm
        arguments = [a for a in arguments if a.values == "special" or a.dtype == "float32"]
    lines = [f"v{i} = {template.format(x=a.name)}" for i, a in enumerate(arguments)]
    return program(arguments, lines)


COLUMNS = {
    "sum": "mx.sum({x}, axis=0)",
    "mean": "mx.mean({x}, axis=0)",
    "max": "mx.max({x}, axis=0)",
    "log of a column mean": "mx.log(2 * mx.mean({x}, axis=0))",
    "centred": "{x} - mx.mean({x}, axis=0, keepdims=True)",
    "var": "mx.var({x}, axis=0)",
    "a row softmax times a column sum": "mx.softmax({x}, axis=-1) * mx.sum({x}, axis=0, keepdims=True)",
}


def _column(template) -> Program:
    # 32 rows or more: Apple chips reduce columns in partial sums (fusion/partials.py)
    arguments = [Argument("a0", (40, 7), "float32", "special"),
                 Argument("a1", (64, 3), "bfloat16", "special", ("transposed", (1, 0))),
                 Argument("a2", (33, 1, 5), "float16", "special", ("reversed", 0)),
                 Argument("a3", (129, 2), "float32", "constant:0.25"),
                 Argument("a4", (40, 3), "int32", "ints")]
    lines = [f"v{i} = {template.format(x=a.name)}" for i, a in enumerate(arguments)]
    return program(arguments, lines, exact=(exactness("EZ" if template.startswith("mx.max") else ""),)
                   * len(lines))


SCALARS = {  # an array and a Python scalar: (template, flags)
    "x ** 0.5": ("{x} ** 0.5", ""), "(1.0 - x) ** 0.5": ("(1.0 - {x}) ** 0.5", ""),
    "x ** 2": ("{x} ** 2", ""), "x ** -1": ("{x} ** -1", ""), "2.0 - x": ("2.0 - {x}", ""),
    "x * 2": ("{x} * 2", "E"), "x / 3": ("{x} / 3", ""), "x // 4": ("{x} // 4", ""),
    "x % 3": ("{x} % 3", ""), "x > 0": ("{x} > 0", "E"), "x == 0": ("{x} == 0", "E"),
    "maximum(x, 0.5)": ("mx.maximum({x}, 0.5)", "E"),
}


def _norms() -> Program:
    arguments = [a for a in corner_arguments(FLOAT_MIX, "special") if a.shape]
    arguments += [a for a in corner_arguments(FLOAT_MIX, "constant:-3.0", first=6) if a.shape]
    lines, weights = [], []
    for k, a in enumerate(arguments):
        w, eps = "None", ("1e-5", "0.0")[k % 2]
        if k % 3:
            weights.append(Argument(f"a{20 + k}", a.shape[-1:], a.dtype, "normal"))
            w = weights[-1].name
        lines.append(f"v{len(lines)} = mx.fast.rms_norm({a.name}, {w}, {eps})")
        lines.append(f"v{len(lines)} = mx.fast.layer_norm({a.name}, {w}, {w}, {eps})")
    return program(arguments + weights, lines)


def _scan(name) -> Program:
    arguments = [a for a in corner_arguments(FLOAT_MIX, "special") if a.shape]
    if name in ("cummax", "cummin"):  # MLX 0.32.4's half-precision running max / min: NaN -> 0
        arguments = [a if a.dtype == "float32" else replace(a, values="wide") for a in arguments]
    arguments.append(Argument("a6", (4, 9), "int32", "ints", ("transposed", (1, 0))))
    flags = ("", ", reverse=True", ", inclusive=False", ", reverse=True, inclusive=False")
    lines, exact = [], []
    for k, a in enumerate(arguments):
        if a.dtype == "int32" and name == "logcumsumexp":
            continue
        for axis in range(len(a.shape)):
            lines.append(f"v{len(lines)} = mx.{name}({a.name}, axis={axis}{flags[(k + axis) % 4]})")
            exact.append(BITS if a.dtype == "int32" else exactness("EZ" if name in ("cummax", "cummin") else ""))
    return program(arguments, lines, exact=exact)


MOVEMENT = (
    "mx.transpose({x}, (1, 0))", "{x}[::-1, 1:-1]", "{x}[-2::-2, ::3]", "{x}[:, None, ::-1]",
    "{x}[..., :0]", "{x}[-1]", "mx.concatenate([{x}, {x}[:1]], axis=0)",
    "mx.concatenate([{x}, {x}[:, :0]], axis=1)", "mx.stack([{x}, -{x}], axis=1)",
    "mx.expand_dims({x}, -1)", "mx.squeeze({x}[:1], 0)", "mx.broadcast_to({x}[:, :1], {x}.shape)",
    "{x}.reshape(-1)", "mx.flatten({x}[None], 0, 1)", "mx.swapaxes({x}, 0, 1)[::2]",
    "mx.pad({x}, [(1, 0), (0, 2)], constant_values=-1)", "mx.split({x}, [1], axis=1)[1]",
    "mx.transpose(mx.transpose({x}, (1, 0)), (1, 0))",
)


def _movement(template) -> Program:
    # the two-dimensional corners (a view a corner cannot have, e.g. a row of a size-0 axis, is
    # left out: MLX rejects it, or reads past the end for an integer index)
    arguments = [a for a in corner_arguments(FLOAT_MIX, "special") if len(a.shape) == 2]
    arguments.append(Argument("a9", (2, 5), "int32", "ints", ("reversed", 0)))
    lines = []
    for a in arguments:
        text = template.format(x=a.name)
        try:
            eval(text, {"mx": mx, a.name: mx.zeros(a.shape)})
        except (ValueError, IndexError):
            continue
        lines.append(f"v{len(lines)} = {text}")
    return program(arguments, lines, exact=(True,) * len(lines))


MATMUL_SHAPES = {"row": ((7, 129), (129, 3)), "vector": ((2, 7, 0), (0,)), "left": ((5, 1), (4, 5)),
                 "bias": ((8, 16), (16, 8)), "batched": ((2, 3, 4), (1, 4, 5)),
                 "empty": ((0, 4), (4, 2))}


def _projections() -> Program:
    """A decode step's products: two weights transposed on one x of 2 rows (one projection
    region on NVIDIA chips), a lone one on x of 1 row, the pair's sum read after both, and a
    SwiGLU gate of two more (the region's epilogue)."""
    arguments, lines = [], []
    for k, dtype in enumerate(FLOATS):
        x, y, w1, w2, w3, w4, w5 = (f"a{7 * k + i}" for i in range(7))
        arguments += [Argument(x, (2, 32), dtype, "normal"), Argument(y, (1, 32), dtype, "normal"),
                      Argument(w1, (8, 32), dtype, "normal"), Argument(w2, (16, 32), dtype, "normal"),
                      Argument(w3, (24, 32), dtype, "normal", ("transposed", (1, 0))),
                      Argument(w4, (12, 32), dtype, "normal"), Argument(w5, (12, 32), dtype, "normal")]
        lines += [f"v{4 * k} = {x} @ {w1}.T", f"v{4 * k + 1} = ({x} @ {w2}.T)[:, :8] + v{4 * k}",
                  f"v{4 * k + 2} = {y} @ {w3}.T",
                  f"v{4 * k + 3} = ({y} @ {w4}.T) * mx.sigmoid({y} @ {w4}.T) * ({y} @ {w5}.T)"]
    return program(arguments, lines)


def _views_between_kernels() -> Program:
    """Views between a kernel and a matmul, and between two matmuls (a bare replay launches the
    kernel in the views' shape and makes the matmuls' views one reshape, `runtime.views`)."""
    arguments, lines = [], []
    for k, dtype in enumerate(FLOATS):
        x, w, u, v = (f"a{4 * k + i}" for i in range(4))
        arguments += [Argument(x, (8, 64), dtype, "normal"), Argument(w, (32, 16), dtype, "normal"),
                      Argument(u, (64, 32), dtype, "normal"), Argument(v, (4, 16), dtype, "normal")]
        lines += [f"v{3 * k} = mx.transpose(mx.softmax({x}, axis=-1).reshape(8, 2, 32)[:, None], "
                  f"(0, 2, 1, 3)) @ {w}",
                  f"v{3 * k + 1} = mx.transpose(({x} @ {u}).reshape(8, 1, 8, 4), (1, 0, 2, 3)) @ {v}",
                  f"v{3 * k + 2} = mx.exp(({x} @ {u}).reshape(8, 1, 32)) * 2.0"]
    return program(arguments, lines)


def _matmul(form) -> Program:
    x, w = MATMUL_SHAPES[form]
    arguments, lines = [], []
    for k, dtype in enumerate(FLOATS):
        a, b, c = (f"a{3 * k + i}" for i in range(3))
        layout = ("transposed", (1, 0)) if len(x) == 2 else ()
        arguments += [Argument(a, x, dtype, "special", layout), Argument(b, w, dtype, "normal"),
                      Argument(c, w[-1:], dtype, "normal")]
        line = {"left": f"{b} @ {a}", "bias": f"2.0 * ({a} @ {b}) + {c}"}.get(form, f"{a} @ {b}")
        lines.append(f"v{k} = {line}")
    return program(arguments, lines)


GATHERS = {
    "take along axis 0": "mx.take({x}, {i}, axis=0)",
    "take flat": "mx.take({x}, {i})",
    "index": "{x}[{i}]",
    "take_along_axis": "mx.take_along_axis({x}, {i}[:, None], axis=1)",
    "the row's argmax": "mx.take_along_axis({x}, mx.argmax({x}, axis=-1, keepdims=True), axis=-1)",
    "logsumexp minus the argmax logit": "mx.logsumexp({x}, axis=-1, keepdims=True) - mx.take_along_axis("
                                        "{x}, mx.argmax({x}, axis=-1, keepdims=True), axis=-1)",
    "softmax of an int cast": "mx.softmax({x}.astype(mx.int32).astype(mx.float32), axis=-1)",
}


def _gather(template) -> Program:
    arguments = [Argument("a0", (8, 129), "float32", "wide", ("transposed", (1, 0))),
                 Argument("a1", (8,), "int32", "indices:8"),
                 Argument("a2", (1, 7), "bfloat16", "normal"), Argument("a3", (1,), "int32", "indices:1")]
    lines = [f"v0 = {template.format(x='a0', i='a1')}", f"v1 = {template.format(x='a2', i='a3')}"]
    exact = "logsumexp" not in template and "softmax" not in template
    return program(arguments, lines, exact=(exact,) * 2)


STATIC_PAIRS = ((2, 2.0), (2.0, 2), (1, True), (True, 1), (0, False), (1.0, True), (2, 3))


def _static(first, second, declared) -> Program:
    # int32 * 2 is int32 and * 2.0 float32; a bool array + True stays bool and + 1 is int32
    arguments = [Argument("a0", (3, 5), "int32", "ints"), Argument("a1", (5,), "bool", "bools"),
                 Argument("a2", (2, 3), "float16", "normal")]
    lines = ["v0 = a0 * s0", "v1 = a1 + s0", "v2 = mx.maximum(a2, s0) // 4",
             "v3 = (a0 * 1.0 + s0) // 4", "v4 = mx.where(a1, s0, a0)"]
    return program(arguments, lines, exact=(True,) * len(lines),
                   statics=(Static("s0", (first, second), declared),))


def _cases() -> dict[str, Case]:
    cases: dict[str, Case] = {}

    def add(family, name, build, raises=False):
        cases[f"{family}: {name}"] = Case(family, build, raises)

    for t, flags in sorted(FLOAT_UNARY.items()):
        add("float unary", t, lambda t=t, f=flags: _unary(t, f, FLOAT_MIX, "special"))
    for t, flags in sorted(INT_UNARY.items()):
        add("int unary", t, lambda t=t, f=flags: _unary(t, f, ("int32",), "ints"))
    for t, flags in sorted(BOOL_UNARY.items()):
        add("bool unary", t, lambda t=t, f=flags: _unary(t, f, ("bool",), "bools"))
    for t, flags in sorted(FLOAT_BINARY.items()):
        add("float binary", t, lambda t=t, f=flags: _binary(t, exactness(f), FLOAT_MIX, "special"))
    for t in COMPARISONS:
        add("float binary", t, lambda t=t: _binary(t, True, FLOAT_MIX, "special"))
    for t, flags in sorted(INT_BINARY.items()):  # int32 with bool operands: promotion
        add("int binary", t, lambda t=t, f=flags: _binary(t, exactness(f), ("int32", "int32", "bool"),
                                                            "ints"))
    for t, flags in sorted(BOOL_BINARY.items()):
        add("bool binary", t, lambda t=t, f=flags: _binary(t, exactness(f), ("bool",), "bools"))
    for op in ("//", "%", "**", ">>", "<<"):
        add("integer", op, lambda op=op: _integer(op))
    for dtype in ("float32", "float16", "bfloat16", "int32", "bool"):
        add("casts", f"from {dtype}", lambda d=dtype: _casts(d))
    for kind, table in REDUCTIONS.items():
        for name in sorted(table):
            add("reductions", f"{kind} {name}", lambda k=kind, n=name: _reduction(k, n))
    for name in ("sum", "prod", "mean", "var", "all", "any", "softmax", "cumsum"):
        add("empty", name, lambda n=name: _empty(n))
    for name in ("max", "min", "logsumexp", "argmax"):
        add("empty", name, lambda n=name: _empty(n), raises=True)
    for name, (t, flags) in SCALARS.items():
        add("scalars", f"{name}, floats", lambda t=t, f=flags: _unary(t, f, FLOAT_MIX, "special"))
        add("scalars", f"{name}, ints", lambda t=t, f=flags: _unary(t, f, ("int32",), "ints"))
    for name, t in ROW_OPS.items():
        add("rows", name, lambda t=t: _row(t))
    for name, t in COLUMNS.items():
        add("columns", name, lambda t=t: _column(t))
    add("rows", "fast norms", _norms)
    for name in ("cumsum", "cumprod", "cummax", "cummin"):
        add("scans", name, lambda n=name: _scan(n))
    add("log scans", "logcumsumexp", lambda: _scan("logcumsumexp"))  # apart: it cannot be traced
    for t in MOVEMENT:
        add("movement", t, lambda t=t: _movement(t))
    for form in MATMUL_SHAPES:
        add("matmul", form, lambda f=form: _matmul(f))
    add("matmul", "projections", _projections)
    add("matmul", "views between kernels", _views_between_kernels)
    for name, t in GATHERS.items():
        add("gathers", name, lambda t=t: _gather(t))
    for k, (first, second) in enumerate(STATIC_PAIRS):
        add("statics", f"{first!r} then {second!r}", lambda a=first, b=second, d=k % 2 == 0: _static(a, b, d))
    return cases


CASES = _cases()
FAMILIES = tuple(dict.fromkeys(c.family for c in CASES.values()))


def merged(family: str, every: int = 1) -> Program:
    """Every case of ``family`` MLX does not reject, in one program (names renumbered); with
    ``every`` > 1, every ``every``-th line of each case (starting one later for each case, so the
    corners are all met)."""
    arguments, statics, lines, outputs, exact, precision = [], [], [], [], [], []
    cases = [c for c in CASES.values() if c.family == family and not c.raises]
    for k, case in enumerate(cases):
        p = case.build()
        if every > 1:
            keep = [i for i in range(len(p.lines)) if i % every == k % every] or [0]
            p = drop_unused(replace(p, outputs=tuple(p.outputs[i] for i in keep),
                                    exact=tuple(p.exact[i] for i in keep),
                                    precision=tuple(p.precision[i] for i in keep)))
        names = {a.name: f"a{len(arguments) + i}" for i, a in enumerate(p.arguments)}
        names |= {s.name: f"s{len(statics) + i}" for i, s in enumerate(p.statics)}
        names |= {line.split(" = ", 1)[0]: f"v{len(lines) + i}" for i, line in enumerate(p.lines)}
        rename = lambda text: re.sub(r"\b[avs]\d+\b", lambda m: names.get(m[0], m[0]), text)  # noqa: E731
        arguments += [Argument(names[a.name], a.shape, a.dtype, a.values, a.layout) for a in p.arguments]
        statics += [Static(names[s.name], s.values, s.declared) for s in p.statics]
        lines += [rename(line) for line in p.lines]
        outputs += [names[o] for o in p.outputs]
        exact += p.exact
        precision += p.precision
    return Program(tuple(arguments), tuple(statics), tuple(lines), tuple(outputs), tuple(exact),
                   seed=7, facts=tuple((e, False) for e in exact), precision=tuple(precision))
