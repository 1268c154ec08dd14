"""A hostile peer of a running trainer, as a process of its own (its queues are not the
trainer's memory): ``python -m hostile_peer ADDRESS SERVER_KEY KIND SIMULATION_ID KEYS MESSAGES_PER_KIND``.

``KIND``: ``unauthenticated`` (no CURVE), ``guessed`` (a CURVE key of its own), ``other-key``
(``KEYS``, issued to another attempt, claiming this one), ``oversized`` (frames of 8 MiB),
``nested`` (deeply nested JSON), ``flood`` (many small messages, no key). It claims
``SIMULATION_ID`` attempt 1 and that simulation's old routing identity."""

from __future__ import annotations

import json
import sys
import time

import numpy as np
import zmq

from engage.core.online import protocol
from engage.core.online.security import use_client_keys


def main(address: str, server_key: str, kind: str, sid: int, keys: str, count: int) -> None:
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
    sock.setsockopt(zmq.IDENTITY, f"sim-{sid}-1".encode())
    sock.connect(address)
    sample = np.full((8, 8), 1e6, np.float32)  # nothing honest looks like this
    hello = protocol.encode_json(protocol.Kind.HELLO, sid, 1, {"pid": 1, "host": "x", "protocol": 1})
    messages = count * (100 if kind == "flood" else 1)
    for index in range(messages):
        if index % 10 == 0:
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
        except zmq.Again:
            time.sleep(0.01)
    time.sleep(30)  # stay connected while the run goes on; the test kills this process


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2], sys.argv[3], int(sys.argv[4]), sys.argv[5], int(sys.argv[6]))
