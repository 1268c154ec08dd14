"""A config option contributed to a Hydra config group."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any


@dataclass(frozen=True)
class ConfigOption:
    """``group=name`` on the command line selects ``node``.

    ``node`` is a dataclass (a structured config: unknown keys and wrong types are rejected when
    the config is composed) or a mapping. Options with a ``_target_`` are built with
    ``hydra.utils.instantiate``.

    Example::

        ConfigOption("sampler", "lhs", LatinHypercubeConfig, "Latin hypercube design")
    """

    group: str
    name: str
    node: Any
    help: str = ""
