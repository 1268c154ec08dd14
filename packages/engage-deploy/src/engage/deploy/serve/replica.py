"""One inference replica: a LitServe server for a model whose weights change while it serves.

Two endpoints, both behind the replica's API key (LitServe's ``X-API-Key`` header, the key read
from a 0600 file when the replica starts), as is every other route (``/health``, ``/docs``): a
request without the key is answered 401 before its body is read:

- ``POST /predict`` with ``{"inputs": [a, b, ...]}``, each a (batch of) number arrays as nested
  lists, answers ``{"outputs": ..., "version": V, "replica": NAME}``: ``model(a, b, ...)`` with
  the weights of version ``V`` (0: the weights the model was built with);
- ``POST /weights`` with ``{"version": V, "state_dict": BASE64}`` (``torch.save`` bytes of a
  ``state_dict``) keeps version ``V`` if it is newer and fits the model (see
  :mod:`~engage.deploy.serve.weights`): 200 ``{"version": V}``, else 409 (not newer) or 400
  (does not fit), with one line saying why.

The inference worker checks, before each request, whether a newer version was kept (one
``stat``) and loads it then: versions are swapped between two requests, none is dropped. A
replica started again finds the newest version on disk and serves it from its first answer.
Bodies larger than ``max_payload_bytes`` are refused (LitServe stops reading once a body passes
it).

Run by ``engage serve`` (:mod:`~engage.deploy.serve.supervisor`), or directly::

    python -m engage.deploy.serve.replica SPEC.json
"""

from __future__ import annotations

import json
import os
import socket
import sys
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from engage.core.files import read_private, write_private

#: LitServe reads its API key from this variable when it is imported
API_KEY_ENV = "LIT_SERVER_API_KEY"
#: the header a client sends the key in
API_KEY_HEADER = "X-API-Key"
#: the header of each answer giving the seconds the replica took (its queues, worker and model)
SERVICE_TIME_HEADER = "x-engage-service-s"
#: at most this many positional inputs per request
MAX_INPUTS = 16
#: the model's names, shapes and dtypes, in the weights folder (see :mod:`~engage.deploy.serve.weights`)
SIGNATURE_FILE = "signature.json"
#: written instead by an inference worker that cannot build the model: the reason, one line
BUILD_FAILED_FILE = "build-failed.txt"
#: the newest kept version of the weights and its file, in the weights folder
CURRENT_FILE = "current.json"


@dataclass(frozen=True)
class ModelSpec:
    """How a replica builds its model: ``target`` (``package.module:Class``) called with
    ``kwargs``, or, with ``checkpoint``, ``Class.load_from_checkpoint(checkpoint)`` (a Lightning
    module's checkpoint)."""

    target: str
    kwargs: dict[str, Any] = field(default_factory=dict)
    checkpoint: str | None = None

    def build(self):
        """The model, in evaluation mode, on the CPU."""
        from engage.core.online.client import import_object

        cls = import_object(self.target)
        if self.checkpoint:
            model = cls.load_from_checkpoint(self.checkpoint, map_location="cpu")
        else:
            model = cls(**self.kwargs)
        return model.eval()


@dataclass(frozen=True)
class ReplicaSpec:
    """One replica: its ``name``, its model, its ``folder`` (weights, log, status), where it
    listens (``host``, ``port``), the 0600 file holding its API key, and the largest request body."""

    name: str
    model: ModelSpec
    folder: str
    host: str
    port: int
    api_key_file: str
    max_payload_bytes: int = 64 << 20

    @property
    def url(self) -> str:
        return f"http://{self.host}:{self.port}"

    @property
    def weights_folder(self) -> Path:
        return Path(self.folder) / "weights"

    def save(self, path: Path) -> None:
        """As JSON, readable by its owner only."""
        write_private(Path(path), json.dumps(asdict(self), indent=1))

    @classmethod
    def load(cls, path: Path) -> ReplicaSpec:
        record = json.loads(Path(path).read_text())
        return cls(**{**record, "model": ModelSpec(**record["model"])})


def read_api_key(path: str | os.PathLike[str]) -> str:
    """The key in ``path``; ``ValueError`` (one line) when others may read it or it is empty."""
    key = read_private(path).strip()
    if len(key) < 16:
        raise ValueError(f"API key file {path} holds no key of at least 16 characters")
    return key


#: the only addresses LitServe's ``run`` accepts
LITSERVE_HOSTS = ("127.0.0.1", "0.0.0.0", "::")


def current_record(weights_folder: str | os.PathLike[str]) -> dict[str, Any] | None:
    """The record of the newest version kept in ``weights_folder`` (``version``, ``file``, and
    ``run``, the training that published it, when named), or ``None`` before the first; read
    without torch."""
    try:
        record = json.loads((Path(weights_folder) / CURRENT_FILE).read_text())
        int(record["version"]), str(record["file"])
        return record
    except (FileNotFoundError, ValueError, KeyError, TypeError):
        return None


def listen_host(address: str) -> str:
    """What LitServe is told to listen on for a replica reached at ``address``: the address
    itself when LitServe takes it (loopback), else its wildcard when that is the same thing,
    i.e. ``address`` is the only non-loopback IPv4 address of this network namespace (a host of
    the ``netns`` provider: its own ``eth0`` and ``lo``). :class:`ValueError` otherwise, since the
    wildcard would expose the replica on the machine's other networks too.

    Example::

        >>> listen_host("127.0.0.1")
        '127.0.0.1'
        >>> listen_host("192.0.2.99")  # doctest: +ELLIPSIS
        Traceback (most recent call last):
        ...
        ValueError: 192.0.2.99 is not an address of this host; give one of ...
    """
    import ipaddress

    import psutil

    if address in LITSERVE_HOSTS[:1]:
        return address
    try:
        ip = ipaddress.ip_address(address)
    except ValueError:
        raise ValueError(f"{address!r} is not an IP address; give the host's own address") from None
    if ip.version != 4:
        raise ValueError(f"{address}: replicas listen on IPv4 addresses or 127.0.0.1")
    ours = {
        entry.address
        for entries in psutil.net_if_addrs().values()
        for entry in entries
        if entry.family == socket.AF_INET and not ipaddress.ip_address(entry.address).is_loopback
    }
    if ours == {address}:
        return "0.0.0.0"
    others = ", ".join(sorted(ours - {address})) or "none"
    raise ValueError(
        f"{address}: LitServe listens on 0.0.0.0, 127.0.0.1 or :: only, and 0.0.0.0 here would also listen on "
        f"{others}; serve on 127.0.0.1, or from a host with one address of its own (a netns host)"
        if address in ours
        else f"{address} is not an address of this host; give one of {', '.join(sorted(ours)) or '127.0.0.1'}"
    )


def build_server(spec: ReplicaSpec):
    """The LitServe server of ``spec``. Its key must be in the environment first
    (:data:`API_KEY_ENV`): LitServe reads it when imported, here."""
    import litserve as ls

    from engage.deploy.serve.apis import InferenceAPI, RequireKey, ServiceTime, WeightsAPI

    return ls.LitServer(
        [InferenceAPI(spec, api_path="/predict"), WeightsAPI(spec, api_path="/weights")],
        accelerator="cpu",
        devices=1,
        workers_per_device=1,
        max_payload_size=spec.max_payload_bytes,
        timeout=60,
        restart_workers=True,  # a worker that dies is started again by LitServe itself
        middlewares=[ServiceTime, (RequireKey, {"key": os.environ[API_KEY_ENV]})],
    )


def main(argv: list[str] | None = None) -> int:
    """Serve the replica described by the JSON file in ``argv`` until stopped."""
    argv = sys.argv[1:] if argv is None else argv
    if len(argv) != 1:
        print("usage: python -m engage.deploy.serve.replica SPEC.json", file=sys.stderr)
        return 2
    try:
        spec = ReplicaSpec.load(Path(argv[0]))
        os.environ[API_KEY_ENV] = read_api_key(spec.api_key_file)
    except (OSError, ValueError, KeyError, TypeError) as exc:
        print(f"engage replica: {argv[0]}: {getattr(exc, 'strerror', None) or exc}", file=sys.stderr)
        return 2
    try:
        host = listen_host(spec.host)
    except ValueError as exc:
        print(f"engage replica: {exc}", file=sys.stderr)
        return 2
    # the weights worker waits for this start's inference worker to write the model's signature
    (spec.weights_folder / SIGNATURE_FILE).unlink(missing_ok=True)
    (spec.weights_folder / BUILD_FAILED_FILE).unlink(missing_ok=True)
    server = build_server(spec)
    # the replica's own address only; no client file written into the working folder
    server.run(host=host, port=spec.port, num_api_servers=1, generate_client_file=False)
    return 0


if __name__ == "__main__":
    sys.exit(main())
