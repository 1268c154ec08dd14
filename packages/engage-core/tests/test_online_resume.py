"""Exact resume: a trainer killed with SIGKILL anywhere, resumed from its last checkpoint, trains
every sample its simulations define exactly once (fifo, ``max_reads=1``)."""

from __future__ import annotations

import collections
import json
import random
import subprocess
import sys
from pathlib import Path

import pytest

DRIVER = Path(__file__).parent / "fixtures" / "resume_trials.py"
SIMULATIONS, SAMPLES = 4, 16


def kill_plan(seed: int) -> list[dict]:
    """A reference run, then 10 kills drawn by ``seed``: 6 at times uniform over a run, 3 just
    after a simulation's DONE (before the next checkpoint), 1 half-way through a checkpoint write."""
    rng = random.Random(seed)
    plan: list[dict] = [{"kind": "none"}]
    plan += [{"kind": "time", "fraction": round(rng.uniform(0.05, 1.0), 3)} for _ in range(6)]
    plan += [{"kind": "done", "nth": rng.randint(2, SIMULATIONS - 1)} for _ in range(3)]
    plan += [{"kind": "checkpoint", "nth": rng.randint(2, 6)}]
    return plan


@pytest.mark.slow
def test_killed_anywhere_and_resumed_trains_every_sample_exactly_once(tmp_path):
    plan = kill_plan(seed=19)
    (tmp_path / "plan.json").write_text(json.dumps(plan))
    done = subprocess.run(
        [sys.executable, str(DRIVER), str(tmp_path / "trials"), str(tmp_path / "plan.json")],
        capture_output=True,
        text=True,
        timeout=400,
    )
    assert done.returncode == 0, done.stderr[-4000:]
    results = json.loads((tmp_path / "trials" / "results.json").read_text())
    expected = collections.Counter((s, i) for s in range(SIMULATIONS) for i in range(SAMPLES))
    for result in results:
        where = {k: v for k, v in result.items() if k != "trained"}
        assert result["error"] is None, where
        assert result["resumed_exit"] == 0, where
        trained = collections.Counter(map(tuple, result["trained"]))
        assert trained == expected, (
            f"{where}: lost {sorted((expected - trained).elements())[:8]}, "
            f"twice {sorted((trained - expected).elements())[:8]}"
        )
        assert result["resumed_outcome"]["samples_trained"] == SIMULATIONS * SAMPLES, where
        assert result["orphans"] == 0, f"{where}: simulation processes outlived their trainer"
        assert not result["leaked_shared_memory"], where
        assert result["resumed_outcome"]["completed"] == SIMULATIONS, where
    # the reference run, resumed once it had ended, trains nothing and fails saying so
    status, error = next(r for r in results if r["kind"] == "none")["finished_resume"]
    assert status != 0 and "no batch was trained in this fit: it resumed at step" in error, error
    kills = [r for r in results if r["kind"] != "none"]
    assert len(kills) == 10 and sum(r["killed"] for r in kills) >= 8
    # the kills that matter most land where they were drawn: resumed from a checkpoint written
    # before the kill, with samples trained on both sides of it
    assert sum(r["killed"] and r["kind"] == "done" for r in results) == 3
    assert any(r["kind"] == "checkpoint" and r["killed"] and r["checkpoint_step"] > 0 for r in results)
    assert any(0 < r["trained_before_kill"] < SIMULATIONS * SAMPLES for r in kills)
