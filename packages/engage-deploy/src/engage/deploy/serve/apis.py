"""The replica's two LitServe endpoints (see :mod:`~engage.deploy.serve.replica`). Imported only in
a replica's processes, once its API key is in the environment: LitServe reads it on import.

Only the inference worker builds the model (and imports its code); it writes the model's
signature for the weights worker, which checks versions against it. The replica's own process
imports neither torch nor the model: it only starts the workers."""

from __future__ import annotations

import base64
import binascii
import hmac
import logging
import math
import re
import time
from typing import TYPE_CHECKING, Any

import litserve as ls
from fastapi import HTTPException

from engage.deploy.serve.replica import API_KEY_HEADER, MAX_INPUTS, SERVICE_TIME_HEADER, ReplicaSpec

if TYPE_CHECKING:
    import torch

#: how long the weights worker waits for the inference worker to write the model's signature
SIGNATURE_TIMEOUT_S = 120.0

log = logging.getLogger("engage.deploy.serve")


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip()
    return (text.splitlines()[0] if text else type(exc).__name__)[:200]


class InferenceAPI(ls.LitAPI):
    """``/predict``: the model's outputs and the version of the weights behind them."""

    def __init__(self, replica: ReplicaSpec, **kwargs) -> None:
        super().__init__(**kwargs)
        self.replica = replica

    def setup(self, device: str) -> None:
        from engage.deploy.serve.weights import WeightStore, signature, write_build_failure, write_signature

        try:
            self.model = self.replica.model.build()
        except Exception as exc:  # the user's class: the weights worker stops waiting, with the reason
            write_build_failure(self.replica.weights_folder, f"{type(exc).__name__}: {_first_line(exc)}")
            raise
        model_signature = signature(self.model.state_dict())
        write_signature(self.replica.weights_folder, model_signature)
        self.store = WeightStore(self.replica.weights_folder, model_signature)
        self.version, self.stamp = 0, (-1, -1)
        self.run: str | None = None  # the training behind the version (None: before its first weights)
        self._refresh()

    def _refresh(self) -> None:
        """Load the newest kept version if it changed since the last request (one ``stat``)."""
        stamp = self.store.stamp()
        if stamp == self.stamp:
            return
        self.stamp = stamp
        try:
            loaded = self.store.load()
        except Exception as exc:  # a version that cannot be read: the current one keeps serving
            log.warning("replica %s keeps version %d: %s", self.replica.name, self.version, _first_line(exc))
            return
        if loaded is not None:
            version, state = loaded
            self.model.load_state_dict(state, strict=True)
            self.version, self.run = version, self.store.loaded_run

    def decode_request(self, request: dict) -> list[torch.Tensor]:
        import torch

        inputs = request.get("inputs") if isinstance(request, dict) else None
        if not isinstance(inputs, list) or not 1 <= len(inputs) <= MAX_INPUTS:
            raise HTTPException(400, f'a request is {{"inputs": [...]}} with 1 to {MAX_INPUTS} arrays')
        try:
            tensors = [torch.as_tensor(x, dtype=torch.float32) for x in inputs]
        except (TypeError, ValueError, RuntimeError) as exc:
            raise HTTPException(400, f"inputs must be arrays of numbers ({_first_line(exc)})") from None
        if not all(bool(torch.isfinite(t).all()) for t in tensors):
            raise HTTPException(400, "inputs must be finite numbers (NaN and infinities are refused)")
        return tensors

    def predict(self, inputs: list[torch.Tensor]) -> tuple[torch.Tensor, int, str | None]:
        import torch

        self._refresh()
        with torch.inference_mode():
            try:
                outputs = self.model(*inputs)
            except (TypeError, ValueError, RuntimeError, IndexError) as exc:
                # shapes and dtypes the model cannot take (torch says so with these four)
                raise HTTPException(400, f"the model refused the inputs ({_first_line(exc)})") from None
        # an answer is bounded as a request is: a small request may ask for a huge one (many rows)
        numbers, size = _json_size(outputs)
        if size > self.replica.max_payload_bytes:
            size_mib, limit_mib = size / 2**20, self.replica.max_payload_bytes / 2**20
            raise HTTPException(
                413,
                f"the answer would hold {numbers} numbers, up to {size_mib:.1f} MiB of JSON, over the replica's "
                f"{limit_mib:g} MiB; send fewer inputs a request",
            )
        return outputs, self.version, self.run

    def encode_response(self, output: tuple[torch.Tensor, int, str | None]) -> dict:
        outputs, version, run = output
        # the training too: a replica kept across trainings numbers each one's versions from its start
        return {"outputs": _plain(outputs), "version": version, "run": run, "replica": self.replica.name}


#: what one number of an answer may take in JSON, by kind: a float as Python writes it
#: (``-1.2345678901234567e-05, ``), a 64-bit integer, a boolean (``false, ``)
JSON_BYTES = {"float": 25, "int": 22, "bool": 7}


def _json_size(value: Any) -> tuple[int, int]:
    """How many numbers a model's output holds (tensors and NumPy arrays, and tuples, lists and
    mappings of them), and the most bytes they may take in JSON."""
    if hasattr(value, "dtype") and hasattr(value, "shape"):
        count = int(math.prod(value.shape))
        kind = str(value.dtype)
        per = JSON_BYTES["bool"] if "bool" in kind else JSON_BYTES["float"] if "float" in kind else JSON_BYTES["int"]
        return count, count * per
    if isinstance(value, (list, tuple)):
        parts = [_json_size(v) for v in value]
    elif isinstance(value, dict):
        parts = [_json_size(v) for v in value.values()]
    else:
        return 1, JSON_BYTES["float"]
    return sum(n for n, _ in parts), sum(b for _, b in parts)


def _plain(value: Any) -> Any:
    """A model's output as JSON values: tensors as nested lists, tuples (an LSTM's ``(output, (h,
    c))``), lists and mappings of them alike; non-finite numbers as null."""
    if hasattr(value, "tolist"):
        value = value.tolist()
    if isinstance(value, (list, tuple)):
        return [_plain(v) for v in value]
    if isinstance(value, dict):
        return {str(k): _plain(v) for k, v in value.items()}
    if isinstance(value, float) and not math.isfinite(value):
        return None
    return value


#: the largest version a replica takes (a trainer's step count stays far below)
MAX_VERSION = 2**53
#: a training's id (:attr:`~engage.deploy.callbacks.PublishWeights.run_id`)
RUN_ID = re.compile(r"[0-9a-f]{32}")


class WeightsAPI(ls.LitAPI):
    """``/weights``: keep a newer version that fits the model (see :class:`WeightStore`)."""

    def __init__(self, replica: ReplicaSpec, **kwargs) -> None:
        super().__init__(**kwargs)
        self.replica = replica

    def setup(self, device: str) -> None:
        from engage.deploy.serve.weights import WeightStore, wait_for_signature

        # written by this start's inference worker (the replica removes an earlier one first)
        model_signature = wait_for_signature(self.replica.weights_folder, SIGNATURE_TIMEOUT_S)
        self.store = WeightStore(self.replica.weights_folder, model_signature)

    def decode_request(self, request: dict) -> tuple[int, bytes, str | None]:
        try:
            version = request["version"]
            payload = base64.b64decode(request["state_dict"], validate=True)
        except (KeyError, TypeError, ValueError, binascii.Error):
            raise HTTPException(400, 'weights are {"version": int, "state_dict": base64 of torch.save bytes}') from None
        # a whole number a trainer's step can reach: one version far ahead would lock every later one out
        if isinstance(version, bool) or not isinstance(version, int) or not 0 <= version <= MAX_VERSION:
            raise HTTPException(400, f"version is {version!r}; give a whole number from 0 to {MAX_VERSION}")
        run = request.get("run")
        if run is not None and not (isinstance(run, str) and RUN_ID.fullmatch(run)):
            raise HTTPException(400, "run is the training's id: 32 hexadecimal digits")
        return version, payload, run

    def predict(self, request: tuple[int, bytes, str | None]) -> int:
        from engage.deploy.serve.weights import WeightsRefused

        version, payload, run = request
        try:
            return self.store.publish(version, payload, run)
        except WeightsRefused as exc:
            # 409: it has this version or a newer one; 410: it serves another training now
            raise HTTPException(409 if exc.stale else 410 if exc.superseded else 400, str(exc)) from None

    def encode_response(self, version: int) -> dict:
        return {"version": version, "replica": self.replica.name}


class RequireKey:
    """ASGI middleware: a request without the replica's key in :data:`API_KEY_HEADER` is answered
    401 before any of its body is read or any route (``/docs`` and ``/openapi.json`` included)
    sees it; the key is compared in constant time."""

    def __init__(self, app: Any, key: str) -> None:
        self.app = app
        self.key = key.encode()

    async def __call__(self, scope: dict, receive: Any, send: Any) -> None:
        if scope["type"] == "http":
            given = dict(scope.get("headers") or ()).get(API_KEY_HEADER.lower().encode(), b"")
            if not hmac.compare_digest(given, self.key):
                body = b'{"detail":"give the replica\'s API key in the X-API-Key header"}'
                headers = [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode())]
                await send({"type": "http.response.start", "status": 401, "headers": headers})
                await send({"type": "http.response.body", "body": body})
                return
        await self.app(scope, receive, send)


class ServiceTime:
    """ASGI middleware: each answer says, in :data:`SERVICE_TIME_HEADER`, the seconds the replica
    took from the request's arrival in its application to the answer's first bytes (its queues,
    worker and the model): what a client's latency holds besides the network."""

    def __init__(self, app: Any) -> None:
        self.app = app

    async def __call__(self, scope: dict, receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        started = time.perf_counter()

        async def timed(message: dict) -> None:
            if message["type"] == "http.response.start":
                took = f"{time.perf_counter() - started:.6f}".encode()
                message = {**message, "headers": [*message.get("headers", []), (SERVICE_TIME_HEADER.encode(), took)]}
            await send(message)

        await self.app(scope, receive, timed)
