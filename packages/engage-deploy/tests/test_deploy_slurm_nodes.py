"""Online training across the nodes of a real Slurm cluster: simulations as Slurm jobs on some
nodes, the trainer's DDP ranks on another, and a node that fails mid-run.

The cluster (``slurm_cluster`` in conftest) has three network-namespace hosts as nodes: a job
there reaches the trainer over the hosts' network only, as on a real cluster.
"""

from __future__ import annotations

import collections
import json
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


def test_simulations_on_two_nodes_feed_two_ddp_ranks_on_a_third(slurm_cluster, tmp_path):
    """``srun`` starts two trainer ranks on node-3 (DDP over gloo under Lightning's Slurm
    environment); each rank submits its share of the simulations as jobs that Slurm places on
    node-1 and node-2, and each binds its receiver on node-3's address, where they connect."""
    node3 = _node(slurm_cluster, "node-3")
    simulations = 6
    started = time.monotonic()
    done = subprocess.run(
        [
            *("srun", "--partition=nodes", "--nodelist=node-3", "--nodes=1", "--ntasks-per-node=2"),
            # node names do not resolve here: DDP's rendezvous at node-3's address
            f"--export=ALL,MASTER_ADDR={node3.address}",
            *(sys.executable, str(DRIVER), str(tmp_path), "nodes", str(simulations), "--exclude=node-3"),
        ],
        cwd=tmp_path, env=_env(slurm_cluster), capture_output=True, text=True, timeout=180,
    )  # fmt: skip
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-4000:]
    trained = _trained(tmp_path)
    assert sorted(trained) == [0, 1], "both ranks trained"
    everything = sum(trained.values(), collections.Counter())
    expected = collections.Counter((s, i) for s in range(simulations) for i in range(SAMPLES))
    assert everything == expected, (
        f"lost {sorted((expected - everything).elements())[:8]}, twice {sorted((everything - expected).elements())[:8]}"
    )
    # distinct simulations per rank: no simulation's samples on both
    sims = {rank: {s for s, _ in counter} for rank, counter in trained.items()}
    assert not sims[0] & sims[1] and sims[0] and sims[1], sims
    outcomes = [json.loads((tmp_path / f"outcome-{r}.json").read_text()) for r in (0, 1)]
    assert [o["address"] for o in outcomes] == [node3.address] * 2, "each rank listens on its node's address"
    journal = _journal(tmp_path)
    per_node = collections.Counter(e["host"] for e in journal if e["status"] == "finished")
    assert set(per_node) <= {"node-1", "node-2"} and sum(per_node.values()) == simulations, per_node
    print(
        f"{simulations} simulations ({dict(per_node)}) -> samples per rank "
        f"{ {r: sum(c.values()) for r, c in trained.items()} }, duplicates 0, lost 0, "
        f"{time.monotonic() - started:.1f} s"
    )


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


def test_a_requeued_trainer_job_resumes_exactly(slurm_cluster, tmp_path):
    """The trainer is a batch job (``srun`` inside, so that Lightning's ``SLURMEnvironment``
    handles the requeue signal), submitted as a user would: ``--requeue --signal=USR1@90``. The
    test sends the signal itself (90 s before a time limit is too long to wait for): Lightning
    saves its HPC checkpoint, with the online state, and requeues the job; Slurm starts it again
    (the test lifts the two minutes Slurm holds a requeued job) and it resumes from that
    checkpoint. Samples trained before the checkpoint and after the restart are each sample
    exactly once."""
    import torch

    simulations, samples = 4, 20
    env = {**_env(slurm_cluster), "ENGAGE_TEST_PACE": "0.3", "ENGAGE_TEST_SAMPLES": str(samples)}
    script = tmp_path / "trainer.sbatch"
    script.write_text(
        "#!/bin/sh\n#SBATCH --requeue\n#SBATCH --signal=USR1@90\n"
        f"exec srun {sys.executable} {DRIVER} {tmp_path} nodes {simulations} --exclude=node-3\n"
    )
    job = subprocess.run(
        [
            *("sbatch", "--parsable", "--partition=nodes", "--nodelist=node-3", "--open-mode=append"),
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
    (checkpoint,) = (tmp_path / "checkpoints").glob("hpc_ckpt_*.ckpt")
    step = int(torch.load(checkpoint, weights_only=False, map_location="cpu")["global_step"])
    rows = [json.loads(line) for line in log.read_text().splitlines()]
    assert {r["restart"] for r in rows} == {0, 1}, "trained in both incarnations"
    kept = [tuple(p) for r in rows if r["restart"] == 0 and r["step"] < step for p in r["samples"]]
    after = [tuple(p) for r in rows if r["restart"] == 1 for p in r["samples"]]
    assert kept and after
    trained = collections.Counter(kept + after)
    expected = collections.Counter((s, i) for s in range(simulations) for i in range(samples))
    assert trained == expected, (
        f"lost {sorted((expected - trained).elements())[:8]}, twice {sorted((trained - expected).elements())[:8]}"
    )
    outcome = json.loads((tmp_path / "outcome-0.json").read_text())
    assert outcome["completed"] == simulations and outcome["samples_trained"] == simulations * samples, outcome
