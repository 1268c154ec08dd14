"""Send the weights being trained to inference replicas (``engage serve``)."""

from __future__ import annotations

import base64
import http.client
import json
import logging
import threading
import time
import urllib.error
import urllib.parse
import urllib.request
import uuid
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TypeVar

import lightning.pytorch as pl
import torch

T = TypeVar("T")
log = logging.getLogger("engage.deploy.serve")


@dataclass(frozen=True)
class Publication:
    """One version sent to one replica: ``status`` is the HTTP status (0: no answer)."""

    version: int
    replica: str
    status: int
    seconds: float
    detail: str = ""


class PublishWeights(pl.Callback):
    """Publish the model's weights to every replica in ``replicas`` (their base URLs) every
    ``every_n_steps`` optimizer steps, when the validation metric ``monitor`` improves
    (``mode`` ``min`` or ``max``), and when training ends.

    A version is the trainer's ``global_step``; replicas swap it in between two requests and name
    it in each answer. Under data parallelism the first rank sends them. The weights are copied
    to the CPU on the training thread at that step and sent from a background thread: training
    does not wait for the network, and when sending falls behind, only the newest version
    waiting is sent. As training starts, every replica must answer HTTP (for up to ``timeout_s``)
    and take the key, or the training fails in one line. Later, a replica that does not answer is
    warned about (once a minute) and counted; one that refuses the API key (401, 403) stops the
    training with that one line, since every later version would be refused too. When training
    ends, the last version is sent again, once a second for up to ``timeout_s``, to each replica
    that did not take it (one its supervisor is starting again); a replica that still lacks it
    would serve an older model than the one trained, and fails the training with one line naming
    it, raised in ``teardown`` so that what was served is recorded first. The counts (versions
    sent, failures) are logged as ``serve/published_version`` and ``serve/publish_failures``, and
    :attr:`publications` keeps every attempt.

    The key comes from ``api_key`` or the 0600 file ``api_key_file`` (the replicas' own).
    Replicas started later (a placement that changes while serving) are added with
    :meth:`add_replica` and dropped with :meth:`remove_replica`; ``replicas`` may then start empty.

    Example::

        >>> from engage.deploy.callbacks import PublishWeights
        >>> callback = PublishWeights(["http://127.0.0.1:8100"], api_key="k" * 32, every_n_steps=50)
        >>> callback.every_n_steps
        50
    """

    def __init__(
        self,
        replicas: Sequence[str],
        api_key: str | None = None,
        api_key_file: str | Path | None = None,
        every_n_steps: int | None = 50,
        monitor: str | None = None,
        mode: str = "min",
        timeout_s: float = 30.0,
    ) -> None:
        if every_n_steps is not None and every_n_steps < 1:
            raise ValueError(f"every_n_steps must be >= 1 or None, got {every_n_steps}")
        if mode not in ("min", "max"):
            raise ValueError(f"mode must be 'min' or 'max', got {mode!r}")
        if (api_key is None) == (api_key_file is None):
            raise ValueError("give api_key or api_key_file (the replicas' key), one of them")
        if not (isinstance(timeout_s, (int, float)) and 0 < timeout_s < float("inf")):
            raise ValueError(f"timeout_s must be a number of seconds > 0, got {timeout_s!r}")
        if isinstance(replicas, str):
            raise ValueError(f"replicas: give a list of the replicas' base URLs, like [{replicas!r}], not one string")
        for url in replicas:
            if not (isinstance(url, str) and url.startswith(("http://", "https://")) and _host_port(url)):
                raise ValueError(
                    f"replicas: {url!r} is not a replica's URL; give its base URL, like http://127.0.0.1:8100"
                )
        if api_key_file is not None:
            from engage.deploy.serve.replica import read_api_key

            api_key = read_api_key(api_key_file)
        self.replicas = [url.rstrip("/") for url in replicas]
        #: this training's id, sent with each version and kept in checkpoints: a replica orders
        #: versions within one training, and takes a new training's first version whatever its number
        self.run_id = uuid.uuid4().hex
        self.every_n_steps = every_n_steps
        self.monitor = monitor
        self.mode = mode
        self.timeout_s = timeout_s
        self.publications: list[Publication] = []
        self._key = str(api_key)
        self._best: float | None = None
        self._last_version = -1
        self._pending: tuple[int, dict[str, torch.Tensor]] | None = None
        self._logged = 0
        self._fatal: str | None = None
        self._last_warning = 0.0
        self._lock = threading.Condition()
        self._closed = False
        self._thread: threading.Thread | None = None
        self._last_sent: tuple[int, bytes] | None = None
        #: why the training's end fails (raised in ``teardown``), if it does
        self._failure: str | None = None

    def add_replica(self, url: str) -> Publication | None:
        """Publish to ``url`` from now on, starting with the newest version sent so far (sent
        from the caller's thread; its :class:`Publication`, ``None`` when none was sent yet)."""
        url = url.rstrip("/")
        with self._lock:
            if url not in self.replicas:
                self.replicas.append(url)
            last = self._last_sent
        if last is None:
            return None
        publication = self._send(url, *last)
        self.publications.append(publication)
        return publication

    def remove_replica(self, url: str) -> None:
        """Publish to ``url`` no more (a replica being stopped)."""
        with self._lock:
            self.replicas = [r for r in self.replicas if r != url.rstrip("/")]

    # ------------------------------------------------------------------ Lightning hooks

    def on_train_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if trainer.is_global_zero:
            self._check_replicas()
        self._closed = False
        self._thread = threading.Thread(target=self._send_loop, name="engage-publish-weights", daemon=True)
        self._thread.start()

    def _check_replicas(self) -> None:
        """Every replica answers HTTP as training starts (asked at once, for up to ``timeout_s``),
        and takes the key: an address mistyped, or the key of other replicas, fails the training
        now in one line rather than at its end."""
        from engage.deploy.serve.replica import API_KEY_HEADER
        from engage.deploy.serving import ServingError

        def answers(replica: str) -> tuple[int | None, str]:
            deadline = time.monotonic() + self.timeout_s
            while True:
                request = urllib.request.Request(f"{replica}/health", headers={API_KEY_HEADER: self._key})
                try:
                    with urllib.request.urlopen(request, timeout=max(1.0, deadline - time.monotonic())) as response:
                        return response.status, ""
                except urllib.error.HTTPError as exc:
                    return exc.code, ""  # an HTTP server answered
                except (OSError, http.client.HTTPException) as exc:
                    why = getattr(exc, "reason", None) or f"{type(exc).__name__}: {exc}"
                    if time.monotonic() + 1.0 >= deadline:
                        return None, str(why)
                    time.sleep(1.0)

        with self._lock:
            replicas = list(self.replicas)
        results = _at_once(answers, replicas, self.timeout_s + 5.0)
        for replica in replicas:
            status, why = results.get(replica, (None, f"no answer within {self.timeout_s:g} s"))
            if status is None:
                raise ServingError(
                    f"replica {replica} does not answer HTTP as training starts ({' '.join(why.split())[:200]}); "
                    "check replicas= (each replica's base URL, such as http://127.0.0.1:8100)"
                )
            if status in (401, 403):
                raise ServingError(f"replica {replica} refused the API key (HTTP {status}); give the replicas' key")

    def on_train_batch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule, *args: object) -> None:
        self._check()
        step = trainer.global_step
        if self.every_n_steps and step and step % self.every_n_steps == 0:
            self._offer(step, pl_module)
        self._log(trainer)

    def on_validation_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if self.monitor is None or trainer.sanity_checking or self.monitor not in trainer.callback_metrics:
            return
        value = float(trainer.callback_metrics[self.monitor])
        better = self._best is None or (value < self._best if self.mode == "min" else value > self._best)
        if better:
            self._best = value
            self._offer(trainer.global_step, pl_module)

    def on_train_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self._offer(trainer.global_step, pl_module)
        self.close()
        self._log(trainer)
        self._check()
        self._failure = None
        attempts = [p for p in self.publications if p.status != 409]
        if attempts and not any(p.status == 200 for p in attempts):
            last = attempts[-1]
            self._failure = (
                f"no replica took any version of the weights ({len(attempts)} attempt{'s' * (len(attempts) != 1)}; "
                f"the last, to {last.replica}: {_why(last)})"
            )
            return
        started = time.monotonic()
        stale = self._send_last_again()
        self._log(trainer)  # the publications sent again too
        if stale:
            first = stale[0]
            self._failure = (
                f"{len(stale)} of {len(self.replicas)} replicas do not serve the last version of the weights "
                f"(version {first.version}), sent again for {time.monotonic() - started:.0f} s; "
                f"{first.replica}: {_why(first)}"
            )

    def teardown(self, trainer: pl.Trainer, pl_module: pl.LightningModule, stage: str) -> None:
        # the training's end fails here, once what was served is recorded (ServeWhileTraining's
        # teardown, before this one), not in on_train_end, which would leave it unrecorded
        failure, self._failure = self._failure, None
        if stage == "fit" and failure is not None:
            from engage.deploy.serving import ServingError

            raise ServingError(failure)

    def state_dict(self) -> dict[str, object]:
        return {"run_id": self.run_id, "best": self._best}

    def load_state_dict(self, state_dict: dict[str, object]) -> None:
        # a resumed training goes on with its versions: a replica refuses those it already has
        self.run_id = str(state_dict.get("run_id", self.run_id))
        best = state_dict.get("best")
        self._best = None if best is None else float(best)  # type: ignore[arg-type]

    def on_exception(self, trainer: pl.Trainer, pl_module: pl.LightningModule, exception: BaseException) -> None:
        self.close(wait=False)

    # ------------------------------------------------------------------ sending

    @property
    def failures(self) -> int:
        """Attempts no replica accepted: no answer, or an error other than a stale version."""
        return sum(1 for p in self.publications if p.status != 200 and p.status != 409)

    def _send_last_again(self) -> list[Publication]:
        """Send the last version sent again to the replicas that did not take it (one being
        started again by its supervisor answers within seconds), once a second for up to
        ``timeout_s``; the last failed publication of each replica that still lacks it."""
        if self._last_sent is None:
            return []
        version, body = self._last_sent
        deadline = time.monotonic() + self.timeout_s
        while True:
            with self._lock:
                replicas = list(self.replicas)
            missing = [r for r in replicas if not any(_took(p, r, version) for p in self.publications)]
            if not missing or time.monotonic() + 1.0 >= deadline:
                break
            time.sleep(1.0)
            # at once to every replica that lacks it, within what is left of timeout_s
            self.publications.extend(self._send_all(missing, version, body, max(1.0, deadline - time.monotonic())))
        return [next(p for p in reversed(self.publications) if p.replica == r) for r in missing]

    def close(self, wait: bool = True) -> None:
        """Send what waits (with ``wait``, at most ``timeout_s`` per replica) and stop the sender."""
        with self._lock:
            self._closed = True
            self._lock.notify_all()
        if wait and self._thread is not None:
            self._thread.join(self.timeout_s * len(self.replicas) + 5)

    def _offer(self, version: int, pl_module: pl.LightningModule) -> None:
        # under data parallelism every rank holds the same weights: the first one sends them
        if version <= self._last_version or not pl_module.trainer.is_global_zero:
            return
        self._last_version = version
        snapshot = {k: v.detach().to("cpu", copy=True) for k, v in pl_module.state_dict().items()}
        diverged = [k for k, v in snapshot.items() if v.is_floating_point() and not bool(torch.isfinite(v).all())]
        if diverged:
            # a diverged training never replaces the model the replicas serve
            self._warn(f"version {version} not published: {diverged[0]} holds NaN or infinite values", failure=False)
            return
        with self._lock:
            self._pending = (version, snapshot)  # a version still waiting is replaced by the newer one
            self._lock.notify_all()

    def _send_loop(self) -> None:
        from engage.deploy.serve.weights import serialize

        while True:
            with self._lock:
                while self._pending is None and not self._closed:
                    self._lock.wait()
                if self._pending is None:
                    return
                version, snapshot = self._pending
                self._pending = None
            state = base64.b64encode(serialize(snapshot)).decode()
            text = json.dumps({"version": version, "run": self.run_id, "state_dict": state})
            body = text.encode()  # once, for every replica and those added later
            with self._lock:
                self._last_sent = (version, body)
                replicas = list(self.replicas)
            self.publications.extend(self._send_all(replicas, version, body))

    def _send_all(
        self, replicas: Sequence[str], version: int, body: bytes, timeout_s: float | None = None
    ) -> list[Publication]:
        """:meth:`_send` to every replica at once, from daemon threads (one hung replica holds
        none of the others back, nor this process's exit); a replica still silent past the
        timeout is a failed publication."""
        timeout_s = timeout_s or self.timeout_s
        started = time.perf_counter()
        results = _at_once(lambda replica: self._send(replica, version, body, timeout_s), replicas, timeout_s + 5.0)
        silent = f"no answer within {timeout_s:g} s"
        return [results.get(r) or Publication(version, r, 0, time.perf_counter() - started, silent) for r in replicas]

    def _send(self, replica: str, version: int, body: bytes, timeout_s: float | None = None) -> Publication:
        from engage.deploy.serve.replica import API_KEY_HEADER

        request = urllib.request.Request(
            f"{replica}/weights",
            data=body,
            headers={API_KEY_HEADER: self._key, "Content-Type": "application/json"},
            method="POST",
        )
        started = time.perf_counter()
        try:
            with urllib.request.urlopen(request, timeout=timeout_s or self.timeout_s) as response:
                return Publication(version, replica, response.status, time.perf_counter() - started)
        except urllib.error.HTTPError as exc:
            detail = exc.read(500).decode(errors="replace")
            if exc.code in (401, 403):
                self._fatal = f"replica {replica} refused the API key (HTTP {exc.code}); give the replicas' key"
            elif exc.code != 409:
                self._warn(f"replica {replica} refused version {version} (HTTP {exc.code}: {detail[:200]})")
            return Publication(version, replica, exc.code, time.perf_counter() - started, detail)
        except (OSError, ValueError, http.client.HTTPException) as exc:
            # no answer, or not HTTP (another service at that address), or an address urllib cannot use
            why = getattr(exc, "reason", None) or f"{type(exc).__name__}: {exc}"
            self._warn(f"replica {replica} did not take version {version} ({why})")
            return Publication(version, replica, 0, time.perf_counter() - started, str(why))

    def _warn(self, message: str, failure: bool = True) -> None:
        now = time.monotonic()
        if now - self._last_warning >= 60:
            self._last_warning = now
            counted = f" ({self.failures + 1} failures so far)" if failure else ""
            log.warning("PublishWeights: %s%s", message, counted)

    def _check(self) -> None:
        if self._fatal:
            from engage.deploy.serving import ServingError

            raise ServingError(self._fatal)

    def _log(self, trainer: pl.Trainer) -> None:
        if trainer.logger is None or len(self.publications) == self._logged:
            return
        self._logged = len(self.publications)
        accepted = [p.version for p in self.publications if p.status == 200]
        metrics = {"serve/publish_failures": float(self.failures)}
        if accepted:
            metrics["serve/published_version"] = float(max(accepted))
        trainer.logger.log_metrics(metrics, step=trainer.global_step)


def _at_once(call: Callable[[str], T], replicas: Sequence[str], wait_s: float) -> dict[str, T]:
    """``call(replica)`` for every replica at once, from daemon threads (one that hangs holds
    neither the others nor this process's exit); the results of the calls that returned within
    ``wait_s``."""
    results: dict[str, T] = {}
    threads = [
        threading.Thread(
            target=lambda r: results.__setitem__(r, call(r)), args=(r,), name="engage-publish", daemon=True
        )
        for r in replicas
    ]
    for thread in threads:
        thread.start()
    deadline = time.monotonic() + wait_s
    for thread in threads:
        thread.join(max(0.0, deadline - time.monotonic()))
    return dict(results)


def _took(publication: Publication, replica: str, version: int) -> bool:
    """Whether ``publication`` left ``replica`` serving ``version`` or a newer one (409: it had it)."""
    return publication.replica == replica and publication.version >= version and publication.status in (200, 409)


def _why(publication: Publication) -> str:
    """What a failed publication was told, in one line: the HTTP status and body, or the error."""
    detail = " ".join(publication.detail.split())[:200]
    if publication.status:
        return f"HTTP {publication.status}" + (f": {detail}" if detail else "")
    return detail or "no answer"


def _host_port(url: str) -> bool:
    """Whether ``url`` names a host (and a valid port, if any)."""
    try:
        parts = urllib.parse.urlsplit(url)
        parts.port  # noqa: B018 (raises ValueError for a port out of range or not a number)
    except ValueError:
        return False
    return bool(parts.hostname)
