"""MLflow's tracking server in one process: ``python -m engage.deploy.mlflow_server``.

``mlflow server`` is a command-line process that checks the store and then starts a second
interpreter (uvicorn) that imports MLflow all over again: about 10 CPU-seconds before the first
answer on a 2-core host, which a sweep waits for. This module serves the same application
(``mlflow.server.fastapi_app``, what ``mlflow server`` runs by default, or with
``--app-name basic-auth`` MLflow's basic-auth application, ``mlflow.server.auth``) with the same
settings from one interpreter, in about half of that. It takes the subset of ``mlflow server``'s
options that :class:`~engage.deploy.tracking.TrackingServer` uses. The settings pass to MLflow's
application through the environment variables its command line sets for its workers
(``mlflow.server.constants``); with an MLflow that lacks any piece used here, the module runs
``mlflow server`` itself with the same options instead, as it does when MLflow's job execution is
enabled (``MLFLOW_SERVER_ENABLE_JOB_EXECUTION``, on unless set to false, as MLflow reads it; the
sweep's :class:`~engage.deploy.tracking.TrackingServer` sets it to false), since only
``mlflow server`` starts the job runner.

``--host`` may be given several times: the server listens on each of those addresses and on no
other. Each socket is bound here, before MLflow is imported (a port already taken fails at once),
with Linux's ``IP_FREEBIND``: an address whose interface does not exist yet is accepted, and
served as soon as the interface is up. ``mlflow server`` takes one ``--host``, so with several
the module refuses to run it rather than listen on more than it was asked.

With ``--exit-with-stdin`` the server ends (``SIGTERM``) when its standard input reaches its
end: a :mod:`~engage.core.lifeline` whose write end the process that started it holds, so that
a launcher killed outright (``kill -9``) leaves no server behind. A thread watches it (a forked
child when the module runs ``mlflow server`` instead, which stops its worker too). The line
``keep`` ends the watch: the server then runs until stopped.

The basic-auth application reads its configuration file from ``MLFLOW_AUTH_CONFIG_PATH`` and
the key that signs its forms from ``MLFLOW_FLASK_SERVER_SECRET_KEY``, as with ``mlflow server``.

Example (serves until SIGTERM or Ctrl-C)::

    python -m engage.deploy.mlflow_server --backend-store-uri sqlite:///mlflow.db \\
        --artifacts-destination ./mlartifacts --host 127.0.0.1 --port 5000
"""

from __future__ import annotations

import argparse
import os
import signal
import socket
import sys
import threading
from collections.abc import Sequence
from typing import NoReturn

#: Linux's IP_FREEBIND socket option (``socket`` does not name it on every Python)
IP_FREEBIND = getattr(socket, "IP_FREEBIND", 15)
#: the one application besides MLflow's default that the module serves
BASIC_AUTH = "basic-auth"
#: the line that tells ``--exit-with-stdin`` to let the server outlive the end of its input
KEEP = b"keep\n"


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    """The options, a subset of ``mlflow server``'s with the same names (``--host`` repeatable)."""
    parser = argparse.ArgumentParser(prog="python -m engage.deploy.mlflow_server", description=__doc__.splitlines()[0])
    parser.add_argument("--backend-store-uri", required=True)
    parser.add_argument("--artifacts-destination", required=True)
    parser.add_argument("--host", action="append", help="an address to listen on; repeat for several (127.0.0.1)")
    parser.add_argument("--port", type=int, default=5000)
    parser.add_argument("--allowed-hosts", default=None, help="as mlflow server's --allowed-hosts")
    parser.add_argument("--app-name", choices=[BASIC_AUTH], default=None, help="as mlflow server's --app-name")
    parser.add_argument(
        "--exit-with-stdin",
        action="store_true",
        help="end when standard input ends (the process that started the server closed it, or died)",
    )
    args = parser.parse_args(argv)
    args.hosts = list(dict.fromkeys(args.host or ["127.0.0.1"]))
    return args


def mlflow_server_argv(args: argparse.Namespace) -> list[str]:
    """The ``mlflow server`` command with the same options (one worker)."""
    if len(args.hosts) > 1:
        raise SystemExit(
            "mlflow server listens on one --host: serving several addresses needs MLflow's application "
            f"in this process (set MLFLOW_SERVER_ENABLE_JOB_EXECUTION=false); asked for {', '.join(args.hosts)}"
        )
    argv = [sys.executable, "-m", "mlflow", "server", "--backend-store-uri", args.backend_store_uri]
    argv += ["--artifacts-destination", args.artifacts_destination, "--host", args.hosts[0], "--port", str(args.port)]
    argv += ["--workers", "1"]
    if args.allowed_hosts:
        argv += ["--allowed-hosts", args.allowed_hosts]
    if args.app_name:
        argv += ["--app-name", args.app_name]
    return argv


def listening_socket(host: str, port: int) -> socket.socket:
    """A TCP socket bound to ``host:port`` (not yet listening), with ``IP_FREEBIND`` on Linux."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        if sys.platform.startswith("linux"):
            sock.setsockopt(socket.IPPROTO_IP, IP_FREEBIND, 1)  # IPv6 sockets honour it too
        sock.bind((host, port))
    except OSError as exc:
        sock.close()
        raise SystemExit(f"cannot listen on {host}:{port}: {exc.strerror or exc}") from exc
    sock.set_inheritable(True)
    return sock


def watch_stdin(server: int) -> None:
    """Read standard input to its end, then stop process ``server`` with ``SIGTERM`` (its process
    group when it leads one: ``mlflow server``'s worker with it), unless it ended first or the
    line :data:`KEEP` came first (the server is kept for later sweeps: no longer watched)."""
    told = b""
    while chunk := os.read(0, 64):
        told = (told + chunk)[-64:]
        if told.endswith(KEEP):
            return
    if server not in (os.getpid(), os.getppid()):
        return  # ended meanwhile: this watching child has another parent, the pid may be another's
    if os.getpgid(0) == server:
        os.killpg(server, signal.SIGTERM)
    else:
        os.kill(server, signal.SIGTERM)


def exec_mlflow_server(args: argparse.Namespace) -> NoReturn:
    """Replace this process with ``mlflow server`` with the same options; with
    ``--exit-with-stdin`` a forked child watches standard input for it."""
    if args.exit_with_stdin:
        server = os.getpid()
        if os.fork() == 0:
            try:
                signal.signal(signal.SIGINT, signal.SIG_IGN)
                watch_stdin(server)
            finally:
                os._exit(0)
        null = os.open(os.devnull, os.O_RDONLY)
        os.dup2(null, 0)
        os.close(null)
    os.execv(sys.executable, mlflow_server_argv(args))


def main(argv: Sequence[str] | None = None) -> None:
    """Serve MLflow's tracking server with ``argv``'s options until stopped (SIGTERM, Ctrl-C)."""
    args = parse_args(argv)
    try:
        # uvicorn first: mlflow.server sets itself up as a running server when it is loaded
        import uvicorn
        from mlflow.environment_variables import MLFLOW_SERVER_ENABLE_JOB_EXECUTION
    except ImportError:
        exec_mlflow_server(args)
    if MLFLOW_SERVER_ENABLE_JOB_EXECUTION.get():  # read, and defaulted, as mlflow server reads it
        exec_mlflow_server(args)
    sockets = [listening_socket(host, args.port) for host in args.hosts]
    if args.allowed_hosts:
        # read when mlflow.server is imported (its security middleware)
        os.environ["MLFLOW_SERVER_ALLOWED_HOSTS"] = args.allowed_hosts
    try:
        from mlflow.server import constants
        from mlflow.server.handlers import initialize_backend_stores
        from mlflow.utils.server_cli_utils import resolve_default_artifact_root

        env_var_names = (
            constants.BACKEND_STORE_URI_ENV_VAR,
            constants.REGISTRY_STORE_URI_ENV_VAR,
            constants.ARTIFACT_ROOT_ENV_VAR,
            constants.SERVE_ARTIFACTS_ENV_VAR,
            constants.ARTIFACTS_DESTINATION_ENV_VAR,
        )
        if args.app_name == BASIC_AUTH:
            # the basic-auth factory returns MLflow's FastAPI application only under uvicorn
            from mlflow.environment_variables import _MLFLOW_SGI_NAME
            from mlflow.server.auth import create_app
        else:
            from mlflow.server.fastapi_app import app
    except (ImportError, AttributeError):
        for sock in sockets:
            sock.close()
        exec_mlflow_server(args)
    backend_env, registry_env, root_env, serve_env, destination_env = env_var_names
    default_root = resolve_default_artifact_root(True, None, args.backend_store_uri)
    os.environ.update({
        backend_env: args.backend_store_uri,
        registry_env: args.backend_store_uri,
        root_env: default_root,
        serve_env: "true",
        destination_env: args.artifacts_destination,
    })  # fmt: skip
    # as mlflow server does before serving: a store it cannot open (an out-of-date schema) fails
    # here, once, with MLflow's own message
    try:
        initialize_backend_stores(args.backend_store_uri, args.backend_store_uri, default_root)
    except TypeError:  # another signature in another MLflow version: let its own command do it
        for sock in sockets:
            sock.close()
        exec_mlflow_server(args)
    if args.app_name == BASIC_AUTH:
        os.environ[_MLFLOW_SGI_NAME.name] = "uvicorn"
        # checks the secret key, creates the user database and its admin user, as mlflow server does
        app = create_app()
    # no line per request: a sweep makes thousands, and the log is for failures
    if args.exit_with_stdin:
        # a thread of this process, not a process of its own: it only waits on the pipe
        threading.Thread(target=watch_stdin, args=(os.getpid(),), name="exit-with-stdin", daemon=True).start()
    config = uvicorn.Config(app, host=args.hosts[0], port=args.port, log_level="info", access_log=False)
    uvicorn.Server(config).run(sockets=sockets)


if __name__ == "__main__":
    main()
