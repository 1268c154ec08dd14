"""What the benchmark scripts' command lines share: option types that refuse bad values in one
line naming the option (argparse's exit code 2, before any work), and a check that the output
can be written before hours are spent on what it will hold.

Example::

    >>> import argparse
    >>> parser = argparse.ArgumentParser(prog="bench")
    >>> _ = parser.add_argument("--jobs", type=whole_numbers(), default="1,8")
    >>> parser.parse_args(["--jobs", "2,4"]).jobs
    [2, 4]
"""

from __future__ import annotations

import argparse
import math
import os
import tempfile
from collections.abc import Callable, Iterable
from pathlib import Path


def whole(low: int = 1) -> Callable[[str], int]:
    """An option's type: a whole number >= ``low``."""

    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"must be a whole number >= {low}, got {text!r}") from None
        if value < low:
            raise argparse.ArgumentTypeError(f"must be a whole number >= {low}, got {value}")
        return value

    parse.__name__ = "whole number"
    return parse


def number(low: float = 0.0, strict: bool = True, unit: str = "") -> Callable[[str], float]:
    """An option's type: a finite number above ``low`` (``strict``), or at least ``low``."""
    sign = ">" if strict else ">="
    unit = f" {unit}" if unit else ""

    def parse(text: str) -> float:
        try:
            value = float(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"must be a number {sign} {low:g}{unit}, got {text!r}") from None
        if not math.isfinite(value) or value < low or (strict and value == low):
            raise argparse.ArgumentTypeError(f"must be a finite number {sign} {low:g}{unit}, got {text}")
        return value

    parse.__name__ = "number"
    return parse


def whole_numbers(low: int = 1) -> Callable[[str], list[int]]:
    """An option's type: comma-separated whole numbers >= ``low`` (``1,8,64``)."""
    one = whole(low)

    def parse(text: str) -> list[int]:
        return [one(part.strip()) for part in text.split(",") if part.strip()] or one("")

    parse.__name__ = "list of whole numbers"
    return parse


def names(choices: Iterable[str]) -> Callable[[str], list[str]]:
    """An option's type: comma-separated names, each one of ``choices``."""
    known = list(choices)

    def parse(text: str) -> list[str]:
        chosen = [part.strip() for part in text.split(",") if part.strip()]
        unknown = [name for name in chosen if name not in known]
        if not chosen:
            raise argparse.ArgumentTypeError(f"give one or more of {', '.join(known)}, comma-separated")
        if unknown:
            raise argparse.ArgumentTypeError(f"{', '.join(map(repr, unknown))} is not one of {', '.join(known)}")
        return chosen

    parse.__name__ = "list of names"
    return parse


def check_out(parser: argparse.ArgumentParser, path: str | os.PathLike[str], folder: bool = False) -> Path:
    """Make sure ``--out`` can be written (``folder``: a folder the results go into, made if
    missing; else the file's folder): argparse's one-line error and exit code 2 when not."""
    out = Path(path)
    where = out if folder else out.parent
    try:
        where.mkdir(parents=True, exist_ok=True)
        if not folder and out.is_dir():
            raise IsADirectoryError(f"{out} is a folder")
        with tempfile.NamedTemporaryFile(dir=where, prefix=".write-check-"):
            pass
        if not folder and out.exists():
            with open(out, "a"):  # a file kept from an earlier run: writable, left as it is
                pass
    except OSError as exc:
        parser.error(f"argument --out: cannot write {out} ({exc.strerror or exc}); give a path this user can write")
    return out
