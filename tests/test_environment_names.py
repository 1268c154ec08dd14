"""Each environment variable ENGAGE reads is named once: by the module that defines its name as
a constant (``NAME_ENV = "NAME"``), which every other reader imports, or, for a variable without
such a constant, by the one module that reads it."""

from __future__ import annotations

import re
from pathlib import Path

PACKAGES = Path(__file__).resolve().parents[1] / "packages"
#: ``environ.get("X")``, ``environ["X"]``, ``env.get("X")``, ``"X" in os.environ`` and the like
READ = re.compile(
    r"""(?:environ|\benv)(?:\.get\(|\.pop\(|\[|\.setdefault\()\s*["']([A-Z][A-Z0-9_]{2,})["']"""
    r"""|["']([A-Z][A-Z0-9_]{2,})["']\s+(?:not\s+)?in\s+(?:os\.)?environ"""
)
DEFINE = re.compile(r"""^\s*([A-Z][A-Z0-9_]*)\s*(?::[^=\n]+)?=\s*["']([A-Z][A-Z0-9_]{2,})["']""", re.M)
#: written not to import ENGAGE, to show a simulation in a plain script (it reads its keys itself)
STANDALONE = ("simulators/examples/",)


def test_each_environment_variable_is_read_by_name_in_one_module() -> None:
    reads: dict[str, set[str]] = {}
    defines: dict[str, set[str]] = {}
    for path in sorted(PACKAGES.glob("*/src/**/*.py")):
        module = path.relative_to(PACKAGES).as_posix()
        if any(part in module for part in STANDALONE):
            continue
        text = path.read_text()
        for match in DEFINE.finditer(text):
            defines.setdefault(match.group(2), set()).add(module)
        for line in text.splitlines():
            if line.strip().startswith(">>>"):  # a docstring's example sets what it shows
                continue
            for match in READ.finditer(line):
                reads.setdefault(match.group(1) or match.group(2), set()).add(module)
    assert len(reads) > 10, "the scan found no readers: the patterns no longer match the code"
    astray = {
        name: sorted(modules - defines.get(name, set()))
        for name, modules in reads.items()
        if (defines.get(name) and modules - defines[name]) or (not defines.get(name) and len(modules) > 1)
    }
    assert astray == {}, "read by literal name outside the module that names it: " + repr(astray)
