"""A hostile peer of a running trainer, as a process of its own (its queues are not the
trainer's memory): ``python -m hostile_peer ADDRESS SERVER_KEY KIND SIMULATION_ID KEYS MESSAGES_PER_KIND``.

``KIND``: ``unauthenticated`` (no CURVE), ``guessed`` (a CURVE key of its own), ``other-key``
(``KEYS``, issued to another attempt, claiming this one), ``oversized`` (frames of 8 MiB),
``nested`` (deeply nested JSON), ``flood`` (many small messages, no key), ``stolen`` (``KEYS``
of the running attempt itself, taken from its key file: messages wrong in each field of the
header, the frames and the payloads, a premature ``DONE``, an ``ERROR`` that would forge a log
line, and samples that look right). It claims ``SIMULATION_ID`` attempt 1 and (but the thief)
that simulation's old routing identity.

An attack is bounded: it stops sending after ``ATTACK_SECONDS`` or its messages, whichever comes
first, then says on one line of stdout (JSON) how many messages it sent in how many seconds."""

from __future__ import annotations

import json
import sys
import time

import numpy as np
import zmq

from engage.core.online import protocol
from engage.core.online.security import use_client_keys


def malformed(sid: int, index: int) -> list[list[bytes]]:
    """Messages of simulation ``sid`` attempt 1, each wrong in one way (or, the last ones,
    well-formed but not the attempt's to send)."""
    sample = np.full((8, 8), 1e6, np.float32)
    payload = sample.tobytes()
    code = protocol.dtype_code(sample.dtype)

    def header(
        kind: int = protocol.Kind.SAMPLE, magic: bytes = protocol.MAGIC, version: int = protocol.VERSION,
        dtype: int = code, ndim: int = 2, simulation: int = sid, at: int = index, shape=(8, 8, 0, 0),
        nbytes: int = len(payload), flags: int = 0,
    ) -> bytes:  # fmt: skip
        return protocol.HEADER.pack(magic, version, kind, dtype, ndim, simulation, 1, flags, at, *shape, nbytes)

    deep, nan = b'{"a": [[[[[[[[[[]]]]]]]]]]}', b'{"pid": NaN, "host": "x", "protocol": 1}'
    forged = b"ok\n2026-01-01 12:00:00 INFO engage.online simulation 0 finished"
    return [
        [header(magic=b"XXXX"), payload],
        [header(version=99), payload],
        [header(kind=200), payload],
        [header(dtype=99), payload],
        [header(ndim=7), payload],
        [header(simulation=sid + 1), payload],
        [header(at=-1), payload],
        [header(at=10**9), payload],
        [header(shape=(4, 4, 0, 0)), payload],
        [header(nbytes=len(payload) + 4), payload],
        [header(), payload[:100]],
        [header(flags=1), b""],  # samples in shared memory it was never granted
        [header(), payload, payload],
        [header()],
        [header(kind=protocol.Kind.HELLO, nbytes=len(deep)), deep],
        [header(kind=protocol.Kind.HELLO, nbytes=len(nan)), nan],
        [header(kind=protocol.Kind.DONE, at=index + 1, nbytes=0), b""],  # "done" before its time
        [header(kind=protocol.Kind.ERROR, nbytes=len(forged)), forged],
        [header(), payload],  # a sample that looks right: not this connection's to send
        [protocol.encode_header(protocol.Kind.SAMPLES, sid, 1, index, array=sample, count=2), payload * 2],
    ]


#: the longest an attack sends for
ATTACK_SECONDS = 10.0


def main(address: str, server_key: str, kind: str, sid: int, keys: str, count: int) -> None:
    started = time.monotonic()
    context = zmq.Context()
    sock = context.socket(zmq.DEALER)
    sock.setsockopt(zmq.LINGER, 0)
    sock.setsockopt(zmq.SNDHWM, 100)
    if keys:
        use_client_keys(sock, json.loads(keys))
    elif kind == "guessed":
        # the server's public key is no secret; the client's own key was never issued
        public, secret = zmq.curve_keypair()
        use_client_keys(sock, {"server": server_key, "public": public.decode(), "secret": secret.decode()})
    if kind != "stolen":  # the thief's routing identity is its own: another attacker holds that one
        sock.setsockopt(zmq.IDENTITY, f"sim-{sid}-1".encode())
    sock.connect(address)
    sample = np.full((8, 8), 1e6, np.float32)  # nothing honest looks like this
    hello = protocol.encode_json(protocol.Kind.HELLO, sid, 1, {"pid": 1, "host": "x", "protocol": 1})
    messages, sent = count * {"flood": 100, "stolen": 5}.get(kind, 1), 0
    for index in range(messages):
        if time.monotonic() - started > ATTACK_SECONDS:
            break
        if kind == "stolen":  # every variant, over and over
            variants = malformed(sid, index % 40)
            frames = variants[index % len(variants)]
        elif index % 10 == 0:
            frames = hello
        elif kind == "oversized":
            frames = [protocol.encode_header(protocol.Kind.SAMPLE, sid, 1, 0, array=sample), bytes(8 << 20)]
        elif kind == "nested":
            frames = protocol.encode_json(protocol.Kind.ERROR, sid, 1, {})
            frames[1] = b'{"a": ' + b"[" * 60_000 + b"]" * 60_000 + b"}"
        else:
            frames = [protocol.encode_header(protocol.Kind.SAMPLE, sid, 1, index % 40, array=sample), sample.tobytes()]
        try:
            sock.send_multipart(frames, zmq.NOBLOCK)
            sent += 1
        except zmq.Again:
            time.sleep(0.01)
    report = {"kind": kind, "simulation": sid, "messages": sent, "seconds": round(time.monotonic() - started, 3)}
    print(json.dumps(report), flush=True)
    time.sleep(30)  # stay connected while the run goes on; the test kills this process


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2], sys.argv[3], int(sys.argv[4]), sys.argv[5], int(sys.argv[6]))
