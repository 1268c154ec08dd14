"""Scale: the trainer's own cost as the simulation budget and the live simulations grow.

A Melissa-sized study runs tens of thousands of simulations, hundreds at a time, against one
training server. This benchmark runs tiny simulations (a few small samples each, no compute) so
that what is measured is the trainer's side of the online engine: the scheduler thread
(handshakes, job messages, credit, the receiver, journal lines, retries bookkeeping), the CURVE
authentication of every attempt (a keypair and a 0600 key file each), the sampler's ask and the
engine's word to it, and the state a checkpoint carries.

Simulations are clients multiplexed over a few OS processes (``--workers``; one process speaks
for up to 256 simulation ids at once, each with its own socket and keys, in its own thread), not
a process per simulation: the executor that hands them out (:class:`MultiplexExecutor`) is the
benchmark's, everything on the trainer's side is the product's
(:class:`~engage.core.online.scheduler.SimulationScheduler` with its default CURVE transport,
a FIFO :class:`~engage.core.online.buffer.TrainingBuffer` drained by a consumer thread, a
:class:`~engage.core.online.journal.Journal` on local disk).

Reported per run, as the budget grows (1,000 to 100,000 simulations at 64 live) and as live
simulations grow (1 to 256 at 2,000 simulations):

- ``scheduler_cpu_us_per_simulation`` / ``..._per_sample``: CPU time of the scheduler thread;
- ``trainer_cpu_us_per_simulation``: CPU time of the whole trainer process (scheduler, ZeroMQ's
  I/O and authentication threads, the consumer, this benchmark's bookkeeping), less nothing;
- ``sampler_us_per_simulation``: CPU time in the sampler's ``ask`` and the engine's
  ``simulation_finished`` calls;
- ``journal_bytes`` and ``journal_us_per_line`` (CPU time in ``Journal.append``);
- ``checkpoint_bytes``, ``checkpoint_ms`` and ``checkpoint_records``: the data state a checkpoint
  holds (the scheduler's, the sampler's and the buffer's, as the DataModule's ``state_dict``),
  taken under the scheduler's lock halfway through the run and written with ``torch.save`` (the
  time from holding the lock to written; ``checkpoint_state_ms`` of it under the lock, and
  ``checkpoint_lock_wait_ms`` before, while the scheduler finished handling what it held), and
  the simulation records it lists (those still to run);
- ``simulations_per_s`` and ``samples_per_s``: wall rates (the workers share the 2 cores);
- ``submission_rate``: simulations started per second of wall time.

Target (issue: scale on Slurm): trainer cost per simulation within 1.2x from 1k to 100k, nothing
quadratic: ``cost_ratio`` is the scheduler's CPU per simulation at the largest budget over that at
the smallest.

Run: ``python benchmarks/scale.py`` (the whole set, about 15 minutes on 2 cores); ``--quick``
(budgets 1,000 and 4,000, live 1/16/64, within 2 minutes); ``--budgets``, ``--live``,
``--sampler`` (any installed sampler), ``--slurm N`` (also N submissions through the Slurm
executor: the submission rate and the state queries), ``--out``. Prints a table and writes
``benchmarks/results/scale.json`` and, beside it, ``scale.png`` (CPU per simulation along each
run and against live simulations).
"""

from __future__ import annotations

import argparse
import io
import json
import os
import platform
import shutil
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import psutil
from _cli import check_out

from engage.core.executors import Executor, LaunchRequest, SimulationProcess, die_with_parent_command

HERE = Path(__file__).resolve().parent
OUT = HERE / "results" / "scale.json"
BUDGETS = [1000, 10000, 100000]
LIVE = [1, 16, 64, 256]
QUICK_BUDGETS = [1000, 4000]
QUICK_LIVE = [1, 16, 64]
#: simulations a worker process speaks for at once
PER_WORKER = 256
SAMPLES = 4  # samples per simulation
SAMPLE_SHAPE = (16,)  # float32: 64 bytes a sample


def tiny(parameters: dict[str, float], samples: int = SAMPLES) -> Iterator[np.ndarray]:
    """A simulation with no compute: ``samples`` constant samples."""
    for i in range(samples):
        yield np.full(SAMPLE_SHAPE, parameters["x"] + parameters["y"] * i, dtype=np.float32)


# ---------------------------------------------------------------------- the multiplexing executor
class MultiplexedSimulation(SimulationProcess):
    """One simulation running as a thread of a worker process."""

    def __init__(self, token: int, worker: _Worker):
        self.token, self.worker = token, worker

    @property
    def pid(self) -> int | None:
        return self.worker.process.pid

    def poll(self) -> int | None:
        code = self.worker.exits.get(self.token)
        if code is None and self.worker.process.poll() is not None:
            return -9  # the worker died, and every simulation it spoke for with it
        return code

    def kill(self) -> None:
        if self.poll() is None:
            self.worker.send({"kill": self.token})
            self.worker.exits.setdefault(self.token, -9)

    def stderr_tail(self, limit: int = 4000) -> str:
        return self.worker.errors.get(self.token, "")[-limit:]


class _Worker:
    """A worker process: simulations to start go in on its stdin as JSON lines, exit codes come
    back on its stdout."""

    def __init__(self, env: dict[str, str]):
        command, preexec = die_with_parent_command([sys.executable, str(Path(__file__).resolve()), "--worker"])
        self.process = subprocess.Popen(
            command, stdin=subprocess.PIPE, stdout=subprocess.PIPE, env=env, preexec_fn=preexec, text=True, bufsize=1
        )
        self.exits: dict[int, int] = {}
        self.errors: dict[int, str] = {}
        self.live = 0
        self._lock = threading.Lock()
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()

    def send(self, message: dict[str, Any]) -> None:
        with self._lock:
            self.process.stdin.write(json.dumps(message) + "\n")  # type: ignore[union-attr]
            self.process.stdin.flush()  # type: ignore[union-attr]

    def _read(self) -> None:
        for line in self.process.stdout:  # type: ignore[union-attr]
            message = json.loads(line)
            token = int(message["token"])
            if message.get("error"):
                self.errors[token] = message["error"]
            self.exits[token] = int(message["exit"])
            self.live -= 1


class MultiplexExecutor(Executor):
    """Starts each simulation as a client thread in one of ``workers`` processes on this host
    (each speaking for at most ``per_worker`` simulations at once), over the trainer's socket with
    the keys issued to each attempt (``shares_memory`` is off: samples go over the socket)."""

    shares_filesystem = True
    shares_memory = False
    keys_in_environment = True  # its workers are the trainer's children, as a local executor's

    def __init__(self, workers: int = 2, per_worker: int = PER_WORKER):
        env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(HERE), os.environ.get("PYTHONPATH", "")])}
        self.workers = [_Worker(env) for _ in range(workers)]
        self.per_worker = per_worker
        self._next = 0

    def start(self, request: LaunchRequest) -> SimulationProcess:
        worker = min(self.workers, key=lambda w: w.live)
        if worker.live >= self.per_worker:
            raise RuntimeError(f"every worker speaks for {self.per_worker} simulations already")
        token, self._next = self._next, self._next + 1
        worker.live += 1
        worker.send({"token": token, "command": request.command, "env": {**request.env, **request.secrets}})
        return MultiplexedSimulation(token, worker)

    def shutdown(self) -> None:
        for worker in self.workers:
            try:
                worker.process.stdin.close()  # type: ignore[union-attr]
            except OSError:
                pass
        for worker in self.workers:
            try:
                worker.process.wait(30)
            except subprocess.TimeoutExpired:
                worker.process.kill()


def _flag(command: list[str], name: str) -> str:
    return command[command.index(name) + 1]


def worker_main() -> None:
    """A worker process: run each simulation it is handed in a thread, as the client process of
    ``python -m engage.core.online.client`` would."""
    from engage.core.online.client import SimulationClient, build_simulator, stream
    from engage.core.online.security import load_client_keys

    out_lock = threading.Lock()
    simulators: dict[str, Any] = {}
    killed: set[int] = set()

    def report(token: int, code: int, error: str = "") -> None:
        with out_lock:
            sys.stdout.write(json.dumps({"token": token, "exit": code, "error": error}) + "\n")
            sys.stdout.flush()

    def run(message: dict[str, Any]) -> None:
        token, command = int(message["token"]), message["command"]
        client = SimulationClient(
            _flag(command, "--address"),
            int(_flag(command, "--simulation-id")),
            int(_flag(command, "--attempt")),
            keys=load_client_keys(message["env"]),
            shared_memory=False,
        )
        try:
            job = client.connect()
            key = json.dumps(job.simulator, sort_keys=True)
            if key not in simulators:
                simulators[key] = build_simulator(job.simulator)
            simulator = simulators[key]
            vector = np.asarray(job.vector, dtype=np.float64)
            stream(client, simulator.run(vector), job.resume_from)
            code, error = 0, ""
        except Exception as exc:  # the trainer hears of it through the exit code, as from a process
            code, error = 1, f"{type(exc).__name__}: {exc}"
            print(f"simulation {token}: {error}", file=sys.stderr, flush=True)
        finally:
            client.close()
        if token not in killed:
            report(token, code, error)

    for line in sys.stdin:
        message = json.loads(line)
        if "kill" in message:
            killed.add(int(message["kill"]))
            continue
        threading.Thread(target=run, args=(message,), daemon=True).start()


# ---------------------------------------------------------------------- one measurement
class _Timed:
    """CPU time of the calling thread spent in some methods of an object, patched on the instance
    (CPU, not wall time: the scheduler thread waits for the interpreter's lock meanwhile)."""

    def __init__(self, target: Any, methods: tuple[str, ...]):
        self.seconds: dict[str, float] = {m: 0.0 for m in methods}
        self.calls: dict[str, int] = {m: 0 for m in methods}
        for name in methods:
            setattr(target, name, self._wrap(name, getattr(target, name)))

    def _wrap(self, name: str, method: Any) -> Any:
        def timed(*args: Any, **kwargs: Any) -> Any:
            started = time.thread_time()
            try:
                return method(*args, **kwargs)
            finally:
                self.seconds[name] += time.thread_time() - started
                self.calls[name] += 1

        return timed


def _thread_cpu(native_id: int | None) -> float:
    for thread in psutil.Process().threads():
        if thread.id == native_id:
            return thread.user_time + thread.system_time
    return 0.0


def take_checkpoint(scheduler: Any, sampler: Any, buffer: Any) -> dict[str, Any]:
    """The run's data state as a Lightning checkpoint holds it (the DataModule's ``state_dict``:
    scheduler, sampler and buffer, taken under the scheduler's lock), written with ``torch.save``
    to memory: its size, the time to take and write it, and the simulations it still lists."""
    import torch

    started = time.perf_counter()
    with scheduler.consistent():
        locked = time.perf_counter()
        state = {"scheduler": scheduler.state_dict(), "sampler": sampler.state_dict(), "buffer": buffer.state_dict()}
        taken = time.perf_counter()
    data = io.BytesIO()
    torch.save(state, data)
    return {
        "checkpoint_bytes": data.tell(),
        "checkpoint_ms": round((time.perf_counter() - locked) * 1e3, 2),
        "checkpoint_state_ms": round((taken - locked) * 1e3, 2),
        "checkpoint_lock_wait_ms": round((locked - started) * 1e3, 2),
        "checkpoint_records": len(state["scheduler"].get("pending", [])),
    }


def measure(budget: int, live: int, sampler_name: str = "uniform", workers: int = 2) -> dict[str, Any]:
    """One online run of ``budget`` tiny simulations, ``live`` at a time; the trainer's costs."""
    from engage.core import plugins
    from engage.core.online.buffer import TrainingBuffer
    from engage.core.online.journal import Journal
    from engage.core.online.scheduler import SimulationScheduler
    from engage.core.simulators.function import FunctionSimulator

    if str(HERE) not in sys.path:
        sys.path.insert(0, str(HERE))  # the simulator is this module's tiny(), by import path
    folder = tempfile.mkdtemp(prefix="engage-scale-")
    simulator = FunctionSimulator(
        "scale:tiny", {"x": {"low": 0, "high": 1}, "y": {"low": 0, "high": 1}}, SAMPLE_SHAPE, samples_per_run=SAMPLES
    )
    sampler = plugins.samplers()[sampler_name](simulator.space, seed=0)
    sampler_time = _Timed(sampler, ("ask", "simulation_finished"))
    journal = Journal(os.path.join(folder, "journal.jsonl"), run_id="scale")
    journal_time = _Timed(journal, ("append",))
    buffer = TrainingBuffer(capacity=8192, policy="fifo")
    executor = MultiplexExecutor(workers=max(workers, -(-live // PER_WORKER)))
    scheduler = SimulationScheduler(
        simulator, sampler, buffer, simulations=budget, concurrency=live, executor=executor, journal=journal,
        shared_memory=False, workdir=folder, startup_timeout=600.0, heartbeat_timeout=600.0,
    )  # fmt: skip
    taken = 0

    def consume() -> None:
        nonlocal taken
        while (batch := buffer.get_batch(256, target=False)) is not None:
            taken += len(batch["simulation_id"])

    consumer = threading.Thread(target=consume, daemon=True)
    process = psutil.Process()
    cpu0 = sum(process.cpu_times()[:2])
    started = time.perf_counter()
    consumer.start()
    ended_cpu: list[float] = []  # the scheduler thread's own CPU time, read by it as it ends
    main = scheduler._main

    def timed_main() -> None:
        try:
            main()
        finally:
            ended_cpu.append(time.thread_time())

    scheduler._main = timed_main  # type: ignore[method-assign]
    scheduler.start()
    scheduler_thread = scheduler._thread
    last = started
    scheduler_cpu = 0.0
    checkpoint: dict[str, Any] | None = None
    timeline: list[tuple[int, float, float]] = []  # (simulations finished, scheduler CPU s so far, time)
    while scheduler_thread is not None and scheduler_thread.is_alive():
        scheduler_thread.join(0.2)
        scheduler_cpu = max(scheduler_cpu, _thread_cpu(scheduler_thread.native_id))  # read while it lives
        timeline.append((scheduler.finished, scheduler_cpu, time.perf_counter()))
        if checkpoint is None and scheduler.finished >= budget // 2:
            checkpoint = take_checkpoint(scheduler, sampler, buffer)  # mid-run, as Lightning would
        if time.perf_counter() - last > 10:
            last = time.perf_counter()
            print(f"  {scheduler.finished:,}/{budget:,} simulations", file=sys.stderr, flush=True)
    scheduler.join(5)
    scheduler_cpu = max([scheduler_cpu, *ended_cpu])
    consumer.join(30)
    wall = time.perf_counter() - started
    trainer_cpu = sum(process.cpu_times()[:2]) - cpu0
    executor.shutdown()
    if scheduler.error or scheduler.finished != budget:
        raise RuntimeError(f"{scheduler.finished} of {budget} simulations finished: {scheduler.error}")
    samples = scheduler.samples
    if samples != budget * SAMPLES or taken != samples:
        raise RuntimeError(f"{samples} samples received and {taken} taken of {budget * SAMPLES}")
    checkpoint = checkpoint or take_checkpoint(scheduler, sampler, buffer)
    journal_bytes = os.path.getsize(journal.path)
    shutil.rmtree(folder, ignore_errors=True)
    sampler_s = sum(sampler_time.seconds.values())
    return {
        "budget": budget,
        "live": live,
        "sampler": sampler_name,
        "workers": len(executor.workers),
        "samples": samples,
        "wall_s": round(wall, 3),
        "simulations_per_s": round(budget / wall, 1),
        "samples_per_s": round(samples / wall, 1),
        "submission_rate": round(budget / wall, 1),
        "scheduler_cpu_s": round(scheduler_cpu, 3),
        "scheduler_cpu_us_per_simulation": round(scheduler_cpu / budget * 1e6, 1),
        "scheduler_cpu_us_per_sample": round(scheduler_cpu / samples * 1e6, 1),
        "trainer_cpu_s": round(trainer_cpu, 3),
        "trainer_cpu_us_per_simulation": round(trainer_cpu / budget * 1e6, 1),
        "sampler_us_per_simulation": round(sampler_s / budget * 1e6, 2),
        "journal_lines": journal_time.calls["append"],
        "journal_bytes": journal_bytes,
        "journal_us_per_line": round(journal_time.seconds["append"] / max(1, journal_time.calls["append"]) * 1e6, 1),
        **checkpoint,
        "marginal": marginal_cost(timeline, budget),
        "messages": scheduler.sample_messages,
    }


def measure_slurm(jobs: int) -> dict[str, Any]:
    """Submit ``jobs`` one-line simulations through the Slurm executor (``data.executor=slurm``)
    to the cluster ``SLURM_CONF`` names, or to a one-node cluster started here (root, Debian's
    ``slurm-wlm`` and ``munge``), and watch them end as the fleet does: the submission rate the
    executor's thread achieves (one ``sbatch`` a simulation), what each start costs the thread
    that calls it (the scheduler's), and the state queries made while the jobs live."""
    from engage.core.executors import LaunchRequest
    from engage.deploy.slurm.cluster import LocalSlurmCluster
    from engage.deploy.slurm.executor import SlurmExecutor

    cluster = None
    if not os.environ.get("SLURM_CONF"):
        cluster = LocalSlurmCluster().start()
        os.environ["SLURM_CONF"] = str(cluster.conf)
    folder = tempfile.mkdtemp(prefix="engage-scale-slurm-")
    try:
        executor = SlurmExecutor(log_dir=folder)
        started = time.perf_counter()
        processes = [executor.start(LaunchRequest(["true"], i, log_dir=folder)) for i in range(jobs)]
        queued = time.perf_counter() - started  # what the fleet's thread waits: sbatch runs in the executor's
        polls, submitted = 0, None
        while any(p.poll() is None for p in processes):
            polls += 1
            if submitted is None and all(p.job_id is not None or p.poll() is not None for p in processes):
                submitted = time.perf_counter() - started
            time.sleep(0.05)
        drained = time.perf_counter() - started
        submitted = submitted or drained
        codes = [p.poll() for p in processes]
        executor.shutdown()
    finally:
        shutil.rmtree(folder, ignore_errors=True)
        if cluster is not None:
            cluster.stop()
            os.environ.pop("SLURM_CONF", None)
    return {
        "jobs": jobs,
        "submissions_per_s": round(jobs / submitted, 1),
        "ms_per_submission": round(submitted / jobs * 1e3, 2),
        "caller_ms_per_start": round(queued / jobs * 1e3, 3),
        "all_completed": all(c == 0 for c in codes),
        "drained_s": round(drained, 2),
        "fleet_looks": polls,
        "squeue_calls": executor.states.queries,
    }


def marginal_cost(timeline: list[tuple[int, float, float]], budget: int, windows: int = 20) -> list[dict[str, float]]:
    """The scheduler's CPU per simulation within successive windows of the run (each about
    ``budget / windows`` simulations), with the simulations a second and the scheduler's share
    of a core in each: the cost of the 1,000th simulation against the 100,000th within one run,
    which drifts of this host's speed between runs do not blur."""
    out: list[dict[str, float]] = []
    step = max(1, budget // windows)
    start = timeline[0] if timeline else (0, 0.0, 0.0)
    start = (0, 0.0, start[2])
    for finished, cpu, clock in timeline:
        if cpu <= start[1]:
            continue  # read after the thread ended: its CPU time is no longer known
        if finished - start[0] >= step and clock > start[2]:
            out.append({
                "finished": finished,
                "us_per_simulation": round((cpu - start[1]) / (finished - start[0]) * 1e6, 1),
                "simulations_per_s": round((finished - start[0]) / (clock - start[2]), 1),
                "scheduler_core_share": round((cpu - start[1]) / (clock - start[2]), 3),
            })  # fmt: skip
            start = (finished, cpu, clock)
    return out


def within_run_ratio(row: dict[str, Any]) -> float | None:
    """Scheduler CPU per simulation in the last three windows of a run over that in the first
    three after the first (start-up) window: medians, so one slow window does not decide."""
    costs = [w["us_per_simulation"] for w in row.get("marginal", [])]
    if len(costs) < 7:
        return None
    return round(statistics.median(costs[-3:]) / statistics.median(costs[1:4]), 3)


def cost_ratio(rows: list[dict[str, Any]], key: str = "scheduler_cpu_us_per_simulation") -> float | None:
    """``key`` at the largest budget over that at the smallest, among the budget rows."""
    rows = sorted(rows, key=lambda r: r["budget"])
    if len(rows) < 2 or not rows[0][key]:
        return None
    return round(rows[-1][key] / rows[0][key], 3)


def plot(out: dict[str, Any], path: Path) -> None:
    """The scheduler's CPU per simulation along each run of the budget series (windows of
    5% of the run), and at the end of each run of the live series."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (left, right) = plt.subplots(1, 2, figsize=(10, 3.8))
    for row in out["by_budget"]:
        points = row["marginal"]
        left.plot([p["finished"] for p in points], [p["us_per_simulation"] for p in points], marker=".",
                  label=f"{row['budget']:,} simulations")  # fmt: skip
    left.set_xscale("log")
    left.set_xlabel("simulations finished")
    left.set_ylabel("scheduler CPU per simulation (µs)")
    left.set_ylim(bottom=0)
    left.set_title("along each run, 64 live")
    left.legend()
    live = out["by_live"]
    right.plot([r["live"] for r in live], [r["scheduler_cpu_us_per_simulation"] for r in live], marker="o",
               label="scheduler thread")  # fmt: skip
    right.plot([r["live"] for r in live], [r["trainer_cpu_us_per_simulation"] for r in live], marker="s",
               label="trainer process")  # fmt: skip
    right.set_xscale("log", base=2)
    right.set_xlabel("live simulations")
    right.set_ylabel("CPU per simulation (µs)")
    right.set_ylim(bottom=0)
    right.set_title(f"{live[0]['budget']:,} simulations" if live else "")
    right.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description="The online trainer's own cost as the simulation budget (1k-100k) and live simulations grow."
    )
    parser.add_argument("--quick", action="store_true", help="budgets 1,000 and 4,000, live 1/16/64 (under 2 minutes)")
    parser.add_argument("--budgets", nargs="+", type=int, help=f"simulation budgets at 64 live (default {BUDGETS})")
    parser.add_argument("--live", nargs="+", type=int, help=f"live simulations at 2,000 simulations (default {LIVE})")
    parser.add_argument("--live-budget", type=int, default=2000, help="budget of the live-simulations rows")
    parser.add_argument("--sampler", default="uniform", help="an installed sampler's name (default: uniform)")
    parser.add_argument(
        "--slurm", type=int, default=0, metavar="N",
        help="also submit N one-line simulations through the Slurm executor (SLURM_CONF, or a local cluster: root)",
    )  # fmt: skip
    parser.add_argument("--workers", type=int, default=2, help="worker processes the simulations run in (default 2)")
    parser.add_argument("--out", default=str(OUT), help="the JSON to write (default: benchmarks/results/scale.json)")
    parser.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    for name in ("budgets", "live"):
        values = getattr(args, name) or []
        if any(v < 1 for v in values):
            parser.error(f"--{name} takes positive integers")
    if any(v > PER_WORKER * 16 for v in args.live or []):
        parser.error(f"--live takes at most {PER_WORKER * 16}")
    if args.workers < 1:
        parser.error("--workers must be >= 1")
    if not args.worker:
        check_out(parser, args.out)
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if args.worker:
        worker_main()
        return 0
    from engage.core import plugins

    if args.sampler not in plugins.samplers():
        choices = ", ".join(sorted(plugins.samplers()))
        print(f"--sampler: {args.sampler!r} is not installed; choose one of {choices}", file=sys.stderr)
        return 2
    budgets = args.budgets or (QUICK_BUDGETS if args.quick else BUDGETS)
    live = args.live or (QUICK_LIVE if args.quick else LIVE)
    by_budget, by_live = [], []
    print(f"{'budget':>8} {'live':>5} {'sched us/sim':>13} {'us/sample':>10} {'trainer us/sim':>15} "
          f"{'sampler us':>11} {'journal B':>11} {'ckpt B':>9} {'ckpt ms':>8} {'sims/s':>8}")  # fmt: skip

    def show(row: dict[str, Any]) -> None:
        print(f"{row['budget']:>8,} {row['live']:>5} {row['scheduler_cpu_us_per_simulation']:>13,.0f} "
              f"{row['scheduler_cpu_us_per_sample']:>10,.0f} {row['trainer_cpu_us_per_simulation']:>15,.0f} "
              f"{row['sampler_us_per_simulation']:>11,.1f} {row['journal_bytes']:>11,} {row['checkpoint_bytes']:>9,} "
              f"{row['checkpoint_ms']:>8.2f} {row['simulations_per_s']:>8,.0f}", flush=True)  # fmt: skip

    for budget in budgets:
        by_budget.append(measure(budget, 64, args.sampler, args.workers))
        show(by_budget[-1])
    for n in live:
        by_live.append(measure(args.live_budget, n, args.sampler, args.workers))
        show(by_live[-1])
    ratio = cost_ratio(by_budget)
    within = within_run_ratio(max(by_budget, key=lambda r: r["budget"])) if by_budget else None
    slurm = measure_slurm(args.slurm) if args.slurm else None
    if slurm:
        rate, each = slurm["submissions_per_s"], slurm["ms_per_submission"]
        print(f"slurm: {slurm['jobs']} submissions, {rate}/s ({each} ms each); "
              f"{slurm['squeue_calls']} squeue calls in {slurm['fleet_looks']} looks at the fleet")  # fmt: skip
    out = {
        "benchmark": "scale",
        "machine": {"cpus": os.cpu_count(), "platform": platform.platform(), "python": platform.python_version()},
        "samples_per_simulation": SAMPLES,
        "sample_bytes": int(np.prod(SAMPLE_SHAPE)) * 4,
        "by_budget": by_budget,
        "by_live": by_live,
        "slurm": slurm,
        "cost_ratio": ratio,
        "within_run_ratio": within,
        "target": "scheduler CPU per simulation within 1.2x from the smallest budget to the largest "
        "(within_run_ratio: the last simulations of the largest run against its first)",
        "target_met": None if within is None else within <= 1.2,
    }
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(out, indent=2) + "\n")
    if by_budget and by_live:
        plot(out, Path(args.out).with_suffix(".png"))
    print(f"cost per simulation, largest budget / smallest: {ratio}; last / first simulations of the largest: "
          f"{within}  ->  {args.out}")  # fmt: skip
    return 0


if __name__ == "__main__":
    sys.exit(main())
