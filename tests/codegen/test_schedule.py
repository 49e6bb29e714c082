"""Schedules as values (codegen/schedule.py): every legal candidate computes what the oracle
computes, the default is always one of them, and ``build`` refuses what does not fit."""

from __future__ import annotations

import dataclasses
import json

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from mlxtriton import hw
from mlxtriton.codegen.builder import ScheduleError, analyse, build
from mlxtriton.codegen.interpret import interpret
from mlxtriton.codegen.kernel_ir import kernel_params
from mlxtriton.codegen.schedule import Schedule, candidates, default, legal, staged_bytes
from tests.codegen import codegen_oracle as oracle
from tests.codegen.targets import TARGETS, target

FLOATS = ("float32", "float16", "bfloat16")
# Lengths around a SIMD-group, odd ones, and one past the tiny chip's threadgroup.
LENGTHS = (1, 2, 3, 5, 31, 32, 33, 64, 100, 257)


def _shape(family: str, rows: int, length: int):
    if family == "pointwise":
        return (rows, 3, length)
    return (length, rows) if family == "colsum" else (rows, length)


def _region(family, rows, length, dtype):
    return oracle.FAMILIES[family](shape=_shape(family, rows, length), dtype=dtype)


def _check(region, schedule, seed=0):
    inputs = oracle.random_inputs(region, seed)
    kernel = build(region, schedule)
    got = interpret(kernel, inputs)
    want = oracle.evaluate(region, inputs)
    outputs = [p for p in kernel_params(kernel) if p.role == "output"]
    for g, w, p in zip(got, want, outputs):
        oracle.assert_close(g, w, p.dtype)


@settings(max_examples=80, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(family=st.sampled_from(sorted(oracle.FAMILIES)), rows=st.integers(1, 4),
       length=st.sampled_from(LENGTHS), dtype=st.sampled_from(FLOATS),
       chip=st.sampled_from(sorted(TARGETS)), on_chip=st.booleans(), data=st.data())
def test_every_candidate_matches_the_oracle(family, rows, length, dtype, chip, on_chip, data):
    if family == "rmsnormgrad" and rows % 2:
        rows += 1  # blocks of rows: an even count makes blocks of 2 or more
    region = _region(family, rows, length, dtype)
    schedule = data.draw(st.sampled_from(candidates(region, target(chip), on_chip)))
    _check(region, schedule, data.draw(st.integers(0, 99)))


@pytest.mark.parametrize("family", sorted(oracle.FAMILIES))
def test_all_candidates_of_a_small_shape_match_the_oracle(family):
    """Exhaustively, for one shape per family (rows of 33: a SIMD-group and one more)."""
    region = _region(family, 4 if family == "rmsnormgrad" else 3, 33, "float32")
    kernels = {}
    for s in candidates(region, target("cuda")):
        kernels.setdefault(build(region, s), s)
    assert len(kernels) > 1
    for s in kernels.values():
        _check(region, s)


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(family=st.sampled_from(sorted(oracle.COLUMN_FAMILIES)),
       shape=st.lists(st.integers(1, 40), min_size=2, max_size=3).map(tuple),
       dtype=st.sampled_from(FLOATS), chip=st.sampled_from(sorted(TARGETS)), on_chip=st.booleans(),
       data=st.data())
def test_every_candidate_of_a_column_reduction_matches_the_oracle(family, shape, dtype, chip, on_chip,
                                                                  data):
    if family == "softmaxtransposed":
        shape = shape[:2]
    region = oracle.COLUMN_FAMILIES[family](shape=shape, dtype=dtype)
    found = candidates(region, target(chip), on_chip)
    assert found[0] == default(region, target(chip), on_chip)
    assert legal(region, found[0], target(chip)) is None
    _check(region, data.draw(st.sampled_from(found)), data.draw(st.integers(0, 99)))


@settings(max_examples=120, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(family=st.sampled_from(sorted(oracle.FAMILIES)), rows=st.sampled_from([1, 2, 64, 4096]),
       length=st.integers(1, 1 << 17), dtype=st.sampled_from(FLOATS),
       chip=st.sampled_from(["h200", "h100", "m1", "m3", "m5", "tiny"]), on_chip=st.booleans())
def test_the_default_is_always_legal(family, rows, length, dtype, chip, on_chip):
    if family == "rmsnormgrad" and rows == 1:
        rows = 2
    shape = _shape(family, rows, length)
    if np.prod(shape) > 1 << 26:
        shape = shape[:-1] + (max(1, (1 << 26) // int(np.prod(shape[:-1]))),)
    region = oracle.FAMILIES[family](shape=shape, dtype=dtype)
    t = target(chip)
    s = default(region, t, on_chip)
    assert legal(region, s, t) is None, (s, legal(region, s, t))
    built = build(region, s).arg
    assert built.threadgroup_size <= t.device.max_threads_per_threadgroup
    if not on_chip:
        assert built.kind == "pointwise" or built.on_chip in ("stream", "none")


@pytest.mark.parametrize("family", ["softmax", "layernorm", "crossentropymlx", "rmsnormgrad", "colsum",
                                    "pointwise"])
@pytest.mark.parametrize("chip", ["h200", "m3"])
def test_the_default_is_the_first_candidate(family, chip):
    for shape in ((64, 4096), (8, 65536), (4096, 32)):
        region = oracle.FAMILIES[family](shape=(2,) + shape if family == "pointwise" else shape)
        found = candidates(region, target(chip))
        assert found[0] == default(region, target(chip))
        assert len(set(found)) == len(found)


def test_candidates_respect_the_devices_limits():
    region = oracle.softmax(shape=(8, 65536))
    for chip in ("h200", "m3", "tiny"):
        t = target(chip)
        for s in candidates(region, t):
            k = build(region, s).arg
            assert k.threadgroup_size <= t.device.max_threads_per_threadgroup
            assert k.vector_width * 4 <= t.device.max_vector_bytes
            if k.threadgroup_size > hw.derive(t.chip, 4, t.device).unbounded_threads:
                assert k.launch_bound == k.threadgroup_size


def test_staging_and_registers_are_per_input_choices():
    # a layer norm reads x in three passes: in registers, staged, or streamed, as asked
    region = oracle.layer_norm(shape=(8, 4096))
    base = default(region, target("h200"))
    assert base.registers == ("x",)
    found = {(s.registers, s.staged) for s in candidates(region, target("h200"))}
    assert {(("x",), ()), ((), ("x",)), ((), ())} <= found
    for registers, staged, on_chip in ((("x",), (), "registers"), ((), ("x",), "threadgroup"),
                                       ((), (), "stream")):
        k = build(region, dataclasses.replace(base, registers=registers, staged=staged)).arg
        assert k.on_chip == on_chip and k.passes == 3


def test_build_refuses_a_schedule_that_does_not_fit():
    region = oracle.softmax(shape=(8, 100))
    s = default(region, target("h200"))
    for change, message in ((dict(kind="pointwise"), "a pointwise schedule for a row kernel"),
                            (dict(vector_width=8), "does not divide rows of 100"),
                            (dict(vector_width=3), "not a power of two"),
                            (dict(registers=("y",)), "'y' is not an input"),
                            (dict(registers=("x",), staged=("x",)), "both in registers and staged"),
                            (dict(walk="diagonal"), "unknown walk"),
                            (dict(launch_bound=7), "launch bound 7")):
        with pytest.raises(ScheduleError, match=message):
            build(region, dataclasses.replace(s, **change))
    assert "at most 1024" in legal(region, dataclasses.replace(s, threads_per_row=2048), target("h200"))
    assert "launch bound" in legal(region, dataclasses.replace(
        s, threads_per_row=1024, rows_per_group=1, launch_bound=0), target("h200"))


def test_schedules_round_trip_through_json():
    for family in ("softmax", "rmsnormgrad", "pointwise"):
        region = oracle.FAMILIES[family](shape=(2, 8, 64) if family == "pointwise" else (8, 64))
        for s in candidates(region, target("h200"))[:20]:
            assert Schedule.from_dict(json.loads(json.dumps(s.as_dict()))) == s
    with pytest.raises(ValueError, match="unknown schedule fields"):
        Schedule.from_dict({"kind": "row", "warp_size": 64})


def test_without_the_cache_pass_every_candidate_streams():
    region = oracle.layer_norm(shape=(8, 1024))
    for s in candidates(region, target("h200"), on_chip=False):
        assert not s.registers and not s.staged and not s.kept_registers


def split_column_softmax(chip: str = "h100", in_registers: int = 32):
    """Softmax over axis 0 of 4096 x 16384 float32 (the column kernel of docs/results.md) and its
    default's layout with ``in_registers`` of each lane's 64 elements in registers, the rest in
    threadgroup memory, bounded for two threadgroups per core."""
    region = oracle.softmax_columns(shape=(4096, 16384))
    base = default(region, target(chip))
    return region, dataclasses.replace(base, registers=(), staged=("x",),
                                       staged_in_registers=in_registers, launch_bound=512,
                                       launch_min_groups=2)


def test_a_held_column_may_be_split_between_registers_and_threadgroup_memory():
    region, half = split_column_softmax()
    t = target("h100")
    base = default(region, t)
    # the default holds the column in registers: 64 lanes x 8 columns, 64 values a lane
    assert (base.threads_per_row, base.rows_per_group, base.walk) == (64, 8, "interleaved")
    assert base.registers == ("x",) and not base.staged and base.staged_in_registers == 0
    found = candidates(region, t)
    assert found[0] == base
    splits = {(s.staged_in_registers, s.launch_bound, s.launch_min_groups) for s in found
              if s.staged and (s.threads_per_row, s.rows_per_group) == (64, 8)}
    assert {(0, 0, 0), (32, 0, 0), (32, 512, 2), (16, 0, 0), (16, 512, 2)} <= splits
    assert half in found and legal(region, half, t) is None
    # 32 float32 a thread of 512 in threadgroup memory: 64 KB, two threadgroups within an SM's
    # 228 KB
    a = analyse(region)
    assert staged_bytes(a, half) == 32 * 512 * 4
    assert staged_bytes(a, dataclasses.replace(half, staged_in_registers=16)) == 48 * 512 * 4
    built = build(region, half).arg
    assert (built.on_chip, built.staged, built.staged_in_registers) == ("threadgroup", ("x",), 32)
    assert ("x: 32 of 64 elements a thread in registers, the rest in threadgroup memory"
            in built.describe())
    assert "staged x (first 32 elements a thread in registers)" in half.describe()
    assert Schedule.from_dict(json.loads(json.dumps(half.as_dict()))) == half


def test_an_inconsistent_split_is_refused():
    region, half = split_column_softmax()
    t = target("h100")
    for change, message in ((dict(staged=()), "but nothing is staged"),
                            (dict(staged_in_registers=64), "none left to stage"),
                            (dict(staged_in_registers=-1), "-1 staged elements")):
        with pytest.raises(ScheduleError, match=message):
            build(region, dataclasses.replace(half, **change))
        assert message in legal(region, dataclasses.replace(half, **change), t)
    # a vector is split whole
    rows = oracle.softmax(shape=(8, 4096))
    s = dataclasses.replace(default(rows, t), registers=(), staged=("x",), staged_in_registers=6)
    assert s.vector_width == 4 and "not whole vectors of 4" in legal(rows, s, t)
    # more than the device's threadgroup memory: an M3 has 32 KB
    region, split = split_column_softmax("metal")
    assert "bytes of threadgroup memory staged" in legal(region, split, target("metal"))
    assert not any(s.staged for s in candidates(region, target("metal"))
                   if (s.threads_per_row, s.rows_per_group) == (64, 8))


@pytest.mark.parametrize("family", ["softmaxcolumns", "channelmoments"])
def test_every_split_of_a_small_column_reduction_matches_the_oracle(family):
    """Each distinct kernel of the split candidates (the property tests above sample them too)."""
    region = oracle.COLUMN_FAMILIES[family](shape=(33, 5))
    kernels = {}
    for s in candidates(region, target("cuda")):
        if s.staged_in_registers:
            kernels.setdefault(build(region, s), s)
    assert any(s.launch_min_groups == 2 for s in kernels.values())
    assert len({k.arg.staged_in_registers for k in kernels}) > 2
    for s in kernels.values():
        _check(region, s)
