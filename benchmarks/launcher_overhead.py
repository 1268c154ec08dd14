"""Launch overhead per job of the engage launcher against Hydra's basic and joblib launchers.

The same sweep (a task that sleeps ``--task-s`` seconds) runs with each launcher for 1, 8 and 64
jobs at parallelism 8 (the basic launcher runs one job at a time). Sweeps of up to 8 jobs run
``--repeat`` times (default 3), interleaved across launchers, and the run of median wall time is
reported with all wall times beside it. For each run:

* ``wall_s``: the whole command, Python start to exit;
* ``startup_s``: the same app run once without a sweep, minus its task time (Python, Hydra,
  composition): subtracted so that only launching is counted;
* ``ideal_s``: ``ceil(jobs / parallelism) * task_s``, the time the jobs themselves need;
* ``overhead_per_job_s``: ``(wall_s - startup_s - ideal_s) / jobs``.

``engage-local`` starts an MLflow tracking server for each sweep that runs jobs in parallel (its
start-up is part of the overhead); ``engage-local-warm`` reuses a server kept running by an
earlier sweep on the same store (``hydra.launcher.mlflow.keep_server=true``), the steady state
of a researcher running sweep after sweep.

The engage launcher does all its recording here (experiment folder, per-host metrics, an MLflow
tracking server for the sweep, a child run per job); for its 64-job runs the benchmark also
checks MLflow holds exactly one run per job (none lost, none duplicated). ``netns`` rows need
root and iproute2 and are left out otherwise.

Usage::

    python benchmarks/launcher_overhead.py --out benchmarks/results/launcher_overhead.json
"""

from __future__ import annotations

import argparse
import json
import math
import os
import platform
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from _cli import check_out, names, number, whole, whole_numbers

APP = """
import os, time
import hydra
from omegaconf import DictConfig

@hydra.main(version_base=None, config_path=None)
def main(cfg: DictConfig) -> float:
    time.sleep(float(cfg.task_s))
    return float(cfg.i)

if __name__ == "__main__":
    main()
"""

#: the launchers measured, in this order: Hydra's, then ENGAGE's (a server started for the
#: sweep, one kept from an earlier sweep, hosts in network namespaces)
LAUNCHERS = ("basic", "joblib", "engage-local", "engage-local-warm", "engage-netns")

NETNS_INFRA = [
    "+infrastructure=netns_edge_cloud",
    "hydra.launcher.layer=edge",
    # the limits of the shipped example would measure the edge hosts' CPU, not the launcher
    "hydra.launcher.infrastructure.layers.1.cpu=null",
]


def run(cmd: list[str], cwd: Path, timeout: float) -> tuple[float, subprocess.CompletedProcess]:
    started = time.perf_counter()
    proc = subprocess.run(cmd, cwd=cwd, capture_output=True, text=True, timeout=timeout)
    return time.perf_counter() - started, proc


def netns_possible() -> bool:
    if os.geteuid() != 0:
        return False
    try:
        from engage.deploy.providers.netns import netns_available

        return netns_available() is None
    except ImportError:
        return False


def count_children(db: Path, run_dir: Path) -> tuple[int, int]:
    """(runs, distinct job indices) recorded in ``db`` for the sweep run in ``run_dir``."""
    from mlflow.tracking import MlflowClient

    client = MlflowClient(f"sqlite:///{db}")
    experiment = client.get_experiment_by_name("engage")
    runs = client.search_runs([experiment.experiment_id], max_results=10000)
    folder = str(run_dir.resolve())
    kids = [r for r in runs if r.data.tags.get("engage.experiment_folder", "").startswith(folder)]
    return len(kids), len({r.data.tags["engage.job"] for r in kids})


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--jobs", type=whole_numbers(), default="1,8,64", help="jobs per sweep, comma-separated (default 1,8,64)"
    )
    parser.add_argument("--parallelism", type=whole(), default=8, help="jobs run at once (default 8)")
    parser.add_argument(
        "--task-s", type=number(0.0, strict=False, unit="s"), default=0.2, help="each job's own work, s (default 0.2)"
    )
    parser.add_argument(
        "--launchers",
        type=names(LAUNCHERS),
        default=",".join(LAUNCHERS),
        help=f"comma-separated, of {', '.join(LAUNCHERS)} (default all; engage-netns needs root)",
    )
    parser.add_argument(
        "--out", default="benchmarks/results/launcher_overhead.json", help="the JSON to write (default %(default)s)"
    )
    parser.add_argument("--timeout", type=number(unit="s"), default=900, help="limit of each sweep, s (default 900)")
    parser.add_argument(
        "--repeat", type=whole(), default=3, help="runs of each sweep of up to 8 jobs, median taken (default 3)"
    )
    args = parser.parse_args()
    check_out(parser, args.out)

    work = Path(tempfile.mkdtemp(prefix="engage-bench-"))
    app = work / "app.py"
    app.write_text(APP)
    python = sys.executable
    task = f"+task_s={args.task_s}"
    startup_wall, proc = run([python, str(app), task, "+i=0", "hydra.run.dir=single"], work, args.timeout)
    if proc.returncode != 0:
        print(proc.stderr, file=sys.stderr)
        return 1
    startup_s = startup_wall - args.task_s
    launchers = {
        "basic": (["hydra/launcher=basic"], 1),
        "joblib": (["hydra/launcher=joblib", f"hydra.launcher.n_jobs={args.parallelism}"], args.parallelism),
        "engage-local": (["hydra/launcher=engage", f"hydra.launcher.parallelism={args.parallelism}"], args.parallelism),
        "engage-netns": (
            ["hydra/launcher=engage", f"hydra.launcher.parallelism={args.parallelism}", *NETNS_INFRA],
            args.parallelism,
        ),
    }
    # a server kept running by an earlier sweep on the same store (hydra.launcher.mlflow.keep_server)
    warm_db = work / "warm" / "mlflow.db"
    warm_db.parent.mkdir()
    warm = [
        "hydra.launcher.mlflow.server=true",
        "hydra.launcher.mlflow.keep_server=true",
        f"hydra.launcher.mlflow.tracking_uri=sqlite:///{warm_db}",
    ]
    launchers["engage-local-warm"] = ([*launchers["engage-local"][0], *warm], args.parallelism)
    wanted = args.launchers
    if "engage-local-warm" in wanted:
        warmup = [python, str(app), "-m", task, *launchers["engage-local-warm"][0], "+i=0", "hydra.sweep.dir=warmup"]
        run(warmup, warm_db.parent, args.timeout)
    if "engage-netns" in wanted and not netns_possible():
        print("engage-netns left out: needs root and network namespaces", file=sys.stderr)
        wanted.remove("engage-netns")
    rows = []
    for jobs in args.jobs:
        # small sweeps take seconds and vary by as much on a busy machine: their median of
        # ``--repeat`` runs, interleaved across launchers, is reported
        repeats = args.repeat if jobs <= 8 else 1
        measured: dict[str, list[dict]] = {name: [] for name in wanted}
        for attempt in range(repeats):
            for name in wanted:
                measured[name].append(measure(name, jobs, attempt, launchers[name], work, warm_db, startup_s, args))
        for name in wanted:
            row = median_row(measured[name])
            rows.append(row)
            print(json.dumps(row), flush=True)
        write(args.out, args.task_s, rows, complete=False)
    for jobs in sorted({r["jobs"] for r in rows}):
        joblib = next((r for r in rows if r["launcher"] == "joblib" and r["jobs"] == jobs), None)
        for r in rows:
            if joblib and r["jobs"] == jobs and r["launcher"].startswith("engage"):
                r["vs_joblib_per_job_s"] = round(r["overhead_per_job_s"] - joblib["overhead_per_job_s"], 3)
    state = warm_db.parent / "mlflow.db.engage-server.json"
    if state.is_file():  # stop the kept server
        try:
            os.killpg(json.loads(state.read_text())["pid"], signal.SIGTERM)
        except ProcessLookupError:
            pass
    write(args.out, args.task_s, rows, complete=True)
    print(f"wrote {args.out}")
    return 0


def measure(
    name: str,
    jobs: int,
    attempt: int,
    launcher: tuple[list[str], int],
    work: Path,
    warm_db: Path,
    startup_s: float,
    args: argparse.Namespace,
) -> dict:
    """One sweep of ``jobs`` jobs with launcher ``name``, run from a folder of its own;
    ``startup_s`` is the app's own start-up, subtracted from the sweep's wall time."""
    overrides, parallelism = launcher
    run_dir = work / f"{name}-{jobs}-{attempt}"
    run_dir.mkdir()
    cmd = [sys.executable, str(work / "app.py"), "-m", f"+task_s={args.task_s}", *overrides]
    cmd += [f"+i=range(0,{jobs})", "hydra.sweep.dir=sweep"]
    wall, proc = run(cmd, run_dir, args.timeout)
    ideal = math.ceil(jobs / min(parallelism, jobs)) * args.task_s
    row: dict[str, Any] = {
        "launcher": name,
        "jobs": jobs,
        "parallelism": min(parallelism, jobs),
        "ok": proc.returncode == 0,
        "wall_s": round(wall, 3),
        "startup_s": round(startup_s, 3),
        "ideal_s": round(ideal, 3),
        "overhead_per_job_s": round((wall - startup_s - ideal) / jobs, 3),
    }
    if name.startswith("engage") and proc.returncode == 0:
        db = warm_db if name.endswith("-warm") else run_dir / "mlflow.db"
        runs, distinct = count_children(db, run_dir)
        row.update(mlflow_runs=runs, mlflow_distinct_jobs=distinct)
    if proc.returncode != 0:
        row["error"] = proc.stderr.strip().splitlines()[-1:] or ["?"]
    return row


def median_row(runs: list[dict]) -> dict:
    """The run of median wall time, with every run's wall time beside it."""
    ordered = sorted(runs, key=lambda r: (not r["ok"], r["wall_s"]))
    row = dict(ordered[(len(ordered) - 1) // 2] if all(r["ok"] for r in runs) else ordered[-1])
    row["ok"] = all(r["ok"] for r in runs)
    if len(runs) > 1:
        row["runs_wall_s"] = [r["wall_s"] for r in runs]
    return row


def write(path: str, task_s: float, rows: list[dict], complete: bool) -> None:
    """The JSON result, rewritten after each sweep size so an interrupted run keeps what it measured."""
    result = {
        "benchmark": "launcher_overhead",
        "complete": complete,
        "task_s": task_s,
        "machine": {"cpus": os.cpu_count(), "python": platform.python_version(), "load_avg": os.getloadavg()},
        "rows": rows,
    }
    out = Path(path)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=1))


if __name__ == "__main__":
    sys.exit(main())
