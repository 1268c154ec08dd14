"""Who may take part in a run: CURVE keys per simulation attempt, checked on every message, kept
out of command lines, deleted with the run; the ipc transport; hostile peers during a run."""

from __future__ import annotations

import contextlib
import json
import logging
import os
import shutil
import stat
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import psutil
import pytest

from engage.core.online.buffer import TrainingBuffer
from engage.core.online.journal import Journal
from engage.core.online.scheduler import SimulationScheduler
from engage.core.online.security import KEY_FILE_ENV, KEYS_ENV, PeerWarnings, load_client_keys
from engage.core.samplers.uniform import UniformSampler
from engage.core.simulators.function import FunctionSimulator

STEPS = 40


def ramp(steps: int = STEPS, delay: float = 0.0) -> FunctionSimulator:
    return FunctionSimulator(
        "test_online_helpers:ramp", {"x": {"low": 1, "high": 2}}, sample_shape=(8, 8), samples_per_run=steps,
        kwargs={"steps": steps, "delay": delay},
    )  # fmt: skip


@contextlib.contextmanager
def _one_sleeping_simulation(tmp_path, executor=None):
    """A run of one simulation that sleeps once started: its scheduler and its running attempt."""
    sim = ramp()
    sim.launch_command = lambda address, sid, attempt: [sys.executable, "-c", "import time; time.sleep(60)"]
    scheduler = SimulationScheduler(
        sim, UniformSampler(sim.space), TrainingBuffer(capacity=64), simulations=1, workdir=str(tmp_path),
        executor=executor,
    )  # fmt: skip
    scheduler.start()
    try:
        deadline = time.monotonic() + 10
        while not scheduler.active and time.monotonic() < deadline:
            time.sleep(0.05)
        yield scheduler, next(iter(scheduler.fleet.active.values()))
    finally:
        scheduler.stop()


def test_keys_are_private_out_of_argv_and_deleted_with_the_run(tmp_path, helpers_on_path):
    with _one_sleeping_simulation(tmp_path) as (scheduler, active):
        keys = scheduler.fleet.keys
        assert stat.S_IMODE(os.stat(keys.folder).st_mode) == 0o700
        process = psutil.Process(active.process.pid)
        # a child of the trainer: its keys in its environment, no key file to create and delete
        environ = process.environ()
        assert KEY_FILE_ENV not in environ and not os.listdir(keys.folder)
        secret = load_client_keys({KEYS_ENV: environ[KEYS_ENV]})["secret"]
        assert secret not in " ".join(process.cmdline())  # never on a command line `ps` shows
        if os.geteuid() == 0 and shutil.which("setpriv"):
            # as private as a 0600 file: another user cannot read the process's environment
            other = subprocess.run(
                ["setpriv", "--reuid=65534", "--regid=65534", "--clear-groups", "cat", f"/proc/{process.pid}/environ"],
                capture_output=True, text=True,
            )  # fmt: skip
            assert other.returncode != 0 and secret not in other.stdout, other
        assert active.user_id == f"{active.record.simulation_id}:{active.record.attempt}"
        assert scheduler.address.startswith("tcp://127.0.0.1:")  # the loopback, for local simulations
    assert not os.path.exists(keys.folder)


def test_a_simulation_that_cannot_take_its_keys_in_its_environment_reads_them_from_a_private_file(
    tmp_path, helpers_on_path
):
    from engage.core.executors import LocalExecutor

    class FileKeys(LocalExecutor):
        keys_in_environment = False

    with _one_sleeping_simulation(tmp_path, FileKeys()) as (scheduler, active):
        keys = scheduler.fleet.keys
        assert stat.S_IMODE(os.stat(keys.folder).st_mode) == 0o700
        environ = psutil.Process(active.process.pid).environ()
        path = environ[KEY_FILE_ENV]
        assert KEYS_ENV not in environ and stat.S_IMODE(os.stat(path).st_mode) == 0o600
        assert load_client_keys({KEY_FILE_ENV: path})["secret"]
    assert not os.path.exists(path) and not os.path.exists(keys.folder)


def test_a_key_file_others_can_read_is_refused(tmp_path):
    path = tmp_path / "sim.key"
    path.write_text(json.dumps({"server": "a" * 40, "public": "b" * 40, "secret": "c" * 40}))
    path.chmod(0o644)
    with pytest.raises(ValueError, match="readable by others"):
        load_client_keys({KEY_FILE_ENV: str(path)})


@pytest.mark.parametrize("security", ["curve", "ipc"])
def test_honest_simulations_complete_over_either_transport(tmp_path, helpers_on_path, security):
    buffer = TrainingBuffer(capacity=256, policy="fifo")
    sim = ramp(steps=6)
    scheduler = SimulationScheduler(
        sim, UniformSampler(sim.space, seed=0), buffer, simulations=2, transport_security=security,
        shared_memory=False, workdir=str(tmp_path),
    )  # fmt: skip
    scheduler.start()
    assert scheduler.address.startswith("ipc://" if security == "ipc" else "tcp://")
    folder = scheduler.endpoint.folder
    if security == "ipc":
        assert stat.S_IMODE(os.stat(folder).st_mode) == 0o700  # only this OS user reaches the socket
    scheduler.join(60)
    assert scheduler.finished == 2 and buffer.inserted == 12 and scheduler.error is None
    assert not os.path.exists(folder)


def _misbehaving(mode: str):
    from engage.core.simulators import ExecutableSimulator
    from engage.core.simulators.executable import TRAVELLING_WAVE_SPACE

    helper = str(Path(__file__).with_name("misbehaving_simulation.py"))
    argv = [sys.executable, helper, "{address}", "{simulation_id}", "{attempt}", mode]
    return ExecutableSimulator(argv, TRAVELLING_WAVE_SPACE, sample_shape=(16, 16), samples_per_run=3)


def test_what_a_finished_simulation_sends_is_dropped_and_counted(tmp_path, caplog):
    """DONE three times, then one sample more: finished once, no retry, nothing more trained."""
    buffer = TrainingBuffer(capacity=64, policy="fifo")
    sim = _misbehaving("done-twice")
    scheduler = SimulationScheduler(
        sim, UniformSampler(sim.space, seed=0), buffer, simulations=1, workdir=str(tmp_path)
    )
    with caplog.at_level(logging.WARNING, logger="engage.online"):
        scheduler.start()
        scheduler.join(60)
    assert scheduler.error is None and scheduler.finished == 1 and scheduler.retried == 0
    assert buffer.inserted == 3 and scheduler.dropped_messages == 3  # two DONE and the late sample
    assert any("which had finished" in r.getMessage() for r in caplog.records)


def _its_only_attempt_fails(tmp_path, mode: str, within_s: float, **settings) -> str:
    """The error of a run of one ``mode`` simulation without retries, which must end within ``within_s``."""
    sim = _misbehaving(mode)
    scheduler = SimulationScheduler(
        sim, UniformSampler(sim.space, seed=0), TrainingBuffer(capacity=64, policy="fifo"), simulations=1,
        retries=0, workdir=str(tmp_path), **settings,
    )  # fmt: skip
    started = time.monotonic()
    scheduler.start()
    scheduler.join(60)
    assert time.monotonic() - started < within_s
    assert scheduler.error is not None
    return scheduler.error


def test_a_malformed_hello_fails_its_attempt_at_once(tmp_path):
    """The key says whose connection it is: its attempt fails at once, not after its start-up time."""
    error = _its_only_attempt_fails(tmp_path, "bad-hello", 30, startup_timeout=120.0)
    assert "malformed data" in error, error


def test_an_attempt_that_cannot_be_started_fails_alone(tmp_path, helpers_on_path, monkeypatch):
    """No file descriptor left (a peer holding idle connections): that attempt fails and is
    retried, where the scheduler used to stop."""
    from engage.core.executors import LocalExecutor

    start, calls = LocalExecutor.start, []

    def start_once_out_of_files(self, request):
        calls.append(request.attempt)
        if len(calls) == 1:
            raise OSError(24, "Too many open files")
        return start(self, request)

    monkeypatch.setattr(LocalExecutor, "start", start_once_out_of_files)
    buffer = TrainingBuffer(capacity=64, policy="fifo")
    sim = ramp(steps=3)
    scheduler = SimulationScheduler(
        sim, UniformSampler(sim.space, seed=0), buffer, simulations=1, workdir=str(tmp_path)
    )
    scheduler.start()
    scheduler.join(60)
    assert scheduler.error is None and scheduler.finished == 1 and scheduler.retried == 1
    assert calls == [1, 2] and buffer.inserted == 3


def test_the_open_files_limit_is_raised_to_the_hard_one():
    import resource

    from engage.core.online.endpoint import raise_open_files_limit

    before = resource.getrlimit(resource.RLIMIT_NOFILE)
    try:
        resource.setrlimit(resource.RLIMIT_NOFILE, (256, before[1]))
        soft, hard = raise_open_files_limit()
        assert resource.getrlimit(resource.RLIMIT_NOFILE) == (soft, hard) and soft > 256
    finally:
        resource.setrlimit(resource.RLIMIT_NOFILE, before)


def test_a_simulation_that_only_heartbeats_while_holding_credit_fails(tmp_path):
    """Stuck, beside a thread that still answers: it fails after the heartbeat timeout."""
    error = _its_only_attempt_fails(tmp_path, "stuck", 20, heartbeat_timeout=2.0)
    assert "no sample for" in error and "while holding credit" in error, error


def test_text_from_a_peer_cannot_forge_log_lines_nor_drive_a_terminal():
    from engage.core.online.frames import log_block, one_line

    assert one_line("boom\x1b[2J\x07\x00\nWARNING forged") == "boom\\x1b[2J\\x07\\x00 WARNING forged"
    assert log_block("stderr line\n[2026-12-07][engage][INFO] - forged\x1b[0m") == (
        "  | stderr line\n  | [2026-12-07][engage][INFO] - forged\\x1b[0m"
    )


def test_peer_warnings_are_rate_limited_with_counts(caplog):
    warnings = PeerWarnings(per_minute=3)
    with caplog.at_level(logging.WARNING, logger="engage.online"):
        written = [warnings.warn("peer-a", "bad %s", "thing") for _ in range(1000)]
        warnings.warn("peer-b", "bad %s", "other")
    assert sum(written) == 3 and len(caplog.records) == 4


@pytest.mark.slow
def test_hostile_peers_during_a_run_change_nothing_it_trains_on(tmp_path, helpers_on_path, caplog):
    """Peers without keys, with guessed keys, with a key issued to another attempt, with
    oversized frames and deeply nested JSON, all claiming running simulations, and a peer holding
    a running simulation's own key (read from its key file) that sends messages wrong in every
    field, while two honest simulations run: the run completes without a retry, every sample is
    its simulation's own, memory and log stay bounded."""
    buffer = TrainingBuffer(capacity=512, policy="fifo")
    sim = ramp(delay=0.05)  # two seconds of samples each, while the attackers run
    journal = Journal(str(tmp_path / "journal.jsonl"))
    scheduler = SimulationScheduler(
        sim, UniformSampler(sim.space, seed=0), buffer, simulations=2, concurrency=2, journal=journal,
        workdir=str(tmp_path),
    )  # fmt: skip
    rss = psutil.Process().memory_info().rss
    with caplog.at_level(logging.WARNING, logger="engage.online"):
        scheduler.start()
        keys = scheduler.fleet.keys
        other = keys.issue(999, 1, to_file=False)  # valid, but another simulation's
        other_keys = keys.describe(other.public_key, other.secret_key)
        attacks = [
            ("unauthenticated", ""), ("guessed", ""), ("other-key", other_keys), ("oversized", other_keys),
            ("nested", other_keys), ("flood", ""),
        ]  # fmt: skip
        server_key = keys.server_public.decode()
        attackers = [
            subprocess.Popen(
                [sys.executable, "-m", "hostile_peer", scheduler.address, server_key, kind, str(sid), held, "20"],
                stdout=subprocess.PIPE,
                text=True,
            )
            for kind, held in attacks
            for sid in (0, 1)
        ]
        # a thief of simulation 0's key, once the honest process connected with it
        deadline = time.monotonic() + 10
        while (running := scheduler.fleet.active.get(0)) is None or running.identity is None:
            assert time.monotonic() < deadline, "simulation 0 did not connect"
            time.sleep(0.01)
        stolen = psutil.Process(running.process.pid).environ()[KEYS_ENV]
        thief = [sys.executable, "-m", "hostile_peer", scheduler.address, server_key, "stolen", "0", stolen, "20"]
        attackers.append(subprocess.Popen(thief, stdout=subprocess.PIPE, text=True))
        batches = []
        while (batch := buffer.get_batch(8, timeout=60)) is not None:
            batches.append(batch)
        reports = []
        for attacker in attackers:
            attacker.kill()
            reports += [json.loads(line) for line in attacker.communicate(timeout=10)[0].splitlines()]
        scheduler.join(30)
    # each attack is bounded, as the test's budget asks: at most 10 s and 100,000 messages
    assert all(r["seconds"] <= 10.5 and r["messages"] <= 100_000 for r in reports), reports
    assert sum(r["messages"] for r in reports) > 0
    assert scheduler.error is None and scheduler.finished == 2  # every honest simulation completed
    assert scheduler.retried == 0  # a stolen key's messages never failed the honest attempt
    heard = [r.getMessage() for r in caplog.records if "holding the key of attempt 0:1;" in r.getMessage()]
    assert heard, "the thief's messages were never read"  # read, and dropped
    targets = np.concatenate([b["target"] for b in batches])[:, 0, 0]
    times = np.concatenate([b["time"] for b in batches])[:, 0]
    ids = np.concatenate([b["simulation_id"] for b in batches])
    assert len(targets) == 2 * STEPS  # nothing more than the honest samples
    x = {sid: entry["parameters"]["x"] for sid, entry in journal.latest().items()}
    truth = np.array([x[int(i)] for i in ids]) * times * STEPS
    np.testing.assert_allclose(targets, truth, rtol=1e-5)  # each sample is its simulation's own
    assert scheduler.dropped_messages > 0  # the other attempt's key was heard, and refused
    grown = psutil.Process().memory_info().rss - rss
    assert grown <= max(2 * 512 * 256, 64 << 20), f"trainer memory grew by {grown / 2**20:.0f} MiB"
    assert len([r for r in caplog.records if r.name.startswith("engage.online")]) <= 100


def test_a_killed_trainers_run_folder_is_removed_by_the_next_run(tmp_path):
    import signal

    from engage.core.online.security import run_folder

    code = (
        "import sys, time; from engage.core.online.security import run_folder;"
        "print(run_folder(sys.argv[1]), flush=True); time.sleep(60)"
    )
    trainer = subprocess.Popen([sys.executable, "-c", code, str(tmp_path)], stdout=subprocess.PIPE, text=True)
    killed = trainer.stdout.readline().strip()
    (Path(killed) / "keys").mkdir()
    (Path(killed) / "keys" / "client.key").write_text("secret")
    alive = run_folder(str(tmp_path))  # its trainer still runs: both stay
    assert Path(killed).exists() and Path(alive).exists()
    trainer.send_signal(signal.SIGKILL)
    trainer.wait()
    assert Path(killed).exists(), "SIGKILL leaves the folder"
    # another process that now holds the same pid is not its trainer
    reused = Path(run_folder(str(tmp_path)))
    (reused / "owner.json").write_text(json.dumps({"pid": os.getpid(), "started": 1.0}))
    newest = run_folder(str(tmp_path))
    assert not Path(killed).exists() and not reused.exists()
    assert Path(alive).exists() and Path(newest).exists()
    assert oct(os.stat(newest).st_mode & 0o777) == "0o700"


def test_a_simulation_whose_keys_the_trainer_refuses_stops_at_once_saying_so(tmp_path):
    """Keys the trainer did not issue (or revoked): the client hears the refusal and stops with
    one line at once, not after ``server_timeout`` of silence."""
    import zmq

    from engage.core.online.link import TrainerGone, TrainerLink
    from engage.core.online.security import RunKeys, serve_curve

    context = zmq.Context()
    keys = RunKeys(str(tmp_path / "keys"))
    server = context.socket(zmq.ROUTER)
    authenticator = serve_curve(context, server, keys)
    port = server.bind_to_random_port("tcp://127.0.0.1")
    issued = keys.issue(0, 0, to_file=False)
    public, secret = zmq.curve_keypair()
    server_key = keys.server_public.decode()
    links = []
    try:
        honest = TrainerLink(f"tcp://127.0.0.1:{port}", json.loads(keys.describe(issued.public_key, issued.secret_key)),
                             heartbeat_interval=0.1, server_timeout=30)  # fmt: skip
        links.append(honest)
        thief = TrainerLink(f"tcp://127.0.0.1:{port}", {"server": server_key, "public": public.decode(),
                            "secret": secret.decode()}, heartbeat_interval=0.1, server_timeout=30)  # fmt: skip
        links.append(thief)
        honest.heartbeat(0, 0)
        thief.heartbeat(0, 0)
        started = time.monotonic()
        with pytest.raises(
            TrainerGone, match=r"refused this simulation's keys \(CURVE authentication failed, status 400\)"
        ):
            while time.monotonic() - started < 10:
                thief.receive(0.2)
        assert time.monotonic() - started < 5
        assert server.poll(5000) and server.recv_multipart()  # the honest one got through
        assert honest.receive(0.3) is None  # and hears no refusal
        thief.close()  # closing twice (again in finally) is nothing
    finally:
        for link in links:
            link.close()
        server.close(linger=0)
        authenticator.stop()
        context.term()
        keys.close()


def test_a_python_client_without_keys_for_a_tcp_trainer_stops_at_once_in_one_line():
    env = {k: v for k, v in os.environ.items() if k not in (KEYS_ENV, KEY_FILE_ENV)}
    command = [
        sys.executable,
        "-m",
        "engage.core.online.client",
        "--address",
        "tcp://127.0.0.1:9",
        "--simulation-id",
        "3",
    ]
    done = subprocess.run(command, env=env, capture_output=True, text=True, timeout=60)
    assert done.returncode == 2, done.stderr
    assert done.stderr.strip() == (
        "simulation 3: no keys for tcp://127.0.0.1:9: the trainer gives them in ENGAGE_KEY_FILE or ENGAGE_KEYS "
        "(only an ipc:// trainer needs none)"
    )


def test_simulations_do_not_inherit_the_trainers_mlflow_credentials(tmp_path, monkeypatch) -> None:
    """A sweep's job holds the sweep server's admin user in its environment for its own MLflow
    client; the simulations it starts are peers on the network and get none of it, while the rest
    of the environment (and what the request adds) reaches them."""
    from engage.core.executors import LaunchRequest, LocalExecutor

    for name, value in (("MLFLOW_TRACKING_USERNAME", "admin"), ("MLFLOW_TRACKING_PASSWORD", "s3cret")):
        monkeypatch.setenv(name, value)
    monkeypatch.setenv("MLFLOW_TRACKING_TOKEN", "t0ken")
    monkeypatch.setenv("ENGAGE_TEST_KEPT", "kept")
    # other tests of this process may have set other MLflow variables: the credentials are named
    named = "('MLFLOW_TRACKING_USERNAME', 'MLFLOW_TRACKING_PASSWORD', 'MLFLOW_TRACKING_TOKEN')"
    probe = f"import os; print(sorted(k for k in os.environ if k in {named} or k.startswith('ENGAGE_TEST_')))"
    request = LaunchRequest([sys.executable, "-c", probe], simulation_id=0, env={"ENGAGE_TEST_ADDED": "1"})
    process = LocalExecutor(log_dir=str(tmp_path)).start(request)
    deadline = time.monotonic() + 30
    while process.poll() is None and time.monotonic() < deadline:
        time.sleep(0.05)
    assert process.poll() == 0, process.stderr_tail()
    assert process.stderr_tail().strip() == "['ENGAGE_TEST_ADDED', 'ENGAGE_TEST_KEPT']"
