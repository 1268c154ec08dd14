"""A replica's weights, versioned on disk.

Each version the trainer publishes is one file, ``v<version>.pt`` (a ``state_dict`` saved by
``torch.save``), and ``current.json`` names the newest; both are replaced atomically, so a reader
sees a whole version or the one before. Versions only grow (the trainer's optimizer step): an
older or equal one is refused. A version is kept only when it loads with ``weights_only=True``
(no code runs) and matches the model's parameter names, shapes and dtypes exactly. The two
newest versions are kept, older ones removed.

The model's names, shapes and dtypes (its :func:`signature`) are what a version is checked
against. The replica's inference worker, which builds the model, writes them beside the versions
(:func:`write_signature`); its weights worker reads them (:func:`wait_for_signature`) instead of
building the model, and so never imports the model's code.

Example::

    >>> import io, tempfile, torch
    >>> from pathlib import Path
    >>> model = torch.nn.Linear(2, 1)
    >>> store = WeightStore(Path(tempfile.mkdtemp()) / "weights", signature(model.state_dict()))
    >>> buffer = io.BytesIO(); torch.save(model.state_dict(), buffer)
    >>> store.publish(7, buffer.getvalue())
    7
    >>> store.current()[0]
    7
"""

from __future__ import annotations

import io
import json
import time
from collections.abc import Mapping
from pathlib import Path

import torch

from engage.core.files import write_private
from engage.deploy.serve.replica import BUILD_FAILED_FILE, CURRENT_FILE, SIGNATURE_FILE, current_record

#: parameter or buffer name -> (shape, dtype name such as ``float32``)
Signature = dict[str, tuple[tuple[int, ...], str]]


def signature(state_dict: Mapping[str, torch.Tensor]) -> Signature:
    """The names, shapes and dtypes of ``state_dict``."""
    return {name: (tuple(t.shape), str(t.dtype).removeprefix("torch.")) for name, t in state_dict.items()}


def write_signature(folder: Path, model_signature: Signature) -> None:
    """Keep ``model_signature`` in ``folder`` (0600, whole or not at all)."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    record = {name: [list(shape), dtype] for name, (shape, dtype) in model_signature.items()}
    write_private(folder / SIGNATURE_FILE, json.dumps(record))


def write_build_failure(folder: Path, reason: str) -> None:
    """Say in ``folder`` that the model could not be built (``reason``, one line), so that the
    weights worker waiting for the signature stops at once."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    write_private(folder / BUILD_FAILED_FILE, reason)


def wait_for_signature(folder: Path, timeout_s: float) -> Signature:
    """The signature written in ``folder``, waiting up to ``timeout_s`` for it to appear;
    :class:`TimeoutError` naming the file otherwise, and :class:`RuntimeError` with the inference
    worker's reason as soon as it says it cannot build the model."""
    path = Path(folder) / SIGNATURE_FILE
    failed = Path(folder) / BUILD_FAILED_FILE
    deadline = time.monotonic() + timeout_s
    while True:
        try:
            record = json.loads(path.read_text())
            return {name: (tuple(shape), str(dtype)) for name, (shape, dtype) in record.items()}
        except FileNotFoundError:
            if failed.exists():
                raise RuntimeError(f"the inference worker cannot build the model: {failed.read_text()}") from None
            if time.monotonic() > deadline:
                raise TimeoutError(f"{path} was not written within {timeout_s:g} s by the inference worker") from None
            time.sleep(0.05)


class WeightsRefused(ValueError):
    """A published version was not kept; the message says why in one line. ``stale``: it was
    not newer than the current one of its training; ``superseded``: its training was replaced on
    this replica by a newer one (the others do not fit the model)."""

    def __init__(self, message: str, stale: bool = False, superseded: bool = False):
        super().__init__(message)
        self.stale = stale
        self.superseded = superseded


def serialize(state_dict: Mapping[str, torch.Tensor]) -> bytes:
    """``state_dict`` as the bytes :meth:`WeightStore.publish` takes (tensors on the CPU)."""
    buffer = io.BytesIO()
    torch.save({k: v.detach().cpu() for k, v in state_dict.items()}, buffer)
    return buffer.getvalue()


class WeightStore:
    """The versions of one replica's weights in ``folder`` (made 0700), checked against the
    model's :func:`signature`."""

    def __init__(self, folder: Path, model_signature: Signature):
        self.folder = Path(folder)
        self.folder.mkdir(parents=True, exist_ok=True)
        self.folder.chmod(0o700)
        self._signature = dict(model_signature)
        #: the training that published the version :meth:`load` read last (``None``: none, or unnamed)
        self.loaded_run: str | None = None

    @property
    def current_file(self) -> Path:
        return self.folder / CURRENT_FILE

    def stamp(self) -> tuple[int, int]:
        """A value that changes whenever a new version is kept (cheap: one ``stat``; each version
        replaces ``current.json`` by a new file, so its inode changes even within one clock tick)."""
        try:
            status = self.current_file.stat()
        except FileNotFoundError:
            return (0, 0)
        return (status.st_ino, status.st_mtime_ns)

    def current(self) -> tuple[int, Path] | None:
        """The newest kept version and its file, or None before the first."""
        return self._current(current_record(self.folder))

    def current_run(self) -> str | None:
        """The training that published the current version (``None``: before the first, or unnamed)."""
        return _run(current_record(self.folder))

    def _current(self, record: dict | None) -> tuple[int, Path] | None:
        return None if record is None else (int(record["version"]), self.folder / str(record["file"]))

    def load(self) -> tuple[int, dict[str, torch.Tensor]] | None:
        """The newest version and its tensors (read again if a newer one replaced it meanwhile)."""
        for _ in range(5):
            record = current_record(self.folder)  # read once: the version and the training behind it
            current = self._current(record)
            if current is None:
                return None
            version, path = current
            try:
                state = torch.load(path, map_location="cpu", weights_only=True)
            except FileNotFoundError:
                continue  # removed by a newer version between the two reads
            self.loaded_run = _run(record)
            return version, state
        raise OSError(f"weights in {self.folder} keep changing while being read")

    def check(self, state: object) -> dict[str, torch.Tensor]:
        """``state`` if it is a state dict of this model; :class:`WeightsRefused` naming the first
        difference otherwise."""
        if not isinstance(state, dict) or not all(isinstance(v, torch.Tensor) for v in state.values()):
            raise WeightsRefused("weights must be a state_dict: a mapping of names to tensors")
        missing = sorted(set(self._signature) - set(state))
        unexpected = sorted(set(state) - set(self._signature))
        if missing or unexpected:
            raise WeightsRefused(f"weights do not fit the model: missing {missing[:3]}, unexpected {unexpected[:3]}")
        for name, (shape, dtype) in signature(state).items():
            if (shape, dtype) != self._signature[name]:
                want_shape, want_dtype = self._signature[name]
                raise WeightsRefused(
                    f"weights do not fit the model: {name} is {shape} torch.{dtype}, "
                    f"the model's is {want_shape} torch.{want_dtype}"
                )
        for name, tensor in state.items():
            if tensor.is_floating_point() and not bool(torch.isfinite(tensor).all()):
                raise WeightsRefused(
                    f"weights hold NaN or infinite values in {name}: a diverged training is not served"
                )
        return state

    def publish(self, version: int, payload: bytes, run: str | None = None) -> int:
        """Keep ``payload`` (see :func:`serialize`) as ``version`` of the training ``run``; returns
        it. :class:`WeightsRefused` if it does not fit, or if it is not newer than the current one
        of the same training: versions (optimizer steps) are ordered within one training, and a
        new training's first version replaces what an earlier one left, whatever its number; the
        earlier training's versions are refused from then on (two trainings publishing to one
        replica do not take turns). Weights that hold NaN or infinite values are refused."""
        version = int(version)
        record = current_record(self.folder)  # read once: the version and the training behind it
        current = self._current(record)
        same_training = run is None or run == _run(record)
        if current is not None and same_training and version <= current[0]:
            raise WeightsRefused(f"version {version} is not newer than the replica's {current[0]}", stale=True)
        superseded = _superseded(record)
        if run is not None and run in superseded:
            # two trainings publishing to one replica would otherwise take turns, its answers going back
            raise WeightsRefused(
                f"training {run[:8]} was replaced on this replica by a newer training ({(_run(record) or '')[:8]}); "
                f"its versions are no longer taken: serve it from a replica of its own (a folder other than "
                f"{self.folder.parent})",
                superseded=True,
            )
        if current is not None and not same_training and _run(record) is not None:
            superseded = [*superseded, _run(record)][-SUPERSEDED_KEPT:]
        try:
            state = torch.load(io.BytesIO(payload), map_location="cpu", weights_only=True)
        except Exception as exc:  # any unreadable payload: pickle, zip or torch errors
            raise WeightsRefused(f"weights cannot be read with weights_only=True ({type(exc).__name__})") from None
        self.check(state)
        name = f"v{version}.pt"
        record = {"version": version, "file": name, **({"run": run} if run is not None else {})}
        if superseded:
            record["superseded"] = superseded
        if current is not None and current[1].name == name:  # another training's version of the same number
            name = f"v{version}-{run}.pt"
            record["file"] = name
        self._write(self.folder / name, payload)
        self._write(self.current_file, json.dumps(record).encode())
        for old in self.folder.glob("v*.pt"):
            if old.name != name and (current is None or old.name != current[1].name):
                old.unlink(missing_ok=True)
        return version

    @staticmethod
    def _write(path: Path, data: bytes) -> None:
        # on disk before it is named: a crash leaves no half file behind the name
        write_private(path, data, durable=True)


#: the trainings a replica remembers it moved away from (their versions are refused)
SUPERSEDED_KEPT = 16


def _superseded(record: dict | None) -> list[str]:
    runs = record.get("superseded") if record is not None else None
    return [r for r in runs if isinstance(r, str)] if isinstance(runs, list) else []


def _run(record: dict | None) -> str | None:
    run = record.get("run") if record is not None else None
    return run if isinstance(run, str) else None
