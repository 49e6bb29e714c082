"""Patterns layer: what the pattern stage did, as plain frozen data that ``explain`` prints.
Equations are named by their position in the graph the stage received (``print(graph)``).
May import the standard library only.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass


@dataclass(frozen=True)
class Fired:
    """A rule that rewrote the graph at equation ``equation``."""

    rule: str
    group: str
    equation: int
    primitive: str
    detail: str = ""

    def as_text(self) -> str:
        return f"{self.rule} at #{self.equation} ({self.primitive})" + (f": {self.detail}" if self.detail else "")


@dataclass(frozen=True)
class Recognised:
    """A shape a rule recognised and deliberately left as it is (what happens to it instead)."""

    rule: str
    group: str
    equation: int
    primitive: str
    text: str

    def as_text(self) -> str:
        return f"{self.rule} at #{self.equation} ({self.primitive}): {self.text}"


@dataclass(frozen=True)
class NearMiss:
    """A rule whose shape is there but that did not fire, and why."""

    rule: str
    group: str
    equation: int
    primitive: str
    reason: str

    def as_text(self) -> str:
        return f"{self.rule} at #{self.equation} ({self.primitive}): {self.reason}"


# Groups whose rewrites are many and small: explain counts them instead of listing each one.
SUMMARISED_GROUPS = frozenset({"cleanup"})


@dataclass(frozen=True)
class PatternReport:
    fired: tuple[Fired, ...] = ()
    recognised: tuple[Recognised, ...] = ()
    near_misses: tuple[NearMiss, ...] = ()

    def rules_fired(self) -> Counter:
        """How often each rule fired."""
        return Counter(f.rule for f in self.fired)

    def lines(self) -> list[str]:
        """One line per model-level rewrite, recognised shape and near miss; clean-ups counted."""
        out = [f"rewrote {f.as_text()}" for f in self.fired if f.group not in SUMMARISED_GROUPS]
        small = Counter(f.rule for f in self.fired if f.group in SUMMARISED_GROUPS)
        if small:
            out.append("clean-ups: " + ", ".join(f"{name} x{n}" for name, n in sorted(small.items())))
        out += [f"recognised {r.as_text()}" for r in self.recognised]
        out += [f"near miss: {m.as_text()}" for m in self.near_misses]
        return out or ["no pattern matched"]
