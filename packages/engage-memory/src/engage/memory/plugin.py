"""The ENGAGE plugin: ``engage run strategy=memory strategy.budget=2GiB``."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from engage.core.config import ConfigOption
from engage.core.hookspecs import hookimpl


@dataclass
class MemoryStrategyConfig:
    """Options of :class:`~engage.memory.MemoryPlanningStrategy` as a structured config.

    ``name`` is ``memory`` (:class:`~engage.memory.MemoryPlanningStrategy`) or ``memory_ddp``
    (:class:`~engage.memory.DDPMemoryPlanningStrategy`, one plan for every rank); the plugin's
    ``engage_strategy`` hook builds the strategy from the other fields.

    Examples:
        >>> MemoryStrategyConfig(budget="2GiB").name
        'memory'
    """

    name: str = "memory"
    budget: str = "0.9"
    solver: str = "auto"
    blocks: list[str] | None = None
    decisions: list[str] = field(default_factory=lambda: ["keep", "selective", "recompute"])
    profile_path: str | None = None
    verify: bool = True
    print_plan: bool = True
    chunked_loss: bool = False
    loss_chunks: int = 8

    def __post_init__(self) -> None:
        # the strategy's own checks, before anything runs (engage run reports the field in one line)
        from engage.core.config.schema import ConfigValueError
        from engage.memory.options import StrategyOptionError, check_options

        if self.name not in STRATEGIES:
            raise ConfigValueError("name", f"must be one of {', '.join(STRATEGIES)}, got {self.name!r}")
        try:
            check_options(self.budget, self.solver, self.decisions)
        except StrategyOptionError as exc:
            raise ConfigValueError(exc.field, str(exc)) from None
        if "offload" in self.decisions:
            import torch

            if not torch.cuda.is_available():
                raise ConfigValueError(
                    "decisions", "offload needs a CUDA device (on the CPU, host and device are one memory); drop it"
                )
        if isinstance(self.loss_chunks, bool) or self.loss_chunks < 1:
            raise ConfigValueError("loss_chunks", f"must be a whole number >= 1, such as 8; got {self.loss_chunks}")


#: option name -> (strategy class in engage.memory, description)
STRATEGIES = {
    "memory": ("MemoryPlanningStrategy", "plan training memory under a budget (keep or recompute each block)"),
    "memory_ddp": ("DDPMemoryPlanningStrategy", "the same plan on every rank of data-parallel training"),
}


@hookimpl
def engage_config_options() -> list[ConfigOption]:
    """``strategy=memory`` and ``strategy=memory_ddp``: plan the training step's memory under
    ``strategy.budget``."""
    return [
        ConfigOption("strategy", name, MemoryStrategyConfig(name=name), text) for name, (_, text) in STRATEGIES.items()
    ]


@hookimpl
def engage_strategy(cfg: Any) -> Any:
    """The memory strategy ``cfg.strategy`` names, built from its options; ``None`` for any other.

    Examples:
        >>> from omegaconf import OmegaConf
        >>> engage_strategy(OmegaConf.create({"strategy": {"name": "ddp"}})) is None
        True
        >>> cfg = OmegaConf.create({"strategy": OmegaConf.structured(MemoryStrategyConfig(budget="2GiB"))})
        >>> type(engage_strategy(cfg)).__name__, engage_strategy(cfg).budget
        ('MemoryPlanningStrategy', '2GiB')
    """
    from omegaconf import DictConfig, OmegaConf

    node = cfg.strategy if cfg is not None else None
    if not isinstance(node, DictConfig) or node.get("name") not in STRATEGIES:
        return None
    import engage.memory

    options = OmegaConf.to_container(node, resolve=True)
    class_name, _ = STRATEGIES[options.pop("name")]
    return getattr(engage.memory, class_name)(**options)
