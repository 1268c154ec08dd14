"""MLflow helpers: tracking URIs, reachability, the environment record, sweeps as parent runs."""

from engage.core.tracking.environment import environment_record, git_state
from engage.core.tracking.store import TrackingUnavailable, check_reachable, default_tracking_uri, resolve_tracking_uri

__all__ = [
    "TrackingUnavailable",
    "check_reachable",
    "default_tracking_uri",
    "environment_record",
    "git_state",
    "resolve_tracking_uri",
]
