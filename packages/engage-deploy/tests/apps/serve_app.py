"""A small regression model for the serving tests: y = sin(3x) on [-1, 1]."""

from __future__ import annotations

import lightning.pytorch as pl
import torch
from torch import nn


def truth(x: torch.Tensor) -> torch.Tensor:
    return torch.sin(3 * x)


class Sine(pl.LightningModule):
    def __init__(self, width: int = 32, lr: float = 1e-2) -> None:
        super().__init__()
        self.save_hyperparameters()
        self.net = nn.Sequential(
            nn.Linear(1, width), nn.Tanh(), nn.Linear(width, width), nn.Tanh(), nn.Linear(width, 1)
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)

    def training_step(self, batch, batch_idx):
        x, y = batch
        loss = nn.functional.mse_loss(self(x), y)
        self.log("train/loss", loss)
        return loss

    def configure_optimizers(self):
        return torch.optim.Adam(self.parameters(), lr=self.hparams.lr)


def loader(samples: int = 4096, batch_size: int = 64, seed: int = 0) -> torch.utils.data.DataLoader:
    generator = torch.Generator().manual_seed(seed)
    x = torch.rand(samples, 1, generator=generator) * 2 - 1
    dataset = torch.utils.data.TensorDataset(x, truth(x))
    return torch.utils.data.DataLoader(dataset, batch_size=batch_size, shuffle=True, generator=generator)
