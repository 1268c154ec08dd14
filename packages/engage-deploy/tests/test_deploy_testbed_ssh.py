"""Sweeps on hosts reached over SSH, as on a testbed (``static`` provider): the hosts are network
namespaces with an sshd each, so jobs travel as on Grid'5000 (job folder over SFTP, the job over
SSH, results back), though the hosts share this machine's files."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import psutil
import pytest
from mlflow.tracking import MlflowClient

from engage.deploy.infrastructure import Infrastructure
from engage.deploy.providers.netns import NetnsProvider, netns_available

pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(
        netns_available() is not None or not Path("/usr/sbin/sshd").exists(),
        reason="needs root, network namespaces and Debian's openssh-server",
    ),
]

APP = """
import os, time
import hydra
import mlflow

@hydra.main(version_base=None, config_path="conf", config_name="config")
def main(cfg) -> float:
    open(os.path.join(cfg.marks, f"pid-{cfg.x}"), "w").write(str(os.getpid()))
    with mlflow.start_run():
        mlflow.log_metric("score", cfg.x)
    first = os.path.join(cfg.marks, f"tried-{cfg.x}")
    if cfg.flaky and not os.path.exists(first):
        open(first, "w").close()
        raise RuntimeError(f"first attempt of x={cfg.x}")
    time.sleep(cfg.sleep)
    return cfg.x * 2.0

if __name__ == "__main__":
    main()
"""


@pytest.fixture(scope="module")
def app(tmp_path_factory):
    """An app whose ``+infrastructure=ssh`` names one host with its own sshd, reached as root."""
    root = tmp_path_factory.mktemp("testbed")
    infra = Infrastructure.from_dict({"provider": "netns", "layers": [{"name": "edge"}], "options": {"sshd": True}})
    with NetnsProvider(infra, root / "state") as prov:
        host = prov.host("edge-1")
        key = root / "state" / f"netns-{prov.prefix}" / "ssh" / "id_ed25519"
        (root / "conf" / "infrastructure").mkdir(parents=True)
        (root / "marks").mkdir()
        (root / "conf" / "config.yaml").write_text(f"x: 1\nsleep: 0\nflaky: false\nmarks: {root / 'marks'}\n")
        network = ".".join(host.address.split(".")[:3])
        (root / "conf" / "infrastructure" / "ssh.yaml").write_text(
            "# @package hydra.launcher.infrastructure\n"
            + json.dumps(
                {
                    "provider": "static",
                    "layers": [{"name": "edge", "hosts": 1}],
                    "options": {
                        "user": "root",
                        "keyfile": str(key),
                        "remote_workdir": str(root / "remote"),
                        "hosts": {"edge-1": {"address": host.address}},
                        "cidr": f"{network}.0/24",
                        "start": f"{network}.2",
                        "end": f"{network}.250",
                        "gateway": f"{network}.1",
                        "dns": f"{network}.1",
                    },
                }
            )
        )
        (root / "app.py").write_text(APP)
        yield root


def sweep(app: Path, name: str, *overrides: str) -> subprocess.Popen:
    argv = [sys.executable, "app.py", "-m", "hydra/launcher=engage", "+infrastructure=ssh"]
    argv += [f"hydra.sweep.dir={app / name}", *overrides]
    return subprocess.Popen(argv, cwd=app, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def child_runs(app: Path, name: str) -> list:
    client = MlflowClient(f"sqlite:///{app / 'mlflow.db'}")
    experiment = client.get_experiment_by_name("engage").experiment_id
    folder = str(app / name)
    runs = client.search_runs([experiment], max_results=100)
    return [r for r in runs if r.data.tags.get("engage.output_dir", "").startswith(folder)]


def test_a_retried_job_on_another_host_has_a_run_for_each_attempt(app: Path) -> None:
    proc = sweep(app, "retried", "hydra.launcher.retries=1", "flaky=true", "x=11")
    _out, err = proc.communicate(timeout=240)
    assert proc.returncode == 0, err[-3000:]
    runs = sorted(child_runs(app, "retried"), key=lambda r: r.data.tags["engage.attempt"])
    assert [(r.data.tags["engage.attempt"], r.info.status) for r in runs] == [("1", "FAILED"), ("2", "FINISHED")]
    assert runs[1].data.metrics["score"] == 11.0  # the second attempt's own run, not the first's
    (result,) = (app / "retried" / ".engage").glob("*/jobs/0/result.json")
    assert json.loads(result.read_text())["attempt"] == 2


def test_a_sweep_stopped_by_sigterm_stops_its_jobs_on_the_hosts_and_counts_them_killed(app: Path) -> None:
    proc = sweep(app, "stopped", "sleep=60", "x=21")
    pid_file = app / "marks" / "pid-21"
    deadline = time.monotonic() + 120
    while not (pid_file.is_file() and pid_file.read_text()) and time.monotonic() < deadline:
        assert proc.poll() is None, proc.communicate()[1][-3000:]
        time.sleep(0.2)
    job_pid = int(pid_file.read_text())
    time.sleep(1.0)  # past its MLflow run, into its sleep
    os.kill(proc.pid, signal.SIGTERM)
    out, err = proc.communicate(timeout=120)
    assert proc.returncode == 128 + signal.SIGTERM, err[-3000:]
    deadline = time.monotonic() + 20
    while psutil.pid_exists(job_pid) and time.monotonic() < deadline:
        time.sleep(0.2)
    assert not psutil.pid_exists(job_pid), "the job ran on on its host after the sweep stopped"
    (folder,) = (app / "stopped" / ".engage").glob("*")
    assert json.loads((folder / "jobs" / "0" / "result.json").read_text())["status"] == "KILLED"
    parent = MlflowClient(f"sqlite:///{app / 'mlflow.db'}").get_run((folder / "parent-run-id").read_text())
    assert parent.info.status == "KILLED"
    assert (parent.data.metrics["jobs_failed"], parent.data.metrics["jobs_stopped"]) == (0, 1)
    assert "1 stopped" in out + err and "failed on edge-1" not in out + err, (out + err)[-3000:]
