"""Each package installs from a local wheelhouse with only engage-core beside it, and works.

The four ENGAGE wheels are built once; each package then goes into its own fresh virtual
environment with ``pip install --no-index --find-links <wheelhouse>``, so pip can take the ENGAGE
packages from nowhere else. Third-party dependencies (torch alone is 190 MB) are shared read-only
from the development environment through a site directory that holds every installed
distribution except the ENGAGE ones, which keeps four installs within the test budget while pip
still checks that every declared dependency is satisfied.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
import sysconfig
import textwrap
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PACKAGES = sorted(p.name for p in (ROOT / "packages").iterdir() if (p / "pyproject.toml").exists())
ENGAGE_ENTRY = re.compile(r"^(__editable__[._]+)?engage[_-]|^engage$|^engage_toy", re.IGNORECASE)

#: what each package must do once installed alone (run with the isolated interpreter)
SMOKE = {
    "engage-core": """
        from engage.core import ParameterSpace, UniformSampler
        space = ParameterSpace.from_config({"x": {"low": 0, "high": 1}})
        assert UniformSampler(space, seed=0).ask(3).shape == (3, 1)
    """,
    "engage-sampling": """
        from engage.core import ParameterSpace
        from engage.core.config.store import options_by_group
        from engage.sampling import LatinHypercubeSampler
        space = ParameterSpace.from_config({"x": {"low": 0, "high": 1}, "y": {"low": 0, "high": 1}})
        points = LatinHypercubeSampler(space, seed=0).ask(8)
        assert sorted((points[:, 0] * 8).astype(int).tolist()) == list(range(8))  # one point per stratum
        assert "lhs" in options_by_group()["sampler"]
    """,
    "engage-memory": """
        from engage.core.config.store import options_by_group
        from engage.memory import MemoryPlanningStrategy, parse_budget
        assert parse_budget("1GiB") == 2**30
        MemoryPlanningStrategy(budget="1GiB")
        assert "memory" in options_by_group()["strategy"]
    """,
    "engage-deploy": """
        from hydra.core.plugins import Plugins
        from hydra.plugins.launcher import Launcher
        from engage.deploy import Infrastructure
        Infrastructure().validate()
        assert any(c.__name__ == "EngageLauncher" for c in Plugins.instance().discover(Launcher))
    """,
}
#: tests of a package that must also pass where only it and engage-core are installed (a module, or
#: one of its tests): the sampling callback in plain Lightning code, and every sampler's contract
ALONE_TESTS = {
    "engage-sampling": [
        "packages/engage-sampling/tests/test_sampling_ishigami.py::test_recovers_ishigami_indices",
        "packages/engage-sampling/tests/test_sampling_samplers.py",
    ]
}

pytestmark = pytest.mark.slow


def _run(*args: str, timeout: float = 300, **kwargs) -> subprocess.CompletedProcess:
    result = subprocess.run(list(args), capture_output=True, text=True, timeout=timeout, **kwargs)
    assert result.returncode == 0, f"{' '.join(args)} failed:\n{result.stdout[-2000:]}\n{result.stderr[-3000:]}"
    return result


@pytest.fixture(scope="session")
def wheelhouse(tmp_path_factory) -> Path:
    house = tmp_path_factory.mktemp("wheelhouse")
    _run(
        sys.executable, "-m", "pip", "wheel", "--quiet", "--no-deps", "--no-build-isolation",
        "--wheel-dir", str(house), *[str(ROOT / "packages" / p) for p in PACKAGES],
    )  # fmt: skip
    return house


@pytest.fixture(scope="session")
def third_party_site(tmp_path_factory) -> Path:
    """Every installed distribution but the ENGAGE ones, as links into this environment."""
    site = Path(sysconfig.get_paths()["purelib"])
    farm = tmp_path_factory.mktemp("third-party-site")
    for entry in site.iterdir():
        if not ENGAGE_ENTRY.search(entry.name):
            (farm / entry.name).symlink_to(entry)
    return farm


def _isolated_env(root: Path, third_party: Path) -> Path:
    _run(sys.executable, "-m", "venv", "--without-pip", str(root))
    python = root / "bin" / "python"
    purelib = _run(str(python), "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])").stdout.strip()
    Path(purelib, "third_party.pth").write_text(f"import site; site.addsitedir({str(third_party)!r})\n")
    return python


@pytest.mark.parametrize("package", PACKAGES)
def test_package_installs_and_works_with_only_core(package, wheelhouse, third_party_site, tmp_path):
    python = _isolated_env(tmp_path / "venv", third_party_site)
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "VIRTUAL_ENV")}
    _run(
        sys.executable, "-m", "pip", "--python", str(python), "install", "--quiet", "--no-index",
        "--find-links", str(wheelhouse), package, env=env,
    )  # fmt: skip
    installed = _run(str(python), "-m", "pip", "list", "--format=freeze", env=env).stdout
    assert "engage-core==" in installed
    others = {p for p in PACKAGES if p not in (package, "engage-core")}
    assert not [p for p in others if f"{p}==" in installed], installed
    _run(sys.executable, "-m", "pip", "--python", str(python), "check", env=env)

    module = "engage." + package.removeprefix("engage-")
    probe = textwrap.dedent(
        f"""
        import importlib, importlib.util
        import {module}
        assert "site-packages" in {module}.__file__, {module}.__file__
        for other in {sorted("engage." + p.removeprefix("engage-") for p in others)!r}:
            assert importlib.util.find_spec(other) is None, other + " must not be importable"
        from engage.core.plugins import plugin_infos
        names = sorted(info.name for info in plugin_infos())
        print(names)
        """
    )
    names = _run(str(python), "-c", probe, env=env, cwd=tmp_path).stdout.strip()
    expected = ["core"] if package == "engage-core" else sorted(["core", package.removeprefix("engage-")])
    assert names == str(expected)
    listed = _run(str(python), "-m", "engage.core.cli", "plugins", env=env, cwd=tmp_path).stdout
    assert package in listed
    if package in SMOKE:
        _run(str(python), "-c", textwrap.dedent(SMOKE[package]), env=env, cwd=tmp_path)
    tests = []
    for test in ALONE_TESTS.get(package, []):
        # a copy outside the checkout, so only the installed wheels can be imported
        module, _, name = test.partition("::")
        copy = tmp_path / Path(module).name
        copy.write_text((ROOT / module).read_text())
        tests.append(f"{copy}::{name}" if name else str(copy))
    if tests:
        pytest_command = [str(python), "-m", "pytest", "-q", "-p", "no:cacheprovider", *tests]
        ran = _run(*pytest_command, env=env, cwd=tmp_path, timeout=600)
        assert " passed" in ran.stdout and " skipped" not in ran.stdout, ran.stdout[-2000:]
