"""Online training end to end: Lightning fit and DDP over gloo (resume: ``test_online_resume.py``)."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest
import torch

SCRIPT = textwrap.dedent(
    """
    import sys
    import time
    import lightning.pytorch as pl
    from lightning.pytorch.callbacks import Callback, ModelCheckpoint
    from engage.core.models import HeatSurrogate
    from engage.core.online import OnlineDataModule
    from engage.core.samplers import UniformSampler
    from engage.core.simulators import HeatEquation

    workdir, mode = sys.argv[1], sys.argv[2]
    pl.seed_everything(0, verbose=False)
    sim = HeatEquation(grid=16, steps=10)
    ddp = mode == "ddp"
    dm = OnlineDataModule(
        sim, UniformSampler(sim.space, seed=0), simulations=8, concurrency=2 if ddp else 1, batch_size=8,
        batches_per_epoch=4, capacity=64, watermark=8, val_simulations=1, workdir=workdir + "/online",
        rate_limit=2,
        journal=workdir + "/journal.jsonl", cache_dir=workdir + "/cache",
    )
    model = HeatSurrogate(5, (16, 16), sim.value_range, width=4, lr_schedule="constant", samples_per_run=10)

    trainer = pl.Trainer(
        max_epochs=4, accelerator="cpu", devices=2 if ddp else 1, strategy="ddp" if ddp else "auto",
        logger=False, enable_progress_bar=False, enable_model_summary=False, num_sanity_val_steps=0,
        callbacks=[
            ModelCheckpoint(dirpath=workdir + "/ckpt", every_n_train_steps=2, save_last=True, save_top_k=0),
        ],
    )
    trainer.fit(model, datamodule=dm)
    if trainer.is_global_zero:
        print("RESULT", trainer.callback_metrics["val/rel_l2"].item(), int(trainer.global_step), flush=True)
    """
)


def start(workdir: Path, mode: str) -> subprocess.Popen:
    script = workdir / "train_online.py"
    script.write_text(SCRIPT)
    env = {**os.environ, "ENGAGE_DISABLE_PLUGINS": os.environ.get("ENGAGE_DISABLE_PLUGINS", "")}
    return subprocess.Popen(
        [sys.executable, str(script), str(workdir), mode],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        env=env,
        start_new_session=True,
    )


def finish(process: subprocess.Popen, timeout: float = 300) -> str:
    try:
        out, _ = process.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        os.killpg(process.pid, signal.SIGKILL)
        out, _ = process.communicate()
        pytest.fail(f"training did not finish in {timeout}s:\n{out[-3000:]}")
    assert process.returncode == 0, out[-3000:]
    return out


def journal_entries(path: Path) -> list[dict]:
    import json

    entries = []
    for line in path.read_text().splitlines():
        try:
            entries.append(json.loads(line))
        except json.JSONDecodeError:
            continue
    return entries


def wait_for(condition, timeout: float, what: str) -> None:
    deadline = time.time() + timeout
    while not condition():
        if time.time() > deadline:
            pytest.fail(f"timed out waiting for {what}")
        time.sleep(0.1)


@pytest.mark.slow
def test_ddp_two_ranks_get_distinct_simulations_and_save_both_states(tmp_path):
    out = finish(start(tmp_path, "ddp"), timeout=400)
    assert "RESULT" in out
    ranks = {}
    for rank in (0, 1):
        entries = journal_entries(tmp_path / f"journal-rank{rank}.jsonl")
        ranks[rank] = {e["simulation_id"] for e in entries if e["status"] == "finished"}
        assert ranks[rank] and all(sid % 2 == rank for sid in ranks[rank])
    assert ranks[0] | ranks[1] == set(range(8))
    checkpoint = torch.load(tmp_path / "ckpt" / "last.ckpt", weights_only=False)
    state = checkpoint["OnlineDataModule"]
    assert state["world_size"] == 2 and len(state["ranks"]) == 2
    assert state["ranks"][0]["sampler"]["num_asked"] == state["ranks"][1]["sampler"]["num_asked"]
    # resumed on another number of ranks: refused before anything starts, naming both
    from types import SimpleNamespace

    from engage.core.config.validate import ConfigError
    from engage.core.training import check_ranks

    one = SimpleNamespace(world_size=1, num_nodes=1, strategy=SimpleNamespace())
    with pytest.raises(ConfigError, match=r"holds the data state of 2 ranks; resume with as many .* = 2\), not 1$"):
        check_ranks(one, None, str(tmp_path / "ckpt" / "last.ckpt"), len(state["ranks"]))
