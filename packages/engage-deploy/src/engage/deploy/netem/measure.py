"""Measure what a link really does: round-trip time and loss with UDP probes, rate with a TCP stream.

Nothing to install: a server (UDP echo and TCP sink on one port number) runs on one host, a client
on another, both plain Python. From the shell, inside two namespaces::

    python -m engage.deploy.netem.measure serve --bind 10.231.2.2 --port 5201
    python -m engage.deploy.netem.measure probe 10.231.2.2 --port 5201 --count 2000
    python -m engage.deploy.netem.measure stream 10.231.2.2 --port 5201 --seconds 3

Each client prints one JSON object. From Python, :func:`measure_link` does the same between two
hosts of a provider.

Example (over loopback, no emulation)::

    >>> import threading
    >>> server = MeasureServer("127.0.0.1", 0)
    >>> threading.Thread(target=server.serve_forever, daemon=True).start()
    >>> result = probe_udp("127.0.0.1", server.port, count=50, interval=0.0005)
    >>> result["received"], result["rtt_median_ms"] < 50
    (50, True)
    >>> stream_tcp("127.0.0.1", server.port, seconds=0.3)["bytes"] > 0
    True
    >>> server.close()
"""

from __future__ import annotations

import argparse
import contextlib
import json
import math
import os
import select
import socket
import statistics
import struct
import subprocess
import sys
import threading
import time
from collections.abc import Sequence
from typing import Any

_PROBE = struct.Struct("!Id")
_PROBE_SIZE = 64
_CHUNK = 64 * 1024


class MeasureServer:
    """A UDP echo and a TCP sink on ``port`` (0: any free port, see :attr:`port`).

    The sink counts the bytes of each connection with their arrival times; when the client closes
    its sending side, the sink answers with a JSON summary (bytes, duration, goodput after warm-up).
    """

    def __init__(self, bind: str, port: int = 0) -> None:
        self.tcp = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        self.tcp.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self.tcp.bind((bind, port))
        self.port = self.tcp.getsockname()[1]
        self.tcp.listen(8)
        self.udp = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        self.udp.bind((bind, self.port))
        self._closed = False

    def serve_forever(self) -> None:
        """Answer probes and streams until :meth:`close`."""
        while not self._closed:
            try:
                readable, _, _ = select.select([self.tcp, self.udp], [], [], 0.2)
            except (OSError, ValueError):
                return
            for sock in readable:
                if sock is self.udp:
                    try:
                        data, peer = self.udp.recvfrom(2048)
                        self.udp.sendto(data, peer)
                    except OSError:
                        continue
                else:
                    try:
                        conn, _ = self.tcp.accept()
                    except OSError:
                        continue
                    threading.Thread(target=self._sink, args=(conn,), daemon=True).start()

    @staticmethod
    def _sink(conn: socket.socket) -> None:
        times: list[float] = []
        totals: list[int] = []
        total = 0
        with conn:
            while True:
                data = conn.recv(_CHUNK)
                if not data:
                    break
                total += len(data)
                times.append(time.monotonic())
                totals.append(total)
            conn.sendall(json.dumps(goodput(times, totals)).encode())

    def close(self) -> None:
        """Stop serving and release the port."""
        self._closed = True
        self.tcp.close()
        self.udp.close()


def goodput(times: Sequence[float], totals: Sequence[int], warmup: float = 0.25) -> dict[str, Any]:
    """Bytes, duration and goodput (bits/s of payload) of a stream received at ``times`` with
    cumulative byte counts ``totals``; the first ``warmup`` fraction of the transfer (slow start,
    queue filling) is left out of the goodput.

    >>> goodput([0.0, 1.0, 2.0, 3.0, 4.0], [0, 100, 200, 300, 400])["goodput_bps"]
    800.0
    """
    if len(times) < 2:
        return {"bytes": totals[-1] if totals else 0, "seconds": 0.0, "goodput_bps": 0.0}
    start = times[0] + warmup * (times[-1] - times[0])
    first = next(i for i, t in enumerate(times) if t >= start)
    span = times[-1] - times[first]
    rate = (totals[-1] - totals[first]) * 8 / span if span > 0 else 0.0
    return {"bytes": totals[-1], "seconds": times[-1] - times[0], "goodput_bps": rate}


def probe_udp(target: str, port: int, count: int = 2000, interval: float = 0.001, wait: float = 2.0) -> dict[str, Any]:
    """Send ``count`` numbered UDP probes, one every ``interval`` seconds, to an echo server and
    wait ``wait`` seconds after the last for stragglers. Returns sent/received counts, the loss
    fraction, its binomial 99 % interval, and round-trip percentiles in milliseconds."""
    sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    sock.connect((target, port))
    rtts: dict[int, float] = {}
    done = threading.Event()

    def receive() -> None:
        sock.settimeout(0.1)
        deadline = None
        while True:
            if done.is_set() and deadline is None:
                deadline = time.monotonic() + wait
            if deadline is not None and (time.monotonic() > deadline or len(rtts) == count):
                return
            try:
                data = sock.recv(2048)
            except TimeoutError:
                continue
            except ConnectionRefusedError:
                continue
            seq, sent = _PROBE.unpack_from(data)
            rtts.setdefault(seq, time.monotonic() - sent)

    receiver = threading.Thread(target=receive, daemon=True)
    receiver.start()
    padding = b"\0" * (_PROBE_SIZE - _PROBE.size)
    start = time.monotonic()
    for seq in range(count):
        # pace against the schedule, not the previous send, so the probe rate does not drift
        pause = start + seq * interval - time.monotonic()
        if pause > 0:
            time.sleep(pause)
        try:
            sock.send(_PROBE.pack(seq, time.monotonic()) + padding)
        except ConnectionRefusedError:
            continue
    done.set()
    receiver.join()
    sock.close()
    received = len(rtts)
    loss = 1.0 - received / count
    low, high = binomial_interval(count, count - received)
    values = sorted(rtts.values())
    ms = [v * 1000 for v in values]
    return {
        "sent": count,
        "received": received,
        "loss": loss,
        "loss_interval_99": [low, high],
        "rtt_median_ms": statistics.median(ms) if ms else math.nan,
        "rtt_p10_ms": ms[len(ms) // 10] if ms else math.nan,
        "rtt_p90_ms": ms[(9 * len(ms)) // 10] if ms else math.nan,
    }


def binomial_interval(n: int, k: int, z: float = 2.5758) -> tuple[float, float]:
    """The Wilson score interval of a proportion ``k / n`` (99 % for the default ``z``).

    >>> low, high = binomial_interval(2000, 100)
    >>> round(low, 3), round(high, 3)
    (0.039, 0.064)
    """
    if n == 0:
        return (0.0, 1.0)
    p = k / n
    denom = 1 + z * z / n
    centre = (p + z * z / (2 * n)) / denom
    half = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / denom
    return (max(0.0, centre - half), min(1.0, centre + half))


def stream_tcp(target: str, port: int, seconds: float = 3.0) -> dict[str, Any]:
    """Send as fast as TCP allows for ``seconds`` to a sink and return the sink's summary:
    ``bytes``, ``seconds`` and ``goodput_bps`` (payload bits per second after warm-up)."""
    payload = b"\0" * _CHUNK
    with socket.create_connection((target, port), timeout=30) as sock:
        end = time.monotonic() + seconds
        while time.monotonic() < end:
            sock.sendall(payload)
        sock.shutdown(socket.SHUT_WR)
        reply = b""
        while True:
            data = sock.recv(4096)
            if not data:
                break
            reply += data
    return json.loads(reply)


def measure_link(
    provider: Any,
    src: str,
    dst: str,
    *,
    port: int = 5201,
    probes: int = 2000,
    interval: float = 0.0005,
    stream_seconds: float = 0.0,
    timeout: float = 60.0,
) -> dict[str, Any]:
    """Measure the path from host ``src`` to host ``dst`` of a deployed provider: RTT and loss
    with ``probes`` UDP probes (0: skip), goodput with a TCP stream of ``stream_seconds`` (0: skip).

    A server runs on ``dst`` and the clients on ``src``. Providers that can enter a host's
    network without its CPU limits (``network_command``, as ``netns`` does) are measured that way:
    a host throttled to a quarter of a core would otherwise add its scheduling delays to the
    link's, and the link is what is measured here.
    """
    src_host, dst_host = provider.host(src), provider.host(dst)
    python = sys.executable
    module = "engage.deploy.netem.measure"
    server = subprocess.Popen(
        _command(provider, dst_host, [python, "-m", module, "serve", "--bind", dst_host.address, "--port", str(port)]),
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        start_new_session=True,
    )
    result: dict[str, Any] = {"src": src, "dst": dst}
    try:
        _wait_for_port(provider, src_host, dst_host.address, port, timeout=15.0)
        if probes:
            argv = [python, "-m", module, "probe", dst_host.address, "--port", str(port)]
            argv += ["--count", str(probes), "--interval", str(interval)]
            result["probe"] = _run_json(provider, src_host, argv, timeout)
        if stream_seconds:
            argv = [python, "-m", module, "stream", dst_host.address, "--port", str(port)]
            argv += ["--seconds", str(stream_seconds)]
            result["stream"] = _run_json(provider, src_host, argv, timeout)
    finally:
        from engage.deploy.processes import stop_process

        stop_process(server)
        server.wait()
    return result


def _command(provider: Any, host: Any, argv: list[str]) -> list[str]:
    network_command = getattr(provider, "network_command", None)
    return network_command(host, argv) if network_command is not None else provider.command_for(host, argv)


def _run_json(provider: Any, host: Any, argv: list[str], timeout: float) -> dict[str, Any]:
    proc = subprocess.Popen(_command(provider, host, argv), stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    try:
        out, err = proc.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.communicate()
        raise RuntimeError(f"{' '.join(argv[2:4])} on {host.name} did not finish within {timeout:.0f} s") from None
    if proc.returncode != 0:
        raise RuntimeError(f"{' '.join(argv[2:4])} on {host.name} failed: {err.decode().strip()[-500:]}")
    return json.loads(out)


def _wait_for_port(provider: Any, host: Any, address: str, port: int, timeout: float) -> None:
    code = (
        "import socket,sys,time\n"
        f"end=time.monotonic()+{timeout}\n"
        "while time.monotonic()<end:\n"
        "    try:\n"
        f"        socket.create_connection(({address!r},{port}),timeout=1).close(); sys.exit(0)\n"
        "    except OSError: time.sleep(0.05)\n"
        "sys.exit(1)\n"
    )
    proc = subprocess.run(_command(provider, host, [sys.executable, "-c", code]), timeout=timeout + 5)
    if proc.returncode != 0:
        raise RuntimeError(f"measurement server at {address}:{port} did not come up within {timeout:.0f} s")


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of ``python -m engage.deploy.netem.measure``."""
    parser = argparse.ArgumentParser(prog="engage.deploy.netem.measure", description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="command", required=True)
    serve = sub.add_parser("serve", help="UDP echo and TCP sink")
    serve.add_argument("--bind", default="0.0.0.0")
    serve.add_argument("--port", type=int, default=5201)
    probe = sub.add_parser("probe", help="RTT and loss with UDP probes")
    probe.add_argument("target")
    probe.add_argument("--port", type=int, default=5201)
    probe.add_argument("--count", type=int, default=2000)
    probe.add_argument("--interval", type=float, default=0.001)
    stream = sub.add_parser("stream", help="TCP goodput")
    stream.add_argument("target")
    stream.add_argument("--port", type=int, default=5201)
    stream.add_argument("--seconds", type=float, default=3.0)
    args = parser.parse_args(argv)
    # like the forwarder: scheduling delays of a busy machine would otherwise read as link delay
    with contextlib.suppress(OSError, AttributeError):
        os.sched_setscheduler(0, os.SCHED_FIFO, os.sched_param(10))
    if args.command == "serve":
        server = MeasureServer(args.bind, args.port)
        try:
            server.serve_forever()
        finally:
            server.close()
        return 0
    if args.command == "probe":
        result = probe_udp(args.target, args.port, args.count, args.interval)
    else:
        result = stream_tcp(args.target, args.port, args.seconds)
    print(json.dumps(result))
    return 0


if __name__ == "__main__":
    sys.exit(main())
