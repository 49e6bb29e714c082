"""Run one program through every path and compare each with plain MLX, the reference.

Paths: `mlxtriton.optimize` for each chip (on a CPU host fused regions run as MLX ops), the same
with ``MLXTRITON_INTERPRET=1`` (the generated kernels run in the NumPy interpreter), ``@kernel``
interpreted (`SingleKernelError` is an allowed outcome), and the JAX oracle
(``evaluate(trace(f)(*args), *args, backend="jax")``). Each program is called twice, with new
values (and each static scalar's second value) on the second call, through one `Compiled`.

Gradient paths compare plain MLX's gradient of a weighted sum of the program's float outputs
with respect to its float arguments (`GRADIENT`) with the same gradient taken inside an
optimized function (``optimize(gradient(f))``: the traced backward pass, fused) and of an optimized
function (``gradient(optimize(f))``: MLX differentiating the fused regions through their
custom VJPs), as MLX ops and with the kernels interpreted. Programs computed through half
precision are left out of them: a gradient compounds the roundings the forward tolerance allows.

Where plain MLX raises, every path must raise; where it returns, every path must return the same
structure, shapes and dtypes, NaN where MLX has NaN, the same infinities, and values within the
dtype's tolerance (bit for bit, or equal up to the sign of zeros, for outputs the program marks
exact: `programs.BITS`, `programs.VALUE`).
"""

from __future__ import annotations

import contextlib
import os
import re
import traceback
import warnings
from dataclasses import dataclass, replace
from typing import Callable, Iterator

import mlx.core as mx
import numpy as np

import mlxtriton
from tests.fuzz.programs import BITS, CLOSE, Argument, Program, coarsest, drop_unused, placeholder

CHIPS = ("auto", "m3", "h200")
# Relative tolerance per dtype, applied against max(|MLX|, the output's largest finite |MLX|, 1),
# for the coarsest float type the output was computed through (`Program.precision`): float32
# results differ by evaluation order (reductions, matmul over rows of 4097) and by a few ulps of
# exp / log / erf between MLX, NumPy and XLA; half types by one or two ulps of the type (float16
# 2^-10, bfloat16 2^-7) after one rounding, more after a chain of half-precision ops.
RTOL = {"float32": 1e-4, "float16": 4e-3, "bfloat16": 3e-2}


@dataclass(frozen=True)
class Path:
    """One way to run a program. ``mlx_compile``: MLX's own ``mx.compile`` stays on, as for a user;
    off, the `Compiled` runs its graph uncompiled (what ``mx.disable_compile()`` gives). On a CPU
    host MLX's compile writes and builds C++ for every new fused elementwise chain (a second or
    more each, cached in /tmp/mlx), which would dominate a fuzzing run; the paths with it on are
    `COMPILED_PATHS`. ``bare``: each call runs the bare replay (what ``mx.compile`` traces and
    replays on a GPU: kernels launched bare, the views around them folded, `runtime.views`)
    instead of the differentiable body the interpreter otherwise runs."""

    api: str  # "optimize", "kernel" or "oracle"
    chip: str | None = None
    interpret: bool = False
    mlx_compile: bool = False
    bare: bool = False
    gradient: str = ""  # "inside": optimize(gradient(f)); "outside": gradient(optimize(f))

    def __str__(self) -> str:
        if self.api == "oracle":
            return "oracle"
        made = f"{self.api}(chip={self.chip!r})"
        made = {"inside": f"{made} of the gradient", "outside": f"the gradient of {made}"}.get(
            self.gradient, made)
        return (f"{made}{' interpreted' if self.interpret else ''}"
                f"{' bare' if self.bare else ''}{' under mx.compile' if self.mlx_compile else ''}")

    @property
    def family(self) -> str:
        """The path without its chip: what findings are grouped by."""
        return ((f"gradient {self.gradient} " if self.gradient else "") + self.api
                + (" interpreted" if self.interpret else "") + (" bare" if self.bare else "")
                + (" under mx.compile" if self.mlx_compile else ""))


GRADIENT_PATHS = tuple(Path("optimize", "h200", interpret, gradient=where)
                       for where in ("inside", "outside") for interpret in (False, True))
PATHS = (*(Path("optimize", c) for c in CHIPS), *(Path("optimize", c, True) for c in CHIPS),
         Path("optimize", "h200", True, bare=True),
         Path("kernel", "m3", True), Path("kernel", "h200", True), Path("oracle"),
         *GRADIENT_PATHS)

# The gradient the gradient paths take, as a reproduction pastes it: of a weighted sum of the
# float outputs (fixed weights, so that no output's gradient is a plain sum), with respect to the
# float arguments ``argnums``.
GRADIENT = '''def gradient(fn, argnums):
    def loss(*args):
        outs, total = fn(*args), mx.array(0.0)
        for o in (outs if isinstance(outs, (tuple, list)) else (outs,)):
            if mx.issubdtype(o.dtype, mx.floating):
                weights = mx.cos(mx.arange(o.size, dtype=mx.float32)).reshape(o.shape)
                total = total + mx.sum(o.astype(mx.float32) * weights)
        return total

    return mx.grad(loss, argnums=argnums)
'''
_namespace: dict = {"mx": mx}
exec(GRADIENT, _namespace)
gradient = _namespace["gradient"]


def float_arguments(program: Program) -> tuple[int, ...]:
    """The positions a gradient path differentiates: the float arguments, where the program was
    computed in float32 throughout (else none)."""
    if coarsest(program.precision or ("float32",)) != "float32":
        return ()
    return tuple(i for i, a in enumerate(program.arguments) if a.dtype == "float32")
COMPILED_PATHS = (Path("optimize", "auto", mlx_compile=True), Path("optimize", "m3", mlx_compile=True))


@dataclass(frozen=True)
class Finding:
    """One disagreement: on which path and call, what kind (``raises``, ``dtype``, ``nan``, ...),
    the details, and the class it is grouped into."""

    path: Path
    call: int
    kind: str
    detail: str
    signature: str = ""  # what identifies the class within its kind (an exception's origin)

    @property
    def key(self) -> str:
        when = " (second call)" if self.call == 1 else ""
        return f"{self.path.family}: {self.kind}{when}{': ' + self.signature if self.signature else ''}"

    def __str__(self) -> str:
        return f"{self.path}, call {self.call}: {self.kind}: {self.detail}"


# ---- running ----------------------------------------------------------------------------------------

@dataclass
class _Output:
    dtype: str
    shape: tuple[int, ...]
    values: np.ndarray  # float64 for floats


def _host(a) -> _Output:
    if isinstance(a, mx.array):
        dtype = str(a.dtype).removeprefix("mlx.core.")
        values = np.array(a.astype(mx.float32) if a.dtype == mx.bfloat16 else a)
    else:  # the oracle's NumPy arrays
        dtype, values = str(np.asarray(a).dtype), np.asarray(a)
    if values.dtype.kind == "f" or dtype == "bfloat16":
        values = values.astype(np.float64)
    return _Output(dtype, tuple(values.shape), values)


@dataclass
class _Result:
    outputs: list[_Output] | None = None
    error: BaseException | None = None


def _capture(run: Callable[[], object]) -> _Result:
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            out = run()
            out = list(out) if isinstance(out, (tuple, list)) else [out]
            mx.eval([o for o in out if isinstance(o, mx.array)])
            return _Result([_host(o) for o in out])
    except Exception as err:  # noqa: BLE001 (every exception is an outcome to compare)
        return _Result(error=err)


@contextlib.contextmanager
def mlx_compiling(on: bool) -> Iterator[None]:
    if not on:
        mx.disable_compile()
    try:
        yield
    finally:
        mx.enable_compile()


@contextlib.contextmanager
def interpreting(on: bool) -> Iterator[None]:
    """``MLXTRITON_INTERPRET`` set (or unset) for the duration: a `Compiled` reads it when it is
    made and when it builds."""
    saved = os.environ.get("MLXTRITON_INTERPRET")
    if on:
        os.environ["MLXTRITON_INTERPRET"] = "1"
    else:
        os.environ.pop("MLXTRITON_INTERPRET", None)
    try:
        yield
    finally:
        if saved is None:
            os.environ.pop("MLXTRITON_INTERPRET", None)
        else:
            os.environ["MLXTRITON_INTERPRET"] = saved


@contextlib.contextmanager
def bare_replays(on: bool) -> Iterator[None]:
    """Executables built meanwhile run their bare body (`Path.bare`)."""
    if not on:
        yield
        return
    from mlxtriton.runtime import compiled as compiled_module

    original = compiled_module._Executable.__init__

    def init(self, *args, **kwargs):
        original(self, *args, **kwargs)
        self.run = self.bare_body

    compiled_module._Executable.__init__ = init
    try:
        yield
    finally:
        compiled_module._Executable.__init__ = original


def _run_path(path: Path, fn: Callable, program: Program, calls: list[tuple]) -> list[_Result]:
    nums = program.static_argnums
    if path.api == "oracle":
        def oracle(args):
            graph = mlxtriton.trace(fn, static_argnums=nums)(*args)
            return mlxtriton.evaluate(graph, *args, backend="jax")

        return [_capture(lambda a=args: oracle(a)) for args in calls]
    make = mlxtriton.optimize if path.api == "optimize" else mlxtriton.kernel
    argnums = float_arguments(program)
    with interpreting(path.interpret), mlx_compiling(path.mlx_compile), bare_replays(path.bare):
        try:
            if path.gradient == "inside":
                compiled = make(gradient(fn, argnums), chip=path.chip, static_argnums=nums)
            elif path.gradient == "outside":
                compiled = gradient(make(fn, chip=path.chip, static_argnums=nums), argnums)
            else:
                compiled = make(fn, chip=path.chip, static_argnums=nums)
        except Exception as err:  # noqa: BLE001
            return [_Result(error=err) for _ in calls]
        return [_capture(lambda a=args: compiled(*a)) for args in calls]


def reference(program: Program) -> tuple[Callable, list[tuple], list[_Result]]:
    fn = program.function()
    calls = [program.call_arguments(k) for k in (0, 1)]
    return fn, calls, [_capture(lambda a=args: fn(*a)) for args in calls]


PLAIN_MLX = "plain MLX"


def run(program: Program, paths=PATHS, entering: Callable[[str], None] = lambda where: None
        ) -> list[Finding]:
    """Every disagreement of ``program`` between plain MLX and ``paths``; ``entering`` is told
    each one's name before it runs (`PLAIN_MLX` first), so a hang can be placed."""
    entering(PLAIN_MLX)
    fn, calls, want = reference(program)
    argnums = float_arguments(program)
    wanted_gradient = None  # plain MLX's gradient, taken when a gradient path first needs it
    findings = []
    for path in paths:
        if path.gradient and not argnums:
            continue
        expected, compared = want, program
        if path.gradient:
            if wanted_gradient is None:
                entering(f"{PLAIN_MLX}, the gradient")
                grad = gradient(fn, argnums)
                wanted_gradient = [_capture(lambda a=args: grad(*a)) for args in calls]
            expected, compared = wanted_gradient, _as_gradient(program, len(argnums))
        entering(str(path))
        got = _run_path(path, fn, program, calls)
        for call, (w, g) in enumerate(zip(expected, got)):
            finding = compare(w, g, compared, path, call)
            if finding is not None:
                findings.append(finding)
                break  # the second call of a path that is already wrong adds nothing
    return findings


def _as_gradient(program: Program, n: int) -> Program:
    """``program`` as its gradient's outputs are compared: ``n`` float32 outputs, none exact."""
    return replace(program, exact=(CLOSE,) * n, precision=("float32",) * n)


# ---- comparing --------------------------------------------------------------------------------------

def _origin(err: BaseException) -> str:
    """Where an exception comes from: the innermost mlxtriton frame, else the innermost one."""
    frames = traceback.extract_tb(err.__traceback__)
    ours = [f for f in frames if "/mlxtriton/" in f.filename]
    frame = (ours or frames or [None])[-1]
    if frame is None:
        return ""
    return f"{frame.filename.rsplit('/mlxtriton/', 1)[-1]}:{frame.name}"


def _message(err: BaseException) -> str:
    text = str(err).strip().splitlines()[0] if str(err).strip() else ""
    return f"{type(err).__name__}: {text[:200]}"


def _signature(err: BaseException) -> str:
    """An exception's class for grouping: type, message without numbers or shapes, origin."""
    text = re.sub(r"\d+", "N", str(err).strip().splitlines()[0] if str(err).strip() else "")
    text = re.sub(r"\([N, ]*\)", "(...)", text)[:90]
    return f"{type(err).__name__}: {text} [{_origin(err)}]"


_UNEXPORTABLE = re.compile(r"Unable to get state for primitive \w+")
# MLX refuses to differentiate a gather through indices an argmax of the input computed, which a
# region's VJP differentiates through the gathered values (runtime/autodiff.py
# stop_index_gradients): returning there is the documented difference.
_INDICES = re.compile(r"Cannot calculate VJP with respect to indices")


def compare(want: _Result, got: _Result, program: Program, path: Path, call: int
            ) -> Finding | None:
    """The first disagreement of ``got`` with ``want`` (plain MLX), or None."""
    exact, precision = program.exact, program.precision
    def finding(kind, detail, signature=""):
        return Finding(path, call, kind, detail, signature)

    if want.error is not None:
        if got.error is None and not (path.gradient and _INDICES.search(str(want.error))):
            return finding("returns where MLX raises", _message(want.error))
        return None
    if got.error is not None:
        if path.api == "kernel" and isinstance(got.error, mlxtriton.SingleKernelError):
            return None
        if _UNEXPORTABLE.search(str(got.error)):
            # Tracing rests on MLX's exporter, which cannot serialise a few primitives
            # (mx.logcumsumexp's Scan among them; graph/primitives.py lists them): every path
            # refuses those with MLX's own error naming the primitive, a limit, not a wrong value
            return None
        return finding("raises", _message(got.error), _signature(got.error))
    if len(want.outputs) != len(got.outputs):
        return finding("outputs", f"{len(want.outputs)} outputs, got {len(got.outputs)}")
    for i, (w, g) in enumerate(zip(want.outputs, got.outputs)):
        problem = _compare_output(w, g, exact[i], precision[i])
        if problem is not None:
            kind, detail = problem
            return finding(kind, f"output {i}: {detail}", f"{w.dtype}" if kind == "value" else "")
    return None


def _compare_output(w: _Output, g: _Output, exact: int, precision: str) -> tuple[str, str] | None:
    if w.shape != g.shape:
        return "shape", f"MLX {w.shape}, got {g.shape}"
    if w.dtype != g.dtype:
        return "dtype", f"MLX {w.dtype}, got {g.dtype}"
    a, b = w.values.reshape(-1), g.values.reshape(-1)  # 1-d: a 0-d array's masks are scalars
    if a.size == 0:
        return None
    if a.dtype.kind != "f":
        bad = a != b
        return ("value", _example(a, b, bad, w.shape)) if bad.any() else None
    nan_a, nan_b = np.isnan(a), np.isnan(b)
    if (nan_a != nan_b).any():
        return "nan", _example(a, b, nan_a != nan_b, w.shape)
    inf = (np.isinf(a) | np.isinf(b)) & ~nan_a
    if (inf & (a != b)).any():
        return "inf", _example(a, b, inf & (a != b), w.shape)
    finite = ~nan_a & ~np.isinf(a)
    if exact:
        bad = finite & (a != b)
        if exact == BITS:
            bad |= finite & (np.signbit(a) != np.signbit(b))
        if bad.any():
            kind = "signed zero" if (a[bad] == b[bad]).all() else "exact value"
            return kind, _example(a, b, bad, w.shape)
        return None
    scale = max(1.0, float(np.abs(a[finite]).max(initial=0.0)))
    tolerance = RTOL[coarsest([w.dtype, precision])] * (np.abs(a[finite]) + scale)
    bad = np.zeros_like(finite)
    bad[finite] = np.abs(a[finite] - b[finite]) > tolerance
    return ("value", _example(a, b, bad, w.shape)) if bad.any() else None


def _example(a: np.ndarray, b: np.ndarray, bad: np.ndarray, shape: tuple[int, ...]) -> str:
    i = int(np.argmax(bad))
    where = tuple(int(k) for k in np.unravel_index(i, shape)) if shape else ()
    return (f"{int(bad.sum())} of {a.size} elements differ, e.g. at {where}: MLX {a[i].item()!r}, "
            f"got {b[i].item()!r}")


# ---- reduction and reproduction ---------------------------------------------------------------------

def reduce(program: Program, finding: Finding, budget: int = 40) -> Program:
    """A smaller program with the same class of finding on the same path: fewer outputs, steps
    replaced by arguments, contiguous arguments, plainer values. Greedy, at most ``budget`` runs."""
    runs = 0

    def still(candidate: Program) -> bool:
        nonlocal runs
        runs += 1
        try:
            return any(f.key == finding.key for f in run(candidate, (finding.path,)))
        except Exception:  # noqa: BLE001 (a candidate whose arguments cannot be made)
            return False

    current = drop_unused(program)
    changed = True
    while changed and runs < budget:
        changed = False
        for candidate in _smaller(current):
            if runs >= budget:
                break
            if still(candidate):
                current, changed = candidate, True
                break
    return current


def _smaller(p: Program) -> Iterator[Program]:
    if len(p.outputs) > 1:
        for i, name in enumerate(p.outputs):
            yield drop_unused(replace(p, outputs=(name,), exact=(p.exact[i],),
                                      precision=(p.precision[i],)))
    # a step's value passed in as an argument instead (all steps before it go)
    shapes = _shapes(p)
    for k, line in enumerate(p.lines):
        name = line.split(" = ", 1)[0]
        if name not in shapes:
            continue
        shape, dtype = shapes[name]
        exact, bounded = p.facts[k] if k < len(p.facts) else (False, False)
        kinds = ("normal",) if bounded or dtype not in ("float32", "float16", "bfloat16") else (
            "normal", "special")
        for values in kinds:
            if dtype == "int32" or dtype.startswith("uint") or dtype.startswith("int"):
                values, dtype = "ints", "int32"
            elif dtype == "bool":
                values = "bools"
            argument = Argument(name, shape, dtype, values)
            lines = tuple(p.lines[:k] + p.lines[k + 1:])
            yield drop_unused(replace(p, arguments=p.arguments + (argument,), lines=lines,
                                      facts=p.facts[:k] + p.facts[k + 1:]))
    for i, a in enumerate(p.arguments):
        if a.layout:
            yield replace(p, arguments=p.arguments[:i] + (replace(a, layout=()),) + p.arguments[i + 1:])
        if a.values.partition(":")[0] in ("special", "wide", "positive", "constant"):
            yield replace(p, arguments=p.arguments[:i] + (replace(a, values="normal"),)
                          + p.arguments[i + 1:])


def _shapes(p: Program) -> dict[str, tuple[tuple[int, ...], str]]:
    env = {a.name: placeholder(a.shape, a.dtype) for a in p.arguments}
    env |= {s.name: s.values[0] for s in p.statics}
    out = {}
    for line in p.lines:
        name, expression = line.split(" = ", 1)
        try:
            env[name] = eval(expression, {"mx": mx, "np": np}, env)
        except Exception:  # noqa: BLE001
            break
        out[name] = (tuple(env[name].shape), str(env[name].dtype).removeprefix("mlx.core."))
    return out


def reproduction(program: Program, finding: Finding) -> str:
    """A standalone script that shows ``finding``."""
    path = finding.path
    head = ["import mlx.core as mx", "import numpy as np", "import mlxtriton", ""]
    if path.interpret:
        head = ["import os", 'os.environ["MLXTRITON_INTERPRET"] = "1"', *head]
    if path.api != "oracle" and not path.mlx_compile:
        head.insert(-1, "mx.disable_compile()  # as the fuzzer ran it (differential.Path)")
    if path.bare:
        head += ["from tests.fuzz.differential import bare_replays",
                 "bare_replays(True).__enter__()  # each call runs the bare replay (Path.bare)", ""]
    nums = program.static_argnums
    static = f", static_argnums={nums}" if nums else ""
    statics = [tuple(s.values[k] for s in program.statics) for k in (0, 1)]
    tail = []
    made = f"mlxtriton.{path.api}({{}}, chip={path.chip!r}{static})"
    reference_name = "f"
    if path.gradient:
        argnums = float_arguments(program)
        tail.append(f"grad_f = gradient(f, {argnums})")
        reference_name = "grad_f"
    if path.api == "oracle":
        tail.append("g = lambda *a: mlxtriton.evaluate(mlxtriton.trace(f"
                    f"{static})(*a), *a, backend='jax')")
    elif path.gradient == "inside":
        tail.append(f"g = {made.format('grad_f')}")
    elif path.gradient == "outside":
        tail.append(f"g = gradient({made.format('f')}, {argnums})")
    else:
        tail.append(f"g = {made.format('f')}")
    calls = (0, 1) if finding.call == 1 or program.statics else (0,)
    tail.append(f"for call in {calls}:")
    tail.append(f"    args = (*arguments({program.seed} + call), *{statics}[call])")
    tail.append(f"    print('MLX:', {reference_name}(*args))")
    tail.append("    print('got:', g(*args))")
    source = program.source() + ("\n\n" + GRADIENT if path.gradient else "")
    return "\n".join(head) + "\n" + source + "\n\n" + "\n".join(tail) + "\n"
