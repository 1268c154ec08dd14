"""Message framing and checks: what a message of samples must look like to enter the buffer.

A :class:`SampleSpec` is the simulator's declaration (shape, dtype, samples per run); it checks
``SAMPLE`` and ``SAMPLES`` headers and payload sizes against it, raising :class:`MalformedSample`
naming what is wrong, and gives each sample its time stamp. The socket helpers read the rest of a
message without ever reading the next one's frames as its own.

Example::

    >>> import numpy as np
    >>> from engage.core.online import protocol
    >>> spec = SampleSpec((2, 2), np.dtype("<f4"), samples_per_run=4)
    >>> header = protocol.decode_header(protocol.encode_header(
    ...     protocol.Kind.SAMPLES, 0, 1, 2, array=np.zeros((2, 2), "<f4"), count=2))
    >>> spec.count(header), spec.times(2, 2).tolist()
    (2, [0.75, 1.0])
"""

from __future__ import annotations

import re
from typing import Any

import numpy as np
import zmq

from engage.core.online import protocol
from engage.core.online.protocol import ProtocolError


class MalformedSample(ValueError):
    """A sample frame that does not match the simulator's declaration."""


def one_line(text: str, limit: int = 500) -> str:
    """``text`` from a peer as one bounded log line: a newline in it must not forge another, nor a
    control character (an escape sequence, a bell, NUL) act on the terminal that shows it, so
    those are written as escapes (``\\x1b``)."""
    text = _escaped(" ".join(text.split()))
    return text if len(text) <= limit else text[: limit - 3] + "..."


def log_block(text: str, prefix: str = "  | ") -> str:
    """Several lines from a peer (a simulation's stderr) under a log line, each behind ``prefix``
    with its control characters escaped, so that none reads as a log line of its own."""
    return "\n".join(prefix + _escaped(line) for line in text.splitlines())


def _escaped(text: str) -> str:
    return _CONTROL.sub(lambda found: found.group().encode("unicode_escape").decode("ascii"), text)


#: characters of C0 and C1 control, and DEL, but tab (whitespace, already collapsed or harmless)
_CONTROL = re.compile(r"[\x00-\x08\x0b-\x1f\x7f-\x9f]")


def check_sample(
    header: protocol.Header, payload_len: int, shape: tuple[int, ...], dtype: np.dtype, several: bool = False
) -> None:
    """Raise :class:`MalformedSample` naming what is wrong with a ``SAMPLE`` frame (``several``:
    with a ``SAMPLES`` frame)."""
    what = "samples from" if several else "sample"
    where = f"{what} {header.index} of simulation {header.simulation_id}"
    if header.shape != shape:
        raise MalformedSample(f"{where} has shape {header.shape}, the simulator declares {shape}")
    if header.dtype != dtype:
        raise MalformedSample(f"{where} has dtype {header.dtype}, the simulator declares {dtype}")
    expected = int(np.prod(shape)) * dtype.itemsize
    if several:
        if not expected or not header.nbytes or header.nbytes % expected:
            raise MalformedSample(
                f"{where}: the header says {header.nbytes} payload bytes, not a whole number of samples of "
                f"{expected} bytes"
            )
        if payload_len != header.nbytes:
            raise MalformedSample(
                f"{where} is truncated or padded: {payload_len} payload bytes, the header says {header.nbytes}"
            )
        return
    if header.nbytes != expected or payload_len != expected:
        raise MalformedSample(
            f"{where} is truncated or padded: {payload_len} payload bytes (header says {header.nbytes}), "
            f"expected {expected}"
        )


class SampleSpec:
    """The samples a simulator declares, and the checks of messages against it."""

    def __init__(self, shape: tuple[int, ...], dtype: np.dtype, samples_per_run: int | None):
        self.shape = tuple(shape)
        self.dtype = np.dtype(dtype)
        self.samples_per_run = samples_per_run
        #: bytes of one sample
        self.nbytes = int(np.prod(self.shape)) * self.dtype.itemsize

    def check_one(self, header: protocol.Header) -> None:
        """A ``SAMPLE`` header: its shape, dtype, size and index within the run."""
        # the common case in one comparison; the full check names what is wrong otherwise
        if header.shape != self.shape or header.dtype != self.dtype or header.nbytes != self.nbytes:
            check_sample(header, header.nbytes, self.shape, self.dtype)
        total = self.samples_per_run
        if total is not None and header.index >= total:
            raise MalformedSample(
                f"sample {header.index} of simulation {header.simulation_id}: the simulator declares {total} per run"
            )

    def count(self, header: protocol.Header, several: bool = True) -> int:
        """How many samples a ``SAMPLES`` header (or, ``several=False``, a ``SAMPLE`` header in
        shared memory) covers, once checked."""
        size = self.nbytes
        count = header.nbytes // size if size else 0
        if (
            header.shape != self.shape or header.dtype != self.dtype or not count
            or header.nbytes != count * size or (count > 1 and not several)
        ):  # fmt: skip
            check_sample(header, header.nbytes, self.shape, self.dtype, several=several)
        return count

    def check_range(self, header: protocol.Header, count: int) -> None:
        """``count`` samples from ``header.index`` fit in the run."""
        total = self.samples_per_run
        if total is not None and header.index + count > total:
            raise MalformedSample(
                f"samples {header.index} to {header.index + count - 1} of simulation {header.simulation_id}: "
                f"the simulator declares {total} per run"
            )

    def time(self, index: int) -> float:
        """:meth:`times` of one sample (a float, not an array: one per message)."""
        total = self.samples_per_run
        return (index + 1) / total if total else float(index)

    def times(self, first: int, n: int) -> np.ndarray:
        """The time stamps of samples ``first`` to ``first + n - 1`` of a run: the fraction of
        the run done, or the sample's index when the run's length is not declared."""
        total = self.samples_per_run
        steps = np.arange(first + 1, first + n + 1, dtype=np.float64)
        return steps / total if total else steps - 1


def read_payload(sock: zmq.Socket, copy: bool = True) -> Any:
    """The payload frame, which must be the message's last (a :class:`zmq.Frame` without
    ``copy``, else its bytes)."""
    payload = sock.recv(copy=False)
    if payload.more:  # the frame's own flag: no socket option call per message
        raise ProtocolError("message of more than 2 frames, expected 2 (header, payload)")
    return payload.bytes if copy else payload


def read_header(sock: zmq.Socket, more: bool) -> protocol.Header:
    """The header frame of the message whose identity frame was just read (``more``: whether
    that frame said more followed)."""
    if not more:
        raise ProtocolError("empty message, expected 2 frames (header, payload)")
    header_frame = sock.recv(copy=False)
    if not header_frame.more:
        raise ProtocolError("message of 1 frame, expected 2 (header, payload)")
    return protocol.decode_header(header_frame.bytes)


def discard_rest(sock: zmq.Socket) -> None:
    """Read and drop what is left of a message, so that it is not read as the next one."""
    while sock.getsockopt(zmq.RCVMORE):
        sock.recv(copy=False)
