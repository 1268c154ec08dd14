"""Fixtures shared by engage-deploy's tests."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path

import pytest


@pytest.fixture
def serve_on_continuum() -> Callable[..., dict]:
    """``run(workdir, *overrides)``: one ``engage run`` serving while it trains on the
    ``netns_continuum`` infrastructure (a tiny heat surrogate, the trainer on the cloud host, the
    simulations on ``edge_near``), with ``overrides`` (the serving options, the number of
    simulations); what its job recorded in ``serving.json``."""
    from engage.core.testing.process import run_engage

    def run(workdir: Path, *overrides: str) -> dict:
        workdir.mkdir()
        proc = run_engage(
            "run", "-m", "hydra/launcher=engage", "+infrastructure=netns_continuum",
            "hydra.launcher.layer=cloud", "hydra.launcher.parallelism=1", "hydra.sweep.dir=sweep", *overrides,
            "data.executor=deploy", "simulator.grid=16", "simulator.steps=20", "data.concurrency=2",
            "data.val_simulations=2", "trainer.max_epochs=1", "model.width=4", "trainer.enable_progress_bar=false",
            cwd=workdir, timeout=300,
        )  # fmt: skip
        assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-3000:]
        (path,) = (workdir / "sweep" / ".engage").glob("*/jobs/0/serving/serving.json")
        return json.loads(path.read_text())

    return run


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
            message_timeout_s=3,
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
