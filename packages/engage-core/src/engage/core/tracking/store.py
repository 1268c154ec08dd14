"""Which MLflow tracking store a run logs to, and whether it answers."""

from __future__ import annotations

import os
import re
import time
import warnings
from pathlib import Path

#: set by the sweep callback (or a launcher) so every job logs as a child of the sweep's run
PARENT_RUN_ENV = "ENGAGE_PARENT_RUN_ID"
#: a file that will hold the parent run's id, for jobs a launcher starts before that run exists
PARENT_RUN_FILE_ENV = "ENGAGE_PARENT_RUN_FILE"
#: the tracking URI chosen for a sweep, inherited by its jobs
TRACKING_URI_ENV = "ENGAGE_TRACKING_URI"
#: the tag of a run that did not finish (FAILED or KILLED) holding why: the line ``engage run`` printed
ERROR_TAG = "engage.error"
#: MLflow's own variable for the store (read by ``engage run``; written by MLflow's fluent API)
MLFLOW_TRACKING_URI = "MLFLOW_TRACKING_URI"
#: MLflow's variables for the experiment of runs opened without naming one, the run its fluent
#: API resumes, and how long its client waits for an answer, s
MLFLOW_EXPERIMENT_ENV = "MLFLOW_EXPERIMENT_NAME"
MLFLOW_RUN_ID_ENV = "MLFLOW_RUN_ID"
MLFLOW_TIMEOUT_ENV = "MLFLOW_HTTP_REQUEST_TIMEOUT"
#: MLflow's client retries of a request that got no answer, and the factor of their back-off
MLFLOW_RETRIES_ENV, MLFLOW_BACKOFF_ENV = "MLFLOW_HTTP_REQUEST_MAX_RETRIES", "MLFLOW_HTTP_REQUEST_BACKOFF_FACTOR"
#: MLflow's variables for basic authentication, set by a sweep's job for its own process only
MLFLOW_USERNAME_ENV = "MLFLOW_TRACKING_USERNAME"
MLFLOW_PASSWORD_ENV = "MLFLOW_TRACKING_PASSWORD"
MLFLOW_TOKEN_ENV = "MLFLOW_TRACKING_TOKEN"
#: the variables above, which no process a launcher, a job or a trainer starts inherits from it
CREDENTIAL_ENVS = (MLFLOW_USERNAME_ENV, MLFLOW_PASSWORD_ENV, MLFLOW_TOKEN_ENV)


def inherited_environ() -> dict[str, str]:
    """The environment a process ENGAGE starts (a job, a simulation, a host's server) inherits:
    this process's own, without the MLflow credentials it holds (a sweep server's admin user):
    a job sets its own from its contract, and no simulation or other process gets them.

    >>> import os
    >>> os.environ["MLFLOW_TRACKING_PASSWORD"] = "s3cret"
    >>> "MLFLOW_TRACKING_PASSWORD" in inherited_environ(), "PATH" in inherited_environ()
    (False, True)
    >>> del os.environ["MLFLOW_TRACKING_PASSWORD"]
    """
    return {name: value for name, value in os.environ.items() if name not in CREDENTIAL_ENVS}


class TrackingUnavailable(RuntimeError):
    """The MLflow tracking server or database cannot be reached."""


#: what a user can do about :class:`TrackingUnavailable`, said after its message
UNAVAILABLE_FIX = "start it, set logger.uri, or allow logger.fallback_local=true"


def default_tracking_uri(directory: str | os.PathLike[str] | None = None) -> str:
    """``sqlite:///<directory>/mlflow.db``; by default the folder the command was started in
    (Hydra's ``runtime.cwd``, which ``hydra.job.chdir=true`` leaves for the run's folder), so
    that a run and a sweep started in one folder log to one store there."""
    base = Path(directory) if directory is not None else launch_folder()
    return f"sqlite:///{(base / 'mlflow.db').resolve()}"


def fallback_tracking_uri() -> str:
    """Where a sweep records when its store does not answer and falling back was allowed
    (``logger.fallback_local``, ``hydra.launcher.mlflow.fallback_local``): ``mlflow-fallback.db``
    beside :func:`default_tracking_uri`'s store."""
    return f"sqlite:///{(launch_folder() / 'mlflow-fallback.db').resolve()}"


def launch_folder() -> Path:
    """The folder the command was started in: Hydra's ``runtime.cwd`` inside a Hydra app, else
    the working directory."""
    from hydra.core.hydra_config import HydraConfig

    if HydraConfig.initialized():
        return Path(HydraConfig.get().runtime.cwd)
    return Path.cwd()


#: the MLflow experiment of a run when neither ``logger.experiment`` nor ``MLFLOW_EXPERIMENT_NAME`` names one
DEFAULT_EXPERIMENT = "engage"


def resolve_tracking_uri(configured: str | None) -> str:
    """Where a run logs, first found of: the sweep's store (``ENGAGE_TRACKING_URI``, set for its
    jobs, possibly a local fallback), ``logger.uri`` (config or command line),
    ``MLFLOW_TRACKING_URI``, SQLite ``mlflow.db`` in the working directory."""
    return (
        os.environ.get(TRACKING_URI_ENV) or configured or os.environ.get(MLFLOW_TRACKING_URI) or default_tracking_uri()
    )


def resolve_experiment(configured: str | None) -> str:
    """The MLflow experiment a run logs to: ``logger.experiment`` (config or command line), else
    ``MLFLOW_EXPERIMENT_NAME``, else :data:`DEFAULT_EXPERIMENT`."""
    return configured or os.environ.get(MLFLOW_EXPERIMENT_ENV) or DEFAULT_EXPERIMENT


def parent_run_id(timeout_s: float = 300.0) -> str | None:
    """The sweep's parent run this job's run belongs under, if any.

    ``ENGAGE_PARENT_RUN_ID`` names it; a launcher that starts jobs while it still opens MLflow
    names a file instead (``ENGAGE_PARENT_RUN_FILE``), written once the parent exists (empty
    when there is none). This waits for that file up to ``timeout_s``, then goes on without a
    parent, with a warning.
    """
    parent = os.environ.get(PARENT_RUN_ENV)
    path = os.environ.get(PARENT_RUN_FILE_ENV)
    if parent or not path:
        return parent or None
    deadline = time.monotonic() + timeout_s
    while True:
        try:
            return Path(path).read_text().strip() or None
        except FileNotFoundError:
            if time.monotonic() >= deadline:
                warnings.warn(
                    f"{PARENT_RUN_FILE_ENV}={path} was not written within {timeout_s:.0f} s; "
                    "this run is logged without its sweep's parent run",
                    stacklevel=2,
                )
                return None
            time.sleep(0.05)


#: MLflow's retries of an HTTP request during a run, unless the environment sets them: a server
#: that stops answering fails the run within about a minute (MLflow's own defaults retry each
#: request for minutes, and a run logs hundreds). Each request's own timeout stays MLflow's: an
#: upload of a checkpoint may take a while to be answered.
HTTP_RETRIES = {MLFLOW_RETRIES_ENV: "4", MLFLOW_BACKOFF_ENV: "1"}


def bound_http_requests(uri: str) -> None:
    """For a tracking server at ``uri``: MLflow's requests retried :data:`HTTP_RETRIES`, where the
    environment does not say otherwise."""
    if not uri.startswith(("http://", "https://")):
        return
    for name, value in HTTP_RETRIES.items():
        os.environ.setdefault(name, value)


def lost_server(exc: BaseException, uri: str) -> str | None:
    """One line saying the tracking server at ``uri`` stopped answering, if ``exc`` (raised
    during a run) says so; else ``None``."""
    if not uri.startswith(("http://", "https://")):
        return None
    for error in (exc, exc.__cause__, exc.__context__):
        text = str(error) if error is not None else ""
        if type(error).__name__ == "MlflowException" and "API request to" in text and "failed" in text:
            why = re.search(r"(Max retries exceeded|Connection refused|Read timed out|timed out)", text)
            return f"MLflow server {uri} stopped answering during the run ({why.group(1) if why else 'no answer'})"
    return None


def check_reachable(uri: str, timeout_s: float = 10.0) -> None:
    """Raise :class:`TrackingUnavailable` with one readable line if ``uri`` does not answer.

    HTTP servers get a plain request with ``timeout_s`` (MLflow's own client retries for
    minutes); an SQLite store whose schema is the installed MLflow's is opened with ``sqlite3``;
    other databases and local paths (and any other SQLite store) through MLflow's client.
    """
    if uri.startswith(("http://", "https://")):
        import urllib.error
        import urllib.request

        try:
            with urllib.request.urlopen(f"{uri.rstrip('/')}/health", timeout=timeout_s) as response:
                if response.status >= 500:
                    raise TrackingUnavailable(f"MLflow server {uri} answered HTTP {response.status}")
        except urllib.error.HTTPError as exc:
            if exc.code >= 500:
                raise TrackingUnavailable(f"MLflow server {uri} answered HTTP {exc.code}") from None
        except (urllib.error.URLError, OSError) as exc:
            reason = getattr(exc, "reason", exc)
            raise TrackingUnavailable(f"MLflow server {uri} is unreachable ({reason})") from None
        return
    from engage.core.tracking.sqlite_store import ensure_sqlite_store, sqlite_store_is_current

    ensure_sqlite_store(uri)
    # an SQLite store of the installed MLflow's schema opens without importing MLflow (seconds)
    if sqlite_store_is_current(uri, timeout_s):
        return
    from mlflow.tracking import MlflowClient

    try:
        MlflowClient(tracking_uri=uri).search_experiments(max_results=1)
    except Exception as exc:  # any backend error means no usable store
        first_line = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise TrackingUnavailable(f"MLflow tracking store {uri} cannot be used ({first_line})") from None
