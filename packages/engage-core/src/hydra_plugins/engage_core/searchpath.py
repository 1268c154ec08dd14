"""Adds ENGAGE's shipped configs, plugins' configs and the project's ``configs/`` to Hydra's search path."""

from __future__ import annotations

from pathlib import Path

from hydra.core.config_search_path import ConfigSearchPath
from hydra.plugins.search_path_plugin import SearchPathPlugin


class EngageSearchPathPlugin(SearchPathPlugin):
    """``pkg://engage.core.conf`` first, then what plugins add, then ``./configs`` if present,
    so a project's experiments sit on top of the defaults a pip install ships."""

    def manipulate_search_path(self, search_path: ConfigSearchPath) -> None:
        from engage.core.config.store import searchpath_entries

        search_path.append(provider="engage-core", path="pkg://engage.core.conf")
        for entry in searchpath_entries():
            search_path.append(provider="engage-plugin", path=entry)
        project_configs = Path.cwd() / "configs"
        if project_configs.is_dir():
            search_path.append(provider="engage-project", path=f"file://{project_configs}")
