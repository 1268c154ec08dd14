"""Map how alike outputs are across the parameter space, and refine sampling where they differ."""

from __future__ import annotations

import time
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import lightning.pytorch as pl
import numpy as np
import torch
from scipy.stats import qmc

from engage.core.space import ParameterSpace
from engage.sampling.callbacks._common import (
    PeriodicAnalysis,
    Quantity,
    check_every,
    check_sampler,
    check_space,
    default_quantity,
    due,
    evaluate,
    find_sampler,
    find_space,
    log_figure,
    log_metrics,
    restore_sampler_state,
    saved_sampler,
    tried_quantity,
    warn_once,
    with_sampler_state,
)
from engage.sampling.samplers._unit import check_whole
from engage.sampling.similarity import METRICS, SimilarityLandscape, similarity_landscape, ssim_fits


class ImageSimilaritySampling(PeriodicAnalysis):
    """Compares outputs at neighbouring parameter points with scikit-image metrics (``ssim``,
    ``psnr``, ``nrmse``) and hands the resulting similarity landscape to the active sampler, which
    refines sampling between the neighbours that differ most
    (:class:`~engage.sampling.ImageSimilaritySampler`).

    ``source="predictions"``: the model's predictions at ``probe_points`` Sobol' points of the
    unit cube (``predict(model, unit_points) -> (n, H, W)``; default: the model at time 1). No
    simulation is needed. ``source="targets"``: the simulator outputs seen in training batches
    (the latest sample of each ``simulation_id``, up to ``max_points`` simulations).

    Every ``every_n_steps`` steps (default 200, or every ``every_n_epochs`` epochs) it logs the mean and largest
    dissimilarity and, to MLflow, a map of the landscape over two parameters.

    Example::

        >>> class Step(torch.nn.Module):  # an "image" that switches at x = 0.5
        ...     def forward(self, x):
        ...         return (x[:, :1, None] > 0.5).float().expand(-1, 8, 8)
        >>> callback = ImageSimilaritySampling(num_parameters=1, probe_points=16, metric="nrmse", neighbours=1)
        >>> landscape = callback.landscape_of(Step())
        >>> bool(abs(landscape.points[landscape.edges[np.argmax(landscape.dissimilarity)]].mean() - 0.5) < 0.1)
        True
    """

    def __init__(
        self,
        source: str = "predictions",
        predict: Quantity | None = None,
        probe_points: int = 64,
        space: ParameterSpace | None = None,
        num_parameters: int | None = None,
        sampler: Any = None,
        metric: str = "ssim",
        neighbours: int = 4,
        data_range: float | None = None,
        every_n_epochs: int | None = None,
        every_n_steps: int | None = 200,
        max_points: int = 512,
        seed: int = 0,
        log_plots: bool = True,
        plot_parameters: tuple[int, int] = (0, 1),
        plot_dir: str | Path | None = None,
    ):
        super().__init__()
        if source not in ("predictions", "targets"):
            raise ValueError(f"ImageSimilaritySampling source must be 'predictions' or 'targets', got {source!r}")
        if metric not in METRICS:
            raise ValueError(f"ImageSimilaritySampling metric must be one of {', '.join(METRICS)}, got {metric!r}")
        owner = "ImageSimilaritySampling"
        probe_points = check_whole(f"{owner} probe_points", probe_points, 2)
        neighbours = check_whole(f"{owner} neighbours", neighbours)
        max_points = check_whole(f"{owner} max_points", max_points, 2)
        if num_parameters is not None:
            num_parameters = check_whole(f"{owner} num_parameters", num_parameters)
        plot_parameters = tuple(plot_parameters) if isinstance(plot_parameters, (tuple, list)) else (plot_parameters,)
        if len(plot_parameters) != 2 or any(
            isinstance(i, bool) or not isinstance(i, (int, np.integer)) or i < 0 for i in plot_parameters
        ):
            raise ValueError(
                "ImageSimilaritySampling plot_parameters must be two parameter indices such as (0, 1), "
                f"got {plot_parameters!r}"
            )
        space = check_space(owner, space)
        sampler = check_sampler(owner, sampler)
        if data_range is not None and not data_range > 0:
            raise ValueError(
                f"ImageSimilaritySampling data_range must be > 0, or None to take it from the data; got {data_range}"
            )
        check_every("ImageSimilaritySampling", "every_n_steps", every_n_steps)
        check_every("ImageSimilaritySampling", "every_n_epochs", every_n_epochs)
        self.source = source
        self.predict = predict or default_quantity
        self.probe_points = int(probe_points)
        self.space = space
        self.num_parameters = num_parameters
        self.sampler = sampler
        self._saved_sampler: Any = None
        self.metric = metric
        self.neighbours = int(neighbours)
        self.data_range = data_range
        self.every_n_epochs = every_n_epochs
        self.every_n_steps = every_n_steps
        self.max_points = int(max_points)
        self.seed = int(seed)
        self.log_plots = log_plots
        self.plot_parameters = tuple(int(i) for i in plot_parameters)
        self.plot_dir = plot_dir
        #: the latest landscape (not checkpointed; recomputed at the next trigger)
        self.landscape: SimilarityLandscape | None = None
        #: metrics of every landscape so far (checkpointed)
        self.history: list[dict[str, float]] = []
        self.last_duration_s = 0.0
        self._seen: dict[int, tuple[float, np.ndarray, np.ndarray]] = {}

    def _dim(self, trainer: pl.Trainer | None) -> int:
        space = self.space
        if space is None and trainer is not None:
            space = find_space(trainer, None, find_sampler(trainer, self.sampler))
        if space is not None:
            return space.dim
        if self.num_parameters is not None:
            return int(self.num_parameters)
        raise ValueError("ImageSimilaritySampling cannot tell the number of parameters; pass space= or num_parameters=")

    @property
    def state_key(self) -> str:
        # two landscapes in one trainer (of predictions and of targets, or two metrics) each keep
        # their own; a period changed on resume keeps it too
        return self._generate_state_key(source=self.source, metric=self.metric)

    def on_fit_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        """Refuse, before training, what would fail at the first landscape: parameters it cannot
        count (no ``space`` nor ``num_parameters``, and none from the sampler or the DataModule),
        ``plot_parameters`` beyond them, and outputs that ``metric`` cannot compare (SSIM slides a
        window of at least 3x3 pixels: a 1D profile such as the Burgers simulator's ``(1, grid)``
        row is not an image to it)."""
        self._saved_sampler = saved_sampler(trainer, self.sampler)
        periodic = self.every_n_steps is not None or self.every_n_epochs is not None
        if periodic and self.source == "predictions":  # a landscape of targets takes its points from batches
            dim = self._dim(trainer)
            if dim >= 2 and max(self.plot_parameters) >= dim:
                raise ValueError(
                    f"ImageSimilaritySampling plot_parameters={self.plot_parameters} names a parameter beyond "
                    f"the {dim} there are; give two indices below {dim}"
                )
        simulator = getattr(getattr(trainer, "datamodule", None), "simulator", None)
        shape = tuple(getattr(simulator, "sample_shape", ()) or ())
        if self.metric == "ssim" and shape and not ssim_fits(shape):
            raise ValueError(
                f"callbacks.image_similarity.metric: ssim compares images of at least 3x3 pixels and the "
                f"simulator's samples are {shape}; use metric=nrmse or psnr"
            )
        if periodic and self.source == "predictions":
            images = tried_quantity("ImageSimilaritySampling", "predict", self.predict, pl_module, self._dim(trainer))
            if images.ndim < 2:
                raise ValueError(
                    "ImageSimilaritySampling: the model gives one number per point, not an image to compare; "
                    "give predict=, a function of (model, unit points) returning (n, H, W) images or (n, 1, W) "
                    "profiles"
                )

    def landscape_of(self, model: Any, trainer: pl.Trainer | None = None) -> SimilarityLandscape:
        """The similarity landscape of ``model``'s predictions at the probe points."""
        engine = qmc.Sobol(self._dim(trainer), scramble=True, rng=self.seed)
        probe = engine.random(self.probe_points)
        images = evaluate(self.predict, model, probe)
        return similarity_landscape(probe, images, self.neighbours, self.metric, self.data_range)

    def _landscape_of_targets(self) -> SimilarityLandscape | None:
        if len(self._seen) < 2:
            return None
        entries = list(self._seen.values())
        points = np.stack([e[1] for e in entries])
        images = np.stack([e[2] for e in entries])
        return similarity_landscape(points, images, self.neighbours, self.metric, self.data_range)

    def run(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> SimilarityLandscape | None:
        """Compute the landscape now, log it, and hand it to the sampler."""
        started = time.perf_counter()
        landscape = (
            self.landscape_of(pl_module, trainer) if self.source == "predictions" else self._landscape_of_targets()
        )
        if landscape is None or len(landscape.dissimilarity) == 0:
            return None
        self.landscape = landscape
        metrics = {
            "similarity/mean_dissimilarity": float(landscape.dissimilarity.mean()),
            "similarity/max_dissimilarity": float(landscape.dissimilarity.max()),
        }
        log_metrics(trainer, metrics)
        self.history.append({**metrics, "epoch": trainer.current_epoch, "step": trainer.global_step})
        sampler = find_sampler(trainer, self.sampler)
        if hasattr(sampler, "set_landscape"):
            sampler.set_landscape(landscape)
        elif sampler is not None:
            warn_once(
                self,
                "sampler",
                f"ImageSimilaritySampling: the active sampler {type(sampler).__name__} cannot refine by similarity; "
                "use sampler=image_similarity",
            )
        if self.log_plots:
            self._plot(trainer, landscape)
        self.last_duration_s = time.perf_counter() - started
        return landscape

    def _plot(self, trainer: pl.Trainer, landscape: SimilarityLandscape) -> None:
        import matplotlib

        matplotlib.use("Agg", force=False)
        import matplotlib.pyplot as plt
        from matplotlib.collections import LineCollection

        dim = landscape.points.shape[1]
        i, j = (self.plot_parameters if dim >= 2 else (0, 0))[:2]
        names = self.space.names if self.space is not None else [f"x{k + 1}" for k in range(dim)]
        xy = landscape.points[:, [i, j]] if dim >= 2 else np.c_[landscape.points[:, 0], landscape.scores]
        fig, ax = plt.subplots(figsize=(5, 4.2))
        segments = xy[landscape.edges]
        lines = LineCollection(segments, array=landscape.dissimilarity, cmap="magma", linewidths=1.5)
        ax.add_collection(lines)
        ax.scatter(xy[:, 0], xy[:, 1], c=landscape.scores, cmap="magma", s=18, edgecolors="k", linewidths=0.3)
        fig.colorbar(lines, ax=ax, label=f"dissimilarity ({landscape.metric})")
        ax.set_xlabel(f"{names[i]} (unit)")
        ax.set_ylabel(f"{names[j]} (unit)" if dim >= 2 else "largest dissimilarity")
        ax.set_title(f"similarity landscape, epoch {trainer.current_epoch}")
        ax.autoscale()
        fig.tight_layout()
        log_figure(trainer, fig, "similarity/landscape", self.plot_dir)

    # ------------------------------------------------------------------ Lightning hooks
    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        if self.source == "targets":
            if not isinstance(batch, Mapping) or "target" not in batch or "parameters" not in batch:
                got = type(batch).__name__ if not isinstance(batch, Mapping) else f"keys {', '.join(map(str, batch))}"
                raise TypeError(
                    "ImageSimilaritySampling(source='targets') needs batches that are mappings holding each "
                    f"sample's unit-normalised 'parameters' and its 'target' image, got {got}: have your "
                    "collate_fn return {'parameters': space.to_unit(x), 'target': y}, or use source='predictions'"
                )
            self._collect(batch)
        if due(trainer.global_step, self.every_n_steps):
            self.run(trainer, pl_module)

    def _collect(self, batch: Mapping[str, torch.Tensor]) -> None:
        unit = batch["parameters"].detach().float().cpu().numpy()
        targets = batch["target"].detach().float().cpu().numpy()
        times = batch["time"].detach().float().cpu().numpy().reshape(-1) if "time" in batch else np.ones(len(unit))
        ids = batch["simulation_id"].detach().cpu().numpy().reshape(-1) if "simulation_id" in batch else None
        rows: Any = range(len(unit))
        if ids is not None and len(ids):
            # a batch holds many steps of a few simulations: keep only each one's latest step here,
            # so the loop below runs once per simulation, not once per sample (this runs every step)
            order = np.lexsort((times, ids))
            last = np.r_[np.flatnonzero(np.diff(ids[order])), len(order) - 1]
            rows = order[last]
        for k in rows:
            key = int(ids[k]) if ids is not None else hash(unit[k].tobytes())
            if key in self._seen and self._seen[key][0] > times[k]:
                continue  # keep each simulation's latest state: the most developed image
            if key not in self._seen and len(self._seen) >= self.max_points:
                self._seen.pop(next(iter(self._seen)))
            self._seen[key] = (float(times[k]), unit[k], targets[k])

    def state_dict(self) -> dict[str, Any]:
        return with_sampler_state(
            {
                "history": [dict(h) for h in self.history],
                "landscape": self.landscape.to_dict() if self.landscape is not None else None,
            },
            self._saved_sampler,
        )

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        restore_sampler_state(state_dict, self.sampler)
        self.history = [dict(h) for h in state_dict.get("history", [])]
        landscape = state_dict.get("landscape")
        self.landscape = SimilarityLandscape.from_dict(landscape) if landscape is not None else None
