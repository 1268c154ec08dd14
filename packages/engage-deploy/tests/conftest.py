"""Fixtures shared by engage-deploy's tests."""

from __future__ import annotations

import pytest


@pytest.fixture(scope="session")
def slurm_cluster(tmp_path_factory):
    """A real Slurm cluster, started once per test session and stopped afterwards: this machine
    as node of partition ``debug``, and three network-namespace hosts (``node-1`` to ``node-3``,
    engage-deploy's netns provider) as nodes of partition ``nodes``, each with its own slurmd.

    Its folder is a fresh temporary one outside pytest's (whose 0700 parents user munge cannot
    traverse), removed afterwards.
    """
    import shutil

    from engage.deploy.infrastructure import Infrastructure
    from engage.deploy.providers.netns import NetnsProvider, netns_available
    from engage.deploy.slurm.cluster import LocalSlurmCluster, unavailable_reason

    reason = unavailable_reason() or netns_available()
    if reason:
        pytest.skip(reason)
    infra = Infrastructure.from_dict(
        {"provider": "netns", "layers": [{"name": "node", "hosts": 3}], "options": {"sshd": False}}
    )
    provider = NetnsProvider(infra, tmp_path_factory.mktemp("slurm-nodes"))
    try:
        hosts = provider.deploy()
        cluster = LocalSlurmCluster(
            nodes=hosts,
            controller_address=provider.launcher_address(),
            slurmd_timeout_s=5,
            kill_wait_s=5,
            # ended jobs stay known for the whole session: a test may read one that ended minutes ago
            min_job_age_s=1800,
        )
        cluster.start()
        try:
            yield cluster
        finally:
            cluster.stop()
            shutil.rmtree(cluster.root, ignore_errors=True)
    finally:
        provider.destroy()
