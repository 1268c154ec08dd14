"""The plugin manager: every installed ENGAGE plugin, found through the ``engage`` entry points."""

from __future__ import annotations

import difflib
import functools
import os
import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from importlib.metadata import Distribution, distributions, entry_points
from pathlib import Path
from typing import Any

import pluggy

from engage.core import hookspecs

ENTRY_POINT_GROUP = "engage"
#: the entry point of engage-core's own plugin, registered before every other
CORE_PLUGIN = "core"
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
    #: ``hydra_plugins`` modules the plugin's distribution installs (a Hydra launcher, a search path)
    hydra_plugins: list[str] = field(default_factory=list)


def _new_manager() -> pluggy.PluginManager:
    manager = pluggy.PluginManager(hookspecs.PROJECT_NAME)
    manager.add_hookspecs(hookspecs)
    return manager


def disabled_plugins() -> set[str]:
    """The plugin names ``ENGAGE_DISABLE_PLUGINS`` lists."""
    return {name.strip() for name in os.environ.get(DISABLE_ENV, "").split(",") if name.strip()}


def load_plugins(manager: pluggy.PluginManager) -> pluggy.PluginManager:
    """Register every plugin of the ``engage`` entry-point group with pluggy's own loader, core's first.

    Plugins named in ``ENGAGE_DISABLE_PLUGINS`` are blocked first. A plugin that fails to import
    stops with :class:`PluginError` naming its entry point, since a half-loaded set of plugins
    would silently change which options exist. Then ``check_pending()``: a function marked as a
    hook implementation whose name is no hook (a misspelling) is an error, not a silent no-op.

    Examples:
        >>> manager = load_plugins(_new_manager())
        >>> manager.list_name_plugin()[0][0]
        'core'
    """
    declared = _check_entry_point_names()
    for name in sorted(disabled_plugins()):
        close = difflib.get_close_matches(name, declared, n=1)
        if name not in declared and close:
            # a misspelling would leave the plugin it meant loaded; a name close to none is a
            # plugin this environment lacks (a shared setting): nothing to block
            raise PluginError(
                f"{DISABLE_ENV} names {name!r}, which no installed package declares; did you mean {close[0]!r}? "
                f"the installed ENGAGE plugins are {', '.join(sorted(declared))}"
            )
        manager.set_blocked(name)
    try:
        manager.load_setuptools_entrypoints(ENTRY_POINT_GROUP, name=CORE_PLUGIN)
        manager.load_setuptools_entrypoints(ENTRY_POINT_GROUP)
    except Exception as exc:  # a broken third-party plugin must name itself
        raise _load_error(manager, exc) from exc
    try:
        manager.check_pending()
    except pluggy.PluginValidationError as exc:
        name = manager.get_name(exc.plugin) or repr(exc.plugin)
        hooks = [h for h in dir(hookspecs) if h.startswith("engage_")]
        typo = next(iter(re.findall(r"unknown hook '(\w+)'", str(exc))), "")
        close = difflib.get_close_matches(typo, hooks, n=1)
        hint = f"did you mean {close[0]}? " if close else f"the hooks are {', '.join(hooks)}; "
        raise PluginError(
            f"plugin {name!r} has a hook implementation that is no ENGAGE hook: {' '.join(str(exc).split())}; "
            f"{hint}or set {DISABLE_ENV}={name}"
        ) from exc
    return manager


def declared_plugins() -> set[str]:
    """The plugin names installed packages declare (what ``ENGAGE_DISABLE_PLUGINS`` can name)."""
    return set(_check_entry_point_names())


def _check_entry_point_names() -> dict[str, str]:
    """The package declaring each installed plugin name; two installed packages that declare one
    name are an error (pluggy would load the first and skip the other silently: ``sampling`` of
    another package would replace engage-sampling)."""
    seen: dict[str, str] = {}
    for dist in distributions():
        for ep in dist.entry_points.select(group=ENTRY_POINT_GROUP):
            package = dist.metadata["Name"] or "?"
            if seen.get(ep.name, package) != package:
                raise PluginError(
                    f"packages {seen[ep.name]!r} and {package!r} both declare the ENGAGE plugin {ep.name!r}; "
                    "rename the entry point of one of them, or uninstall it"
                )
            seen[ep.name] = package
    return seen


def _load_error(manager: pluggy.PluginManager, exc: Exception) -> PluginError:
    """The entry point whose load raised ``exc``: the first one still neither registered nor blocked."""
    for ep in entry_points(group=ENTRY_POINT_GROUP):
        if manager.has_plugin(ep.name) or manager.is_blocked(ep.name):
            continue
        if isinstance(exc, pluggy.PluginValidationError):  # an implementation whose arguments are no hook's
            found = re.search(
                r"for hook '(\w+)'.*definition: (\w+\([^)]*\)).*Argument\(s\) (\{[^}]*\})", str(exc), re.S
            )
            if found:
                hook, definition, extra = found.groups()
                wanted = ", ".join(getattr(manager.hook, hook).spec.argnames)
                return PluginError(
                    f"plugin {ep.name!r} ({ep.value}): {definition} takes {extra}, which {hook} does not give; "
                    f"its arguments are among ({wanted}): rename them, or set {DISABLE_ENV}={ep.name}"
                )
        return PluginError(
            f"plugin {ep.name!r} ({ep.value}) failed to load: {type(exc).__name__}: {exc}; "
            f"reinstall or uninstall its package, or set {DISABLE_ENV}={ep.name}"
        )
    return PluginError(f"an ENGAGE plugin failed to load: {type(exc).__name__}: {exc}")


@functools.cache
def get_plugin_manager() -> pluggy.PluginManager:
    """The process-wide plugin manager with every installed plugin registered."""
    return load_plugins(_new_manager())


def new_plugin_manager(plugins: Iterable[tuple[str, Any]] = (), *, installed: bool = True) -> pluggy.PluginManager:
    """A fresh manager (for tests and embedding): installed plugins if asked, plus ``plugins``."""
    manager = load_plugins(_new_manager()) if installed else _new_manager()
    for name, plugin in plugins:
        manager.register(plugin, name=name)
    manager.check_pending()
    return manager


def per_plugin(manager: pluggy.PluginManager, caller_of: pluggy.HookCaller, **kwargs: Any) -> list[tuple[str, Any]]:
    """``(plugin name, result)`` of one hook (``manager.hook.<name>``) for each plugin implementing
    it, each called through pluggy (``subset_hook_caller``), in the order pluggy calls them; a
    plugin whose implementation raises is :class:`PluginHookError` naming it, unless it refused
    the config (:class:`~engage.core.config.validate.ConfigError`: one line naming the key)."""
    hook = caller_of.name
    first_result = bool(caller_of.spec and caller_of.spec.opts.get("firstresult"))
    names = [impl.plugin_name for impl in reversed(caller_of.get_hookimpls())]
    results = []
    for name in names:
        others = [plugin for other, plugin in manager.list_name_plugin() if other != name and plugin is not None]
        caller = manager.subset_hook_caller(hook, remove_plugins=others)
        try:
            answers = caller(**kwargs)
        except Exception as exc:
            from engage.core.config.validate import ConfigError

            if isinstance(exc, ConfigError):
                raise  # the config is wrong, not the plugin: its one line, as core's own checks give
            raise PluginHookError(
                f"plugin {name!r} failed in {hook}: {type(exc).__name__}: {' '.join(str(exc).split())}; "
                f"fix it, or set {DISABLE_ENV}={name}"
            ) from exc
        if first_result:  # one value (None: no answer), and the first answer ends the call, as in pluggy
            if answers is not None:
                return [(name, answers)]
            continue
        results.extend((name, result) for result in answers)
    return results


def plugin_that_raised(hook: Any, exc: BaseException) -> str | None:
    """The name of the plugin whose implementation of ``hook`` (a pluggy hook caller) raised
    ``exc``, found in its traceback; ``None`` when none of them is there. For hooks called often
    (the simulation events), where calling each plugin alone (:func:`per_plugin`) would cost on
    every call, not only when one fails."""
    codes = {getattr(impl.function, "__code__", None): impl.plugin_name for impl in hook.get_hookimpls()}
    frames = exc.__traceback__
    while frames is not None:
        if frames.tb_frame.f_code in codes:
            return codes[frames.tb_frame.f_code]
        frames = frames.tb_next
    return None


class PluginHookError(PluginError):
    """A plugin's hook implementation raised; the message names the plugin, the hook and why."""


def call_each(manager: pluggy.PluginManager, hook: pluggy.HookCaller, **kwargs: Any) -> list[Any]:
    """The results of ``hook`` (``manager.hook.<name>``) as pluggy would call it, one plugin at a
    time so that one that raises is named (:class:`PluginHookError`)."""
    return [result for _, result in per_plugin(manager, hook, **kwargs)]


def merge_mappings(results: Iterable[tuple[str, Mapping[str, Any] | None]], what: str) -> dict[str, Any]:
    """Merge the ``(plugin name, mapping)`` results of a registry hook, as :func:`per_plugin`
    gives them; two plugins claiming one name is an error naming both, the one registered first
    (core before the others) first."""
    merged: dict[str, Any] = {}
    owner: dict[str, str] = {}
    for plugin, result in reversed(list(results)):  # pluggy calls the last registered first
        for name, value in (result or {}).items():
            if name in merged and merged[name] is not value:
                raise PluginError(
                    f"plugins {owner[name]!r} and {plugin!r} both register the {what} {name!r}; uninstall one "
                    f"of them, or set {DISABLE_ENV} to one"
                )
            merged[name], owner[name] = value, plugin
    return merged


def flatten(results: Iterable[Iterable[Any] | None]) -> list[Any]:
    """Concatenate the lists returned by a hook, dropping ``None``."""
    return [item for result in results for item in (result or ())]


def _hydra_plugins(dist: Distribution | None, plugin: Any) -> list[str]:
    """The ``hydra_plugins`` modules installed beside ``plugin``: from its distribution's file list,
    or, for an editable install (whose file list holds no sources), from its source folder."""
    modules: set[str] = set()
    files = [tuple(path.parts) for path in (dist.files or ()) if path.suffix == ".py"] if dist else []
    module_file = getattr(plugin, "__file__", None)
    if not any(parts[0] == "hydra_plugins" for parts in files) and module_file:
        root = Path(module_file).parents[len(plugin.__name__.split(".")) - 1]
        files = [path.relative_to(root).parts for path in (root / "hydra_plugins").glob("*/*.py")]
    for parts in files:
        if len(parts) >= 3 and parts[0] == "hydra_plugins" and not parts[-1].startswith("_"):
            modules.add(".".join((*parts[:-1], parts[-1].removesuffix(".py"))))
    return sorted(modules)


def plugin_infos(manager: pluggy.PluginManager | None = None) -> list[PluginInfo]:
    """One :class:`PluginInfo` per registered plugin, from pluggy's own records."""
    manager = manager or get_plugin_manager()
    dists = {id(plugin): dist for plugin, dist in manager.list_plugin_distributions()}
    infos = []
    for name, plugin in manager.list_name_plugin():
        if plugin is None:  # blocked
            continue
        hooks = sorted(caller.name for caller in manager.get_hookcallers(plugin) or [])
        dist = dists.get(id(plugin))
        infos.append(
            PluginInfo(
                name=name,
                module=getattr(plugin, "__name__", type(plugin).__qualname__),
                distribution=dist.metadata["Name"] if dist else None,
                version=dist.version if dist else None,
                hooks=hooks,
                hydra_plugins=_hydra_plugins(dist, plugin),
            )
        )
    return infos


def samplers(manager: pluggy.PluginManager | None = None) -> dict[str, Any]:
    """Every installed sampler class by name."""
    manager = manager or get_plugin_manager()
    return merge_mappings(per_plugin(manager, manager.hook.engage_samplers), "sampler")


def simulators(manager: pluggy.PluginManager | None = None) -> dict[str, Any]:
    """Every installed simulator class by name."""
    manager = manager or get_plugin_manager()
    return merge_mappings(per_plugin(manager, manager.hook.engage_simulators), "simulator")


def executors(manager: pluggy.PluginManager | None = None) -> dict[str, Any]:
    """Every installed executor class by name."""
    manager = manager or get_plugin_manager()
    return merge_mappings(per_plugin(manager, manager.hook.engage_executors), "executor")


def providers(manager: pluggy.PluginManager | None = None) -> dict[str, Any]:
    """Every installed infrastructure provider class by name."""
    manager = manager or get_plugin_manager()
    return merge_mappings(per_plugin(manager, manager.hook.engage_providers), "provider")


def placement_solvers(manager: pluggy.PluginManager | None = None) -> dict[str, Any]:
    """Every installed placement solver factory by name."""
    manager = manager or get_plugin_manager()
    return merge_mappings(per_plugin(manager, manager.hook.engage_placement_solvers), "placement solver")
