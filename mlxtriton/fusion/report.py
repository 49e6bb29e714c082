"""Fusion layer: what the fusion passes decided and why, as plain frozen data that `explain` prints.

Equations are named by their position in the graph the pass received and their primitive, so a
report reads against ``print(graph)``. May import the standard library only.
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace


@dataclass(frozen=True)
class RegionReport:
    """One fused region: the kernel it becomes.

    Attributes:
        name: the Fused equation's name (also the kernel's name stem).
        kind: ``"pointwise"``, ``"row"`` or ``"column"``.
        shape: the domain the kernel iterates over; ``reduced`` its reduced axes.
        equations: positions, in the input graph, of the equations the region computes.
        primitives: their primitives, in order.
        folded: movement primitives folded into the region's index arithmetic.
        inputs, outputs: the region's arrays as type strings (``f32[4,8]``).
    """

    name: str
    kind: str
    shape: tuple[int, ...]
    reduced: tuple[int, ...]
    equations: tuple[int, ...]
    primitives: tuple[str, ...]
    folded: tuple[str, ...]
    inputs: tuple[str, ...]
    outputs: tuple[str, ...]

    def as_text(self) -> str:
        red = f", reducing axes {self.reduced}" if self.reduced else ""
        ops = ", ".join(self.primitives)
        folded = f"; folds {', '.join(self.folded)}" if self.folded else ""
        return (
            f"{self.name}: {self.kind} over {list(self.shape)}{red}: {len(self.primitives)} ops "
            f"({ops}){folded}; reads {', '.join(self.inputs) or 'nothing'}; "
            f"writes {', '.join(self.outputs)}"
        )


@dataclass(frozen=True)
class Unfused:
    """An equation left as an MLX op, and why."""

    equation: int
    primitive: str
    signature: str
    reason: str

    def as_text(self) -> str:
        return f"#{self.equation} {self.primitive} {self.signature}: {self.reason}"


@dataclass(frozen=True)
class Boundary:
    """An equation that could not join the region of an equation it reads, and why."""

    equation: int
    primitive: str
    region_of: int  # position of one equation of the region it could not join
    reason: str

    def as_text(self) -> str:
        return f"#{self.equation} {self.primitive} did not join the region of #{self.region_of}: {self.reason}"


@dataclass(frozen=True)
class LayoutDecision:
    """How a fused region reads one of its inputs through movement ops.

    ``strided``: the movement ops stay in the body as index arithmetic; ``copy``: they move out of
    the body, so MLX materializes the moved array once and the kernel reads it contiguously.
    """

    region: str
    input: str
    folded: tuple[str, ...]
    decision: str
    reason: str

    def as_text(self) -> str:
        return f"{self.region} reads {self.input} through {', '.join(self.folded)}: {self.decision} ({self.reason})"


@dataclass(frozen=True)
class FusionReport:
    """Everything the fusion passes decided about one graph.

    Example:
        >>> import mlx.core as mx, mlxtriton
        >>> from mlxtriton.fusion import fuse_with_report
        >>> g = mlxtriton.trace(lambda x, w: mx.softmax(x @ w, axis=-1))(mx.ones((4, 8)), mx.ones((8, 8)))
        >>> fused, report = fuse_with_report(g)
        >>> [r.kind for r in report.regions], [u.primitive for u in report.unfused]
        (['row'], ['Matmul'])
    """

    regions: tuple[RegionReport, ...] = ()
    unfused: tuple[Unfused, ...] = ()
    boundaries: tuple[Boundary, ...] = ()
    layout: tuple[LayoutDecision, ...] = field(default=())
    splits: tuple = ()  # split.SplitDecision: reductions split in two levels before clustering
    partials: tuple = ()  # partials.PartialsDecision: column sums moved into row kernels

    def with_layout(self, decisions) -> "FusionReport":
        return replace(self, layout=self.layout + tuple(decisions))

    def as_text(self) -> str:
        lines = [d.as_text() for d in self.splits] + [d.as_text() for d in self.partials]
        lines.append(f"{len(self.regions)} fused region(s)")
        lines += ["  " + r.as_text() for r in self.regions]
        if self.unfused:
            lines.append(f"{len(self.unfused)} equation(s) left as MLX ops")
            lines += ["  " + u.as_text() for u in self.unfused]
        if self.boundaries:
            lines.append("region boundaries")
            lines += ["  " + b.as_text() for b in self.boundaries]
        if self.layout:
            lines.append("layout")
            lines += ["  " + d.as_text() for d in self.layout]
        return "\n".join(lines)

    __str__ = as_text
