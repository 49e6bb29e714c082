"""Codegen layer: `Fused` equations -> generated kernels, and the on-chip caching pass (`cache`).

`cache` is a graph -> graph pass: for each multi-pass row region it decides whether the row stays
in registers across passes (when it fits the chip's on-chip budget) or is streamed from memory with
one extra read per pass, and records the decision in the equation's ``schedule`` param, where the
printer, `explain` and `.lower()` show it. Lowering honours the recorded decision; a region the
pass never saw is streamed. May import mlxtriton.graph, mlxtriton.hw and codegen.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any

import mlx.core as mx

from mlxtriton import hw
from mlxtriton.codegen.builder import RegionError, ScheduleParams, build
from mlxtriton.codegen.from_graph import region_from_graph
from mlxtriton.codegen.region import Region
from mlxtriton.codegen.render import LoweredKernel, render
from mlxtriton.graph import dtypes
from mlxtriton.graph.core import Eqn, Graph
from mlxtriton.graph.fused import is_fused


@dataclass(frozen=True)
class CacheDecision:
    """What `cache` decided for one region: ``on_chip`` is "registers" (inputs read by several
    passes stay in registers), "stream" (they are read again from memory) or "none" (one pass)."""

    region: str
    on_chip: str
    resident: tuple[str, ...]
    streamed: tuple[str, ...]
    budget_bytes: int
    reason: str

    def as_text(self) -> str:
        return f"{self.region}: {self.on_chip} ({self.reason})"


# The chip each dialect is tuned for when the named chip runs no kernels (the CPU): an M3 for
# Metal, the H200 for CUDA (the machines this project measures on).
DEFAULT_CHIP = {"metal": "m3", "cuda": "h200"}


def kernel_target(chip: Any = "auto", device: Any = None, dialect: str | None = None
                  ) -> tuple[hw.Target, str]:
    """The target whose profile shapes kernels, and the dialect they are written in.

    The dialect follows the device (or ``dialect`` when given: rendering for another machine);
    tuning follows ``chip``, or the dialect's default chip where ``chip`` is not a GPU.

    Raises:
        ValueError: an unknown dialect.
    """
    t = hw.target(chip, device)
    dialect = dialect or t.dialect or "metal"
    if dialect not in DEFAULT_CHIP:
        raise ValueError(f"unknown kernel target {dialect!r}; use 'metal' or 'cuda'")
    chip_profile = t.chip if t.chip.is_gpu else hw.profile(DEFAULT_CHIP[dialect])
    device_profile = t.device if t.device.backend == dialect else chip_profile
    if device_profile.backend != dialect:
        device_profile = hw.profile(DEFAULT_CHIP[dialect])
    return hw.Target(chip=chip_profile, device=device_profile), dialect


def _schedule_params(target: hw.Target, registers: bool):
    """Schedule numbers per (element size, row length); without ``registers``, no on-chip
    budget, so multi-pass rows are streamed."""

    def params(itemsize: int, row_length: int | None) -> ScheduleParams:
        p = ScheduleParams.from_hw(target.derive(itemsize, row_length))
        return p if registers else dataclasses.replace(p, keep_resident=False)

    return params


def _region(eqn: Eqn) -> tuple[Region, tuple[mx.array, ...]]:
    return region_from_graph(eqn.params["body"], eqn.params["name"])


def cache_with_report(graph: Graph, chip: Any = "auto", device: Any = None, dialect: str | None = None
                      ) -> tuple[Graph, tuple[CacheDecision, ...]]:
    """Decide on-chip residency for every fused region (the "M3" caching transform).

    Args:
        graph: a graph whose regions came from `mlxtriton.fusion.fuse`.
        chip, device, dialect: as `kernel_target`: the chip's register budget (larger on Apple9+
            with dynamic caching) decides, clamped to the running device's limits.

    Returns:
        ``(graph, decisions)``; each Fused equation's ``schedule`` param records its decision.

    A region codegen cannot write gets a decision saying why and keeps ``schedule=None``.
    """
    target, _ = kernel_target(chip, device, dialect)
    params = _schedule_params(target, registers=True)
    eqns, decisions = [], []
    for e in graph.eqns:
        if not is_fused(e):
            eqns.append(e)
            continue
        try:
            region, _ = _region(e)
            s = build(region, params).arg
        except RegionError as err:  # the runtime runs such a region as MLX ops; say why here
            decisions.append(CacheDecision(e.params["name"], "none", (), (), 0,
                                           f"no kernel for this region: {err}"))
            eqns.append(e)
            continue
        itemsize = max((dtypes.itemsize(i.dtype) for i in region.inputs), default=4)
        sp = params(itemsize, s.row_length if s.kind == "row" else None)
        # a row whose threads were capped holds its larger share (as builder.build decides)
        capped = min(sp.max_row_threads, sp.preferred_row_threads)
        per_thread = 4 * (max(sp.resident_registers, sp.max_resident_registers)
                          if s.kind == "row" and s.threads_per_row >= capped
                          else sp.resident_registers)
        budget = per_thread * s.threads_per_row * s.rows_per_group
        if s.on_chip == "threadgroup":
            reason = (f"rows of {s.row_length} exceed the {per_thread} B/thread register budget of "
                      f"{target.chip.name}; {', '.join(s.staged)} staged in its "
                      f"{sp.staging_bytes} B of threadgroup memory instead of read again")
        elif s.on_chip == "registers":
            reason = (f"{', '.join(s.resident)} fit{'s' if len(s.resident) == 1 else ''} the "
                      f"{per_thread} B/thread register budget of {target.chip.name}")
        elif s.on_chip == "stream":
            reason = (f"rows of {s.row_length} exceed the {per_thread} B/thread register budget of "
                      f"{target.chip.name}: one extra read per pass")
        else:
            reason = "one pass over its inputs: nothing to keep"
        decisions.append(CacheDecision(e.params["name"], s.on_chip, s.resident, s.streamed, budget, reason))
        schedule = (("on_chip", s.on_chip), ("resident", s.resident), ("streamed", s.streamed))
        eqns.append(Eqn(e.primitive, e.inputs, e.outputs, e.params.set(schedule=schedule)))
    return graph.replace(eqns=tuple(eqns)), tuple(decisions)


def cache(graph: Graph, chip: Any = "auto", device: Any = None) -> Graph:
    """`cache_with_report` without the decisions."""
    return cache_with_report(graph, chip, device)[0]


def lower_fused(eqn: Eqn, target: hw.Target, dialect: str
                ) -> tuple[LoweredKernel, tuple[mx.array, ...]]:
    """The kernel of one Fused equation for a `kernel_target`, and the constant arrays it takes
    after the equation's inputs. The ``schedule`` param (from `cache`) chooses registers or
    streaming; a region `cache` never saw is streamed.

    Raises:
        RegionError: the region cannot become one kernel; the message names the op and why.
    """
    schedule = dict(eqn.params["schedule"] or ())
    region, extra = _region(eqn)
    params = _schedule_params(target, registers=schedule.get("on_chip") in ("registers", "threadgroup"))
    return render(build(region, params), dialect), extra


def row_fits_on_chip(kernel: LoweredKernel, target: hw.Target) -> bool:
    """Whether a row kernel's rows fit the registers its threads may hold (as ``build`` counts
    them: elements per thread of the most threads a row takes): then a pass more over the row
    costs no memory traffic; otherwise it re-reads the row."""
    s = kernel.kernel.arg
    if s.kind != "row":
        return True
    itemsize = max((dtypes.itemsize(d) for d in kernel.input_dtypes), default=4)
    p = _schedule_params(target, registers=True)(itemsize, s.row_length)
    per_thread = max(p.resident_registers * 4 // itemsize, p.max_resident_registers)
    return s.row_length <= per_thread * p.max_row_threads


__all__ = ["CacheDecision", "cache", "cache_with_report", "kernel_target", "lower_fused", "row_fits_on_chip",
           "DEFAULT_CHIP"]
