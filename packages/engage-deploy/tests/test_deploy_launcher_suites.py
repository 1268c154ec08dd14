"""Hydra's own launcher conformance suites, run against the ``engage`` launcher (local provider).

MLflow recording is switched off here to keep the suites fast; it has its own tests.
"""

from __future__ import annotations

import pytest
from hydra.core.plugins import Plugins
from hydra.plugins.launcher import Launcher
from hydra.test_utils.launcher_common_tests import IntegrationTestSuite, LauncherTestSuite
from hydra.test_utils.test_utils import chdir_plugin_root  # noqa: F401 - imported for Hydra's fixtures
from hydra.version import _UNSPECIFIED_, VersionBase
from hydra_plugins.engage_launcher.engage_launcher import EngageLauncher

FAST = ["hydra.launcher.mlflow.enabled=false", "hydra.launcher.parallelism=2"]


@pytest.fixture(autouse=True)
def unspecified_version_base():
    """Hydra's suites assume ``version_base`` was never set (1.1 defaults: jobs chdir into their output folder).

    ``version_base`` is a process-wide singleton: an earlier test that composed a config in-process with
    ``version_base="1.3"`` would otherwise leave jobs running in the launch folder and fail the suites' checks.
    """
    base = VersionBase.instance()  # a Singleton: VersionBase() would return this same object
    previous = base.version_base
    base.version_base = _UNSPECIFIED_
    yield
    base.version_base = previous


def test_discovery() -> None:
    assert EngageLauncher.__name__ in [x.__name__ for x in Plugins.instance().discover(Launcher)]


@pytest.mark.parametrize("launcher_name, overrides", [("engage", FAST)])
class TestEngageLauncher(LauncherTestSuite):
    pass


@pytest.mark.parametrize(
    "task_launcher_cfg, extra_flags",
    [({"defaults": [{"override hydra/launcher": "engage"}, "_self_"]}, ["-m", *FAST])],
)
class TestEngageLauncherIntegration(IntegrationTestSuite):
    pass
