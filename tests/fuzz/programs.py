"""Random MLX programs for differential fuzzing, drawn as Python source.

A `Program` is the text of a function of MLX arrays and Python scalars plus the NumPy code that
makes its arguments, so each one prints as a standalone reproduction. Programs reach the corners
where implementations part: 0-d, size-0 and size-1 axes, odd and long rows (129, 1000, 4097),
NaN / +-inf / -0.0 inputs, float16 / bfloat16 / int32 / bool through every family (elementwise,
comparisons and ``where``, casts, reductions over random axes, softmax, movement incl. negative
steps, matmul, scans, gathers, ``mx.fast`` norms, the decomposed forms the rewrite rules look
for), non-contiguous arguments (transposed, strided, reversed, broadcast views) and static Python
scalars whose type changes between two calls (2 then 2.0, 1 then True).

Every step is checked on lazy placeholder arrays while drawing (MLX's own shape and type rules,
no compute), so a program is well typed; a step MLX rejects may be kept as the last one, and the
program then raises, as it must through every path.

Each value carries two facts the comparison relies on: how ``exact`` it is (`BITS`: every
implementation computes it bit for bit: inputs, movement, casts, max / min, integer and bool
arithmetic, comparisons of exact values; `VALUE`: the same but for the sign of a zero, as a max
reduction's result depends on its order; `CLOSE`: float arithmetic, whose rounding depends on
evaluation order, FMA contraction and fast math) and whether it is ``bounded`` (finite, |x| <=
1e4). Discontinuous ops (floor, comparisons, float -> int casts, argmax, ``//``) only read exact
values, so a one-ulp difference upstream cannot flip their result; a float -> int cast only reads
bounded values (MLX leaves NaN / inf / out-of-range casts undefined).

Drawing goes through `Draw`: `HypothesisDraw` (shrinkable, for `fuzz_programs()`) or
`RandomDraw` (a seeded `random.Random`, for long runs).
"""

from __future__ import annotations

import math
import random
import re
from dataclasses import dataclass, field, replace
from typing import Any, Callable, Sequence

import mlx.core as mx
import numpy as np
from hypothesis import strategies as st

MAX_ELEMENTS = 20_000  # per value: long rows fit (4 x 4097) and the interpreter stays quick
MAX_NDIM = 4
# Hypothesis shrinks a choice towards the first option: the simple ones come first; repeats weigh.
DIMS = (3, 1, 2, 8, 3, 1, 0, 7, 5, 2, 129, 16, 1000, 4097)
FLOATS = ("float32", "float16", "bfloat16")
ARGUMENT_DTYPES = ("float32",) * 5 + ("float16", "bfloat16", "int32", "bool")
SPECIALS = "[np.nan, np.inf, -np.inf, -0.0, 0.0]"
# How exactly every implementation must reproduce a value: bit for bit (signed zeros included),
# equal up to the sign of zeros, or within the dtype's tolerance
BITS, VALUE, CLOSE = 2, 1, 0


# ---- drawing --------------------------------------------------------------------------------------

class Draw:
    """The choices a program is made of."""

    def integer(self, lo: int, hi: int) -> int:
        raise NotImplementedError

    def choice(self, options: Sequence):
        return options[self.integer(0, len(options) - 1)]

    def chance(self, percent: int) -> bool:
        """True about ``percent`` times in 100; shrinks to False."""
        return self.integer(0, 99) >= 100 - percent


class HypothesisDraw(Draw):
    def __init__(self, draw: Callable):
        self._draw = draw

    def integer(self, lo: int, hi: int) -> int:
        return self._draw(st.integers(lo, hi))


class RandomDraw(Draw):
    def __init__(self, seed: int):
        self._random = random.Random(seed)

    def integer(self, lo: int, hi: int) -> int:
        return self._random.randint(lo, hi)


# ---- programs -------------------------------------------------------------------------------------

@dataclass(frozen=True)
class Argument:
    """An array argument: its shape and dtype as the function sees them, how its values are drawn
    (``normal``, ``special``, ``ints``, ``indices:8``, ...) and the view it reaches the function
    through: ``()`` contiguous, ``("transposed", perm)``, ``("strided", axis)`` (every other
    element), ``("offset", axis)`` (from 1), ``("reversed", axis)`` or ``("broadcast", storage)``."""

    name: str
    shape: tuple[int, ...]
    dtype: str
    values: str
    layout: tuple = ()

    def storage(self) -> tuple[int, ...]:
        kind = self.layout[0] if self.layout else None
        shape = list(self.shape)
        if kind == "transposed":
            perm = self.layout[1]
            return tuple(shape[perm.index(j)] for j in range(len(shape)))
        if kind == "strided":
            shape[self.layout[1]] *= 2
        elif kind == "offset":
            shape[self.layout[1]] += 1
        elif kind == "broadcast":
            return self.layout[1]
        return tuple(shape)

    def source(self) -> list[str]:
        """Lines that bind ``self.name`` to a fresh argument, drawing from ``rng``."""
        n, s = self.name, self.storage()
        kind, _, param = self.values.partition(":")
        draw = {
            "normal": f"rng.standard_normal({s})",
            "special": f"rng.standard_normal({s})",
            "positive": f"rng.uniform(0.5, 3.0, {s})",
            "wide": f"rng.standard_normal({s}) * 1e4",
            "constant": f"np.full({s}, {param})",
            "ints": f"rng.integers(-9, 10, {s})",
            "nonzero": f"rng.choice([-3, -2, -1, 1, 2, 3], {s})",
            "exponents": f"rng.integers(0, 4, {s})",
            "bools": f"rng.random({s}) < 0.5",
            "indices": f"rng.integers(0, {param}, {s})",
        }[kind]
        numpy_dtype = {"int32": "np.int32", "bool": "np.bool_"}.get(self.dtype, "np.float32")
        if math.prod(s) == 0:
            # MLX 0.32.4 can loop forever reducing an empty array made from NumPy
            # (mx.all(mx.array(np.zeros(0, np.float32)))): empty arguments come from mx.zeros
            lines, array = [], f"mx.zeros({s}, mx.{_mx_dtype(self.dtype)})"
        else:
            lines = [f"{n} = np.array({draw}, {numpy_dtype})"]
            if kind == "special":
                k = max(1, math.prod(s) // 3)
                lines.append(f"{n}.flat[rng.integers(0, {n}.size, {k})] = rng.choice({SPECIALS}, {k})")
            array = f"mx.array({n})"
            if self.dtype in ("float16", "bfloat16"):
                array += f".astype(mx.{self.dtype})"
        layout = self.layout[0] if self.layout else None
        if layout == "transposed":
            array += f".transpose{tuple(self.layout[1])}"
        elif layout in ("strided", "offset", "reversed"):
            index = {"strided": "::2", "offset": "1:", "reversed": "::-1"}[layout]
            array += "[" + ", ".join([":"] * self.layout[1] + [index]) + "]"
        elif layout == "broadcast":
            array = f"mx.broadcast_to({array}, {self.shape})"
        lines.append(f"{n} = {array}")
        return lines


@dataclass(frozen=True)
class Static:
    """A Python scalar argument and its value on each call (``(2, 2.0)``: equal, other type);
    ``declared``: listed in ``static_argnums`` (else passed bare, which traces as static too)."""

    name: str
    values: tuple
    declared: bool


@dataclass(frozen=True)
class Program:
    arguments: tuple[Argument, ...]
    statics: tuple[Static, ...]
    lines: tuple[str, ...]  # the body, one assignment per step
    outputs: tuple[str, ...]
    exact: tuple[int, ...]  # per output: BITS, VALUE or CLOSE (see `exactness`)
    seed: int  # call k draws its arguments from seed + k
    facts: tuple[tuple[int, bool], ...] = ()  # per line: (exact, bounded) of its value
    # per output: the coarsest float type it was computed through (its tolerance's dtype)
    precision: tuple[str, ...] = ()

    @property
    def static_argnums(self) -> tuple[int, ...]:
        n = len(self.arguments)
        return tuple(n + i for i, s in enumerate(self.statics) if s.declared)

    def function_source(self) -> str:
        params = ", ".join([a.name for a in self.arguments] + [s.name for s in self.statics])
        body = [f"    {line}" for line in self.lines]
        result = ", ".join(self.outputs) + ("," if len(self.outputs) == 1 else "")
        return "\n".join([f"def f({params}):", *body, f"    return {result}"])

    def arguments_source(self) -> str:
        lines = ["def arguments(seed):", "    rng = np.random.default_rng(seed)"]
        lines += [f"    {line}" for a in self.arguments for line in a.source()]
        names = ", ".join(a.name for a in self.arguments)
        lines.append(f"    return ({names}{',' if len(self.arguments) == 1 else ''})")
        return "\n".join(lines)

    def function(self) -> Callable:
        namespace = {"mx": mx, "np": np}
        exec(self.function_source(), namespace)
        return namespace["f"]

    def call_arguments(self, call: int) -> tuple:
        """The arguments of call ``call`` (0 or 1): fresh arrays (evaluated, so a view stays a
        view) and each static's value for that call."""
        namespace = {"mx": mx, "np": np}
        exec(self.arguments_source(), namespace)
        arrays = namespace["arguments"](self.seed + call)
        mx.eval(arrays)
        return (*arrays, *(s.values[call] for s in self.statics))

    def source(self) -> str:
        """The function and its argument maker, as a module a reproduction can paste."""
        return f"{self.function_source()}\n\n\n{self.arguments_source()}\n"


# ---- the drawing of one program ---------------------------------------------------------------------

@dataclass
class _Value:
    name: str
    array: mx.array  # a lazy placeholder: shape and dtype only
    exact: int
    bounded: bool
    precision: str = "float32"  # the coarsest float type among the values it is computed from

    @property
    def shape(self) -> tuple[int, ...]:
        return tuple(self.array.shape)

    @property
    def dtype(self) -> str:
        return _dtype_name(self.array.dtype)

    @property
    def kind(self) -> str:
        if self.dtype in FLOATS:
            return "float"
        return "bool" if self.dtype == "bool" else "int"


@dataclass
class _Step:
    expression: str
    exact: int
    bounded: bool = False


def _dtype_name(dtype: mx.Dtype) -> str:
    return str(dtype).removeprefix("mlx.core.")


def coarsest(dtypes: Sequence[str]) -> str:
    """The least precise float type among ``dtypes`` (float32 where there is none)."""
    return max((d for d in dtypes if d in FLOATS), key=FLOATS.index, default="float32")


def _mx_dtype(name: str) -> str:
    return "bool_" if name == "bool" else name


def placeholder(shape, dtype: str) -> mx.array:
    """A lazy array of ``shape`` and ``dtype``: MLX's shape and type rules without compute."""
    return mx.zeros(shape, getattr(mx, _mx_dtype(dtype)))


@dataclass
class _Builder:
    d: Draw
    values: list[_Value] = field(default_factory=list)
    arguments: list[Argument] = field(default_factory=list)
    statics: list[Static] = field(default_factory=list)
    scalars: dict[str, Any] = field(default_factory=dict)  # static name -> first call's value

    # -- shapes and arguments --
    def shape(self, ndim_max: int = MAX_NDIM) -> tuple[int, ...]:
        ndim = min(self.d.choice((1, 2, 0, 3, 2, 1, 4)), ndim_max)
        shape = [self.d.choice(DIMS) for _ in range(ndim)]
        while _volume(shape) > MAX_ELEMENTS // 4:
            shape[shape.index(max(shape))] = 3
        return tuple(shape)

    def argument(self, shape, dtype: str | None = None, values: str | None = None,
                 layout: bool = True) -> _Value:
        dtype = dtype or self.d.choice(ARGUMENT_DTYPES)
        if dtype not in ARGUMENT_DTYPES:  # uint32 (argmax), int64: arguments are int32
            dtype = "int32"
        if values is None:
            if dtype in FLOATS:
                # no wide float16 (1e4, its square past 65504): a generated kernel computes half
                # types in float32 and rounds at casts and stores only (docs/codegen.md), where
                # MLX rounds every op, so a square or product that overflows in MLX does not in
                # a kernel (mx.std of float16 1e4s: inf in MLX, finite here)
                wide = "normal" if dtype == "float16" else "wide"
                values = self.d.choice(("normal", "special", "normal", "positive", "special", wide,
                                        "constant:0.25", "constant:-3.0", "constant:0.0"))
            else:
                values = "ints" if dtype == "int32" else "bools"
        arrangement = self.layout(tuple(shape)) if layout else ()
        name = f"a{len(self.arguments)}"
        self.arguments.append(Argument(name, tuple(shape), dtype, values, arrangement))
        kind = values.partition(":")[0]
        value = _Value(name, placeholder(shape, dtype), exact=BITS,
                       bounded=kind not in ("special", "wide"), precision=coarsest([dtype]))
        self.values.append(value)
        return value

    def layout(self, shape: tuple[int, ...]) -> tuple:
        if not shape:
            return ()
        kind = self.d.choice(("contiguous", "contiguous", "transposed", "strided", "reversed",
                              "offset", "broadcast", "contiguous"))
        if kind == "transposed" and len(shape) > 1:
            perm = list(range(len(shape)))
            self.d_shuffle(perm)
            return ("transposed", tuple(perm)) if perm != sorted(perm) else ()
        axis = self.d.integer(0, len(shape) - 1)
        if kind in ("strided", "reversed", "offset"):
            return (kind, axis)
        if kind == "broadcast" and shape[axis] > 1:
            return ("broadcast", shape[:axis] + (1,) + shape[axis + 1:])
        return ()

    def d_shuffle(self, items: list) -> None:
        for i in range(len(items) - 1, 0, -1):
            j = self.d.integer(0, i)
            items[i], items[j] = items[j], items[i]

    def partner_shape(self, shape: tuple[int, ...]) -> tuple[int, ...]:
        """A shape that broadcasts against ``shape`` to ``shape``, or (rarely) widens it."""
        lead = self.d.integer(0, len(shape)) if self.d.chance(50) else 0
        out = tuple(1 if self.d.chance(20) else n for n in shape[lead:])
        if self.d.chance(10) and len(shape) < MAX_NDIM and math.prod(shape) * 2 <= MAX_ELEMENTS:
            out = (2,) + out  # the result gains a leading axis
        return out

    # -- reading values --
    def pick(self, accept: Callable[[_Value], bool] = lambda v: True) -> _Value | None:
        """An earlier value; shrinks to the latest (programs are chains and DAGs, not stars)."""
        candidates = [v for v in self.values if accept(v)]
        if not candidates:
            return None
        return candidates[len(candidates) - 1 - self.d.integer(0, len(candidates) - 1)]

    def partner(self, x: _Value) -> _Value:
        """A second operand: an earlier value that broadcasts with ``x``, or a fresh argument
        (mostly of ``x``'s dtype, sometimes another: type promotion)."""
        if self.d.chance(40):
            found = self.pick(lambda v: v is not x and _broadcastable(v.shape, x.shape))
            if found is not None:
                return found
        dtype = x.dtype if self.d.chance(80) else self.d.choice(ARGUMENT_DTYPES)
        return self.argument(self.partner_shape(x.shape), dtype)

    def scalar_text(self, options: Sequence, static: bool = True) -> tuple[str, list]:
        """A Python constant, or a static argument (whose type changes on the second call)."""
        if static and self.d.chance(25):
            pairs = ((2, 2.0), (2.0, 2), (1, True), (True, 1), (3, 3.0), (-1, -1.0), (2, 3),
                     (0.5, 0.25), (1.0, True), (0, 0.0), (0, False))
            first, second = self.d.choice(pairs)
            name = f"s{len(self.statics)}"
            self.statics.append(Static(name, (first, second), declared=self.d.chance(50)))
            self.scalars[name] = first
            return name, [first, second]
        c = self.d.choice(options)
        return repr(c), [c]


def exactness(flags: str, *inputs) -> int:
    """How exact an op's result is, from its flags (E, Z) and its inputs' exactness."""
    if "E" not in flags:
        return CLOSE
    level = min([v.exact for v in inputs], default=BITS)
    return min(level, VALUE) if "Z" in flags else level


def _volume(shape) -> int:
    """The elements ``shape`` would hold with its size-0 axes at 1: an empty array of shape
    (1000, 4097, 4097, 0) still costs XLA's compiler minutes."""
    return math.prod(max(d, 1) for d in shape)


def _broadcastable(a: tuple[int, ...], b: tuple[int, ...]) -> bool:
    return all(x == y or x == 1 or y == 1 for x, y in zip(reversed(a), reversed(b)))


def _axis_text(b: _Builder, x: _Value, allow_none: bool = True) -> tuple[str, tuple[int, ...]]:
    """A reduction's axis argument (all axes, one (maybe negative), or several) and the axes it
    reduces, counted from 0."""
    n = len(x.shape)
    choice = b.d.integer(0, 3)
    if n == 0 or (choice == 0 and allow_none):
        return "", tuple(range(n))
    if choice <= 2 or n == 1:
        a = b.d.integer(0, n - 1)
        return f", axis={a - n if b.d.chance(40) else a}", (a,)
    axes = tuple(sorted({b.d.integer(0, n - 1) for _ in range(b.d.integer(2, n))}))
    return f", axis={axes}", axes


def _one_axis(b: _Builder, x: _Value) -> int:
    n = len(x.shape)
    a = b.d.integer(0, n - 1)
    return a - n if b.d.chance(30) else a


# ---- the op families: each returns a step reading earlier values, or None (not applicable) ---------

# template -> flags: E the result is exact where the inputs are (Z: but the sign of a zero result
# depends on the order of evaluation), B bounded where they are, D discontinuous (reads exact
# values only)
FLOAT_UNARY = {
    "mx.exp({x})": "", "mx.log({x})": "", "mx.log1p({x})": "", "mx.log2({x})": "",
    "mx.expm1({x})": "", "mx.sqrt({x})": "", "mx.rsqrt({x})": "", "mx.sin({x})": "B",
    "mx.cos({x})": "B", "mx.tanh({x})": "B", "mx.sigmoid({x})": "B", "mx.erf({x})": "B",
    "mx.arctan({x})": "B", "mx.reciprocal({x})": "", "mx.square({x})": "",
    # NaN past +-1: an inexact operand one rounding from 1 lands on either side
    "mx.arcsin({x})": "D", "mx.arcsin(mx.clip({x}, -0.99, 0.99))": "B",
    "mx.abs({x})": "EB", "-{x}": "EB", "mx.floor({x})": "DEB", "mx.ceil({x})": "DEB",
    "mx.round({x})": "DEB", "mx.sign({x})": "DEB", "mx.maximum({x}, 0.0)": "EB",
    "{x} * mx.sigmoid({x})": "", "mx.logaddexp({x}, 0.0)": "", "mx.isnan({x})": "EB",
    "mx.isinf({x})": "EB", "mx.clip({x}, -2.0, 2.0)": "EB",
    "mx.nan_to_num({x}, nan=0.0, posinf=1e4, neginf=-1e4)": "E",
    # the rewrite rules' patterns, over their whole domain (patterns/cleanups.py)
    "mx.exp(mx.log({x}))": "", "{x} * 1.0": "E", "{x} + 0.0": "E", "{x} - 0": "E",
    "{x} / 1": "E", "{x} ** 2": "", "{x} * {x}": "", "1.0 / mx.sqrt({x})": "",
    "{x}.astype(mx.float32).astype({dtype})": "EB",
}
INT_UNARY = {"mx.abs({x})": "EB", "-{x}": "EB", "mx.square({x})": "E", "mx.sign({x})": "EB",
              "mx.maximum({x}, 0)": "EB", "{x} * 1": "E", "{x} + 0": "E", "{x} ** 2": "E"}
BOOL_UNARY = {"mx.logical_not({x})": "EB", "~{x}": "EB", "{x} * 1": "EB", "{x} + 0.0": "EB"}


def _unary(b: _Builder) -> _Step | None:
    x = b.pick()
    table = {"float": FLOAT_UNARY, "int": INT_UNARY, "bool": BOOL_UNARY}[x.kind]
    template = b.d.choice(sorted(table))
    flags = table[template]
    if "D" in flags and not x.exact:
        return None
    text = template.format(x=x.name, dtype=f"mx.{_mx_dtype(x.dtype)}")
    return _Step(text, exact=exactness(flags, x), bounded=x.bounded and "B" in flags)


FLOAT_BINARY = {"{a} + {b}": "", "{a} - {b}": "", "{a} * {b}": "", "{a} / {b}": "",
                 "mx.maximum({a}, {b})": "EB", "mx.minimum({a}, {b})": "EB",
                 # a negative base's power jumps with the exponent's integrality and parity
                 "mx.power({a}, {b})": "D", "mx.power(mx.abs({a}), {b})": "",
                 "mx.logaddexp({a}, {b})": "",
                 "mx.arctan2({a}, {b})": "B", "{a} // {b}": "D", "{a} % {b}": "D",
                 "{a} / mx.sqrt({b})": ""}
INT_BINARY = {"{a} + {b}": "E", "{a} - {b}": "E", "{a} * {b}": "E", "mx.maximum({a}, {b})": "EB",
               "mx.minimum({a}, {b})": "EB", "{a} & {b}": "E", "{a} | {b}": "E", "{a} ^ {b}": "E",
               "{a} / {b}": ""}
BOOL_BINARY = {"mx.logical_and({a}, {b})": "EB", "mx.logical_or({a}, {b})": "EB",
                "{a} & {b}": "EB", "{a} | {b}": "EB", "{a} != {b}": "EB", "{a} + {b}": "EB",
                "{a} * {b}": "EB"}
COMPARISONS = ("{a} > {b}", "{a} >= {b}", "{a} < {b}", "{a} <= {b}", "{a} == {b}", "{a} != {b}")


def _binary(b: _Builder) -> _Step | None:
    x = b.pick()
    y = b.partner(x)
    a, c = (x, y) if b.d.chance(50) else (y, x)
    kinds = {a.kind, c.kind}
    if "float" in kinds:
        table = FLOAT_BINARY
    elif "int" in kinds:
        table = INT_BINARY
    else:
        table = BOOL_BINARY
    template = b.d.choice(sorted(table))
    flags = table[template]
    if "D" in flags and not min(a.exact, c.exact):
        return None
    return _Step(template.format(a=a.name, b=c.name), exact=exactness(flags, a, c),
                 bounded=a.bounded and c.bounded and "B" in flags)


def _integer_division(b: _Builder) -> _Step | None:
    """``//``, ``%`` and ``**`` of integers, by divisors that are never 0 (a C division by zero is
    undefined) and exponents in [0, 3]."""
    x = b.pick(lambda v: v.kind == "int")
    if x is None:
        return None
    op = b.d.choice(("//", "%", "**", ">>", "<<"))
    values = "nonzero" if op in ("//", "%") else "exponents"
    y = b.argument(b.partner_shape(x.shape), "int32", values)
    return _Step(f"{x.name} {op} {y.name}", exact=BITS)


def _comparison(b: _Builder) -> _Step | None:
    x = b.pick(lambda v: v.exact)
    if x is None:
        return None
    template = b.d.choice(COMPARISONS)
    if b.d.chance(40):
        c, _ = b.scalar_text((0, 0.0, 1, 0.5, -1.0))
        return _Step(template.format(a=x.name, b=c), exact=BITS, bounded=True)
    y = b.partner(x)
    if not y.exact:
        return None
    return _Step(template.format(a=x.name, b=y.name), exact=BITS, bounded=True)


def _scalar(b: _Builder) -> _Step | None:
    """An array and a Python scalar: the scalar's type decides the result's dtype."""
    x = b.pick()
    c, values = b.scalar_text((2, 2.0, 0.5, -1, -1.5, 3, 1e-5, True, 0.0))
    zero = any(v == 0 for v in values)
    templates = ["{x} * {c}", "{x} + {c}", "{c} - {x}", "mx.maximum({x}, {c})", "{x} ** {c}",
                 "mx.minimum({c}, {x})"]
    if not zero:
        templates += ["{x} / {c}"] + (["{x} // {c}", "{x} % {c}"] if x.exact else [])
    template = b.d.choice(templates)
    kept = template.startswith("mx.m") or (x.kind != "float" and all(
        isinstance(v, (bool, int)) for v in values) and "/" not in template and "**" not in template)
    exact = x.exact if kept else CLOSE
    return _Step(template.format(x=x.name, c=c), exact=exact,
                 bounded=x.bounded and template.startswith("mx.m"))


def _where(b: _Builder) -> _Step | None:
    x = b.pick()
    condition = b.pick(lambda v: v.kind == "bool" and _broadcastable(v.shape, x.shape))
    if condition is None or b.d.chance(30):
        source = b.pick(lambda v: v.exact and _broadcastable(v.shape, x.shape))
        if source is None:
            return None
        cond = f"{source.name} > 0"
    else:
        cond = condition.name
    if b.d.chance(30):
        other, _ = b.scalar_text((0.0, 0, -1.0, float("inf")))
        other_exact, other_bounded = BITS, True
        if other == "inf":
            other, other_bounded = "float('inf')", False
    else:
        y = b.partner(x)
        other, other_exact, other_bounded = y.name, y.exact, y.bounded
    a, c = (x.name, other) if b.d.chance(50) else (other, x.name)
    return _Step(f"mx.where({cond}, {a}, {c})", exact=min(x.exact, other_exact),
                 bounded=x.bounded and other_bounded)


def _cast(b: _Builder) -> _Step | None:
    x = b.pick()
    to = b.d.choice(("float32", "float16", "bfloat16", "int32", "bool", "float32"))
    if x.kind == "float" and to in ("int32", "bool"):
        if not x.exact:
            return None  # truncation and != 0 are discontinuous
        if to == "int32" and not x.bounded:
            # MLX leaves NaN, inf and out-of-range float -> int casts undefined (C++ semantics)
            return _Step(f"mx.clip(mx.nan_to_num({x.name}, nan=0.0), -1e4, 1e4).astype(mx.int32)",
                         exact=BITS)
    return _Step(f"{x.name}.astype(mx.{_mx_dtype(to)})", exact=x.exact,
                 bounded=x.bounded or to == "bool")


REDUCTIONS = {  # name -> flags, per kind
    "float": {"sum": "", "mean": "", "max": "EZB", "min": "EZB", "prod": "", "logsumexp": "",
              "var": "", "std": "", "all": "DE", "any": "DE"},
    "int": {"sum": "E", "mean": "", "max": "EB", "min": "EB", "prod": "E", "all": "EB",
              "any": "EB", "var": ""},
    "bool": {"sum": "EB", "max": "EB", "min": "EB", "prod": "EB", "all": "EB", "any": "EB"},
}


def _reduce(b: _Builder) -> _Step | None:
    x = b.pick()
    table = REDUCTIONS[x.kind]
    name = b.d.choice(sorted(table))
    flags = table[name]
    if "D" in flags and not x.exact:
        return None
    axis, axes = _axis_text(b, x)
    kept = [s for k, s in enumerate(x.shape) if k not in axes]
    if any(x.shape[a] == 0 for a in axes) and 0 not in kept:
        # MLX 0.32.4's CPU reduction of a size-0 axis into a non-empty result now and then loops
        # forever (seen for mx.all(z.T, axis=1) with z = mx.zeros((0, 3)) evaluated before, and
        # for reductions of empty arrays made from NumPy): the "empty" corners keep to forms that
        # have not hung in a thousand runs (an evaluated (3, 0) over axis -1, a (0,) over axis 0)
        return None
    extra = ""
    if name in ("var", "std") and b.d.chance(40):
        extra = ", ddof=1"
    keep = ", keepdims=True" if b.d.chance(40) else ""
    text = f"mx.{name}({x.name}{axis}{keep}{extra})"
    return _Step(text, exact=exactness(flags, x), bounded=x.bounded and "B" in flags)


def _argreduce(b: _Builder) -> _Step | None:
    x = b.pick(lambda v: v.exact and v.kind != "bool")
    if x is None:
        return None
    name = b.d.choice(("argmax", "argmin"))
    axis = f", axis={_one_axis(b, x)}" if x.shape and b.d.chance(80) else ""
    keep = ", keepdims=True" if b.d.chance(40) else ""
    return _Step(f"mx.{name}({x.name}{axis}{keep})", exact=BITS)


def _softmax(b: _Builder) -> _Step | None:
    x = b.pick(lambda v: v.kind == "float" and len(v.shape) > 0)
    if x is None:
        return None
    a = _one_axis(b, x) if b.d.chance(50) else -1
    template = b.d.choice((
        "mx.softmax({x}, axis={a})", "{x} - mx.logsumexp({x}, axis={a}, keepdims=True)",
        "mx.softmax({x}, axis={a}, precise=True)",
        # the decomposed softmax the rewrite recognises, and its float32 round trip
        "mx.exp({x} - mx.max({x}, axis={a}, keepdims=True)) / mx.sum(mx.exp({x} - mx.max({x}, "
        "axis={a}, keepdims=True)), axis={a}, keepdims=True)",
        "mx.softmax({x}.astype(mx.float32), axis={a}).astype({dtype})",
    ))
    return _Step(template.format(x=x.name, a=a, dtype=f"mx.{x.dtype}"), exact=CLOSE)


def _movement(b: _Builder) -> _Step | None:
    x = b.pick()
    n, shape = len(x.shape), x.shape
    kind = b.d.choice(("transpose", "reshape", "slice", "expand", "squeeze", "broadcast",
                       "concatenate", "slice", "flatten", "swapaxes", "pad", "split", "stack",
                       "transpose_twice"))
    step = lambda text: _Step(text, exact=x.exact, bounded=x.bounded)  # noqa: E731
    if kind == "transpose" and n > 1:
        perm = list(range(n))
        b.d_shuffle(perm)
        return step(f"mx.transpose({x.name}, {tuple(perm)})" if b.d.chance(70) else f"{x.name}.T")
    if kind == "transpose_twice" and n > 1:
        p, q = list(range(n)), list(range(n))
        b.d_shuffle(p)
        b.d_shuffle(q)
        return step(f"mx.transpose(mx.transpose({x.name}, {tuple(p)}), {tuple(q)})")
    if kind == "swapaxes" and n > 1:
        return step(f"mx.swapaxes({x.name}, {_one_axis(b, x)}, {_one_axis(b, x)})")
    if kind == "reshape":
        size = math.prod(shape)
        options = [(size,), (1, size), shape + (1,)]
        options += [(f, size // f) for f in range(2, min(size, 64)) if size % f == 0][:4]
        if n > 1:
            options.append(shape[:-2] + (shape[-2] * shape[-1],))
        if size == 0:
            options += [(0, 3), (2, 0, 5)]
        new = list(b.d.choice(options))
        if size and b.d.chance(30):
            new[b.d.integer(0, len(new) - 1)] = -1
        return step(f"{x.name}.reshape({tuple(new)})")
    if kind == "flatten" and n > 0:
        lo = b.d.integer(0, n - 1)
        hi = b.d.integer(lo, n - 1)
        return step(f"mx.flatten({x.name}, {lo}, {hi})")
    if kind == "slice" and n > 0:
        return step(f"{x.name}[{_index(b, shape)}]")
    if kind == "expand" and n < MAX_NDIM:
        if b.d.chance(30):
            return step(f"{x.name}[None]" if b.d.chance(50) else f"{x.name}[..., None]")
        return step(f"mx.expand_dims({x.name}, {b.d.integer(-n - 1, n)})")
    if kind == "squeeze":
        ones = [a for a, d in enumerate(shape) if d == 1]
        if not ones:
            return None
        if b.d.chance(30):
            return step(f"mx.squeeze({x.name})")
        return step(f"mx.squeeze({x.name}, {b.d.choice(ones)})")
    if kind == "broadcast" and n < MAX_NDIM:
        new = tuple(b.d.choice((2, 3, 1)) if d == 1 else d for d in shape)
        if b.d.chance(50):
            new = (b.d.choice((2, 3, 1, 0)),) + new
        return step(f"mx.broadcast_to({x.name}, {new})")
    if kind in ("concatenate", "stack") and n > 0:
        a = b.d.integer(0, n - 1)
        other_shape = list(shape)
        if kind == "concatenate":
            other_shape[a] = b.d.choice((shape[a], 1, 0, 3))
        same = [v for v in b.values if v.shape == tuple(other_shape) and v is not x]
        y = b.d.choice(same) if same and b.d.chance(50) else b.argument(
            tuple(other_shape), x.dtype if b.d.chance(80) else None)
        return _Step(f"mx.{kind}([{x.name}, {y.name}], axis={a})", exact=min(x.exact, y.exact),
                     bounded=x.bounded and y.bounded)
    if kind == "pad" and n > 0:
        widths = [(b.d.integer(0, 2), b.d.integer(0, 2)) for _ in shape]
        # the pad value is cast to x's dtype: a negative float into an unsigned one is undefined
        floating = x.kind == "float"
        value, _ = b.scalar_text((0, 0.0, -1.5, 1) if floating else (0, 1, 3), static=floating)
        return step(f"mx.pad({x.name}, {widths}, constant_values={value})")
    if kind == "split" and n > 0:
        a = b.d.integer(0, n - 1)
        k = b.d.integer(0, shape[a])
        return step(f"mx.split({x.name}, [{k}], axis={a})[{b.d.integer(0, 1)}]")
    return None


def _index(b: _Builder, shape: tuple[int, ...]) -> str:
    """A basic index: ranges with negative starts, stops and steps, integers, None, Ellipsis."""
    parts = []
    for d in shape[: b.d.integer(1, len(shape))]:
        kind = b.d.choice(("range", "range", "reverse", "int", "all", "new", "step"))
        lo, hi = b.d.integer(-d - 1, d + 1), b.d.integer(-d - 1, d + 2)
        if kind == "range":
            parts.append(f"{lo}:{hi}")
        elif kind == "step":
            parts.append(f"{lo}:{hi}:{b.d.choice((2, 3, -2))}")
        elif kind == "reverse":
            parts.append(b.d.choice(("::-1", f"{hi}:{lo}:-1", f":{lo}:-1", f"{hi}::-1")))
        elif kind == "int" and d > 0:
            parts.append(str(b.d.integer(-d, d - 1)))
        elif kind == "new":
            parts.append("None")
        else:
            parts.append(":")
    if b.d.chance(20):
        parts = ["..."] + parts[1:]
    return ", ".join(parts)


def _matmul(b: _Builder) -> _Step | None:
    x = b.pick(lambda v: v.kind == "float" and len(v.shape) > 0)
    if x is None:
        return None
    k = x.shape[-1]
    n_out = b.d.choice((8, 1, 3, 0, 129, 16))
    form = b.d.choice(("right", "right", "vector", "left", "bias", "batched", "transposed"))
    if form == "left" and len(x.shape) >= 2:
        w = b.argument((b.d.choice((4, 1, 0)), x.shape[-2]), x.dtype)
        return _Step(f"{w.name} @ {x.name}", exact=CLOSE)
    if form == "vector":
        w = b.argument((k,), x.dtype)
        return _Step(f"{x.name} @ {w.name}", exact=CLOSE)
    if form == "batched" and len(x.shape) == 3:
        w = b.argument((b.d.choice((x.shape[0], 1)), k, n_out), x.dtype)
        return _Step(f"mx.matmul({x.name}, {w.name})", exact=CLOSE)
    if form == "transposed":  # nn.Linear's x @ W^T: a projection on NVIDIA chips at few rows
        w = b.argument((n_out, k), x.dtype)
        return _Step(f"{x.name} @ {w.name}.T", exact=CLOSE)
    w = b.argument((k, n_out), x.dtype)
    if form == "bias":
        bias = b.argument((n_out,), x.dtype)
        scale = b.d.choice(("", "2.0 * "))
        return _Step(f"{scale}({x.name} @ {w.name}) + {bias.name}", exact=CLOSE)
    return _Step(f"{x.name} @ {w.name}", exact=CLOSE)


def _scan(b: _Builder) -> _Step | None:
    x = b.pick(lambda v: len(v.shape) > 0)
    if x is None:
        return None
    # no logcumsumexp: MLX's exporter cannot serialise it, so a program holding one only meets
    # that refusal (the "log scans" corner)
    names = {"float": ("cumsum", "cumprod", "cummax", "cummin"),
             "int": ("cumsum", "cumprod", "cummax", "cummin"),
             "bool": ("cumsum", "cummax", "cummin")}[x.kind]
    name = b.d.choice(names)
    if name in ("cummax", "cummin") and x.dtype in ("float16", "bfloat16") and not x.bounded:
        return None  # MLX 0.32.4's half-precision running max / min turns NaN into 0
    axis = f"axis={_one_axis(b, x)}" if b.d.chance(85) else ""
    flags = [axis] if axis else []
    if b.d.chance(30):
        flags.append("reverse=True")
    if b.d.chance(30):
        flags.append("inclusive=False")
    if x.kind != "float":
        exact = x.exact
    else:  # a running max's zero sign depends on the scan's order, as a max reduction's does
        exact = exactness("EZ", x) if name in ("cummax", "cummin") else CLOSE
    return _Step(f"mx.{name}({x.name}{', ' if flags else ''}{', '.join(flags)})", exact=exact,
                 bounded=x.bounded and name in ("cummax", "cummin"))


def _gather(b: _Builder) -> _Step | None:
    x = b.pick(lambda v: len(v.shape) > 0 and math.prod(v.shape) > 0)
    if x is None:
        return None
    a = b.d.integer(0, len(x.shape) - 1)
    n = x.shape[a]
    form = b.d.choice(("take", "along", "computed", "index", "take_flat"))
    step = lambda text: _Step(text, exact=x.exact, bounded=x.bounded)  # noqa: E731
    if form == "take":
        idx = b.argument(b.d.choice(((3,), (2, 2), (), (1,), (0,))), "int32", f"indices:{n}",
                         layout=False)
        return step(f"mx.take({x.name}, {idx.name}, axis={a})")
    if form == "take_flat":
        idx = b.argument((b.d.choice((4, 1)),), "int32", f"indices:{math.prod(x.shape)}", layout=False)
        return step(f"mx.take({x.name}, {idx.name})")
    if form == "index":
        idx = b.argument((b.d.choice((3, 1, 0)),), "int32", f"indices:{x.shape[0]}", layout=False)
        return step(f"{x.name}[{idx.name}]")
    if form == "along":
        shape = tuple(b.d.choice((1, 2, 3)) if i == a else (1 if b.d.chance(20) else d)
                      for i, d in enumerate(x.shape))
        idx = b.argument(shape, "int32", f"indices:{n}", layout=False)
        return step(f"mx.take_along_axis({x.name}, {idx.name}, axis={a})")
    # indices computed in the program: the row's argmax, as a loss picks the predicted class
    if not x.exact or x.kind == "bool":
        return None
    return step(f"mx.take_along_axis({x.name}, mx.argmax({x.name}, axis={a}, keepdims=True), "
                f"axis={a})")


def _norm(b: _Builder) -> _Step | None:
    x = b.pick(lambda v: v.kind == "float" and len(v.shape) > 0)
    if x is None:
        return None
    d = x.shape[-1]
    eps = b.d.choice(("1e-5", "0.0", "1e-2", "1e-6"))

    def weight() -> str:
        return b.argument((d,), x.dtype, b.d.choice(("normal", "positive"))).name

    form = b.d.choice(("rms", "layer", "rms_decomposed", "layer_decomposed"))
    if form == "layer_decomposed" and x.precision != "float32":
        # Kernels compute half types in float32, MLX rounds every op (docs/codegen.md): over a
        # constant half row the centred value is MLX's 0 against a mean's rounding error here,
        # which rsqrt(var + eps) scales by up to 1 / sqrt(eps) (NaN against +-1 at eps 0). The
        # fast op takes float32 statistics in both; the eps-0 corner keeps to float32 rows too.
        form = "layer"
    if 0 in x.shape and form in ("rms", "layer"):
        # MLX 0.32.4's CPU fast norms never return on an empty non-contiguous input (a transposed
        # (0, 2, 7) array: program 72818); their decompositions do
        form += "_decomposed"
    if form == "rms":
        w = weight() if b.d.chance(80) else "None"
        return _Step(f"mx.fast.rms_norm({x.name}, {w}, {eps})", exact=CLOSE)
    if form == "layer":
        w = weight() if b.d.chance(70) else "None"
        bias = weight() if b.d.chance(60) else "None"
        return _Step(f"mx.fast.layer_norm({x.name}, {w}, {bias}, {eps})", exact=CLOSE)
    # the decompositions patterns/norms.py rewrites into the fast ops (and a weight after them)
    scale = f" * {weight()}" if b.d.chance(50) else ""
    if form == "rms_decomposed":
        return _Step(f"{x.name} * mx.rsqrt(mx.mean(mx.square({x.name}), axis=-1, keepdims=True) "
                     f"+ {eps}){scale}", exact=CLOSE)
    return _Step(f"({x.name} - mx.mean({x.name}, axis=-1, keepdims=True)) * mx.rsqrt(mx.var("
                 f"{x.name}, axis=-1, keepdims=True) + {eps}){scale}", exact=CLOSE)


def _attention(b: _Builder) -> _Step | None:
    """softmax(scale * q @ k^T [+ mask]) @ v, the pattern patterns/attention.py rewrites."""
    q = b.pick(lambda v: v.kind == "float" and len(v.shape) in (3, 4))
    if q is None:
        return None
    *batch, length, dim = q.shape
    keys = b.d.choice((length, 1, 5))
    k = b.argument((*batch, keys, dim), q.dtype, "normal")
    v = b.argument((*batch, keys, b.d.choice((dim, 4))), q.dtype, "normal")
    mask = f" + {b.argument((length, keys), q.dtype, 'normal').name}" if b.d.chance(40) else ""
    return _Step(f"mx.softmax(({q.name} * 0.125) @ {k.name}.swapaxes(-1, -2){mask}, axis=-1) "
                 f"@ {v.name}", exact=CLOSE)


_FAMILIES = ((_unary, 6), (_binary, 6), (_scalar, 3), (_comparison, 2), (_where, 2), (_cast, 3),
             (_reduce, 5), (_argreduce, 1), (_softmax, 2), (_movement, 6), (_matmul, 2),
             (_scan, 2), (_gather, 2), (_norm, 2), (_integer_division, 1), (_attention, 1))
_WEIGHTED = tuple(f for f, w in _FAMILIES for _ in range(w))


def draw_program(d: Draw, max_steps: int = 10) -> Program:
    """Draw one program of 1 to ``max_steps`` steps; see the module docstring."""
    b = _Builder(d)
    for _ in range(d.choice((1, 1, 2, 3))):
        b.argument(b.shape())
    lines: list[str] = []
    facts: list[tuple[bool, bool]] = []
    produced: list[_Value] = []
    target = d.integer(1, max_steps)
    attempts = 0
    while len(lines) < target and attempts < 6 * target:
        attempts += 1
        saved = (len(b.values), len(b.arguments), len(b.statics))
        step = d.choice(_WEIGHTED)(b)
        if step is None:
            del b.values[saved[0]:], b.arguments[saved[1]:], b.statics[saved[2]:]
            continue
        name = f"v{len(lines)}"
        env = {v.name: v.array for v in b.values} | b.scalars
        try:
            out = eval(step.expression, {"mx": mx, "np": np}, env)
        except Exception:  # MLX rejects it: keep it, rarely, as the step where the program raises
            if d.chance(8):
                lines.append(f"{name} = {step.expression}")
                facts.append((CLOSE, False))
                produced.append(_Value(name, mx.zeros(()), CLOSE, False))
                break
            del b.values[saved[0]:], b.arguments[saved[1]:], b.statics[saved[2]:]
            continue
        if _volume(out.shape) > MAX_ELEMENTS or out.ndim > MAX_NDIM + 1:
            del b.values[saved[0]:], b.arguments[saved[1]:], b.statics[saved[2]:]
            continue
        names = _names(step.expression)
        value = _Value(name, out, step.exact, step.bounded, coarsest(
            [_dtype_name(out.dtype)] + [v.precision for v in b.values if v.name in names]))
        lines.append(f"{name} = {step.expression}")
        facts.append((step.exact, step.bounded))
        b.values.append(value)
        produced.append(value)
    read = {v.name for v in b.values if any(_reads(line, v.name) for line in lines)}
    leaves = [v for v in produced if v.name not in read] or produced or b.values[:1]
    outputs = leaves[-d.integer(1, 3):]
    if d.chance(5):
        outputs = outputs + outputs[-1:]  # one array returned twice
    return Program(tuple(b.arguments), tuple(b.statics), tuple(lines),
                   tuple(v.name for v in outputs), tuple(v.exact for v in outputs),
                   seed=d.integer(0, 2**31 - 1), facts=tuple(facts),
                   precision=tuple(v.precision for v in outputs))


def _reads(line: str, name: str) -> bool:
    return re.search(rf"\b{name}\b", line.split("=", 1)[1]) is not None


@st.composite
def fuzz_programs(draw, max_steps: int = 10) -> Program:
    """Hypothesis strategy: random programs (`draw_program`), shrinking to short, simple ones."""
    return draw_program(HypothesisDraw(draw), max_steps)


def drop_unused(program: Program) -> Program:
    """The program without the steps, arguments and statics its outputs do not need."""
    needed = set(program.outputs)
    kept = []
    for line, fact in reversed(list(zip(program.lines, program.facts))):
        name, expression = line.split(" = ", 1)
        if name in needed:
            kept.append((line, fact))
            needed |= _names(expression)
    kept.reverse()
    return replace(program, lines=tuple(line for line, _ in kept),
                   facts=tuple(fact for _, fact in kept),
                   arguments=tuple(a for a in program.arguments if a.name in needed),
                   statics=tuple(s for s in program.statics if s.name in needed))


def _names(expression: str) -> set[str]:
    return set(re.findall(r"\b[avs]\d+\b", expression))
