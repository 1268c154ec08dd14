"""Sensitivity indices from model or simulator outputs, computed with SALib.

The scalar indices and their bootstrap confidence intervals come from SALib's analyzers. For
field outputs (one value per grid cell), the per-cell index maps use SALib's own first- and
total-order estimators, which work on a whole ``(N, cells)`` array at once.

Example::

    >>> import numpy as np
    >>> from SALib.sample import sobol as sobol_sample
    >>> problem = {"num_vars": 2, "names": ["a", "b"], "bounds": [[0, 1]] * 2}
    >>> X = sobol_sample.sample(problem, 256, calc_second_order=False, seed=0)
    >>> result = sobol_indices(X[:, 0] + 0.1 * X[:, 1], ["a", "b"], seed=0)
    >>> bool(result.S1[0] > 0.9 > result.S1[1])
    True
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
from SALib.analyze import morris as morris_analyze
from SALib.analyze import sobol as sobol_analyze


@dataclass
class SensitivityResult:
    """Indices of one analysis. ``S1``/``ST`` (Sobol) or ``mu_star``/``sigma`` (Morris) per
    parameter, their confidence half-widths, and for field outputs ``S1_map``/``ST_map`` of shape
    ``(d, *field_shape)``. :attr:`importance` is the normalised per-parameter importance used to
    re-weight samplers. ``groups``: the design groups analysed; ``groups_dropped``: those left out
    because one of their points failed; ``groups_pending``: those asked for and left out because
    some of their points have no result (never run, or still running)."""

    method: str
    names: list[str]
    S1: np.ndarray | None = None
    S1_conf: np.ndarray | None = None
    ST: np.ndarray | None = None
    ST_conf: np.ndarray | None = None
    mu_star: np.ndarray | None = None
    mu_star_conf: np.ndarray | None = None
    sigma: np.ndarray | None = None
    S1_map: np.ndarray | None = None
    ST_map: np.ndarray | None = None
    groups: int = 0
    groups_dropped: int = 0
    groups_pending: int = 0
    extra: dict[str, Any] = field(default_factory=dict)

    @property
    def importance(self) -> np.ndarray:
        """Non-negative weights summing to 1: total-order indices (Sobol) or ``mu*`` (Morris)."""
        raw = self.ST if self.method == "sobol" else self.mu_star
        raw = np.clip(np.nan_to_num(np.asarray(raw, dtype=np.float64)), 0.0, None)
        total = raw.sum()
        return raw / total if total > 0 else np.full(len(self.names), 1.0 / len(self.names))

    def metrics(self, prefix: str = "sensitivity") -> dict[str, float]:
        """Flat ``{prefix/S1/name: value}`` metrics for a logger."""
        keys = ("S1", "S1_conf", "ST", "ST_conf") if self.method == "sobol" else ("mu_star", "mu_star_conf", "sigma")
        out = {}
        for key in keys:
            values = getattr(self, key)
            for name, value in zip(self.names, values):
                out[f"{prefix}/{key}/{name}"] = float(value)
        return out


def _group_rows(Y: np.ndarray, step: int) -> np.ndarray:
    if Y.shape[0] % step:
        raise ValueError(f"the design has {Y.shape[0]} rows, not a multiple of its group size {step}")
    return Y.reshape(Y.shape[0] // step, step, *Y.shape[1:])


def sobol_index_maps(Y: np.ndarray, num_vars: int, calc_second_order: bool = False) -> tuple[np.ndarray, np.ndarray]:
    """First- and total-order index maps ``(d, *field_shape)`` of a field output ``(rows, *field_shape)``
    evaluated on a SALib Sobol design (``SALib.sample.sobol``), cell by cell."""
    Y = np.asarray(Y, dtype=np.float64)
    step = 2 * num_vars + 2 if calc_second_order else num_vars + 2
    groups = _group_rows(Y, step)
    A, B = groups[:, 0], groups[:, step - 1]
    S1 = np.stack([sobol_analyze.first_order(A, groups[:, 1 + j], B) for j in range(num_vars)])
    ST = np.stack([sobol_analyze.total_order(A, groups[:, 1 + j], B) for j in range(num_vars)])
    return S1, ST


def sobol_indices(
    Y: np.ndarray,
    names: Sequence[str],
    *,
    calc_second_order: bool = False,
    num_resamples: int = 100,
    conf_level: float = 0.95,
    seed: int | None = 0,
    groups_dropped: int = 0,
    groups_pending: int = 0,
) -> SensitivityResult:
    """Sobol indices of outputs ``Y`` on a SALib Sobol design, rows in design order.

    ``Y`` is ``(rows,)`` for a scalar quantity, or ``(rows, *field_shape)`` for a field: the scalar
    indices are then those of the field's mean, and the result also carries per-cell maps. The
    bootstrap intervals are the same for the same ``seed`` (``None``: not seeded).
    """
    Y = np.asarray(Y, dtype=np.float64)
    names = list(names)
    num_vars = len(names)
    step = 2 * num_vars + 2 if calc_second_order else num_vars + 2
    groups = _group_rows(Y, step).shape[0]
    if not np.all(np.isfinite(Y)):
        raise ValueError("outputs contain NaN or infinite values; drop or re-run the affected design groups")
    scalar = Y.reshape(Y.shape[0], -1).mean(axis=1) if Y.ndim > 1 else Y
    problem = {"num_vars": num_vars, "names": names, "bounds": [[0.0, 1.0]] * num_vars}
    si = sobol_analyze.analyze(
        problem,
        scalar,
        calc_second_order=calc_second_order,
        num_resamples=num_resamples,
        conf_level=conf_level,
        # SALib seeds its bootstrap only for a truthy seed: 0 would leave the intervals unseeded
        seed=None if seed is None else seed + 1,
    )
    result = SensitivityResult(
        method="sobol",
        names=names,
        S1=np.asarray(si["S1"]),
        S1_conf=np.asarray(si["S1_conf"]),
        ST=np.asarray(si["ST"]),
        ST_conf=np.asarray(si["ST_conf"]),
        groups=groups,
        groups_dropped=groups_dropped,
        groups_pending=groups_pending,
    )
    if calc_second_order:
        result.extra["S2"] = np.asarray(si["S2"])
        result.extra["S2_conf"] = np.asarray(si["S2_conf"])
    if Y.ndim > 1 and np.prod(Y.shape[1:]) > 1:
        result.S1_map, result.ST_map = sobol_index_maps(Y, num_vars, calc_second_order)
    return result


def morris_indices(
    X: np.ndarray,
    Y: np.ndarray,
    names: Sequence[str],
    *,
    num_levels: int = 4,
    num_resamples: int = 100,
    conf_level: float = 0.95,
    seed: int | None = 0,
    groups_dropped: int = 0,
    groups_pending: int = 0,
) -> SensitivityResult:
    """Morris elementary-effect statistics of outputs ``Y`` at unit-cube trajectory points ``X``
    (SALib's Morris design, rows in design order). A field output is reduced to its mean."""
    X = np.asarray(X, dtype=np.float64)
    Y = np.asarray(Y, dtype=np.float64)
    if not np.all(np.isfinite(Y)):
        raise ValueError("outputs contain NaN or infinite values; drop or re-run the affected trajectories")
    scalar = Y.reshape(Y.shape[0], -1).mean(axis=1) if Y.ndim > 1 else Y
    names = list(names)
    problem = {"num_vars": len(names), "names": names, "bounds": [[0.0, 1.0]] * len(names)}
    si = morris_analyze.analyze(
        problem, X, scalar, num_resamples=num_resamples, conf_level=conf_level, num_levels=num_levels, seed=seed
    )
    return SensitivityResult(
        method="morris",
        names=names,
        mu_star=np.asarray(si["mu_star"], dtype=np.float64),
        mu_star_conf=np.asarray(si["mu_star_conf"], dtype=np.float64),
        sigma=np.asarray(si["sigma"], dtype=np.float64),
        groups=X.shape[0] // (len(names) + 1),
        groups_dropped=groups_dropped,
        groups_pending=groups_pending,
        extra={"mu": np.asarray(si["mu"], dtype=np.float64)},
    )
