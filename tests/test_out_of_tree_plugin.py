"""A plugin package outside the monorepo adds a simulator and a sampler through the entry points."""

import os
import subprocess
import sys
from pathlib import Path

import pytest

from engage.core.testing import SamplerSuite, SimulatorSuite
from engage.core.testing.process import TINY_RUN, run_engage

PLUGIN_DIR = Path(__file__).parent / "fixtures" / "engage-toy-plugin"


@pytest.fixture(scope="module")
def toy_plugin():
    """The plugin's module, imported from its source tree only for these tests: left in
    ``sys.modules`` it would be pickled by reference into other tests' job processes."""
    sys.path.insert(0, str(PLUGIN_DIR / "src"))
    try:
        import engage_toy.plugin

        yield engage_toy.plugin
    finally:
        sys.path.remove(str(PLUGIN_DIR / "src"))
        for name in [m for m in sys.modules if m == "engage_toy" or m.startswith("engage_toy.")]:
            del sys.modules[name]


class TestHaltonSampler(SamplerSuite):
    @pytest.fixture
    def make_sampler(self, toy_plugin):
        return lambda space, seed: toy_plugin.HaltonSampler(space, seed=seed)


class TestPlumeSimulator(SimulatorSuite):
    @pytest.fixture
    def simulator(self, toy_plugin):
        return toy_plugin.PlumeSimulator(grid=8, steps=3)


@pytest.fixture(scope="module")
def installed_plugin(tmp_path_factory):
    target = tmp_path_factory.mktemp("toy-plugin-site")
    subprocess.run(
        [
            sys.executable,
            "-m",
            "pip",
            "install",
            "--quiet",
            "--no-deps",
            "--no-build-isolation",
            "--target",
            str(target),
            str(PLUGIN_DIR),
        ],
        check=True,
        capture_output=True,
        timeout=180,
    )
    return {"PYTHONPATH": os.pathsep.join([str(target), os.environ.get("PYTHONPATH", "")])}


@pytest.mark.slow
def test_engage_run_uses_the_plugin_simulator_and_sampler(tmp_path, installed_plugin):
    listed = run_engage("plugins", cwd=tmp_path, env=installed_plugin)
    assert listed.returncode == 0, listed.stderr
    assert "engage-toy-plugin" in listed.stdout and "sampler: halton" in listed.stdout

    result = run_engage("run", *TINY_RUN, "simulator=plume", "sampler=halton", cwd=tmp_path, env=installed_plugin)
    assert result.returncode == 0, result.stderr[-3000:]
    from mlflow.tracking import MlflowClient

    client = MlflowClient(tracking_uri=f"sqlite:///{tmp_path / 'mlflow.db'}")
    (run,) = client.search_runs([client.get_experiment_by_name("engage").experiment_id])
    assert run.data.params["simulator._target_"] == "engage_toy.plugin.PlumeSimulator"
    assert run.data.params["sampler._target_"] == "engage_toy.plugin.HaltonSampler"
    assert run.data.metrics["val/rel_l2"] < 10


def test_unknown_option_lists_plugin_samplers_only_when_installed(tmp_path, installed_plugin):
    without = run_engage("run", "sampler=nope", cwd=tmp_path)
    with_plugin = run_engage("run", "sampler=nope", cwd=tmp_path, env=installed_plugin)
    assert without.returncode == with_plugin.returncode == 2
    assert "halton" not in without.stderr and "halton" in with_plugin.stderr
