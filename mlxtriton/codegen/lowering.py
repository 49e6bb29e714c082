"""Codegen layer: `Fused` equations -> generated kernels, and the on-chip caching pass (`cache`).

`cache` is a graph -> graph pass: for each fused region it picks the default schedule for the
target, multi-pass inputs on chip where the chip's rules keep them there (registers, else
threadgroup memory) and streamed otherwise, and records the `Schedule` in the equation's
``schedule`` param, where the printer, `explain` and ``.lower()`` show it. Lowering builds the
recorded schedule (or one the runtime's tuner chose); a region the pass never saw is streamed.
Every question about a lowered kernel (on chip? how many passes?) is answered by its built
schedule (``kernel.arg``). May import mlxtriton.graph, mlxtriton.hw and codegen.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from typing import Any, Callable

import mlx.core as mx

from mlxtriton import hw
from mlxtriton.codegen.attention import render_attention
from mlxtriton.codegen.projection import render_projection
from mlxtriton.codegen.builder import RegionError, build
from mlxtriton.codegen.from_graph import region_from_graph
from mlxtriton.codegen.region import Region
from mlxtriton.codegen.render import LoweredKernel, render
from mlxtriton.codegen.schedule import (DEFAULT_CHIP, Schedule, attention_blocks, default, holds_rows,
                                       kernel_target, projection_candidates, projection_schedule)
from mlxtriton.graph import attention, projection
from mlxtriton.graph.core import Eqn, Graph
from mlxtriton.graph.fused import TEMPLATE_KINDS, is_fused

@dataclass(frozen=True)
class TemplateKernel:
    """A template kernel's schedule space, for a `Chooser`: its region's name, text naming what
    it computes (a tuner's cache key), its candidate schedules (the chip's default first) and the
    kernel each renders."""

    name: str
    structure: str
    candidates: tuple[tuple[int, ...], ...]
    render: Callable[[tuple[int, ...]], LoweredKernel]
    axes: tuple[str, ...] = ()  # what each number of a schedule is

    def describe(self, schedule: tuple[int, ...]) -> str:
        return ", ".join(f"{a} {v}" for a, v in zip(self.axes, schedule))


# What chooses a fused region's schedule at lowering, where the caller has a better answer than
# the recorded one (the runtime's tuner): (region, target, recorded schedule) -> (schedule,
# origin); for a template kernel (TemplateKernel, target, default) -> (its schedule, origin).
Chooser = Callable[[Any, hw.Target, Any], tuple[Any, str]]


@dataclass(frozen=True)
class CacheDecision:
    """What `cache` decided for one region: ``on_chip`` is "registers" (inputs read by several
    passes stay in registers), "threadgroup" (in threadgroup memory), "stream" (they are read
    again from memory) or "none" (one pass)."""

    region: str
    on_chip: str
    resident: tuple[str, ...]
    streamed: tuple[str, ...]
    reason: str

    def as_text(self) -> str:
        return f"{self.region}: {self.on_chip} ({self.reason})"


_PROJECTION = ("the projection kernel: each weight read once in 16-byte vectors, {r} column(s) a SIMD "
               "group, {g} SIMD groups a threadgroup, {u} vectors a lane in flight")
_ATTENTION = ("the attention kernel: a query row per threadgroup, online softmax in registers, "
              "k and v read once where the mask shows them")


def region_of(eqn: Eqn) -> tuple[Region, tuple[mx.array, ...]]:
    """The region of a Fused equation, and the constant arrays it takes after its inputs."""
    return region_from_graph(eqn.params["body"], eqn.params["name"])


def recorded_schedule(eqn: Eqn, region: Region, target: hw.Target) -> Schedule:
    """The schedule `cache` recorded in the equation, else the streaming default."""
    recorded = eqn.params["schedule"]
    return recorded if isinstance(recorded, Schedule) else default(region, target, on_chip=False)


def _reason(s, chip: hw.Profile) -> str:
    """Why a built schedule holds what it holds, in its own terms."""
    threads = f"{s.threads_per_row * s.rows_per_group} threads"
    if s.on_chip == "threadgroup":
        return (f"rows of {s.row_length} miss the registers of the {chip.name}'s {threads}; "
                f"{s.staging()} instead of read again")
    if s.on_chip == "registers":
        staged = f", {s.staging()}" if s.staged else ""
        return (f"{', '.join(n for n in s.resident if n not in s.staged)} held in the registers "
                f"of {threads} on the {chip.name} ({s.elements_per_thread} elements each){staged}")
    if s.on_chip == "stream":
        return (f"rows of {s.row_length} miss the {chip.name}'s registers and threadgroup memory: "
                f"{', '.join(s.streamed)} read again by each of {s.passes} passes")
    return "one pass over its inputs: nothing to keep"


def cache_with_report(graph: Graph, target: hw.Target) -> tuple[Graph, tuple[CacheDecision, ...]]:
    """Decide on-chip residency for every fused region (the "M3" caching transform).

    Args:
        graph: a graph whose regions came from `mlxtriton.fusion.fuse`.
        target: the `kernel_target`: the chip's rules (a larger register budget on Apple9+ with
            dynamic caching) within the running device's limits.

    Returns:
        ``(graph, decisions)``; each Fused equation's ``schedule`` param records its `Schedule`.

    A region codegen cannot write gets a decision saying why and keeps ``schedule=None``.
    """
    eqns, decisions = [], []
    for e in graph.eqns:
        if not is_fused(e):
            eqns.append(e)
            continue
        if e.params["kind"] == attention.KIND:
            blocks, _ = attention_blocks(attention.spec_of(e.params["body"]).keys, target)
            why = _ATTENTION if blocks == 1 else (
                f"{_ATTENTION}; the keys split over {blocks} threadgroups a row, merged by a second kernel")
            decisions.append(CacheDecision(e.params["name"], "none", (), (), why))
            eqns.append(e)
            continue
        if e.params["kind"] == projection.KIND:
            spec = projection.spec_of(e.params["body"])
            r, g, u = projection_schedule(spec.rows, spec.columns, target)
            why = _PROJECTION.format(r=r, g=g, u=u)
            decisions.append(CacheDecision(e.params["name"], "none", (), (), why))
            eqns.append(e)
            continue
        try:
            region, _ = region_of(e)
            schedule = default(region, target)
            s = build(region, schedule).arg
        except RegionError as err:  # the runtime runs such a region as MLX ops; say why here
            decisions.append(CacheDecision(e.params["name"], "none", (), (),
                                           f"no kernel for this region: {err}"))
            eqns.append(e)
            continue
        decisions.append(CacheDecision(e.params["name"], s.on_chip, s.resident, s.streamed,
                                       _reason(s, target.chip)))
        eqns.append(Eqn(e.primitive, e.inputs, e.outputs, e.params.set(schedule=schedule)))
    return graph.replace(eqns=tuple(eqns)), tuple(decisions)


def cache(graph: Graph, chip: Any = "auto", device: Any = None) -> Graph:
    """`cache_with_report` for a chip and device, without the decisions."""
    return cache_with_report(graph, kernel_target(chip, device))[0]


def lower_fused(eqn: Eqn, target: hw.Target, choose: Chooser | None = None
                ) -> tuple[LoweredKernel, tuple[mx.array, ...]]:
    """The kernel of one Fused equation for a `kernel_target` (its dialect is the device's), and
    the constant arrays it takes after the equation's inputs. The schedule is the one `cache`
    recorded (a region `cache` never saw is streamed), or what ``choose`` makes of it; the
    kernel's ``origin`` says which.

    Raises:
        RegionError: the region cannot become one kernel; the message names the op and why.
    """
    if eqn.params["kind"] == attention.KIND:
        spec = attention.spec_of(eqn.params["body"])
        blocks, simd_groups = attention_blocks(spec.keys, target)
        return render_attention(spec, target.device.backend, key_blocks=blocks,
                                block_simd_groups=simd_groups), ()
    if eqn.params["kind"] == projection.KIND:
        spec = projection.spec_of(eqn.params["body"])
        backend = target.device.backend
        space = projection_candidates(spec.rows, spec.columns, target)
        chosen, origin = space[0], "default"
        if choose is not None:
            template = TemplateKernel(eqn.params["name"], repr(spec), space,
                                      lambda s: render_projection(spec, backend, *s),
                                      ("columns a SIMD group", "SIMD groups", "vectors in flight"))
            chosen, origin = choose(template, target, chosen)
        return replace(render_projection(spec, backend, *chosen), origin=origin), ()
    region, extra = region_of(eqn)
    schedule, origin = recorded_schedule(eqn, region, target), "default"
    if choose is not None:
        schedule, origin = choose(region, target, schedule)
    kernel = render(build(region, schedule), target.device.backend)
    return replace(kernel, origin=origin), extra


def rows_held(eqn: Eqn, target: hw.Target) -> bool:
    """Whether the default schedule holds a Fused equation's rows in registers when its passes
    read them several times (`mlxtriton.codegen.schedule.holds_rows`): then a pass more over
    them is free.

    Raises:
        RegionError: the region cannot become one kernel.
    """
    return eqn.params["kind"] not in TEMPLATE_KINDS and holds_rows(region_of(eqn)[0], target)


__all__ = ["CacheDecision", "Chooser", "DEFAULT_CHIP", "TemplateKernel", "cache", "cache_with_report", "kernel_target",
           "lower_fused", "recorded_schedule", "region_of", "rows_held"]
