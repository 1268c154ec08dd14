"""Online training across the nodes of a real Slurm cluster: simulations as Slurm jobs on some
nodes, the trainer's DDP ranks on another (requeued mid-run, and resumed), and a node that fails
mid-run.

The cluster (``slurm_cluster`` in conftest) has three network-namespace hosts as nodes: a job
there reaches the trainer over the hosts' network only, as on a real cluster.
"""

from __future__ import annotations

import collections
import json
import re
import subprocess
import sys
import time
from pathlib import Path

import pytest

pytestmark = pytest.mark.slow

DRIVER = Path(__file__).parent / "fixtures" / "slurm_online.py"
SAMPLES = 12  # per simulation, as in the driver


def _trained(workdir: Path) -> dict[int, collections.Counter]:
    """rank -> how many times each (simulation id, sample index) was trained."""
    out = {}
    for path in sorted(workdir.glob("trained-*.jsonl")):
        rank = int(path.stem.split("-")[1])
        out[rank] = collections.Counter(
            tuple(pair) for line in path.read_text().splitlines() for pair in json.loads(line)["samples"]
        )
    return out


def _journal(workdir: Path) -> list[dict]:
    entries = []
    for path in workdir.rglob("journal.jsonl"):
        entries += [json.loads(x) for x in path.read_text().splitlines() if x.strip()]
    return [e for e in entries if e["status"] != "running"]


def _env(cluster) -> dict[str, str]:
    env = {**cluster.env}
    for inherited in ("MLFLOW_TRACKING_URI", "ENGAGE_TRACKING_URI", "ENGAGE_PARENT_RUN_ID"):
        env.pop(inherited, None)
    return env


def _node(cluster, name: str):
    return next(h for h in cluster.nodes if h.name == name)


def test_a_node_that_fails_mid_run_has_its_simulations_run_again_elsewhere(slurm_cluster, tmp_path):
    """node-1 loses power (its slurmd and every process on it killed) while simulations run
    there: Slurm marks it down and its jobs NODE_FAIL, the fleet retries them from their sample
    index on the nodes left, and every sample is still trained exactly once."""
    simulations, samples = 4, 40
    # a buffer of 32 samples and training that waits: simulations stay live, held by their credit
    env = {**_env(slurm_cluster), "ENGAGE_TEST_PACE": "0.3", "ENGAGE_TEST_SAMPLES": str(samples)}
    proc = subprocess.Popen(
        [sys.executable, str(DRIVER), str(tmp_path), "nodes", str(simulations)],
        cwd=tmp_path, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
    )  # fmt: skip
    started = time.monotonic()
    timeline: list[tuple[float, str]] = []
    try:
        victims: list[str] = []
        while not victims and proc.poll() is None and time.monotonic() - started < 90:
            listed = subprocess.run(
                ["squeue", "-h", "-t", "RUNNING", "-o", "%i %j %N"], env=env, capture_output=True, text=True
            ).stdout.splitlines()
            # job names are engage-sim-<simulation id>-<attempt>-<run token>
            on_node1 = {
                int(x.split()[1].split("-")[2]): x.split()[0]
                for x in listed
                if "engage-sim-" in x and x.split()[-1] == "node-1"
            }
            trained = sum(_trained(tmp_path).values(), collections.Counter())
            per_sim = collections.Counter(s for s, _ in trained.elements())
            # simulations on node-1 that sent samples and have more to send
            victims = [job for sim, job in on_node1.items() if 0 < per_sim[sim] < samples // 2]
            time.sleep(0.1)
        assert victims, "no simulation was caught half-way on node-1"
        slurm_cluster.kill_node("node-1")
        killed_at = time.monotonic()
        timeline.append((killed_at - started, f"node-1 killed with jobs {victims} running there"))
        while not slurm_cluster.node_states().get("node-1", "").startswith("down"):
            assert time.monotonic() - killed_at < 60, slurm_cluster.node_states()
            time.sleep(0.5)
        timeline.append((time.monotonic() - started, "slurmctld marks node-1 down"))
        out, _ = proc.communicate(timeout=150)
        timeline.append((time.monotonic() - started, f"run ended with exit code {proc.returncode}"))
    finally:
        if proc.poll() is None:
            proc.kill()
        slurm_cluster.start_node("node-1")  # back for the tests after this one
    assert proc.returncode == 0, out[-4000:]
    everything = sum(_trained(tmp_path).values(), collections.Counter())
    expected = collections.Counter((s, i) for s in range(simulations) for i in range(samples))
    assert everything == expected, (
        f"lost {sorted((expected - everything).elements())[:8]}, twice {sorted((everything - expected).elements())[:8]}"
    )
    journal = _journal(tmp_path)
    failed = [e for e in journal if e["status"] == "failed"]
    assert failed, ([(e["simulation_id"], e["attempt"], e["status"], e["host"]) for e in journal], out[-3000:])
    where = [(e["simulation_id"], e["attempt"], e["host"], e["error"]) for e in failed]
    assert all(e["host"] == "node-1" for e in failed), where
    retried = {e["simulation_id"] for e in failed}
    finished = {e["simulation_id"]: e["host"] for e in journal if e["status"] == "finished"}
    assert set(finished) == set(range(simulations))
    assert all(finished[s] != "node-1" for s in retried), finished
    for e in failed:
        when = e["ended_at"] - time.time() + time.monotonic() - started
        timeline.append((when, f"simulation {e['simulation_id']} on {e['host']}: {e['error']}"))
    for when, what in sorted(timeline):
        print(f"{when:6.1f} s  {what}")
    deadline = time.monotonic() + 30
    while not slurm_cluster.node_states().get("node-1", "").startswith("idle"):
        assert time.monotonic() < deadline, slurm_cluster.node_states()
        time.sleep(0.5)


def test_a_requeued_two_rank_trainer_job_resumes_exactly(slurm_cluster, tmp_path):
    """The trainer is a batch job of two DDP ranks (``srun`` inside, Lightning's
    ``SLURMEnvironment``), submitted as a user would: ``--requeue --signal=USR1@90``. The test
    sends the signal itself to both ranks (90 s before a time limit is too long to wait for):
    :class:`~engage.deploy.callbacks.SlurmRequeue` has both ranks save the HPC checkpoint at the
    same step, with the online state of each, and requeues the job; Slurm starts it again (the
    test lifts the two minutes Slurm holds a requeued job) and both ranks resume from that
    checkpoint. Samples trained before the checkpoint and after the restart, on either rank, are
    each sample exactly once."""
    simulations, samples = 4, 20
    env = {**_env(slurm_cluster), "ENGAGE_TEST_PACE": "0.3", "ENGAGE_TEST_SAMPLES": str(samples)}
    env["MASTER_ADDR"] = _node(slurm_cluster, "node-3").address  # node names do not resolve here
    script = tmp_path / "trainer.sbatch"
    script.write_text(
        "#!/bin/sh\n#SBATCH --requeue\n#SBATCH --signal=USR1@90\n"
        f"exec srun {sys.executable} {DRIVER} {tmp_path} nodes {simulations} --exclude=node-3\n"
    )
    job = subprocess.run(
        [
            *("sbatch", "--parsable", "--partition=nodes", "--nodelist=node-3", "--ntasks-per-node=2"),
            "--open-mode=append",
            *(f"--output={tmp_path / 'trainer.log'}", f"--chdir={tmp_path}", str(script)),
        ],
        env=env, capture_output=True, text=True, check=True,
    ).stdout.strip()  # fmt: skip
    started, log = time.monotonic(), tmp_path / "trained-0.jsonl"
    state, released, seen = "", False, []
    try:
        while not log.exists() or len(log.read_text().splitlines()) < 5:
            assert time.monotonic() - started < 90, (tmp_path / "trainer.log").read_text()[-3000:]
            time.sleep(0.2)
        subprocess.run(["scancel", "--signal=USR1", job], env=env, check=True)
        seen.append(f"{time.monotonic() - started:.1f} s: USR1 after {len(log.read_text().splitlines())} steps")
        while state != "COMPLETED":
            out = subprocess.run(
                ["squeue", "-h", "--states=all", f"--jobs={job}", "--format=%T %r"],
                env=env,
                capture_output=True,
                text=True,
            ).stdout.split()
            if out and out[0] != state:
                state = out[0]
                seen.append(f"{time.monotonic() - started:.1f} s: {' '.join(out)}")
            if state == "PENDING" and out[1:] == ["BeginTime"] and not released:
                subprocess.run(["scontrol", "update", f"JobId={job}", "StartTime=now"], env=env, check=True)
                released = True
            assert state not in ("FAILED", "CANCELLED", "TIMEOUT", "NODE_FAIL"), (
                seen,
                (tmp_path / "trainer.log").read_text()[-3000:],
            )
            assert time.monotonic() - started < 150, (seen, (tmp_path / "trainer.log").read_text()[-3000:])
            time.sleep(0.3)
    finally:
        subprocess.run(["scancel", job], env=env, capture_output=True)
    print("; ".join(seen))
    # the step both ranks checkpointed at; the checkpoint itself is removed once the fit ended
    steps = re.findall(
        rf"job {job} requeued at step (\d+); it resumes from \S+hpc_ckpt_1\.ckpt",
        (tmp_path / "trainer.log").read_text(),
    )
    assert len(steps) == 2 and len(set(steps)) == 1, steps  # said by each rank
    step = int(steps[0])
    assert not list((tmp_path / "checkpoints").glob("hpc_ckpt_*.ckpt"))
    rows = {r: [json.loads(x) for x in (tmp_path / f"trained-{r}.jsonl").read_text().splitlines()] for r in (0, 1)}
    for rank, taken in rows.items():
        assert {r["restart"] for r in taken} == {0, 1}, f"rank {rank} trained in both incarnations"
        # both ranks stopped at the checkpoint's step: nothing trained after it and thrown away
        assert max(r["step"] for r in taken if r["restart"] == 0) == step - 1, (rank, step)
    every = [r for taken in rows.values() for r in taken]
    kept = [tuple(p) for r in every if r["restart"] == 0 for p in r["samples"]]
    after = [tuple(p) for r in every if r["restart"] == 1 for p in r["samples"]]
    assert kept and after
    trained = collections.Counter(kept + after)
    expected = collections.Counter((s, i) for s in range(simulations) for i in range(samples))
    assert trained == expected, (
        f"lost {sorted((expected - trained).elements())[:8]}, twice {sorted((trained - expected).elements())[:8]}"
    )
    # each rank its own simulations, received on node-3's address, run by Slurm on the other nodes
    sims = {rank: {s for r in taken for s, _ in r["samples"]} for rank, taken in rows.items()}
    assert not sims[0] & sims[1] and sims[0] and sims[1], sims
    outcomes = [json.loads((tmp_path / f"outcome-{r}.json").read_text()) for r in (0, 1)]
    assert sum(o["completed"] for o in outcomes) == simulations, outcomes
    assert sum(o["samples_trained"] for o in outcomes) == simulations * samples, outcomes
    assert [o["address"] for o in outcomes] == [_node(slurm_cluster, "node-3").address] * 2, outcomes
    finished = collections.Counter(e["host"] for e in _journal(tmp_path) if e["status"] == "finished")
    assert set(finished) <= {"node-1", "node-2"} and sum(finished.values()) == simulations, finished
    print(
        f"{simulations} simulations ({dict(finished)}) -> samples per rank "
        f"{ {r: sum(len(x['samples']) for x in t) for r, t in rows.items()} }, checkpoint at step {step}"
    )
