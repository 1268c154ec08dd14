"""Configuration of ``engage run``: structured configs, plugin options, validation."""

from engage.core.config.options import ConfigOption
from engage.core.config.schema import ConfigValueError, EngageConfig, MLflowLoggerConfig, TrainerConfig
from engage.core.config.store import options_by_group, register_configs

__all__ = [
    "ConfigOption",
    "ConfigValueError",
    "EngageConfig",
    "MLflowLoggerConfig",
    "TrainerConfig",
    "options_by_group",
    "register_configs",
]
