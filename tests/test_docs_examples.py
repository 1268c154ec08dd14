"""Every tutorial runs as it is written: its ``python`` and ``bash`` blocks, in page order, in one
fresh folder (a block may use what an earlier one made), each Python block in a fresh interpreter,
each shell block under ``bash -euo pipefail`` with this environment's ``engage`` and ``python``
first on the PATH.

Two marks, on the line before a block, say that it does not run:

- ``<!-- fragment -->`` on a Python block that is part of a larger program; at most one Python
  block in five on a page;
- ``<!-- not run -->`` on a shell block that installs something or starts a server that runs until
  stopped (``pip install``, ``mlflow ui``); never on one that calls ``engage``.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import pytest

DOCS = Path(__file__).resolve().parents[1] / "docs"
TUTORIALS = sorted((DOCS / "tutorials").glob("*.md"))
FENCE = re.compile(r"(?P<before>[^\n]*)\n```(?P<language>python|bash)\n(?P<code>.*?)\n```", re.DOTALL)
FRAGMENT, NOT_RUN = "<!-- fragment -->", "<!-- not run -->"
#: a block's time limit; the tutorials use tiny sizes
BLOCK_TIMEOUT_S = 300


@dataclass(frozen=True)
class Block:
    page: str
    number: int
    language: str
    code: str
    mark: str

    @property
    def runs(self) -> bool:
        return self.mark not in (FRAGMENT, NOT_RUN)


def blocks(page: Path) -> list[Block]:
    """The page's Python and shell blocks in order, each with the mark on the line before it."""
    return [
        Block(page.name, i, m["language"], m["code"], m["before"].strip())
        for i, m in enumerate(FENCE.finditer("\n" + page.read_text()))
    ]


@pytest.mark.parametrize("page", TUTORIALS, ids=lambda p: p.stem)
def test_a_tutorial_runs_nearly_all_of_its_blocks(page):
    found = blocks(page)
    python = [b for b in found if b.language == "python"]
    assert python, f"{page.name} has no Python block"
    fragments = [b for b in python if b.mark == FRAGMENT]
    assert len(fragments) * 5 <= len(python), f"{page.name}: {len(fragments)} of {len(python)} blocks are fragments"
    for block in found:
        if block.mark == NOT_RUN:
            assert block.language == "bash", f"{page.name} block {block.number}: only shell blocks are 'not run'"
            assert not re.search(r"(^|\s)engage\s", block.code), f"{page.name} block {block.number} calls engage"
        assert block.mark != FRAGMENT or block.language == "python", f"{page.name} block {block.number}"


def test_the_runner_refuses_a_page_with_too_many_fragments(tmp_path):
    page = tmp_path / "page.md"
    page.write_text("text\n\n" + "\n".join(f"{FRAGMENT}\n```python\nx = {i}\n```\n" for i in range(2)))
    python = [b for b in blocks(page) if b.language == "python"]
    assert [b.mark for b in python] == [FRAGMENT, FRAGMENT]
    with pytest.raises(AssertionError, match="2 of 2 blocks are fragments"):
        test_a_tutorial_runs_nearly_all_of_its_blocks(page)


def _environment() -> dict[str, str]:
    environment = {k: v for k, v in os.environ.items() if not k.startswith(("MLFLOW_", "ENGAGE_"))}
    environment["PATH"] = f"{Path(sys.executable).parent}{os.pathsep}{environment.get('PATH', '')}"
    return environment


@pytest.mark.slow
@pytest.mark.parametrize("page", TUTORIALS, ids=lambda p: p.stem)
def test_a_tutorial_runs(page, tmp_path):
    environment = _environment()
    for block in blocks(page):
        if not block.runs:
            continue
        started = time.monotonic()
        if block.language == "python":
            script = tmp_path / f"block_{block.number}.py"
            script.write_text(block.code + "\n")
            command = [sys.executable, script.name]
        else:
            command = ["bash", "-euo", "pipefail", "-c", block.code]
        done = subprocess.run(
            command, cwd=tmp_path, env=environment, capture_output=True, text=True, timeout=BLOCK_TIMEOUT_S
        )
        where = f"{page.name} block {block.number} ({block.language}, {time.monotonic() - started:.1f} s)"
        assert done.returncode == 0, f"{where}:\n{block.code}\n--- stderr:\n{done.stderr[-3000:]}"
