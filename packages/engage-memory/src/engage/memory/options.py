"""The options every memory strategy checks when built, and ``engage run`` before it runs: no
torch here, so that a config is checked without loading it."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from engage.memory.budget import fraction, fraction_error, parse_budget
from engage.memory.decisions import Decision

#: the planners' solvers: ``auto`` (``dp`` on chains of blocks, else ``cpsat``), ``dp``, ``cpsat``
SOLVERS = ("auto", "dp", "cpsat")


class StrategyOptionError(ValueError):
    """An option of a memory strategy that cannot work; ``field`` names it, the message says why."""

    def __init__(self, field: str, message: str) -> None:
        super().__init__(message)
        self.field = field


def check_options(budget: Any, solver: str, decisions: Sequence[str]) -> list[Decision]:
    """The options every memory strategy checks when built (and ``engage run`` before it runs):
    :class:`StrategyOptionError` naming the first wrong one. A fraction of device memory is read
    against the device when the strategy plans; here only its range is checked."""
    share = fraction(budget)
    try:
        if share is not None:
            if not 0.0 < share <= 1.0:  # NaN too
                raise ValueError(fraction_error("budget", budget))
        else:
            parse_budget(budget)  # fail at construction, not on the first batch
    except ValueError as exc:
        raise StrategyOptionError("budget", str(exc)) from None
    if solver not in SOLVERS:
        raise StrategyOptionError("solver", f"solver={solver!r} is unknown; choose one of {', '.join(SOLVERS)}")
    if isinstance(decisions, str) or not decisions:
        choices = ", ".join(x.value for x in Decision)
        raise StrategyOptionError("decisions", f"decisions={decisions!r}; give a list of at least one of {choices}")
    out = []
    for d in decisions:
        try:
            out.append(Decision(d))
        except ValueError:
            choices = ", ".join(x.value for x in Decision)
            raise StrategyOptionError("decisions", f"decisions contains {d!r}; choose among {choices}") from None
    return out
