"""Packages whose public names are imported on first use (PEP 562).

A process that needs one small part of a package (a sweep job's runner, Hydra composing a config
through a plugin's search path, ``engage --help``) should not pay seconds of SciPy, pandas or
SALib imports for classes it never touches.

Example::

    >>> import types
    >>> package = types.ModuleType("example")
    >>> package.__getattr__, package.__dir__ = lazy_exports("example", {"sqrt": "math"}, vars(package))
    >>> package.sqrt(9.0)
    3.0
"""

from __future__ import annotations

import importlib
from collections.abc import Callable, Mapping, MutableMapping
from typing import Any


def lazy_exports(
    package: str, names: Mapping[str, str], namespace: MutableMapping[str, Any]
) -> tuple[Callable[[str], Any], Callable[[], list[str]]]:
    """``__getattr__`` and ``__dir__`` for ``package``: each of ``names`` (public name -> module
    that defines it) is imported when first asked for, then kept in ``namespace`` (the package's
    ``globals()``) so later lookups are plain attribute reads."""

    def __getattr__(name: str) -> Any:
        module = names.get(name)
        if module is None:
            raise AttributeError(f"module {package!r} has no attribute {name!r}")
        value = getattr(importlib.import_module(module), name)
        namespace[name] = value
        return value

    def __dir__() -> list[str]:
        return sorted(set(namespace) | set(names))

    return __getattr__, __dir__
