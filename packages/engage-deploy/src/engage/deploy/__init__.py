"""ENGAGE deploy: run Hydra sweeps on edge-to-cloud infrastructure through EnOSlib, every job in MLflow.

Example::

    >>> from engage.deploy import Infrastructure
    >>> Infrastructure().host_names()
    ['local-1']
"""

from engage.deploy.infrastructure import (
    Infrastructure,
    InfrastructureError,
    Layer,
    NetworkConstraint,
    Service,
    parse_duration,
    parse_rate,
    parse_size,
)

__all__ = [
    "Infrastructure",
    "InfrastructureError",
    "Layer",
    "NetworkConstraint",
    "Service",
    "parse_duration",
    "parse_rate",
    "parse_size",
]
