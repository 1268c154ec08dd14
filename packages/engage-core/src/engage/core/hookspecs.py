"""Every hook an ENGAGE plugin can implement, in one place.

A plugin is a module (or object) registered under the ``engage`` entry-point group::

    [project.entry-points.engage]
    my_plugin = "my_package.plugin"

Its functions carry the :data:`hookimpl` marker and the name of a hook below. Registration hooks
return what the plugin contributes (lists or mappings, merged across plugins); event hooks are
called for their side effect and their return value is ignored. Core never imports another
ENGAGE package: everything they add reaches it through these hooks.

Example, a plugin that adds a sampler and its config option::

    from engage.core import hookimpl
    from engage.core.config import ConfigOption

    @hookimpl
    def engage_samplers():
        return {"halton": HaltonSampler}

    @hookimpl
    def engage_config_options():
        return [ConfigOption("sampler", "halton", HaltonSamplerConfig, "Halton sequence")]
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import pluggy

if TYPE_CHECKING:  # pragma: no cover - imports for annotations only
    import argparse
    from collections.abc import Mapping, Sequence

    from lightning.pytorch import Callback
    from lightning.pytorch.strategies import Strategy
    from omegaconf import DictConfig

    from engage.core.commands import Command
    from engage.core.config.options import ConfigOption
    from engage.core.events import RunRecord, SimulationRecord
    from engage.core.executors import Executor
    from engage.core.samplers.base import Sampler
    from engage.core.simulators.base import Simulator

PROJECT_NAME = "engage"

hookspec = pluggy.HookspecMarker(PROJECT_NAME)
hookimpl = pluggy.HookimplMarker(PROJECT_NAME)


# --------------------------------------------------------------------------- configuration


@hookspec
def engage_config_options() -> Sequence[ConfigOption]:
    """Config options this plugin adds to Hydra config groups.

    Each :class:`~engage.core.config.options.ConfigOption` names a group (``sampler``,
    ``strategy``, ``simulator``, ``data``, ``model``, ``callbacks``, ``logger``, ``trainer``,
    or a new group such as ``infrastructure``), an option name and a node: a dataclass (a
    structured config, type-checked on composition) or a mapping. ``engage run sampler=NAME``
    then selects it, and an unknown name lists every option that installed plugins offer.
    """


@hookspec
def engage_config_searchpath() -> Sequence[str]:
    """Extra Hydra search-path entries (``pkg://module`` or ``file://dir``) for YAML configs
    this plugin ships, such as experiments. Core's own defaults come first."""


# --------------------------------------------------------------------------- registries


@hookspec
def engage_simulators() -> Mapping[str, type[Simulator]]:
    """Simulator classes by name (subclasses of :class:`engage.core.Simulator`)."""


@hookspec
def engage_samplers() -> Mapping[str, type[Sampler]]:
    """Sampler classes by name (subclasses of :class:`engage.core.Sampler`)."""


@hookspec
def engage_executors() -> Mapping[str, type[Executor]]:
    """Executors by name: what starts simulator processes on hosts.

    Core provides ``local`` (child processes of the trainer); engage-deploy adds executors
    that start them on the hosts of an infrastructure.
    """


@hookspec
def engage_callbacks(cfg: DictConfig) -> Sequence[Callback]:
    """Lightning callbacks to add to the ``Trainer`` of ``engage run`` for this config.

    Return an empty list when the config does not ask for this plugin's callbacks.
    """


@hookspec(firstresult=True)
def engage_strategy(cfg: DictConfig) -> Strategy | str | None:
    """The Lightning strategy for this config, or ``None`` to let another plugin decide.

    The first plugin that returns something wins; without any, ``cfg.strategy`` is
    instantiated as given (``"auto"`` by default).
    """


@hookspec
def engage_commands() -> Sequence[Command]:
    """Sub-commands of the ``engage`` command (``engage replay``, ``engage place``, ...)."""


@hookspec
def engage_add_cli_arguments(parser: argparse.ArgumentParser, command: str) -> None:
    """Add options to an existing sub-command's parser (``command`` is its name)."""


# --------------------------------------------------------------------------- events


@hookspec
def engage_simulation_started(record: SimulationRecord) -> None:
    """A simulation process was started (``record.status == "running"``)."""


@hookspec
def engage_simulation_finished(record: SimulationRecord) -> None:
    """A simulation finished and all its samples were received."""


@hookspec
def engage_simulation_failed(record: SimulationRecord, error: str) -> None:
    """A simulation failed (crash, silence past its heartbeat, malformed data).

    ``record.attempt`` tells whether it will be retried; ``error`` is one readable line,
    the simulator's stderr is in ``record.stderr_tail``.
    """


@hookspec
def engage_samples_arrived(simulation_id: int, count: int, buffer_size: int) -> None:
    """``count`` samples of one simulation entered the training buffer."""


@hookspec
def engage_run_finished(record: RunRecord) -> None:
    """An ``engage run`` job ended (``record.status`` is ``FINISHED``, ``FAILED`` or
    ``KILLED``); ``record.metrics`` holds the final logged metrics."""


def hook_names() -> list[str]:
    """Names of every hook defined here, in definition order."""
    return [name for name, value in globals().items() if name.startswith("engage_") and callable(value)]
