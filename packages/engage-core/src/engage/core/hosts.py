"""Which node this process runs on, as a batch system names it (nodes may share a hostname)."""

from __future__ import annotations

import os
import socket
from collections.abc import Mapping

#: the node's name in a Slurm job (``slurmd``'s own name for it)
SLURM_NODE_ENV = "SLURMD_NODENAME"


def node_name(environ: Mapping[str, str] | None = None) -> str:
    """This node's name: Slurm's in a Slurm job, else the hostname.

    >>> node_name({"SLURMD_NODENAME": "n2"})
    'n2'
    >>> node_name({}) == socket.gethostname()
    True
    """
    env = os.environ if environ is None else environ
    return env.get(SLURM_NODE_ENV) or socket.gethostname()
