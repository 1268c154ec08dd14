"""Offline training data: run a fixed set of simulations first, then train in epochs."""

from __future__ import annotations

import hashlib
import json
from collections.abc import Callable

import fsspec
import lightning.pytorch as pl
import numpy as np
import torch
from rich.progress import Progress
from torch.utils.data import DataLoader, Dataset

from engage.core.samplers.base import Sampler
from engage.core.samplers.uniform import UniformSampler
from engage.core.simulators.base import Simulator

#: seed offset of the held-out validation simulations, so they never coincide with training ones
VALIDATION_SEED_OFFSET = 1_000_003


class SimulationDataset(Dataset):
    """Every sample of a set of simulations, as mappings ``parameters``/``time``/``target``.

    ``parameters`` are unit-normalised (the space's ``to_unit``), ``time`` is the sample's index
    in its run divided by the run length.
    """

    def __init__(self, unit_parameters: np.ndarray, fields: np.ndarray):
        # fields: (simulations, steps, *sample_shape)
        self.unit_parameters = torch.as_tensor(unit_parameters, dtype=torch.float32)
        self.fields = torch.as_tensor(fields)
        self.steps = self.fields.shape[1]

    def __len__(self) -> int:
        return self.fields.shape[0] * self.steps

    def __getitem__(self, index: int) -> dict[str, torch.Tensor]:
        simulation, step = divmod(index, self.steps)
        return {
            "parameters": self.unit_parameters[simulation],
            "time": torch.tensor([(step + 1) / self.steps], dtype=torch.float32),
            "target": self.fields[simulation, step],
            "simulation_id": torch.tensor(simulation),
        }


def run_simulations(simulator: Simulator, points: np.ndarray, description: str) -> np.ndarray:
    """Run each point to completion in this process, with a progress bar; ``(n, steps, *shape)``."""
    if simulator.samples_per_run is None:
        raise ValueError(f"{type(simulator).__name__} does not declare samples_per_run; offline datasets need it")
    fields = np.empty((len(points), simulator.samples_per_run, *simulator.sample_shape), dtype=simulator.dtype)
    with Progress(transient=True) as progress:
        task = progress.add_task(description, total=len(points))
        for i, point in enumerate(points):
            for step, sample in enumerate(simulator.run(point)):
                fields[i, step] = sample
            progress.advance(task)
    return fields


def cached_simulations(
    simulator: Simulator,
    points: np.ndarray,
    name: str,
    cache_dir: str | None,
    compute: Callable[[], np.ndarray] | None = None,
) -> np.ndarray:
    """The ``name`` set's fields, computed by ``compute`` (default: :func:`run_simulations` in
    this process), stored once under ``cache_dir`` (any fsspec URL) and read back on later runs;
    the file name hashes the simulator and the points."""
    if compute is None:
        compute = lambda: run_simulations(simulator, points, f"simulating {name} set")  # noqa: E731
    if not cache_dir:
        return compute()
    key = hashlib.sha256(
        json.dumps({"simulator": simulator.describe(), "points": points.tolist()}, sort_keys=True).encode()
    ).hexdigest()[:16]
    fs, path = fsspec.core.url_to_fs(f"{cache_dir.rstrip('/')}/{name}-{key}.npy")
    if fs.exists(path):
        with fs.open(path, "rb") as f:
            return np.load(f)
    fields = compute()
    fs.makedirs(fs._parent(path), exist_ok=True)
    with fs.open(path, "wb") as f:
        np.save(f, fields)
    return fields


class SimulatedDataModule(pl.LightningDataModule):
    """Runs ``train_simulations`` points of ``sampler`` and ``val_simulations`` held-out uniform
    points once, then serves their samples in epochs. With ``cache_dir`` (any fsspec URL) the
    simulations are stored and reused by later runs with the same simulator and points.

    Example::

        >>> from engage.core.simulators import HeatEquation
        >>> from engage.core.samplers import UniformSampler
        >>> sim = HeatEquation(grid=8, steps=3)
        >>> dm = SimulatedDataModule(sim, UniformSampler(sim.space, seed=0), train_simulations=2, val_simulations=1)
        >>> dm.setup("fit"); len(dm.train_dataset), len(dm.val_dataset)
        (6, 3)
    """

    def __init__(
        self,
        simulator: Simulator,
        sampler: Sampler,
        train_simulations: int = 24,
        val_simulations: int = 4,
        batch_size: int = 32,
        num_workers: int = 0,
        cache_dir: str | None = None,
        seed: int = 0,
    ):
        super().__init__()
        self.simulator = simulator
        self.sampler = sampler
        self.train_simulations = train_simulations
        self.val_simulations = val_simulations
        self.batch_size = batch_size
        self.num_workers = num_workers
        self.cache_dir = cache_dir
        self.seed = seed
        self.train_dataset: SimulationDataset | None = None
        self.val_dataset: SimulationDataset | None = None

    def _load_or_run(self, points: np.ndarray, name: str) -> np.ndarray:
        return cached_simulations(self.simulator, points, name, self.cache_dir)

    def setup(self, stage: str | None = None) -> None:
        if self.train_dataset is None:
            points = self.sampler.ask(self.train_simulations)
            self.train_dataset = SimulationDataset(
                self.simulator.space.to_unit(points), self._load_or_run(points, "train")
            )
        if self.val_dataset is None:
            held_out = UniformSampler(self.simulator.space, seed=self.seed + VALIDATION_SEED_OFFSET).ask(
                self.val_simulations
            )
            self.val_dataset = SimulationDataset(
                self.simulator.space.to_unit(held_out), self._load_or_run(held_out, "val")
            )

    def train_dataloader(self) -> DataLoader:
        return DataLoader(self.train_dataset, batch_size=self.batch_size, shuffle=True, num_workers=self.num_workers)

    def val_dataloader(self) -> DataLoader:
        return DataLoader(self.val_dataset, batch_size=self.batch_size, num_workers=self.num_workers)

    def test_dataloader(self) -> DataLoader:
        return self.val_dataloader()

    def state_dict(self) -> dict:
        return {"sampler": self.sampler.state_dict()}

    def load_state_dict(self, state_dict: dict) -> None:
        self.sampler.load_state_dict(state_dict["sampler"])
