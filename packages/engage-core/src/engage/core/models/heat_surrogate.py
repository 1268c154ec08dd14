"""A reduced-basis surrogate: (simulation parameters, time) -> latent coefficients -> field."""

from __future__ import annotations

import math
from collections.abc import Sequence

import lightning.pytorch as pl
import torch
from torch import nn

from engage.core.online.report import PER_SAMPLE_LOSS, PER_SAMPLE_RELATIVE_LOSS


class HeatSurrogate(pl.LightningModule):
    """Maps normalised parameters and time to a 2D field through a learned linear basis (POD-like).

    The field is ``basis @ z + mean`` where ``z`` (``rank`` coefficients) is the sum of two
    branches: ``sum_i [p, 1]_i * a_i(t)`` with ``a`` an MLP of time alone (exact for problems that
    are linear in their parameters at each time, such as the heat equation in its initial and
    boundary temperatures), and an MLP of ``(p, t)`` for what is not linear. Smooth fields need
    few modes, so a step costs a few small matrix products instead of full-resolution
    convolutions. ``refine`` adds one cheap 3x3 convolution (``refine`` channels) on the field.

    Batches are mappings with ``parameters`` ``(B, d)`` in ``[0, 1]``, ``time`` ``(B, 1)`` in
    ``[0, 1]`` and ``target`` ``(B, H, W)`` (raw values). Targets are scaled to ``[0, 1]`` with
    ``value_range`` when given. Logs ``train/loss``, ``val/loss`` and ``val/rel_l2`` (relative L2
    error of the field, the usual surrogate metric). ``training_step`` also returns each sample's
    loss (``per_sample_loss``, the squared error in scaled units) and squared relative error
    (``per_sample_relative_loss``), for a loss-aware sampler to be told either.

    Example::

        >>> import torch
        >>> model = HeatSurrogate(num_parameters=5, sample_shape=(16, 16), width=8)
        >>> model(torch.rand(2, 5), torch.rand(2, 1)).shape
        torch.Size([2, 16, 16])
    """

    def __init__(
        self,
        num_parameters: int,
        sample_shape: Sequence[int],
        value_range: Sequence[float] | None = None,
        width: int = 32,
        lr: float = 2e-3,
        weight_decay: float = 0.0,
        lr_schedule: str = "cosine",
        samples_per_run: int | None = None,
        rank: int | None = None,
        refine: int = 0,
    ):
        super().__init__()
        if len(sample_shape) != 2:
            raise ValueError(f"HeatSurrogate predicts 2D fields; sample_shape is {tuple(sample_shape)}")
        if width < 1:
            raise ValueError(f"model.width must be >= 1, got {width}")
        if lr_schedule not in ("cosine", "constant"):
            raise ValueError(f"model.lr_schedule must be 'cosine' or 'constant', got {lr_schedule!r}")
        self.save_hyperparameters()
        pixels = int(sample_shape[0]) * int(sample_shape[1])
        self.rank = int(rank) if rank else min(4 * width, pixels)
        hidden = 4 * width
        inputs = num_parameters + 1
        # a(t): one coefficient vector per parameter (plus a constant), combined linearly with p
        self.time_net = nn.Sequential(
            nn.Linear(1, hidden), nn.GELU(), nn.Linear(hidden, hidden), nn.GELU(), nn.Linear(hidden, inputs * self.rank)
        )
        self.mixed_net = nn.Sequential(
            nn.Linear(inputs, hidden), nn.GELU(), nn.Linear(hidden, hidden), nn.GELU(), nn.Linear(hidden, self.rank)
        )
        # the mixed branch starts silent so the linear structure is learned first
        nn.init.zeros_(self.mixed_net[-1].weight)
        nn.init.zeros_(self.mixed_net[-1].bias)
        self.basis = nn.Linear(self.rank, pixels)
        nn.init.normal_(self.basis.weight, std=1.0 / math.sqrt(pixels))
        nn.init.constant_(self.basis.bias, 0.5)
        self.refiner = (
            nn.Sequential(nn.Conv2d(1, refine, 3, padding=1), nn.GELU(), nn.Conv2d(refine, 1, 3, padding=1))
            if refine
            else None
        )
        low, high = value_range if value_range is not None else (0.0, 1.0)
        self.register_buffer("offset", torch.tensor(float(low)), persistent=False)
        self.register_buffer("scale", torch.tensor(float(high) - float(low)), persistent=False)

    def forward(self, parameters: torch.Tensor, time: torch.Tensor) -> torch.Tensor:
        """Predicted field in scaled units (``[0, 1]`` when ``value_range`` is set)."""
        ones = torch.ones_like(time)
        p = torch.cat([parameters, ones], dim=1)  # (B, d + 1)
        a = self.time_net(time).view(time.shape[0], p.shape[1], self.rank)
        z = torch.bmm(p.unsqueeze(1), a).squeeze(1) + self.mixed_net(torch.cat([parameters, time], dim=1))
        field = self.basis(z).view(-1, 1, *self.hparams.sample_shape)
        if self.refiner is not None:
            field = field + self.refiner(field)
        return field.squeeze(1)

    def predict_field(self, parameters: torch.Tensor, time: torch.Tensor) -> torch.Tensor:
        """Predicted field in the simulator's units."""
        return self(parameters, time) * self.scale + self.offset

    def _step(self, batch, stage: str) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """The batch's loss, and each sample's loss and squared relative error."""
        target = (batch["target"] - self.offset) / self.scale
        prediction = self(batch["parameters"], batch["time"])
        squared_errors = (prediction - target).square().flatten(1)
        sample_losses = squared_errors.mean(dim=1)
        loss = sample_losses.mean()
        self.log(
            f"{stage}/loss", loss, prog_bar=stage == "train", batch_size=target.shape[0], sync_dist=stage != "train"
        )
        # in the simulator's units: the offset is added back, the scale cancels
        relative = squared_errors.sum(dim=1) / (target + self.offset / self.scale).square().flatten(1).sum(dim=1)
        if stage != "train":
            error = relative.sqrt()
            self.log(f"{stage}/rel_l2", error.mean(), prog_bar=True, batch_size=target.shape[0], sync_dist=True)
        return loss, sample_losses, relative

    def training_step(self, batch, batch_idx: int) -> dict[str, torch.Tensor]:
        # each sample's loss and relative error too, free here: the simulation report and
        # loss-aware sampling read them
        loss, per_sample, relative = self._step(batch, "train")
        return {"loss": loss, PER_SAMPLE_LOSS: per_sample.detach(), PER_SAMPLE_RELATIVE_LOSS: relative.detach()}

    def validation_step(self, batch, batch_idx: int) -> torch.Tensor:
        return self._step(batch, "val")[0]

    def test_step(self, batch, batch_idx: int) -> torch.Tensor:
        return self._step(batch, "test")[0]

    def configure_optimizers(self):
        optimizer = torch.optim.AdamW(self.parameters(), lr=self.hparams.lr, weight_decay=self.hparams.weight_decay)
        if self.hparams.lr_schedule == "constant":
            return optimizer
        total = self.trainer.estimated_stepping_batches if self.trainer is not None else 1000
        if not math.isfinite(total):
            from engage.core.config.validate import ConfigError

            raise ConfigError(
                "model.lr_schedule=cosine needs a training of known length: set trainer.max_epochs or "
                "trainer.max_steps, or model.lr_schedule=constant"
            )
        scheduler = FitLengthOneCycle(
            optimizer, max_lr=self.hparams.lr, total_steps=max(int(total), 1) + 1, pct_start=0.1
        )
        return {"optimizer": optimizer, "lr_scheduler": {"scheduler": scheduler, "interval": "step"}}


class FitLengthOneCycle(torch.optim.lr_scheduler.OneCycleLR):
    """One-cycle (cosine) learning rates over the length of this fit: a checkpoint restores how far
    the schedule went, not the length of the fit that wrote it (a run resumed with more epochs
    would otherwise step past its end and fail).

    Example::

        >>> layer = torch.nn.Linear(1, 1)
        >>> first = FitLengthOneCycle(torch.optim.SGD(layer.parameters(), lr=0.1), max_lr=0.1, total_steps=4)
        >>> for _ in range(3):
        ...     first.optimizer.step(); first.step()
        >>> longer = FitLengthOneCycle(torch.optim.SGD(layer.parameters(), lr=0.1), max_lr=0.1, total_steps=10)
        >>> longer.load_state_dict(first.state_dict())
        >>> longer.last_epoch, longer.total_steps
        (3, 10)
    """

    def load_state_dict(self, state_dict: dict) -> None:
        kept = {k: v for k, v in state_dict.items() if k in ("last_epoch", "_step_count")}
        super().load_state_dict({**self.state_dict(), **kept})
