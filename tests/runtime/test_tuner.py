"""The autotuner (runtime/tuner.py) on a machine without a GPU: its search with a fake timer, its
on-disk cache across processes and MLX versions, and the whole path with the NumPy interpreter
as the device."""

from __future__ import annotations

import dataclasses
import io
import json
import os
import pathlib
import subprocess
import sys
import textwrap

import mlx.core as mx

import mlxtriton
from mlxtriton import hw
from mlxtriton.codegen.builder import build
from mlxtriton.codegen.lowering import region_of
from mlxtriton.codegen.schedule import candidates, default
from mlxtriton.graph.fused import is_fused
from mlxtriton.runtime import tuner as tuner_lib
from tests.codegen import codegen_oracle as oracle

ROOT = pathlib.Path(__file__).resolve().parents[2]
H200 = hw.target("h200")


class FavourThreads:
    """A fake device on which a row kernel is fastest at ``best`` threads per row."""

    device = "fake-gpu"

    def __init__(self, best: int = 64, fail: int | None = None):
        self.best, self.fail, self.calls = best, fail, 0

    def time(self, kernel):
        self.calls += 1
        threads = kernel.kernel.arg.threads_per_row
        if threads == self.fail:
            raise RuntimeError("too many resources requested for launch")
        return 1e-3 * (1 + abs(threads.bit_length() - self.best.bit_length()))


def _tuner(tmp_path, timer=None, **kw) -> tuner_lib.Tuner:
    return tuner_lib.Tuner(timer or FavourThreads(), tuner_lib.ScheduleCache(tmp_path), progress=False, **kw)


def test_the_search_finds_what_the_device_favours(tmp_path):
    region = oracle.softmax(shape=(64, 4096))
    start = default(region, H200)
    assert start.threads_per_row != 64
    result = _tuner(tmp_path).tune(region, H200)
    assert result.default == start and result.best.threads_per_row == 64
    assert result.seconds < result.default_seconds and result.speedup > 1
    assert set(result.timed) <= set(candidates(region, H200))
    # one choice at a time, each step one axis from the last best
    assert all(tuner_lib.distance(s, start) >= 1 for s in result.timed if s != start)


def test_the_default_stays_unless_something_beats_it(tmp_path):
    class Flat:
        device = "flat"

        def time(self, kernel):
            return 1e-3

    region = oracle.layer_norm(shape=(8, 1024))
    result = _tuner(tmp_path, Flat()).tune(region, H200)
    assert result.best == result.default and len(result.timed) > 1


def test_schedules_that_fail_on_the_device_are_skipped(tmp_path):
    region = oracle.softmax(shape=(64, 4096))
    timer = FavourThreads(best=64, fail=128)
    result = _tuner(tmp_path, timer).tune(region, H200)
    assert result.errors and all("too many resources" in e for e in result.errors.values())
    assert result.best.threads_per_row != 128


def test_budget_and_candidate_limits_bound_the_search(tmp_path):
    region = oracle.layer_norm(shape=(8, 4096))
    timer = FavourThreads(best=1024)
    result = _tuner(tmp_path, timer, max_candidates=3).tune(region, H200)
    assert len(result.timed) <= 3
    assert len(_tuner(tmp_path, FavourThreads(), budget_s=0.0).tune(region, H200).timed) == 1


def test_choose_caches_and_lookup_reads_without_timing(tmp_path):
    region = oracle.softmax(shape=(64, 4096))
    start = default(region, H200)
    timer = FavourThreads()
    t = _tuner(tmp_path, timer)
    assert t.lookup(region, H200, start) == (start, "default")
    chosen, origin = t.choose(region, H200, start)
    assert origin == "tuned" and chosen.threads_per_row == 64 and len(t.searches) == 1
    calls = timer.calls
    assert t.choose(region, H200, start) == (chosen, "tuned (cached)") and timer.calls == calls
    entry = json.loads(t.cache.path("fake-gpu").read_text())
    (stored,) = entry["entries"].values()
    assert stored["mlx"] == mx.__version__ and stored["schedule"]["threads_per_row"] == 64
    # another shape, dtype or device is another kernel
    other = oracle.softmax(shape=(64, 4096), dtype="bfloat16")
    assert t.lookup(other, H200, default(other, H200))[1] == "default"


def test_a_new_mlx_version_misses_and_drops_the_old_entries(tmp_path, monkeypatch):
    region = oracle.softmax(shape=(64, 4096))
    start = default(region, H200)
    t = _tuner(tmp_path)
    t.choose(region, H200, start)
    monkeypatch.setattr(mx, "__version__", "99.0.0")
    fresh = _tuner(tmp_path)
    assert fresh.lookup(region, H200, start) == (start, "default")
    fresh.choose(oracle.layer_norm(shape=(8, 1024)), H200, default(oracle.layer_norm(shape=(8, 1024)), H200))
    versions = {e["mlx"] for e in json.loads(fresh.cache.path("fake-gpu").read_text())["entries"].values()}
    assert versions == {"99.0.0"}


def test_a_stale_or_illegal_entry_is_tuned_again(tmp_path):
    region = oracle.softmax(shape=(64, 4096))
    start = default(region, H200)
    t = _tuner(tmp_path)
    t.choose(region, H200, start)
    path = t.cache.path("fake-gpu")
    data = json.loads(path.read_text())
    for entry in data["entries"].values():
        entry["schedule"]["threads_per_row"] = 4096  # more than a threadgroup holds
    path.write_text(json.dumps(data))
    assert _tuner(tmp_path).lookup(region, H200, start) == (start, "default")


_PROCESS = textwrap.dedent("""
    import sys
    from mlxtriton import hw
    from mlxtriton.codegen.schedule import default
    from mlxtriton.runtime import tuner as tuner_lib
    from tests.codegen import codegen_oracle as oracle

    class Timer:
        device = "fake-gpu"
        def time(self, kernel):
            if sys.argv[2] == "read":
                raise AssertionError("a cached kernel is timed again")
            return 1.0 + abs(kernel.kernel.arg.threads_per_row - 64)

    region = oracle.softmax(shape=(64, 4096))
    target = hw.target("h200")
    t = tuner_lib.Tuner(Timer(), tuner_lib.ScheduleCache(sys.argv[1]), progress=False)
    schedule, origin = t.choose(region, target, default(region, target))
    print(origin, schedule.threads_per_row)
""")


def test_the_cache_survives_a_new_process(tmp_path):
    script = tmp_path / "tune.py"
    script.write_text(_PROCESS)
    env = dict(os.environ, PYTHONPATH=str(ROOT))

    def run(mode):
        return subprocess.run([sys.executable, str(script), str(tmp_path / "cache"), mode], env=env,
                              cwd=ROOT, capture_output=True, text=True, check=True).stdout.split()

    assert run("tune") == ["tuned", "64"]
    assert run("read") == ["tuned", "(cached)", "64"]


def test_progress_is_shown_while_tuning(tmp_path):
    class Terminal(io.StringIO):
        def isatty(self):
            return True

    stream = Terminal()
    bar = tuner_lib._Progress("softmax", 10, stream)
    bar.update(3, 2e-5, 3e-5)
    assert "mlxtriton autotune softmax: [######" in stream.getvalue() and "3/10 schedules" in stream.getvalue()
    region = oracle.softmax(shape=(64, 4096))
    result = _tuner(tmp_path).tune(region, H200)
    bar.close(result)
    assert f"({result.speedup:.2f}x)" in stream.getvalue()


def test_the_switch(monkeypatch):
    monkeypatch.delenv(tuner_lib.AUTOTUNE_ENV, raising=False)
    assert not tuner_lib.enabled() and tuner_lib.enabled(True)
    monkeypatch.setenv(tuner_lib.AUTOTUNE_ENV, "1")
    assert tuner_lib.enabled() and not tuner_lib.enabled(False)
    assert mlxtriton.optimize(lambda x: x, autotune=True).autotune is True
    assert mlxtriton.fuse(mlxtriton.optimize(lambda x: x, autotune=False)).autotune is False


def test_optimize_tunes_with_the_interpreter_as_the_device(tmp_path, monkeypatch):
    """The whole path on any host: kernels run in the NumPy interpreter, which the tuner times;
    the winners are cached, a new optimize reads them, and explain says where each came from."""
    monkeypatch.setenv("MLXTRITON_INTERPRET", "1")
    monkeypatch.setenv(tuner_lib.CACHE_ENV, str(tmp_path))
    previous = tuner_lib.use(tuner_lib.Tuner(tuner_lib.InterpreterTimer(), budget_s=2.0,
                                             max_candidates=6, progress=False))
    try:
        x = mx.random.normal((4, 256))
        f = mlxtriton.optimize(lambda x: mx.softmax(x * 2.0, axis=-1), autotune=True)
        assert mx.allclose(f(x), mx.softmax(x * 2.0, axis=-1), atol=1e-6).item()
        assert len(tuner_lib.tuner().searches) == 1
        assert "schedule tuned (cached)" in str(f.explain(x))
        g = mlxtriton.optimize(lambda x: mx.softmax(x * 2.0, axis=-1), autotune=True)
        assert mx.allclose(g(x), f(x)).item() and len(tuner_lib.tuner().searches) == 1
        plain = mlxtriton.optimize(lambda x: mx.softmax(x * 2.0, axis=-1))
        assert "schedule default" in str(plain.explain(x))
        # the backward's kernels are tuned too
        grad = mx.grad(lambda x: f(x).sum())(x)
        assert grad.shape == x.shape and len(tuner_lib.tuner().searches) >= 2
    finally:
        tuner_lib.use(previous)


def test_the_tune_command(tmp_path, monkeypatch, capsys):
    from mlxtriton.__main__ import main

    source = tmp_path / "model.py"
    source.write_text("import mlx.core as mx\n\ndef f(x):\n    return mx.softmax(x * 2.0, axis=-1)\n")
    monkeypatch.setenv(tuner_lib.CACHE_ENV, str(tmp_path / "cache"))
    monkeypatch.delenv("MLXTRITON_INTERPRET", raising=False)
    assert main(["tune", f"{source}:f", "--shape", "4,128"]) == 2  # no GPU: nothing to time
    assert "no GPU here" in capsys.readouterr().err
    monkeypatch.setenv("MLXTRITON_INTERPRET", "1")
    assert main(["tune", f"{source}:f", "--shape", "4,128", "--budget", "1", "--max-candidates", "4"]) == 0
    out = capsys.readouterr().out
    assert "1 kernel(s) tuned on interpreter" in out and "us ->" in out
    assert main(["tune", f"{source}:f", "--shape", "4,128"]) == 0
    assert "every kernel was in the cache already" in capsys.readouterr().out


def test_the_beam_reaches_a_schedule_two_choices_away(tmp_path):
    # A column softmax whose fastest schedule takes fewer columns to a threadgroup and keeps the
    # column in registers: either choice alone is no faster than the default, so a search that
    # only steps from its best stops at the default; the beam searches around the runners-up.
    g = mlxtriton.optimize(lambda x: mx.softmax(x, axis=0), chip="h200").graph(mx.zeros((1024, 8192)))
    (region,) = [region_of(e)[0] for e in g.eqns if is_fused(e)]
    # searched from the column streamed (the default holds it in registers since the rules
    # learned that choice)
    start = dataclasses.replace(default(region, H200), threads_per_row=16, rows_per_group=32,
                                registers=())
    assert start in candidates(region, H200)
    first = build(region, start).arg

    class FavoursHeldColumns:
        device = "fake-gpu"

        def time(self, kernel):
            s = kernel.kernel.arg
            if s.rows_per_group == 8:  # fewer lanes to a column: slower
                held = s.resident and not s.staged
                return 0.5e-3 if held else (1.01e-3 if s.threads_per_row >= 16 else 1.1e-3)
            return 1e-3 if s == first else 1.2e-3

    found = _tuner(tmp_path, FavoursHeldColumns(), max_candidates=1000, budget_s=600).tune(region, H200, start)
    assert found.best.rows_per_group == 8 and found.best.registers and found.speedup > 1.9
    narrow = _tuner(tmp_path, FavoursHeldColumns(), max_candidates=1000, budget_s=600, beam=1)
    assert narrow.tune(region, H200, start).best == start


class FavourGroups:
    """A fake device on which a template kernel is fastest at ``best`` threads a threadgroup."""

    device = "fake-gpu"

    def __init__(self, best: int = 256):
        self.best, self.calls = best, 0

    def time(self, kernel):
        self.calls += 1
        return 1e-3 * (1 + abs(kernel.threadgroup[0] - self.best) / 128)


def _projection_region():
    from mlxtriton.fusion.projections import group_projections

    def f(x, wq, wk):
        return x @ wq.T, x @ wk.T

    graph = mlxtriton.trace(f)(mx.ones((1, 64)), mx.ones((64, 64)), mx.ones((32, 64)))
    graph, _ = group_projections(graph, 8, 1)
    (region,) = [e for e in graph.eqns if is_fused(e)]
    return region


def test_the_projection_kernels_schedule_is_tuned_and_cached(tmp_path):
    from mlxtriton.codegen.lowering import lower_fused
    from mlxtriton.codegen.schedule import kernel_target, projection_candidates

    region, target = _projection_region(), kernel_target("h200")
    default_kernel, _ = lower_fused(region, target)
    assert default_kernel.threadgroup == (128, 1, 1) and default_kernel.origin == "default"
    timer = FavourGroups()
    t = _tuner(tmp_path, timer)
    kernel, _ = lower_fused(region, target, t.choose)
    assert kernel.threadgroup == (256, 1, 1) and kernel.origin == "tuned"
    assert timer.calls == len(projection_candidates(1, (64, 32), target)) + 2  # and the recheck
    (search,) = t.searches
    columns, groups, unroll = search.best.as_dict()["template"]
    assert groups == 8 and search.speedup > 1
    assert search.best.describe() == (f"columns a SIMD group {columns}, SIMD groups 8, "
                                      f"vectors in flight {unroll}")
    # a new process's tuner reads the winner back without timing anything
    fresh = FavourGroups()
    again, _ = lower_fused(region, target, _tuner(tmp_path, fresh).choose)
    assert (again.source, again.origin, fresh.calls) == (kernel.source, "tuned (cached)", 0)
    cached, _ = lower_fused(region, target, _tuner(tmp_path, FavourGroups()).lookup)
    assert cached.source == kernel.source


def test_every_projection_candidate_is_legal_and_the_default_first():
    from mlxtriton.codegen.schedule import kernel_target, projection_candidates, projection_schedule

    target = kernel_target("h100")
    space = projection_candidates(8, (96, 48), target)
    assert space[0] == projection_schedule(8, (96, 48), target) and len(set(space)) == len(space)
    assert all(96 % c == 0 and 48 % c == 0 for c, _, _ in space)
    assert {c for c, _, _ in space} == {1, 2, 4, 8} and {c for c, _, _ in projection_candidates(1, (6,), target)} == {1, 2}


def test_the_interpreter_leaves_a_template_kernel_at_its_default(tmp_path):
    from mlxtriton.codegen.lowering import lower_fused
    from mlxtriton.codegen.schedule import kernel_target

    kernel, _ = lower_fused(_projection_region(), kernel_target("h200"),
                            _tuner(tmp_path, tuner_lib.InterpreterTimer()).choose)
    assert kernel.origin == "default" and kernel.threadgroup == (128, 1, 1)


def test_the_search_reaches_a_split_column_bounded_for_two_threadgroups_a_core(tmp_path):
    # The column softmax's column split between registers and threadgroup memory is one choice
    # away from the default (held in registers); its launch bound for two threadgroups per core
    # one more. A device on which the split pays, and pays more bounded.
    region = oracle.softmax_columns(shape=(4096, 16384))
    h100 = hw.target("h100")
    start = default(region, h100)
    assert start.registers and not start.staged_in_registers

    class FavoursSplitColumns:
        device = "fake-gpu"

        def time(self, kernel):
            s = kernel.kernel.arg
            if s.staged_in_registers and (s.threads_per_row, s.rows_per_group) == (64, 8):
                return 0.6e-3 if s.launch_min_groups == 2 else 0.9e-3
            return 1e-3 if s.resident and not s.staged else 1.1e-3

    tuner = _tuner(tmp_path, FavoursSplitColumns(), max_candidates=1000, budget_s=600)
    found = tuner.tune(region, h100)
    assert found.best.staged == ("x",) and found.best.staged_in_registers in (16, 32)
    assert (found.best.launch_bound, found.best.launch_min_groups) == (512, 2)
    assert tuner_lib.distance(found.best, start) == 2 and found.speedup > 1.6
