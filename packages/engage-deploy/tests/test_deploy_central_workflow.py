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
from pathlib import Path

import pytest
from mlflow.tracking import MlflowClient

from engage.core.testing.process import run_engage
from engage.deploy.providers.netns import netns_available

_REASON = netns_available()
pytestmark = [pytest.mark.netns, pytest.mark.slow, pytest.mark.skipif(_REASON is not None, reason=_REASON or "")]

ROOT = Path(__file__).resolve().parents[3]
RATES = {"edge_slow": 2e6, "edge_fast": 10e6}  # bits/s, as in edge_links.yaml


def journal(path: Path) -> list[dict]:
    entries = [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
    return [e for e in entries if e["status"] != "running"]


def test_online_training_streams_from_edge_hosts_as_fast_as_their_links_allow(tmp_path: Path) -> None:
    shutil.copytree(ROOT / "configs" / "infrastructure", tmp_path / "configs" / "infrastructure")
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
        cwd=tmp_path,
        timeout=480,
    )
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-3000:]

    measured = {}
    for job, layer in enumerate(RATES):
        entries = journal(tmp_path / "sweep" / str(job) / "online" / "journal.jsonl")
        assert [e["status"] for e in entries] == ["finished", "finished"], entries
        assert {e["host"] for e in entries} == {f"{layer}-1"}  # simulations ran on that layer's host
        measured[layer] = [8 * e["stream_bytes_per_s"] for e in entries]
    print(json.dumps({layer: [round(r / 1e6, 2) for r in rates] for layer, rates in measured.items()}))
    for layer, rates in measured.items():
        for rate in rates:
            # sample bytes only: framing, TCP and IP headers take a few percent of the link
            assert 0.85 * RATES[layer] <= rate <= 1.02 * RATES[layer], (layer, rate)
    ratio = min(measured["edge_fast"]) / max(measured["edge_slow"])
    assert 4.0 <= ratio <= 5.5, ratio

    client = MlflowClient(f"sqlite:///{tmp_path / 'mlflow.db'}")
    runs = client.search_runs([client.get_experiment_by_name("engage").experiment_id])
    children = [r for r in runs if r.data.tags.get("engage.kind") != "sweep"]
    assert len(children) == 2 and all(r.info.status == "FINISHED" for r in children)
    assert all("val/rel_l2" in r.data.metrics for r in children)
