"""A memory plan: one decision per block, with its predicted peak and step time."""

from __future__ import annotations

import io
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from rich.console import Console
from rich.table import Table

from engage.memory.budget import format_bytes
from engage.memory.decisions import Decision
from engage.memory.profile import Profile


@dataclass
class Plan:
    """The decisions a solver chose and what the profile predicts for them.

    Examples:
        >>> plan = Plan(names=["h.0"], decisions=[Decision.RECOMPUTE], budget=2**30, predicted_peak=2**29,
        ...             predicted_time=0.1, solver="dp")
        >>> plan.counts()
        {'recompute': 1}
    """

    names: list[str]
    decisions: list[Decision]
    budget: int
    predicted_peak: int
    predicted_time: float
    solver: str
    solve_seconds: float = 0.0
    timeline: list[tuple[str, int]] = field(default_factory=list)
    block_bytes: list[int] = field(default_factory=list)
    block_overheads: list[float] = field(default_factory=list)

    @classmethod
    def from_decisions(
        cls, profile: Profile, decisions: list[Decision], budget: int, solver: str, solve_seconds: float = 0.0
    ) -> Plan:
        """Build a plan and its predictions from ``profile``."""
        per_block = profile.expand(decisions)
        kept = [0] * len(decisions)
        overheads = [0.0] * len(decisions)
        extra = profile.overheads()
        for i, (block, decision) in enumerate(zip(profile.blocks, per_block)):
            kept[profile.module_of(i)] += block.costs[decision.value].fwd_delta
            overheads[profile.module_of(i)] += extra[i, decision]
        return cls(
            names=profile.units,
            decisions=list(decisions),
            budget=budget,
            predicted_peak=profile.predict_peak(decisions),
            predicted_time=profile.predict_time(decisions),
            solver=solver,
            solve_seconds=solve_seconds,
            timeline=profile.timeline(decisions),
            block_bytes=kept,
            block_overheads=overheads,
        )

    def counts(self) -> dict[str, int]:
        """How many blocks got each decision."""
        return {d.value: self.decisions.count(d) for d in Decision if d in self.decisions}

    def table(self, measured_peak: int | None = None) -> Table:
        """The plan as a ``rich`` table: block, decision, memory left alive, extra time."""
        title = (
            f"memory plan ({self.solver}): peak {format_bytes(self.predicted_peak)} predicted"
            + (f", {format_bytes(measured_peak)} measured" if measured_peak is not None else "")
            + f" / budget {format_bytes(self.budget)}, step {1000 * self.predicted_time:.1f} ms predicted"
        )
        table = Table(title=title)
        for column in ("block", "decision", "memory kept", "extra time"):
            table.add_column(column, justify="left" if column in ("block", "decision") else "right")
        for i, (name, decision) in enumerate(zip(self.names, self.decisions)):
            kept = format_bytes(self.block_bytes[i]) if self.block_bytes else "-"
            extra = f"{1000 * self.block_overheads[i]:.2f} ms" if self.block_overheads else "-"
            table.add_row(name, decision.label, kept, extra)
        return table

    def render(self, measured_peak: int | None = None, width: int = 110) -> str:
        """The table as plain text."""
        console = Console(width=width, record=True, file=io.StringIO(), force_terminal=False)
        console.print(self.table(measured_peak))
        return console.export_text()

    def to_dict(self) -> dict[str, Any]:
        """Plain data (JSON, broadcast between ranks)."""
        return {
            "names": self.names,
            "decisions": [d.value for d in self.decisions],
            "budget": self.budget,
            "predicted_peak": self.predicted_peak,
            "predicted_time": self.predicted_time,
            "solver": self.solver,
            "solve_seconds": self.solve_seconds,
            "timeline": [list(t) for t in self.timeline],
            "block_bytes": self.block_bytes,
            "block_overheads": self.block_overheads,
        }

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> Plan:
        """Inverse of :meth:`to_dict`."""
        data = dict(data)
        data["decisions"] = [Decision(d) for d in data["decisions"]]
        data["timeline"] = [(str(a), int(b)) for a, b in data.get("timeline", [])]
        return cls(**data)

    def save(self, path: str | Path) -> Path:
        """Write the plan as JSON."""
        path = Path(path)
        path.write_text(json.dumps(self.to_dict(), indent=1))
        return path
