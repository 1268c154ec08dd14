"""Each environment variable ENGAGE reads or sets is named once: by the module that defines its
name as a constant (``NAME_ENV = "NAME"``, or ``NAME = "NAME"``), which every other user imports,
or, for a variable without such a constant, by the one module that reads it."""

from __future__ import annotations

import ast
import re
from pathlib import Path

PACKAGES = Path(__file__).resolve().parents[1] / "packages"
#: ``environ.get("X")``, ``environ["X"]``, ``env.get("X")``, ``"X" in os.environ`` and the like
READ = re.compile(
    r"""(?:environ|\benv)(?:\.get\(|\.pop\(|\[|\.setdefault\()\s*["']([A-Z][A-Z0-9_]{2,})["']"""
    r"""|["']([A-Z][A-Z0-9_]{2,})["']\s+(?:not\s+)?in\s+(?:os\.)?environ"""
)
#: written not to import ENGAGE, to show a simulation in a plain script (it reads its keys itself)
STANDALONE = ("simulators/examples/",)


def _modules() -> list[tuple[str, str, ast.Module]]:
    found = []
    for path in sorted(PACKAGES.glob("*/src/**/*.py")):
        module = path.relative_to(PACKAGES).as_posix()
        if not any(part in module for part in STANDALONE):
            text = path.read_text()
            found.append((module, text, ast.parse(text)))
    return found


def _docstrings(tree: ast.Module) -> set[int]:
    """The ids of the docstrings' nodes (their examples set variables to show what they do)."""
    found = set()
    for node in ast.walk(tree):
        if isinstance(node, (ast.Module, ast.ClassDef, ast.FunctionDef, ast.AsyncFunctionDef)) and node.body:
            first = node.body[0]
            if isinstance(first, ast.Expr) and isinstance(first.value, ast.Constant):
                found.add(id(first.value))
    return found


def _definitions(tree: ast.Module) -> dict[str, int]:
    """Variable name -> the id of the string constant that names it, in ``NAME_ENV = "NAME"`` (or
    ``NAME = "NAME"``, or such pairs in one tuple assignment)."""
    found = {}
    for node in ast.walk(tree):
        if not isinstance(node, ast.Assign):
            continue
        for target in node.targets:
            pairs = [(target, node.value)]
            if isinstance(target, ast.Tuple) and isinstance(node.value, ast.Tuple):
                pairs = list(zip(target.elts, node.value.elts))
            for name, value in pairs:
                if (
                    isinstance(name, ast.Name)
                    and isinstance(value, ast.Constant)
                    and isinstance(value.value, str)
                    and (name.id.endswith("_ENV") or name.id == value.value)
                ):
                    found[value.value] = id(value)
    return found


def test_each_environment_variable_is_named_in_one_module() -> None:
    modules = _modules()
    defined: dict[str, list[str]] = {}
    for module, _, tree in modules:
        for name in _definitions(tree):
            defined.setdefault(name, []).append(module)
    assert len(defined) > 20, "the scan found no definitions: the patterns no longer match the code"
    assert {name: where for name, where in defined.items() if len(where) > 1} == {}, "defined twice"
    astray: dict[str, set[str]] = {}
    reads: dict[str, set[str]] = {}
    for module, text, tree in modules:
        docs = _docstrings(tree)
        for node in ast.walk(tree):
            # a defined name spelt out anywhere but where it is defined (a tuple of names included)
            if (
                isinstance(node, ast.Constant)
                and isinstance(node.value, str)
                and node.value in defined
                and id(node) not in docs
                and module not in defined[node.value]
            ):
                astray.setdefault(node.value, set()).add(module)
        for line in text.splitlines():
            if not line.strip().startswith(">>>"):
                for match in READ.finditer(line):
                    reads.setdefault(match.group(1) or match.group(2), set()).add(module)
    assert astray == {}, "spelt out outside the module that names it: " + repr(astray)
    assert len(reads) > 10, "the scan found no readers: the patterns no longer match the code"
    several = {name: sorted(where) for name, where in reads.items() if name not in defined and len(where) > 1}
    assert several == {}, "read by literal name in several modules, with no constant naming it: " + repr(several)
