"""Loss-density sampling: a scrambled Sobol' sequence made denser along each parameter where the
told losses are high."""

from __future__ import annotations

import math
import numbers
import warnings
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

import numpy as np
from scipy.stats import kruskal

from engage.core.samplers.base import FailureAction
from engage.core.space import ParameterSpace
from engage.sampling.samplers.losses import LossAverages
from engage.sampling.samplers.sobol_sequence import SobolSequenceSampler

if TYPE_CHECKING:
    from engage.core.online.record import SimulationRecord


class LossDensitySampler(SobolSequenceSampler):
    """Consecutive points of one scrambled Sobol' sequence (a :class:`SobolSequenceSampler`), each
    coordinate mapped so that the points are denser where the simulations told so far were hard.

    Each parameter's unit axis is cut into ``bins`` equal bins. A bin's *density* is the mean
    relative loss of the simulations whose points lie in it (each simulation's running-mean loss
    over the mean of all of them), shrunk towards 1 by ``prior`` pseudo-simulations of relative
    loss 1 (a bin with few simulations stays near 1) and kept within ``[1 / max_ratio,
    max_ratio]``. A new point's coordinate ``u`` of the sequence becomes the value the
    piecewise-constant density's quantile function gives ``u``: a bin of density 2 receives twice
    the points a bin of density 1 does, and the points keep the sequence's low discrepancy in the
    warped coordinates.

    A parameter is warped only when its bins' losses differ significantly: a one-way analysis of
    variance on ranks (Kruskal-Wallis, ``scipy.stats.kruskal``) over its bins must give a p-value
    below ``alpha`` divided by the number of parameters (Bonferroni). Ranks, because training
    losses are heavy-tailed: online on the Burgers benchmark, the losses of 32 simulations follow
    the viscosity (Spearman -0.57 to -0.69 over three runs), yet an analysis of variance of their
    values warped the viscosity in none of three runs, and of their ranks in two. Where the
    difficulty does not vary along a parameter, that parameter keeps the sequence's uniform
    coverage; with no significant parameter the sampler *is* the Sobol' sequence (``alpha=None``
    warps every parameter). Until ``2 * bins`` simulations have losses, every point is the
    sequence's, and the test needs more than that: with 6 bins, losses perfectly ordered by bin
    give at best p = 0.056 from 12 of them, 0.012 from 16 and 0.0004 from 24, so with three
    parameters (threshold 0.017) a parameter is warped from 16 losses on, later when they are
    not so ordered (one hard bin alone).

    The losses are what :class:`~engage.sampling.LossDrivenSampling` tells, per simulation
    (running means, never matched by value); tell it the error you judge the network by (core's
    surrogate returns each sample's squared relative error as ``per_sample_relative_loss``).
    Losses are taken as ``>= 0`` (a negative one counts as 0); those of a simulation that failed
    are forgotten, also when told after its failure.

    Unlike the samplers that refine around single points, it never crowds points around one
    simulation: along each parameter a bin gets at most ``M**2 * bins / (M**2 + bins - 1)`` and at
    least ``bins / (1 + (bins - 1) * M**2)`` times the sequence's uniform share (``M`` is
    ``max_ratio``; 4.6 and 0.07 with the defaults), which bounds what adaptivity costs where it
    cannot help; warped parameters multiply their factors in the joint space. Bins cut the unit
    axis evenly: an integer or categorical parameter whose values do not fall one to a bin is
    warped by bins, not by value.

    A failed simulation leaves the loss table and the sampler proposes the sequence's next point
    (``SUBSTITUTE``). Seeded; :meth:`state_dict` and :meth:`load_state_dict` continue exactly.

    Example::

        >>> from engage.core import ParameterSpace
        >>> space = ParameterSpace.from_config({"x": {"low": 0, "high": 1}, "y": {"low": 0, "high": 1}})
        >>> sampler = LossDensitySampler(space, seed=0, bins=4)
        >>> first = sampler.ask(32)
        >>> sampler.tell(first, losses=np.where(first[:, 0] < 0.25, 4.0, 1.0))  # hard where x < 0.25
        >>> sampler.densities().round(1)[:, 0].tolist()  # x's first bin is denser; y is not warped
        [2.0, 1.0]
        >>> bool((sampler.ask(64)[:, 0] < 0.25).mean() > 0.4)  # against a quarter without losses
        True
    """

    def __init__(
        self,
        space: ParameterSpace,
        seed: int | None = 0,
        bins: int = 6,
        max_ratio: float = 4.0,
        prior: float = 2.0,
        alpha: float | None = 0.05,
        max_points: int = 100_000,
    ):
        super().__init__(space, seed, scramble=True)
        for name, value, minimum in (("bins", bins, 2), ("max_points", max_points, 1)):
            if isinstance(value, bool) or not isinstance(value, numbers.Integral) or value < minimum:
                raise ValueError(f"{name} must be an integer >= {minimum}, got {value!r}")
        if not (math.isfinite(max_ratio) and max_ratio >= 1.0):
            raise ValueError(f"max_ratio must be finite and >= 1 (1: no warping), got {max_ratio}")
        if not (math.isfinite(prior) and prior > 0.0):
            raise ValueError(f"prior must be finite and > 0 (pseudo-simulations per bin), got {prior}")
        if alpha is not None and not 0.0 < float(alpha) <= 1.0:
            raise ValueError(f"alpha must be in (0, 1], or None to warp every parameter; got {alpha}")
        self.bins = int(bins)
        self.max_ratio = float(max_ratio)
        self.prior = float(prior)
        self.alpha = None if alpha is None else float(alpha)
        self._losses = LossAverages(int(max_points))
        self._density: np.ndarray | None = None  # computed once per change of the losses

    # ------------------------------------------------------------------ the density
    def loss_table(self) -> tuple[np.ndarray, np.ndarray]:
        """``(unit points, running-mean losses)`` of the simulations told so far."""
        points, losses = self._losses.table()
        return points.reshape(-1, self.space.dim), losses

    def densities(self) -> np.ndarray:
        """``(parameters, bins)``: the relative density of new points in each bin of each
        parameter's unit axis (rows of ones for parameters that are not warped)."""
        if self._density is None:
            self._density = self._densities()
        return self._density.copy()

    def _densities(self) -> np.ndarray:
        density = np.ones((self.space.dim, self.bins))
        points, losses = self.loss_table()
        finite = np.isfinite(losses)
        points, losses = points[finite], np.clip(losses[finite], 0.0, None)  # a negative loss counts as 0
        if len(losses) < 2 * self.bins or not losses.mean() > 0.0:
            return density
        relative = losses / losses.mean()
        cells = np.minimum((points * self.bins).astype(np.int64), self.bins - 1)
        for j in range(self.space.dim):
            groups = [relative[cells[:, j] == b] for b in range(self.bins)]
            if self.alpha is not None and not self._varies(groups):
                continue
            counts = np.array([len(g) for g in groups], dtype=np.float64)
            sums = np.array([g.sum() for g in groups])
            shrunk = (sums + self.prior) / (counts + self.prior)
            density[j] = np.clip(shrunk, 1.0 / self.max_ratio, self.max_ratio)
        return density

    def _varies(self, groups: list[np.ndarray]) -> bool:
        """Whether the losses differ between a parameter's bins (Kruskal-Wallis, Bonferroni over
        the parameters; all losses equal: no)."""
        usable = [g for g in groups if len(g) >= 2]
        if len(usable) < 2:
            return False
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # scipy's note on all-equal losses (its p-value is nan)
            p_value = float(kruskal(*usable).pvalue)
        return bool(np.isfinite(p_value) and p_value < self.alpha / self.space.dim)

    def _warp(self, unit: np.ndarray) -> np.ndarray:
        """Each coordinate through the quantile function of its parameter's density."""
        density = self.densities()
        edges = np.linspace(0.0, 1.0, self.bins + 1)
        warped = unit.copy()
        for j in np.flatnonzero(np.any(density != 1.0, axis=1)):
            cumulative = np.concatenate([[0.0], np.cumsum(density[j])]) / density[j].sum()
            warped[:, j] = np.interp(unit[:, j], cumulative, edges)
        return warped

    # ------------------------------------------------------------------ sampler contract
    def _ask(self, n: int) -> np.ndarray:
        return self.space.from_unit(self._warp(self._next_unit(n)))

    def _tell(self, points: np.ndarray, losses: np.ndarray | None, outputs: Sequence[Any] | None) -> None:
        if losses is not None:
            self._losses.add(self.space.to_unit(points), losses)
            self._density = None

    def _tell_simulations(
        self, simulation_ids: np.ndarray, points: np.ndarray, losses: np.ndarray | None, outputs: Sequence[Any] | None
    ) -> None:
        if losses is not None:
            self._losses.add(self.space.to_unit(points), losses, simulation_ids=simulation_ids)
            self._density = None

    def simulation_finished(self, record: SimulationRecord) -> None:
        """Place the finished simulation's losses at its record's exact point."""
        super().simulation_finished(record)
        self._losses.locate(record.simulation_id, record.unit)
        self._density = None

    def simulation_failed(self, record: SimulationRecord) -> FailureAction:
        """Forget the failed simulation's losses and let the sequence propose the next point."""
        self._losses.forget(record.simulation_id)
        self._density = None
        return super().simulation_failed(record)

    def state_dict(self) -> dict[str, Any]:
        return {**super().state_dict(), "loss_averages": self._losses.state_dict()}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        super().load_state_dict(state)
        self._losses.load_state_dict(state["loss_averages"])
        self._density = None
