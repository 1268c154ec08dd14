"""DataModules that feed simulation outputs to a Lightning ``Trainer``."""

from engage.core.data.simulated import SimulatedDataModule, SimulationDataset

__all__ = ["SimulatedDataModule", "SimulationDataset"]
