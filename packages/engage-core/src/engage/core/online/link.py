"""A simulation's line to its trainer: the socket, heartbeats while it waits, and the watch on
the trainer and on the process that started it.

The :class:`~.client.SimulationClient` decides what to send and when (credit, coalescing, shared
memory); a :class:`TrainerLink` carries the messages and tells when the other end is gone.

Example::

    >>> link = TrainerLink("tcp://127.0.0.1:5555", keys=None, heartbeat_interval=0.1, server_timeout=5)
    >>> link.receive(0.01) is None  # nobody there yet: nothing heard, not gone either
    True
    >>> link.close()
"""

from __future__ import annotations

import os
import time
from typing import Any

import zmq

from engage.core.online import protocol
from engage.core.online.protocol import Kind
from engage.core.online.security import use_client_keys

#: environment variable holding the pid of the process that started this one (local executor)
PARENT_PID_ENV = "ENGAGE_PARENT_PID"


class TrainerGone(RuntimeError):
    """The training process stopped answering (or the process that started this one died)."""


class TrainerLink:
    """One ZeroMQ ``DEALER`` connection to ``address``, with the CURVE ``keys`` the trainer
    issued (None over ``ipc://``); :class:`TrainerGone` once the trainer is silent for
    ``server_timeout`` seconds or the process that started this one has died, and at once when
    the trainer refuses the keys (not the ones it issued to this attempt, or revoked since: its
    ZAP handler answers 400, which a socket monitor hears), rather than after ``server_timeout``."""

    def __init__(
        self, address: str, keys: dict[str, str] | None, heartbeat_interval: float, server_timeout: float
    ) -> None:
        self.address = address
        self.heartbeat_interval = heartbeat_interval
        self.server_timeout = server_timeout
        self.context = zmq.Context()
        self.socket = self.context.socket(zmq.DEALER)
        # no routing identity of its own: the trainer's socket gives each connection one nobody
        # can claim ahead of it; the simulation is named by its HELLO and, with CURVE, its key
        self.socket.setsockopt(zmq.LINGER, 2000)
        self._monitor: zmq.Socket | None = None
        self._poller = zmq.Poller()
        self._poller.register(self.socket, zmq.POLLIN)
        try:
            if keys is not None:
                use_client_keys(self.socket, keys)
                self._monitor = self.socket.get_monitor_socket(zmq.EVENT_HANDSHAKE_FAILED_AUTH)
                self._poller.register(self._monitor, zmq.POLLIN)
            self.socket.connect(address)
        except BaseException:  # a bad address or key: nothing left open
            self.close()
            raise
        self.last_heard = time.monotonic()
        #: when this end last sent a message (a heartbeat is due ``heartbeat_interval`` later)
        self.last_sent = 0.0
        self.parent_pid = int(os.environ.get(PARENT_PID_ENV, "0") or 0)

    def send(self, frames: list[Any], copy: bool = True, track: bool = False) -> zmq.MessageTracker | None:
        """Send one message of ``frames``. With ``copy=False`` large frames leave from their own
        memory (small ones are copied all the same); ``track`` then returns the tracker that
        tells when ZeroMQ let go of that memory."""
        tracker = self.socket.send_multipart(frames, copy=copy, track=track)
        self.last_sent = time.monotonic()
        return tracker

    def heartbeat(self, simulation_id: int, attempt: int) -> None:
        """Say this simulation is alive, if nothing was sent for ``heartbeat_interval``."""
        now = time.monotonic()
        if now - self.last_sent >= self.heartbeat_interval:
            self.socket.send_multipart(protocol.encode_text(Kind.HEARTBEAT, simulation_id, attempt))
            self.last_sent = now

    def receive(self, timeout: float) -> tuple[protocol.Header, bytes] | None:
        """The next message from the trainer within ``timeout`` seconds, or None."""
        self.check_parent()
        ready = dict(self._poller.poll(int(timeout * 1000)))
        if self._monitor is not None and self._monitor in ready:
            self._refused()
        if self.socket not in ready:
            if time.monotonic() - self.last_heard > self.server_timeout:
                raise TrainerGone(f"no word from the trainer at {self.address} for {self.server_timeout:.0f}s")
            return None
        frames = self.socket.recv_multipart()
        self.last_heard = time.monotonic()
        if len(frames) != 2:
            raise protocol.ProtocolError(f"message of {len(frames)} frames from the trainer, expected 2")
        return protocol.decode_header(frames[0]), frames[1]

    def _refused(self) -> None:
        from zmq.utils.monitor import recv_monitor_message

        event = recv_monitor_message(self._monitor)
        raise TrainerGone(
            f"the trainer at {self.address} refused this simulation's keys (CURVE authentication failed, status "
            f"{int(event['value'])}): they are not the keys it issued to this attempt, or the attempt is over"
        )

    def pending(self) -> bool:
        """Whether a message from the trainer waits to be read."""
        return bool(self.socket.poll(0))

    def check_parent(self) -> None:
        if self.parent_pid and os.getppid() != self.parent_pid:
            raise TrainerGone(f"the process that started this simulation (pid {self.parent_pid}) died")

    def close(self) -> None:
        """Close the connection (again: nothing)."""
        if self.socket.closed:
            return
        if self._monitor is not None:
            self.socket.disable_monitor()
            self._monitor.close(linger=0)
        self.socket.close()
        self.context.term()
