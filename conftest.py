"""Settings shared by every package's tests."""

from __future__ import annotations

import dataclasses
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
    pickling look it up there), with its folder on ``sys.path`` as when Python runs it (the
    benchmarks import their shared ``_cli``)."""

    def load(relative: str) -> ModuleType:
        path = ROOT / relative
        if str(path.parent) not in sys.path:
            sys.path.insert(0, str(path.parent))
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
def _logging_handlers_put_back():
    """A Hydra app or sweep run in the test process (Hydra's launcher suites, ``engage run`` called
    in-process) configures logging as Hydra does, with handlers on the streams of that test's
    capture; left in place, they write to closed streams in later tests (``--- Logging error
    ---`` in their output, breaking assertions on it at random)."""
    import logging

    def handlers() -> dict[str, list[logging.Handler]]:
        loggers = [logging.getLogger(), *(logging.getLogger(name) for name in list(logging.root.manager.loggerDict))]
        return {logger.name: list(logger.handlers) for logger in loggers}

    before = handlers()
    yield
    for name, now in handlers().items():
        logger = logging.getLogger() if name == "root" else logging.getLogger(name)
        for handler in now:
            if handler not in before.get(name, []):
                logger.removeHandler(handler)
                handler.close()


@pytest.fixture(autouse=True)
def no_mlflow_store_from_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    """Each test starts without an MLflow store or experiment in the environment (a test that
    logged through Lightning in this process leaves one), and leaves none behind."""
    for name in MLFLOW_ENVIRONMENT:
        monkeypatch.delenv(name, raising=False)


@pytest.hookimpl(wrapper=True, optionalhook=True)
def pytest_xdist_auto_num_workers(config: pytest.Config):
    """``-n logical`` or ``-n auto`` (``make test``'s first pass): one worker per core, and one
    more, for the time the Slurm tests (on one worker: they share the session's cluster) mostly
    wait for the cluster; with a worker per core, that core idled for most of those minutes (a
    sixth of the pass on 2 cores; the extra worker saves about 70 s there). Where the Slurm tests
    skip, the extra worker only shares the cores. ``PYTEST_XDIST_AUTO_NUM_WORKERS`` still says
    exactly how many."""
    count = yield
    return count if os.environ.get("PYTEST_XDIST_AUTO_NUM_WORKERS") else count + 1


def _shared_setup(item: pytest.Item) -> str | None:
    """The test module whose costly fixture ``item`` shares with its neighbours (one not made per
    test, defined in that module), or the session's Slurm cluster; None for a test on its own."""
    if "slurm_cluster" in item.fixturenames:
        return "slurm"
    for definitions in item._fixtureinfo.name2fixturedefs.values():
        fixture = definitions[-1]
        if fixture.scope != "function" and fixture.baseid.endswith(".py"):
            return fixture.baseid
    return None


@pytest.hookimpl(wrapper=True)
def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]):
    """Run in parallel (``make test``'s first pass: ``-n logical --dist loadgroup``), the tests
    that share a fixture made once (the session's Slurm cluster, a module's server or install) go
    to one worker, which makes it once; and the tests marked ``timing`` are left out: their
    figures mean something only on a machine that runs nothing else (the second pass,
    ``-m timing``)."""
    for item in items:
        group = _shared_setup(item)
        if group:
            item.add_marker(pytest.mark.xdist_group(group))
    result = yield
    if not hasattr(config, "workerinput"):  # not a pytest-xdist worker: one process runs everything
        return result
    if config.getvalue("loadgroup"):
        for item in items:
            _suffix_group(item)
    timed = [item for item in items if item.get_closest_marker("timing")]
    if timed:
        config.hook.pytest_deselected(items=timed)
        items[:] = [item for item in items if not item.get_closest_marker("timing")]
    return result


def _suffix_group(item: pytest.Item) -> None:
    """Name ``item`` ``<node id>@<groups>`` (its ``xdist_group`` marks' names, sorted, joined by
    ``_``), which is how pytest-xdist's loadgroup scheduler reads a test's group, and how it
    reports the test. pytest-xdist 3.8 writes that name into ``Item._nodeid``, which pytest 9.2 no
    longer reads (a node's id is ``Item._id``, a ``NodeId``): without this, the tests of a group
    spread over the workers and each makes the shared fixture again (two Slurm clusters)."""
    names = {str(m.args[0] if m.args else m.kwargs.get("name", "default")) for m in item.iter_markers("xdist_group")}
    node_id = getattr(item, "_id", None)
    if not names or node_id is None or "@" in str(node_id).rpartition("]")[2]:
        return  # no group, an older pytest (where pytest-xdist names it), or named already
    last = node_id.names[-1] + (f"[{node_id.params}]" if node_id.params is not None else "")
    item._id = dataclasses.replace(
        node_id, names=(*node_id.names[:-1], f"{last}@{'_'.join(sorted(names))}"), params=None
    )
