"""The ENGAGE plugin: ``engage run strategy=memory strategy.budget=2GiB``."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from engage.core.config import ConfigOption
from engage.core.hookspecs import hookimpl


@dataclass
class MemoryStrategyConfig:
    """Options of :class:`~engage.memory.MemoryPlanningStrategy` as a structured config.

    Examples:
        >>> MemoryStrategyConfig(budget="2GiB")._target_
        'engage.memory.MemoryPlanningStrategy'
    """

    _target_: str = "engage.memory.MemoryPlanningStrategy"
    budget: str = "0.9"
    solver: str = "auto"
    blocks: list[str] | None = None
    decisions: list[str] = field(default_factory=lambda: ["keep", "selective", "recompute", "offload"])
    profile_path: str | None = None
    verify: bool = True
    print_plan: bool = True
    chunked_loss: bool = False
    loss_chunks: int = 8


@hookimpl
def engage_config_options() -> list[ConfigOption]:
    """``strategy=memory``: plan the training step's memory under ``strategy.budget``."""
    return [
        ConfigOption(
            "strategy",
            "memory",
            MemoryStrategyConfig,
            "plan training memory under a budget (recompute, offload to host)",
        )
    ]


@hookimpl
def engage_strategy(cfg: Any) -> None:
    """Core instantiates ``cfg.strategy`` itself; nothing to choose here."""
    return None
