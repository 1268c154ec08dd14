"""MLflow for a sweep: an ``mlflow server`` in front of the sweep's SQLite store, one child run per
job, and offline stores that are uploaded when the server is back.

Jobs on any host log through the server (parallel writers never touch SQLite directly, so
never see "database is locked"). A job that starts while the server is down logs to an SQLite
store in its own job folder; the launcher copies such runs to the server once it answers again
(:func:`upload_store`). The launcher watches the server and restarts it on the same port and
store if it dies, so running jobs' clients, which retry, carry on.

The server is reachable only where the sweep's hosts need it: it listens on the loopback and on
the addresses given in ``listen`` (the launcher's address on the hosts' network), nowhere else,
and answers only requests whose ``Host`` header names one of those addresses at its port (MLflow's
guard against DNS rebinding). With ``auth=True`` it serves MLflow's basic-auth application: a
random admin user, written only to 0600 files in the server's own folder; a client process gets
them through :meth:`TrackingServer.client_env`.

Example::

    >>> import tempfile
    >>> from pathlib import Path
    >>> folder = Path(tempfile.mkdtemp())
    >>> server = TrackingServer(f"sqlite:///{folder}/mlflow.db", folder / "artifacts", auth=True)
    >>> server.start()  # doctest: +SKIP
    >>> server.alive()  # doctest: +SKIP
    True
    >>> sorted(server.client_env())
    ['MLFLOW_TRACKING_PASSWORD', 'MLFLOW_TRACKING_USERNAME']
    >>> server.stop()
"""

from __future__ import annotations

import configparser
import json
import logging
import os
import secrets
import socket
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from engage.core import lifeline
from engage.core.files import write_private
from engage.core.tracking.naming import ATTEMPT_TAG, CONFIG_HASH_TAG, JOB_TAG, PARAM_MAX_CHARS
from engage.core.tracking.sqlite_store import ensure_sqlite_store, sqlite_path
from engage.core.tracking.store import MLFLOW_PASSWORD_ENV, MLFLOW_USERNAME_ENV

log = logging.getLogger(__name__)

PARENT_TAG = "mlflow.parentRunId"
OUTPUT_DIR_TAG = "engage.output_dir"
#: tag of the runs the launcher creates to hold a job's record (the job made no run of its own)
RECORD_RUN_TAG = "engage.record_run"
#: tag of a record kept offline for a run the job opened in the sweep's store: that run's id, to
#: which :func:`upload_store` adds the record (by id) instead of making a run of it
RECORD_FOR_TAG = "engage.record_for"
#: tags of a kept record that are not the job's: they stay on the offline store's run
_RECORD_ONLY_TAGS = (RECORD_RUN_TAG, RECORD_FOR_TAG, "mlflow.runName")

#: MLflow's server settings for its basic-auth application: the configuration file, the key that
#: signs its forms, and the admin user's name and password (which would override the file's)
AUTH_CONFIG_ENV = "MLFLOW_AUTH_CONFIG_PATH"
SECRET_KEY_ENV = "MLFLOW_FLASK_SERVER_SECRET_KEY"
ADMIN_ENV = ("MLFLOW_AUTH_ADMIN_USERNAME", "MLFLOW_AUTH_ADMIN_PASSWORD")
#: what the server listens on when ``bind`` is this: every interface, any ``Host`` (not hardened)
EVERY_INTERFACE = "0.0.0.0"


class TrackingError(RuntimeError):
    """The sweep's MLflow store or server cannot be used; one line saying why and what to do."""


@dataclass(frozen=True)
class ServerCredentials:
    """A tracking server's basic-auth user (its admin)."""

    username: str
    password: str = field(repr=False)

    def client_env(self) -> dict[str, str]:
        """The environment variables with which MLflow's client sends them."""
        return {MLFLOW_USERNAME_ENV: self.username, MLFLOW_PASSWORD_ENV: self.password}


def free_port(host: str = "127.0.0.1") -> int:
    """A TCP port nobody listens on right now (bind to port 0 and read what the kernel chose)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((host, 0))
        return int(sock.getsockname()[1])


def http_alive(uri: str, timeout_s: float = 2.0) -> bool:
    """Whether an MLflow server at ``uri`` answers its ``/health`` endpoint (open without credentials)."""
    try:
        with urllib.request.urlopen(f"{uri.rstrip('/')}/health", timeout=timeout_s) as response:
            return response.status < 500
    except (urllib.error.URLError, OSError, ValueError):
        return False


def _listens(pid: int, port: int) -> bool:
    """Whether process ``pid``, of this user, listens on ``port`` (a kept server's port may have
    been taken by another process since it died)."""
    import psutil

    try:
        process = psutil.Process(pid)
        if process.uids().real != os.getuid():
            return False
        return any(c.status == psutil.CONN_LISTEN and c.laddr.port == port for c in process.net_connections("tcp"))
    except (psutil.Error, OSError):
        return False


def host_port(address: str, port: int) -> str:
    """``address:port`` as a URL or a ``Host`` header writes it (IPv6 addresses in brackets)."""
    return f"[{address}]:{port}" if ":" in address else f"{address}:{port}"


def is_loopback(address: str) -> bool:
    """Whether ``address`` names this machine's loopback."""
    return address == "localhost" or address.startswith("127.") or address == "::1"


class TrackingServer:
    """An ``mlflow server`` process for one sweep: ``backend_uri`` (SQLite) behind it, artifacts
    served from ``artifacts_dir``, at a free port.

    Where it listens: on ``bind`` (the loopback, ``127.0.0.1``; this machine's own clients use
    :attr:`local_uri`) and on each address in ``listen``, the launcher's address on the hosts'
    network. ``address`` is how hosts reach it (:attr:`uri`); by default the first of ``listen``,
    else the loopback, and it must be one of the addresses listened on. The listening sockets are
    bound with Linux's ``IP_FREEBIND``, so an address may be given before the interface that
    carries it exists: the server starts early, while the hosts' network is being made, and answers
    there as soon as the address is up (and again if the network is made anew, as a kept server
    does for the next sweep). ``bind="0.0.0.0"`` listens on every interface and answers any
    ``Host``: it is kept for compatibility and not hardened.

    With ``auth=True`` it serves MLflow's basic-auth application: its configuration file and user
    database are in ``auth_dir`` (default: the folder holding ``artifacts_dir``), in a 0700
    folder ``mlflow-auth``, the configuration 0600 with a random admin user and password
    (:attr:`credentials`), reused when the folder already holds one (a restart, a resumed sweep).
    """

    def __init__(
        self,
        backend_uri: str,
        artifacts_dir: str | os.PathLike[str],
        *,
        bind: str = "127.0.0.1",
        address: str | None = None,
        log_path: str | os.PathLike[str] | None = None,
        start_timeout_s: float = 60.0,
        listen: Sequence[str] = (),
        auth: bool = False,
        auth_dir: str | os.PathLike[str] | None = None,
    ) -> None:
        self.backend_uri = backend_uri
        self.artifacts_dir = Path(artifacts_dir)
        self.bind = bind
        self.listen = tuple(dict.fromkeys(a for a in listen if a and a != bind))
        self.port: int | None = None
        self.log_path = Path(log_path) if log_path else None
        self.start_timeout_s = start_timeout_s
        self.process: subprocess.Popen | None = None
        self.restarts = 0
        self.kept_pid: int | None = None
        self.auth = auth
        self.auth_dir = (Path(auth_dir) if auth_dir else self.artifacts_dir.parent) / "mlflow-auth"
        self.credentials: ServerCredentials | None = self._load_credentials() if auth else None
        self._address = "127.0.0.1"
        self.address = address or (self.listen[0] if self.listen else "127.0.0.1")

    # ------------------------------------------------------------------ addresses

    @property
    def addresses(self) -> tuple[str, ...]:
        """The addresses it listens on: ``bind`` first, then ``listen``."""
        return (self.bind, *self.listen)

    def serves(self, address: str) -> bool:
        """Whether it listens where ``address`` leads (``localhost``: when it listens on a loopback address)."""
        if self.bind == EVERY_INTERFACE or address in self.addresses:
            return True
        return address == "localhost" and any(is_loopback(a) for a in self.addresses)

    @property
    def address(self) -> str:
        """How the hosts reach it (the host of :attr:`uri`)."""
        return self._address

    @address.setter
    def address(self, address: str) -> None:
        if not self.serves(address):
            raise TrackingError(
                f"the MLflow server listens on {', '.join(self.addresses)}, not on {address}: "
                "give that address in listen= when the server is made"
            )
        self._address = address

    @property
    def uri(self) -> str:
        """``http://<address>:<port>``."""
        if self.port is None:
            raise TrackingError("the MLflow server has not been started")
        return f"http://{host_port(self.address, self.port)}"

    @property
    def local_uri(self) -> str:
        """``http://127.0.0.1:<port>``: how this machine reaches it, whatever the hosts' network does."""
        if self.port is None:
            raise TrackingError("the MLflow server has not been started")
        return f"http://127.0.0.1:{self.port}"

    @property
    def allowed_hosts(self) -> str:
        """The ``Host`` headers the server answers (MLflow's guard against DNS rebinding):
        ``<address>:<port>`` for each address it listens on, and ``localhost:<port>`` with the
        loopback; any (``*``) when it listens on every interface."""
        if self.bind == EVERY_INTERFACE:
            return "*"
        assert self.port is not None, "a port first"
        names = list(self.addresses)
        if any(is_loopback(a) for a in names):
            names.append("localhost")
        return ",".join(dict.fromkeys(host_port(name, self.port) for name in names))

    # ------------------------------------------------------------------ credentials

    @property
    def auth_config_path(self) -> Path:
        """MLflow's basic-auth configuration file (``MLFLOW_AUTH_CONFIG_PATH``) of this server."""
        return self.auth_dir / "basic_auth.ini"

    def client_env(self) -> dict[str, str]:
        """What a client process needs in its environment to use this server: MLflow's
        ``MLFLOW_TRACKING_USERNAME`` and ``MLFLOW_TRACKING_PASSWORD`` with ``auth``, else nothing."""
        return self.credentials.client_env() if self.credentials else {}

    def _load_credentials(self) -> ServerCredentials:
        """The admin user of the configuration file in :attr:`auth_dir`, else a new random one."""
        config = configparser.ConfigParser()
        try:
            config.read_string(self.auth_config_path.read_text())
            return ServerCredentials(config["mlflow"]["admin_username"], config["mlflow"]["admin_password"])
        except (OSError, KeyError, configparser.Error):
            return ServerCredentials(f"engage-{secrets.token_hex(4)}", secrets.token_urlsafe(32))

    def _write_auth_config(self) -> Path:
        """Write the basic-auth configuration (0600, in a 0700 folder): the admin user, no rights
        for any other user, the user database beside it, checked credentials cached. A database
        left by another configuration is removed (its admin has another password)."""
        assert self.credentials is not None
        self.auth_dir.mkdir(parents=True, exist_ok=True)
        self.auth_dir.chmod(0o700)
        database = self.auth_dir / "basic_auth.db"
        current = self._load_credentials() if self.auth_config_path.is_file() else None
        if current != self.credentials:
            database.unlink(missing_ok=True)
        text = "\n".join([
            "[mlflow]",
            "default_permission = NO_PERMISSIONS",
            f"database_uri = sqlite:///{database.resolve()}",
            f"admin_username = {self.credentials.username}",
            f"admin_password = {self.credentials.password}",
            "authorization_function = mlflow.server.auth:authenticate_request_basic_auth",
            # one user, one worker: a password is hashed (PBKDF2, about 0.2 s of CPU) once an
            # hour, not on every request of every job
            "auth_cache_ttl_seconds = 3600",
            "",
        ])  # fmt: skip
        write_private(self.auth_config_path, text)
        return self.auth_config_path

    # ------------------------------------------------------------------ process

    def start(self, wait: bool = True) -> None:
        """Start the server and wait until it answers (or raise :class:`TrackingError`); with
        ``wait=False`` return at once and call :meth:`wait_ready` before using it."""
        if self.port is None:
            self.port = free_port(self.bind if self.bind != EVERY_INTERFACE else "127.0.0.1")
        self.artifacts_dir.mkdir(parents=True, exist_ok=True)
        ensure_sqlite_store(self.backend_uri)
        # MLflow's server application in one interpreter (mlflow server would start two)
        command = [
            sys.executable,
            "-m",
            "engage.deploy.mlflow_server",
            "--backend-store-uri",
            self.backend_uri,
            "--artifacts-destination",
            str(self.artifacts_dir),
        ]
        for address in self.addresses:
            command += ["--host", address]
        command += ["--port", str(self.port), "--allowed-hosts", self.allowed_hosts, "--exit-with-stdin"]
        # MLflow's job execution (GenAI evaluation jobs) starts a job runner process of its own;
        # a sweep's server never runs such jobs, and on a small host that process slows its start
        env = {**os.environ}
        env.setdefault("MLFLOW_SERVER_ENABLE_JOB_EXECUTION", "false")
        if self.listen:
            # only the one-interpreter server listens on several addresses (mlflow server takes one)
            env["MLFLOW_SERVER_ENABLE_JOB_EXECUTION"] = "false"
        for name in (*ADMIN_ENV, AUTH_CONFIG_ENV, SECRET_KEY_ENV):
            env.pop(name, None)  # only this server's own settings
        if self.auth:
            command += ["--app-name", "basic-auth"]
            env[AUTH_CONFIG_ENV] = str(self._write_auth_config())
            env[SECRET_KEY_ENV] = secrets.token_hex(32)
        output = open(self.log_path, "ab") if self.log_path else subprocess.DEVNULL
        try:
            self.process = subprocess.Popen(
                command,
                stdout=output,
                stderr=subprocess.STDOUT,
                stdin=subprocess.PIPE,  # its lifeline: a launcher killed outright leaves no server
                start_new_session=True,
                env=env,
            )
        finally:
            if output is not subprocess.DEVNULL:
                output.close()
        lifeline.hold(self.process)
        self._started_at = time.monotonic()
        if wait:
            self.wait_ready()

    @property
    def ready_by(self) -> float:
        """The time (epoch seconds) by which the started server must answer."""
        assert self.process is not None, "start() first"
        return time.time() + max(0.0, self._started_at + self.start_timeout_s - time.monotonic())

    def wait_ready(self) -> None:
        """Wait until the started server answers (or raise :class:`TrackingError`)."""
        assert self.process is not None, "start() first"
        deadline = self._started_at + self.start_timeout_s
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                where = f"; see {self.log_path}" if self.log_path else ""
                raise TrackingError(f"mlflow server exited with code {self.process.returncode} at start{where}")
            if http_alive(f"http://127.0.0.1:{self.port}", timeout_s=1.0):
                return
            time.sleep(0.1)
        self.stop()
        raise TrackingError(
            f"mlflow server did not answer within {self.start_timeout_s:.0f} s; "
            "raise hydra.launcher.mlflow.server_start_timeout_s"
        )

    def alive(self) -> bool:
        """Whether the process runs and answers."""
        if self.process is None and self.kept_pid:
            return self.alive_kept()
        return (
            self.process is not None
            and self.process.poll() is None
            and self.port is not None
            and http_alive(f"http://127.0.0.1:{self.port}", timeout_s=2.0)
        )

    # ------------------------------------------------------------ a server kept between sweeps

    @staticmethod
    def state_path(backend_uri: str) -> Path | None:
        """Where a kept server for an SQLite store is described (next to the database file;
        ``None`` for other stores, which no kept server is looked up for)."""
        database = sqlite_path(backend_uri)
        return None if database is None else database.with_name(database.name + ".engage-server.json")

    @classmethod
    def find_kept(
        cls, backend_uri: str, bind: str = "127.0.0.1", *, listen: Sequence[str] = (), auth: bool = False
    ) -> TrackingServer | None:
        """A server an earlier sweep kept running for this store, if its process (this user's)
        still listens on its port and answers, and it serves what is asked: it listens on exactly
        ``bind`` and the addresses of ``listen``, and has credentials if ``auth`` (its credentials
        come with it either way)."""
        path = cls.state_path(backend_uri)
        if path is None or not path.is_file():
            return None
        try:
            state = json.loads(path.read_text())
            kept_bind, kept_listen = str(state["bind"]), [str(a) for a in state.get("listen", [])]
            port, pid, artifacts = int(state["port"]), int(state["pid"]), str(state["artifacts"])
            kept_auth = state.get("auth") or None
            credentials = ServerCredentials(kept_auth["username"], kept_auth["password"]) if kept_auth else None
        except (OSError, ValueError, KeyError, TypeError):
            return None
        # exactly where it is asked to listen, no wider (a server kept on every interface, or on
        # an earlier network's address, is not reused), and with credentials if they are asked
        same = kept_bind == bind and set(kept_listen) == ({*listen} - {"", bind})
        if state.get("backend") != backend_uri or not same or (auth and credentials is None):
            return None
        if not _listens(pid, port) or not http_alive(f"http://127.0.0.1:{port}", timeout_s=2.0):
            return None
        server = cls(
            backend_uri,
            artifacts,
            bind=kept_bind,
            listen=kept_listen,
            auth=credentials is not None,
            auth_dir=Path(kept_auth["folder"]).parent if kept_auth and kept_auth.get("folder") else None,
        )
        server.credentials = credentials
        server.port = port
        server.kept_pid = pid
        return server

    def keep(self) -> None:
        """Leave this server running after the sweep, for the next sweeps on the same store; its
        description (credentials included) is written 0600 to :meth:`state_path`."""
        path = self.state_path(self.backend_uri)
        if path is None or self.process is None:
            return
        state: dict[str, Any] = {
            "pid": self.process.pid,
            "port": self.port,
            "backend": self.backend_uri,
            "bind": self.bind,
            "listen": list(self.listen),
            "artifacts": str(self.artifacts_dir),
        }
        if self.credentials is not None:
            state["auth"] = {
                "username": self.credentials.username,
                "password": self.credentials.password,
                "folder": str(self.auth_dir),
            }
        write_private(path, json.dumps(state, indent=1))
        from engage.deploy.mlflow_server import KEEP

        lifeline.let_go(self.process, KEEP)  # it outlives this process
        self.process = None  # no longer ours to stop

    def alive_kept(self) -> bool:
        """Whether a server found with :meth:`find_kept` still answers."""
        return self.port is not None and http_alive(f"http://127.0.0.1:{self.port}", timeout_s=2.0)

    def restart(self) -> None:
        """Start it again on the same port, addresses, store and credentials (after it died)."""
        self.stop()
        self.restarts += 1
        self.start()

    def stop(self) -> None:
        """Terminate the server (and its workers; SIGKILL after 10 s); safe to call twice."""
        if self.process is None:
            return
        from engage.deploy.processes import stop_process

        stop_process(self.process, grace_s=10.0)
        lifeline.let_go(self.process)  # after: its end would be a second SIGTERM, uvicorn's force exit
        try:
            self.process.wait(timeout=10)  # reaped here, its exit status read
        except subprocess.TimeoutExpired:
            log.warning("the MLflow server (pid %d) did not end after SIGKILL", self.process.pid)
        self.process = None


# ---------------------------------------------------------------------------- job records


@dataclass
class JobRecord:
    """What the launcher records for one job, whatever the job itself logged."""

    index: int
    run_name: str
    status: str  # FINISHED, FAILED or KILLED
    start_time: float
    end_time: float
    host: str
    overrides: list[str]
    config_hash: str
    output_dir: str | None
    params: dict[str, str] = field(default_factory=dict)
    tags: dict[str, str] = field(default_factory=dict)
    artifacts: dict[str, str] = field(default_factory=dict)  # artifact sub-folder -> local path
    system: list[dict[str, float]] = field(default_factory=list)
    #: the MLflow run the job opened itself (its process recorded the id), else ``None``: the
    #: launcher then makes a child run of the sweep to hold the record
    run_id: str | None = None
    #: which attempt this is, from 1 (the launcher retries failed jobs)
    attempt: int = 1


#: files of a job folder not uploaded as artifacts: the pickles the launcher and the runner pass
#: each other (a Hydra context, a JobReturn); ``engage replay`` needs only ``overrides.yaml``
SKIPPED_ARTIFACT_SUFFIXES = (".pkl",)
#: files of a job folder never uploaded: the job's contract may hold MLflow credentials
SKIPPED_ARTIFACT_NAMES = ("job.json",)
#: the folder of a job folder that holds the job's offline MLflow store
OFFLINE_FOLDER = "offline"
#: folders of a job folder never uploaded as files: the job's offline store, uploaded as runs
SKIPPED_ARTIFACT_FOLDERS = (OFFLINE_FOLDER,)


def _client(uri: str) -> Any:
    from mlflow.tracking import MlflowClient

    ensure_sqlite_store(uri)
    return MlflowClient(tracking_uri=uri)


def experiment_id_for(uri: str, name: str, parent_run_id: str | None, lookup_uri: str | None = None) -> str:
    """The parent's experiment, else the experiment called ``name`` (created in ``uri`` if missing).

    ``lookup_uri``, a server in front of ``uri``, finds existing ones without loading the store in
    this process (MLflow's SQL store costs over a second of imports)."""
    client = _client(lookup_uri or uri)
    if parent_run_id:
        try:
            return client.get_run(parent_run_id).info.experiment_id
        except Exception:  # the parent lives in another store (offline): fall back to the name
            pass
    experiment = client.get_experiment_by_name(name)
    if experiment is not None:
        return experiment.experiment_id
    from mlflow.exceptions import MlflowException

    store = _client(uri)
    try:
        return store.create_experiment(name)
    except MlflowException as exc:
        # a job that started while the server started may have created it through the server
        # between the lookup and here: that one is the sweep's experiment
        if exc.error_code != "RESOURCE_ALREADY_EXISTS":
            raise
        return store.get_experiment_by_name(name).experiment_id


def _job_filter(parent_run_id: str | None, output_dir: str | None) -> list[str]:
    """Search conditions for the runs of a sweep's job: its output folder and its sweep's run."""
    conditions = [f"tags.`{OUTPUT_DIR_TAG}` = '{output_dir}'"] if output_dir else []
    if parent_run_id:
        conditions.append(f"tags.`{PARENT_TAG}` = '{parent_run_id}'")
    return conditions


def job_params(record: JobRecord) -> dict[str, str]:
    """The params every job's run holds: its overrides and its attempt."""
    return {"overrides": " ".join(record.overrides)[:PARAM_MAX_CHARS] or "(none)", ATTEMPT_TAG: str(record.attempt)}


def record_job(uri: str, experiment_id: str, parent_run_id: str | None, record: JobRecord) -> str:
    """Add ``record`` to the job's own run (``record.run_id``) or to a new child run of the sweep;
    returns the run id."""
    from mlflow.entities import Metric, Param, RunTag

    client = _client(uri)
    existing = client.get_run(record.run_id) if record.run_id else None
    tags = {
        JOB_TAG: str(record.index),
        CONFIG_HASH_TAG: record.config_hash,
        "engage.host": record.host,
        "engage.launcher": "engage",
        ATTEMPT_TAG: str(record.attempt),
        **record.tags,
    }
    if parent_run_id:
        tags[PARENT_TAG] = parent_run_id
    if record.output_dir:
        tags[OUTPUT_DIR_TAG] = record.output_dir
    metrics = []
    for step, sample in enumerate(record.system):
        stamp = int(sample["time"] * 1000)
        for key in ("cpu_percent", "rss_mib", "host_cpu_percent", "host_memory_percent"):
            metrics.append(Metric(f"system/{key}", float(sample[key]), stamp, step))
    metrics.append(Metric("job/duration_s", record.end_time - record.start_time, int(record.end_time * 1000), 0))
    # as few requests as MLflow's batch limits allow (1000 metrics, 100 params, 100 tags each):
    # a sweep's jobs are recorded while others run, through one server on the same cores
    if existing is None:
        run = client.create_run(
            experiment_id,
            start_time=int(record.start_time * 1000),
            tags={**tags, RECORD_RUN_TAG: "true"},
            run_name=record.run_name,
        )
        run_id = run.info.run_id
        # MLflow's client retries a request whose reply was lost: when the server died after
        # creating the run, the retry made this one, and the first is left RUNNING beside it
        delete_record_runs(
            uri, experiment_id, parent_run_id, record.index, record.attempt, record.output_dir, keep=run_id
        )
        params = {**job_params(record), **record.params}
        first = {"params": [Param(k, str(v)[:PARAM_MAX_CHARS]) for k, v in params.items()]}
    else:
        run_id = existing.info.run_id
        # the job's own run gets the same params, where its code did not log one of that name
        params = {k: v for k, v in job_params(record).items() if k not in existing.data.params}
        first = {"tags": [RunTag(k, v) for k, v in tags.items()], "params": [Param(k, v) for k, v in params.items()]}
    client.log_batch(run_id, metrics=metrics[:900], **first)
    for start in range(900, len(metrics), 1000):
        client.log_batch(run_id, metrics=metrics[start : start + 1000])
    for artifact_path, local in record.artifacts.items():
        path = Path(local)
        if path.is_dir():
            for file in sorted(path.rglob("*")):
                if (
                    file.is_file()
                    and file.suffix not in SKIPPED_ARTIFACT_SUFFIXES
                    and file.name not in SKIPPED_ARTIFACT_NAMES
                    and file.relative_to(path).parts[0] not in SKIPPED_ARTIFACT_FOLDERS
                ):
                    folder = Path(artifact_path, file.parent.relative_to(path)).as_posix()
                    client.log_artifact(run_id, str(file), artifact_path=folder)
        elif path.is_file():
            client.log_artifact(run_id, str(path), artifact_path=artifact_path)
    # the job's own run may have ended already (then its status stands unless the job failed)
    if existing is None or record.status != "FINISHED" or client.get_run(run_id).info.status == "RUNNING":
        client.set_terminated(run_id, status=record.status, end_time=int(record.end_time * 1000))
    return run_id


def record_offline(uri: str, experiment_id: str, parent_run_id: str | None, record: JobRecord) -> str:
    """Keep ``record`` in the offline store ``uri`` (the sweep's store did not answer): added to
    the job's own run when the job opened it there too, else kept as a run of its own, which
    names the job's run (:data:`RECORD_FOR_TAG`) when the job opened it in the sweep's store, so
    that :func:`upload_store` adds the record to that run by id. Returns the offline run's id."""
    if record.run_id and _existing_run(_client(uri), record.run_id) is None:
        # the job's run is in the sweep's store, which the record waits for
        record = replace(record, run_id=None, tags={**record.tags, RECORD_FOR_TAG: record.run_id})
    return record_job(uri, experiment_id, parent_run_id, record)


def mark_killed(uri: str, run_ids: Iterable[str]) -> int:
    """Set the runs of interrupted jobs (by id) to KILLED, those still RUNNING and those the stop
    itself failed (a job stopped mid-fit ends short of its simulations); returns how many."""
    client = _client(uri)
    count = 0
    for run_id in run_ids:
        if client.get_run(run_id).info.status in ("RUNNING", "FAILED"):
            client.set_terminated(run_id, status="KILLED")
            count += 1
    return count


def delete_record_runs(
    uri: str,
    experiment_id: str,
    parent_run_id: str | None,
    index: int,
    attempt: int,
    output_dir: str | None,
    keep: str | None = None,
) -> int:
    """Delete the runs :func:`record_job` created for attempt ``attempt`` of job ``index`` (of the
    sweep ``parent_run_id``, writing to ``output_dir``), all but ``keep``; returns how many.

    A record kept offline because the server died while it was being written replaces them: the
    run made before, whole or in part, would otherwise be a second child run of the same attempt.
    The runs of the job's other attempts stay. Nothing is deleted without a parent or an output
    folder to tell this sweep's job from another's."""
    scope = _job_filter(parent_run_id, output_dir)
    if not scope:
        return 0
    conditions = [f"tags.`{JOB_TAG}` = '{index}'", f"tags.`{ATTEMPT_TAG}` = '{attempt}'", *scope]
    query = " and ".join([*conditions, f"tags.`{RECORD_RUN_TAG}` = 'true'"])
    client = _client(uri)
    runs = client.search_runs([experiment_id], filter_string=query, max_results=100)
    runs = [run for run in runs if run.info.run_id != keep]
    for run in runs:
        client.delete_run(run.info.run_id)
    return len(runs)


def upload_store(source_uri: str, target_uri: str, target_experiment_id: str) -> list[str]:
    """Copy every run of the (offline) store ``source_uri`` into ``target_uri``: tags (parent
    included), params, full metric histories, artifacts, status and times. A record kept for a run
    the job opened in ``target_uri`` (:func:`record_offline`) is added to that run, by id. Returns
    the ids of the runs written, new or added to."""
    from mlflow.entities import Metric, Param, RunTag

    source, target = _client(source_uri), _client(target_uri)
    written = []
    for experiment in source.search_experiments():
        for run in source.search_runs([experiment.experiment_id], max_results=50000):
            into = _existing_run(target, run.data.tags.get(RECORD_FOR_TAG))
            if into is None:
                tags = {k: v for k, v in run.data.tags.items() if not k.startswith("mlflow.log-model")}
                new = target.create_run(
                    target_experiment_id, start_time=run.info.start_time, tags=tags, run_name=run.info.run_name
                )
                run_id, kept_params = new.info.run_id, set()
            else:
                tags = {k: v for k, v in run.data.tags.items() if k not in _RECORD_ONLY_TAGS}
                run_id, kept_params = into.info.run_id, set(into.data.params)
                _log_in_batches(target, run_id, tags=[RunTag(k, v) for k, v in tags.items()])
            params = [Param(k, v) for k, v in run.data.params.items() if k not in kept_params]
            metrics = []
            for key in run.data.metrics:
                metrics += [
                    Metric(m.key, m.value, m.timestamp, m.step) for m in source.get_metric_history(run.info.run_id, key)
                ]
            _log_in_batches(target, run_id, params=params, metrics=metrics)
            target.log_batch(run_id, tags=[RunTag("engage.uploaded_from", source_uri)])
            with tempfile.TemporaryDirectory() as scratch:
                try:
                    local = source.download_artifacts(run.info.run_id, "", scratch)
                except Exception:  # a run without artifacts
                    local = None
                if local and any(Path(local).iterdir()):
                    target.log_artifacts(run_id, local)
            # as record_job does: the job's own run keeps the status it ended with, unless it failed
            if into is None or run.info.status != "FINISHED" or into.info.status == "RUNNING":
                target.set_terminated(run_id, status=run.info.status, end_time=run.info.end_time)
            written.append(run_id)
    return written


def _existing_run(client: Any, run_id: str | None) -> Any:
    """The run ``run_id`` of ``client``'s store, or ``None`` (no id, or no such run there); any
    other failure (the store did not answer) is raised, not taken for a missing run."""
    if not run_id:
        return None
    from mlflow.exceptions import MlflowException

    try:
        return client.get_run(run_id)
    except MlflowException as exc:
        if exc.error_code != "RESOURCE_DOES_NOT_EXIST":
            raise
        return None  # a job's run in a store that is gone: the record becomes a run of its own


def _log_in_batches(
    client: Any, run_id: str, tags: Sequence = (), params: Sequence = (), metrics: Sequence = ()
) -> None:
    """Log ``tags``, ``params`` and ``metrics`` to ``run_id`` within MLflow's limits per request
    (100 tags, 100 params, 1000 metrics)."""
    for start in range(0, len(tags), 100):
        client.log_batch(run_id, tags=list(tags[start : start + 100]))
    for start in range(0, len(params), 100):
        client.log_batch(run_id, params=list(params[start : start + 100]))
    for start in range(0, len(metrics), 1000):
        client.log_batch(run_id, metrics=list(metrics[start : start + 1000]))


def offline_experiment(uri: str, name: str, artifacts: Path) -> str:
    """The experiment ``name`` in an offline store, created with artifacts next to the store."""
    client = _client(uri)
    experiment = client.get_experiment_by_name(name)
    if experiment is not None:
        return experiment.experiment_id
    return client.create_experiment(name, artifact_location=artifacts.resolve().as_uri())


def write_json(path: Path, data: Mapping[str, Any]) -> None:
    """Write ``data`` as indented JSON, atomically (a reader never sees half a file)."""
    write_text(path, json.dumps(data, indent=1, default=str))


def write_text(path: Path, text: str) -> None:
    """Write ``text`` atomically (a reader never sees half a file)."""
    scratch = path.with_suffix(path.suffix + ".tmp")
    scratch.write_text(text)
    scratch.replace(path)
