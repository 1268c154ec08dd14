"""Sub-commands of the ``engage`` command line, contributed by plugins."""

from __future__ import annotations

import argparse
from collections.abc import Callable
from dataclasses import dataclass


@dataclass(frozen=True)
class Command:
    """A sub-command: ``engage NAME ...``.

    ``add_arguments`` fills the sub-parser; ``run`` receives the parsed namespace and returns the
    process exit code. Set ``passthrough`` for commands that take free-form arguments (such as
    Hydra overrides); they then arrive unparsed in ``namespace.args``.

    Example::

        Command("hello", "say hello", lambda p: p.add_argument("who"),
                lambda ns: print("hello", ns.who) or 0)
    """

    name: str
    help: str
    add_arguments: Callable[[argparse.ArgumentParser], None]
    run: Callable[[argparse.Namespace], int]
    passthrough: bool = False
