"""Runtime layer: `Compiled`, the function every public combinator returns.

A call flattens its arguments, looks up the (structure, shapes, dtypes, device) in a bounded
cache and runs the cached executable: an ``mx.compile``d function in which plain equations are MLX
ops and fused regions are generated kernels (Metal or CUDA) or, on the CPU, their bodies as MLX
ops. Tracing, the passes and code generation happen once per cache entry, never on a repeated call.
May import every layer below the public API.
"""

from __future__ import annotations

from collections import OrderedDict
from dataclasses import dataclass, field
from typing import Any, Callable

import mlx.core as mx

from mlxtriton import hw
from mlxtriton.codegen.builder import RegionError
from mlxtriton.codegen.lowering import (cache_with_report, kernel_target, lower_fused,
                                        row_fits_on_chip)
from mlxtriton.codegen.render import LoweredKernel
from mlxtriton.fusion import FusionReport, fuse_with_report
from mlxtriton.fusion.collectives import collective_lines
from mlxtriton.fusion.layout import layout_with_report
from mlxtriton.graph import dtypes, pytree
from mlxtriton.graph.core import Eqn, Graph, Var
from mlxtriton.graph.evaluate_mlx import MLX_RULES
from mlxtriton.graph.fused import body_of, is_fused
from mlxtriton.graph.primitives import Family, get as get_primitive
from mlxtriton.graph.transforms import replace_subgraph
from mlxtriton.patterns import optimize_patterns
from mlxtriton.runtime.autodiff import (SavedStatistics, detached, differentiable, differentiable_saving,
                                        fused_backward, saved_statistics)
from mlxtriton.runtime.launch import interpreting, launcher
from mlxtriton.trace import _arguments_tree, _normalize_static, trace_call

_default_device = mx.default_device  # bound once: the hot path calls it on every call
_ARRAY = mx.array

# The order passes always run in, whatever order the combinators were applied in: a pass that
# runs before the one it builds on (cache before fuse) would have nothing to act on. Patterns run
# first: fusion then groups what the rewrites left (a gate after its matmuls, a bias add + ReLU).
PIPELINE = ("patterns", "fuse", "layout", "cache")
# Whether row regions whose rows stay in registers save their statistics for the backward:
# None, `_resident_saves_statistics` decides; True / False, every one / none (benchmarks).
SAVE_RESIDENT_STATISTICS: bool | None = None
DEFAULT_CACHE_SIZE = 64


class SingleKernelError(ValueError):
    """A ``@mlxtriton.kernel`` function that cannot become exactly one generated kernel."""


@dataclass
class StageReport:
    """What one stage of the pipeline did."""

    stage: str
    graph: Graph
    lines: list[str] = field(default_factory=list)
    report: Any = None  # the stage's structured report, where it has one (patterns: PatternReport)


@dataclass
class Explanation:
    """What each stage did to a function and, for what did not fuse, why (``str()`` it)."""

    source: Graph
    stages: list[StageReport]
    kernels: list[LoweredKernel]
    target: hw.Target

    @property
    def graph(self) -> Graph:
        return self.stages[-1].graph if self.stages else self.source

    def __str__(self) -> str:
        out = [f"traced: {len(self.source.eqns)} equations; chip {self.target.chip.name}, "
               f"device {self.target.device.name}"]
        for s in self.stages:
            out.append(f"-- {s.stage}: {len(s.graph.eqns)} equations, "
                       f"{sum(is_fused(e) for e in s.graph.eqns)} fused regions")
            out += ["   " + line for line in s.lines]
        out.append(f"-- kernels ({len(self.kernels)}):")
        out += [f"   {k.name}: grid {k.grid}, threadgroup {k.threadgroup}; "
                f"{k.kernel.arg.describe() if k.kernel is not None else ''}" for k in self.kernels]
        return "\n".join(out)


@dataclass(frozen=True)
class Lowered:
    """The kernels a call would launch for one target: exactly the arguments of
    ``mx.fast.metal_kernel`` / ``mx.fast.cuda_kernel`` (see `LoweredKernel`)."""

    target: str
    graph: Graph
    kernels: tuple[LoweredKernel, ...]
    # (region name, reason) for fused regions codegen cannot write: they run as MLX ops
    fallbacks: tuple[tuple[str, str], ...] = ()

    def as_text(self) -> str:
        head = f"{len(self.kernels)} {self.target} kernel(s)\n"
        notes = "".join(f"region {n} runs as MLX ops: {why}\n" for n, why in self.fallbacks)
        return head + notes + "\n".join(k.as_text() for k in self.kernels)

    def __iter__(self):
        return iter(self.kernels)

    def __len__(self) -> int:
        return len(self.kernels)

    def __getitem__(self, i: int) -> LoweredKernel:
        return self.kernels[i]


def run_passes(graph: Graph, passes: frozenset[str], chip: Any, device: Any = None,
               dialect: str | None = None, single_kernel: bool = False
               ) -> tuple[Graph, list[StageReport]]:
    """Run the selected passes in pipeline order; each stage's graph and what it decided.
    ``single_kernel`` (`@kernel`): no reduction is split in two levels."""
    stages: list[StageReport] = []
    target = hw.target(chip, device)
    for name in PIPELINE:
        if name not in passes:
            continue
        if name == "patterns":
            graph, rewrites = optimize_patterns(graph, target.chip, fusing="fuse" in passes)
            stages.append(StageReport(name, graph, rewrites.lines(), rewrites))
        elif name == "fuse":
            graph, report = fuse_with_report(graph, target.chip, split=not single_kernel)
            stages.append(StageReport(name, graph, _fusion_lines(report) + collective_lines(graph)))
        elif name == "layout":
            graph, decisions = layout_with_report(graph, target.chip)
            stages.append(StageReport(name, graph, [d.as_text() for d in decisions]
                                      or ["no region reads an input through movement ops"]))
        elif name == "cache":
            graph, decisions = cache_with_report(graph, chip, device, dialect)
            stages.append(StageReport(name, graph, [d.as_text() for d in decisions]
                                      or ["no fused regions"]))
    return graph, stages


def _fusion_lines(report: FusionReport) -> list[str]:
    lines = [d.as_text() for d in report.splits] + [d.as_text() for d in report.partials]
    lines += [r.as_text() for r in report.regions]
    lines += [f"not fused: {u.as_text()}" for u in report.unfused]
    lines += [f"boundary: {b.as_text()}" for b in report.boundaries]
    return lines


Step = tuple[Callable, tuple[Var, ...], tuple[Var, ...]]

# An evaluated scalar every compiled call passes last: inside the trace of our own mx.compile it
# is a placeholder MLX refuses to read (`_tracing`), anywhere else it reads.
_PROBE = mx.array(0)


def _tracing(probe: mx.array) -> bool:
    """Whether our own ``mx.compile`` is tracing the call that passed ``probe``.

    MLX traces a compiled function only for inputs none of which is a tracer and replays that
    trace only for such inputs; with any tracer among them (grad, vjp, jvp, vmap, an outer
    mx.compile's trace) or with compilation disabled it calls the function itself, every time.
    A trace therefore serves only calls that no transformation sees, which need no derivative
    rules: there the bare kernel launches are traced (`_Executable.bare_body`). MLX's tracer
    for the probe has no value, and reading it raises; the probe itself is always readable.
    """
    try:
        probe.item()
    except ValueError:
        return True
    return False


def _choosing(body: Callable, bare: Callable) -> Callable:
    """``bare`` while our own mx.compile traces the call, ``body`` otherwise (`_tracing`); the
    caller passes `_PROBE` after the arrays."""

    def traced(*flat):
        *flat, probe = flat
        return (bare if _tracing(probe) else body)(*flat)

    return traced


class _Executable:
    """One cache entry: the optimised graph made runnable for one device.

    ``body`` launches each kernel inside its derivative rules (what a transformation traces);
    ``bare_body`` launches the kernels bare, and a region whose forward would save statistics
    for its backward without them: what MLX's trace of a call no transformation sees replays.
    ``run`` is the two under one ``mx.compile``, each where it belongs."""

    def __init__(self, graph: Graph, launch: bool, target: hw.Target, dialect: str | None):
        self.graph = graph
        steps: list[Step] = []
        bare_steps: list[Step] = []
        self.fallbacks: list[tuple[str, str]] = []  # regions run as MLX ops, and why
        for e in graph.eqns:
            if is_fused(e) and launch:
                try:
                    kernel, extra = lower_fused(e, target, dialect)
                except RegionError as err:
                    # A region codegen cannot write stays correct as MLX ops (explain says so);
                    # (a @kernel function raises instead: Compiled._build checks.)
                    self.fallbacks.append((e.params["name"], str(err)))
                    steps.append((_mlx_step(e), e.inputs, e.outputs))
                    bare_steps.append(steps[-1])
                    continue
                bare = launcher(kernel, extra)
                # MLX has no derivative of a kernel: MLX's of the region's body stands in, so
                # grad / vjp / jvp of the whole function work, matmuls untouched (runtime/autodiff)
                launch_region = _saving_statistics(e, kernel, bare, target, dialect)
                if launch_region is None:
                    # A pointwise region's backward is pointwise: mx.compile of MLX's VJP fuses it
                    # as well as a generated kernel would, and inside a compiled training step
                    # with its neighbours too (runtime/autodiff.fused_backward).
                    generated = fused_backward() and e.params["kind"] != "pointwise"
                    launch_region = differentiable(detached(bare), body_of(e),
                                                   target.chip if generated else None)
                steps.append((launch_region, e.inputs, e.outputs))
                bare_steps.append((bare, e.inputs, e.outputs))
            else:
                steps.append((_mlx_step(e), e.inputs, e.outputs))
                bare_steps.append(steps[-1])
        run = _runner(graph, steps)
        # The NumPy interpreter cannot run inside mx.compile's tracing; everything else does.
        # Even one lone kernel launch runs under mx.compile: its per-call cost is below a bare
        # custom_function call's (0.9 vs 2.6 us measured here) and a bare cuda_kernel call's
        # (15.8 vs 16.8 us on the H200, shared/device/README.md).
        self.traceable = not (launch and interpreting())
        self.body = run  # uncompiled: what Compiled's dispatch traces (one mx.compile for all)
        self.bare_body = _runner(graph, bare_steps) if launch else run
        if self.traceable:
            compiled = mx.compile(_choosing(self.body, self.bare_body))
            self.run = lambda *flat: compiled(*flat, _PROBE)
        else:
            self.run = run


def _runner(graph: Graph, steps: list[Step]) -> Callable[..., list]:
    """``graph``'s flat inputs -> its flat outputs, each equation a step."""
    constants = list(graph.constants)
    inputs, outputs = graph.inputs, graph.outputs
    # An output var listed twice (CSE merged two equal results): MLX's vjp of a function that
    # returns one array twice uses only the last cotangent, so later copies are new arrays.
    repeated = [i for i, v in enumerate(outputs) if v in outputs[:i]]

    def run(*flat):
        env = dict(zip(inputs, flat))
        env.update(constants)
        for fn, ins, outs in steps:
            results = fn(*[env[v] for v in ins])
            for v, r in zip(outs, results):
                env[v] = r
        results = [env[v] for v in outputs]
        for i in repeated:  # one array returned twice gets one cotangent from MLX's vjp
            results[i] = mx.contiguous(results[i])
        return results

    return run


def _executable(optimized: Graph, chip: Any, device) -> _Executable:
    """An optimised graph made runnable on ``device``: kernels where the device launches them
    (or the interpreter is asked for), MLX ops otherwise."""
    target = hw.target(chip, device)
    launch = target.can_launch or interpreting()
    ktarget, dialect = kernel_target(chip, device) if launch else (target, None)
    return _Executable(optimized, launch, ktarget, dialect)


def _saving_statistics(e: Eqn, kernel: LoweredKernel, bare: Callable, target: hw.Target,
                       dialect: str) -> Callable | None:
    """A differentiable launch of a row region whose forward saves its row statistics for a
    generated backward (runtime/autodiff.SavedStatistics), or None where that does not pay.
    The forward kernel then writes one value per row and statistic more.

    Rows too long to stay in registers always save: their backward would otherwise read them
    again once per statistic. Rows in registers cost no reads to reduce again, only compute:
    they save where the region computes a logsumexp and its backward, given it, still reduces
    the row (log-softmax: the cotangent's sum), not where that backward would be pointwise
    (cross-entropy recomputes its row's max and sum instead). Forward and backward together on
    the H200 (`_resident_saves_statistics`)."""
    if not fused_backward():
        return None
    body = body_of(e)
    resident = row_fits_on_chip(kernel, target)
    switch = SAVE_RESIDENT_STATISTICS
    if resident and (kernel.kernel.arg.kind != "row" or switch is False or (
            switch is None and "LogSumExp" not in body.primitive_counts())):
        return None
    plan = saved_statistics(body, kernel.kernel.arg.rows)
    if plan is None or (resident and not (switch or _resident_saves_statistics(plan))):
        return None
    forward = bare  # the region's own launch, where no statistic is appended
    if plan.count:
        extra_outputs = plan.forward.outputs[len(body.outputs):]
        saving = Eqn(e.primitive, e.inputs, (*e.outputs, *(Var(v.shape, v.dtype) for v in extra_outputs)),
                     e.params.set(body=plan.forward))
        try:
            forward = launcher(*lower_fused(saving, target, dialect))
        except RegionError:
            return None
    return differentiable_saving(detached(forward), body, plan, target.chip)


def _resident_saves_statistics(plan: SavedStatistics) -> bool:
    """Whether a region whose rows stay in registers and computes a logsumexp saves its
    statistics (`_saving_statistics`, where `SAVE_RESIDENT_STATISTICS` overrides this rule).
    Measured forward and backward together on the H200 (benchmarks/results/
    backward_rows_h200_session8_resident.json, GB/s, recomputing -> saving): log-softmax f32
    2345 -> 3256 at 32768x4096, 2264 -> 2880 at 4096x16384; bf16 2215 -> 2796, 1847 -> 2591;
    bf16 cross-entropy 1955 -> 2087, 1516 -> 1765; but float32 cross-entropy, whose backward
    with the logsumexp saved is a pointwise kernel, 2741 -> 2478 and 2486 -> 2404. Softmax and
    the norms, measured the same way, moved -44% to +11% (`_session8_resident_norms.json`).
    Since CUDA's exponential and max became one instruction each (session 10,
    `backward_rows_h200_session10_saves.json`, saving -> recomputing) bf16 cross-entropy, whose
    backward with the logsumexp saved is pointwise too, recomputes as float32 does: forward and
    backward 2118 -> 2400 at 32768x4096 and 1981 -> 2176 at 4096x16384, the gradients alone
    2123 -> 3511 and 1938 -> 3039 (they no longer run the saving forward); log-softmax still
    saves (bf16 2955 -> 2262 recomputing)."""
    return any(get_primitive(e.primitive).family is Family.REDUCE for e in plan.backward.eqns)


def graph_function(graph: Graph, chip: Any) -> Callable[..., list]:
    """``graph`` (fixed shapes, flat inputs -> flat outputs) optimised for ``chip`` and made
    runnable, without tracing anything: the backward of a region whose forward saved its
    statistics (runtime/autodiff) is a graph already. Built on the first call, for its device."""
    built: dict[str, _Executable] = {}

    def call(*flat):
        device = mx.default_device()
        executable = built.get(device.type)
        if executable is None:
            optimized, _ = run_passes(graph, frozenset(PIPELINE), chip, device)
            executable = built[device.type] = _executable(optimized, chip, device)
        return executable.run(*flat)

    return call


def _structured(body: Callable[..., list], out_tree) -> Callable | None:
    """``body`` returning the caller's structure where it is one array or a flat tuple of arrays
    (most functions: what ``mx.compile`` can return), else None."""
    if isinstance(out_tree, pytree.Leaf):
        return lambda *a: body(*a)[0]
    if (isinstance(out_tree, pytree.Node) and out_tree.kind is tuple
            and all(isinstance(c, pytree.Leaf) for c in out_tree.children)):
        return lambda *a: tuple(body(*a))
    return None


class _Unbuilt(Exception):
    """Raised inside the dispatch's trace for arguments no cache entry serves yet."""


def _plain_key(device_type, arrays) -> tuple:
    """What `Compiled._plain_calls` is keyed on: the device type and the arrays' shapes and
    dtypes (what MLX's own compile cache tells signatures apart by)."""
    return device_type, tuple([(a.shape, a.dtype) for a in arrays])


def _mlx_step(e: Eqn) -> Callable:
    rule = MLX_RULES[e.primitive]
    params = dict(e.params)

    def step(*args):
        r = rule(*args, **params)
        return r if isinstance(r, (tuple, list)) else (r,)

    return step


class Compiled:
    """A function whose calls run an optimised graph (what `mlxtriton.optimize`, `fuse`,
    `layout`, `cache` and `kernel` return).

    Calling it returns what the original returns. ``.graph(*args)`` gives the optimised graph,
    ``.lower(*args, target=...)`` the kernels it would launch (any host), ``.explain(*args)``
    what each stage did and why.
    """

    def __init__(self, fn: Callable, passes: frozenset[str], chip: Any = "auto",
                 static_argnums=(), static_argnames=(), single_kernel: bool = False,
                 cache_size: int = DEFAULT_CACHE_SIZE):
        import mlx.nn as nn

        if isinstance(fn, Compiled):  # combinators compose: union of passes, innermost function
            passes = passes | fn.passes
            chip = fn.chip if chip == "auto" else chip
            single_kernel = single_kernel or fn.single_kernel
            static_argnums, static_argnames = fn._static_argnums, fn._static_argnames
            fn = fn.fn
        self.fn = fn
        self.passes = frozenset(passes)
        unknown = self.passes - set(PIPELINE)
        if unknown:
            raise ValueError(f"unknown passes {sorted(unknown)}; the pipeline is {PIPELINE}")
        self.chip = chip
        hw.resolve(chip)  # an unknown chip name fails here, listing the known ones
        self.single_kernel = single_kernel
        self.cache_size = cache_size
        # A module runs with its current parameters as graph inputs: new weights, no retrace.
        self._module = fn if isinstance(fn, nn.Module) else None
        self._traced_fn = self._apply_module if self._module is not None else fn
        self._static_argnums, self._static_argnames = static_argnums, static_argnames
        nums, names = _normalize_static(self._traced_fn, static_argnums, static_argnames)
        if self._module is not None:  # apply(params, *args): user positions shift by one
            nums = tuple(n + 1 for n in nums)
        self._nums, self._names = nums, names
        self._cache: "OrderedDict[tuple, tuple[_Executable, Any]]" = OrderedDict()
        # positional-array calls of a plain function skip flattening (see __call__)
        self._plain = self._module is None and not nums and not names
        # Positional-array calls of a plain function go through one mx.compile of
        # `_dispatch_body`: MLX's own cache (keyed on the default device and the inputs' shapes
        # and dtypes, in C++) finds the traced graph, so a repeated call runs no Python of ours
        # beyond __call__. `_plain_calls` is what the body looks up while MLX traces it.
        self._plain_calls: dict[tuple, tuple[Callable, Callable]] = {}  # (body, bare body)
        self._dispatch = self._new_dispatch() if self._plain and not interpreting() else None
        self.__wrapped__ = fn
        self.__name__ = getattr(fn, "__name__", type(fn).__name__)
        self.__doc__ = getattr(fn, "__doc__", None)

    def _apply_module(self, params, *args, **kwargs):
        module = self._module
        saved = module.parameters()
        module.update(params)
        try:
            return module(*args, **kwargs)
        finally:
            module.update(saved)

    def _call_args(self, args: tuple) -> tuple:
        return (self._module.parameters(), *args) if self._module is not None else args

    # ---- the hot path ----
    def __call__(self, *args, **kwargs):
        dispatch = self._dispatch
        if dispatch is not None and not kwargs:
            for a in args:
                if type(a) is not _ARRAY:
                    break
            else:
                try:
                    return dispatch(*args, _PROBE)
                except _Unbuilt:
                    pass  # first call with these shapes: build below, then dispatch
        return self._call(args, kwargs)

    def _new_dispatch(self) -> Callable:
        return mx.compile(self._dispatch_body)

    def _dispatch_body(self, *flat):
        # Runs while mx.compile traces a new shape signature, which only calls no transformation
        # sees replay: the bare kernels (`_tracing`). Under grad / vmap / an outer compile MLX
        # calls it with tracers on every call: the kernels inside their derivative rules.
        entry = self._plain_calls.get(_plain_key(_default_device().type, flat[:-1]))
        if entry is None:
            raise _Unbuilt  # MLX drops the failed trace; __call__ builds and calls again
        return _choosing(*entry)(*flat)  # the probe last

    def _call(self, args, kwargs):
        args = self._call_args(args)
        leaves, tree = _arguments_tree(args, kwargs, self._nums, self._names)
        device = mx.default_device()
        # mx.Device compares by value but hashes by identity: key on its type (MLX has one GPU).
        key = (tree, tuple((a.shape, a.dtype) for a in leaves), device.type)
        entry = self._cache.get(key)
        if entry is None:
            entry = self._build(args, kwargs, device)
            self._cache[key] = entry
            while len(self._cache) > self.cache_size:
                self._cache.popitem(last=False)
                self._reset_dispatch()  # MLX's traced graphs of evicted entries go with it
        executable, out_tree = entry
        if (self._dispatch is not None and not kwargs
                and all(type(a) is _ARRAY for a in args)):
            structured = _structured(executable.body, out_tree) if executable.traceable else None
            if structured is None:
                self._dispatch = None  # outputs mx.compile cannot return, or the interpreter
            else:
                self._plain_calls[_plain_key(device.type, args)] = (
                    structured, _structured(executable.bare_body, out_tree))
                return self._dispatch(*args, _PROBE)
        return pytree.unflatten(out_tree, executable.run(*leaves))

    def _reset_dispatch(self) -> None:
        self._plain_calls.clear()
        if self._dispatch is not None:
            self._dispatch = self._new_dispatch()

    # ---- building ----
    def _trace(self, args, kwargs) -> Graph:
        graph = trace_call(self._traced_fn, args, kwargs, self._nums, self._names).graph
        return decompose_fast_ops(graph) if self.single_kernel else graph

    def _build(self, args, kwargs, device) -> tuple[_Executable, Any]:
        graph = self._trace(args, kwargs)
        optimized, _ = run_passes(graph, self.passes, self.chip, device,
                                  single_kernel=self.single_kernel)
        if self.single_kernel:
            check_single_kernel(graph, optimized, self.passes, self.chip)
        executable = _executable(optimized, self.chip, device)
        if self.single_kernel and executable.fallbacks:
            raise SingleKernelError(f"cannot be one kernel: {executable.fallbacks[0][1]}")
        return executable, graph.out_tree

    # ---- inspection (any host) ----
    def graph(self, *args, **kwargs) -> Graph:
        """The optimised graph for these arguments: what will run, fused regions included."""
        args = self._call_args(args)
        return run_passes(self._trace(args, kwargs), self.passes, self.chip,
                          single_kernel=self.single_kernel)[0]

    def lower(self, *args, target: str | None = None, **kwargs) -> Lowered:
        """The kernels a call with these arguments would launch, for ``target`` ("metal" or
        "cuda"; default: the running device's, else Metal). Works on any host.

        Raises:
            SingleKernelError: for a ``@kernel`` function that is not exactly one kernel.
            RegionError: a region that cannot become one kernel.
        """
        args = self._call_args(args)
        graph = self._trace(args, kwargs)
        ktarget, dialect = kernel_target(self.chip, None, target)
        optimized, _ = run_passes(graph, self.passes, self.chip, ktarget.device, dialect,
                                  self.single_kernel)
        if self.single_kernel:
            check_single_kernel(graph, optimized, self.passes, self.chip)
        kernels, fallbacks = [], []
        for e in optimized.eqns:
            if not is_fused(e):
                continue
            try:
                kernels.append(lower_fused(e, ktarget, dialect)[0])
            except RegionError as err:
                if self.single_kernel:
                    raise SingleKernelError(f"cannot be one kernel: {err}") from err
                fallbacks.append((e.params["name"], str(err)))
        return Lowered(dialect, optimized, tuple(kernels), tuple(fallbacks))

    def explain(self, *args, target: str | None = None, **kwargs) -> Explanation:
        """What each stage did for these arguments and, for what did not fuse, why."""
        args = self._call_args(args)
        graph = self._trace(args, kwargs)
        ktarget, dialect = kernel_target(self.chip, None, target)
        optimized, stages = run_passes(graph, self.passes, self.chip, ktarget.device, dialect,
                                       self.single_kernel)
        kernels = []
        for e in optimized.eqns:
            if is_fused(e):
                try:
                    kernels.append(lower_fused(e, ktarget, dialect)[0])
                except RegionError as err:
                    stages[-1].lines.append(f"{e.params['name']} cannot be generated: {err}")
        return Explanation(graph, stages, kernels, ktarget)

    def clear_cache(self) -> None:
        self._cache.clear()
        self._reset_dispatch()

    def __repr__(self) -> str:
        return f"<mlxtriton {'+'.join(p for p in PIPELINE if p in self.passes)} of {self.__name__}>"


# Fast-op primitives a GPU trace holds (on the CPU stream they decompose) whose work a generated
# row kernel does as well: a @kernel function decomposes them, so `rms_norm(x) * gate` can be the
# one kernel its author asked for rather than mx.fast's kernel plus a second one.
DECOMPOSED_FOR_KERNELS = frozenset({"RMSNorm", "LayerNorm"})


def decompose_fast_ops(graph: Graph, primitives: frozenset[str] = DECOMPOSED_FOR_KERNELS) -> Graph:
    """Replace each fast-op equation by MLX's own decomposition of it: its MLX rule traced on the
    CPU stream, where MLX runs the fallback (mlx/fast.cpp) op for op."""
    for e in [e for e in graph.eqns if e.primitive in primitives]:
        rule, params = MLX_RULES[e.primitive], dict(e.params)
        placeholders = tuple(mx.zeros(v.shape, dtypes.to_mx(v.dtype)) for v in e.inputs)
        with mx.stream(mx.cpu):
            body = trace_call(lambda *a: rule(*a, **params), placeholders, {}).graph
        graph = replace_subgraph(graph, [e], body, e.inputs, e.outputs)
    return graph


def check_single_kernel(graph: Graph, optimized: Graph, passes, chip) -> None:
    """Raise `SingleKernelError` naming what keeps ``optimized`` from being one kernel."""
    fused = [e for e in optimized.eqns if is_fused(e)]
    others = [e for e in optimized.eqns if not is_fused(e)]
    if len(fused) == 1 and not others:
        return
    _, report = fuse_with_report(graph, hw.resolve(chip), split=False)
    if others:
        # Name the equation that computes something (a Matmul), not the reshape feeding it.
        unfused = sorted(report.unfused, key=lambda u: get_primitive(u.primitive).family is Family.MOVEMENT)
        detail = unfused[0].as_text() if unfused else f"{others[0].primitive} is not part of any region"
        raise SingleKernelError(f"cannot be one kernel: equation {detail}")
    if not fused:
        raise SingleKernelError("cannot be one kernel: the function computes nothing a kernel could")
    bounds = "; ".join(b.as_text() for b in report.boundaries) or "regions over different index spaces"
    raise SingleKernelError(f"cannot be one kernel: it needs {len(fused)} kernels ({bounds})")
