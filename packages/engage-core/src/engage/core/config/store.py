"""Registration of structured configs and plugin options in Hydra's ConfigStore."""

from __future__ import annotations

import functools
from collections import defaultdict

import pluggy
from hydra.core.config_store import ConfigStore

from engage.core.config.options import ConfigOption
from engage.core.config.schema import EngageConfig
from engage.core.plugins import DISABLE_ENV, PluginError, flatten, get_plugin_manager, per_plugin

SCHEMA_NAME = "engage_schema"


def config_options(manager: pluggy.PluginManager | None = None) -> list[tuple[str, ConfigOption]]:
    """``(plugin name, option)`` for every option of every installed plugin. A plugin whose hook
    raises or returns something else than a list of :class:`ConfigOption`, and two plugins that
    offer one ``group=name``, are :class:`PluginError` naming them: the last would win silently."""
    manager = manager or get_plugin_manager()
    found: list[tuple[str, ConfigOption]] = []
    owner: dict[tuple[str, str], str] = {}
    # in the order plugins were registered (core's first), which the clash line names first
    for plugin, options in reversed(per_plugin(manager, "engage_config_options")):
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


@functools.cache
def register_configs() -> None:
    """Store the top-level schema and every plugin's options (idempotent)."""
    store = ConfigStore.instance()
    store.store(name=SCHEMA_NAME, node=EngageConfig)
    for plugin_name, option in config_options():
        store.store(group=option.group, name=option.name, node=option.node, provider=plugin_name)


def searchpath_entries(manager: pluggy.PluginManager | None = None) -> list[str]:
    """Search-path entries contributed by plugins, in registration order."""
    manager = manager or get_plugin_manager()
    return flatten(reversed(manager.hook.engage_config_searchpath()))
