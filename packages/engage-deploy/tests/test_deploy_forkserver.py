"""Jobs on hosts that share this machine's files start as children of a per-host fork server:
each is still its own process and session with its own environment, logs and exit status, a
timeout still kills it, and a server that cannot start leaves jobs to new interpreters."""

from __future__ import annotations

import json
import os
import re
import stat
import subprocess
import sys
from pathlib import Path

import pytest

from engage.core.forkserver import ForkServer, ForkServerError
from engage.deploy.job_start import JOB_PRELOAD, RUNNER_MAIN
from engage.deploy.runner import EXIT_RUNNER_ERROR

APP = Path(__file__).parent / "apps" / "deploy_app.py"
NO_MLFLOW = ["hydra.launcher.mlflow.enabled=false"]


def launch(cwd: Path, *overrides: str, timeout: float = 120) -> tuple[int, subprocess.CompletedProcess]:
    cmd = [sys.executable, str(APP), "-m", "hydra/launcher=engage", "hydra.sweep.dir=sweep", *NO_MLFLOW, *overrides]
    proc = subprocess.Popen(cmd, cwd=cwd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    out, err = proc.communicate(timeout=timeout)
    return proc.pid, subprocess.CompletedProcess(cmd, proc.returncode, out, err)


def job_lines(cwd: Path) -> dict[int, dict[str, str]]:
    (folder,) = (cwd / "sweep" / ".engage").glob("*")
    found = {}
    for log in folder.glob("jobs/*/stdout.log"):
        text = log.read_text()
        found[int(log.parent.name)] = dict(re.findall(r"(\w+)=(\S+)", text))
    return found


def test_jobs_are_forked_children_with_their_own_session_environment_and_logs(tmp_path: Path) -> None:
    launcher_pid, proc = launch(tmp_path, "hydra.launcher.parallelism=3", "+x=1,2,3")
    assert proc.returncode == 0, proc.stderr
    jobs = job_lines(tmp_path)
    assert sorted(jobs) == [0, 1, 2]
    parents = {info["ppid"] for info in jobs.values()}
    assert len(parents) == 1 and parents != {str(launcher_pid)}  # one server forked them all
    for index, info in jobs.items():
        assert info["sid"] == info["pid"]  # its own session: the launcher signals its group
        assert info["job_dir"].endswith(f"/jobs/{index}") and info["cwd"] == str(tmp_path)
    assert len({info["random"] for info in jobs.values()}) == 3  # no random state shared through the fork
    assert "engage launcher: 3 completed, 0 failed" in proc.stderr + proc.stdout


def test_without_fork_each_job_is_a_new_interpreter(tmp_path: Path) -> None:
    launcher_pid, proc = launch(tmp_path, "hydra.launcher.fork_jobs=false", "hydra.launcher.parallelism=2", "+x=1,2")
    assert proc.returncode == 0, proc.stderr
    assert {info["ppid"] for info in job_lines(tmp_path).values()} == {str(launcher_pid)}


def test_a_forked_job_past_its_timeout_is_killed_and_reported(tmp_path: Path) -> None:
    _, proc = launch(tmp_path, "hydra.launcher.job_timeout_s=2", "+x=1", "+sleep=60", timeout=90)
    assert proc.returncode != 0
    (result,) = (tmp_path / "sweep" / ".engage").glob("*/jobs/0/result.json")
    summary = json.loads(result.read_text())
    assert summary["status"] == "FAILED" and summary["exit_code"] < 0
    assert summary["error"] == "killed after hydra.launcher.job_timeout_s=2.0", summary
    assert summary["duration_s"] < 30
    pid = int(job_lines(tmp_path)[0]["pid"])
    with pytest.raises(ProcessLookupError):
        os.kill(pid, 0)


def test_a_server_that_cannot_start_leaves_jobs_to_new_interpreters(tmp_path: Path) -> None:
    python = tmp_path / "python"
    python.write_text(
        "#!/bin/sh\n"
        'case "$*" in *engage.core.forkserver*) echo "no fork server here" >&2; exit 3;; esac\n'
        f'exec {sys.executable} "$@"\n'
    )
    python.chmod(python.stat().st_mode | stat.S_IEXEC)
    launcher_pid, proc = launch(tmp_path, f"hydra.launcher.python={python}", "hydra.launcher.parallelism=2", "+x=1,2")
    assert proc.returncode == 0, proc.stderr
    jobs = job_lines(tmp_path)
    assert sorted(jobs) == [0, 1] and {info["ppid"] for info in jobs.values()} == {str(launcher_pid)}
    log = proc.stdout + proc.stderr
    # said once when it happens, once more in the sweep's summary
    assert log.count("jobs start as new interpreters from now on") == 2 and "no fork server here" in log


def test_the_server_reports_exit_codes_and_refuses_work_once_closed(tmp_path: Path) -> None:
    server = ForkServer(ForkServer.server_command(sys.executable, JOB_PRELOAD), cwd=str(tmp_path))
    try:
        # a folder without job.pkl: the runner says how it is used and exits with its error code
        stdout, stderr = tmp_path / "out.log", tmp_path / "err.log"
        process = server.start(RUNNER_MAIN, [str(tmp_path)], dict(os.environ), str(tmp_path), str(stdout), str(stderr))
        assert process.wait(timeout=30) == EXIT_RUNNER_ERROR
        assert "usage: python -m engage.deploy.runner [--exit-with-stdin] JOB_DIR" in stderr.read_text()
        bad = server.start(
            RUNNER_MAIN, [str(tmp_path)], dict(os.environ), str(tmp_path / "missing"), str(stdout), str(stderr)
        )
        assert bad.wait(timeout=30) != 0  # a working directory that does not exist fails the job, not the server
        assert server.alive
    finally:
        server.close()
    with pytest.raises(ForkServerError, match="not running"):
        server.start(RUNNER_MAIN, [str(tmp_path)], {}, str(tmp_path), str(stdout), str(stderr))


def test_a_host_server_preloads_the_task_module_and_what_its_task_imports() -> None:
    from engage.core.run import TASK_IMPORTS, task
    from engage.deploy.job_start import job_preload

    assert job_preload(task) == (*JOB_PRELOAD, "engage.core.run", *TASK_IMPORTS)
    assert "engage.core.training" in TASK_IMPORTS

    def from_a_script() -> None: ...

    from_a_script.__module__ = "__main__"
    assert job_preload(from_a_script) == JOB_PRELOAD  # a script is imported by its jobs only
    assert job_preload(None) == JOB_PRELOAD


@pytest.mark.slow
def test_a_ddp_fit_in_a_job_starts_its_other_rank_as_engage_run(tmp_path: Path) -> None:
    """Lightning starts a DDP fit's other ranks with the command that started the process: in a
    launcher's job (forked from the host's server, running the job runner), rank 1 is ``python -m
    engage.core.cli run`` with the job's overrides, not the runner again."""
    from engage.core.testing.process import TINY_RUN, run_engage

    proc = run_engage(
        "run", "-m", "hydra/launcher=engage", "hydra.sweep.dir=sweep", *NO_MLFLOW, *TINY_RUN,
        "data.train_simulations=4", "strategy=ddp", "trainer.devices=2", cwd=tmp_path, timeout=240,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr[-3000:]
    (folder,) = (tmp_path / "sweep" / ".engage").glob("*")
    log = "".join(path.read_text() for path in folder.glob("jobs/0/*.log"))
    assert "GLOBAL_RANK: 1, MEMBER: 2/2" in log, log[-3000:]
    assert "simulations: 4 requested, 4 completed" in log, log[-3000:]  # both ranks' shares
