"""The values of Slurm job options that ENGAGE reads (``time``, ``mem``, ``cpus_per_task`` and
its own seconds), read and checked once for both the Slurm executor (``data.executor_options``)
and the Slurm provider (``infrastructure.options``): a value sbatch would refuse, or take in a
way the user did not mean (``time=-5`` gives jobs an invalid limit), is one line naming the field
before anything is submitted.

Example::

    >>> [time_limit_s(v) for v in (30, "0:02", "1:00:00", "2-0", "1-01:30", "INFINITE")]
    [1800, 2, 3600, 172800, 91800, None]
    >>> check_job_values("data.executor_options", {"time": "-5"})
    Traceback (most recent call last):
    ...
    ValueError: data.executor_options.time is '-5'; give minutes (30), 'HH:MM:SS', 'D-HH:MM' or UNLIMITED
"""

from __future__ import annotations

import math
import re
from collections.abc import Mapping
from typing import Any

#: a Slurm memory size (``--mem``): whole units, megabytes when none is given
MEMORY = re.compile(r"(\d+)([KMGT]?)", re.IGNORECASE)

_TIME_FIX = "give minutes (30), 'HH:MM:SS', 'D-HH:MM' or UNLIMITED"


def time_limit_s(value: Any) -> int | None:
    """A Slurm time limit (``--time``) in seconds: ``minutes``, ``minutes:seconds``,
    ``hours:minutes:seconds``, ``days-hours``, ``days-hours:minutes`` or
    ``days-hours:minutes:seconds``; ``None`` for none, ``UNLIMITED``, ``INFINITE`` or zero (no
    limit, for sbatch). ``ValueError`` for anything else."""
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, (int, str)):
        raise ValueError(f"{value!r} is not a Slurm time limit")
    text = str(value).strip()
    if text.upper() in ("", "UNLIMITED", "INFINITE"):
        return None
    days_text, dash, clock = text.partition("-") if "-" in text else ("0", "", text)
    fields = clock.split(":")
    if not (days_text.isdigit() and all(f.isdigit() for f in fields) and 1 <= len(fields) <= 3):
        raise ValueError(f"{value!r} is not a Slurm time limit")
    days, numbers = int(days_text), [int(f) for f in fields]
    if dash:  # days-hours[:minutes[:seconds]]
        hours, minutes, seconds = (*numbers, 0, 0)[:3]
    elif len(numbers) == 1:  # minutes
        hours, minutes, seconds = 0, numbers[0], 0
    elif len(numbers) == 2:  # minutes:seconds
        hours, minutes, seconds = 0, *numbers
    else:
        hours, minutes, seconds = numbers
    return ((days * 24 + hours) * 60 + minutes) * 60 + seconds or None


def _seconds(value: Any) -> bool:
    return not isinstance(value, bool) and isinstance(value, (int, float)) and math.isfinite(value) and value > 0


def check_job_values(prefix: str, options: Mapping[str, Any]) -> None:
    """``ValueError``, one line naming ``prefix.KEY`` and the fix, for the first of ``options``'
    ``time``, ``mem``, ``cpus_per_task``, ``partition``, ``account``, ``max_pending_s``,
    ``probe_timeout_s`` and ``check_folder`` that is given and wrong (``None``: Slurm's default)."""
    time = options.get("time")
    try:
        time_limit_s(time)
    except ValueError:
        raise ValueError(f"{prefix}.time is {time!r}; {_TIME_FIX}") from None
    mem = options.get("mem")
    if mem is not None and (isinstance(mem, bool) or not MEMORY.fullmatch(str(mem).strip())):
        raise ValueError(f"{prefix}.mem is {mem!r}; give a size with K, M, G or T, e.g. 512M or 2G")
    cpus = options.get("cpus_per_task")
    if cpus is not None and (isinstance(cpus, bool) or not isinstance(cpus, int) or cpus < 1):
        raise ValueError(f"{prefix}.cpus_per_task is {cpus!r}; give a whole number from 1, e.g. 2")
    for key in ("partition", "account"):
        if options.get(key) is not None and (not isinstance(options[key], str) or not options[key].strip()):
            raise ValueError(f"{prefix}.{key} is {options[key]!r}; give its name, as `sinfo` or `sacctmgr` shows it")
    for key in ("max_pending_s", "probe_timeout_s"):
        if key in options and not _seconds(options[key]):
            raise ValueError(f"{prefix}.{key} is {options[key]!r}; give seconds above 0, e.g. 600")
    if "check_folder" in options and not isinstance(options["check_folder"], bool):
        raise ValueError(f"{prefix}.check_folder is {options['check_folder']!r}; give true or false")
