"""The trainer's cost at scale: the journal keeps one file open, records copy cheaply, and the
scale benchmark runs multiplexed simulations through the real scheduler at a tiny size."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from engage.core import ParameterSpace
from engage.core.online.journal import Journal
from engage.core.online.record import SimulationRecord

SCRIPT = Path(__file__).resolve().parents[3] / "benchmarks" / "scale.py"


@pytest.fixture(scope="module")
def scale(load_script):
    return load_script("benchmarks/scale.py")


def test_two_journals_on_one_file_keep_whole_lines_and_reopen_after_close(tmp_path):
    path = str(tmp_path / "journal.jsonl")
    first, second = Journal(path, run_id="a"), Journal(path, run_id="b")
    for i in range(200):  # both keep the file open: every line must stay whole and in place
        first.append({"simulation_id": i, "status": "running", "text": "x" * 300})
        second.append({"simulation_id": i, "status": "finished"})
    first.close()
    first.append({"simulation_id": 999, "status": "failed"})  # opens it again
    entries = first.read()
    assert len(entries) == 401
    assert sorted(first.latest()) == [*range(200), 999]
    assert {e["status"] for e in second.latest().values()} == {"finished"}
    first.close()
    second.close()
    with open(path) as f:
        assert all(json.loads(line) for line in f)  # no torn or interleaved line


def test_a_journal_rotated_or_deleted_mid_run_goes_on_at_its_path(tmp_path):
    path = tmp_path / "journal.jsonl"
    journal = Journal(str(path), run_id="a")
    journal.append({"simulation_id": 0, "status": "running"})
    path.rename(tmp_path / "journal.jsonl.1")  # rotated, as logrotate does
    journal.append({"simulation_id": 0, "status": "finished"})
    assert [e["status"] for e in Journal(str(tmp_path / "journal.jsonl.1")).read()] == ["running"]
    assert [e["status"] for e in journal.read()] == ["finished"]
    path.unlink()  # deleted
    journal.append({"simulation_id": 1, "status": "running"})
    assert [e["simulation_id"] for e in journal.read()] == [1]
    journal.close()


def test_a_record_copy_does_not_share_its_lists_with_the_record():
    space = ParameterSpace.from_config({"k": {"low": 0.0, "high": 2.0}, "m": {"low": 0.0, "high": 1.0}})
    record = SimulationRecord.create(space, 7, [0.5, 0.25], ask_index=3)
    data = record.to_dict()
    data["vector"].append(9.0)
    data["parameters"]["k"] = 1.5
    assert record.vector == [0.5, 0.25] and record.parameters["k"] == 0.5
    assert SimulationRecord.from_dict(record.to_dict()) == record
    assert set(data) >= {"duration", "stream_bytes_per_s", "simulation_id", "unit"}


def test_the_scale_benchmark_counts_every_simulation_and_sample(scale):
    row = scale.measure(budget=40, live=8, workers=1)
    assert row["budget"] == 40 and row["samples"] == 40 * scale.SAMPLES
    assert row["journal_lines"] == 80  # started and finished, once each
    assert row["scheduler_cpu_s"] > 0 and row["trainer_cpu_s"] >= row["scheduler_cpu_s"] * 0.5
    # a checkpoint lists the simulations still running, never every simulation of the run
    assert 0 <= row["checkpoint_records"] <= 8 and 0 < row["checkpoint_bytes"] < 64 * 1024
    assert scale.cost_ratio([{"budget": 10, "c": 2.0}, {"budget": 1000, "c": 3.0}], "c") == 1.5


def test_the_scale_benchmark_refuses_an_unknown_sampler_in_one_line(tmp_path):
    out = tmp_path / "scale.json"
    done = subprocess.run(
        [sys.executable, str(SCRIPT), "--sampler", "nope", "--out", str(out)],
        capture_output=True, text=True, timeout=120, env={**os.environ},
    )  # fmt: skip
    assert done.returncode == 2
    assert "--sampler" in done.stderr and len(done.stderr.strip().splitlines()) == 1
    assert not out.exists()
    assert subprocess.run([sys.executable, str(SCRIPT), "--help"], capture_output=True, timeout=120).returncode == 0


def test_a_simulation_its_executor_still_queues_is_not_timed_out_for_start_up():
    """An executor that submits from its own queue (Slurm behind a busy controller) may hold a
    simulation back for longer than the start-up timeout: the clock starts once it is handed on."""
    import time

    from engage.core.executors import Executor, SimulationProcess
    from engage.core.online.fleet import Fleet

    class Queued(SimulationProcess):
        def __init__(self):
            self.queued = True

        starting = property(lambda self: self.queued)
        pid = property(lambda self: None)

        def poll(self):
            return None

        def kill(self):
            self.queued = False

        def stderr_tail(self, limit=4000):
            return ""

    class QueueingExecutor(Executor):
        def start(self, request):
            return Queued()

    space = ParameterSpace.from_config({"k": {"low": 0.0, "high": 1.0}})
    fleet = Fleet(QueueingExecutor(), concurrency=1, startup_timeout=0.05)
    active = fleet.start(SimulationRecord.create(space, 0, [0.5]), "tcp://127.0.0.1:1")
    time.sleep(0.1)
    assert fleet.inspect().failed == []  # still queued: not late
    active.process.queued = False  # handed on: from now on it has startup_timeout to connect
    assert fleet.inspect().failed == []
    time.sleep(0.1)
    assert [reason for _, reason in fleet.inspect().failed] == ["did not connect within 0.05s"]
