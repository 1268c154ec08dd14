"""Adds ENGAGE's shipped configs, plugins' configs and the project's ``configs/`` to the search
path of ENGAGE's own app (``engage run``, or a Hydra app whose primary configs are
``pkg://engage.core.conf``), and of no other Hydra app installed beside it."""

from __future__ import annotations

from pathlib import Path

from hydra.core.config_search_path import ConfigSearchPath
from hydra.plugins.search_path_plugin import SearchPathPlugin

#: the primary configs of ``engage run``
ENGAGE_CONFIGS = "pkg://engage.core.conf"

_engage_app = False


def engage_app_runs() -> None:
    """Called by ``engage run`` before its Hydra app starts: its search path is ENGAGE's even when
    ``-cp`` replaces the primary configs by the user's own (which may inherit ENGAGE's)."""
    global _engage_app
    _engage_app = True


class EngageSearchPathPlugin(SearchPathPlugin):
    """``pkg://engage.core.conf`` first, then what plugins add, then ``./configs`` if present,
    so a project's experiments sit on top of the defaults a pip install ships.

    Another Hydra app in the same environment keeps its own search path: its ``--help`` lists no
    ``experiment`` group of ENGAGE's, and a ``configs/`` folder where it runs is not read. Such an
    app that wants ENGAGE's configs adds them as any search path entry:
    ``hydra.searchpath=[pkg://engage.core.conf]``.
    """

    def manipulate_search_path(self, search_path: ConfigSearchPath) -> None:
        from engage.core.config.store import searchpath_entries

        present = {element.path for element in search_path.get_path()}
        if not (_engage_app or ENGAGE_CONFIGS in present):
            return
        for entry in [ENGAGE_CONFIGS, *searchpath_entries()]:
            if entry not in present:  # engage-deploy's own plugin may have added its configs already
                search_path.append(provider="engage-plugin", path=entry)
                present.add(entry)
        project_configs = Path.cwd() / "configs"
        if project_configs.is_dir():
            search_path.append(provider="engage-project", path=f"file://{project_configs}")
