"""The plugin manager: every installed ENGAGE plugin, found through the ``engage`` entry points."""

from __future__ import annotations

import functools
import os
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from importlib.metadata import entry_points
from typing import Any

import pluggy

from engage.core import hookspecs

ENTRY_POINT_GROUP = "engage"
#: comma-separated plugin names not to load (like pytest's ``-p no:NAME``), for a broken install
DISABLE_ENV = "ENGAGE_DISABLE_PLUGINS"


class PluginError(RuntimeError):
    """A plugin could not be loaded or contributed something invalid."""


@dataclass
class PluginInfo:
    """What one registered plugin is and what it contributes (for ``engage plugins``)."""

    name: str
    module: str
    distribution: str | None
    version: str | None
    hooks: list[str] = field(default_factory=list)


def _new_manager() -> pluggy.PluginManager:
    manager = pluggy.PluginManager(hookspecs.PROJECT_NAME)
    manager.add_hookspecs(hookspecs)
    return manager


def load_plugins(manager: pluggy.PluginManager) -> pluggy.PluginManager:
    """Register every plugin of the ``engage`` entry-point group, core's own first.

    A plugin that fails to import stops with :class:`PluginError` naming its entry point, since a
    half-loaded set of plugins would silently change which options exist. Plugins named in the
    ``ENGAGE_DISABLE_PLUGINS`` environment variable are skipped.
    """
    disabled = {name.strip() for name in os.environ.get(DISABLE_ENV, "").split(",") if name.strip()}
    eps = sorted(entry_points(group=ENTRY_POINT_GROUP), key=lambda ep: (ep.name != "core", ep.name))
    for ep in eps:
        if manager.get_plugin(ep.name) is not None or ep.name in disabled:
            continue
        try:
            plugin = ep.load()
        except Exception as exc:  # a broken third-party plugin must name itself
            raise PluginError(
                f"plugin {ep.name!r} ({ep.value}) failed to load: {type(exc).__name__}: {exc}; "
                f"reinstall or uninstall its package, or set {DISABLE_ENV}={ep.name}"
            ) from exc
        manager.register(plugin, name=ep.name)
        if ep.dist is not None:
            manager._engage_dists = getattr(manager, "_engage_dists", {})  # type: ignore[attr-defined]
            manager._engage_dists[ep.name] = (ep.dist.name, ep.dist.version)  # type: ignore[attr-defined]
    return manager


@functools.cache
def get_plugin_manager() -> pluggy.PluginManager:
    """The process-wide plugin manager with every installed plugin registered."""
    return load_plugins(_new_manager())


def new_plugin_manager(plugins: Iterable[tuple[str, Any]] = (), *, installed: bool = True) -> pluggy.PluginManager:
    """A fresh manager (for tests and embedding): installed plugins if asked, plus ``plugins``."""
    manager = _new_manager()
    if installed:
        load_plugins(manager)
    for name, plugin in plugins:
        manager.register(plugin, name=name)
    return manager


def merge_mappings(results: Iterable[Mapping[str, Any] | None], what: str) -> dict[str, Any]:
    """Merge the mappings returned by a registry hook; two plugins claiming one name is an error."""
    merged: dict[str, Any] = {}
    for result in results:
        for name, value in (result or {}).items():
            if name in merged and merged[name] is not value:
                raise PluginError(f"two plugins register the {what} {name!r}; uninstall one of them")
            merged[name] = value
    return merged


def flatten(results: Iterable[Iterable[Any] | None]) -> list[Any]:
    """Concatenate the lists returned by a hook, dropping ``None``."""
    return [item for result in results for item in (result or ())]


def plugin_infos(manager: pluggy.PluginManager | None = None) -> list[PluginInfo]:
    """One :class:`PluginInfo` per registered plugin."""
    manager = manager or get_plugin_manager()
    dists: dict[str, tuple[str, str]] = getattr(manager, "_engage_dists", {})
    infos = []
    for name, plugin in manager.list_name_plugin():
        hooks = sorted(caller.name for caller in manager.get_hookcallers(plugin) or [])
        dist = dists.get(name)
        infos.append(
            PluginInfo(
                name=name,
                module=getattr(plugin, "__name__", type(plugin).__qualname__),
                distribution=dist[0] if dist else None,
                version=dist[1] if dist else None,
                hooks=hooks,
            )
        )
    return infos


def samplers(manager: pluggy.PluginManager | None = None) -> dict[str, Any]:
    """Every installed sampler class by name."""
    manager = manager or get_plugin_manager()
    return merge_mappings(manager.hook.engage_samplers(), "sampler")


def simulators(manager: pluggy.PluginManager | None = None) -> dict[str, Any]:
    """Every installed simulator class by name."""
    manager = manager or get_plugin_manager()
    return merge_mappings(manager.hook.engage_simulators(), "simulator")


def executors(manager: pluggy.PluginManager | None = None) -> dict[str, Any]:
    """Every installed executor class by name."""
    manager = manager or get_plugin_manager()
    return merge_mappings(manager.hook.engage_executors(), "executor")
