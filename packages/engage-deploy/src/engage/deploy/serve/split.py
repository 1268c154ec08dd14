"""Split computing for real: a model's head on one host, its tail on another, the intermediate
tensor sent over the link between them (Matsubara, Levorato and Restuccia, "Split Computing and
Early Exiting for Deep Learning Applications: Survey and Research Challenges", ACM Computing
Surveys 55(5), 2022).

* :class:`SplitSpec`: the model (built the same way on every host: a replica's
  :class:`~engage.deploy.serve.replica.ModelSpec`, seeded), the ``torch.nn.Sequential`` it runs,
  one request's input shape and the named split points (layer indices; 0 sends the input and runs
  the whole model on the tail's host);
* :class:`TailServer`: every split point's tail behind a CURVE socket that admits one client key,
  each message bounded by the largest declared tensor; it answers with the tail's output and the
  seconds its compute took;
* :class:`HeadClient`: runs the head on a request and sends the tensor; each answer carries the
  end-to-end latency and its parts;
* :func:`profile`: median seconds of the whole model, each head and each tail on this host, and
  :func:`placement_figures` / :func:`link_figures`, which turn profiles and
  :func:`~engage.deploy.netem.measure.measure_link` results into a placement problem's
  ``measured`` entries and link figures, so the engine's split decisions use measured compute and
  transfer wherever they exist.

On hosts it runs as ``python -m engage.deploy.serve.split tail|head|profile SPEC`` (keys come from
a ``0600`` file named by ``--keys``, never from the command line); ``benchmarks/split_computing.py``
puts it together on a ``netns`` infrastructure.

Example::

    >>> import torch
    >>> spec = SplitSpec(ModelSpec("engage.deploy.serve.split:example_layers"), (4,), {"cloud": 0, "mid": 1})
    >>> full, parts = spec.build()
    >>> head, tail = parts["mid"]
    >>> x = spec.example()
    >>> bool(torch.allclose(tail(head(x)), full(x))), spec.tensor_bytes()
    (True, {'cloud': 16, 'mid': 32})
"""

from __future__ import annotations

import argparse
import json
import math
import os
import statistics
import sys
import threading
import time
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from engage.deploy.serve.replica import ModelSpec

#: largest JSON header a peer may send (request id, split name; the answer's timings)
MAX_HEADER = 4096
#: ZAP domain of the tail's socket
ZAP_DOMAIN = "engage-split"


class SplitError(ValueError):
    """A split specification or a request that cannot be served; the message is one line."""


def example_layers() -> Any:
    """A 4 -> 8 -> 2 multilayer perceptron (the module docstring's example)."""
    import torch

    return torch.nn.Sequential(torch.nn.Linear(4, 8), torch.nn.ReLU(), torch.nn.Linear(8, 2))


@dataclass(frozen=True)
class SplitSpec:
    """One model cut at named points. ``model`` builds it (a class or a function returning the
    module, or a Lightning checkpoint); ``layers`` names the attribute holding its
    ``torch.nn.Sequential`` ("" when the model is one). ``splits`` maps a name to the number of
    layers the head runs (0: the input crosses and the tail is the whole model). ``seed`` seeds
    the build and the example inputs, so every host holds the same weights; ``threads`` is
    torch's thread count for every part."""

    model: ModelSpec
    input_shape: tuple[int, ...]
    splits: dict[str, int]
    layers: str = ""
    seed: int = 0
    threads: int = 1
    dtype: str = "float32"

    def to_json(self) -> str:
        return json.dumps(asdict(self), indent=1)

    @classmethod
    def from_json(cls, text: str) -> SplitSpec:
        data = json.loads(text)
        data["model"] = ModelSpec(**data["model"])
        data["input_shape"] = tuple(data["input_shape"])
        return cls(**data)

    @classmethod
    def load(cls, path: str | os.PathLike[str]) -> SplitSpec:
        return cls.from_json(Path(path).read_text())

    def sequential(self) -> Any:
        """The model's layers as one ``torch.nn.Sequential``, in evaluation mode, seeded."""
        import torch

        torch.manual_seed(self.seed)
        layers = self.model.build()
        for name in filter(None, self.layers.split(".")):
            layers = getattr(layers, name)
        if not isinstance(layers, torch.nn.Sequential):
            where = f"the model's {self.layers!r}" if self.layers else "the model"
            raise SplitError(f"layers: {where} is a {type(layers).__name__}, not a torch.nn.Sequential; name one")
        for name, at in self.splits.items():
            if not 0 <= at < len(layers):
                raise SplitError(
                    f"splits.{name}: {at} is outside 0..{len(layers) - 1}; a split runs 0 to {len(layers) - 1} "
                    "layers on the head"
                )
        return layers.eval()

    def build(self) -> tuple[Any, dict[str, tuple[Any, Any]]]:
        """The whole model and each split point's (head, tail)."""
        layers = self.sequential()
        parts = {name: (layers[:at], layers[at:]) for name, at in self.splits.items()}
        return layers, parts

    def example(self, index: int = 0) -> Any:
        """A seeded request input (``index`` picks another draw)."""
        import torch

        generator = torch.Generator().manual_seed(self.seed * 1_000_003 + index)
        return torch.randn((1, *self.input_shape), generator=generator, dtype=getattr(torch, self.dtype))

    def tensor_bytes(self) -> dict[str, int]:
        """Bytes that cross the link per request at each split point."""
        import torch

        _, parts = self.build()
        x = self.example()
        with torch.no_grad():
            return {name: head(x).numel() * head(x).element_size() for name, (head, _) in parts.items()}


def _check_header(raw: bytes) -> dict[str, Any]:
    if len(raw) > MAX_HEADER:
        raise SplitError(f"header of {len(raw)} bytes; at most {MAX_HEADER}")
    try:
        header = json.loads(raw)
    except (ValueError, UnicodeDecodeError):
        raise SplitError("header is not JSON") from None
    if not isinstance(header, dict) or not isinstance(header.get("id"), int):
        raise SplitError("header lacks an integer id")
    return header


class TailServer:
    """Every split point's tail on this host, behind a CURVE socket bound to ``bind:port`` that
    admits only ``keys["client"]`` (the head's public key). One request at a time, in order.

    ``serve()`` answers until ``stop()``; each answer is ``[header, output]`` with the header's
    ``tail_s`` (the tail's compute seconds) or ``error`` (a request it could not serve)."""

    def __init__(self, spec: SplitSpec, bind: str, keys: Mapping[str, str], port: int = 0) -> None:
        import torch
        import zmq
        from zmq.auth.thread import ThreadAuthenticator

        if bind in ("", "0.0.0.0", "*", "::"):
            raise SplitError(f"bind: {bind!r} listens everywhere; give the host's own address")
        torch.set_num_threads(spec.threads)
        self.spec = spec
        _, self.parts = spec.build()
        x = spec.example()
        with torch.no_grad():
            self._shapes = {name: tuple(head(x).shape) for name, (head, _) in self.parts.items()}
        itemsize = x.element_size()
        self._bytes = {name: math.prod(shape) * itemsize for name, shape in self._shapes.items()}
        self._stop = threading.Event()
        self.context = zmq.Context()
        allowed = keys["client"].encode()

        class _Provider:
            def callback(self, domain: str, key: bytes) -> bool:
                return key == allowed

        self._auth = ThreadAuthenticator(self.context)
        self._auth.start()
        self._auth.configure_curve_callback(domain=ZAP_DOMAIN, credentials_provider=_Provider())
        self.sock = self.context.socket(zmq.ROUTER)
        self.sock.zap_domain = ZAP_DOMAIN.encode()
        self.sock.curve_secretkey = keys["server_secret"].encode()
        self.sock.curve_publickey = keys["server_public"].encode()
        self.sock.curve_server = True
        self.sock.setsockopt(zmq.MAXMSGSIZE, max(self._bytes.values()) + MAX_HEADER)
        self.sock.linger = 0
        address = f"tcp://{bind}"
        self.port = self.sock.bind_to_random_port(address) if port == 0 else port
        if port:
            self.sock.bind(f"{address}:{port}")
        self.served = 0
        self.refused = 0

    def _answer(self, header: dict[str, Any], payload: memoryview) -> tuple[dict[str, Any], bytes]:
        import torch

        name = header.get("split")
        if name not in self.parts:
            raise SplitError(f"split {str(name)[:40]!r} is not served here; splits are {', '.join(self.parts)}")
        if len(payload) != self._bytes[name]:
            raise SplitError(f"tensor of {len(payload)} bytes; split {name} takes {self._bytes[name]}")
        tensor = torch.frombuffer(bytearray(payload), dtype=getattr(torch, self.spec.dtype)).reshape(self._shapes[name])
        start = time.perf_counter()
        with torch.no_grad():
            out = self.parts[name][1](tensor)
        elapsed = time.perf_counter() - start
        return {"id": header["id"], "tail_s": elapsed, "shape": list(out.shape)}, out.numpy().tobytes()

    def serve(self) -> None:
        """Answer requests until :meth:`stop` (polled every 100 ms)."""
        import zmq

        poller = zmq.Poller()
        poller.register(self.sock, zmq.POLLIN)
        while not self._stop.is_set():
            if not poller.poll(100):
                continue
            frames = self.sock.recv_multipart(copy=False)
            if len(frames) != 3:
                self.refused += 1
                continue
            identity, raw, payload = frames
            try:
                header = _check_header(raw.bytes)
                reply, out = self._answer(header, payload.buffer)
                self.served += 1
            except SplitError as exc:
                self.refused += 1
                reply, out = {"id": -1, "error": str(exc)[:200]}, b""
            self.sock.send_multipart([identity.bytes, json.dumps(reply).encode(), out])

    def stop(self) -> None:
        self._stop.set()

    def close(self) -> None:
        self.sock.close(0)
        self._auth.stop()
        self.context.term()


@dataclass(frozen=True)
class SplitAnswer:
    """One request's output and its seconds: the head's compute, the tail's (as the tail
    measured it) and end to end (from the head's start to the answer's arrival)."""

    output: Any
    head_s: float
    tail_s: float
    latency_s: float


class HeadClient:
    """The heads on this host, sending their tensors to a :class:`TailServer` at ``address``
    (``host:port``) with the client keys of ``keys``."""

    def __init__(self, spec: SplitSpec, address: str, keys: Mapping[str, str], timeout_s: float = 30.0) -> None:
        import torch
        import zmq

        torch.set_num_threads(spec.threads)
        self.spec = spec
        _, self.parts = spec.build()
        self.timeout_ms = int(timeout_s * 1000)
        self.context = zmq.Context()
        self.sock = self.context.socket(zmq.DEALER)
        self.sock.curve_serverkey = keys["server_public"].encode()
        self.sock.curve_publickey = keys["public"].encode()
        self.sock.curve_secretkey = keys["secret"].encode()
        self.sock.linger = 0
        self.sock.connect(f"tcp://{address}")
        self._next = 0

    def __call__(self, split: str, x: Any) -> SplitAnswer:
        import numpy as np
        import torch

        head = self.parts[split][0]
        self._next += 1
        start = time.perf_counter()
        with torch.no_grad():
            tensor = head(x).contiguous()
        head_s = time.perf_counter() - start
        header = json.dumps({"id": self._next, "split": split}).encode()
        self.sock.send_multipart([header, tensor.numpy()], copy=False)
        if not self.sock.poll(self.timeout_ms):
            raise SplitError(f"no answer from the tail within {self.timeout_ms / 1000:.0f} s")
        raw, out = self.sock.recv_multipart()
        latency = time.perf_counter() - start
        reply = _check_header(raw)
        if "error" in reply:
            raise SplitError(f"the tail refused the request: {reply['error']}")
        if reply["id"] != self._next:
            raise SplitError(f"answer {reply['id']} to request {self._next}")
        array = np.frombuffer(out, dtype=self.spec.dtype).reshape(reply["shape"])
        return SplitAnswer(torch.from_numpy(array.copy()), head_s, float(reply["tail_s"]), latency)

    def close(self) -> None:
        self.sock.close(0)
        self.context.term()

    def warm(self, splits: Sequence[str], requests: int = 3) -> None:
        """``requests`` unrecorded requests through each split, the largest tensor first: TCP's
        congestion window opens to the largest transfer, as on a connection in steady use (the
        placement model's ``bytes / rate`` assumes it; a fresh connection's first transfers take
        more round trips)."""
        tensor = self.spec.tensor_bytes()
        for name in sorted(splits, key=lambda n: -tensor[n]):
            for _ in range(requests):
                self(name, self.spec.example())

    def measure(self, split: str, requests: int, warmup: int = 3) -> dict[str, Any]:
        """``requests`` closed-loop requests through ``split`` (after ``warmup`` unrecorded ones):
        per-request seconds and the largest difference from the whole model run here."""
        import torch

        full = self.spec.sequential()
        record: dict[str, list[float]] = {"latency_s": [], "head_s": [], "tail_s": []}
        error = 0.0
        for i in range(warmup + requests):
            x = self.spec.example(i)
            answer = self(split, x)
            if i < warmup:
                continue
            record["latency_s"].append(answer.latency_s)
            record["head_s"].append(answer.head_s)
            record["tail_s"].append(answer.tail_s)
            with torch.no_grad():
                error = max(error, float((answer.output - full(x)).abs().max()))
        return {
            "split": split,
            **record,
            "median_latency_s": statistics.median(record["latency_s"]),
            "max_abs_error": error,
        }


def profile(spec: SplitSpec, repeats: int = 30, warmup: int = 5) -> dict[str, Any]:
    """Median seconds on this host of the whole model and of each split point's head and tail."""
    import torch

    torch.set_num_threads(spec.threads)
    full, parts = spec.build()
    x = spec.example()

    def median(module: Any, inp: Any) -> float:
        times = []
        with torch.no_grad():
            for i in range(warmup + repeats):
                start = time.perf_counter()
                module(inp)
                if i >= warmup:
                    times.append(time.perf_counter() - start)
        return statistics.median(times)

    result: dict[str, Any] = {"full_s": median(full, x), "head_s": {}, "tail_s": {}}
    with torch.no_grad():
        for name, (head, tail) in parts.items():
            result["head_s"][name] = median(head, x)
            result["tail_s"][name] = median(tail, head(x))
    return result


def placement_figures(
    head_profile: Mapping[str, Any], tail_profile: Mapping[str, Any], *, head_node: str, tail_node: str,
    model: str, variant: str, splits: Sequence[str],
) -> list[dict[str, Any]]:  # fmt: skip
    """A placement problem's ``measured`` entries from :func:`profile` results on the head's and
    the tail's hosts: the whole variant on each, and each split's head and tail (a split point
    named here must be in the problem's variant; split 0 is the whole model on the tail's host)."""
    figures = [
        {"node": head_node, "model": model, "variant": variant, "seconds": head_profile["full_s"]},
        {"node": tail_node, "model": model, "variant": variant, "seconds": tail_profile["full_s"]},
    ]
    for name in splits:
        figures.append({"node": head_node, "model": model, "variant": variant, "part": "head", "split": name,
                        "seconds": head_profile["head_s"][name]})  # fmt: skip
        figures.append({"node": tail_node, "model": model, "variant": variant, "part": "tail", "split": name,
                        "seconds": tail_profile["tail_s"][name]})  # fmt: skip
    return figures


def link_figures(result: Mapping[str, Any]) -> dict[str, Any]:
    """A placement link's ``delay`` (half the median round trip) and ``rate`` (the TCP goodput,
    where measured) from a :func:`~engage.deploy.netem.measure.measure_link` result."""
    figures: dict[str, Any] = {"src": result["src"], "dst": result["dst"]}
    if "probe" in result:
        figures["delay"] = f"{result['probe']['rtt_median_ms'] / 2 / 1000!r}s"
    if "stream" in result:
        figures["rate"] = f"{round(result['stream']['goodput_bps'])}bit"
    return figures


def issue_keys(folder: str | os.PathLike[str]) -> tuple[Path, Path]:
    """A server keypair and one client keypair, written as two ``0600`` files in ``folder``
    (made ``0700``): the tail's (``tail.keys``) and the head's (``head.keys``)."""
    import zmq

    from engage.core.files import write_private
    from engage.core.online.security import private_folder

    private_folder(str(folder))
    server_public, server_secret = zmq.curve_keypair()
    public, secret = zmq.curve_keypair()
    tail = write_private(
        Path(folder) / "tail.keys",
        json.dumps(
            {
                "server_public": server_public.decode(),
                "server_secret": server_secret.decode(),
                "client": public.decode(),
            }
        ),
    )
    head = write_private(
        Path(folder) / "head.keys",
        json.dumps({"server_public": server_public.decode(), "public": public.decode(), "secret": secret.decode()}),
    )
    return tail, head


def _read_keys(path: str) -> dict[str, str]:
    mode = os.stat(path).st_mode & 0o777
    if mode & 0o077:
        raise SplitError(f"--keys: {path} is readable by others (mode {mode:o}); keys live in 0600 files")
    return json.loads(Path(path).read_text())


def main(argv: Sequence[str] | None = None) -> int:
    """``python -m engage.deploy.serve.split tail|head|profile SPEC``; JSON results on stdout."""
    parser = argparse.ArgumentParser(prog="engage.deploy.serve.split", description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="command", required=True)
    tail = sub.add_parser("tail", help="serve every split point's tail")
    tail.add_argument("spec")
    tail.add_argument("--keys", required=True, help="the tail's 0600 key file")
    tail.add_argument("--bind", required=True, help="this host's address")
    tail.add_argument("--port", type=int, required=True)
    head = sub.add_parser("head", help="send requests through split points, print their timings")
    head.add_argument("spec")
    head.add_argument("--keys", required=True, help="the head's 0600 key file")
    head.add_argument("--connect", required=True, help="the tail's host:port")
    head.add_argument("--split", action="append", required=True, help="a split point to measure (repeatable)")
    head.add_argument("--requests", type=int, default=20)
    head.add_argument("--warmup", type=int, default=3, help="unrecorded requests per split first, largest tensor first")
    prof = sub.add_parser("profile", help="median compute seconds on this host")
    prof.add_argument("spec")
    prof.add_argument("--repeats", type=int, default=30)
    args = parser.parse_args(argv)
    try:
        spec = SplitSpec.load(args.spec)
        if args.command == "profile":
            print(json.dumps(profile(spec, args.repeats)))
        elif args.command == "tail":
            server = TailServer(spec, args.bind, _read_keys(args.keys), port=args.port)
            import signal

            signal.signal(signal.SIGTERM, lambda *_: server.stop())
            try:
                server.serve()
            finally:
                server.close()
        else:
            client = HeadClient(spec, args.connect, _read_keys(args.keys))
            try:
                client.warm(args.split, args.warmup)
                print(json.dumps([client.measure(name, args.requests, warmup=1) for name in args.split]))
            finally:
                client.close()
    except (SplitError, OSError) as exc:
        print(f"engage.deploy.serve.split {args.command}: {exc}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
