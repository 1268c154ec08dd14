"""Where simulations reach the trainer: one ``ROUTER`` socket bound as the run's transport
security says (CURVE with a ZAP handler admitting only the keys the run issues, or ``ipc://`` in
the run's ``0700`` folder), frames bounded in size, and the buffer's shared-memory segment;
opened by the scheduler's thread and closed as one.

Example::

    >>> from engage.core.executors import LocalExecutor
    >>> endpoint = TrainerEndpoint("curve", LocalExecutor(), max_message_bytes=1 << 20)
    >>> endpoint.bind().startswith("tcp://127.0.0.1:"), endpoint.keys is not None
    (True, True)
    >>> endpoint.close()
"""

from __future__ import annotations

import os
import re
import shutil
from typing import Any

import zmq

from engage.core.executors import Executor
from engage.core.online import shared_memory
from engage.core.online.security import RunKeys, run_folder, serve_curve

#: the longest a peer's connection may take to complete its handshake, in milliseconds
HANDSHAKE_MS = 10_000


#: the most this process raises its soft limit of open files to (children inherit it, and some
#: programs close every descriptor up to it)
OPEN_FILES_LIMIT = 65_536


def raise_open_files_limit() -> tuple[int, int]:
    """Raise this process's soft limit of open files towards its hard limit (at most
    :data:`OPEN_FILES_LIMIT`), as Go's runtime does at start: every connection to the trainer's
    socket holds a descriptor until libzmq closes it, so at the usual soft limit of 1,024 a peer
    opening idle connections would leave none for the run's own files and processes. Returns the
    limits ``(soft, hard)`` in force."""
    import resource

    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    wanted = OPEN_FILES_LIMIT if hard == resource.RLIM_INFINITY else min(hard, OPEN_FILES_LIMIT)
    if soft != resource.RLIM_INFINITY and soft < wanted:
        try:
            resource.setrlimit(resource.RLIMIT_NOFILE, (wanted, hard))
        except (ValueError, OSError):  # above the kernel's own ceiling: keep what there is
            return soft, hard
        soft = wanted
    return soft, hard


class TrainerEndpoint:
    """The socket simulations send to, its keys and its shared memory (see the module doc).

    ``transport_security`` is ``"curve"`` or ``"ipc"``; ``executor`` says which interface to bind
    (:meth:`~engage.core.executors.Executor.bind_host`); a peer that sends a frame larger than
    ``max_message_bytes`` is disconnected by libzmq before the frame is buffered.
    """

    def __init__(self, transport_security: str, executor: Executor, max_message_bytes: int):
        self.transport_security = transport_security
        self.executor = executor
        self.context = zmq.Context()
        self.sock = self.context.socket(zmq.ROUTER)
        self.sock.setsockopt(zmq.LINGER, 0)
        self.sock.setsockopt(zmq.ROUTER_MANDATORY, 0)
        self.sock.maxmsgsize = int(max_message_bytes)
        # a connection that has not completed its handshake (CURVE's included) within this is
        # closed: one that never does holds a file descriptor for this long, not libzmq's 30 s
        self.sock.setsockopt(zmq.HANDSHAKE_IVL, HANDSHAKE_MS)
        #: where simulations connect, once bound
        self.address: str | None = None
        #: the keys the run issues to simulation attempts (CURVE only)
        self.keys: RunKeys | None = None
        #: the segment holding the buffer's samples, when shared memory could be set up
        self.segment: shared_memory.SharedSegment | None = None
        self._authenticator: Any = None
        #: the run's 0700 folder (keys, the ipc socket), once bound
        self.folder: str | None = None

    def share_memory(self, size: int, run_id: str | None, what: str = "training buffer") -> Any:
        """A shared-memory segment of ``size`` bytes named after ``run_id``; its writable memory,
        or ``None`` (with a warning) when the host cannot give it."""
        # named after the run that owns it (then the trainer's pid: ranks of one run)
        prefix = "-".join(["engage", *re.findall(r"[0-9A-Za-z]+", str(run_id or ""))[:1]])
        self.segment = shared_memory.segment_for(size, prefix, what)
        return self.segment.buffer if self.segment is not None else None

    def bind(self) -> str:
        """Listen; the address simulations connect to."""
        raise_open_files_limit()
        self.folder = run_folder()
        if self.transport_security == "ipc":
            # the socket file in a 0700 folder: only this OS user's processes can connect
            self.address = f"ipc://{self.folder}/trainer"
            self.sock.bind(self.address)
            return self.address
        self.keys = RunKeys(os.path.join(self.folder, "keys"))
        self._authenticator = serve_curve(self.context, self.sock, self.keys)
        host = self.executor.bind_host()
        port = self.sock.bind_to_random_port(f"tcp://{host}")
        self.address = f"tcp://{host}:{port}"
        return self.address

    def close(self) -> None:
        """Unlink the segment (mappings stay valid), close the socket, stop the ZAP handler,
        delete every key and the run's folder."""
        if self.segment is not None:
            self.segment.unlink()  # the buffer keeps its mapping; no new process may attach
        self.sock.close(0)
        if self._authenticator is not None:
            self._authenticator.stop()  # its socket would hold the context's term() forever
        if self.keys is not None:
            self.keys.close()  # every key file goes with the run
        if self.folder is not None:
            shutil.rmtree(self.folder, ignore_errors=True)
        self.context.term()
