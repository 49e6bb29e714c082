"""Runtime layer: the autotuner. It times a generated kernel's candidate schedules on the device
that will run it and keeps the fastest, as Triton's ``autotune`` and tinygrad's BEAM do.

``optimize(fn, autotune=True)`` (or ``MLXTRITON_AUTOTUNE=1``) asks it for the schedule of every
kernel a call builds. It searches `mlxtriton.codegen.schedule.candidates` outward from the default
as a beam search: first the schedules one choice away (threads per row, vector width, what stays
on chip, ...), then in each round those one choice away from any of the ``beam`` fastest timed so
far (so a choice that only pays together with another, such as fewer columns to a threadgroup
and then the column kept in registers, is reached), each kernel compiled once and launched many
times per synchronisation, until ``patience`` rounds in a row improve nothing, ``max_candidates``
are timed or ``budget_s`` seconds are spent. A schedule replaces the default only where it is
faster beyond noise, checked again at the end. Winners go to an on-disk cache (`ScheduleCache`)
keyed by the device's name, the MLX version, the kernel's structure (its region: ops, shapes,
dtypes) and the target, which later processes read instead of tuning again.
``python -m mlxtriton tune MODULE:FUNCTION`` fills it ahead of time; ``explain`` says which
schedules came from it.
May import every layer below the public API.
"""

from __future__ import annotations

import datetime
import hashlib
import json
import os
import pathlib
import sys
import tempfile
import threading
import time
from dataclasses import dataclass, field
from typing import Any, Callable, Protocol

import mlx.core as mx
import numpy as np

from mlxtriton import hw
from mlxtriton.codegen.builder import RegionError, build
from mlxtriton.codegen.interpret import interpret, numpy_dtype
from mlxtriton.codegen.lowering import TemplateKernel
from mlxtriton.codegen.region import Region
from mlxtriton.codegen.render import LoweredKernel, render
from mlxtriton.codegen.schedule import Schedule, candidates, legal
from mlxtriton.graph import dtypes
from mlxtriton.runtime.launch import interpreting, launcher

AUTOTUNE_ENV = "MLXTRITON_AUTOTUNE"
CACHE_ENV = "MLXTRITON_CACHE_DIR"
# What a cached entry means; a change to the schedule model makes older entries misses.
CACHE_FORMAT = 1


def enabled(flag: bool | None = None) -> bool:
    """Whether kernels are tuned: ``flag`` where given, else ``MLXTRITON_AUTOTUNE`` (1/true/on)."""
    if flag is not None:
        return bool(flag)
    return os.environ.get(AUTOTUNE_ENV, "").strip().lower() in ("1", "true", "yes", "on")


# ---------------------------------------------------------------------------------------------
# timing


class Timer(Protocol):
    """Times one kernel: ``device`` names what it runs on (the cache's key), ``time(kernel)``
    returns seconds per launch, raising where the kernel cannot run."""

    device: str

    def time(self, kernel: LoweredKernel) -> float: ...


def random_inputs(kernel: LoweredKernel, seed: int = 0) -> list[np.ndarray]:
    """Arrays for a kernel's inputs, in its dtypes (``numpy_dtype``): floats drawn from
    N(0, 1); integers 0, so that an index is in range whatever it indexes; bools False."""
    rng = np.random.default_rng(seed)
    out = []
    for shape, dtype in zip(kernel.input_shapes, kernel.input_dtypes):
        if dtype in dtypes.FLOATING:
            out.append(rng.standard_normal(shape).astype(np.float32).astype(numpy_dtype(dtype)))
        else:
            out.append(np.zeros(shape, numpy_dtype(dtype)))
    return out


class DeviceTimer:
    """Kernels launched through MLX on the default device: after a first launch (compiling it),
    ``repeats`` batches of launches queued with ``mx.async_eval`` and synchronised once, each
    batch at least ``batch_s`` long; the fastest batch's time per launch."""

    def __init__(self, batch_s: float = 0.01, repeats: int = 3):
        info = mx.device_info() if mx.is_available(mx.gpu) else {}
        self.device = str(info.get("device_name") or hw.running_device().name)
        self.batch_s, self.repeats = batch_s, repeats
        self._arrays: dict[tuple, list[mx.array]] = {}

    def _arrays_for(self, kernel: LoweredKernel) -> list[mx.array]:
        key = (kernel.input_shapes, kernel.input_dtypes)
        if key not in self._arrays:
            arrays = [mx.array(a.astype(np.float32) if d == "bfloat16" else a).astype(dtypes.to_mx(d))
                      for a, d in zip(random_inputs(kernel), kernel.input_dtypes)]
            mx.eval(arrays)
            self._arrays = {key: arrays}  # one region's inputs at a time
        return self._arrays[key]

    def time(self, kernel: LoweredKernel) -> float:
        run = launcher(kernel)
        args = self._arrays_for(kernel)
        mx.eval(run(*args))  # compiles; a kernel this GPU cannot run raises here
        mx.synchronize()
        reps, best = 1, float("inf")
        while True:  # as many launches as fill one batch
            seconds = time_queued(run, args, reps)
            if seconds * reps >= self.batch_s or reps >= 1 << 14:
                break
            reps = min(1 << 14, max(2 * reps, int(reps * self.batch_s / max(seconds * reps, 1e-6))))
        best = seconds
        for _ in range(self.repeats - 1):
            best = min(best, time_queued(run, args, reps))
        return best


def time_queued(run: Callable, args, reps: int) -> float:
    """Seconds per call of ``reps`` calls of ``run(*args)`` queued with ``mx.async_eval`` and
    synchronised once (the last outputs kept alive so their buffers are not reused mid-batch)."""
    live: list = []
    start = time.perf_counter()
    for _ in range(reps):
        out = run(*args)
        live = live[-2:] + [out]
        mx.async_eval(out)
    mx.synchronize()
    return (time.perf_counter() - start) / reps


class InterpreterTimer:
    """The NumPy interpreter of the kernel IR as the "device" (``MLXTRITON_INTERPRET=1``): what
    it times is NumPy's work, not a GPU's, but the tuner's whole path runs on any host."""

    device = "interpreter"

    def __init__(self) -> None:
        self._arrays: dict[tuple, list[np.ndarray]] = {}

    def time(self, kernel: LoweredKernel) -> float:
        if kernel.kernel is None:
            raise ValueError(f"{kernel.name} is a template kernel: no kernel IR to interpret")
        key = (kernel.input_shapes, kernel.input_dtypes)
        args = self._arrays.setdefault(key, random_inputs(kernel))
        start = time.perf_counter()
        interpret(kernel.kernel, args)
        return time.perf_counter() - start


# ---------------------------------------------------------------------------------------------
# the on-disk cache


def cache_dir() -> pathlib.Path:
    """Where tuned schedules are kept: ``$MLXTRITON_CACHE_DIR/schedules``, else
    ``$XDG_CACHE_HOME/mlxtriton/schedules`` (``~/.cache``)."""
    root = os.environ.get(CACHE_ENV)
    base = (pathlib.Path(root) if root else
            pathlib.Path(os.environ.get("XDG_CACHE_HOME") or pathlib.Path.home() / ".cache") / "mlxtriton")
    return base / "schedules"


def _slug(text: str) -> str:
    return "".join(c if c.isalnum() else "-" for c in text.lower()).strip("-") or "device"


class ScheduleCache:
    """Tuned schedules on disk, one JSON file per device; entries keyed by `ScheduleCache.key`.
    Writes merge with what other processes wrote meanwhile and replace the file atomically."""

    def __init__(self, directory: pathlib.Path | str | None = None):
        self.directory = pathlib.Path(directory) if directory is not None else cache_dir()
        self._lock = threading.Lock()
        self._loaded: dict[str, dict] = {}

    def path(self, device: str) -> pathlib.Path:
        return self.directory / f"{_slug(device)}.json"

    @staticmethod
    def key(device: str, region: Region, target: hw.Target, on_chip: bool,
            mlx_version: str | None = None) -> str:
        """The entry's key: the device's name, the MLX version, the kernel's structure (the
        region's inputs, ops, shapes, dtypes, outputs: not its name), the chip whose rules
        give the default, the device profile whose limits bound the candidates, whether inputs
        may stay on chip, and the cache format."""
        structure = repr((region.inputs, region.ops, region.outputs, region.output_names))
        text = json.dumps([CACHE_FORMAT, device, mlx_version or mx.__version__, target.chip.key,
                           target.device.key, on_chip, structure])
        return hashlib.sha256(text.encode()).hexdigest()[:32]

    @staticmethod
    def template_key(device: str, template: TemplateKernel, target: hw.Target,
                     mlx_version: str | None = None) -> str:
        """A template kernel's entry key: as `key`, with the text naming what it computes as
        its structure."""
        text = json.dumps([CACHE_FORMAT, device, mlx_version or mx.__version__, target.chip.key,
                           target.device.key, "template", template.structure])
        return hashlib.sha256(text.encode()).hexdigest()[:32]

    def _read(self, device: str) -> dict:
        try:
            data = json.loads(self.path(device).read_text())
        except (OSError, ValueError):
            return {}
        if not isinstance(data, dict) or data.get("format") != CACHE_FORMAT:
            return {}
        return data.get("entries", {})

    def get(self, device: str, key: str) -> dict | None:
        with self._lock:
            if device not in self._loaded:
                self._loaded[device] = self._read(device)
            return self._loaded[device].get(key)

    def put(self, device: str, key: str, entry: dict) -> None:
        """Add one entry; entries of other MLX versions are dropped on the way (they can never
        be read again)."""
        with self._lock:
            entries = {k: v for k, v in self._read(device).items()
                       if v.get("mlx") == mx.__version__}
            entries[key] = entry
            self._loaded[device] = entries
            try:
                self.directory.mkdir(parents=True, exist_ok=True)
                fd, tmp = tempfile.mkstemp(dir=self.directory, suffix=".tmp")
                with os.fdopen(fd, "w") as fh:
                    json.dump({"format": CACHE_FORMAT, "device": device, "entries": entries}, fh,
                              indent=1, sort_keys=True)
                os.replace(tmp, self.path(device))
            except OSError as err:  # a read-only home: tuning still serves this process
                print(f"mlxtriton autotune: cannot write {self.path(device)}: {err}", file=sys.stderr)


# ---------------------------------------------------------------------------------------------
# the search


# Axes of the schedule space: a neighbour of a schedule differs in exactly one.
AXES = (("vector_width",), ("threads_per_row", "rows_per_group", "walk", "threadgroup_size",
                             "launch_bound", "launch_min_groups"),
        ("registers", "staged", "staged_in_registers"), ("kept_registers",), ("prefetch",),
        ("block_sums_shared",), ("unroll",), ("online_chunked",), ("hoist_row_loads",),
        ("hoist_block_loads",))


def distance(a: Schedule, b: Schedule) -> int:
    """How many axes of the schedule space two schedules differ in."""
    return sum(any(getattr(a, f) != getattr(b, f) for f in axis) for axis in AXES)


@dataclass
class Tuning:
    """One kernel's search: every schedule timed (seconds; None where it failed), the default's
    time, the winner and its time."""

    region: str
    default: Schedule
    best: Schedule
    seconds: float
    default_seconds: float
    timed: dict[Schedule, float | None] = field(default_factory=dict)
    errors: dict[Schedule, str] = field(default_factory=dict)

    @property
    def speedup(self) -> float:
        return self.default_seconds / self.seconds if self.seconds else 1.0


class _Progress:
    """One line on stderr while a kernel is tuned; redrawn in place on a terminal."""

    def __init__(self, label: str, total: int, stream=None, enabled: bool = True):
        self.stream = stream or sys.stderr
        self.label, self.total, self.enabled = label, total, enabled
        self.live = enabled and getattr(self.stream, "isatty", lambda: False)()

    def update(self, done: int, best: float, default: float) -> None:
        if not self.live:
            return
        width = 20
        filled = min(width, width * done // max(1, self.total))
        self.stream.write(f"\rmlxtriton autotune {self.label}: [{'#' * filled}{'.' * (width - filled)}] "
                          f"{done}/{self.total} schedules, best {best * 1e6:.1f} us "
                          f"(default {default * 1e6:.1f} us)   ")
        self.stream.flush()

    def close(self, result: Tuning) -> None:
        if not self.enabled:
            return
        self.stream.write(("\r" if self.live else "") +
                          f"mlxtriton autotune {self.label}: {len(result.timed)} schedules, "
                          f"{result.seconds * 1e6:.1f} us against the default's "
                          f"{result.default_seconds * 1e6:.1f} us ({result.speedup:.2f}x)\n")
        self.stream.flush()


class Tuner:
    """Chooses kernels' schedules by timing them (see the module's docstring).

    Args:
        timer: what times a kernel (`DeviceTimer` on a GPU, `InterpreterTimer` under
            ``MLXTRITON_INTERPRET=1``; any object with ``device`` and ``time(kernel)``).
        cache: the on-disk cache (None: a `ScheduleCache` in `cache_dir`).
        budget_s: seconds one kernel's search may take, compiling included.
        max_candidates: most schedules timed per kernel.
        margin: how much faster than the best so far a schedule must be to replace it (noise).
        beam: how many of the fastest schedules timed so far each round searches around.
        patience: rounds in a row that may find nothing faster before the search stops.
        progress: whether to show a progress line on stderr.
        refresh: search again even where the cache has an entry (and replace it).

    ``searches`` lists every search this tuner ran (a `Tuning` each).

    Example:
        >>> class Fake:  # prefers 64 threads per row
        ...     device = "fake"
        ...     def time(self, k):
        ...         return 1 + abs(k.kernel.arg.threads_per_row - 64)
        >>> import tempfile
        >>> t = Tuner(Fake(), ScheduleCache(tempfile.mkdtemp()), progress=False)
    """

    def __init__(self, timer: Timer, cache: ScheduleCache | None = None, budget_s: float = 20.0,
                 max_candidates: int = 48, margin: float = 0.02, progress: bool = True,
                 refresh: bool = False, beam: int = 4, patience: int = 1):
        self.timer, self.cache = timer, cache if cache is not None else ScheduleCache()
        self.budget_s, self.max_candidates, self.margin = budget_s, max_candidates, margin
        self.beam, self.patience = beam, patience
        self.progress, self.refresh = progress, refresh
        self.searches: list[Tuning] = []
        self._lock = threading.RLock()

    @property
    def device(self) -> str:
        return self.timer.device

    def lookup(self, region: Region, target: hw.Target, recorded: Schedule, on_chip: bool = True
               ) -> tuple[Schedule, str]:
        """The cached winner for this kernel on this device, else ``recorded`` (nothing timed)."""
        if isinstance(region, TemplateKernel):
            entry = self.cache.get(self.device, ScheduleCache.template_key(self.device, region, target))
            chosen = tuple(entry["template"]) if entry is not None else None
            return (chosen, "tuned (cached)") if chosen in region.candidates else (recorded, "default")
        entry = self.cache.get(self.device, ScheduleCache.key(self.device, region, target, on_chip))
        if entry is not None:
            try:
                chosen = Schedule.from_dict(entry["schedule"])
            except (ValueError, TypeError, KeyError):
                chosen = None
            if chosen is not None and legal(region, chosen, target) is None:
                return chosen, "tuned (cached)"
        return recorded, "default"

    def choose(self, region: Region, target: hw.Target, recorded: Schedule, on_chip: bool = True
               ) -> tuple[Schedule, str]:
        """The cached winner, or a search's, stored for later processes."""
        if not self.refresh:
            chosen, origin = self.lookup(region, target, recorded, on_chip)
            if origin != "default":
                return chosen, origin
        if isinstance(region, TemplateKernel):
            return self._choose_template(region, target, recorded)
        with self._lock:
            result = self.tune(region, target, recorded, on_chip)
            self.searches.append(result)
            key = ScheduleCache.key(self.device, region, target, on_chip)
            self.cache.put(self.device, key, {
                "mlx": mx.__version__, "region": region.name, "date": datetime.date.today().isoformat(),
                "chip": target.chip.key, "schedule": result.best.as_dict(),
                "seconds": result.seconds, "default_seconds": result.default_seconds,
                "timed": len(result.timed)})
        return result.best, "tuned"

    def tune(self, region: Region, target: hw.Target, start: Schedule | None = None,
             on_chip: bool = True) -> Tuning:
        """Search ``region``'s schedules on ``target`` outward from ``start`` (default: the
        rules' default) and return what was timed; nothing is cached.

        Raises:
            RegionError: the region cannot be one kernel, or not even ``start`` ran.
        """
        space = candidates(region, target, on_chip)
        start = start if start in space else space[0]
        # the source the device compiles: its dialect (the chip's where the device is the CPU
        # and the interpreter times the kernels)
        backend = target.dialect
        if backend is None:
            raise RegionError(f"{region.name}: no kernel dialect for chip {target.chip.name} on "
                              f"{target.device.name}")
        deadline = time.perf_counter() + self.budget_s
        timed: dict[Schedule, float | None] = {}
        errors: dict[Schedule, str] = {}
        by_kernel: dict[Any, float | None] = {}  # schedules that build one kernel time once
        progress = _Progress(region.name, min(self.max_candidates, len(space)), enabled=self.progress)

        def measure(s: Schedule) -> float | None:
            try:
                kernel = build(region, s)
            except ValueError as err:  # RegionError, ScheduleError
                timed[s], errors[s] = None, _first_line(err)
                return None
            if kernel not in by_kernel:
                try:
                    by_kernel[kernel] = self.timer.time(render(kernel, backend))
                except (RuntimeError, ValueError) as err:  # fails to compile or launch
                    by_kernel[kernel], errors[s] = None, _first_line(err)
            timed[s] = by_kernel[kernel]
            return timed[s]

        default_seconds = measure(start)
        if default_seconds is None:
            raise RegionError(f"{region.name}: its starting schedule does not run: {errors[start]}")
        best, best_seconds = start, default_seconds
        order = {s: i for i, s in enumerate(space)}
        stale = 0
        while time.perf_counter() < deadline and len(timed) < self.max_candidates:
            # the beam: the fastest schedules timed so far, the best first; then what is one
            # choice away from each, the best's neighbours first
            ranked = sorted((t, order[s], s) for s, t in timed.items() if t is not None)
            frontier = [best] + [s for *_, s in ranked if s != best][:self.beam - 1]
            todo = list(dict.fromkeys(s for f in frontier for s in space
                                      if s not in timed and distance(s, f) == 1))
            if not todo:
                break  # every neighbour of the beam timed
            improved = False
            for s in todo:
                if time.perf_counter() >= deadline or len(timed) >= self.max_candidates:
                    break
                seconds = measure(s)
                if seconds is not None and seconds < best_seconds * (1 - self.margin):
                    best, best_seconds, improved = s, seconds, True
                progress.update(len(timed), best_seconds, default_seconds)
            stale = 0 if improved else stale + 1
            if stale > self.patience:
                break  # nothing around the beam improves: a local optimum
        if best != start:
            # once more, side by side: the winner must still beat the default beyond noise
            again = self.timer.time(render(build(region, best), backend))
            default_again = self.timer.time(render(build(region, start), backend))
            best_seconds, default_seconds = min(best_seconds, again), min(default_seconds, default_again)
            if best_seconds >= default_seconds * (1 - self.margin):
                best, best_seconds = start, default_seconds
        result = Tuning(region.name, start, best, best_seconds, default_seconds, timed, errors)
        progress.close(result)
        return result


    def _choose_template(self, template: TemplateKernel, target: hw.Target, start: tuple
                         ) -> tuple[tuple, str]:
        with self._lock:
            try:
                result = self.tune_template(template, start)
            except RegionError:  # not timeable here (the interpreter has no template kernels)
                return start, "default"
            self.searches.append(result)
            self.cache.put(self.device, ScheduleCache.template_key(self.device, template, target), {
                "mlx": mx.__version__, "region": template.name,
                "date": datetime.date.today().isoformat(), "chip": target.chip.key,
                "template": list(result.best), "seconds": result.seconds,
                "default_seconds": result.default_seconds, "timed": len(result.timed)})
        return tuple(result.best), "tuned"

    def tune_template(self, template: TemplateKernel, start: tuple | None = None) -> Tuning:
        """Time a template kernel's candidates (a small space: every one, in order, within the
        budget and ``max_candidates``) and return what was timed; nothing is cached.

        Raises:
            RegionError: not even ``start`` (default: the first candidate) ran.
        """
        start = start if start in template.candidates else template.candidates[0]
        deadline = time.perf_counter() + self.budget_s
        timed: dict[tuple, float | None] = {}
        errors: dict[tuple, str] = {}
        progress = _Progress(template.name, min(self.max_candidates, len(template.candidates)),
                             enabled=self.progress)

        def measure(s: tuple) -> float | None:
            try:
                timed[s] = self.timer.time(template.render(s))
            except (RuntimeError, ValueError) as err:  # fails to render, compile or launch
                timed[s], errors[s] = None, _first_line(err)
            return timed[s]

        default_seconds = measure(start)
        if default_seconds is None:
            raise RegionError(f"{template.name}: its starting schedule does not run: {errors[start]}")
        best, best_seconds = start, default_seconds
        for s in template.candidates:
            if time.perf_counter() >= deadline or len(timed) >= self.max_candidates:
                break
            if s in timed:
                continue
            seconds = measure(s)
            if seconds is not None and seconds < best_seconds * (1 - self.margin):
                best, best_seconds = s, seconds
            progress.update(len(timed), best_seconds, default_seconds)
        if best != start:  # once more, side by side, as for generated kernels
            best_seconds = min(best_seconds, self.timer.time(template.render(best)))
            default_seconds = min(default_seconds, self.timer.time(template.render(start)))
            if best_seconds >= default_seconds * (1 - self.margin):
                best, best_seconds = start, default_seconds
        named = {s: TemplateSchedule(s, template) for s in timed}
        result = Tuning(template.name, named[start], named[best], best_seconds, default_seconds,
                        {named[s]: t for s, t in timed.items()}, {named[s]: e for s, e in errors.items()})
        progress.close(result)
        return result


class TemplateSchedule(tuple):
    """A template kernel's schedule as a search reports it: its numbers (equal to the plain
    tuple), described and written out as a `Schedule` is."""

    def __new__(cls, values, template: TemplateKernel):
        out = super().__new__(cls, values)
        out.template = template
        return out

    def describe(self) -> str:
        return self.template.describe(tuple(self))

    def as_dict(self) -> dict:
        return {"template": list(self)}


def _first_line(err: Exception) -> str:
    text = str(err).strip()
    return text.splitlines()[0] if text else type(err).__name__


_TUNER: Tuner | None = None
_TUNER_LOCK = threading.Lock()


def default_timer() -> Timer:
    """The running GPU's `DeviceTimer`, or the `InterpreterTimer` under ``MLXTRITON_INTERPRET``."""
    return InterpreterTimer() if interpreting() else DeviceTimer()


def tuner() -> Tuner:
    """This process's tuner: timing with `default_timer`, with the on-disk cache of
    `cache_dir` (`use` installs another)."""
    global _TUNER
    with _TUNER_LOCK:
        if _TUNER is None:
            _TUNER = Tuner(default_timer())
        return _TUNER


def use(chosen: Tuner | None) -> Tuner | None:
    """Make ``chosen`` this process's tuner (None: a default one on next use); returns the one
    it replaces."""
    global _TUNER
    with _TUNER_LOCK:
        previous, _TUNER = _TUNER, chosen
        return previous


__all__ = ["AUTOTUNE_ENV", "AXES", "DeviceTimer", "InterpreterTimer", "ScheduleCache", "TemplateSchedule", "Timer", "Tuner",
           "Tuning", "cache_dir", "default_timer", "distance", "enabled", "random_inputs", "tuner", "use"]
