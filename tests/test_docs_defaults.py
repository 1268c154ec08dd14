"""One source of truth for defaults: the site reads them from the code (``{{ default key }}``, the
generated defaults page), and wherever a page or the README states one as ``key=value`` or
``key: value`` next to the word "default" ("by default (`data.rate_limit: null`)", "`data.policy:
reservoir` by default", "the defaults ... (`data.simulations=96`, ..."), it must be the code's."""

from __future__ import annotations

import importlib.util
import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PAGES = [ROOT / "README.md", *sorted((ROOT / "docs").rglob("*.md"))]
#: an inline code span that is one setting, `data.policy=reservoir` or `data.policy: reservoir`
SETTING = re.compile(r"`(?P<key>[a-z_]+(?:\.[a-z_]+)+)(?:=|: )(?P<value>[^`\s]+)`")
SENTENCE_END = re.compile(r"(?<=[.;:])\s+(?=[A-Z(`])")
#: how close to a setting the word "default" must be, before it or after it (characters)
BEFORE, AFTER = 14, 16


def _hook():
    spec = importlib.util.spec_from_file_location("docs_defaults_hook", ROOT / "docs" / "hooks" / "defaults.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="module")
def hook():
    return _hook()


@pytest.fixture(scope="module")
def defaults(hook):
    return hook.engage_defaults()


def _prose(text: str) -> str:
    """The page without its fenced blocks (commands there show choices, not defaults)."""
    return re.sub(r"```.*?```", "", text, flags=re.DOTALL)


def stated_defaults(text: str) -> list[tuple[str, str, str]]:
    """``(key, value, sentence)`` for each setting next to the word "default", and for the settings
    listed right after such a one (``(`a=1`, `b=2`, `c=3`)``)."""
    found = []
    for paragraph in re.split(r"\n\s*\n", _prose(text)):
        for sentence in SENTENCE_END.split(" ".join(paragraph.split())):
            lowered, previous_end = sentence.lower(), None
            for m in SETTING.finditer(sentence):
                near = lowered[max(0, m.start() - BEFORE) : m.start()] + lowered[m.end() : m.end() + AFTER]
                listed = previous_end is not None and sentence[previous_end : m.start()].strip() in (",", ", and")
                previous_end = None
                if "default" in near or listed:
                    found.append((m["key"], m["value"], sentence))
                    previous_end = m.end()
    return found


def _same(stated: str, default: object, render) -> bool:
    if stated.strip("'\"") == render(default):
        return True
    try:
        return float(stated) == float(default)
    except (TypeError, ValueError):
        return False


def test_every_stated_default_is_the_codes(hook, defaults):
    checked, wrong = 0, []
    for page in PAGES:
        for key, value, sentence in stated_defaults(page.read_text()):
            if key not in defaults:
                continue
            checked += 1
            if not _same(value, defaults[key], hook.render):
                code = hook.render(defaults[key])
                wrong.append(f"{page.relative_to(ROOT)}: `{key}` is {code}, not {value}: {sentence}")
    assert not wrong, "\n".join(wrong)
    assert checked >= 5, f"only {checked} stated defaults found: the scan no longer sees them"


def test_a_wrong_stated_default_is_found(defaults, hook):
    text = "By default (`data.policy: firo`) samples are read once. Choose `data.capacity=10` for less."
    stated = stated_defaults(text)
    assert [(k, v) for k, v, _ in stated] == [("data.policy", "firo")]
    assert not _same("firo", defaults["data.policy"], hook.render)


def test_placeholders_read_the_code_and_an_unknown_key_fails_the_build(hook, defaults):
    from mkdocs.exceptions import PluginError

    assert hook.substitute("a buffer of {{ default data.capacity }} samples", defaults) == (
        f"a buffer of {defaults['data.capacity']} samples"
    )
    assert hook.substitute("{{ default data.rate_limit }}", defaults) == "null"
    with pytest.raises(PluginError, match=r"no key data\.capacty"):
        hook.substitute("{{ default data.capacty }}", defaults, "online.md")
    page = hook.defaults_page(defaults)
    assert f"| `data.policy` | `{defaults['data.policy']}` |" in page and "## data" in page
