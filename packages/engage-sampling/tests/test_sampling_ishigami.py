"""SensitivityAnalysis added to plain Lightning training code recovers the Ishigami indices.

Ishigami: f = sin x1 + a sin² x2 + b x3⁴ sin x1 on [-π, π]³, a = 7, b = 0.1. Analytic indices
(Ishigami & Homma 1990; Saltelli et al. 2008): S1 ≈ (0.3139, 0.4424, 0), ST ≈ (0.5576, 0.4424,
0.2437). With b = 0, x3 has no effect at all. Needs only engage-core and engage-sampling.
"""

import math

import lightning.pytorch as pl
import numpy as np
import pytest
import torch
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

from engage.sampling.callbacks import SensitivityAnalysis

S1_TRUE = np.array([0.3139, 0.4424, 0.0])
ST_TRUE = np.array([0.5576, 0.4424, 0.2437])


def ishigami(unit: torch.Tensor, a: float = 7.0, b: float = 0.1) -> torch.Tensor:
    x = (2 * unit - 1) * math.pi
    return torch.sin(x[:, 0]) + a * torch.sin(x[:, 1]) ** 2 + b * x[:, 2] ** 4 * torch.sin(x[:, 0])


class MLP(pl.LightningModule):
    """A plain regression MLP on unit-normalised inputs, as a user would write it."""

    def __init__(self, mean: float, std: float, width: int = 64, lr: float = 1e-2):
        super().__init__()
        self.save_hyperparameters()
        self.net = nn.Sequential(
            nn.Linear(3, width), nn.SiLU(), nn.Linear(width, width), nn.SiLU(), nn.Linear(width, width), nn.SiLU(),
            nn.Linear(width, 1),
        )  # fmt: skip

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x).squeeze(-1) * self.hparams.std + self.hparams.mean

    def training_step(self, batch, batch_idx):
        x, y = batch
        loss = nn.functional.mse_loss(
            (self(x) - self.hparams.mean) / self.hparams.std, (y - self.hparams.mean) / self.hparams.std
        )
        self.log("train/loss", loss)
        return loss

    def configure_optimizers(self):
        optimizer = torch.optim.Adam(self.parameters(), lr=self.hparams.lr)
        total = self.trainer.estimated_stepping_batches
        return {
            "optimizer": optimizer,
            "lr_scheduler": {
                "scheduler": torch.optim.lr_scheduler.OneCycleLR(optimizer, self.hparams.lr, total_steps=total),
                "interval": "step",
            },
        }


@pytest.fixture(autouse=True)
def one_thread():
    # a small MLP trains several times faster on one thread than with threads contending for 2 cores
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def train_with_analysis(b: float, tmp_path, epochs: int = 90) -> SensitivityAnalysis:
    torch.manual_seed(0)
    x = torch.rand(8192, 3)
    y = ishigami(x, b=b)
    model = MLP(float(y.mean()), float(y.std()))
    analysis = SensitivityAnalysis(
        names=["x1", "x2", "x3"], base_samples=2**12, every_n_epochs=epochs, every_n_steps=None, plot_dir=tmp_path
    )
    trainer = pl.Trainer(
        max_epochs=epochs,
        callbacks=[analysis],
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        accelerator="cpu",
        deterministic=True,
    )
    trainer.fit(model, DataLoader(TensorDataset(x, y), batch_size=256, shuffle=True))
    return analysis


def test_recovers_ishigami_indices(tmp_path):
    analysis = train_with_analysis(b=0.1, tmp_path=tmp_path)
    result = analysis.result
    assert result is not None and len(analysis.history) == 1
    for estimate, conf, truth in ((result.S1, result.S1_conf, S1_TRUE), (result.ST, result.ST_conf, ST_TRUE)):
        tolerance = np.maximum(0.05, 2 * conf)
        assert np.all(np.abs(estimate - truth) <= tolerance), (estimate, conf, truth)
    assert list(tmp_path.glob("sensitivity/indices_*.png")), "the index plot was not written"


def test_input_without_effect_has_no_total_index(tmp_path):
    result = train_with_analysis(b=0.0, tmp_path=tmp_path).result
    assert result.ST[2] < 0.05, result.ST
    # with b = 0 the analytic values are ST1 = 0.5 / 6.625 ≈ 0.0755 and ST2 ≈ 0.9245
    assert abs(result.ST[0] - 0.0755) < 0.05 and abs(result.ST[1] - 0.9245) < 0.05


@pytest.mark.parametrize("b", [0.1])
def test_design_alone_matches_analytic_indices(b):
    # the reference the trained model is held to: SALib on the exact function, same design size
    analysis = SensitivityAnalysis(names=["x1", "x2", "x3"], base_samples=2**12, quantity=lambda _, x: ishigami(x, b=b))
    result = analysis.analyze(nn.Identity())
    assert np.all(np.abs(result.ST - ST_TRUE) <= np.maximum(0.03, 2 * result.ST_conf))


def test_bootstrap_intervals_are_the_same_for_the_same_seed_zero_included():
    from SALib.sample import sobol as sobol_sample

    from engage.sampling.analysis import sobol_indices

    problem = {"num_vars": 2, "names": ["a", "b"], "bounds": [[0.0, 1.0]] * 2}
    X = sobol_sample.sample(problem, 64, calc_second_order=False, seed=0)
    Y = X[:, 0] + 0.3 * X[:, 1] ** 2
    first, again = (sobol_indices(Y, ["a", "b"], seed=0, num_resamples=20) for _ in range(2))
    assert first.ST_conf.tolist() == again.ST_conf.tolist()  # SALib alone leaves a seed of 0 unseeded
    other = sobol_indices(Y, ["a", "b"], seed=1, num_resamples=20)
    assert other.ST_conf.tolist() != first.ST_conf.tolist()
