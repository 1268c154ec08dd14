"""Tell the active sampler which simulations the network has not learnt yet."""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping
from typing import Any

import lightning.pytorch as pl
import numpy as np
import torch
from lightning.pytorch import Callback

from engage.sampling.callbacks._common import (
    check_sampler,
    due,
    log_metrics,
    required_sampler,
    restore_sampler_state,
    saved_sampler,
    warn_once,
    with_sampler_state,
)
from engage.sampling.samplers._unit import SCHEDULES, check_ratio, check_whole, scheduled_ratio

#: the training step's output read for per-sample losses unless ``output_key`` says otherwise
DEFAULT_OUTPUT_KEY = "per_sample_loss"

#: ``per_sample_loss(model, batch) -> (B,)``: the loss of each sample of a batch
PerSampleLoss = Callable[[pl.LightningModule, Mapping[str, torch.Tensor]], torch.Tensor]


@torch.no_grad()
def mse_per_sample(model: pl.LightningModule, batch: Mapping[str, torch.Tensor]) -> torch.Tensor:
    """Mean squared error of each sample of an ENGAGE batch (``parameters``, ``time``, ``target``).

    The model is called as ``model(parameters, time)``, or ``model(parameters)`` when the batch has
    no ``time``; the target is compared in the model's output units.
    """
    if "time" in batch:
        prediction = model(batch["parameters"], batch["time"])
    else:
        prediction = model(batch["parameters"])
    target = batch["target"].to(prediction.dtype).reshape(prediction.shape)
    return ((prediction - target) ** 2).reshape(len(prediction), -1).mean(dim=1)


class LossDrivenSampling(Callback):
    """Tells the active sampler the per-sample training (or validation) losses, so that a
    loss-aware sampler (:class:`~engage.sampling.LossDrivenSampler`) proposes new simulations
    around the highest-loss points.

    Per-sample losses are read from the ``training_step`` output when it is a mapping with
    ``per_sample_loss`` (free: read at every step and told to the sampler in one call every
    ``every_n_steps`` steps and at the end of training), else computed every ``every_n_steps``
    steps with ``per_sample_loss(model, batch)`` (default: per-sample MSE, one extra forward pass
    without gradients). Losses of samples of the same simulation (``simulation_id``) are averaged, and
    their parameters (unit-normalised in batches) are mapped back to values for ``tell``; batches
    that carry ``simulation_id`` (every online batch) are told keyed by it
    (``tell(..., simulation_ids=...)``), so the sampler never matches a loss to a point by value.

    With ``relative`` (default), each loss is told divided by the mean loss of its batch: every
    sample of a batch is judged by the same network, so the ratio says how hard a simulation is
    for the network *compared with the others*, whenever it was seen. Raw losses fall as the
    network learns, so a simulation seen early in training would keep a high running mean and
    outrank harder ones seen later: a loss-aware sampler then refines around the first
    simulations instead of the hard ones (online, on the 16x16 heat problem with 32 simulations,
    3 seeds: median held-out error 0.049 from raw losses, 0.031 from relative ones).

    With ``exploration`` set, the callback also drives the sampler's exploration ratio from
    ``exploration`` to ``exploration_final`` over training (``schedule``: constant, linear, cosine
    over ``max_steps`` or ``max_epochs``).

    Example::

        >>> from engage.core import ParameterSpace
        >>> from engage.sampling import LossDrivenSampler
        >>> sampler = LossDrivenSampler(ParameterSpace.from_config({"x": {"low": 0, "high": 1}}))
        >>> callback = LossDrivenSampling(sampler=sampler)
        >>> batch = {"parameters": torch.tensor([[0.1], [0.9]]), "simulation_id": torch.tensor([0, 1])}
        >>> callback.tell(sampler, batch, torch.tensor([0.0, 2.0]))
        2
        >>> sampler.loss_table()[1].tolist()  # relative to the batch's mean loss, 1.0
        [0.0, 2.0]
    """

    def __init__(
        self,
        sampler: Any = None,
        per_sample_loss: PerSampleLoss | None = None,
        stage: str = "train",
        every_n_steps: int = 10,
        output_key: str = DEFAULT_OUTPUT_KEY,
        exploration: float | None = None,
        exploration_final: float | None = None,
        schedule: str = "linear",
        relative: bool = True,
    ):
        super().__init__()
        if stage not in ("train", "val"):
            raise ValueError(f"LossDrivenSampling stage must be 'train' or 'val', got {stage!r}")
        if schedule not in SCHEDULES:
            raise ValueError(f"LossDrivenSampling schedule must be one of {', '.join(SCHEDULES)}, got {schedule!r}")
        # the losses are told to the sampler every so many steps, and at the end of training: no "off"
        every_n_steps = check_whole("LossDrivenSampling every_n_steps", every_n_steps)
        self.sampler = check_sampler("LossDrivenSampling", sampler)
        self.per_sample_loss = per_sample_loss or mse_per_sample
        self.stage = stage
        self.every_n_steps = every_n_steps
        self.output_key = output_key
        if exploration is None and exploration_final is not None:
            raise ValueError("LossDrivenSampling exploration_final needs exploration, the schedule's start")
        self.exploration = None if exploration is None else check_ratio("exploration", exploration)
        final = self.exploration if exploration_final is None else exploration_final
        self.exploration_final = None if final is None else check_ratio("exploration_final", final)
        self.schedule = schedule
        self.relative = bool(relative)
        #: simulations told so far (checkpointed)
        self.told = 0
        #: per-sample losses read from step outputs since the last tell: (unit points, losses, ids)
        self._held: list[tuple[np.ndarray, np.ndarray, np.ndarray | None]] = []
        #: the last training batch whose losses were neither read nor computed (told at the end)
        self._untold: Any = None
        self._saved_sampler: Any = None

    def tell(self, sampler: Any, batch: Mapping[str, torch.Tensor], losses: torch.Tensor) -> int:
        """Tell ``sampler`` the losses of one batch (and of the batches held since the last tell),
        averaged per simulation within each batch; returns the points told."""
        self._hold(batch, losses)
        return self._tell_held(sampler)

    def _hold(self, batch: Mapping[str, torch.Tensor], losses: torch.Tensor) -> None:
        """Keep one batch's losses for the next tell (a copy on the host: a few numbers)."""
        unit = batch["parameters"].detach().float().cpu().numpy()
        values = torch.as_tensor(losses).detach().float().cpu().numpy().reshape(-1)
        if len(values) != len(unit):
            raise ValueError(f"per-sample loss has {len(values)} values for a batch of {len(unit)}")
        ids = batch.get("simulation_id")
        # held-out simulations are numbered apart from the sampler's own: their losses are told
        # at their points, never credited to the sampler's simulation of the same number
        ids = None if ids is None or self.stage == "val" else torch.as_tensor(ids).cpu().numpy().reshape(-1)
        self._held.append((unit, values, ids))

    def _tell_held(self, sampler: Any) -> int:
        """Tell the held batches' losses in one call of the sampler: each divided by its batch's
        mean (``relative``), averaged per simulation within its batch; all batches at once."""
        held, self._held = self._held, []
        if self._gathers():
            held = _gathered(held)
        if not held:
            return 0
        unit = np.concatenate([u for u, _, _ in held])
        values = np.concatenate([v for _, v, _ in held]).astype(np.float64)
        batch = np.repeat(np.arange(len(held)), [len(v) for _, v, _ in held])
        # a batch without simulation ids: each sample its own (negative ids never clash)
        ids = np.concatenate([
            i if i is not None else -1 - np.arange(len(v)) for _, v, i in held
        ]).astype(np.int64)  # fmt: skip
        if self.relative:
            finite = np.isfinite(values)
            sums = np.bincount(batch, weights=np.where(finite, values, 0.0), minlength=len(held))
            counts = np.bincount(batch, weights=finite, minlength=len(held))
            scale = np.divide(sums, counts, out=np.zeros_like(sums), where=counts > 0)
            # a batch the network fits exactly (or whose losses are unusable) ranks nothing
            keep = scale[batch] > 0.0
            unit, batch, ids = unit[keep], batch[keep], ids[keep]
            values = values[keep] / scale[batch]
        if not len(values):
            return 0
        # (batch, simulation) as one integer, ordered as the pairs are: a 1-D unique is fast
        span = int(ids.max()) - int(ids.min()) + 1
        key = batch * span + (ids - ids.min())
        _, first, inverse = np.unique(key, return_index=True, return_inverse=True)
        values = np.bincount(inverse, weights=values) / np.bincount(inverse)
        space = sampler.space
        points = np.clip(space.from_unit(unit[first]), space.bounds[:, 0], space.bounds[:, 1])
        if all(i is not None for _, _, i in held):  # keyed by simulation, never matched by value
            sampler.tell(points, losses=values, simulation_ids=ids[first])
        else:
            sampler.tell(points, losses=values)
        self.told += len(points)
        return len(points)

    def _gathers(self) -> bool:
        """Whether each tell takes every rank's losses: under DDP, for a sampler given to this
        callback that no DataModule holds (each rank has its own copy, which would otherwise learn
        from its own batches alone and propose other points than the others). Training batches
        only: every rank tells at the same steps. A DataModule's sampler (ENGAGE's online one gives
        each rank its own simulations) is told its own rank's."""
        return (
            self.stage == "train"
            and self._saved_sampler is not None
            and torch.distributed.is_available()
            and torch.distributed.is_initialized()
            and torch.distributed.get_world_size() > 1
        )

    def _progress(self, trainer: pl.Trainer) -> float:
        """How far training is, from 0 to 1 at its last step (Lightning's estimate of the steps
        ``max_steps`` or ``max_epochs`` allow), so that the schedule ends at ``exploration_final``."""
        total = trainer.estimated_stepping_batches
        if math.isfinite(total) and total > 0:
            return min(1.0, trainer.global_step / total)
        if trainer.max_epochs and trainer.max_epochs > 0:
            return min(1.0, (trainer.current_epoch + 1) / trainer.max_epochs)
        return 0.0

    def _sampler(self, trainer: pl.Trainer) -> Any:
        return required_sampler(
            trainer, self.sampler, "LossDrivenSampling", "to tell the losses to (a loss-aware one)", "space",
            "parameter space (its 'space'), which the losses' points are told in; give it one, as "
            "engage.core.samplers.Sampler does",
        )  # fmt: skip

    def on_fit_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        """Refuse, before the first step, a callback with no sampler to tell: it would train the
        whole run telling nothing."""
        self._sampler(trainer)
        self._saved_sampler = saved_sampler(trainer, self.sampler)

    def _handle(self, trainer: pl.Trainer, pl_module: pl.LightningModule, outputs: Any, batch: Any) -> None:
        sampler = self._sampler(trainer)
        if not isinstance(batch, Mapping) or "parameters" not in batch:
            got = type(batch).__name__ if not isinstance(batch, Mapping) else f"keys {', '.join(map(str, batch))}"
            raise TypeError(
                "LossDrivenSampling needs batches that are mappings holding each sample's unit-normalised "
                f"'parameters' (ENGAGE's DataModules give them), got {got}: have your collate_fn return "
                "{'parameters': space.to_unit(x), 'target': y}"
            )
        now = self.stage == "val" or due(trainer.global_step, self.every_n_steps)
        self._untold = None if now or self.stage == "val" else batch
        if isinstance(outputs, Mapping) and self.output_key in outputs:
            self._untold = None
            # free at every step: held, and told every every_n_steps steps in one call
            self._hold(batch, outputs[self.output_key])
            if not now:
                return
            self._tell_held(sampler)
        elif now:
            if isinstance(outputs, Mapping) and (self.output_key != DEFAULT_OUTPUT_KEY or set(outputs) - {"loss"}):
                warn_once(
                    self,
                    "output_key",
                    f"LossDrivenSampling: the training step's output has no {self.output_key!r} (it has "
                    f"{', '.join(map(str, outputs))}); per-sample losses are computed by another forward pass "
                    "(return them under that key, or set output_key=)",
                )
            self.tell(sampler, batch, self.per_sample_loss(pl_module, batch))
        else:
            return
        if self.exploration is not None and hasattr(sampler, "exploration"):
            ratio = scheduled_ratio(self.exploration, self.exploration_final, self.schedule, self._progress(trainer))
            sampler.exploration = sampler.exploration_final = ratio
            log_metrics(trainer, {"sampling/exploration": ratio})

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        if self.stage == "train":
            self._handle(trainer, pl_module, outputs, batch)

    def on_validation_batch_end(self, trainer, pl_module, outputs, batch, batch_idx, dataloader_idx=0) -> None:
        if self.stage == "val" and not trainer.sanity_checking:
            self._handle(trainer, pl_module, outputs, batch)

    def on_train_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        # the last steps' losses too: held ones, else the last batch's, computed now (a run shorter
        # than every_n_steps, or fast_dev_run, tells its sampler something)
        untold, self._untold = self._untold, None
        if untold is not None:
            self._hold(untold, self.per_sample_loss(pl_module, untold))
        if self._held:
            self._tell_held(self._sampler(trainer))

    def state_dict(self) -> dict[str, Any]:
        # the losses held since the last tell, as plain lists (a checkpoint loads without pickles)
        held = [(u.tolist(), v.tolist(), None if i is None else i.tolist()) for u, v, i in self._held]
        return with_sampler_state({"told": self.told, "held": held}, self._saved_sampler)

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        self.told = int(state_dict.get("told", 0))
        restore_sampler_state(state_dict, self.sampler)
        self._held = [
            (np.asarray(u, np.float32), np.asarray(v, np.float32), None if i is None else np.asarray(i))
            for u, v, i in state_dict.get("held", [])
        ]


def _gathered(held: list[Any]) -> list[Any]:
    """Every rank's held losses, in rank order (one collective call on every rank)."""
    everyone: list[Any] = [None] * torch.distributed.get_world_size()
    torch.distributed.all_gather_object(everyone, held)
    return [entry for rank_held in everyone for entry in rank_held]
