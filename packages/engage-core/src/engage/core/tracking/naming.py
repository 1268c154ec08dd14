"""Names of MLflow runs that say what a run is and are never reused.

A single run: its experiment (the ``experiment=`` option, else the MLflow experiment) and a short
random id, ``heat_quick-3fa2c1``. A sweep: ``sweep-MMDD-HHMM-xxxx``. A job of a sweep: the sweep's
name, the job's number and the overrides that differ between its jobs,
``sweep-1203-1005-a3f1#1 model.lr=0.003``. The ids come from the operating system's random
source, never from the generators a seed fixes: runs with the same seed get different names.
"""

from __future__ import annotations

import json
import secrets
import time
from collections.abc import Sequence
from typing import Any

#: the tag of a sweep's parent run holding its command line's overrides (a JSON list)
SWEEP_OVERRIDES_TAG = "engage.sweep_overrides"
#: the tag of a sweep job's run holding the job's number in its sweep (one run per attempt)
JOB_TAG = "engage.job"
#: the tag of a sweep job's run holding the hash of its resolved config and task (resume matches on it)
CONFIG_HASH_TAG = "engage.config_hash"
#: the tag of a sweep job's run holding which of the job's attempts it is, from 1
ATTEMPT_TAG = "engage.attempt"
#: MLflow's limit on a parameter's value (a run's overrides, a sweep's)
PARAM_MAX_CHARS = 6000
#: the param of each run holding its simulator's parameter space in words, units included (a
#: key no config option has)
SIMULATOR_SPACE_PARAM = "engage.simulator_space"


def sweep_overrides_of(run: Any) -> list[str]:
    """The overrides of the sweep whose parent run is ``run`` (an MLflow ``Run``)."""
    try:
        return list(json.loads(run.data.tags[SWEEP_OVERRIDES_TAG]))
    except (KeyError, ValueError, TypeError):
        return (run.data.params.get("sweep_overrides") or "").split()


def short_id(nbytes: int = 3) -> str:
    """Random hex digits (``2 * nbytes``), independent of every seeded generator."""
    return secrets.token_hex(nbytes)


def single_run_name(what: str) -> str:
    """``what-xxxxxx``: ``what`` is the experiment option or the MLflow experiment."""
    return f"{what}-{short_id()}"


def sweep_name(now: float | None = None) -> str:
    """``sweep-MMDD-HHMM-xxxx`` (local time)."""
    return f"sweep-{time.strftime('%m%d-%H%M', time.localtime(now))}-{short_id(2)}"


def swept_keys(sweep_overrides: Sequence[str]) -> set[str]:
    """The config keys a sweep's command line gives several values (``model.lr=0.1,0.3``,
    ``range(...)``, ``choice(...)``), as Hydra parses them."""
    from hydra.core.override_parser.overrides_parser import OverridesParser

    try:
        parsed = OverridesParser.create().parse_overrides(list(sweep_overrides))
    except Exception:  # not Hydra's syntax (a launcher of another kind): every override shows
        return set()
    return {o.key_or_group for o in parsed if o.is_sweep_override()}


def job_run_name(sweep: str, job_number: int, job_overrides: Sequence[str], sweep_overrides: Sequence[str]) -> str:
    """``sweep#N`` followed by the job's overrides of the keys the sweep varies (all of the job's
    overrides when the sweep's are not known).

    Example::

        >>> job_run_name("sweep-1203-1005-a3f1", 1, ["experiment=quick", "model.lr=0.003"],
        ...              ["experiment=quick", "model.lr=0.001,0.003"])
        'sweep-1203-1005-a3f1#1 model.lr=0.003'
    """
    from hydra.core.override_parser.overrides_parser import OverridesParser

    varying = swept_keys(sweep_overrides)
    shown = list(job_overrides)
    if varying:
        parsed = OverridesParser.create().parse_overrides(shown)
        shown = [text for text, o in zip(shown, parsed, strict=True) if o.key_or_group in varying]
    return " ".join([f"{sweep}#{job_number}", *shown])
