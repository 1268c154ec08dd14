"""Registration of structured configs and plugin options in Hydra's ConfigStore."""

from __future__ import annotations

import functools
import keyword
import re
from collections import defaultdict
from dataclasses import field, fields, make_dataclass
from typing import Any

import pluggy
from hydra.core.config_store import ConfigStore

from engage.core.config.options import ConfigOption
from engage.core.config.schema import EngageConfig
from engage.core.plugins import DISABLE_ENV, PluginError, call_each, flatten, get_plugin_manager, per_plugin

SCHEMA_NAME = "engage_schema"


def config_options(manager: pluggy.PluginManager | None = None) -> list[tuple[str, ConfigOption]]:
    """``(plugin name, option)`` for every option of every installed plugin. A plugin whose hook
    raises or returns something else than a list of :class:`ConfigOption`, and two plugins that
    offer one ``group=name``, are :class:`PluginError` naming them: the last would win silently."""
    manager = manager or get_plugin_manager()
    found: list[tuple[str, ConfigOption]] = []
    owner: dict[tuple[str, str], str] = {}
    # in the order plugins were registered (core's first), which the clash line names first
    for plugin, options in reversed(per_plugin(manager, manager.hook.engage_config_options)):
        if isinstance(options, ConfigOption) or not all(isinstance(o, ConfigOption) for o in options or ()):
            raise PluginError(
                f"plugin {plugin!r}: engage_config_options must return a list of ConfigOption, got {options!r}"
            )
        for option in options or ():
            key = (option.group, option.name)
            if key in owner:
                raise PluginError(
                    f"plugins {owner[key]!r} and {plugin!r} both offer {option.group}={option.name}; rename one "
                    f"option, or set {DISABLE_ENV} to one of them"
                )
            owner[key] = plugin
            found.append((plugin, option))
    return found


def options_by_group(manager: pluggy.PluginManager | None = None) -> dict[str, list[str]]:
    """Option names per config group, sorted (what ``group=...`` accepts)."""
    groups: dict[str, list[str]] = defaultdict(list)
    for _, option in config_options(manager):
        groups[option.group].append(option.name)
    return {group: sorted(names) for group, names in sorted(groups.items())}


def yaml_options(entry: str) -> dict[str, dict[str, Any]]:
    """The YAML options under a ``pkg://`` search-path entry: config group (a sub-folder) ->
    option name -> its file (an ``importlib.resources`` traversable)."""
    from importlib.resources import files

    if not entry.startswith("pkg://"):
        return {}
    try:
        root = files(entry.removeprefix("pkg://"))
    except ModuleNotFoundError:
        return {}
    found: dict[str, dict[str, Any]] = {}
    for folder in root.iterdir():
        if folder.is_dir():
            names = {f.name.removesuffix(".yaml"): f for f in folder.iterdir() if f.name.endswith(".yaml")}
            if names:
                found[folder.name] = names
    return found


def check_config_names(manager: pluggy.PluginManager, options: list[tuple[str, ConfigOption]]) -> None:
    """No ``group=name`` offered twice by core's YAML configs, a plugin's YAML configs and the
    plugins' :class:`ConfigOption`: Hydra would take one of them silently (a plugin's
    ``sampler/uniform.yaml`` became the default sampler). A :class:`PluginError` names both; a
    project's own ``configs/`` still overrides on purpose."""
    from hydra_plugins.engage_core.searchpath import ENGAGE_CONFIGS

    owner = {(option.group, option.name): f"{plugin}'s option" for plugin, option in options}
    entries = [("core", [ENGAGE_CONFIGS]), *reversed(per_plugin(manager, manager.hook.engage_config_searchpath))]
    for plugin, paths in entries:
        for entry in paths or ():
            for group, names in yaml_options(entry).items():
                for name in names:
                    here = f"{plugin}'s {entry.removeprefix('pkg://')} {group}/{name}.yaml"
                    if (group, name) in owner and not owner[(group, name)].startswith(f"{plugin}'s "):
                        raise PluginError(
                            f"{owner[(group, name)]} and {here} both offer {group}={name}; rename one, or set "
                            f"{DISABLE_ENV} to one of the plugins"
                        )
                    owner[(group, name)] = here


@functools.cache
def register_configs() -> None:
    """Store the top-level schema and every plugin's options (idempotent), after checking that
    no option is offered twice (:func:`config_options`, :func:`check_config_names`)."""
    store = ConfigStore.instance()
    options = config_options()
    check_config_names(get_plugin_manager(), options)
    store.store(name=SCHEMA_NAME, node=schema_with_groups(sorted({option.group for _, option in options})))
    for plugin_name, option in options:
        store_option(store, plugin_name, option)


def schema_with_groups(groups: list[str]) -> type:
    """:class:`EngageConfig`, plus a key for each of ``groups`` it has none for (a group a plugin
    adds), empty until an option is chosen: ``report=html`` as for ENGAGE's own groups."""
    # a top-level key each: a nested group (model/encoder) is its parent's, and a name that is
    # no identifier cannot be a field (such a group is chosen with +group=option)
    new = [
        group
        for group in groups
        if group.isidentifier() and not keyword.iskeyword(group) and group not in {f.name for f in fields(EngageConfig)}
    ]
    if not new:
        return EngageConfig
    entries = ["_self_", *({group: None} for group in new)]  # the chosen option over the empty key
    return make_dataclass(
        "EngageConfig",
        [*((group, Any, None) for group in new), ("defaults", list[Any], field(default_factory=lambda: entries))],
        bases=(EngageConfig,),
    )


def store_option(store: ConfigStore, plugin_name: str, option: ConfigOption) -> None:
    """Store one plugin's option; a node OmegaConf refuses (a default of the wrong type) is a
    :class:`PluginError` naming the plugin and the option, since it would break every run."""
    try:
        store.store(group=option.group, name=option.name, node=option.node, provider=plugin_name)
    except Exception as exc:
        why = " ".join(str(exc).split("\n", 1)[0].split())
        where = re.search(r"full_key: (\S+)", str(exc))
        named = f" field {where.group(1)}:" if where else ""
        raise PluginError(
            f"plugin {plugin_name!r}: option {option.group}={option.name} is no valid config:{named} {why}; "
            f"fix its default, or set {DISABLE_ENV}={plugin_name}"
        ) from exc


def searchpath_entries(manager: pluggy.PluginManager | None = None) -> list[str]:
    """Search-path entries contributed by plugins, in registration order."""
    manager = manager or get_plugin_manager()
    return flatten(reversed(call_each(manager, manager.hook.engage_config_searchpath)))
