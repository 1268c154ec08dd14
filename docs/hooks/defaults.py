"""MkDocs hook: the defaults of ``engage run`` as the code declares them, composed by Hydra once per
build, so that no page states a default of its own.

- ``{{ default data.capacity }}`` in a page becomes that key's default (``8192``); a key that does
  not exist fails the build;
- ``reference/defaults.md`` lists every default, group by group.
"""

from __future__ import annotations

import re

from mkdocs.exceptions import PluginError

PLACEHOLDER = re.compile(r"\{\{\s*default\s+([A-Za-z_][\w.]*)\s*\}\}")
#: keys that only say how Hydra builds an object (``_target_``, the class, stays)
WIRING = ("_recursive_", "_partial_")


def engage_defaults() -> dict[str, object]:
    """``{dotted key: default}`` for every leaf of ``engage run``'s composed config, interpolations
    (``${seed}``) as written."""
    from omegaconf import OmegaConf

    from engage.core.config.validate import compose_config

    config = compose_config()
    flat: dict[str, object] = {}

    def walk(node, prefix: str) -> None:
        for key in node:
            path = f"{prefix}{key}"
            if OmegaConf.is_interpolation(node, key):
                flat[path] = node._get_node(key)._value()
                continue
            value = node[key]
            if OmegaConf.is_config(value) and len(value) > 0 and not OmegaConf.is_list(value):
                walk(value, f"{path}.")
            elif str(key) not in WIRING:
                flat[path] = OmegaConf.to_container(value) if OmegaConf.is_config(value) else value

    walk(config, "")
    return flat


def render(value: object) -> str:
    """A default as it is written on the command line."""
    if value is None:
        return "null"
    if isinstance(value, bool):
        return str(value).lower()
    return str(value) if value != "" else '""'


def substitute(markdown: str, defaults: dict[str, object], page: str = "") -> str:
    def one(match: re.Match[str]) -> str:
        key = match.group(1)
        if key not in defaults:
            raise PluginError(f"{page}: '{{{{ default {key} }}}}': engage run has no key {key}")
        return render(defaults[key])

    return PLACEHOLDER.sub(one, markdown)


def defaults_page(defaults: dict[str, object]) -> str:
    lines = [
        "# Defaults of `engage run`",
        "",
        "Every key of `engage run`'s configuration with its default, read from the code when this site",
        "was built. Change one with `key=value` on the command line; `engage run --cfg job` prints the",
        "configuration a run would get.",
        "",
    ]
    groups: dict[str, list[tuple[str, object]]] = {}
    for key, value in defaults.items():
        group = key.split(".", 1)[0] if "." in key else "top level"
        groups.setdefault(group, []).append((key, value))
    for group, entries in groups.items():
        lines += [f"## {group}", "", "| key | default |", "| --- | --- |"]
        lines += [f"| `{key}` | `{render(value)}` |" for key, value in entries]
        lines.append("")
    return "\n".join(lines)


_DEFAULTS: dict[str, object] = {}


def on_config(config):  # MkDocs' event: compose once per build
    _DEFAULTS.clear()
    _DEFAULTS.update(engage_defaults())
    return config


def on_files(files, config):
    from mkdocs.structure.files import File

    files.append(File.generated(config, "reference/defaults.md", content=defaults_page(_DEFAULTS)))
    return files


def on_page_markdown(markdown, page, config, files):
    return substitute(markdown, _DEFAULTS, page.file.src_uri)
