"""Every Python block of a tutorial runs, as it is written, in a fresh interpreter; at most one
block in five on a page is a fragment (marked ``<!-- fragment -->`` on the line before it)."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import pytest

DOCS = Path(__file__).resolve().parents[1] / "docs"
TUTORIALS = sorted((DOCS / "tutorials").glob("*.md"))
FENCE = re.compile(r"(?P<before>[^\n]*)\n```python\n(?P<code>.*?)\n```", re.DOTALL)
FRAGMENT = "<!-- fragment -->"


def blocks(page: Path) -> list[tuple[str, bool]]:
    """The page's Python blocks, each with whether it is a marked fragment."""
    return [(m["code"], m["before"].strip() == FRAGMENT) for m in FENCE.finditer("\n" + page.read_text())]


EXAMPLES = [
    pytest.param(code, id=f"{page.stem}-{i}")
    for page in TUTORIALS
    for i, (code, fragment) in enumerate(blocks(page))
    if not fragment
]


def test_every_tutorial_has_examples_and_few_fragments():
    assert TUTORIALS, "no tutorial pages"
    for page in TUTORIALS:
        found = blocks(page)
        assert found, f"{page.name} has no Python block"
        fragments = sum(fragment for _, fragment in found)
        assert fragments * 5 <= len(found), f"{page.name}: {fragments} of {len(found)} blocks are fragments"


@pytest.mark.slow
@pytest.mark.parametrize("code", EXAMPLES)
def test_tutorial_block_runs(code, tmp_path):
    done = subprocess.run([sys.executable, "-c", code], cwd=tmp_path, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
