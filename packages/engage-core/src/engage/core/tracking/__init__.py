"""MLflow helpers: tracking URIs, reachability, new SQLite stores, the environment record, sweeps as
parent runs."""

from engage.core.tracking.environment import environment_record, git_state
from engage.core.tracking.sqlite_store import ensure_sqlite_store
from engage.core.tracking.store import (
    TrackingUnavailable,
    check_reachable,
    default_tracking_uri,
    parent_run_id,
    resolve_tracking_uri,
)

__all__ = [
    "TrackingUnavailable",
    "check_reachable",
    "default_tracking_uri",
    "ensure_sqlite_store",
    "environment_record",
    "git_state",
    "parent_run_id",
    "resolve_tracking_uri",
]
