"""The documentation site builds with --strict, and a broken link fails the build."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
MKDOCS = Path(sys.executable).parent / "mkdocs"


def build(root: Path, site: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [str(MKDOCS), "build", "--strict", "--site-dir", str(site)],
        cwd=root,
        capture_output=True,
        text=True,
        timeout=300,
        env={**os.environ, "NO_MKDOCS_2_WARNING": "1"},
    )


@pytest.mark.slow
@pytest.mark.skipif(not MKDOCS.exists(), reason="the docs extra is not installed (pip install -e '.[docs]')")
def test_a_broken_link_fails_the_strict_build(tmp_path):
    copy = tmp_path / "repo"
    copy.mkdir()
    shutil.copytree(ROOT / "docs", copy / "docs")
    shutil.copy(ROOT / "mkdocs.yml", copy / "mkdocs.yml")
    for package in ("engage-core", "engage-sampling", "engage-memory", "engage-deploy"):
        (copy / "packages" / package).mkdir(parents=True)
        (copy / "packages" / package / "src").symlink_to(ROOT / "packages" / package / "src")
    good = build(copy, tmp_path / "site")
    assert good.returncode == 0, good.stderr[-3000:]
    # the API reference holds every public name, generated from the packages' __all__
    reference = (tmp_path / "site" / "reference" / "engage-core" / "index.html").read_text()
    for path in (
        "engage.core.online.datamodule.OnlineDataModule",
        "engage.core.space.ParameterSpace",
        "engage.core.callbacks.progress_bar.EngageProgressBar",
    ):
        assert f'id="{path}"' in reference, path
    page = copy / "docs" / "online.md"
    page.write_text(page.read_text() + "\nSee [the missing page](no-such-page.md).\n")
    broken = build(copy, tmp_path / "broken-site")
    assert broken.returncode != 0
    assert "no-such-page.md" in broken.stderr
