"""Where the simulations went: the run's simulation table and a plot of the sampled points in MLflow."""

from __future__ import annotations

import logging
from typing import Any

import lightning.pytorch as pl
import numpy as np

log = logging.getLogger("engage.online")

#: the key of a ``training_step`` output holding each sample's loss, ``(B,)`` (the convention of
#: engage-sampling's loss-driven sampling, which reads it too)
PER_SAMPLE_LOSS = "per_sample_loss"
#: the key of a ``training_step`` output holding each sample's squared relative error, ``(B,)``:
#: ``||prediction - target||^2 / ||target||^2`` in the simulator's units, the square of the relative
#: L2 error surrogates are judged by (``LossDrivenSampling(output_key=...)`` tells it to a sampler).
#: A target of zero norm gives ``inf``, which samplers ignore; a target near zero gives a very large
#: value that outweighs its batch: for fields that cross zero, tell ``per_sample_loss`` instead
PER_SAMPLE_RELATIVE_LOSS = "per_sample_relative_loss"


class SimulationReport(pl.Callback):
    """At the end of training, logs to MLflow the table of the run's simulations
    (``online/simulations.json``: one column per parameter, status, attempt, samples, duration,
    host, error and the mean training loss of its samples) and the sampled points as pairwise
    scatter plots coloured by order and by loss (``online/sampled_points_by_order.png``,
    ``online/sampled_points_by_loss.png``), each axis a parameter's name and unit, the held-out
    simulations validation runs on marked beside them. The loss is
    known when ``training_step`` returns ``{"loss": ..., "per_sample_loss": (B,)}``. A fit that
    fails logs the table too (:meth:`on_exception`).

    :class:`~engage.core.online.datamodule.OnlineDataModule` adds it to the trainer by itself.

    Example::

        >>> report = SimulationReport()
        >>> import torch
        >>> report.on_train_batch_end(None, None, {"per_sample_loss": torch.tensor([1.0, 3.0])},
        ...                           {"simulation_id": torch.tensor([4, 4])}, 0)
        >>> report.mean_losses()
        {4: 2.0}
    """

    def __init__(self) -> None:
        self._loss_sum: dict[int, float] = {}
        self._loss_count: dict[int, int] = {}

    def on_train_batch_end(self, trainer: Any, pl_module: Any, outputs: Any, batch: Any, batch_idx: int) -> None:
        if not isinstance(outputs, dict) or PER_SAMPLE_LOSS not in outputs or "simulation_id" not in batch:
            return
        losses = outputs[PER_SAMPLE_LOSS].detach().float().cpu().numpy().reshape(-1)
        ids = batch["simulation_id"].detach().cpu().numpy().reshape(-1)
        if losses.shape != ids.shape:
            return
        for sim, total, count in zip(*_group_sums(ids, losses), strict=True):
            self._loss_sum[sim] = self._loss_sum.get(sim, 0.0) + total
            self._loss_count[sim] = self._loss_count.get(sim, 0) + count

    def mean_losses(self) -> dict[int, float]:
        """The mean training loss of each simulation's samples, as trained so far."""
        return {sim: self._loss_sum[sim] / self._loss_count[sim] for sim in sorted(self._loss_sum)}

    def table(
        self, datamodule: Any, rows: list[dict[str, Any]] | None = None, losses: dict[int, float] | None = None
    ) -> dict[str, list[Any]]:
        """The simulations of this run as columns (for ``mlflow.log_table``): ``rows``, journal
        entries, and ``losses``, mean training losses by simulation (every rank's, gathered),
        else this rank's."""
        if rows is None:
            rows = list(datamodule.scheduler.journal.latest().values())
        rows = sorted(rows, key=lambda e: e["simulation_id"])
        names = list(datamodule.simulator.space.names)
        losses = self.mean_losses() if losses is None else losses
        columns: dict[str, list[Any]] = {"simulation_id": [r["simulation_id"] for r in rows]}
        for name in names:
            columns[name] = [(r.get("parameters") or {}).get(name) for r in rows]
        for key, column in (
            ("status", "status"),
            ("attempt", "attempt"),
            ("samples_received", "samples"),
            ("duration", "duration_s"),
            ("host", "host"),
            ("error", "error"),
        ):
            columns[column] = [r.get(key) for r in rows]
        # parameters exactly as simulated; a duration to the millisecond and a loss to 6 digits read
        # better in MLflow's table view
        columns["duration_s"] = [None if d is None else round(float(d), 3) for d in columns["duration_s"]]
        columns["mean_train_loss"] = [_significant(losses.get(int(r["simulation_id"]))) for r in rows]
        return columns

    def on_train_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        dm = _online_datamodule(trainer)
        if dm is None:
            return
        # every rank's simulations and losses (a collective: every rank gets here), rank 0 records them
        rows, (sums, counts) = self._gathered(dm)
        if trainer.is_global_zero:
            losses = {sim: sums[sim] / counts[sim] for sim in sorted(sums)}
            self._log(trainer, dm, self.table(dm, rows, losses), "online/simulations.json", figures=True)

    def on_exception(self, trainer: pl.Trainer, pl_module: pl.LightningModule, exception: BaseException) -> None:
        """A fit that failed logs its table too, so that its simulations (which failed, with what
        error, which were running) are read beside the failure, as they stood when it failed:
        those this rank knows, since another rank may be gone (no collective):
        ``online/simulations.json`` on one rank, ``online/simulations_rank0.json`` under several.
        Nothing for a run stopped (Ctrl-C, SIGTERM, a requeue), nor for one whose MLflow server
        stopped answering."""
        from engage.core.run import Requeued
        from engage.core.tracking.store import lost_server

        dm = _online_datamodule(trainer)
        if dm is None or not trainer.is_global_zero or not isinstance(exception, Exception):
            return
        if isinstance(exception, Requeued):
            return
        name = "online/simulations.json" if trainer.world_size == 1 else "online/simulations_rank0.json"
        try:
            for logger in _mlflow_loggers(trainer):
                if lost_server(exception, logger.experiment.tracking_uri):
                    return
            self._log(trainer, dm, self.table(dm), name, figures=False)
        except Exception as exc:  # the run's own failure is the one to report
            log.warning("engage: the failed run's table of simulations was not logged (%s)", exc)

    def _log(self, trainer: pl.Trainer, dm: Any, table: dict[str, list[Any]], name: str, figures: bool) -> None:
        loggers = _mlflow_loggers(trainer)
        if not loggers or not table["simulation_id"]:
            return
        held_out = getattr(dm, "held_out_points", None)
        plots = sampled_points_figures(table, dm.simulator.space, held_out) if figures else {}
        for logger in loggers:
            logger.experiment.log_table(logger.run_id, data=table, artifact_file=name)
            for plot, figure in plots.items():
                logger.experiment.log_figure(logger.run_id, figure, f"online/sampled_points_by_{plot}.png")

    def _gathered(self, dm: Any) -> tuple[list[dict[str, Any]], tuple[dict[int, float], dict[int, int]]]:
        """Journal entries and loss sums of every rank under distributed training (the
        DataModule's own gloo group), this rank's alone otherwise."""
        rows = list(dm.scheduler.journal.latest().values())
        losses = (dict(self._loss_sum), dict(self._loss_count))
        group = getattr(dm, "_group", None)
        if group is None:
            return rows, losses
        import torch.distributed as dist

        gathered: list[Any] = [None] * dist.get_world_size(group)
        dist.all_gather_object(gathered, (rows, losses), group=group)
        sums: dict[int, float] = {}
        counts: dict[int, int] = {}
        for _, (rank_sums, rank_counts) in gathered:
            for sim, total in rank_sums.items():
                sums[sim] = sums.get(sim, 0.0) + total
                counts[sim] = counts.get(sim, 0) + rank_counts[sim]
        return [row for rank_rows, _ in gathered for row in rank_rows], (sums, counts)


def _online_datamodule(trainer: pl.Trainer) -> Any:
    """The trainer's online DataModule with its journal of simulations, else None."""
    dm = getattr(trainer, "datamodule", None)
    if dm is None or getattr(dm, "scheduler", None) is None or dm.scheduler.journal is None:
        return None
    return dm


def _mlflow_loggers(trainer: pl.Trainer) -> list[Any]:
    from lightning.pytorch.loggers import MLFlowLogger

    return [logger for logger in trainer.loggers if isinstance(logger, MLFlowLogger)]


def _significant(value: float | None, digits: int = 6) -> float | None:
    return None if value is None else float(f"{value:.{digits}g}")


def _group_sums(ids: np.ndarray, values: np.ndarray) -> tuple[list[int], list[float], list[int]]:
    unique, inverse = np.unique(ids, return_inverse=True)
    sums = np.bincount(inverse, weights=values.astype(np.float64))
    counts = np.bincount(inverse)
    return [int(u) for u in unique], [float(s) for s in sums], [int(c) for c in counts]


def sampled_points_figures(
    table: dict[str, list[Any]], space: Any, held_out: np.ndarray | None = None
) -> dict[str, Any]:
    """Pairwise scatter plots of the sampled parameters (every pair of parameters, one panel
    each; one parameter: its values against the order), coloured by order (``order``) and, where
    the table has losses, by mean training loss (``loss``); ``held_out`` (``(n, d)`` in the
    space's units, its parameters in order) are marked as grey crosses on the pairwise panels.
    Matplotlib figures by name."""
    from matplotlib.figure import Figure

    names = [name for name in space.names if name in table]
    points = np.array([[np.nan if v is None else float(v) for v in table[n]] for n in names], dtype=float).T
    order = np.asarray(table["simulation_id"], dtype=float)
    colourings = {"order": (order, "simulation order (id)")}
    losses = [np.nan if v is None else float(v) for v in table.get("mean_train_loss", [])]
    if losses and not np.all(np.isnan(losses)):
        colourings["loss"] = (np.asarray(losses), "mean training loss of its samples (model's loss)")
    pairs = [(i, j) for i in range(len(names)) for j in range(i + 1, len(names))]
    columns_of = [list(space.names).index(name) for name in names]
    held = (
        None if held_out is None or not len(held_out) else np.asarray(held_out, dtype=float).reshape(len(held_out), -1)
    )
    figures = {}
    for key, (colour, colour_label) in colourings.items():
        panels = max(1, len(pairs))
        columns = min(panels, 4)
        rows = -(-panels // columns)
        figure = Figure(figsize=(3.2 * columns + 1.2, 3.0 * rows), layout="constrained")
        axes = np.atleast_1d(figure.subplots(rows, columns)).reshape(-1)
        scatter = None
        if pairs:
            for ax, (i, j) in zip(axes, pairs, strict=False):
                scatter = ax.scatter(points[:, i], points[:, j], c=colour, s=14, cmap="viridis", label="sampled")
                if held is not None:
                    ax.scatter(held[:, columns_of[i]], held[:, columns_of[j]], marker="x", c="0.45", s=16,
                               linewidths=0.8, label=f"held-out ({len(held)})")  # fmt: skip
                ax.set_xlabel(space[names[i]].label)
                ax.set_ylabel(space[names[j]].label)
            if held is not None:
                axes[0].legend(loc="best", fontsize="small")
        else:
            scatter = axes[0].scatter(order, points[:, 0], c=colour, s=14, cmap="viridis")
            axes[0].set_xlabel("simulation order (id)")
            axes[0].set_ylabel(space[names[0]].label)
        for ax in axes[len(pairs) or 1 :]:
            ax.set_visible(False)
        bar = figure.colorbar(scatter, ax=list(axes), label=colour_label)
        if key == "order":  # simulation ids: whole numbers
            from matplotlib.ticker import MaxNLocator

            bar.locator = MaxNLocator(integer=True)
            bar.update_ticks()
        also = f", {len(held)} held-out" if held is not None and pairs else ""
        figure.suptitle(f"sampled points ({len(order)} simulations{also}), coloured by {key}")
        figures[key] = figure
    return figures
