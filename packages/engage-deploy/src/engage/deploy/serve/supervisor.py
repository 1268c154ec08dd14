"""``engage serve``: one inference replica, started again whenever it dies.

The supervisor checks its arguments before anything starts (one line and exit code 2 for a
model that cannot be built, an API key file others can read, an address that is not this
machine's or a port in use), starts the replica (:mod:`~engage.deploy.serve.replica`) in its own
process group, waits until its ``/health`` answers, and watches it: a replica that exits is
started again on the same address and port with the newest weights it kept, and each restart is
logged and recorded in ``status.json`` of the replica's folder (exit code, when, how long it was
down). Requests sent while it is down fail; the request generator counts them. After
``max_restarts`` restarts the supervisor gives up: one line, exit code 1. SIGTERM or Ctrl-C
stops the replica and the supervisor (exit code 0).

Example::

    engage serve --model engage.core.models.heat_surrogate:HeatSurrogate \\
        --model-kwargs '{"num_parameters": 5, "sample_shape": [32, 32]}' \\
        --api-key-file run/serve.key --host 10.231.1.2 --port 8100
"""

from __future__ import annotations

import argparse
import json
import logging
import math
import os
import re
import signal
import socket
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
from pathlib import Path

from engage.core.executors import die_with_parent_command
from engage.core.tracking.store import inherited_environ
from engage.deploy.processes import stop_process, terminate
from engage.deploy.serve.replica import (
    API_KEY_HEADER,
    ModelSpec,
    ReplicaSpec,
    current_record,
    listen_host,
    read_api_key,
)
from engage.deploy.tracking import write_json

log = logging.getLogger("engage.deploy.serve")


class ServeError(RuntimeError):
    """The replica cannot be served; one line saying why."""


def healthy(url: str, key: str, timeout_s: float = 2.0) -> bool:
    """Whether the replica at ``url`` answers its ``/health`` to ``key``."""
    request = urllib.request.Request(f"{url}/health", headers={API_KEY_HEADER: key})
    try:
        with urllib.request.urlopen(request, timeout=timeout_s) as response:
            return response.status == 200
    except (OSError, urllib.error.URLError):
        return False


class ReplicaSupervisor:
    """Runs the replica of ``spec`` and starts it again when it dies (at most ``max_restarts``
    times); ``ready_timeout_s``: how long a start may take until ``/health`` answers."""

    def __init__(self, spec: ReplicaSpec, max_restarts: int = 10, ready_timeout_s: float = 180.0):
        self.spec = spec
        self.folder = Path(spec.folder)
        self.max_restarts = max_restarts
        self.ready_timeout_s = ready_timeout_s
        self.process: subprocess.Popen | None = None
        self.restarts = 0
        self.events: list[dict] = []
        self._key = read_api_key(spec.api_key_file)
        self._stop = threading.Event()

    @property
    def spec_path(self) -> Path:
        return self.folder / "replica.json"

    @property
    def status_path(self) -> Path:
        return self.folder / "status.json"

    def start(self) -> None:
        """Start the replica and wait until it answers (:class:`ServeError` if it does not)."""
        self.folder.mkdir(parents=True, exist_ok=True)
        self.spec.save(self.spec_path)
        log_file = open(self.folder / "replica.log", "ab")
        try:
            # it dies with its supervisor, even one killed with SIGKILL (its port is then free)
            command, preexec = die_with_parent_command(
                [sys.executable, "-m", "engage.deploy.serve.replica", str(self.spec_path)]
            )
            self.process = subprocess.Popen(
                command,
                stdout=log_file,
                stderr=subprocess.STDOUT,
                start_new_session=True,  # its LitServe workers are stopped with it
                preexec_fn=preexec,
                env=inherited_environ(),  # it answers the network: no MLflow credentials
            )
        finally:
            log_file.close()
        self._write_status()
        deadline = time.monotonic() + self.ready_timeout_s
        while time.monotonic() < deadline and not self._stop.is_set():
            if self.process.poll() is not None:
                raise ServeError(
                    f"replica {self.spec.name} exited with code {self.process.returncode} while starting; "
                    f"see {self.folder / 'replica.log'}"
                )
            if self.healthy():
                return
            time.sleep(0.2)
        if not self._stop.is_set():
            raise ServeError(f"replica {self.spec.name} did not answer within {self.ready_timeout_s:.0f} s")

    def healthy(self) -> bool:
        """Whether its ``/health`` answers."""
        return healthy(self.spec.url, self._key)

    def watch(self, poll_s: float = 0.5) -> int:
        """Keep the replica running until :meth:`stop`; the exit code for ``engage serve``."""
        while not self._stop.wait(poll_s):
            assert self.process is not None
            code = self.process.poll()
            if code is None or self._stop.is_set():  # running, or stopped by stop()
                continue
            died = time.time()
            # its LitServe workers, if any are left, hold the port (poll() reaped the replica)
            terminate(self.process.pid, grace_s=10.0, reaped_at=died)
            event: dict = {"exited": died, "exit_code": code, "restarted": None}
            self.events.append(event)
            if self.restarts >= self.max_restarts:
                name, restarts = self.spec.name, self.restarts
                log.error("replica %s exited with code %s after %d restarts; giving up", name, code, restarts)
                self._write_status()
                return 1
            self.restarts += 1
            log.warning("replica %s exited with code %s; starting it again (%d)", self.spec.name, code, self.restarts)
            try:
                self.start()
            except ServeError as exc:
                log.error("%s", exc)
                self._write_status()
                return 1
            event["restarted"] = time.time()
            event["down_s"] = round(event["restarted"] - died, 3)
            self._write_status()
        return 0

    def stop(self) -> None:
        """Stop watching and stop the replica."""
        self._stop.set()
        if self.process is not None:
            # the replica is our child: terminate() counts it ended once it is a zombie, where
            # probing its group would wait for the reaping below until every grace had passed
            stop_process(self.process, grace_s=10.0)
            try:
                self.process.wait(timeout=5)
            except subprocess.TimeoutExpired:
                log.warning("replica %s (pid %d) did not end after SIGKILL", self.spec.name, self.process.pid)

    def _write_status(self) -> None:
        status = {
            "name": self.spec.name,
            "url": self.spec.url,
            "pid": self.process.pid if self.process else None,
            "restarts": self.restarts,
            "events": self.events,
        }
        write_json(self.status_path, status)


# ---------------------------------------------------------------------------- engage serve


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--model", required=True, help="the model's class, package.module:Class")
    parser.add_argument("--model-kwargs", default="{}", help="its constructor's arguments, as JSON")
    parser.add_argument(
        "--checkpoint", default=None, help="a Lightning checkpoint to load instead (Class.load_from_checkpoint)"
    )
    parser.add_argument("--api-key-file", required=True, help="a 0600 file holding the replica's API key")
    parser.add_argument("--host", default="127.0.0.1", help="this machine's address to listen on (127.0.0.1)")
    parser.add_argument("--port", type=int, default=0, help="the port (0: a free one)")
    parser.add_argument("--name", default="replica", help="the replica's name, in every answer")
    parser.add_argument("--folder", default=None, help="its weights, log and status (default: serve/NAME)")
    parser.add_argument("--max-payload-mb", type=float, default=64.0, help="the largest request body, MiB")
    parser.add_argument("--max-restarts", type=int, default=10, help="restarts before giving up")
    parser.add_argument(
        "--built",
        action="store_true",
        help="whoever starts the replica built this model already: do not build it again first (seconds saved)",
    )


#: a replica's name: it names its folder (``serve/NAME``) and is in every answer
NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._:@-]{0,127}")


def check_model(model: ModelSpec, where: str) -> None:
    """Build ``model`` once; :class:`ServeError` naming ``where`` (one line) when it cannot be built."""
    try:
        model.build()
    except Exception as exc:  # the user's class: any error is theirs to read, in one line
        first = (str(exc).strip().splitlines() or [type(exc).__name__])[0]
        raise ServeError(f"{where} cannot be built: {type(exc).__name__}: {first}") from None


def spec_from_arguments(namespace: argparse.Namespace) -> ReplicaSpec:
    """The replica the arguments describe, checked (:class:`ServeError`, one line, naming the
    argument) before anything starts."""
    try:
        kwargs = json.loads(namespace.model_kwargs)
    except json.JSONDecodeError as exc:
        raise ServeError(f"--model-kwargs is not JSON ({exc.msg}); give an object such as '{{\"width\": 8}}'") from None
    if not isinstance(kwargs, dict):
        raise ServeError("--model-kwargs must be a JSON object of the constructor's arguments")
    if not (math.isfinite(namespace.max_payload_mb) and namespace.max_payload_mb * 2**20 >= 1024):
        raise ServeError(f"--max-payload-mb is {namespace.max_payload_mb}; give a finite size of 1 KiB (0.001) or more")
    if namespace.max_restarts < 0:
        raise ServeError(f"--max-restarts is {namespace.max_restarts}; give 0 or more")
    if not 0 <= namespace.port <= 65535:
        raise ServeError(f"--port is {namespace.port}; give a port from 1 to 65535 (0: any free one)")
    if namespace.checkpoint and kwargs:
        raise ServeError(
            "--model-kwargs is not used with --checkpoint: the checkpoint's own hyperparameters build the model; "
            "drop one of them"
        )
    if not NAME.fullmatch(namespace.name):
        raise ServeError(
            f"--name {namespace.name!r}: give letters, digits and '.', '_', ':', '@', '-' (it names the "
            "replica's folder and is in every answer)"
        )
    if namespace.checkpoint and not Path(namespace.checkpoint).is_file():
        raise ServeError(f"--checkpoint {namespace.checkpoint}: no such file; give a Lightning checkpoint (.ckpt)")
    folder = Path(namespace.folder or Path("serve") / namespace.name)
    if folder.exists() and not folder.is_dir():
        raise ServeError(f"--folder {folder} is a file; give a folder for the replica's files")
    model = ModelSpec(namespace.model, kwargs, namespace.checkpoint)
    if not namespace.built:
        check_model(
            model, f"--checkpoint {namespace.checkpoint}" if namespace.checkpoint else f"--model {namespace.model}"
        )
    try:
        read_api_key(namespace.api_key_file)
    except (OSError, ValueError) as exc:
        raise ServeError(f"--api-key-file: {getattr(exc, 'strerror', None) or exc}") from None
    if namespace.host in ("0.0.0.0", "::", ""):
        raise ServeError(
            f"--host {namespace.host!r} listens on every interface; give the one address clients reach it at"
        )
    try:
        listen_host(namespace.host)
    except ValueError as exc:
        raise ServeError(f"--host {exc}") from None
    port = namespace.port
    try:
        with socket.socket(socket.AF_INET6 if ":" in namespace.host else socket.AF_INET) as probe:
            # as the server binds (uvicorn): connections of a replica just stopped, in TIME_WAIT,
            # leave the port free for the next one
            probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            probe.bind((namespace.host, port))
            port = probe.getsockname()[1]
    except OSError as exc:
        raise ServeError(
            f"--host {namespace.host} --port {namespace.port}: cannot listen there ({exc.strerror}); "
            "give one of this machine's addresses and a free port"
        ) from None
    try:  # the last check: the folder is the first thing made
        folder.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise ServeError(f"--folder {folder}: cannot be made ({exc.strerror}); give a folder you can write") from None
    return ReplicaSpec(
        name=namespace.name,
        model=model,
        folder=str(Path(folder).resolve()),
        host=namespace.host,
        port=port,
        api_key_file=str(Path(namespace.api_key_file).resolve()),
        max_payload_bytes=int(namespace.max_payload_mb * 2**20),
    )


def claim_folder(folder: Path) -> int:
    """Lock ``folder`` for this supervisor (an open descriptor, released when the process ends,
    however it ends): two replicas in one folder would overwrite each other's files.
    :class:`ServeError` if another live supervisor holds it."""
    import fcntl

    try:
        fd = os.open(folder / "supervisor.lock", os.O_RDWR | os.O_CREAT, 0o600)
    except OSError as exc:
        raise ServeError(f"--folder {folder}: cannot be locked ({exc.strerror}); give a folder you can write") from None
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError:
        os.close(fd)
        raise ServeError(
            f"--folder {folder} is in use by another replica; give each replica its own --name (or --folder)"
        ) from None
    return fd


def run_command(namespace: argparse.Namespace) -> int:
    """``engage serve``: serve until stopped; exit code 2 for bad arguments, 1 if the replica
    cannot be kept running."""
    import importlib.util

    if importlib.util.find_spec("litserve") is None:  # found, not imported: the replica's process imports it
        print("engage serve: LitServe is not installed; pip install 'engage-deploy[serve]'", file=sys.stderr)
        return 2
    try:
        spec = spec_from_arguments(namespace)
        claim = claim_folder(Path(spec.folder))  # held until this process ends
    except ServeError as exc:
        print(f"engage serve: {exc}", file=sys.stderr)
        return 2
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s")
    supervisor = ReplicaSupervisor(spec, max_restarts=namespace.max_restarts)
    previous = signal.signal(signal.SIGTERM, lambda *_: supervisor.stop())
    try:
        supervisor.start()
        print(f"engage serve: replica {spec.name} serving {spec.model.target} at {spec.url}", flush=True)
        kept = current_record(spec.weights_folder)
        if kept is not None:
            print(
                f"engage serve: it serves version {kept['version']} kept in {spec.weights_folder} by an earlier start; "
                "the next training's first version replaces it",
                flush=True,
            )
        return supervisor.watch()
    except ServeError as exc:
        print(f"engage serve: {exc}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        return 0
    finally:
        supervisor.stop()
        signal.signal(signal.SIGTERM, previous)
        os.close(claim)


def main(argv: list[str] | None = None) -> int:
    """``python -m engage.deploy.serve.supervisor``: ``engage serve`` without the ``engage``
    command (what a sweep job starts on other hosts)."""
    parser = argparse.ArgumentParser(
        prog="python -m engage.deploy.serve.supervisor", description=__doc__.splitlines()[0]
    )
    add_arguments(parser)
    return run_command(parser.parse_args(argv))


if __name__ == "__main__":
    sys.exit(main())
