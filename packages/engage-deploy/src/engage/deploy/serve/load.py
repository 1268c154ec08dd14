"""A seeded request generator for inference replicas: latency, throughput and the answers' error.

Each source (an edge host, say) sends requests to one replica as a Poisson process of its own
rate, its arrival times drawn from its own seeded stream, so a run can be repeated exactly. The
generator is open-loop: a request is due at its arrival time whether or not earlier ones were
answered, and its latency counts from that time, including any wait for one of the
``max_in_flight`` connections. Each answer is compared
with the ground truth the request came with (relative L2 error) and keeps the model version the
replica named. A request with no answer, or an error status, counts as failed.

Example::

    >>> import numpy as np
    >>> def request(rng):
    ...     x = rng.uniform(-1, 1, size=(1, 2))
    ...     return [x.tolist()], x.sum(axis=1, keepdims=True)
    >>> generator = RequestGenerator({"edge-1": ("http://127.0.0.1:9", 5.0)}, request, api_key="k" * 32, seed=1)
    >>> len(generator.schedule(2.0)) > 0
    True
"""

from __future__ import annotations

import json
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Mapping
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np

from engage.deploy.serve.replica import API_KEY_HEADER

#: a request's inputs (the replica's ``inputs`` list) and the ground truth its outputs should match
MakeRequest = Callable[[np.random.Generator], tuple[list, np.ndarray]]


@dataclass(frozen=True)
class ServedRequest:
    """One request: when it was due (seconds from the start), from which source to which
    replica, its latency (s), HTTP status (0: no answer), the model version behind the answer
    and its relative L2 error against the ground truth (None without an answer)."""

    due_s: float
    source: str
    replica: str
    latency_s: float
    status: int
    version: int | None
    error: float | None

    @property
    def ok(self) -> bool:
        return self.status == 200


class RequestGenerator:
    """Requests from each source of ``routes`` (``source -> (replica URL, requests per second)``)
    made by ``make_request``, sent with ``api_key``; ``seed`` fixes arrivals and inputs;
    ``max_in_flight`` requests at most are open at once."""

    def __init__(
        self,
        routes: Mapping[str, tuple[str, float]],
        make_request: MakeRequest,
        api_key: str,
        seed: int = 0,
        timeout_s: float = 10.0,
        max_in_flight: int = 16,
    ) -> None:
        for source, (_url, rate) in routes.items():
            if rate <= 0:
                raise ValueError(f"the request rate of {source} must be > 0, got {rate}")
        self.routes = {source: (url.rstrip("/"), float(rate)) for source, (url, rate) in routes.items()}
        self.make_request = make_request
        self.seed = seed
        self.timeout_s = timeout_s
        self.max_in_flight = max_in_flight
        self.results: list[ServedRequest] = []
        self._key = api_key
        self._lock = threading.Lock()

    def schedule(self, duration_s: float) -> list[tuple[float, str, np.random.Generator]]:
        """Arrival times within ``duration_s`` of every source, in time order, each with the
        random stream its request's inputs are drawn from."""
        streams = np.random.SeedSequence(self.seed).spawn(len(self.routes))
        arrivals = []
        for (source, (_url, rate)), stream in zip(sorted(self.routes.items()), streams):
            times_rng, inputs_rng = (np.random.default_rng(s) for s in stream.spawn(2))
            t = times_rng.exponential(1.0 / rate)
            while t < duration_s:
                arrivals.append((t, source, inputs_rng))
                t += times_rng.exponential(1.0 / rate)
        return sorted(arrivals, key=lambda a: a[0])

    def run(self, duration_s: float, stop: threading.Event | None = None) -> list[ServedRequest]:
        """Send the requests of ``duration_s`` seconds (or until ``stop`` is set); every answer
        is in :attr:`results`, in the order they came."""
        start = time.monotonic()
        pool = ThreadPoolExecutor(self.max_in_flight, thread_name_prefix="engage-requests")
        try:
            for due, source, rng in self.schedule(duration_s):
                if stop is not None and stop.is_set():
                    break
                delay = start + due - time.monotonic()
                if delay > 0 and (stop.wait(delay) if stop is not None else time.sleep(delay)):
                    break
                inputs, truth = self.make_request(rng)
                pool.submit(self._send, start, due, source, inputs, truth)
        finally:
            # stopped: requests not yet sent are dropped, those in flight finish (or time out)
            pool.shutdown(wait=True, cancel_futures=stop is not None and stop.is_set())
        return self.results

    def _send(self, start: float, due: float, source: str, inputs: list, truth: np.ndarray) -> None:
        url = self.routes[source][0]
        request = urllib.request.Request(
            f"{url}/predict",
            data=json.dumps({"inputs": inputs}).encode(),
            headers={API_KEY_HEADER: self._key, "Content-Type": "application/json"},
            method="POST",
        )
        status, version, error = 0, None, None
        try:
            with urllib.request.urlopen(request, timeout=self.timeout_s) as response:
                answer = json.loads(response.read())
                status, version = response.status, int(answer["version"])
                outputs = np.asarray(answer["outputs"], dtype=np.float64)
                truth = np.asarray(truth, dtype=np.float64)
                error = float(np.linalg.norm(outputs - truth) / max(np.linalg.norm(truth), 1e-12))
        except urllib.error.HTTPError as exc:
            status = exc.code
        except Exception:  # no usable answer (reset, truncated, not JSON): a failed request
            status = 0
        latency = time.monotonic() - (start + due)
        with self._lock:
            self.results.append(ServedRequest(due, source, url, latency, status, version, error))

    # ------------------------------------------------------------------ figures

    def summary(self) -> dict[str, Any]:
        """Requests sent, failed, throughput of answers (per second of the run), latency
        percentiles (ms) and error per model version."""
        results = sorted(self.results, key=lambda r: r.due_s)
        answered = [r for r in results if r.ok]
        span = max((r.due_s + r.latency_s for r in results), default=0.0)
        latencies = np.array([r.latency_s for r in answered]) * 1e3
        by_version: dict[int, list[float]] = {}
        for r in answered:
            if r.error is not None and r.version is not None:
                by_version.setdefault(r.version, []).append(r.error)
        return {
            "requests": len(results),
            "failed": len(results) - len(answered),
            "throughput_per_s": len(answered) / span if span else 0.0,
            "latency_ms_p50": float(np.percentile(latencies, 50)) if len(latencies) else None,
            "latency_ms_p95": float(np.percentile(latencies, 95)) if len(latencies) else None,
            "error_by_version": {v: float(np.median(e)) for v, e in sorted(by_version.items())},
        }

    def log_to_mlflow(self, run_id: str, tracking_uri: str | None = None, folder: Path | None = None) -> None:
        """Per second of the run: answers, failures, median latency (ms), median error and the
        newest model version answering (``serve/...`` metrics, step = second), the summary as
        parameters-like tags, every request as ``serve/requests.json`` and a plot of latency (ms)
        over time (s) and error against model version, ``serve/serving.png``."""
        import tempfile

        from mlflow.entities import Metric
        from mlflow.tracking import MlflowClient

        client = MlflowClient(tracking_uri)
        now = int(time.time() * 1000)
        by_second: dict[int, list[ServedRequest]] = {}
        for r in self.results:
            by_second.setdefault(int(r.due_s), []).append(r)
        metrics = []
        for second, rs in sorted(by_second.items()):
            answered = [r for r in rs if r.ok]
            values = {"serve/answers_per_s": len(answered), "serve/failed_per_s": len(rs) - len(answered)}
            if answered:
                values["serve/latency_ms_p50"] = float(np.median([r.latency_s for r in answered]) * 1e3)
                values["serve/model_version"] = max(r.version or 0 for r in answered)
                errors = [r.error for r in answered if r.error is not None]
                if errors:
                    values["serve/error_rel_l2"] = float(np.median(errors))
            metrics += [Metric(k, float(v), now, second) for k, v in values.items()]
        for i in range(0, len(metrics), 900):
            client.log_batch(run_id, metrics=metrics[i : i + 900])
        summary = self.summary()
        client.log_batch(
            run_id,
            metrics=[
                Metric(f"serve/{k}", float(v), now, 0)
                for k, v in summary.items()
                if isinstance(v, (int, float)) and v is not None
            ],
        )
        with tempfile.TemporaryDirectory() as scratch:
            out = Path(folder or scratch)
            (out / "requests.json").write_text(json.dumps([asdict(r) for r in self.results]))
            self.plot(out / "serving.png")
            client.log_artifact(run_id, str(out / "requests.json"), "serve")
            client.log_artifact(run_id, str(out / "serving.png"), "serve")

    def plot(self, path: Path) -> None:
        """Latency (ms) over time (s), failures marked, and error against model version."""
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt

        answered = [r for r in self.results if r.ok]
        failed = [r for r in self.results if not r.ok]
        figure, (left, right) = plt.subplots(1, 2, figsize=(10, 4))
        left.scatter([r.due_s for r in answered], [r.latency_s * 1e3 for r in answered], s=6, label="answered")
        if failed:
            left.scatter([r.due_s for r in failed], [0.0] * len(failed), s=12, marker="x", c="red", label="failed")
        left.set_xlabel("time since the first request (s)")
        left.set_ylabel("latency (ms)")
        left.legend()
        errors = self.summary()["error_by_version"]
        right.plot(list(errors), list(errors.values()), marker="o")
        right.set_xlabel("model version (optimizer step)")
        right.set_ylabel("median relative L2 error of answers")
        figure.tight_layout()
        figure.savefig(path, dpi=100)
        plt.close(figure)
