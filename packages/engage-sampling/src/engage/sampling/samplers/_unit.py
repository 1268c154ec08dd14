"""Small helpers for proposals in the unit hypercube."""

from __future__ import annotations

import math

import numpy as np

SCHEDULES = ("constant", "linear", "cosine")


def reflect(unit: np.ndarray) -> np.ndarray:
    """Fold coordinates back into [0, 1] by mirroring at the faces (keeps the density near edges,
    where clipping would pile points onto the faces)."""
    folded = np.mod(unit, 2.0)
    return np.clip(np.where(folded > 1.0, 2.0 - folded, folded), 0.0, 1.0)


def scheduled_ratio(start: float, end: float, schedule: str, progress: float) -> float:
    """Value of a ratio moving from ``start`` to ``end`` as ``progress`` goes from 0 to 1."""
    progress = min(max(progress, 0.0), 1.0)
    if schedule == "constant":
        return start
    if schedule == "linear":
        return start + (end - start) * progress
    return end + (start - end) * 0.5 * (1.0 + math.cos(math.pi * progress))


def check_whole(name: str, value: int, minimum: int = 1) -> int:
    """``value`` as a whole number >= ``minimum`` (numpy integers too; never a float or a string
    silently rounded); :class:`ValueError` naming ``name`` otherwise."""
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < minimum:
        raise ValueError(f"{name} must be a whole number >= {minimum}, got {value!r}")
    return int(value)


def check_ratio(name: str, value: float) -> float:
    value = float(value)
    if not 0.0 <= value <= 1.0:
        raise ValueError(f"{name} must be in [0, 1], got {value}")
    return value


def normalised_weights(weights: np.ndarray | list[float], dim: int) -> np.ndarray:
    """Per-parameter weights scaled to mean 1; checks length and sign."""
    weights = np.asarray(weights, dtype=np.float64).reshape(-1)
    if weights.shape[0] != dim:
        raise ValueError(f"got {weights.shape[0]} parameter weights for a space of {dim} parameters")
    if np.any(weights < 0) or not np.all(np.isfinite(weights)) or weights.sum() <= 0:
        raise ValueError(f"parameter weights must be finite, >= 0 and not all zero, got {weights.tolist()}")
    return weights / weights.mean()
