"""Targets the codegen tests build kernels for, and their schedules.

``metal`` and ``cuda`` are the dialects' default chips on their own devices; ``tiny`` is an Apple
GPU cut down to 64 threads and 8-byte vectors whose kernels stream every multi-pass input (the
default schedule without the cache pass), so that small threadgroups and streamed rows run in
every test that samples it.
"""

from __future__ import annotations

import contextlib
import dataclasses

from mlxtriton import hw
from mlxtriton.codegen.builder import build
from mlxtriton.codegen.region import Region
from mlxtriton.codegen.schedule import Schedule, candidates, default, kernel_target

_TINY = dataclasses.replace(hw.profile("m1"), key="tiny", name="tiny", max_threads_per_threadgroup=64,
                            max_vector_lanes=2, max_vector_bytes=8)

TARGETS: dict[str, hw.Target] = {
    "metal": kernel_target("m3", "m3"),
    "cuda": kernel_target("h200", "h200"),
    "tiny": hw.Target(chip=_TINY, device=_TINY),
}


def target(chip: str) -> hw.Target:
    """A name of `TARGETS`, or a chip name (on its own device)."""
    return TARGETS[chip] if chip in TARGETS else kernel_target(chip, chip)


def schedule(region: Region, chip: str) -> Schedule:
    return default(region, target(chip), on_chip=chip != "tiny")


def built(region: Region, chip: str):
    """The kernel of ``region`` under its default schedule for ``chip``."""
    return build(region, schedule(region, chip))


def split_schedule(region: Region, chip: str) -> Schedule:
    """The default layout of a column reduction with its column staged, half of each lane's
    elements in registers (`Schedule.staged_in_registers`), bounded for two threadgroups per core
    where the chip takes a bound: one of its candidates."""
    t = target(chip)
    base = default(region, t)
    owned = build(region, base).arg.elements_per_thread
    layout = (base.threads_per_row, base.rows_per_group)
    found = [s for s in candidates(region, t) if s.staged_in_registers == owned // 2
             and (s.threads_per_row, s.rows_per_group) == layout]
    return max(found, key=lambda s: (s.launch_min_groups, -s.kept_registers))


def split_beside_kept(region: Region, chip: str) -> Schedule:
    """`oracle.softmax_weighted`'s default with x in registers and y split: its first two
    vectors a thread in registers, the rest in threadgroup memory."""
    base = default(region, target(chip))
    return dataclasses.replace(base, registers=("x",), staged=("y",),
                               staged_in_registers=2 * base.vector_width)


@contextlib.contextmanager
def tuned(family: str | None = "sm_90", **changes):
    """The tuning data of ``family``'s architecture (None: of every architecture) with
    ``changes``, while the block runs: what a rule does when its table row says otherwise."""
    rows = [hw.tuning.tuning_of_family(family)] if family else list(hw.tuning.TABLE.values())
    saved = dict(hw.tuning._BY_FAMILY)
    for row in rows:
        for f in row.families:
            hw.tuning._BY_FAMILY[f] = dataclasses.replace(row, **changes)
    try:
        yield
    finally:
        hw.tuning._BY_FAMILY.clear()
        hw.tuning._BY_FAMILY.update(saved)
