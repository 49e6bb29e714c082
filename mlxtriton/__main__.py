"""Public API layer: the command line, ``python -m mlxtriton <command>`` (also the ``mlxtriton`` script).

One function per command, registered with `command`; each imports what it needs when it runs, so
``chips`` starts without loading the tracer or code generator. May import any mlxtriton layer.
"""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Callable, Sequence

# A command's function gets its own sub-parser to add arguments to, and returns what runs it.
# Arguments the sub-parser does not know are an error, unless it sets ``passes_through``: then they
# reach the command as ``args.extra``.
Runner = Callable[[argparse.Namespace], int]
Configure = Callable[[argparse.ArgumentParser], Runner]
_COMMANDS: dict[str, tuple[str, Configure]] = {}


def command(name: str, help: str) -> Callable[[Configure], Configure]:
    """Register ``fn(parser) -> run(args) -> exit code`` as the subcommand ``name``."""
    def register(fn: Configure) -> Configure:
        if name in _COMMANDS:
            raise ValueError(f"command {name!r} registered twice")
        _COMMANDS[name] = (help, fn)
        return fn
    return register


@command("chips", "list the hardware profiles (all figures and sources for one chip with NAME)")
def _chips(parser: argparse.ArgumentParser) -> Runner:
    parser.add_argument("name", nargs="?", help="one chip, e.g. m3-max, 'M3 Max', h200")
    parser.add_argument("--json", action="store_true", help="print JSON instead of text")

    def run(args: argparse.Namespace) -> int:
        from mlxtriton import hw
        from mlxtriton.hw import report

        if args.name:
            try:
                chosen = hw.profile(args.name)
            except hw.UnknownChipError as e:
                print(f"mlxtriton chips: {e}", file=sys.stderr)
                return 2
            print(report.as_json([chosen]) if args.json else report.detail(chosen))
            return 0
        try:
            here = hw.resolve("auto")
        except hw.UnknownChipError as e:  # a bad MLXTRITON_CHIP should not hide the table
            print(f"mlxtriton chips: {e}", file=sys.stderr)
            here = None
        named = os.environ.get(hw.ENV_VAR, "").strip().lower() not in ("", "auto")
        how = f"from {hw.ENV_VAR}" if named else "detected"
        listed = hw.profiles()
        print(report.as_json(listed, here) if args.json else report.table(listed, here, how))
        return 0

    return run


@command("demo", "run the main demo: trace and optimize a Llama block, one kernel's source, a timing "
                 "against mx.compile on this machine")
def _demo(parser: argparse.ArgumentParser) -> Runner:
    parser.set_defaults(passes_through=True)  # the demo parses its own arguments

    def run(args: argparse.Namespace) -> int:
        from mlxtriton import demo

        result = demo.main(args.extra) if args.extra else demo.main()
        return int(result or 0)

    return run


def _load_callable(spec: str):
    """``MODULE:NAME`` or ``path/to/file.py:NAME`` -> the object; an ``mlx.nn.Module`` class is
    instantiated with no arguments (a block with defaults, like ``mlxtriton.examples:LlamaBlock``)."""
    import importlib
    import importlib.util
    import inspect

    import mlx.nn as nn

    module_name, sep, attr = spec.rpartition(":")
    if not sep or not module_name or not attr:
        raise ValueError(f"expected MODULE:FUNCTION (e.g. mymodel:block or path/to/file.py:f), not {spec!r}")
    if module_name.endswith(".py"):
        path = os.path.abspath(module_name)
        if not os.path.exists(path):
            raise ValueError(f"no file {module_name}")
        loaded = importlib.util.spec_from_file_location(os.path.splitext(os.path.basename(path))[0], path)
        module = importlib.util.module_from_spec(loaded)
        loaded.loader.exec_module(module)
    else:
        if os.getcwd() not in sys.path:  # `python -m mlxtriton explain mymodel:f` finds ./mymodel.py
            sys.path.insert(0, os.getcwd())
        module = importlib.import_module(module_name)
    obj = module
    for part in attr.split("."):
        if not hasattr(obj, part):
            raise ValueError(f"{module_name} has no attribute {attr!r}")
        obj = getattr(obj, part)
    if inspect.isclass(obj) and issubclass(obj, nn.Module):
        try:
            obj = obj()
        except TypeError as e:
            raise ValueError(f"{spec} is a module class that needs arguments ({e}); point at a "
                             f"function or an instance instead") from None
    if not callable(obj):
        raise ValueError(f"{spec} is not callable")
    return obj


def _parse_shape(text: str):
    """``[NAME=]D0,D1,...[:DTYPE]`` -> (name or None, shape, dtype name); ``x=:float32`` is a scalar."""
    import mlx.core as mx

    name, eq, rest = text.partition("=")
    if not eq:
        name, rest = None, text
    dims, _, dtype = rest.partition(":")
    dtype = dtype or "float32"
    if not isinstance(getattr(mx, dtype, None), mx.Dtype):
        raise ValueError(f"unknown dtype {dtype!r} in --shape {text!r} (float32, float16, bfloat16, int32, ...)")
    try:
        shape = tuple(int(d) for d in dims.replace("x", ",").split(",") if d.strip())
    except ValueError:
        raise ValueError(f"--shape {text!r}: dimensions are integers separated by commas, "
                         f"e.g. x=4,128:float32") from None
    if any(d < 0 for d in shape):
        raise ValueError(f"--shape {text!r}: negative dimension")
    return (name.strip() if name else None), shape, dtype


def _example_arguments(fn, shapes: list[str]):
    """Arrays for ``--shape`` options, bound to ``fn``'s parameters (named ones by name)."""
    import inspect

    import mlx.core as mx

    positional, named = [], {}
    for text in shapes:
        name, shape, dtype_name = _parse_shape(text)
        dtype = getattr(mx, dtype_name)
        # Tracing records shapes and dtypes only; the values are irrelevant (never all-zero floats,
        # so a function that branches on nothing still sees ordinary data).
        if mx.issubdtype(dtype, mx.floating):
            value = mx.random.normal(shape).astype(dtype)
        else:
            value = mx.zeros(shape, dtype=dtype)
        if name is None:
            if named:
                raise ValueError("unnamed --shape options must come before named ones")
            positional.append(value)
        else:
            named[name] = value
    try:
        signature = inspect.signature(fn)
    except (TypeError, ValueError):
        return tuple(positional), named
    try:
        bound = signature.bind(*positional, **named)
    except TypeError as e:
        params = ", ".join(signature.parameters) or "none"
        raise ValueError(f"the --shape options do not fit the function's parameters ({params}): {e}") from None
    return bound.args, bound.kwargs


def _function_and_shapes(parser: argparse.ArgumentParser) -> None:
    """The MODULE:FUNCTION argument and its --shape options (explain, tune)."""
    parser.add_argument("function", metavar="MODULE:FUNCTION",
                        help="e.g. mymodel:block, path/to/file.py:loss, mlxtriton.examples:LlamaBlock")
    parser.add_argument("--shape", action="append", default=[], metavar="[NAME=]D0,D1,..[:DTYPE]",
                        help="one example argument, in order or by parameter name (repeat): "
                             "x=4,128:float32; dtype float32 unless given; 'x=:float32' is a scalar")


@command("explain", "trace MODULE:FUNCTION with example shapes; show its graph, the fusion decisions "
                    "and the generated kernels")
def _explain(parser: argparse.ArgumentParser) -> Runner:
    _function_and_shapes(parser)
    parser.add_argument("--target", dest="dialect", choices=("metal", "cuda"),
                        help="kernel source to show (default: this GPU's, else metal)")
    parser.add_argument("--chip", default="auto",
                        help="chip the decisions follow: m1, m3, m4-max, h200, ... (default: detected)")
    parser.add_argument("--passes", default="optimize",
                        choices=("rewrite", "fuse", "layout", "cache", "optimize", "kernel"),
                        help="the combinator to apply (default optimize: patterns -> fuse -> layout -> cache)")
    parser.add_argument("--no-source", action="store_true", help="omit kernel sources")
    parser.add_argument("--kernel-ir", action="store_true", help="also print each kernel's IR")

    def run(args: argparse.Namespace) -> int:
        import mlxtriton
        from mlxtriton import hw
        from mlxtriton.codegen import RegionError, print_kernel

        try:
            fn = _load_callable(args.function)
            call_args, call_kwargs = _example_arguments(fn, args.shape)
            compiled = getattr(mlxtriton, args.passes)(fn, chip=args.chip)
        except (ValueError, ImportError, hw.UnknownChipError) as e:
            print(f"mlxtriton explain: {e}", file=sys.stderr)
            return 2
        def describe(a) -> str:
            return f"{str(a.dtype).rpartition('.')[2]}{list(a.shape)}"

        described = ", ".join([describe(a) for a in call_args]
                              + [f"{k}={describe(v)}" for k, v in call_kwargs.items()])
        print(f"== {args.function}({described}) with mlxtriton.{args.passes}, chip={args.chip}")
        try:
            staged = compiled.trace(*call_args, **call_kwargs)
            explanation, lowered = staged.explain(args.dialect), staged.lower(args.dialect)
        except (mlxtriton.TraceError, mlxtriton.SingleKernelError, RegionError) as e:
            print(f"mlxtriton explain: {type(e).__name__}: {e}", file=sys.stderr)
            return 1
        chip = explanation.target.chip
        if not hw.resolve(args.chip).is_gpu:
            print(f"(no GPU chip named or found: kernels are shaped for the {chip.name}, "
                  f"the {lowered.target} default; --chip picks another)")
        print(f"\n== traced graph: {len(explanation.source.eqns)} equations")
        print(explanation.source)
        print(f"\n== optimized graph: {len(explanation.graph.eqns)} equations")
        print(explanation.graph)
        print("\n== what each pass decided")
        print(explanation)
        print(f"\n== {len(lowered)} {lowered.target} kernel(s) for the {chip.name}")
        for k in lowered:
            if args.kernel_ir and k.kernel is not None:
                print(f"-- kernel IR of {k.name}")
                print(print_kernel(k.kernel))
            if args.no_source:
                for c in k.chain():
                    print(f"{c.name}: grid {c.grid}, threadgroup {c.threadgroup}")
            else:
                print(k.as_text())
        return 0

    return run


@command("tune", "tune MODULE:FUNCTION's kernels on this GPU ahead of time: time their candidate "
                 "schedules, keep the fastest in the on-disk cache later processes read")
def _tune(parser: argparse.ArgumentParser) -> Runner:
    _function_and_shapes(parser)
    parser.add_argument("--chip", default="auto", help="chip the default schedules follow (default: detected)")
    parser.add_argument("--grad", action="store_true",
                        help="also tune the backward's kernels (the gradient of the outputs' sum)")
    parser.add_argument("--budget", type=float, default=20.0, help="seconds per kernel (default 20)")
    parser.add_argument("--max-candidates", type=int, default=48, help="schedules per kernel (default 48)")
    parser.add_argument("--refresh", action="store_true", help="tune again where the cache has an entry")

    def run(args: argparse.Namespace) -> int:
        import mlx.core as mx

        import mlxtriton
        from mlxtriton import hw
        from mlxtriton.runtime import launch, tuner

        try:
            fn = _load_callable(args.function)
            call_args, call_kwargs = _example_arguments(fn, args.shape)
            target = hw.target(args.chip)
        except (ValueError, ImportError, hw.UnknownChipError) as e:
            print(f"mlxtriton tune: {e}", file=sys.stderr)
            return 2
        if not (target.can_launch or launch.interpreting()):
            print(f"mlxtriton tune: no GPU here ({target.device.name}): MLX's CPU backend runs no "
                  f"generated kernels, so there is nothing to time (MLXTRITON_INTERPRET=1 times "
                  f"them in the NumPy interpreter instead, to try the tuner)", file=sys.stderr)
            return 2
        chosen = tuner.Tuner(tuner.default_timer(), budget_s=args.budget,
                             max_candidates=args.max_candidates, refresh=args.refresh)
        previous = tuner.use(chosen)
        try:
            optimized = mlxtriton.optimize(fn, chip=args.chip, autotune=True)
            mx.eval(optimized(*call_args, **call_kwargs))
            if args.grad:
                def total(*a, **k):
                    out = optimized(*a, **k)
                    outs = out if isinstance(out, (tuple, list)) else (out,)
                    return sum(o.astype(mx.float32).sum() for o in outs)

                arrays = [i for i, a in enumerate(call_args) if isinstance(a, mx.array)
                          and mx.issubdtype(a.dtype, mx.floating)]
                mx.eval(mx.grad(total, argnums=arrays)(*call_args, **call_kwargs))
        except (mlxtriton.TraceError, mlxtriton.SingleKernelError, ValueError) as e:
            print(f"mlxtriton tune: {type(e).__name__}: {e}", file=sys.stderr)
            return 1
        finally:
            tuner.use(previous)
        print(f"== {len(chosen.searches)} kernel(s) tuned on {chosen.device}; cache: "
              f"{chosen.cache.path(chosen.device)}")
        for r in chosen.searches:
            print(f"{r.region:32s} {r.default_seconds * 1e6:10.1f} us -> {r.seconds * 1e6:10.1f} us "
                  f"({r.speedup:.2f}x, {len(r.timed)} timed): {r.best.describe()}")
        if not chosen.searches:
            print("(every kernel was in the cache already: --refresh tunes them again)")
        return 0

    return run


# name -> (script under benchmarks/, what it measures, whether it needs a GPU)
BENCHMARKS = {
    "gemm": ("gemm.py", "GEMM GFLOPS against the chip's peak; layouts (padding, transposed operands)", False),
    "rows": ("row_kernels.py", "fused row kernels vs eager, mx.compile, MLX native, Triton, copy", True),
    "trace": ("trace_overhead.py", "tracing cost against mx.export_function", False),
}


def _benchmarks_dir() -> str | None:
    """benchmarks/ of the source checkout this package runs from (an editable install), or None."""
    here = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    path = os.path.join(here, "benchmarks")
    return path if os.path.isdir(path) else None


def _headline(name: str, result: dict) -> str:
    """One line of a benchmark's results for the suite's table."""
    rows = [r for r in result.get("rows", []) if "error" not in r]
    if not rows:
        return "no rows"
    if name == "gemm":
        best = max((r for r in rows if r["impl"] == "mlx"), key=lambda r: r["gflops"], default=None)
        if best is None:
            return "no MLX rows"
        eff = f", {100 * best['efficiency']:.0f}% of peak" if best.get("efficiency") else ", no peak to compare"
        return f"best {best['device']} {best['dtype']} n={best['n']} {best['layout']}: {best['gflops']:.0f} GFLOPS{eff}"
    if name == "rows":
        r = max(rows, key=lambda r: r.get("speedup_vs_compile", 0))
        return (f"{len(rows)} rows; best {r['family']} {r['dtype']} {r['rows']}x{r['cols']}: "
                f"{r['mlxtriton_gbs']:.0f} GB/s, x{r.get('speedup_vs_compile', 0):.2f} vs mx.compile")
    if name == "trace":
        r = rows[-1]
        return f"{r['primitives']} primitives traced in {r['trace_ms']:.1f} ms ({r['trace_over_export']:.2f}x export)"
    return f"{len(rows)} rows"


@command("bench", "run the benchmark suite on this machine (or one: gemm, rows, trace); progress, "
                  "JSON and a table")
def _bench(parser: argparse.ArgumentParser) -> Runner:
    parser.add_argument("name", nargs="?", choices=sorted(BENCHMARKS),
                        help="one benchmark; options after it go to its script "
                             "(python benchmarks/gemm.py --help lists gemm's)")
    parser.add_argument("--out-dir", default="bench-results", help="where the JSON files go")
    parser.add_argument("--quick", action="store_true", help="the suite with fewer sizes")
    parser.set_defaults(passes_through=True)

    def run(args: argparse.Namespace) -> int:
        import json
        import subprocess
        import time

        import mlx.core as mx

        root = _benchmarks_dir()
        if root is None:
            print("mlxtriton bench: the benchmarks live in the source checkout (benchmarks/); "
                  "run from a clone installed with `pip install -e .`", file=sys.stderr)
            return 2
        gpu = mx.is_available(mx.gpu)
        names = [args.name] if args.name else list(BENCHMARKS)
        os.makedirs(args.out_dir, exist_ok=True)
        table = []
        for i, name in enumerate(names, 1):
            script, what, needs_gpu = BENCHMARKS[name]
            out = os.path.join(args.out_dir, f"{name}.json")
            print(f"[{i}/{len(names)}] {name}: {what}", flush=True)
            if needs_gpu and not gpu:
                reason = "needs a GPU: MLX's CPU backend runs no generated kernels"
                print(f"    skipped: {reason}", flush=True)
                table.append((name, "skipped", None, "-", reason))
                continue
            extra = list(args.extra) if args.name else []
            if args.quick and not args.name:
                extra += {"gemm": ["--sizes", "256,1024" if gpu else "256,512"], "rows": ["--quick"],
                          "trace": []}[name]
            command_line = [sys.executable, os.path.join(root, script), "--out", out, *extra]
            for j, arg in enumerate(extra):  # the script's own --out wins (argparse keeps the last)
                if arg == "--out" and j + 1 < len(extra):
                    out = extra[j + 1]
                elif arg.startswith("--out="):
                    out = arg.split("=", 1)[1]
            started = time.perf_counter()
            code = subprocess.call(command_line)
            seconds = time.perf_counter() - started
            if code != 0 or not os.path.exists(out):
                table.append((name, f"failed ({code})", seconds, "-", ""))
                continue
            with open(out) as fh:
                table.append((name, "ran", seconds, out, _headline(name, json.load(fh))))
        print(f"\n{'benchmark':10s} {'status':10s} {'seconds':>8s}  {'results':28s} headline")
        for name, status, seconds, out, line in table:
            secs = f"{seconds:8.1f}" if seconds is not None else "       -"
            print(f"{name:10s} {status:10s} {secs}  {out:28s} {line}")
        return 0 if all(t[1] in ("ran", "skipped") for t in table) else 1

    return run


def main(argv: Sequence[str] | None = None) -> int:
    """Run one command of the command line and return its exit code.

    Args:
        argv: The arguments after the program name; None reads ``sys.argv``.

    Returns:
        The exit code: 0 on success.

    Example:
        >>> from mlxtriton.__main__ import main
        >>> main(["chips", "m3", "--json"]) == 0  # doctest: +ELLIPSIS
        {...
        True
    """
    parser = argparse.ArgumentParser(prog="mlxtriton", description="Trace MLX functions into fused kernels.")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    runners = {}
    for name, (help_text, configure) in _COMMANDS.items():
        runners[name] = configure(sub.add_parser(name, help=help_text, description=help_text))
    args, extra = parser.parse_known_args(argv)
    if extra and not getattr(args, "passes_through", False):
        parser.error(f"unrecognized arguments: {' '.join(extra)}")
    args.extra = extra
    if args.command is None:
        parser.print_help()
        return 2
    try:
        return runners[args.command](args)
    except BrokenPipeError:  # output piped into `head`: not an error; keep Python quiet at exit
        sys.stdout = open(os.devnull, "w")
        return 0


if __name__ == "__main__":
    sys.exit(main())
