"""Which MLflow tracking store a run logs to, and whether it answers."""

from __future__ import annotations

import os
from pathlib import Path

#: set by the sweep callback (or a launcher) so every job logs as a child of the sweep's run
PARENT_RUN_ENV = "ENGAGE_PARENT_RUN_ID"
#: the tracking URI chosen for a sweep, inherited by its jobs
TRACKING_URI_ENV = "ENGAGE_TRACKING_URI"


class TrackingUnavailable(RuntimeError):
    """The MLflow tracking server or database cannot be reached."""


def default_tracking_uri(directory: str | os.PathLike[str] | None = None) -> str:
    """``sqlite:///<directory>/mlflow.db``, the working directory by default."""
    base = Path(directory) if directory is not None else Path.cwd()
    return f"sqlite:///{(base / 'mlflow.db').resolve()}"


def resolve_tracking_uri(configured: str | None) -> str:
    """The sweep's URI (``ENGAGE_TRACKING_URI``, set for its jobs, possibly a local fallback), else
    the configured one, else SQLite in the working directory. ``MLFLOW_TRACKING_URI`` is
    deliberately not read implicitly: set ``logger.uri``."""
    return os.environ.get(TRACKING_URI_ENV) or configured or default_tracking_uri()


def check_reachable(uri: str, timeout_s: float = 10.0) -> None:
    """Raise :class:`TrackingUnavailable` with one readable line if ``uri`` does not answer.

    HTTP servers get a plain request with ``timeout_s`` (MLflow's own client retries for
    minutes); databases and local paths are opened through MLflow's client.
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
    from mlflow.tracking import MlflowClient

    from engage.core.tracking.sqlite_store import ensure_sqlite_store

    ensure_sqlite_store(uri)
    try:
        MlflowClient(tracking_uri=uri).search_experiments(max_results=1)
    except Exception as exc:  # any backend error means no usable store
        first_line = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise TrackingUnavailable(f"MLflow tracking store {uri} cannot be used ({first_line})") from None
