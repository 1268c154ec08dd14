"""Fixtures shared by engage-deploy's tests."""

from __future__ import annotations

import pytest


@pytest.fixture(scope="session")
def slurm_cluster():
    """A real one-node Slurm cluster, started once per test session and stopped afterwards.

    Its folder is a fresh temporary one outside pytest's (whose 0700 parents user munge cannot
    traverse), removed afterwards.
    """
    import shutil

    from engage.deploy.slurm.cluster import LocalSlurmCluster, unavailable_reason

    reason = unavailable_reason()
    if reason:
        pytest.skip(reason)
    cluster = LocalSlurmCluster().start()
    try:
        yield cluster
    finally:
        cluster.stop()
        shutil.rmtree(cluster.root, ignore_errors=True)
