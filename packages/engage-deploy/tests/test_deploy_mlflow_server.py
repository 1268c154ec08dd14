"""The sweep's MLflow server: MLflow's own application served from one interpreter, listening only
where the sweep's hosts reach it, answering only their ``Host`` names, and with basic auth a
random admin user that no request goes without."""

from __future__ import annotations

import base64
import contextlib
import http.client
import json
import os
import signal
import socket
import stat
import subprocess
import sys
import textwrap
from pathlib import Path

import psutil
import pytest
from mlflow.tracking import MlflowClient

from engage.core.testing.process import wait_ended
from engage.deploy.infrastructure import Infrastructure
from engage.deploy.mlflow_server import main
from engage.deploy.providers.netns import NetnsProvider, choose_subnet, netns_available
from engage.deploy.tracking import ServerCredentials, TrackingError, TrackingServer

pytestmark = pytest.mark.slow

#: where the hosts reach the server when no network namespace can be made: another loopback
#: address (all of 127.0.0.0/8 is this machine's)
LOOPBACK_HOSTS_ADDRESS = "127.0.0.3"
#: a local address nobody asked the servers to listen on
NOT_LISTENED = "127.0.0.2"


class Servers:
    """A plain server on the loopback (as for local hosts) and an auth server on the loopback and
    the hosts' address (as for hosts in network namespaces, whose network is made after it starts)."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self.provider: NetnsProvider | None = None
        self.hosts_address = LOOPBACK_HOSTS_ADDRESS
        subnet = None
        if netns_available() is None:
            subnet = choose_subnet()
            self.hosts_address = str(subnet[1])
        self.plain = TrackingServer(
            f"sqlite:///{root / 'plain' / 'mlflow.db'}", root / "plain" / "artifacts", log_path=root / "plain.log"
        )
        self.auth = TrackingServer(
            f"sqlite:///{root / 'auth' / 'mlflow.db'}",
            root / "auth" / "artifacts",
            listen=[self.hosts_address],
            auth=True,
            log_path=root / "auth.log",
        )
        (root / "plain").mkdir()
        (root / "auth").mkdir()
        self.plain.start(wait=False)
        self.auth.start(wait=False)
        if subnet is not None:
            # the hosts' network, and so the address the auth server listens on, is made after it started
            infra = Infrastructure.from_dict({
                "provider": "netns",
                "layers": [{"name": "edge", "hosts": 1}],
                "options": {"sshd": False, "subnet": str(subnet)},
            })  # fmt: skip
            self.provider = NetnsProvider(infra, root / "netns")
            self.provider.deploy()
            assert self.provider.launcher_address() == self.hosts_address
        self.plain.wait_ready()
        self.auth.wait_ready()

    def close(self) -> None:
        if self.provider is not None:
            self.provider.destroy()
        self.plain.stop()
        self.auth.stop()


@pytest.fixture(scope="module")
def servers(tmp_path_factory):
    started = Servers(tmp_path_factory.mktemp("servers"))
    try:
        yield started
    finally:
        started.close()
    assert "Application shutdown complete" in (started.root / "plain.log").read_text()


def _status(
    server: TrackingServer,
    host: str,
    credentials: tuple[str, str] | None = None,
    address: str = "127.0.0.1",
    path: str = "/api/2.0/mlflow/experiments/search?max_results=1",
) -> int:
    headers = {"Host": host}
    if credentials:
        headers["Authorization"] = "Basic " + base64.b64encode(":".join(credentials).encode()).decode()
    connection = http.client.HTTPConnection(address, server.port, timeout=10)
    try:
        connection.request("GET", path, headers=headers)
        return connection.getresponse().status
    finally:
        connection.close()


def test_one_process_serves_runs_and_proxies_artifacts(servers: Servers, tmp_path: Path) -> None:
    server = servers.plain
    assert server.process is not None and server.credentials is None and server.client_env() == {}
    # no second interpreter behind a command-line parent, as `mlflow server` would start
    assert psutil.Process(server.process.pid).children(recursive=True) == []
    client = MlflowClient(server.local_uri)
    run = client.create_run(client.create_experiment("server-test"))
    client.log_metric(run.info.run_id, "loss", 0.5)
    (tmp_path / "notes.txt").write_text("kept")
    client.log_artifact(run.info.run_id, str(tmp_path / "notes.txt"))
    assert client.get_run(run.info.run_id).data.metrics == {"loss": 0.5}
    # artifacts go through the server into its destination folder
    stored = list((servers.root / "plain" / "artifacts").rglob("notes.txt"))
    assert len(stored) == 1 and stored[0].read_text() == "kept"
    # a request naming another host (DNS rebinding) is refused; the loopback names are answered
    assert server.allowed_hosts == f"127.0.0.1:{server.port},localhost:{server.port}"
    assert _status(server, "evil.example:80") == 403 and _status(server, f"attacker:{server.port}") == 403
    assert _status(server, f"localhost:{server.port}") == 200


def test_it_listens_and_answers_only_at_the_hosts_addresses(servers: Servers) -> None:
    server, address = servers.auth, servers.hosts_address
    login = (server.credentials.username, server.credentials.password)
    port = server.port
    assert server.addresses == ("127.0.0.1", address) and server.uri == f"http://{address}:{port}"
    assert server.allowed_hosts == f"127.0.0.1:{port},{address}:{port},localhost:{port}"
    # the right credentials do not make another Host acceptable
    assert _status(server, f"evil.example:{port}", login) == 403
    assert _status(server, f"{address}:{port}", login) == 200
    # nothing listens at another address of this machine, nor on the plain server's
    for target, at in ((server, NOT_LISTENED), (servers.plain, NOT_LISTENED), (servers.plain, address)):
        with pytest.raises(ConnectionRefusedError), socket.create_connection((at, target.port), timeout=5):
            pass
    listening = {c.laddr.ip for c in psutil.Process(server.process.pid).net_connections() if c.status == "LISTEN"}
    assert listening == {"127.0.0.1", address}
    # a host only knows the address the server listens on, and must bring the credentials
    if servers.provider is None:
        assert _status(server, f"{address}:{port}", login, address=address) == 200
        return
    host = servers.provider.hosts[0]
    request = (
        "import sys, urllib.request, urllib.error\n"
        "headers = dict([sys.argv[2].split(': ')] if sys.argv[2] else [])\n"
        "request = urllib.request.Request(sys.argv[1], headers=headers)\n"
        "try: print(urllib.request.urlopen(request, timeout=10).status)\n"
        "except urllib.error.HTTPError as exc: print(exc.code)\n"
    )
    url = f"{server.uri}/api/2.0/mlflow/experiments/search?max_results=1"
    header = "Authorization: Basic " + base64.b64encode(":".join(login).encode()).decode()
    answers = [
        subprocess.run(
            servers.provider.network_command(host, [sys.executable, "-c", request, url, auth]),
            capture_output=True,
            text=True,
            timeout=30,
        ).stdout.strip()
        for auth in ("", header)
    ]
    assert answers == ["401", "200"]


def test_no_or_wrong_credentials_are_refused_and_jobs_record_with_the_right_ones(
    servers: Servers, tmp_path: Path, monkeypatch
) -> None:
    server = servers.auth
    credentials = server.credentials
    assert isinstance(credentials, ServerCredentials) and credentials.password not in repr(credentials)
    local = f"localhost:{server.port}"
    assert _status(server, local) == 401
    assert _status(server, local, (credentials.username, "password1234")) == 401
    assert _status(server, local, (credentials.username, credentials.password + "x")) == 401
    assert _status(server, local, ("admin", "password1234")) == 401
    assert _status(server, local, path="/health") == 200  # the launcher's liveness check needs none
    # MLflow's client with the server's environment: a job's run with a metric and an artifact
    assert server.client_env() == {
        "MLFLOW_TRACKING_USERNAME": credentials.username,
        "MLFLOW_TRACKING_PASSWORD": credentials.password,
    }
    for name, value in server.client_env().items():
        monkeypatch.setenv(name, value)
    client = MlflowClient(server.local_uri)
    run = client.create_run(client.create_experiment("auth-test"))
    client.log_metric(run.info.run_id, "loss", 0.25)
    (tmp_path / "notes.txt").write_text("kept")
    client.log_artifact(run.info.run_id, str(tmp_path / "notes.txt"))
    client.set_terminated(run.info.run_id)
    recorded = client.get_run(run.info.run_id)
    assert recorded.data.metrics == {"loss": 0.25} and recorded.info.status == "FINISHED"
    assert [a.path for a in client.list_artifacts(run.info.run_id)] == ["notes.txt"]
    monkeypatch.setenv("MLFLOW_TRACKING_PASSWORD", "not-it-at-all")
    monkeypatch.setenv("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "0")
    with pytest.raises(Exception, match=r"401|[Uu]nauthorized|credentials"):
        MlflowClient(server.local_uri).get_run(run.info.run_id)


def _mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


def test_credentials_stay_in_private_files_and_come_back_with_a_kept_server(servers: Servers) -> None:
    server = servers.auth
    config = server.auth_config_path
    assert _mode(config) == 0o600 and _mode(config.parent) == 0o700
    text = config.read_text()
    assert "password1234" not in text and f"admin_password = {server.credentials.password}" in text
    assert f"database_uri = sqlite:///{config.parent / 'basic_auth.db'}" in text
    assert (config.parent / "basic_auth.db").is_file()
    # the secret key is the server process's own, in no file
    assert os.environ.get("MLFLOW_FLASK_SERVER_SECRET_KEY") is None
    assert psutil.Process(server.process.pid).environ()["MLFLOW_FLASK_SERVER_SECRET_KEY"] not in text
    # a made-again server on the same folder (a resumed sweep) has the same user
    again = TrackingServer(server.backend_uri, server.artifacts_dir, auth=True)
    assert again.credentials == server.credentials
    process = server.process
    server.keep()
    try:
        state = TrackingServer.state_path(server.backend_uri)
        assert _mode(state) == 0o600 and "password1234" not in state.read_text()
        assert json.loads(state.read_text())["auth"]["password"] == server.credentials.password
        kept = TrackingServer.find_kept(server.backend_uri, listen=[servers.hosts_address], auth=True)
        assert kept is not None and kept.credentials == server.credentials and kept.port == server.port
        assert kept.addresses == server.addresses and kept.kept_pid == process.pid and kept.alive()
        # a server that does not listen where the hosts are is no use to them
        assert TrackingServer.find_kept(server.backend_uri, listen=["10.9.9.9"]) is None
        # nor one that listens wider than a loopback-only sweep asks
        assert TrackingServer.find_kept(server.backend_uri, auth=True) is None
    finally:
        server.process = process
        state.unlink()


def test_a_server_without_credentials_is_not_kept_for_one_that_needs_them(servers: Servers) -> None:
    server = servers.plain
    process = server.process
    server.keep()
    try:
        assert TrackingServer.find_kept(server.backend_uri, auth=True) is None
        kept = TrackingServer.find_kept(server.backend_uri, "127.0.0.1")
        assert kept is not None and kept.credentials is None
    finally:
        server.process = process
        TrackingServer.state_path(server.backend_uri).unlink()


def test_a_server_whose_starter_was_killed_outright_ends_and_one_kept_does_not(tmp_path: Path) -> None:
    """The starter is SIGKILLed with a forked child of its still alive (as a data loader's worker
    would be), which must not keep the server's lifeline open."""
    starter = textwrap.dedent(
        """
        import os, sys, time
        from pathlib import Path
        from engage.deploy.tracking import TrackingServer
        root = Path(sys.argv[1])
        servers = [
            TrackingServer(f"sqlite:///{root / n / 'db'}", root / n / "artifacts", log_path=root / n / "server.log")
            for n in ("held", "kept")
        ]
        for server in servers:
            server.artifacts_dir.parent.mkdir()
            server.start()
        servers[1].keep()
        child = os.fork()
        if child == 0:
            time.sleep(60)
            os._exit(0)
        print(servers[0].process.pid, servers[1].kept_pid or servers[1].state_path(servers[1].backend_uri), child,
              flush=True)
        time.sleep(60)
        """
    )
    process = subprocess.Popen(
        [sys.executable, "-c", starter, str(tmp_path)], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
    )
    line = process.stdout.readline().split()
    assert len(line) == 3, process.communicate(timeout=30)[1][-2000:]
    held, child = int(line[0]), int(line[2])
    kept = json.loads(Path(line[1]).read_text())["pid"]
    try:
        assert psutil.pid_exists(held) and psutil.pid_exists(kept)
        process.kill()
        process.wait()
        assert wait_ended(held, timeout_s=20), "the held server outlived its starter"
        assert psutil.pid_exists(child) and psutil.pid_exists(kept)  # the worker lives on; the kept server serves
        # stopped as TrackingServer.stop stops it: SIGTERM, uvicorn's orderly shutdown
        assert "Application shutdown complete" in (tmp_path / "held" / "server.log").read_text()
    finally:
        for pid in (child, kept):
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)


def test_hosts_reach_it_only_at_an_address_it_listens_on(tmp_path: Path) -> None:
    server = TrackingServer(f"sqlite:///{tmp_path / 'm.db'}", tmp_path / "a", listen=["10.231.0.1"])
    assert server.address == "10.231.0.1"
    server.address = "127.0.0.1"  # this machine's own clients
    with pytest.raises(TrackingError, match=r"listens on 127\.0\.0\.1, 10\.231\.0\.1, not on 10\.232\.0\.1"):
        server.address = "10.232.0.1"
    every = TrackingServer(f"sqlite:///{tmp_path / 'm.db'}", tmp_path / "a", bind="0.0.0.0")
    every.address = "10.232.0.1"
    every.port = 5000
    assert every.allowed_hosts == "*"


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
    with pytest.raises(_Exec) as replaced:
        main(["--backend-store-uri", "sqlite:///m.db", "--artifacts-destination", "a", "--app-name", "basic-auth"])
    assert replaced.value.args[1][-2:] == ["--app-name", "basic-auth"]
    # mlflow server takes one address: it is not run to listen on more than asked
    with pytest.raises(SystemExit, match="mlflow server listens on one --host"):
        main(["--backend-store-uri", "sqlite:///m.db", "--artifacts-destination", "a", "--host", "127.0.0.1",
              "--host", "10.231.0.1"])  # fmt: skip


def test_a_kept_server_is_described_next_to_its_database_file() -> None:
    described = Path("/data/mlflow.db.engage-server.json")
    assert TrackingServer.state_path("sqlite:////data/mlflow.db") == described
    # options of the URI are not part of the file's name
    assert TrackingServer.state_path("sqlite:////data/mlflow.db?timeout=30") == described
    assert TrackingServer.state_path("sqlite:///:memory:") is None
    assert TrackingServer.state_path("http://127.0.0.1:5000") is None


def test_a_sweep_whose_provider_tells_the_hosts_address_late_listens_there_with_credentials(
    tmp_path: Path, monkeypatch
) -> None:
    # a provider that knows where its hosts reach this machine only once they are deployed
    # (machines over SSH, Grid'5000): the server starts on the loopback, then listens there too
    from engage.deploy.experiment import ExperimentFolder
    from engage.deploy.options import MLflowOptions
    from engage.deploy.report import SweepReport
    from engage.deploy.sweep_tracking import SweepTracking

    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("MLFLOW_TRACKING_USERNAME", raising=False)
    folder = ExperimentFolder.create(tmp_path / "sweep")
    sweep = SweepTracking(MLflowOptions(), folder, SweepReport(), provider_name="static", sweep_dir="sweep")
    asked: list[bool] = []
    with sweep.launcher_environment():
        sweep.start_server(jobs=2, parallelism=2, planned_address=lambda: asked.append(True))
        server = sweep.server
        assert asked == [True] and server is not None and server.addresses == ("127.0.0.1",)
        assert server.credentials is not None  # hosts other than this machine: auth by default
        assert os.environ["MLFLOW_TRACKING_USERNAME"] == server.credentials.username
        sweep.open()
        port = server.port
        sweep.connect(LOOPBACK_HOSTS_ADDRESS, remote_hosts=True)
        try:
            assert server.addresses == ("127.0.0.1", LOOPBACK_HOSTS_ADDRESS) and server.port == port
            assert server.uri == f"http://{LOOPBACK_HOSTS_ADDRESS}:{port}" and server.restarts == 0
            login = (server.credentials.username, server.credentials.password)
            host = f"{LOOPBACK_HOSTS_ADDRESS}:{port}"
            assert _status(server, host, login, address=LOOPBACK_HOSTS_ADDRESS) == 200
            assert _status(server, host, address=LOOPBACK_HOSTS_ADDRESS) == 401
            contract = sweep.contract_for(folder.job_folder(0))
            assert contract is not None and (contract.username, contract.password) == login
            assert contract.uri == server.uri and sweep.parent_run_id
        finally:
            server.stop()
    # the launcher's environment is the user's again
    assert "MLFLOW_TRACKING_USERNAME" not in os.environ


def test_a_process_that_launches_again_on_the_same_store_keeps_its_server(tmp_path: Path, monkeypatch) -> None:
    """A batched sweeper (Optuna's) launches once a batch: the server one launch started serves
    the next launches of the process on the same store, and stops at exit (or for another store)."""
    from engage.deploy import mlflow_process
    from engage.deploy.experiment import ExperimentFolder
    from engage.deploy.options import MLflowOptions
    from engage.deploy.report import SweepReport
    from engage.deploy.sweep_tracking import SweepTracking

    monkeypatch.chdir(tmp_path)

    def launch(store: str):
        folder = ExperimentFolder.create(tmp_path / "sweep")
        options = MLflowOptions(tracking_uri=f"sqlite:///{tmp_path / store}")
        sweep = SweepTracking(options, folder, SweepReport(), provider_name="local", sweep_dir="sweep")
        with sweep.launcher_environment():
            sweep.start_server(jobs=2, parallelism=2, planned_address=lambda: None)
            sweep.open()
            assert sweep.opened(timeout_s=120)
            server = sweep.server
            sweep.finish()
        return server

    try:
        first = launch("mlflow.db")
        assert first is not None and first.alive()  # held for the process's next launch
        pid = first.process.pid
        again = launch("mlflow.db")
        assert again is first and again.process.pid == pid and again.restarts == 0
        other = launch("other.db")  # another store: a server of its own, the held one stopped
        assert other is not first and not first.alive() and other.alive()
    finally:
        mlflow_process._stop_held()
    assert not other.alive()
