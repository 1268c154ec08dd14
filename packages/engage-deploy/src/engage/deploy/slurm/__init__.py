"""Slurm support: a one-node local cluster for tests and documentation examples."""

from engage.deploy.slurm.cluster import LocalSlurmCluster, SlurmUnavailable

__all__ = ["LocalSlurmCluster", "SlurmUnavailable"]
