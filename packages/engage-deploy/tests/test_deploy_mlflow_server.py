"""The sweep's MLflow server: MLflow's own application served from one interpreter."""

from __future__ import annotations

import os
import sys
from pathlib import Path

import psutil
import pytest
from mlflow.tracking import MlflowClient

from engage.deploy.mlflow_server import main
from engage.deploy.tracking import TrackingError, TrackingServer

pytestmark = pytest.mark.slow


def test_one_process_serves_runs_and_proxies_artifacts(tmp_path: Path) -> None:
    server = TrackingServer(f"sqlite:///{tmp_path / 'mlflow.db'}", tmp_path / "artifacts", log_path=tmp_path / "log")
    server.start()
    try:
        assert server.process is not None
        # no second interpreter behind a command-line parent, as `mlflow server` would start
        assert psutil.Process(server.process.pid).children(recursive=True) == []
        client = MlflowClient(server.local_uri)
        run = client.create_run(client.create_experiment("server-test"))
        client.log_metric(run.info.run_id, "loss", 0.5)
        (tmp_path / "notes.txt").write_text("kept")
        client.log_artifact(run.info.run_id, str(tmp_path / "notes.txt"))
        assert client.get_run(run.info.run_id).data.metrics == {"loss": 0.5}
        # artifacts go through the server into its destination folder
        stored = list((tmp_path / "artifacts").rglob("notes.txt"))
        assert len(stored) == 1 and stored[0].read_text() == "kept"
        # a request naming another host (DNS rebinding) is refused; the loopback names are answered
        assert server.allowed_hosts == f"127.0.0.1:{server.port},localhost:{server.port}"
        assert _status(server, "evil.example:80") == 403 and _status(server, f"attacker:{server.port}") == 403
        assert _status(server, f"localhost:{server.port}") == 200
    finally:
        server.stop()
    assert "Application shutdown complete" in (tmp_path / "log").read_text()


def _status(server: TrackingServer, host: str) -> int:
    import http.client

    connection = http.client.HTTPConnection("127.0.0.1", server.port, timeout=10)
    try:
        connection.request("GET", "/api/2.0/mlflow/experiments/search?max_results=1", headers={"Host": host})
        return connection.getresponse().status
    finally:
        connection.close()


def test_a_store_that_cannot_be_opened_fails_at_start_with_the_log(tmp_path: Path) -> None:
    bad = tmp_path / "mlflow.db"
    bad.write_text("not a database")
    server = TrackingServer(f"sqlite:///{bad}", tmp_path / "artifacts", log_path=tmp_path / "log", start_timeout_s=60)
    with pytest.raises(TrackingError, match=r"exited with code .* at start; see .*log"):
        server.start()
    assert "not a database" in (tmp_path / "log").read_text()


class _Exec(Exception):
    """Raised instead of replacing the test's process."""


@pytest.mark.parametrize("missing", ["uvicorn", "job runner", "job runner by default"])
def test_without_a_piece_it_needs_it_runs_mlflow_server_with_the_same_options(monkeypatch, missing) -> None:
    def execv(path: str, argv: list[str]) -> None:
        raise _Exec(path, argv)

    monkeypatch.setattr(os, "execv", execv)
    if missing == "uvicorn":
        monkeypatch.setitem(sys.modules, "uvicorn", None)  # its import fails
    elif missing == "job runner":
        monkeypatch.setenv("MLFLOW_SERVER_ENABLE_JOB_EXECUTION", "true")  # only `mlflow server` runs jobs
    else:
        monkeypatch.delenv("MLFLOW_SERVER_ENABLE_JOB_EXECUTION", raising=False)  # MLflow's default: on
    with pytest.raises(_Exec) as replaced:
        main(["--backend-store-uri", "sqlite:///m.db", "--artifacts-destination", "a", "--port", "5001"])
    assert replaced.value.args == (
        sys.executable,
        [
            sys.executable, "-m", "mlflow", "server", "--backend-store-uri", "sqlite:///m.db",
            "--artifacts-destination", "a", "--host", "127.0.0.1", "--port", "5001", "--workers", "1",
        ],
    )  # fmt: skip


def test_a_kept_server_is_described_next_to_its_database_file() -> None:
    described = Path("/data/mlflow.db.engage-server.json")
    assert TrackingServer.state_path("sqlite:////data/mlflow.db") == described
    # options of the URI are not part of the file's name
    assert TrackingServer.state_path("sqlite:////data/mlflow.db?timeout=30") == described
    assert TrackingServer.state_path("sqlite:///:memory:") is None
    assert TrackingServer.state_path("http://127.0.0.1:5000") is None
