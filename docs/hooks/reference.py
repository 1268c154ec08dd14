"""MkDocs hook: the API reference, one page per package, generated from the public names
(``__all__``) of its public modules, so that the reference lists exactly what the packages export."""

from __future__ import annotations

import importlib
import inspect

#: each package's page and the modules whose ``__all__`` are its public names
PUBLIC_MODULES = {
    "engage-core": [
        "engage.core",
        "engage.core.online",
        "engage.core.simulators",
        "engage.core.samplers",
        "engage.core.callbacks",
        "engage.core.tracking",
        "engage.core.testing",
    ],
    "engage-sampling": ["engage.sampling", "engage.sampling.callbacks"],
    "engage-memory": ["engage.memory"],
    "engage-deploy": ["engage.deploy", "engage.deploy.callbacks", "engage.deploy.serve"],
}


def public_names(module_name: str) -> list[tuple[str, str]]:
    """``(name, where it is defined)`` for each name of ``module_name.__all__``."""
    module = importlib.import_module(module_name)
    out = []
    for name in module.__all__:
        obj = getattr(module, name)
        home = getattr(obj, "__module__", None) or ""
        qualname = getattr(obj, "__qualname__", None) if inspect.isclass(obj) or inspect.isfunction(obj) else None
        if qualname and home.startswith("engage.") and "<" not in qualname:
            out.append((name, f"{home}.{qualname}"))  # documented where it is defined
        else:
            out.append((name, f"{module_name}.{name}"))  # an instance or another library's name
    return out


def page(package: str) -> str:
    lines = [f"# {package}", ""]
    seen: set[str] = set()
    for module_name in PUBLIC_MODULES[package]:
        entries = [(n, path) for n, path in public_names(module_name) if path not in seen]
        if not entries:
            continue
        lines += [f"## `{module_name}`", ""]
        for _, path in entries:
            seen.add(path)
            lines += [f"::: {path}", "    options:", "      show_root_heading: true", "      heading_level: 3", ""]
    return "\n".join(lines)


def on_files(files, config):  # MkDocs' event: the generated pages join the site's files
    from mkdocs.structure.files import File

    for package in PUBLIC_MODULES:
        files.append(File.generated(config, f"reference/{package}.md", content=page(package)))
    return files
