"""What a run records about its environment so that it can be repeated."""

from __future__ import annotations

import os
import platform
import subprocess
import sys
from importlib.metadata import PackageNotFoundError, distributions, version
from pathlib import Path

KEY_PACKAGES = (
    "engage-core",
    "engage-sampling",
    "engage-memory",
    "engage-deploy",
    "torch",
    "lightning",
    "hydra-core",
    "mlflow",
    "numpy",
)


def package_versions(names: tuple[str, ...] = KEY_PACKAGES) -> dict[str, str]:
    """Installed versions of the packages that decide a run's numbers (absent ones omitted)."""
    found = {}
    for name in names:
        try:
            found[name] = version(name)
        except PackageNotFoundError:
            continue
    return found


def pip_freeze() -> str:
    """``name==version`` of every installed distribution, sorted (no subprocess)."""
    lines = {f"{d.metadata['Name']}=={d.version}" for d in distributions() if d.metadata["Name"]}
    return "\n".join(sorted(lines, key=str.lower)) + "\n"


def git_state(directory: str | Path | None = None) -> dict[str, str]:
    """Commit, branch and dirty diff of the git checkout holding ``directory`` (empty outside one)."""
    cwd = str(directory or Path.cwd())

    def git(*args: str) -> str:
        return subprocess.run(["git", *args], cwd=cwd, capture_output=True, text=True, timeout=10, check=True).stdout

    try:
        commit = git("rev-parse", "HEAD").strip()
    except (OSError, subprocess.SubprocessError):
        return {}
    state = {"commit": commit}
    try:
        state["branch"] = git("rev-parse", "--abbrev-ref", "HEAD").strip()
        state["diff"] = git("diff", "HEAD")
    except (OSError, subprocess.SubprocessError):
        pass
    return state


def environment_record() -> dict[str, object]:
    """Python, platform, hardware and key package versions."""
    import torch

    record: dict[str, object] = {
        "python": sys.version.split()[0],
        "platform": platform.platform(),
        "machine": platform.machine(),
        "processor": platform.processor(),
        "cpu_count": os.cpu_count(),
        "torch_cuda": torch.version.cuda,
        "gpus": [torch.cuda.get_device_name(i) for i in range(torch.cuda.device_count())],
        "packages": package_versions(),
    }
    return record
