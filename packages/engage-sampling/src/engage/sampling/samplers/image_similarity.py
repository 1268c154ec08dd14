"""Adaptive refinement of the parameter space where neighbouring outputs look least alike."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np

from engage.core.samplers.base import FailureAction, Sampler
from engage.core.space import ParameterSpace
from engage.sampling.samplers._unit import check_ratio, check_whole
from engage.sampling.similarity import METRICS, SimilarityLandscape, similarity_landscape


class ImageSimilaritySampler(Sampler):
    """Refines sampling between neighbouring points whose outputs differ most.

    Outputs (simulator images or fields) are told per point (``tell(points, outputs=...)``). Each
    point is then compared with its ``neighbours`` nearest told points using ``metric``
    (``ssim``, ``psnr``, ``nrmse``, from scikit-image); new points are placed between the most
    dissimilar neighbours, and a fraction ``exploration`` of points is drawn uniformly so that
    unexplored regions are found too. A landscape computed elsewhere (for instance from model
    predictions by :class:`~engage.sampling.callbacks.ImageSimilaritySampling`) can be given with
    :meth:`set_landscape`; it is part of :meth:`state_dict`, so a restored sampler refines by the
    same landscape as the original.

    Example::

        >>> from engage.core import ParameterSpace
        >>> space = ParameterSpace.from_config({"x": {"low": 0, "high": 1}})
        >>> sampler = ImageSimilaritySampler(space, seed=0, exploration=0.0, metric="nrmse", neighbours=1)
        >>> points = np.linspace(0, 1, 11)[:, None]
        >>> sampler.tell(points, outputs=[np.full((4, 4), float(x > 0.45)) for x in points[:, 0]])
        >>> bool(np.all(np.abs(sampler.ask(8)[:, 0] - 0.45) < 0.1))
        True
    """

    failure_action = FailureAction.SUBSTITUTE

    def __init__(
        self,
        space: ParameterSpace,
        seed: int | None = 0,
        exploration: float = 0.3,
        metric: str = "ssim",
        neighbours: int = 4,
        data_range: float | None = None,
        jitter: float = 0.25,
        top_k: int | None = 32,
    ):
        super().__init__(space, seed)
        if metric not in METRICS:
            raise ValueError(f"metric must be one of {', '.join(METRICS)}, got {metric!r}")
        check_whole("neighbours", neighbours)
        if top_k is not None:
            check_whole("top_k", top_k)
        if data_range is not None and not data_range > 0:
            raise ValueError(f"data_range must be > 0, or None to take it from the fields; got {data_range}")
        self.exploration = check_ratio("exploration", exploration)
        self.jitter = check_ratio("jitter", jitter)
        self.metric = metric
        self.neighbours = int(neighbours)
        self.data_range = data_range
        self.top_k = top_k
        self._points: list[list[float]] = []
        self._outputs: list[np.ndarray] = []
        self._landscape: SimilarityLandscape | None = None
        self._landscape_given = False  # set from outside: not recomputable from the told outputs

    def set_landscape(self, landscape: SimilarityLandscape) -> None:
        """Refine according to this landscape until new outputs are told."""
        if not isinstance(landscape, SimilarityLandscape):
            raise TypeError(f"set_landscape needs a SimilarityLandscape, got {type(landscape).__name__}")
        self._landscape = landscape
        self._landscape_given = True

    @property
    def landscape(self) -> SimilarityLandscape | None:
        """The landscape of the told outputs (computed on demand), or the one set explicitly."""
        if self._landscape is None and len(self._outputs) >= 2:
            self._landscape = similarity_landscape(
                np.asarray(self._points), np.stack(self._outputs), self.neighbours, self.metric, self.data_range
            )
        return self._landscape

    def _tell(self, points: np.ndarray, losses: np.ndarray | None, outputs: Sequence[Any] | None) -> None:
        if outputs is None:
            return
        arrays = [np.asarray(o, dtype=np.float64) for o in outputs]
        shapes = {a.shape for a in arrays} | ({self._outputs[0].shape} if self._outputs else set())
        if len(shapes) > 1:
            raise ValueError("outputs told to ImageSimilaritySampler must all have the same shape")
        self._points.extend(self.space.to_unit(points).tolist())
        self._outputs.extend(arrays)
        self._landscape = None
        self._landscape_given = False

    def _ask(self, n: int) -> np.ndarray:
        unit = self.rng.random((n, self.space.dim))
        landscape = self.landscape
        if landscape is None:
            return self.space.from_unit(unit)
        refine = self.rng.random(n) >= self.exploration
        if refine.any():
            unit[refine] = landscape.refine(int(refine.sum()), self.rng, self.jitter, self.top_k)
        return self.space.from_unit(unit)

    def state_dict(self) -> dict[str, Any]:
        return {
            **super().state_dict(),
            "points": [list(p) for p in self._points],
            "outputs": [o.tolist() for o in self._outputs],
            # a landscape computed from the told outputs is recomputed on restore; a given one is saved
            "landscape": self._landscape.to_dict() if self._landscape_given and self._landscape is not None else None,
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        super().load_state_dict(state)
        self._points = [list(p) for p in state["points"]]
        self._outputs = [np.asarray(o, dtype=np.float64) for o in state["outputs"]]
        given = state.get("landscape")
        self._landscape = SimilarityLandscape.from_dict(given) if given is not None else None
        self._landscape_given = given is not None
