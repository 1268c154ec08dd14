"""Settings shared by every package's tests."""

from __future__ import annotations

import importlib.util
import os
import sys
from collections.abc import Callable
from pathlib import Path
from types import ModuleType

import pytest

#: the repository's root: ``benchmarks/`` and ``docs/`` are not packages, their scripts load by path
ROOT = Path(__file__).resolve().parent


@pytest.fixture(scope="session")
def load_script() -> Callable[[str], ModuleType]:
    """Import a script of the repository by its path relative to the root (``benchmarks/scale.py``):
    a module named after the file, registered in ``sys.modules`` while it runs (dataclasses and
    pickling look it up there)."""

    def load(relative: str) -> ModuleType:
        path = ROOT / relative
        spec = importlib.util.spec_from_file_location(path.stem, path)
        module = importlib.util.module_from_spec(spec)
        sys.modules[spec.name] = module
        try:
            spec.loader.exec_module(module)
        finally:
            sys.modules.pop(spec.name, None)
        return module

    return load


@pytest.fixture(autouse=True, scope="session")
def engage_cache_dir(tmp_path_factory: pytest.TempPathFactory) -> str:
    """One cache folder for the session (the kept empty MLflow store among others), inherited by
    every process the tests start, so no test reads or writes the user's own cache."""
    folder = os.environ.get("ENGAGE_CACHE_DIR") or str(tmp_path_factory.mktemp("engage-cache"))
    os.environ["ENGAGE_CACHE_DIR"] = folder
    return folder


#: MLflow's store and experiment as the environment names them: ``engage run`` honours them, and
#: Lightning's MLflow logger writes the store into the environment of the process it runs in
MLFLOW_ENVIRONMENT = ("MLFLOW_TRACKING_URI", "MLFLOW_EXPERIMENT_NAME")


@pytest.fixture(autouse=True)
def no_mlflow_store_from_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    """Each test starts without an MLflow store or experiment in the environment (a test that
    logged through Lightning in this process leaves one), and leaves none behind."""
    for name in MLFLOW_ENVIRONMENT:
        monkeypatch.delenv(name, raising=False)


@pytest.hookimpl(tryfirst=True)
def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """Run in parallel (``make test``: ``-n logical --dist loadgroup``), the tests that share the
    session's Slurm cluster go to one worker, which starts the cluster once; and the slow
    end-to-end tests are handed out first, so that no worker is left with one at the end while the
    other idles."""
    for item in items:
        if "slurm_cluster" in getattr(item, "fixturenames", ()):
            item.add_marker(pytest.mark.xdist_group("slurm"))
    if config.getoption("dist", "no") != "no":
        items.sort(key=lambda item: item.get_closest_marker("slow") is None)
