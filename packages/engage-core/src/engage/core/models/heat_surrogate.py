"""A convolutional surrogate: (simulation parameters, time) -> field."""

from __future__ import annotations

import math
from collections.abc import Sequence

import lightning.pytorch as pl
import torch
import torch.nn.functional as F
from torch import nn


class HeatSurrogate(pl.LightningModule):
    """Maps normalised parameters and time to a 2D field with an MLP and a convolutional decoder.

    Batches are mappings with ``parameters`` ``(B, d)`` in ``[0, 1]``, ``time`` ``(B, 1)`` in
    ``[0, 1]`` and ``target`` ``(B, H, W)`` (raw values). Targets are scaled to ``[0, 1]`` with
    ``value_range`` when given. Logs ``train/loss``, ``val/loss`` and ``val/rel_l2`` (relative L2
    error of the field, the usual surrogate metric).

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
    ):
        super().__init__()
        if len(sample_shape) != 2:
            raise ValueError(f"HeatSurrogate predicts 2D fields; sample_shape is {tuple(sample_shape)}")
        self.save_hyperparameters()
        height, width_px = (int(s) for s in sample_shape)
        # start the decoder at 1/8 of the field (at least 4x4) and upsample by 2 three times
        self.seed_hw = (max(4, math.ceil(height / 8)), max(4, math.ceil(width_px / 8)))
        channels = 2 * width
        self.encoder = nn.Sequential(
            nn.Linear(num_parameters + 1, 128),
            nn.GELU(),
            nn.Linear(128, 128),
            nn.GELU(),
            nn.Linear(128, channels * self.seed_hw[0] * self.seed_hw[1]),
        )
        blocks = []
        in_ch = channels
        for out_ch in (width, width, width // 2):
            blocks += [
                nn.Upsample(scale_factor=2, mode="bilinear", align_corners=False),
                nn.Conv2d(in_ch, out_ch, 3, padding=1),
                nn.GELU(),
                nn.Conv2d(out_ch, out_ch, 3, padding=1),
                nn.GELU(),
            ]
            in_ch = out_ch
        self.decoder = nn.Sequential(*blocks)
        self.head = nn.Conv2d(in_ch, 1, 1)
        low, high = value_range if value_range is not None else (0.0, 1.0)
        self.register_buffer("offset", torch.tensor(float(low)), persistent=False)
        self.register_buffer("scale", torch.tensor(float(high) - float(low)), persistent=False)

    def forward(self, parameters: torch.Tensor, time: torch.Tensor) -> torch.Tensor:
        """Predicted field in scaled units (``[0, 1]`` when ``value_range`` is set)."""
        x = self.encoder(torch.cat([parameters, time], dim=1))
        x = x.view(x.shape[0], -1, *self.seed_hw)
        x = self.head(self.decoder(x))
        x = F.interpolate(x, size=tuple(self.hparams.sample_shape), mode="bilinear", align_corners=False)
        return x.squeeze(1)

    def predict_field(self, parameters: torch.Tensor, time: torch.Tensor) -> torch.Tensor:
        """Predicted field in the simulator's units."""
        return self(parameters, time) * self.scale + self.offset

    def _step(self, batch, stage: str) -> torch.Tensor:
        target = (batch["target"] - self.offset) / self.scale
        prediction = self(batch["parameters"], batch["time"])
        loss = F.mse_loss(prediction, target)
        self.log(
            f"{stage}/loss", loss, prog_bar=stage == "train", batch_size=target.shape[0], sync_dist=stage != "train"
        )
        if stage != "train":
            error = (prediction - target).flatten(1).norm(dim=1) / (target + self.offset / self.scale).flatten(1).norm(
                dim=1
            )
            self.log(f"{stage}/rel_l2", error.mean(), prog_bar=True, batch_size=target.shape[0], sync_dist=True)
        return loss

    def training_step(self, batch, batch_idx: int) -> torch.Tensor:
        return self._step(batch, "train")

    def validation_step(self, batch, batch_idx: int) -> torch.Tensor:
        return self._step(batch, "val")

    def test_step(self, batch, batch_idx: int) -> torch.Tensor:
        return self._step(batch, "test")

    def configure_optimizers(self):
        optimizer = torch.optim.AdamW(self.parameters(), lr=self.hparams.lr, weight_decay=self.hparams.weight_decay)
        if self.hparams.lr_schedule == "constant":
            return optimizer
        total = self.trainer.estimated_stepping_batches if self.trainer is not None else 1000
        total = int(total) if math.isfinite(total) and total > 0 else 1000
        scheduler = torch.optim.lr_scheduler.OneCycleLR(
            optimizer, max_lr=self.hparams.lr, total_steps=total + 1, pct_start=0.1
        )
        return {"optimizer": optimizer, "lr_scheduler": {"scheduler": scheduler, "interval": "step"}}
