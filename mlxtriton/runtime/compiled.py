"""Runtime layer: `Compiled`, the function every public combinator returns.

A call flattens its arguments, looks up the (structure, shapes, dtypes, device) in a bounded
cache and runs the cached executable: an ``mx.compile``d function in which plain equations are MLX
ops and fused regions are generated kernels (Metal or CUDA) or, on the CPU, their bodies as MLX
ops. Tracing, the passes and code generation happen once per cache entry, never on a repeated call.
May import every layer below the public API.
"""

from __future__ import annotations

import inspect
import threading
import warnings
from collections import OrderedDict
from dataclasses import dataclass, field, replace
from functools import cached_property
from typing import Any, Callable, NamedTuple

import mlx.core as mx

from mlxtriton import hw
from mlxtriton.codegen.builder import RegionError
from mlxtriton.codegen.lowering import (Chooser, cache_with_report, kernel_target, lower_fused,
                                        rows_held)
from mlxtriton.codegen.render import LoweredKernel
from mlxtriton.fusion import FusionReport, fuse_with_report
from mlxtriton.fusion.collectives import collective_lines
from mlxtriton.fusion.layout import layout_with_report
from mlxtriton.fusion.projections import group_projections
from mlxtriton.graph import dtypes, pytree
from mlxtriton.graph.core import Eqn, Graph, Var
from mlxtriton.graph.evaluate_mlx import MLX_RULES
from mlxtriton.graph.fused import TEMPLATE_KINDS, body_of, is_fused
from mlxtriton.graph.primitives import QUANTIZED, Family, get as get_primitive
from mlxtriton.graph.transforms import FOLD_MAX_ELEMENTS, cse, replace_subgraph
from mlxtriton.patterns import optimize_patterns
from mlxtriton.patterns.norms import decompose_norm
from mlxtriton.runtime import tuner as tuner_lib
from mlxtriton.runtime.autodiff import (SavedStatistics, detached, differentiable, differentiable_saving,
                                        fused_backward, saved_statistics, vjp_function)
from mlxtriton.runtime.launch import emulating, interpreting, launcher, unavailable
from mlxtriton.runtime.views import Step, fold_views
from mlxtriton import state as state_lib
from mlxtriton.state import function_roots
from mlxtriton.trace import StateIO, _arguments_tree, _normalize_static, state_roots, trace_call

_default_device = mx.default_device  # bound once: the hot path calls it on every call
_ARRAY = mx.array

# The order passes always run in, whatever order the combinators were applied in: a pass that
# runs before the one it builds on (cache before fuse) would have nothing to act on. Patterns run
# first: fusion then groups what the rewrites left (a gate after its matmuls, a bias add + ReLU).
PIPELINE = ("patterns", "fuse", "layout", "cache")
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
    target: hw.Target  # what the kernels are shaped for and written in
    running: hw.Profile | None = None  # the device this process runs on
    interpreted: str | None = None  # how MLXTRITON_INTERPRET runs the kernels off the device

    @property
    def graph(self) -> Graph:
        return self.stages[-1].graph if self.stages else self.source

    def __str__(self) -> str:
        dialect = "CUDA" if self.target.device.backend == "cuda" else "Metal"
        head = (f"traced: {len(self.source.eqns)} equations; kernels shaped for the "
                f"{self.target.chip.name}, written in {dialect}")
        if self.interpreted is not None:
            head += f"; the kernels run in the {self.interpreted} (MLXTRITON_INTERPRET)"
        elif self.running is not None and not self.running.is_gpu:
            head += f"; running on the {self.running.name}, where fused regions run as MLX ops"
        elif self.running is not None and self.running != self.target.device:
            head += f"; running on the {self.running.name}"
        out = [head]
        if self.source.state_inputs or self.source.state_outputs:
            out.append(f"   state read: {', '.join(self.source.state_inputs) or 'none'}; "
                       f"written: {', '.join(self.source.state_outputs) or 'none'}")
        for s in self.stages:
            out.append(f"-- {s.stage}: {len(s.graph.eqns)} equations, "
                       f"{sum(is_fused(e) for e in s.graph.eqns)} fused regions")
            out += ["   " + line for line in s.lines]
        launched = [c for k in self.kernels for c in k.chain()]
        out.append(f"-- kernels ({len(launched)}):")
        out += [f"   {k.name}: grid {k.grid}, threadgroup {k.threadgroup}; "
                + (f"schedule {k.origin}: {k.kernel.arg.describe()}" if k.kernel is not None
                   else f"a template kernel, schedule {k.origin}") for k in launched]
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
        head = f"{sum(len(k.chain()) for k in self.kernels)} {self.target} kernel(s)\n"
        notes = "".join(f"region {n} runs as MLX ops: {why}\n" for n, why in self.fallbacks)
        return head + notes + "\n".join(k.as_text() for k in self.kernels)

    def __iter__(self):
        return iter(self.kernels)

    def __len__(self) -> int:
        return len(self.kernels)

    def __getitem__(self, i: int) -> LoweredKernel:
        return self.kernels[i]


def run_passes(graph: Graph, passes: frozenset[str], target: Any, kernels: hw.Target | None = None,
               single_kernel: bool = False) -> tuple[Graph, list[StageReport]]:
    """Run the selected passes in pipeline order; each stage's graph and what it decided.
    ``target``: the `hw.Target` resolved for the call (a chip name: for this machine's device);
    ``kernels``: the `kernel_target` the cache stage shapes kernels for (default: the target's).
    ``single_kernel`` (`@kernel`): no reduction is split in two levels."""
    stages: list[StageReport] = []
    if not isinstance(target, hw.Target):
        target = hw.target(target)
    reason = _unverified_on_device(graph, target) if passes else None
    if reason is not None:
        return graph, [StageReport("fallback", graph, [reason])]
    if passes:
        # Equal work done once: two caches holding one offset array each add the same length
        # to it (`state.Snapshot.aliases`), a model computing one mask per layer.
        graph = cse(graph, constants_up_to=FOLD_MAX_ELEMENTS)
    for name in PIPELINE:
        if name not in passes:
            continue
        if name == "patterns":
            graph, rewrites = optimize_patterns(graph, target.chip, fusing="fuse" in passes)
            stages.append(StageReport(name, graph, rewrites.lines(), rewrites))
        elif name == "fuse":
            projections: list = []
            if target.chip.is_gpu and not single_kernel:
                t = hw.tuning.tuning(target.chip)
                graph, projections = group_projections(
                    graph, t.projection_max_rows, t.projection_lone_rows, t.projection_quantized,
                    t.projection_epilogues)
            graph, report = fuse_with_report(graph, target.chip, split=not single_kernel)
            stages.append(StageReport(name, graph, [p.as_text() for p in projections]
                                      + _fusion_lines(report) + collective_lines(graph)))
        elif name == "layout":
            # a row the kernel keeps on chip is read once: the code generator's answer
            held = (lambda e: _rows_held(e, kernels or kernel_target(target.chip, target.device))
                    ) if target.chip.is_gpu else None
            graph, decisions = layout_with_report(graph, held, copies=not single_kernel)
            stages.append(StageReport(name, graph, [d.as_text() for d in decisions]
                                      or ["no region reads an input through movement ops"]))
        elif name == "cache":
            graph, decisions = cache_with_report(
                graph, kernels or kernel_target(target.chip, target.device))
            stages.append(StageReport(name, graph, [d.as_text() for d in decisions]
                                      or ["no fused regions"]))
    return graph, stages


# Quantized weights met by float16 activations: on a CUDA GPU such a program runs as traced (MLX's
# ops), since a float16 4-bit llama's prefill gave zero logits through the optimised path there
# (tests/device/test_projection_gpu.py). Its CUDA kernels are right in the kernel emulator, and
# MLX's own float16 quantized_matmul at that model's shapes returned zeros on the same GPU
# (docs/design.md); the optimised float16 path at real models' shapes is not yet checked there.


def _unverified_on_device(graph: Graph, target: hw.Target) -> str | None:
    """Why ``graph`` runs as traced on ``target``'s device, if it must (else None)."""
    if not (target.device.is_gpu and target.device.backend == "cuda"):
        return None
    for e in graph.eqns:
        if e.primitive in QUANTIZED and any(v.dtype == "float16" for v in (*e.inputs, *e.outputs)):
            return (f"the whole program runs as MLX ops: float16 activations with quantized weights "
                    f"({e.primitive}) on CUDA gave wrong results through the optimised path in a "
                    "device test, not yet checked there since (bfloat16 activations are optimised)")
    return None


def _rows_held(e: Eqn, kernels: hw.Target) -> bool:
    """`rows_held`, for a region codegen cannot write: no (its rows run as MLX ops)."""
    try:
        return rows_held(e, kernels)
    except RegionError:
        return False


def _fusion_lines(report: FusionReport) -> list[str]:
    lines = [d.as_text() for d in report.splits] + [d.as_text() for d in report.partials]
    lines += [r.as_text() for r in report.regions]
    lines += [f"not fused: {u.as_text()}" for u in report.unfused]
    lines += [f"boundary: {b.as_text()}" for b in report.boundaries]
    return lines


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


def _lower_region(e: Eqn, target: hw.Target, choose: Chooser | None = None):
    """`lower_fused`, except for a region over an empty array: nothing to compute, and MLX ops
    give the empty (or identity-filled) result at no cost where a kernel would be launched over
    an empty buffer, which MLX's CUDA backend does not survive.

    Raises:
        RegionError: the region runs as MLX ops (the message says why).
    """
    empty = next((v for v in (*e.inputs, *e.outputs) if 0 in v.shape), None)
    if empty is not None:
        raise RegionError(f"an empty array ({empty.dtype}{list(empty.shape)}): nothing to compute")
    return lower_fused(e, target, choose)


class _Executable:
    """One cache entry: the optimised graph made runnable for one device.

    ``body`` launches each kernel inside its derivative rules (what a transformation traces);
    ``bare_body`` launches the kernels bare, and a region whose forward would save statistics
    for its backward without them: what MLX's trace of a call no transformation sees replays.
    ``run`` is the two under one ``mx.compile``, each where it belongs."""

    def __init__(self, graph: Graph, launch: bool, target: hw.Target, choose: Chooser | None = None,
                 autotune: bool | None = None, identities: tuple[int, ...] | None = None):
        self.graph = graph
        steps: list[Step] = []
        bare_steps: list[Step] = []
        lowered: dict[int, tuple] = {}  # equation index -> (kernel, constants) of each launch
        self.fallbacks: list[tuple[str, str]] = []  # regions run as MLX ops, and why
        for index, e in enumerate(graph.eqns):
            if is_fused(e) and launch:
                try:
                    kernel, extra = lowered[index] = _lower_region(e, target, choose)
                    bare = launcher(kernel, extra)  # KernelUnavailable: fails on this GPU
                except RegionError as err:
                    # A region codegen cannot write, or whose kernel this GPU cannot run, stays
                    # correct as MLX ops (explain says so); a @kernel function raises instead
                    # (Compiled._build checks).
                    self.fallbacks.append((e.params["name"], str(err)))
                    lowered.pop(index, None)
                    steps.append((_mlx_step(e), e.inputs, e.outputs))
                    bare_steps.append(steps[-1])
                    continue
                # MLX has no derivative of a kernel: MLX's of the region's body stands in, so
                # grad / vjp / jvp of the whole function work, matmuls untouched (runtime/autodiff)
                launch_region = _saving_statistics(e, kernel, bare, target, choose, autotune)
                if launch_region is None:
                    # A pointwise region's backward is pointwise: mx.compile of MLX's VJP fuses it
                    # as well as a generated kernel would, and inside a compiled training step
                    # with its neighbours too (runtime/autodiff.fused_backward).
                    # A template kernel's backward is MLX's of its body (SDPA, matmuls: they run
                    # at decode).
                    generated = fused_backward() and e.params["kind"] not in ("pointwise", *TEMPLATE_KINDS)
                    backward = (Compiled(vjp_function(body_of(e)), frozenset(PIPELINE),
                                         chip=target.chip, autotune=autotune)
                                if generated else None)
                    launch_region = differentiable(detached(bare), body_of(e), backward)
                steps.append((launch_region, e.inputs, e.outputs))
                bare_steps.append((bare, e.inputs, e.outputs))
            else:
                steps.append((_mlx_step(e), e.inputs, e.outputs))
                bare_steps.append(steps[-1])
        run = _runner(graph, steps)
        # The NumPy interpreter cannot run inside mx.compile's tracing; everything else does.
        # Even one lone kernel launch runs under mx.compile, which costs less per call than a
        # bare custom_function or cuda_kernel call (benchmarks/results/per_call_*.json).
        # A graph holding an empty array runs op by op, outside mx.compile: MLX 0.32.4's CUDA
        # backend aborts the process (SIGFPE) evaluating such a compiled graph
        # (tests/device/test_semantics_gpu.py, size-0 shapes).
        self.empty = any(0 in v.shape for v in graph.inputs) or any(
            0 in v.shape for e in graph.eqns for v in (*e.inputs, *e.outputs))
        self.traceable = not (launch and interpreting()) and not self.empty
        # For each output, the first output position holding the same var (empty: all distinct):
        # MLX hands back a new Python object per output, so one array written to several state
        # slots is made one object again (`state.Snapshot.aliases` reads them as one input).
        # Only within one of ``identities`` (`_output_identities`): outputs the passes merged
        # that were distinct objects before (an optimizer's zeros_like states, equal constants)
        # stay distinct, or the next call would see its state's aliasing change and build again.
        identities = identities or (0,) * len(graph.outputs)
        first: dict = {}
        aliases = tuple(first.setdefault(key, i)
                        for i, key in enumerate(zip(graph.outputs, identities)))
        self.output_aliases = aliases if len(first) < len(aliases) else ()
        self.body = run  # uncompiled: what Compiled's dispatch traces (one mx.compile for all)
        # A bare replay launches kernels in their views' shapes and drops those views.
        self.views_folded = 0
        if launch and lowered:
            def relaunch(index: int, shapes: dict[int, tuple[int, ...]]):
                kernel, extra = lowered[index]
                final = kernel.chain()[-1].output_shapes
                return launcher(kernel, extra, [shapes.get(p, s) for p, s in enumerate(final)])

            bare_steps, self.views_folded = fold_views(graph, bare_steps, sorted(lowered), relaunch)
        self.bare_body = _runner(graph, bare_steps if launch else steps, differentiated=False)
        if self.traceable:
            compiled = mx.compile(_choosing(self.body, self.bare_body))
            self.run = lambda *flat: compiled(*flat, _PROBE)
        else:
            self.run = run


def _runner(graph: Graph, steps: list[Step], differentiated: bool = True) -> Callable[..., list]:
    """``graph``'s flat inputs -> its flat outputs, each equation a step. ``differentiated``:
    what a transformation may trace (see below); else one array returned in several places is
    returned as it is (several caches then hold one offset array, `state.Snapshot.aliases`)."""
    constants = list(graph.constants)
    inputs, outputs = graph.inputs, graph.outputs
    # An output var listed twice (CSE merged two equal results): MLX's vjp of a function that
    # returns one array twice uses only the last cotangent, so later copies are new arrays.
    repeated = [i for i, v in enumerate(outputs) if v in outputs[:i]] if differentiated else []

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


def _launches(target: hw.Target) -> bool:
    """Whether generated kernels run for ``target``: on its GPU, or in the interpreter."""
    return target.can_launch or interpreting()


def _output_identities(traced, aliases: tuple) -> tuple[int, ...]:
    """For each output of a ``traced`` call, a class: outputs of one class were one object in
    the function (one traced var: an array returned or stored in several places), or are state
    written to slots that held one object before the call (``aliases``, `state.Snapshot.aliases`:
    every layer's cache sharing one offset)."""
    outputs = traced.graph.outputs
    parent = list(range(len(outputs)))

    def find(i: int) -> int:
        while parent[i] != i:
            parent[i] = parent[parent[i]]
            i = parent[i]
        return i

    first: dict = {}
    for i, v in enumerate(outputs):
        parent[find(i)] = find(first.setdefault(v, i))
    if traced.state is not None and aliases:
        held: dict[int, int] = {}
        for k, leaf in enumerate(traced.state.changes.same_slot):
            if leaf is not None:
                i = traced.state.results + k
                parent[find(i)] = find(held.setdefault(aliases[leaf], i))
    return tuple(find(i) for i in range(len(outputs)))


def _executable(optimized: Graph, target: hw.Target, autotune: bool | None = None,
                identities: tuple[int, ...] | None = None) -> _Executable:
    """An optimised graph made runnable on ``target``'s device: kernels where the device launches
    them (or the interpreter is asked for), their schedules tuned there with ``autotune``
    (`mlxtriton.runtime.tuner`), MLX ops otherwise."""
    launch = _launches(target)
    ktarget = kernel_target(target.chip, target.device) if launch else target
    choose = tuner_lib.tuner().choose if launch and tuner_lib.enabled(autotune) else None
    return _Executable(optimized, launch, ktarget, choose, autotune, identities)


def _saving_statistics(e: Eqn, kernel: LoweredKernel, bare: Callable, target: hw.Target,
                       choose: Chooser | None, autotune: bool | None) -> Callable | None:
    """A differentiable launch of a row region whose forward saves its row statistics for a
    generated backward (runtime/autodiff.SavedStatistics), or None where that does not pay.
    The forward kernel then writes one value per row and statistic more.

    Rows too long to stay in registers always save: their backward would otherwise read them
    again once per statistic. Rows in registers cost no reads to reduce again, only compute:
    they save where the region computes a logsumexp and its backward, given it, still reduces
    the row (log-softmax: the cotangent's sum), not where that backward would be pointwise
    (cross-entropy recomputes its row's max and sum instead), and where the chip's tuning data
    says so (``resident_saves_statistics``)."""
    if not fused_backward() or kernel.kernel is None:  # a kernel written as a template saves nothing
        return None
    body = body_of(e)
    resident = rows_held(e, target)
    if resident and (kernel.kernel.arg.kind != "row" or "LogSumExp" not in body.primitive_counts()
                     or not hw.tuning.tuning(target.chip).resident_saves_statistics):
        return None
    plan = saved_statistics(body, kernel.kernel.arg.rows)
    if plan is None or (resident and not _backward_reduces(plan)):
        return None
    forward = bare  # the region's own launch, where no statistic is appended
    if plan.count:
        extra_outputs = plan.forward.outputs[len(body.outputs):]
        saving = Eqn(e.primitive, e.inputs, (*e.outputs, *(Var(v.shape, v.dtype) for v in extra_outputs)),
                     e.params.set(body=plan.forward))
        try:
            forward = launcher(*lower_fused(saving, target, choose))
        except RegionError:
            return None
    backward = graph_function(plan.backward, target.chip, autotune)
    return differentiable_saving(detached(forward), body, plan, backward)


def _backward_reduces(plan: SavedStatistics) -> bool:
    """Whether ``plan``'s backward still reduces a row once the statistics are given (a
    log-softmax's does; a cross-entropy's, given its logsumexp, is pointwise: for rows held in
    registers recomputing the statistics then costs less than the saving forward)."""
    return any(get_primitive(e.primitive).family is Family.REDUCE for e in plan.backward.eqns)


def graph_function(graph: Graph, chip: Any, autotune: bool | None = None) -> Callable[..., list]:
    """``graph`` (fixed shapes, flat inputs -> flat outputs) optimised for ``chip`` and made
    runnable, without tracing anything: the backward of a region whose forward saved its
    statistics (runtime/autodiff) is a graph already. Built on the first call, for its device."""
    built: dict[str, _Executable] = {}

    def call(*flat):
        device = mx.default_device()
        executable = built.get(device.type)
        if executable is None:
            target = hw.target(chip, device)
            optimized, _ = run_passes(graph, frozenset(PIPELINE), target)
            executable = built[device.type] = _executable(optimized, target, autotune)
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


class RebuildWarning(UserWarning):
    """An optimized function rebuilt on many calls in a row: something in its cache key changes
    on every call (the message names it)."""


class CacheInfo(NamedTuple):
    """What `Compiled.cache_info` reports (as ``functools.lru_cache`` does): calls served by a
    built entry, builds (trace, passes, codegen), entries evicted (least recently used first),
    entries held, the bound, and why the last build happened."""

    hits: int
    builds: int
    evictions: int
    entries: int
    maxsize: int
    last_build: str | None


# A function that builds on this many calls in a row, with no call served in between, warns once.
REBUILDS_BEFORE_WARNING = 8


@dataclass
class _Entry:
    """One cache entry: the executable, the results' structure, how the call meets its state,
    and what the entry was keyed on (to say what changed when another call builds)."""

    executable: _Executable
    out_tree: Any
    state: StateIO | None
    key: tuple
    leaf_paths: list[str]
    state_paths: list[str]


class Compiled:
    """A function whose calls run an optimised graph (what `mlxtriton.optimize`, `fuse`,
    `layout`, `cache` and `kernel` return).

    Calling it returns what the original returns, and leaves the state it touched (module
    buffers, argument objects, the random key) as the original would (`mlxtriton.state`).
    ``.graph(*args)`` gives the optimised graph, ``.lower(*args)`` the kernels it would launch
    (any host), ``.explain(*args)`` what each stage did and why (every argument goes to the
    function; ``.trace(*args).lower(target)`` picks the dialect), ``.cache_info()`` how its
    cache is doing.
    """

    def __init__(self, fn: Callable, passes: frozenset[str], chip: Any = "auto",
                 static_argnums=(), static_argnames=(), single_kernel: bool = False,
                 cache_size: int = DEFAULT_CACHE_SIZE, autotune: bool | None = None):
        if isinstance(fn, Compiled):  # combinators compose: union of passes, innermost function
            passes = passes | fn.passes
            chip = fn.chip if chip == "auto" else chip
            single_kernel = single_kernel or fn.single_kernel
            autotune = fn.autotune if autotune is None else autotune
            static_argnums, static_argnames = fn._static_argnums, fn._static_argnames
            fn = fn.fn
        if not callable(fn):
            raise TypeError(f"mlxtriton expects a function or an mlx.nn.Module to optimize, got "
                            f"{pytree.describe(fn)}")
        self.fn = fn
        self.passes = frozenset(passes)
        unknown = self.passes - set(PIPELINE)
        if unknown:
            raise ValueError(f"unknown passes {sorted(unknown)}; the pipeline is {PIPELINE}")
        self.chip = chip
        hw.resolve(chip)  # an unknown chip name fails here, listing the known ones
        # tune each kernel's schedule on the device (None: MLXTRITON_AUTOTUNE decides per build)
        self.autotune = autotune
        self.single_kernel = single_kernel
        if not isinstance(cache_size, int) or cache_size < 1:
            raise ValueError(f"cache_size must be a positive int, got {cache_size!r}")
        self.cache_size = cache_size
        self._static_argnums, self._static_argnames = static_argnums, static_argnames
        self._nums, self._names = check_static_arguments(fn, static_argnums, static_argnames)
        self._cache: "OrderedDict[tuple, _Entry]" = OrderedDict()
        self._lock = threading.RLock()
        self._hits = self._builds = self._evictions = self._stale = self._in_a_row = 0
        self._last_build: str | None = None
        self._warned = False
        self._last_snapshot: state_lib.Snapshot | None = None  # what the next call refreshes
        # Positional-array calls of a function that holds no state go through one mx.compile of
        # `_dispatch_body`: MLX's own cache (keyed on the default device and the inputs' shapes
        # and dtypes, in C++) finds the traced graph, so a repeated call runs no Python of ours
        # beyond __call__. `_plain_calls` is what the body looks up while MLX traces it. A
        # function found to read or write state (a module, the random key) leaves this path.
        self._plain_calls: dict[tuple, tuple[Callable, Callable]] = {}  # (body, bare body)
        self._plain_entries: dict[tuple, tuple] = {}  # the same keys -> the cache's keys
        plain = not self._nums and not self._names and not function_roots(fn)
        self._dispatch = self._new_dispatch() if plain and not interpreting() else None
        self.__wrapped__ = fn
        self.__name__ = getattr(fn, "__name__", type(fn).__name__)
        self.__doc__ = getattr(fn, "__doc__", None)

    # ---- the hot path ----
    def __call__(self, *args, **kwargs):
        dispatch = self._dispatch
        if dispatch is not None and not kwargs:
            for a in args:
                if type(a) is not _ARRAY:
                    break
            else:
                try:
                    out = dispatch(*args, _PROBE)
                except _Unbuilt:
                    pass  # first call with these shapes: build below, then dispatch
                else:
                    self._hits += 1
                    self._in_a_row = 0
                    if len(self._cache) > 1:  # keep the least recently used order
                        self._touch(_plain_key(_default_device().type, args))
                    return out
        return self._call(args, kwargs)

    def _touch(self, plain_key: tuple) -> None:
        key = self._plain_entries.get(plain_key)
        if key is not None:
            try:
                self._cache.move_to_end(key)
            except KeyError:  # evicted meanwhile
                pass

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
        objects: list = []
        leaves, tree = _arguments_tree(args, kwargs, self._nums, self._names, objects)
        roots = state_roots(self.fn, objects)
        objs = [o for o, _ in roots]
        last = self._last_snapshot
        snap = last.refresh(objs) if last is not None else None
        if snap is None:  # the first call, or the state's structure changed: walk it
            snap = self._last_snapshot = state_lib.snapshot(objs, [p for _, p in roots], prepare=True)
        device = mx.default_device()
        # mx.Device compares by value but hashes by identity: key on its type (MLX has one GPU).
        key = (tree, tuple([(a.shape, a.dtype) for a in leaves]), snap.layout_key, snap.avals,
               device.type, snap.aliases)
        entry = self._cache.get(key)
        if entry is None:
            entry = self._build_entry(key, args, kwargs, device, snap, leaves)
        else:
            self._hits += 1
            self._in_a_row = 0
            try:
                self._cache.move_to_end(key)
            except KeyError:  # another thread evicted it meanwhile: it still runs
                pass
        executable, io = entry.executable, entry.state
        if io is None:
            if (self._dispatch is not None and not kwargs
                    and all(type(a) is _ARRAY for a in args)):
                structured = _structured(executable.body, entry.out_tree) if executable.traceable else None
                if executable.empty:
                    pass  # runs op by op below; other shapes keep the dispatch
                elif structured is None:
                    self._dispatch = None  # outputs mx.compile cannot return, or the interpreter
                else:
                    plain = _plain_key(device.type, args)
                    self._plain_calls[plain] = (
                        structured, _structured(executable.bare_body, entry.out_tree))
                    self._plain_entries[plain] = key
                    try:
                        return self._dispatch(*args, _PROBE)
                    except (_Unbuilt, TypeError):  # reset by another thread meanwhile
                        pass
            return pytree.unflatten(entry.out_tree, executable.run(*leaves))
        state_leaves = snap.leaves
        outs = executable.run(*leaves, *[state_leaves[i] for i in io.inputs])
        if executable.output_aliases:
            outs = [outs[i] for i in executable.output_aliases]
        written = outs[io.results:]
        io.changes.plan.apply(snap, written)
        self._last_snapshot = snap.settled(io.changes.same_slot, written)
        return pytree.unflatten(entry.out_tree, outs[:io.results])

    def _build_entry(self, key, args, kwargs, device, snap, leaves) -> _Entry:
        with self._lock:
            entry = self._cache.get(key)
            if entry is not None:  # another thread built it while this one waited
                self._hits += 1
                return entry
            previous = next(reversed(self._cache.values()), None)
            traced = self._trace_call(args, kwargs)
            # Every call binds the live state: holding its trace-time values would keep old
            # weights alive.
            executable = self._build(traced.graph.replace(state_values=()), device,
                                     _output_identities(traced, snap.aliases))
            # The entry outlives the call: it keeps no state object (an argument's cache would
            # stay alive with its buffers as long as the entry does).
            io = traced.state if traced.state is None else replace(traced.state, roots=())
            entry = _Entry(executable, traced.graph.out_tree, io, key,
                           _leaf_paths(key[0]), snap.leaf_paths())
            if entry.state is not None:
                self._dispatch = None  # a stateful function: every call walks its state
                self._plain_calls.clear()
                self._plain_entries.clear()
            self._last_build = _why_built(previous, entry, snap)
            self._builds += 1
            self._in_a_row += 1
            self._cache[key] = entry
            while len(self._cache) > self.cache_size:
                _, evicted = self._cache.popitem(last=False)
                self._evictions += 1
                self._forget(evicted)
            if self._in_a_row >= REBUILDS_BEFORE_WARNING and not self._warned:
                self._warned = True
                warnings.warn(
                    f"mlxtriton rebuilt {self.__name__} on {self._in_a_row} calls in a row, the "
                    f"last because {self._last_build}. Whatever changes on every call is part of "
                    "the cache key: pass a changing number as an mx.array, and for generation use "
                    "mlxtriton.lm's caches.", RebuildWarning, stacklevel=3)
            return entry

    def _forget(self, evicted: _Entry) -> None:
        """Drop an evicted entry's fast path. MLX's compile cache keeps its trace (MLX evicts
        nothing); once as many evicted traces as entries have piled up, the dispatch is made
        anew, dropping them all."""
        if evicted.state is not None or self._dispatch is None:
            return
        tree, avals, _, _, device_type, _ = evicted.key
        self._plain_calls.pop((device_type, avals), None)
        self._plain_entries.pop((device_type, avals), None)
        self._stale += 1
        if self._stale > self.cache_size:
            self._reset_dispatch()

    def _reset_dispatch(self) -> None:
        self._stale = 0
        self._plain_calls.clear()
        self._plain_entries.clear()
        if self._dispatch is not None:
            self._dispatch = self._new_dispatch()

    def cache_info(self) -> CacheInfo:
        """Hits, builds, evictions, entries, the bound, and why the last build happened.

        Example:
            >>> f = mlxtriton.optimize(lambda x: x * 2)
            >>> _ = f(mx.ones(3)); _ = f(mx.ones(3)); _ = f(mx.ones(4))
            >>> f.cache_info()[:5], f.cache_info().last_build
            ((1, 2, 0, 2, 64), 'argument 0: f32[3] -> f32[4]')
        """
        return CacheInfo(self._hits, self._builds, self._evictions, len(self._cache),
                         self.cache_size, self._last_build)

    # ---- building ----
    def _trace_call(self, args, kwargs):
        traced = trace_call(self.fn, args, kwargs, self._nums, self._names, normalized=True)
        if self.single_kernel:
            traced = replace(traced, graph=decompose_fast_ops(traced.graph))
        return traced

    def _trace(self, args, kwargs) -> Graph:
        return self._trace_call(args, kwargs).graph

    def _build(self, graph: Graph, device, identities: tuple[int, ...] | None = None
               ) -> _Executable:
        target = hw.target(self.chip, device)  # resolved once for this call signature
        passes = self.passes
        if not _launches(target):
            # Regions run as MLX ops here: the schedules the cache stage chooses would go unused.
            passes = passes - {"cache"}
        optimized, _ = run_passes(graph, passes, target, single_kernel=self.single_kernel)
        if self.single_kernel:
            check_single_kernel(graph, optimized, self.passes, self.chip)
        executable = _executable(optimized, target, self.autotune, identities)
        if self.single_kernel and executable.fallbacks:
            raise SingleKernelError(f"cannot be one kernel: {executable.fallbacks[0][1]}")
        return executable

    # ---- inspection (any host) ----
    def trace(self, *args, **kwargs) -> "Traced":
        """Trace a call without running it (``jax.jit(f).trace``): every argument goes to the
        function. The result lowers and explains for any target, each computed once:
        ``f.trace(x).lower("cuda")``, ``f.trace(x).explain()``, ``f.trace(x).graph``."""
        return Traced(self, self._trace(args, kwargs))

    def graph(self, *args, **kwargs) -> Graph:
        """The optimised graph for these arguments: what will run, fused regions included."""
        return self.trace(*args, **kwargs).graph

    def lower(self, *args, **kwargs) -> Lowered:
        """The kernels a call with these arguments would launch, in the running device's
        dialect (else Metal); ``f.trace(*args, **kwargs).lower("cuda")`` picks another. Works on
        any host.

        Raises:
            SingleKernelError: for a ``@kernel`` function that is not exactly one kernel.
        """
        return self.trace(*args, **kwargs).lower()

    def explain(self, *args, **kwargs) -> Explanation:
        """What each stage did for these arguments and, for what did not fuse, why
        (``f.trace(*args, **kwargs).explain("cuda")`` for another dialect)."""
        return self.trace(*args, **kwargs).explain()

    def clear_cache(self) -> None:
        with self._lock:
            self._cache.clear()
            self._last_snapshot = None  # and the state objects of the last call
            self._reset_dispatch()

    def __getattr__(self, name: str):
        # An optimized module still answers for the module (mlx-lm's generate reads
        # model.layers, model.make_cache, ...); only what is not Compiled's own gets here.
        if name.startswith("__") or "fn" not in self.__dict__:
            raise AttributeError(name)
        return getattr(self.__dict__["fn"], name)

    def __repr__(self) -> str:
        return f"<mlxtriton {'+'.join(p for p in PIPELINE if p in self.passes)} of {self.__name__}>"


def check_static_arguments(fn: Callable, static_argnums, static_argnames) -> tuple[tuple, tuple]:
    """Normalised static positions and names, checked against ``fn``'s signature as jax.jit
    checks them: a position past the positional parameters or a name the function does not
    take is an error (unless it takes ``*args`` / ``**kwargs``).

    Raises:
        ValueError: naming the argument and what the function takes.
        TypeError: static_argnums / static_argnames of the wrong type.
    """
    nums = (static_argnums,) if isinstance(static_argnums, int) else tuple(static_argnums)
    names = (static_argnames,) if isinstance(static_argnames, str) else tuple(static_argnames)
    if not all(isinstance(i, int) and not isinstance(i, bool) for i in nums):
        raise TypeError(f"static_argnums must be ints, got {static_argnums!r}")
    if not all(isinstance(n, str) for n in names):
        raise TypeError(f"static_argnames must be strings, got {static_argnames!r}")
    try:
        params = list(inspect.signature(fn).parameters.values())
    except (TypeError, ValueError):
        params = None
    if params is not None:
        positional = [p.name for p in params if p.kind in (p.POSITIONAL_ONLY, p.POSITIONAL_OR_KEYWORD)]
        varargs = any(p.kind is p.VAR_POSITIONAL for p in params)
        varkw = any(p.kind is p.VAR_KEYWORD for p in params)
        named = {p.name for p in params if p.kind in (p.POSITIONAL_OR_KEYWORD, p.KEYWORD_ONLY)}
        for i in nums:
            if not varargs and not -len(positional) <= i < len(positional):
                raise ValueError(
                    f"static_argnums has {i}, but {_name_of(fn)} takes {len(positional)} positional "
                    f"argument{'s' if len(positional) != 1 else ''} ({', '.join(positional) or 'none'})")
        for n in names:
            if not varkw and n not in named:
                raise ValueError(f"static_argnames has {n!r}, but {_name_of(fn)} takes no argument "
                                 f"of that name (it takes {', '.join(sorted(named)) or 'none'})")
        nums = tuple(i % len(positional) if i < 0 and positional else i for i in nums)
    return _normalize_static(fn, nums, names)


def _name_of(fn) -> str:
    return getattr(fn, "__qualname__", None) or type(fn).__name__


def _leaf_paths(tree) -> list[str]:
    """A readable path per array leaf of an (args, kwargs) tree."""
    out: list[str] = []

    def go(t, path):
        if isinstance(t, pytree.Leaf):
            out.append(path)
        elif isinstance(t, pytree.Node):
            keys = t.keys if t.kind is dict else range(len(t.children))
            for k, c in zip(keys, t.children):
                go(c, f"{path}[{k!r}]" if path else "")

    args, kwargs = tree.children
    for i, c in enumerate(args.children):
        go(c, f"argument {i}")
    for k, c in zip(kwargs.keys, kwargs.children):
        go(c, f"argument {k!r}")
    return out


def _aval_text(aval) -> str:
    shape, dtype = aval
    return f"{dtypes.short(dtypes.from_mx(dtype))}[{','.join(map(str, shape))}]"


def _why_built(previous: _Entry | None, entry: _Entry, snap) -> str:
    """What differs between the last entry used and a new one (cache_info's ``last_build``)."""
    if previous is None:
        return "first call"
    tree, avals, layout, savals, device, aliases = entry.key
    otree, oavals, olayout, osavals, odevice, oaliases = previous.key
    if device != odevice:
        return f"device {odevice} -> {device}"
    if tree != otree:
        return _tree_change(otree, tree)
    if avals != oavals:
        for path, a, b in zip(entry.leaf_paths, oavals, avals):
            if a != b:
                return f"{path}: {_aval_text(a)} -> {_aval_text(b)}"
    if layout != olayout:  # state.Snapshot.layout_key: the layouts, their hashes computed once
        return _layout_change(olayout.value, layout.value, snap.names)
    for path, a, b in zip(entry.state_paths, osavals, savals):
        if a != b:
            return f"{path}: {_aval_text(a)} -> {_aval_text(b)}"
    if aliases != oaliases:
        shared = lambda a: {p for i, p in enumerate(entry.state_paths) if a and a[i] != i}  # noqa: E731
        changed = sorted(shared(aliases) ^ shared(oaliases))
        return (f"which state arrays are one object changed ({', '.join(changed[:3])}"
                f"{', ...' if len(changed) > 3 else ''})")
    return "a change of state layout"


def _tree_change(old, new) -> str:
    def go(a, b, path):
        if type(a) is not type(b):
            return f"{path}: {a} -> {b}"
        if isinstance(a, pytree.Static):
            if a != b:
                ta, tb = type(a.value).__name__, type(b.value).__name__
                kinds = f" ({ta} -> {tb})" if ta != tb else ""
                return f"{path}: static value {a.value!r} -> {b.value!r}{kinds}"
            return None
        if isinstance(a, pytree.Node):
            if a.kind is not b.kind or a.keys != b.keys or len(a.children) != len(b.children):
                return f"{path}: structure {a} -> {b}"
            keys = a.keys if a.kind is dict else range(len(a.children))
            for k, ca, cb in zip(keys, a.children, b.children):
                found = go(ca, cb, f"{path}[{k!r}]")
                if found:
                    return found
        return None

    (oa, okw), (na, nkw) = old.children, new.children
    if len(oa.children) != len(na.children) or okw.keys != nkw.keys:
        return f"arguments {old} -> {new}"
    for i, (a, b) in enumerate(zip(oa.children, na.children)):
        found = go(a, b, f"argument {i}")
        if found:
            return found.replace(f"argument {i}[", f"argument {i}[", 1)
    for k, a, b in zip(okw.keys, okw.children, nkw.children):
        found = go(a, b, f"argument {k!r}")
        if found:
            return found
    return f"arguments {old} -> {new}"


def _layout_change(old, new, names) -> str:
    def text(d) -> str:
        if d is state_lib.ARRAY:
            return "an array"
        if isinstance(d, pytree.Static):
            return repr(d.value)
        if isinstance(d, state_lib.Container):
            return f"a {d.cls.__name__}"
        return str(d)

    def go(a, b, path):
        if isinstance(a, state_lib.Container) and isinstance(b, state_lib.Container) and (
                a.kind == b.kind and a.cls is b.cls):
            if a.training != b.training:
                return f"{path}: training {a.training} -> {b.training}"
            if a.frozen != b.frozen:
                return (f"{path}: frozen {sorted(a.frozen or ())} -> "
                        f"{sorted(b.frozen or ())}")
            if a.keys != b.keys:
                return f"{path}: attributes {list(a.keys)} -> {list(b.keys)}"
            for k, ca, cb in zip(a.keys, a.children, b.children):
                found = go(ca, cb, path + state_lib._step(a.kind, k))
                if found:
                    return found
            return None
        if a != b:
            if isinstance(a, pytree.Static) and isinstance(b, pytree.Static):
                return f"{path}: {a.value!r} -> {b.value!r}"
            return f"{path}: {text(a)} -> {text(b)}"
        return None

    for a, b, name in zip(old, new, names):
        found = go(a, b, name)
        if found:
            return found
    return "a change of state layout"


class Traced:
    """A call traced, not run (`Compiled.trace`): ``source`` is its graph; ``graph`` what runs
    on this machine; ``lower(target)`` the kernels and ``explain(target)`` the stages' decisions
    for "metal" or "cuda" (default: the running device's dialect, else Metal). The passes run
    once per target."""

    def __init__(self, compiled: "Compiled", source: Graph):
        self._compiled = compiled
        self.source = source
        self._targets: dict[str | None, tuple] = {}

    @cached_property
    def graph(self) -> Graph:
        c = self._compiled
        return run_passes(self.source, c.passes, hw.target(c.chip), single_kernel=c.single_kernel)[0]

    def _for(self, target: str | None) -> tuple:
        """(kernel target, optimised graph, stage reports) for ``target`` ("metal" or "cuda")."""
        found = self._targets.get(target)
        if found is None:
            c = self._compiled
            ktarget = kernel_target(c.chip, None, target)
            optimized, stages = run_passes(self.source, c.passes, hw.target(c.chip, ktarget.device),
                                           ktarget, c.single_kernel)
            if c.single_kernel:
                check_single_kernel(self.source, optimized, c.passes, c.chip)
            found = self._targets[target] = (ktarget, optimized, stages)
        return found

    def _choose(self, ktarget: hw.Target) -> Chooser | None:
        """With autotune, a schedule an earlier tuning on this device cached (nothing is timed
        while inspecting)."""
        c = self._compiled
        here = hw.target(c.chip)
        built_here = _launches(here) and ktarget == kernel_target(here.chip, here.device)
        return tuner_lib.tuner().lookup if built_here and tuner_lib.enabled(c.autotune) else None

    def lower(self, target: str | None = None) -> Lowered:
        """The kernels a call would launch, for ``target``. Works on any host.

        Raises:
            SingleKernelError: for a ``@kernel`` function that is not exactly one kernel.
        """
        ktarget, optimized, _ = self._for(target)
        kernels, fallbacks = [], []
        for e in optimized.eqns:
            if not is_fused(e):
                continue
            try:
                kernels.append(_lower_region(e, ktarget, self._choose(ktarget))[0])
            except RegionError as err:
                if self._compiled.single_kernel:
                    raise SingleKernelError(f"cannot be one kernel: {err}") from err
                fallbacks.append((e.params["name"], str(err)))
        return Lowered(ktarget.device.backend, optimized, tuple(kernels), tuple(fallbacks))

    def explain(self, target: str | None = None) -> Explanation:
        """What each stage decided for ``target`` and, for what did not fuse, why."""
        ktarget, optimized, stages = self._for(target)
        stages = [replace(st, lines=list(st.lines)) for st in stages]
        kernels, launched = [], []
        for index, e in enumerate(optimized.eqns):
            if is_fused(e):
                try:
                    kernels.append(_lower_region(e, ktarget, self._choose(ktarget))[0])
                except RegionError as err:
                    stages[-1].lines.append(f"{e.params['name']} cannot be generated: {err}")
                    continue
                if (why := unavailable(kernels[-1].name)) is not None:
                    stages[-1].lines.append(f"{e.params['name']} runs as MLX ops: kernel "
                                            f"{kernels[-1].name} cannot run on this GPU: {why}")
                    continue
                launched.append(index)
        _, folded = fold_views(optimized, [(None, e.inputs, e.outputs) for e in optimized.eqns],
                               launched, lambda index, shapes: None)
        if folded:
            stages[-1].lines.append(f"{folded} view(s) around the kernels fold into them where no "
                                    "transformation sees the call (runtime/views)")
        mode = emulating()
        interpreted = (None if not interpreting() else
                       f"{'CUDA' if mode == 'cuda' else 'Metal'} kernel emulator" if mode else
                       "NumPy interpreter")
        return Explanation(self.source, stages, kernels, ktarget, hw.running_device(), interpreted)


# Fast-op primitives a GPU trace holds (on the CPU stream they decompose) whose work a generated
# row kernel does as well: a @kernel function decomposes them, so `rms_norm(x) * gate` can be the
# one kernel its author asked for rather than mx.fast's kernel plus a second one.
DECOMPOSED_FOR_KERNELS = frozenset({"RMSNorm", "LayerNorm"})


def decompose_fast_ops(graph: Graph) -> Graph:
    """Replace each fast-op equation of `DECOMPOSED_FOR_KERNELS` by what MLX's GPU kernel for it
    computes, op for op (the patterns' decomposition: sums divided by the row length, where MLX's
    CPU fallback multiplies by 1 / n and rounds differently)."""
    for e in [e for e in graph.eqns if e.primitive in DECOMPOSED_FOR_KERNELS]:
        graph = replace_subgraph(graph, [e], decompose_norm(e), e.inputs, e.outputs)
    return graph


# Movement ops MLX always evaluates as views of their input (strides, no copy), and those it does
# for a row-contiguous input: after the one kernel they launch nothing.
_VIEWS = frozenset({"Transpose", "ExpandDims", "Squeeze", "Broadcast"})
_CONTIGUOUS_VIEWS = frozenset({"Reshape", "Flatten", "Unflatten"})


def _views_of_kernel_outputs(optimized: Graph, fused: list[Eqn]) -> set[Eqn]:
    """The equations that are views of the kernel's outputs (an output returned transposed, or
    reshaped as it lies in memory)."""
    kernel_outputs = {v for e in fused for v in e.outputs}
    viewed, views = set(kernel_outputs), set()
    for e in optimized.eqns:
        if is_fused(e) or not e.inputs or not all(v in viewed for v in e.inputs):
            continue
        if e.primitive in _VIEWS or (e.primitive in _CONTIGUOUS_VIEWS and e.inputs[0] in kernel_outputs):
            views.add(e)
            viewed.update(e.outputs)
    return views


def check_single_kernel(graph: Graph, optimized: Graph, passes, chip) -> None:
    """Raise `SingleKernelError` naming what keeps ``optimized`` from being one kernel (views of
    its outputs launch nothing, and are allowed)."""
    fused = [e for e in optimized.eqns if is_fused(e)]
    views = _views_of_kernel_outputs(optimized, fused)
    others = [e for e in optimized.eqns if not is_fused(e) and e not in views]
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
