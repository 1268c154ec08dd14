"""The central workflow on ``netns``: ``engage run`` trains online on a cloud host while its
simulations run on edge hosts, and the measured stream throughput follows the links.

One sweep over where the simulations run (``configs/infrastructure/edge_links.yaml``): an edge
host behind a 2 mbit link and one behind a 10 mbit link, both 10 ms from the cloud host. Every
simulation streams 64x64 float32 fields through the engage protocol; the journal records, per
simulation, the sample bytes received per second from its first sample to its last.
"""

from __future__ import annotations

import json
import shutil
import stat
from pathlib import Path

import pytest
from mlflow.tracking import MlflowClient

from engage.core.testing.process import run_engage
from engage.deploy.providers.netns import netns_available

_REASON = netns_available()
pytestmark = [
    pytest.mark.netns,
    pytest.mark.slow,
    pytest.mark.timing,
    pytest.mark.skipif(_REASON is not None, reason=_REASON or ""),
]

ROOT = Path(__file__).resolve().parents[3]
RATES = {"edge_slow": 2e6, "edge_fast": 10e6}  # bits/s, as in edge_links.yaml
ATTEMPTS = 3


def journal(path: Path) -> list[dict]:
    entries = [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
    return [e for e in entries if e["status"] != "running"]


def sweep(workdir: Path) -> dict[str, list[float]]:
    """Run the sweep in ``workdir``, check what does not depend on timing, return the rates."""
    shutil.copytree(ROOT / "configs" / "infrastructure", workdir / "configs" / "infrastructure")
    proc = run_engage(
        "run",
        "-m",
        "hydra/launcher=engage",
        "+infrastructure=edge_links",
        "hydra.launcher.layer=cloud",
        "hydra.launcher.parallelism=1",
        "hydra.sweep.dir=sweep",
        "data.executor=deploy",
        "+data.executor_options.layer=edge_slow,edge_fast",
        "simulator.grid=64",
        "simulator.steps=60",
        "data.simulations=2",
        "data.concurrency=1",
        "data.val_simulations=1",
        # every sample is read once and the epoch ends with the stream: the simulations set the pace
        "data.max_reads=1",
        "data.batches_per_epoch=10000",
        "data.batch_size=8",
        "trainer.max_epochs=1",
        "model.width=4",
        "trainer.enable_progress_bar=false",
        cwd=workdir,
        timeout=180,  # about 60 s here; three of them fit in the test timeout
    )
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-3000:]

    measured = {}
    for job, layer in enumerate(RATES):
        # each run keeps its journal in its own folder, online/<run id>/
        (path,) = (workdir / "sweep" / str(job) / "online").glob("*/journal.jsonl")
        entries = journal(path)
        assert [e["status"] for e in entries] == ["finished", "finished"], entries
        assert {e["host"] for e in entries} == {f"{layer}-1"}  # simulations ran on that layer's host
        measured[layer] = [8 * e["stream_bytes_per_s"] for e in entries]

    client = MlflowClient(f"sqlite:///{workdir / 'mlflow.db'}")
    runs = client.search_runs([client.get_experiment_by_name("engage").experiment_id])
    children = [r for r in runs if r.data.tags.get("engage.kind") != "sweep"]
    assert len(children) == 2 and all(r.info.status == "FINISHED" for r in children)
    assert all("val/rel_l2" in r.data.metrics for r in children)
    # hosts in namespaces are not this machine: the sweep's server asked for its own credentials,
    # which the jobs had from their contracts (their runs are recorded above)
    (config,) = (workdir / "sweep" / ".engage").glob("*/mlflow-auth/basic_auth.ini")
    assert stat.S_IMODE(config.stat().st_mode) == 0o600 and "password1234" not in config.read_text()
    return measured


def follows_links(measured: dict[str, list[float]]) -> bool:
    # sample bytes only: framing, TCP and IP headers take a few percent of the link
    rates = [(rate, RATES[layer]) for layer, layer_rates in measured.items() for rate in layer_rates]
    within = all(0.85 * link <= rate <= 1.02 * link for rate, link in rates)
    return within and 4.0 <= min(measured["edge_fast"]) / max(measured["edge_slow"]) <= 5.5


def test_online_training_streams_from_edge_hosts_as_fast_as_their_links_allow(tmp_path: Path) -> None:
    # This host has slow spells lasting seconds (steal time) in which a simulator behind the fast
    # link, on half a core, falls below its link's rate; a sweep that misses is run again. A link
    # that is not shaped, or a stream that does not fill it, misses every time.
    attempts = []
    for attempt in range(ATTEMPTS):
        workdir = tmp_path / str(attempt)
        workdir.mkdir()
        measured = sweep(workdir)
        attempts.append({layer: [round(r / 1e6, 2) for r in rates] for layer, rates in measured.items()})
        if follows_links(measured):
            break
    print(json.dumps(attempts))
    assert follows_links(measured), attempts
