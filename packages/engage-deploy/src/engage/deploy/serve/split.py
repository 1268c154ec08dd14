"""Split computing for real: a model's head on one host, its tail on another, the intermediate
tensor sent over the link between them (Matsubara, Levorato and Restuccia, "Split Computing and
Early Exiting for Deep Learning Applications: Survey and Research Challenges", ACM Computing
Surveys 55(5), 2022).

* :class:`SplitSpec`: the model (built the same way on every host: a replica's
  :class:`~engage.deploy.serve.replica.ModelSpec`, seeded), the ``torch.nn.Sequential`` it runs,
  one request's input shape and the named split points (layer indices; 0 sends the input and runs
  the whole model on the tail's host);
* :class:`TailServer`: every split point's tail behind a CURVE socket that admits one client key;
  a request is at most three frames, each no larger than the largest split tensor and 4 KiB, and one it
  cannot serve is answered with its error; it answers with the tail's output and the seconds its
  compute took;
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
import stat
import statistics
import sys
import threading
import time
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, fields
from pathlib import Path
from typing import Any

from engage.core.files import read_private
from engage.deploy.serve.replica import ModelSpec

#: largest JSON header a peer may send (request id, split name; the answer's timings)
MAX_HEADER = 4096
#: ZAP domain of the tail's socket
ZAP_DOMAIN = "engage-split"


class SplitError(ValueError):
    """A split specification or a request that cannot be served; the message is one line."""


#: the dtypes a split model's input may have (its parameters are cast to it)
DTYPES = ("float32", "float64", "float16", "bfloat16")


def example_layers(inputs: int = 4) -> Any:
    """An ``inputs`` -> 8 -> 2 multilayer perceptron (the module docstring's example)."""
    import torch

    return torch.nn.Sequential(torch.nn.Linear(inputs, 8), torch.nn.ReLU(), torch.nn.Linear(8, 2))


def _positive_int(value: Any, where: str, low: int = 1) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < low:
        raise SplitError(f"{where}: {value!r}; give an integer >= {low}")
    return value


@dataclass(frozen=True)
class SplitSpec:
    """One model cut at named points. ``model`` builds it (a class or a function returning the
    module, or a Lightning checkpoint); ``layers`` names the attribute holding its
    ``torch.nn.Sequential`` ("" when the model is one). ``splits`` maps a name to the number of
    layers the head runs (0: the input crosses and the tail is the whole model). ``seed`` seeds
    the build and the example inputs, so every host holds the same weights; ``threads`` is
    torch's thread count on the hosts; ``dtype`` the input's (the model is cast to it)."""

    model: ModelSpec
    input_shape: tuple[int, ...]
    splits: dict[str, int]
    layers: str = ""
    seed: int = 0
    threads: int = 1
    dtype: str = "float32"

    def __post_init__(self) -> None:
        if not isinstance(self.splits, dict) or not self.splits:
            raise SplitError("splits: give at least one split point, e.g. {'cloud': 0, 'mid': 3}")
        for name, at in self.splits.items():
            if not isinstance(name, str) or not name:
                raise SplitError(f"splits: {name!r} is not a name; name each split point")
            _positive_int(at, f"splits.{name}", low=0)
        if not self.input_shape:
            raise SplitError("input_shape: give one request's shape, e.g. [3, 224, 224]")
        for i, size in enumerate(self.input_shape):
            _positive_int(size, f"input_shape[{i}]")
        _positive_int(self.threads, "threads")
        _positive_int(self.seed, "seed", low=0)
        if self.dtype not in DTYPES:
            raise SplitError(f"dtype: {self.dtype!r}; use one of {', '.join(DTYPES)}")

    def to_json(self) -> str:
        return json.dumps(asdict(self), indent=1)

    @classmethod
    def from_json(cls, text: str) -> SplitSpec:
        """The spec :meth:`to_json` wrote; :class:`SplitError` (one line) for anything else."""
        try:
            data = json.loads(text)
        except ValueError:
            raise SplitError("the split spec is not JSON") from None
        known = [f.name for f in fields(cls)]
        if not isinstance(data, dict) or not isinstance(data.get("model"), dict):
            raise SplitError("the split spec is a mapping with model, input_shape and splits")
        for key in data:
            if key not in known:
                raise SplitError(f"{key}: not a split spec key; keys are {', '.join(known)}")
        try:
            data["model"] = ModelSpec(**data["model"])
            data["input_shape"] = tuple(data.get("input_shape") or ())
            return cls(**data)
        except TypeError as exc:
            raise SplitError(f"the split spec: {exc}") from None

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
        return layers.to(getattr(torch, self.dtype)).eval()

    def build(self) -> tuple[Any, dict[str, tuple[Any, Any]]]:
        """The whole model and each split point's (head, tail)."""
        layers = self.sequential()
        parts = {name: (layers[:at], layers[at:]) for name, at in self.splits.items()}
        return layers, parts

    def example(self, index: int = 0) -> Any:
        """A seeded request input (``index`` picks another draw)."""
        import torch

        generator = torch.Generator().manual_seed(self.seed * 1_000_003 + index)
        return torch.randn((1, *self.input_shape), generator=generator).to(getattr(torch, self.dtype))

    def tensors(self, parts: dict[str, tuple[Any, Any]] | None = None) -> dict[str, tuple[tuple[int, ...], Any]]:
        """Each split point's tensor: its shape and torch dtype (from ``parts``, :meth:`build`'s,
        when the caller holds them already)."""
        import torch

        parts = self.build()[1] if parts is None else parts
        x = self.example()
        with torch.no_grad():
            return {name: (tuple(t.shape), t.dtype) for name, (head, _) in parts.items() for t in (head(x),)}

    def tensor_bytes(self, parts: dict[str, tuple[Any, Any]] | None = None) -> dict[str, int]:
        """Bytes that cross the link per request at each split point."""
        return {name: _nbytes(shape, dtype) for name, (shape, dtype) in self.tensors(parts).items()}


def _nbytes(shape: Sequence[int], dtype: Any) -> int:
    return math.prod(shape) * dtype.itemsize


def _check_header(raw: bytes) -> dict[str, Any]:
    if len(raw) > MAX_HEADER:
        raise SplitError(f"header of {len(raw)} bytes; at most {MAX_HEADER}")
    try:
        header = json.loads(raw)
    except (ValueError, UnicodeDecodeError, RecursionError):
        raise SplitError("header is not JSON") from None
    if not isinstance(header, dict) or not isinstance(header.get("id"), int) or isinstance(header["id"], bool):
        raise SplitError("header lacks an integer id")
    return header


def _tensor_bytes(tensor: Any) -> bytes:
    """A tensor's bytes (any dtype: bfloat16 has no numpy type)."""
    import torch

    return tensor.contiguous().view(-1).view(torch.uint8).numpy().tobytes()


def _tensor_from(data: Any, dtype: Any, shape: Sequence[int]) -> Any:
    """The tensor of ``dtype`` and ``shape`` whose bytes are ``data`` (copied: a frame's memory
    is not the tensor's to keep)."""
    import torch

    return torch.frombuffer(bytearray(data), dtype=torch.uint8).view(dtype).reshape(tuple(shape))


def _unspecified(bind: str) -> bool:
    import ipaddress

    try:
        return ipaddress.ip_address(bind.strip("[]")).is_unspecified
    except ValueError:
        return bind in ("", "*")


class TailServer:
    """Every split point's tail on this host, behind a CURVE socket bound to ``bind:port`` that
    admits only ``keys["client"]`` (the head's public key). One request at a time, in order; a
    request is three frames at most, each no larger than the largest split tensor and 4 KiB.

    ``serve()`` answers until ``stop()``; each answer is ``[header, output]`` with the header's
    ``tail_s`` (the tail's compute seconds), the output's ``shape`` and ``dtype``, or ``error``
    (a request it could not serve, counted in :attr:`refused`)."""

    def __init__(self, spec: SplitSpec, bind: str, keys: Mapping[str, str], port: int = 0) -> None:
        import zmq
        from zmq.auth.thread import ThreadAuthenticator

        if _unspecified(bind):
            raise SplitError(f"bind: {bind!r} listens everywhere; give the host's own address")
        self.spec = spec
        _, self.parts = spec.build()
        self._tensors = spec.tensors(self.parts)
        self._bytes = {name: _nbytes(shape, dtype) for name, (shape, dtype) in self._tensors.items()}
        self._stop = threading.Event()
        self.served = 0
        self.refused = 0
        self.context = zmq.Context()
        self._auth: Any = None
        self.sock: Any = None
        try:
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
            # libzmq checks a frame's size as it arrives, CURVE's box and command name included
            self.sock.setsockopt(zmq.MAXMSGSIZE, max(self._bytes.values()) + MAX_HEADER)
            self.sock.setsockopt(zmq.RCVHWM, 4)
            self.sock.linger = 0
            address = f"tcp://{bind}"
            if port:
                self.sock.bind(f"{address}:{port}")
                self.port = port
            else:
                self.port = self.sock.bind_to_random_port(address)
        except BaseException:
            self.close()
            raise

    def _answer(self, header: dict[str, Any], payload: memoryview) -> tuple[dict[str, Any], bytes]:
        import torch

        name = header.get("split")
        if not isinstance(name, str) or name not in self.parts:
            raise SplitError(f"split {str(name)[:40]!r} is not served here; splits are {', '.join(self.parts)}")
        if len(payload) != self._bytes[name]:
            raise SplitError(f"tensor of {len(payload)} bytes; split {name} takes {self._bytes[name]}")
        shape, dtype = self._tensors[name]
        tensor = _tensor_from(payload, dtype, shape)
        start = time.perf_counter()
        with torch.no_grad():
            out = self.parts[name][1](tensor)
        elapsed = time.perf_counter() - start
        reply = {"id": header["id"], "tail_s": elapsed, "shape": list(out.shape), "dtype": str(out.dtype)[6:]}
        return reply, _tensor_bytes(out)

    def _read(self) -> tuple[bytes, list[Any], int]:
        """One request: its identity, its first two frames and how many frames it had (the
        rest are read and dropped)."""
        identity = self.sock.recv()
        frames: list[Any] = []
        count = 0
        while self.sock.rcvmore:
            frame = self.sock.recv(copy=False)
            count += 1
            if count <= 2:
                frames.append(frame)
        return identity, frames, count

    def serve(self) -> None:
        """Answer requests until :meth:`stop` (polled every 100 ms). Nothing a client sends
        stops it: a request it cannot serve is answered with its error."""
        import zmq

        poller = zmq.Poller()
        poller.register(self.sock, zmq.POLLIN)
        while not self._stop.is_set():
            if not poller.poll(100):
                continue
            identity, frames, count = self._read()
            request = -1  # the request's id, once its header is read
            try:
                if count != 2:
                    raise SplitError(f"a request is 2 frames (header, tensor), this one has {count}")
                header = _check_header(frames[0].bytes)
                request = header["id"]
                reply, out = self._answer(header, frames[1].buffer)
                self.served += 1
            except Exception as exc:  # a request's error is its answer, never the server's end
                self.refused += 1
                message = str(exc) if isinstance(exc, SplitError) else f"{type(exc).__name__}: {exc}"
                reply, out = {"id": request, "error": " ".join(message.split())[:200]}, b""
            self.sock.send_multipart([identity, json.dumps(reply).encode(), out])

    def stop(self) -> None:
        self._stop.set()

    def close(self) -> None:
        if self.sock is not None:
            self.sock.close(0)
        if self._auth is not None:
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
    (``host:port``) with the client keys of ``keys`` (``server``, ``public``, ``secret``: the
    online core's client key format, :func:`engage.core.online.security.load_client_keys`)."""

    def __init__(self, spec: SplitSpec, address: str, keys: Mapping[str, str], timeout_s: float = 30.0) -> None:
        import zmq

        from engage.core.online.security import use_client_keys

        self.spec = spec
        self.full, self.parts = spec.build()
        self.timeout_s = timeout_s
        self.context = zmq.Context()
        self.sock = self.context.socket(zmq.DEALER)
        try:
            use_client_keys(self.sock, keys)
            self.sock.linger = 0
            self.sock.connect(f"tcp://{address}")
        except BaseException:
            self.close()
            raise
        self._next = 0

    def __call__(self, split: str, x: Any) -> SplitAnswer:
        import torch

        if split not in self.parts:
            raise SplitError(f"split {split!r} is not in the spec; splits are {', '.join(self.parts)}")
        head = self.parts[split][0]
        self._next += 1
        start = time.perf_counter()
        with torch.no_grad():
            tensor = head(x)
        head_s = time.perf_counter() - start
        header = json.dumps({"id": self._next, "split": split}).encode()
        self.sock.send_multipart([header, _tensor_bytes(tensor)])
        deadline = start + self.timeout_s
        while True:  # answers to earlier requests that timed out arrive late: they are dropped
            left = deadline - time.perf_counter()
            if left <= 0 or not self.sock.poll(int(left * 1000) + 1):
                raise SplitError(f"no answer from the tail within {self.timeout_s:g} s")
            raw, out = self.sock.recv_multipart()
            reply = _check_header(raw)
            if reply["id"] not in (self._next, -1):
                continue  # the answer to a request that timed out
            if "error" in reply:
                raise SplitError(f"the tail refused the request: {str(reply['error'])[:200]}")
            break
        latency = time.perf_counter() - start
        dtype = getattr(torch, str(reply.get("dtype", "")), None)
        if not isinstance(dtype, torch.dtype):
            raise SplitError(f"answer of an unknown dtype {str(reply.get('dtype'))[:20]!r}")
        output = _tensor_from(out, dtype, reply["shape"])
        return SplitAnswer(output, head_s, float(reply["tail_s"]), latency)

    def close(self) -> None:
        self.sock.close(0)
        self.context.term()

    def warm(self, splits: Sequence[str], requests: int = 3) -> None:
        """``requests`` unrecorded requests through each split, the largest tensor first: TCP's
        congestion window opens to the largest transfer, as on a connection in steady use (the
        placement model's ``bytes / rate`` assumes it; a fresh connection's first transfers take
        more round trips)."""
        tensor = self.spec.tensor_bytes(self.parts)
        for name in sorted(splits, key=lambda n: -tensor[n]):
            for _ in range(requests):
                self(name, self.spec.example())

    def measure(self, split: str, requests: int, warmup: int = 3) -> dict[str, Any]:
        """``requests`` closed-loop requests through ``split`` (after ``warmup`` unrecorded ones):
        per-request seconds and the largest difference from the whole model run here."""
        import torch

        full = self.full
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
                error = max(error, float((answer.output.float() - full(x).float()).abs().max()))
        return {
            "split": split,
            **record,
            "median_latency_s": statistics.median(record["latency_s"]),
            "max_abs_error": error,
        }


def profile(spec: SplitSpec, repeats: int = 30, warmup: int = 5) -> dict[str, Any]:
    """Median seconds on this host of the whole model and of each split point's head and tail."""
    import torch

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
    spec: SplitSpec, head_profile: Mapping[str, Any], tail_profile: Mapping[str, Any], *, head_node: str,
    tail_node: str, model: str, variant: str,
) -> list[dict[str, Any]]:  # fmt: skip
    """A placement problem's ``measured`` entries from :func:`profile` results on the head's and
    the tail's hosts: the whole variant on each, and the head and tail of each of ``spec``'s split
    points but those at 0 (the whole model on the tail's host, a ``full`` entry already). The
    problem's variant names its split points as ``spec`` does."""
    figures = [
        {"node": head_node, "model": model, "variant": variant, "seconds": head_profile["full_s"]},
        {"node": tail_node, "model": model, "variant": variant, "seconds": tail_profile["full_s"]},
    ]
    for name, at in spec.splits.items():
        if at == 0:
            continue
        for node, part, measured in ((head_node, "head", head_profile), (tail_node, "tail", tail_profile)):
            figures.append(
                {"node": node, "model": model, "variant": variant, "part": part, "split": name,
                 "seconds": measured[f"{part}_s"][name]}
            )  # fmt: skip
    return figures


def link_figures(result: Mapping[str, Any]) -> dict[str, Any]:
    """A placement link's ``delay`` (half the median round trip) and ``rate`` (the TCP goodput,
    where measured) from a :func:`~engage.deploy.netem.measure.measure_link` result."""
    where = f"the link {result['src']} -> {result['dst']}"
    figures: dict[str, Any] = {"src": result["src"], "dst": result["dst"]}
    if "probe" in result:
        rtt = result["probe"].get("rtt_median_ms")
        if not isinstance(rtt, (int, float)) or not math.isfinite(rtt):
            raise SplitError(f"{where}: no probe came back, so it has no measured delay; measure it again")
        figures["delay"] = f"{rtt / 2 / 1000!r}s"
    if "stream" in result:
        goodput = result["stream"].get("goodput_bps")
        if not isinstance(goodput, (int, float)) or not goodput > 0:
            raise SplitError(f"{where}: the stream carried nothing, so it has no measured rate; measure it again")
        figures["rate"] = f"{round(goodput)}bit"
    return figures


def issue_keys(folder: str | os.PathLike[str]) -> tuple[Path, Path]:
    """A server keypair and one client keypair, written as two ``0600`` files in ``folder``
    (created ``0700``; an existing folder must be this user's alone): the tail's
    (``tail.keys``) and the head's (``head.keys``, in the online core's client key format)."""
    import zmq

    from engage.core.files import write_private
    from engage.core.online.security import private_folder

    folder = Path(folder)
    if folder.exists() and stat.S_IMODE(folder.stat().st_mode) & 0o077:
        raise SplitError(f"{folder}: others may read this folder; give a new one for the keys")
    private_folder(str(folder))
    server_public, server_secret = (k.decode() for k in zmq.curve_keypair())
    public, secret = (k.decode() for k in zmq.curve_keypair())
    tail = {"server_public": server_public, "server_secret": server_secret, "client": public}
    head = {"server": server_public, "public": public, "secret": secret}
    return (
        write_private(folder / "tail.keys", json.dumps(tail)),
        write_private(folder / "head.keys", json.dumps(head)),
    )


def read_tail_keys(path: str | os.PathLike[str]) -> dict[str, str]:
    """The tail's keys from its ``0600`` file; :class:`SplitError` (one line) otherwise."""
    try:
        keys = json.loads(read_private(path))
    except ValueError as exc:  # a file others may read, or not JSON
        raise SplitError(f"--keys: {exc}") from None
    names = ("server_public", "server_secret", "client")
    if not isinstance(keys, dict) or not all(isinstance(keys.get(k), str) and len(keys[k]) == 40 for k in names):
        raise SplitError(f"--keys: {path} needs {', '.join(names)} (Z85, 40 characters)")
    return keys


def _read_head_keys(path: str) -> dict[str, str]:
    from engage.core.online.security import KEY_FILE_ENV, load_client_keys

    try:
        keys = load_client_keys({KEY_FILE_ENV: path})
    except ValueError as exc:
        raise SplitError(f"--keys: {exc}") from None
    if keys is None:
        raise SplitError(f"--keys: {path} is empty")
    return keys


def main(argv: Sequence[str] | None = None) -> int:
    """``python -m engage.deploy.serve.split tail|head|profile SPEC``; JSON results on stdout.
    Bad input is one line and exit code 2; a head whose answers differ from the whole model's by
    more than ``--tolerance`` (the hosts built different weights) exits with 1."""

    def count(text: str) -> int:
        value = int(text)
        if value < 1:
            raise argparse.ArgumentTypeError(f"{value}: give 1 or more")
        return value

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
    head.add_argument("--requests", type=count, default=20)
    head.add_argument(
        "--warmup", type=count, default=3, help="unrecorded requests per split first, largest tensor first"
    )
    head.add_argument("--tolerance", type=float, default=1e-4, help="largest difference from the whole model's answers")
    prof = sub.add_parser("profile", help="median compute seconds on this host")
    prof.add_argument("spec")
    prof.add_argument("--repeats", type=count, default=30)
    args = parser.parse_args(argv)
    import torch
    import zmq

    prefix = f"engage.deploy.serve.split {args.command}"
    try:
        spec = SplitSpec.load(args.spec)
        torch.set_num_threads(spec.threads)
        if args.command == "profile":
            print(json.dumps(profile(spec, args.repeats)))
        elif args.command == "tail":
            server = TailServer(spec, args.bind, read_tail_keys(args.keys), port=args.port)
            import signal

            signal.signal(signal.SIGTERM, lambda *_: server.stop())
            try:
                server.serve()
            finally:
                server.close()
        else:
            unknown = [name for name in args.split if name not in spec.splits]
            if unknown:
                raise SplitError(
                    f"--split {unknown[0]}: not a split point of the spec; it has {', '.join(spec.splits)}"
                )
            client = HeadClient(spec, args.connect, _read_head_keys(args.keys))
            try:
                client.warm(args.split, args.warmup)
                results = [client.measure(name, args.requests, warmup=1) for name in args.split]
            finally:
                client.close()
            print(json.dumps(results))
            worst = max(results, key=lambda r: r["max_abs_error"])
            if worst["max_abs_error"] > args.tolerance:
                print(
                    f"{prefix}: answers through {worst['split']} differ from the whole model's by "
                    f"{worst['max_abs_error']:.3g} (tolerance {args.tolerance:g}): the hosts built different weights",
                    file=sys.stderr,
                )
                return 1
    except (SplitError, OSError) as exc:
        print(f"{prefix}: {exc}", file=sys.stderr)
        return 2
    except zmq.ZMQError as exc:
        where = "--connect" if args.command == "head" else "--bind/--port"
        print(f"{prefix}: {where}: {exc}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
