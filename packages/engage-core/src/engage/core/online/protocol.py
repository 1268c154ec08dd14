"""The wire protocol between simulation clients and the training process.

Every message is a ZeroMQ multipart message of exactly two frames: a fixed 56-byte header
(little-endian, :data:`HEADER`) and a payload frame (possibly empty). Samples travel as raw
C-ordered array bytes in the payload frame, never pickled, so a client in any language can
speak it; ``docs/protocol.md`` is the normative description. Small samples may travel several
to a message (``SAMPLES``): for them the cost of each message, not of its bytes, limits how
many samples a second can arrive.

Example::

    >>> import numpy as np
    >>> header = encode_header(Kind.SAMPLE, simulation_id=7, attempt=1, index=3, array=np.zeros((2, 4), "float32"))
    >>> h = decode_header(header)
    >>> (h.kind, h.simulation_id, h.index, h.shape, h.dtype, h.nbytes)
    (<Kind.SAMPLE: 2>, 7, 3, (2, 4), dtype('float32'), 32)
"""

from __future__ import annotations

import enum
import json
import math
import struct
from dataclasses import dataclass, field, fields
from typing import Any, NamedTuple

import numpy as np

MAGIC = b"ENGM"
VERSION = 1
MAX_NDIM = 4
#: magic, version, kind, dtype code, ndim, simulation id, attempt, flags, index, shape[4], payload bytes
HEADER = struct.Struct("<4sBBBBqIIq4IQ")
assert HEADER.size == 56


class Kind(enum.IntEnum):
    """Message kinds; 1-15 flow from client to server, 16 and up from server to client
    (``HEARTBEAT`` both ways)."""

    HELLO = 1
    SAMPLE = 2
    DONE = 3
    HEARTBEAT = 4
    ERROR = 5
    SAMPLES = 6
    JOB = 16
    CREDIT = 17
    STOP = 18
    ACK = 19


_KINDS = {int(member): member for member in Kind}

#: header flag of a ``SAMPLE`` or ``SAMPLES`` message whose samples the client wrote into the
#: shared-memory slots the trainer granted it (same host; the payload is then empty)
FLAG_IN_SLOTS = 1

#: the Python client's default bound on the bytes of one ``SAMPLES`` message
COALESCE_BYTES = 256 * 1024


def samples_per_message(nbytes: int, coalesce_bytes: int = COALESCE_BYTES) -> int:
    """How many samples of ``nbytes`` each the Python client puts in one message when they come
    quickly: as many as ``coalesce_bytes`` holds, if that is at least two, else 1 (each alone)."""
    return coalesce_bytes // nbytes if 0 < 2 * nbytes <= coalesce_bytes else 1


#: dtype codes of the header (always little-endian on the wire)
DTYPE_CODES: dict[int, np.dtype] = {
    0: np.dtype("V0"),
    1: np.dtype("<f4"),
    2: np.dtype("<f8"),
    3: np.dtype("<f2"),
    4: np.dtype("i1"),
    5: np.dtype("u1"),
    6: np.dtype("<i2"),
    7: np.dtype("<u2"),
    8: np.dtype("<i4"),
    9: np.dtype("<u4"),
    10: np.dtype("<i8"),
    11: np.dtype("<u8"),
}
_CODE_OF = {dtype: code for code, dtype in DTYPE_CODES.items() if code}


class ProtocolError(ValueError):
    """A message that does not follow the protocol; the message says what was wrong."""


def dtype_code(dtype: np.dtype | str) -> int:
    """The header code of ``dtype``, or :class:`ProtocolError` if the protocol cannot carry it."""
    dt = np.dtype(dtype)
    if dt.byteorder == ">":
        raise ProtocolError(
            f"dtype {dt} is big-endian; the protocol is little-endian, convert with astype({dt.str[1:]!r})"
        )
    try:
        return _CODE_OF[dt]
    except KeyError:
        supported = ", ".join(str(d) for d in _CODE_OF)
        raise ProtocolError(f"dtype {np.dtype(dtype)} cannot be sent; supported: {supported}") from None


class Header(NamedTuple):
    """A decoded header (a named tuple: built once per message, it must be cheap)."""

    kind: Kind
    simulation_id: int
    attempt: int
    index: int
    shape: tuple[int, ...]
    dtype: np.dtype
    nbytes: int
    flags: int = 0


def encode_header(
    kind: Kind,
    simulation_id: int,
    attempt: int = 1,
    index: int = 0,
    *,
    array: np.ndarray | None = None,
    nbytes: int = 0,
    count: int = 1,
    flags: int = 0,
) -> bytes:
    """The header frame of a message; with ``array``, its shape, dtype and size are filled in
    (with ``count``, for a ``SAMPLES`` message of that many samples shaped like ``array``)."""
    shape = [0, 0, 0, 0]
    code, ndim = 0, 0
    if array is not None:
        if array.ndim > MAX_NDIM:
            raise ProtocolError(f"samples may have at most {MAX_NDIM} dimensions, got shape {array.shape}")
        code = _CODE_OF.get(array.dtype) or dtype_code(array.dtype)  # the lookup alone in the common case
        ndim, nbytes = array.ndim, array.nbytes * count
        shape[:ndim] = array.shape
    return HEADER.pack(MAGIC, VERSION, int(kind), code, ndim, simulation_id, attempt, flags, index, *shape, nbytes)


def decode_header(buffer: bytes | memoryview) -> Header:
    """Parse a header frame; :class:`ProtocolError` names the first field that is wrong."""
    if len(buffer) != HEADER.size:
        raise ProtocolError(f"header frame has {len(buffer)} bytes, expected {HEADER.size}")
    magic, version, kind, code, ndim, sim_id, attempt, flags, index, s0, s1, s2, s3, nbytes = HEADER.unpack_from(buffer)
    if magic != MAGIC:
        raise ProtocolError(f"bad magic {magic!r}, expected {MAGIC!r}")
    if version != VERSION:
        raise ProtocolError(f"protocol version {version}, this receiver speaks {VERSION}")
    kind_member = _KINDS.get(kind)  # a dict lookup: Kind(kind) costs more, once per sample
    if kind_member is None:
        raise ProtocolError(f"unknown message kind {kind}")
    if code not in DTYPE_CODES:
        raise ProtocolError(f"unknown dtype code {code}")
    if ndim > MAX_NDIM:
        raise ProtocolError(f"ndim {ndim} exceeds {MAX_NDIM}")
    if index < 0 or sim_id < 0:
        raise ProtocolError(f"negative simulation id or sample index ({sim_id}, {index})")
    return Header(kind_member, sim_id, attempt, index, (s0, s1, s2, s3)[:ndim], DTYPE_CODES[code], nbytes, flags)


def encode_json(kind: Kind, simulation_id: int, attempt: int, payload: dict[str, Any], index: int = 0) -> list[bytes]:
    """A two-frame message whose payload is UTF-8 JSON (``HELLO``, ``JOB``)."""
    body = json.dumps(payload).encode()
    return [encode_header(kind, simulation_id, attempt, index, nbytes=len(body)), body]


def encode_text(kind: Kind, simulation_id: int, attempt: int, text: str = "", index: int = 0) -> list[bytes]:
    """A two-frame message whose payload is UTF-8 text (``ERROR``, ``STOP``) or empty."""
    body = text.encode()
    return [encode_header(kind, simulation_id, attempt, index, nbytes=len(body)), body]


#: the largest JSON payload a peer may send (HELLO): a few hundred bytes are enough
MAX_JSON_BYTES = 64 * 1024
#: the deepest nesting of objects and arrays a peer's JSON may have (a HELLO has 2)
MAX_JSON_DEPTH = 8


def _finite(text: str) -> float:
    value = float(text)
    if not math.isfinite(value):
        raise ValueError(f"number {text[:40]} is out of range")
    return value


def _no_constant(name: str) -> float:
    raise ValueError(f"{name} is not a number this protocol accepts")


def _depth(data: Any) -> int:
    """How deeply ``data``'s objects and arrays nest (a scalar: 0), without recursion."""
    deepest, level = 0, [(data, 1)]
    while level:
        value, depth = level.pop()
        children = value.values() if isinstance(value, dict) else value if isinstance(value, list) else None
        if children is None:
            continue
        deepest = max(deepest, depth)
        if depth > MAX_JSON_DEPTH:
            break
        level.extend((child, depth + 1) for child in children)
    return deepest


def decode_json(payload: bytes | memoryview, peer: bool = True) -> dict[str, Any]:
    """A JSON object; :class:`ProtocolError` for anything else (too large, not UTF-8, not JSON,
    nested too deep for the decoder, numbers too long to convert). With ``peer`` (a simulation's
    message, read by the trainer) also nested deeper than :data:`MAX_JSON_DEPTH`, ``NaN`` or an
    infinite number; the trainer's ``JOB`` may carry a simulator's configuration as it is."""
    if len(payload) > MAX_JSON_BYTES:
        raise ProtocolError(f"JSON payload of {len(payload)} bytes; at most {MAX_JSON_BYTES} are accepted")
    numbers = {"parse_float": _finite, "parse_constant": _no_constant} if peer else {}
    try:
        data = json.loads(bytes(payload).decode(), **numbers)
    except (ValueError, RecursionError) as exc:  # JSONDecodeError and UnicodeDecodeError are ValueErrors
        raise ProtocolError(f"payload is not UTF-8 JSON: {str(exc)[:200]}") from None
    if not isinstance(data, dict):
        raise ProtocolError("JSON payload must be an object")
    if peer and _depth(data) > MAX_JSON_DEPTH:
        raise ProtocolError(f"JSON payload nested deeper than {MAX_JSON_DEPTH} levels")
    return data


@dataclass
class Job:
    """The ``JOB`` message: what the trainer asks one simulation process to compute. Its keys are
    declared here alone; the trainer builds it from the simulation's record, clients read it.

    ``shared_memory`` (``{"slot_bytes", "slots"}``) is present when the trainer accepted the
    client's mapping of its segment; keys a client does not know stay in ``extra``.
    """

    parameters: dict[str, Any]
    vector: list[float]
    simulator: dict[str, Any] | None = None
    resume_from: int = 0
    heartbeat_interval: float = 1.0
    server_timeout: float = 60.0
    coalesce_bytes: int | None = None
    shared_memory: dict[str, int] | None = None
    extra: dict[str, Any] = field(default_factory=dict)

    def encode(self, simulation_id: int, attempt: int) -> list[bytes]:
        """The message's frames (the fields as they are: JSON copies them; ``dataclasses.asdict``
        would deep-copy the simulator's description first, once per simulation)."""
        data = {f.name: getattr(self, f.name) for f in fields(self) if f.name != "extra"}
        data.update(self.extra)
        if data["shared_memory"] is None:
            del data["shared_memory"]
        return encode_json(Kind.JOB, simulation_id, attempt, data)

    @classmethod
    def decode(cls, payload: bytes | memoryview, heartbeat_interval: float, server_timeout: float) -> Job:
        """The job in a ``JOB`` payload (the defaults: the client's own settings)."""
        data = decode_json(payload, peer=False)
        known = set(cls.__dataclass_fields__) - {"extra"}
        return cls(
            parameters=data.get("parameters", {}),
            vector=list(data.get("vector", [])),
            simulator=data.get("simulator"),
            resume_from=int(data.get("resume_from", 0)),
            heartbeat_interval=float(data.get("heartbeat_interval", heartbeat_interval)),
            server_timeout=float(data.get("server_timeout", server_timeout)),
            coalesce_bytes=data.get("coalesce_bytes"),
            shared_memory=data.get("shared_memory"),
            extra={k: v for k, v in data.items() if k not in known},
        )
