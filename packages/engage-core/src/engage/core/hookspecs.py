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
    from collections.abc import Callable, Mapping, Sequence
    from typing import Any

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

    Called once per process, when ``engage`` registers its configs in Hydra's ConfigStore (and by
    ``engage plugins``). Each :class:`~engage.core.config.options.ConfigOption` names a group
    (``sampler``, ``strategy``, ``simulator``, ``data``, ``model``, ``callbacks``, ``logger``,
    ``trainer``, or a new group such as ``infrastructure``), an option name and a node: a dataclass
    (a structured config, type-checked on composition) or a mapping. ``engage run sampler=NAME``
    then selects it, and an unknown name lists every option that installed plugins offer.
    """


@hookspec
def engage_config_searchpath() -> Sequence[str]:
    """Extra Hydra search-path entries (``pkg://module`` or ``file://dir``) for YAML configs
    this plugin ships, such as experiments.

    Called once per process, when ``engage`` composes a config; core's own defaults come first.
    """


# --------------------------------------------------------------------------- registries


@hookspec
def engage_simulators() -> Mapping[str, type[Simulator]]:
    """Simulator classes by name (subclasses of :class:`engage.core.Simulator`).

    Called whenever the installed simulators are listed (``engage plugins``); two plugins
    registering one name is an error. A simulator is chosen on the command line
    (``simulator=NAME``) through the option a plugin offers for it (``engage_config_options``).
    """


@hookspec
def engage_samplers() -> Mapping[str, type[Sampler]]:
    """Sampler classes by name (subclasses of :class:`engage.core.Sampler`).

    Called whenever the installed samplers are listed (``engage plugins``); two plugins
    registering one name is an error. A sampler is chosen on the command line
    (``sampler=NAME``) through the option a plugin offers for it (``engage_config_options``).
    """


@hookspec
def engage_executors() -> Mapping[str, type[Executor]]:
    """Executors by name: what starts simulator processes on hosts.

    Called when an ``OnlineDataModule`` chooses its executor (``data.executor=NAME``). Core
    provides ``local`` (child processes of the trainer); engage-deploy adds ``deploy``, which
    starts them on the hosts of an infrastructure.
    """


@hookspec
def engage_providers() -> Mapping[str, type]:
    """Infrastructure providers by name (``infrastructure.provider=NAME``): classes following
    ``engage.deploy.providers.base.Provider``, built with ``(infrastructure, workdir)``.

    Called when an infrastructure is checked or deployed. Import a provider's client library
    inside the provider, not at the top of the plugin, so choosing another provider never
    imports it.
    """


@hookspec
def engage_placement_solvers() -> Mapping[str, Callable[..., Any]]:
    """Placement solvers by name (``engage place --solver NAME``): factories called with the
    keyword ``time_limit_s`` (seconds) that return an object with
    ``solve(problem, previous=None) -> PlacementPlan``.

    Called when ``engage place`` parses its options and when a plan is solved.
    """


@hookspec
def engage_callbacks(cfg: DictConfig) -> Sequence[Callback]:
    """Lightning callbacks to add to the ``Trainer`` of ``engage run`` for this config.

    Called once per ``engage run``, after the config is composed and before the ``Trainer`` is
    built. ``cfg`` is the whole composed config (``cfg.callbacks`` holds the ``+callbacks=NAME``
    options chosen). Return an empty list when the config asks for none of this plugin's
    callbacks; build only the callbacks whose options this plugin added. A config these callbacks
    cannot run with raises :class:`~engage.core.config.validate.ConfigError`, one line naming the
    key and the fix: ``engage run`` prints it and exits with code 2 before any MLflow run exists.
    """


@hookspec(firstresult=True)
def engage_strategy(cfg: DictConfig) -> Strategy | str | None:
    """The Lightning strategy for this config, or ``None`` to let another plugin decide.

    Called once per ``engage run``, before the ``Trainer`` is built, with the whole composed
    config; ``cfg.strategy`` is the ``strategy=NAME`` option chosen. The first plugin that
    returns something wins; without any, ``cfg.strategy`` is instantiated as given (``"auto"``
    by default).
    """


@hookspec
def engage_commands() -> Sequence[Command]:
    """Sub-commands of the ``engage`` command (``engage replay``, ``engage place``, ...).

    Called when ``engage`` builds its command line; each :class:`~engage.core.commands.Command`
    brings its own arguments.
    """


# --------------------------------------------------------------------------- events


@hookspec
def engage_simulation_started(record: SimulationRecord) -> None:
    """A simulation process was started.

    Called on the online scheduler's thread once per attempt of a training simulation (held-out
    simulations, run for validation, are not reported), right after its process started;
    ``record`` is the simulation's :class:`~engage.core.online.record.SimulationRecord`
    (``record.simulation_id``, ``record.attempt``, ``record.parameters`` by name,
    ``record.vector`` and ``record.unit`` as lists, ``record.status == "running"``). An
    exception raised here fails the run, naming the hook.
    """


@hookspec
def engage_simulation_finished(record: SimulationRecord) -> None:
    """A simulation finished and all its samples were received.

    Called on the online scheduler's thread once per simulation, after its last samples entered
    the buffer; ``record.samples_received`` counts them. An exception fails the run.
    """


@hookspec
def engage_simulation_failed(record: SimulationRecord, error: str) -> None:
    """An attempt of a simulation failed (crash, silence past its heartbeat, malformed data).

    Called on the online scheduler's thread once per failed attempt. ``record.attempt`` is the
    attempt that failed (a retry, if any, starts as the next attempt); ``error`` is one readable
    line; the simulator's stderr is in ``record.stderr_tail``. An exception fails the run.
    """


@hookspec
def engage_samples_arrived(simulation_id: int, count: int, buffer_size: int) -> None:
    """Samples of one simulation entered the training buffer.

    Called on the online scheduler's thread once per simulation per drain of the socket (not
    once per sample): ``count`` samples of simulation ``simulation_id`` went in, after which the
    buffer holds ``buffer_size`` samples. Keep it cheap: it runs on the receiving path.
    """


@hookspec
def engage_run_started(record: RunRecord) -> None:
    """An ``engage run`` job opened its MLflow run.

    Called once per ``engage run`` on the process that holds its MLflow run (global rank 0), right
    after the run is created and before training starts: ``record.run_id``, ``record.status``
    (``RUNNING``), ``record.tracking_uri`` and ``record.output_dir``; the metrics are empty. A
    launcher learns its job's run here, by id (engage-deploy records it in the job's folder).
    """


@hookspec
def engage_run_finished(record: RunRecord) -> None:
    """An ``engage run`` job ended.

    Called once per ``engage run`` on the process that holds its MLflow run (global rank 0),
    while that run is still open, so an observer can add its records to it: ``record.run_id``,
    ``record.status`` (``FINISHED``, ``FAILED``, ``KILLED``, or ``SCHEDULED`` when its batch job
    was requeued and a next incarnation continues the run), ``record.error`` (one line, or
    ``None``), ``record.metrics`` (the final logged metrics) and ``record.output_dir``.
    """


def hook_names() -> list[str]:
    """Names of every hook defined here, in definition order."""
    return [name for name, value in globals().items() if name.startswith("engage_") and callable(value)]
