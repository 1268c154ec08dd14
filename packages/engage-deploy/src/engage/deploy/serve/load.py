"""A seeded request generator for inference replicas: latency, throughput and the answers' error.

Each stream (a source host's requests for one model, say) sends requests to one replica as a
Poisson process of its own rate, constant or changing at given times (a
:class:`~engage.deploy.serve.demand.RateSchedule`), its arrival times drawn from its own seeded
stream, so a run can be repeated exactly; :meth:`RequestGenerator.retarget` sends a stream's
later requests to another replica (a new placement) under another route name. The
generator is open-loop: a request is due at its arrival time whether or not earlier ones were
answered, and its latency counts from that time, including any wait for one of the
``max_in_flight`` connections. Connections are kept open between requests (HTTP keep-alive, one
per sending thread and replica), as a client in steady use does; a request that had to open one
is marked ``connected`` (its latency holds the TCP handshake's round trip). Each answer is compared
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

import argparse
import heapq
import http.client
import itertools
import json
import math
import os
import signal
import sys
import threading
import time
import urllib.parse
from collections.abc import Callable, Iterator, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np

from engage.deploy.serve.demand import RateSchedule
from engage.deploy.serve.replica import API_KEY_HEADER, SERVICE_TIME_HEADER

#: a request's inputs (the replica's ``inputs`` list) and the ground truth its outputs should match
MakeRequest = Callable[[np.random.Generator], tuple[list, np.ndarray]]


@dataclass(frozen=True)
class ServedRequest:
    """One request: when it was due (seconds from the start), from which source to which
    replica, its latency (s), HTTP status (0: no answer), the model version behind the answer
    and its relative L2 error against the ground truth (None without an answer); ``connected``:
    the request opened its connection first; ``service_s``: the seconds the replica says it took
    (its answer's :data:`~engage.deploy.serve.replica.SERVICE_TIME_HEADER`); ``sent_s``: seconds
    from when it was due until it was sent (this sender's own delay: its threads, the encoding)."""

    due_s: float
    source: str
    replica: str
    latency_s: float
    status: int
    version: int | None
    error: float | None
    connected: bool = False
    service_s: float | None = None
    sent_s: float | None = None
    stream: str = ""

    @property
    def ok(self) -> bool:
        return self.status == 200


class RequestGenerator:
    """Requests of each stream of ``routes`` (``name -> (replica URL, requests per second or a
    RateSchedule)``; a stream's requests are recorded under its name until :meth:`retarget` names
    another route) made by ``make_request``, sent with ``api_key``; ``seed`` fixes arrivals and
    inputs; ``max_in_flight`` requests at most are open at once. :attr:`sent` counts each stream's
    requests so far. With ``probe_s``, every replica a stream is sent to gets a probe request
    about that often, on a kept connection of its own, while requests are sent (:attr:`probes`,
    see :meth:`_probe`): the path there and back with HTTP on both ends, for messages of the
    requests' sizes, measured apart from the requests."""

    def __init__(
        self,
        routes: Mapping[str, tuple[str, float | RateSchedule]],
        make_request: MakeRequest,
        api_key: str,
        seed: int = 0,
        timeout_s: float = 10.0,
        max_in_flight: int = 16,
        probe_s: float | None = None,
    ) -> None:
        self.schedules: dict[str, RateSchedule] = {}
        self.targets: dict[str, tuple[str, str]] = {}  # stream -> (route name, replica URL)
        for stream, (url, rate) in routes.items():
            if not isinstance(rate, RateSchedule):
                if not 0 < rate < float("inf"):  # NaN too
                    raise ValueError(f"the request rate of {stream} must be a number > 0, got {rate}")
                rate = RateSchedule(((0.0, float(rate)),))
            self.schedules[stream] = rate
            self.targets[stream] = (stream, url.rstrip("/"))
        self.make_request = make_request
        self.seed = seed
        self.timeout_s = timeout_s
        self.max_in_flight = max_in_flight
        self.results: list[ServedRequest] = []
        self.sent: dict[str, int] = dict.fromkeys(self.schedules, 0)
        #: requests on their way to each replica URL now
        self.in_flight: dict[str, int] = {}
        self.probe_s = probe_s
        #: replica URL -> seconds each probe took, less the replica's own time (the path there and
        #: back, HTTP included)
        self.probes: dict[str, list[float]] = {}
        self._probe_body: bytes | None = None  # one request of the pool, as every probe sends it
        self._key = api_key
        self._lock = threading.Lock()
        self._local = threading.local()  # each sending thread's open connections

    def counts(self) -> tuple[dict[str, int], dict[str, int]]:
        """Requests each stream sent so far, and those on their way to each replica URL now."""
        with self._lock:
            return dict(self.sent), {url: n for url, n in self.in_flight.items() if n}

    def retarget(self, stream: str, route: str, url: str) -> None:
        """Send ``stream``'s later requests to ``url``, recorded under ``route``."""
        with self._lock:
            self.targets[stream] = (route, url.rstrip("/"))

    def arrivals(self) -> Iterator[tuple[float, str, np.random.Generator]]:
        """Every stream's arrival times (seconds from the start), merged in time order and drawn
        as they are needed, each with the random stream its request's inputs are drawn from. A
        changing rate is followed exactly: a unit-rate exponential draw is spent across the
        schedule's steps (time rescaling), so a step at rate 0 sends nothing."""
        streams = np.random.SeedSequence(self.seed).spawn(len(self.schedules))

        def arrivals_of(stream: str, schedule: RateSchedule, seeds: np.random.SeedSequence):
            times_rng, inputs_rng = (np.random.default_rng(s) for s in seeds.spawn(2))
            steps = list(schedule.steps)
            t = 0.0
            while True:
                budget = times_rng.exponential(1.0)
                while True:
                    i = max(k for k, (start, _rate) in enumerate(steps) if start <= t)
                    rate = steps[i][1]
                    end = steps[i + 1][0] if i + 1 < len(steps) else math.inf
                    if rate > 0 and budget <= rate * (end - t):
                        t += budget / rate
                        break
                    if math.isinf(end):
                        return  # the last step sends nothing
                    budget -= rate * (end - t)
                    t = end
                yield t, stream, inputs_rng

        merged = [
            arrivals_of(name, self.schedules[name], seeds) for name, seeds in zip(sorted(self.schedules), streams)
        ]
        return heapq.merge(*merged, key=lambda a: a[0])

    def schedule(self, duration_s: float) -> list[tuple[float, str, np.random.Generator]]:
        """The arrivals within ``duration_s``, in time order."""
        return list(itertools.takewhile(lambda a: a[0] < duration_s, self.arrivals()))

    def run(self, duration_s: float | None = None, stop: threading.Event | None = None) -> list[ServedRequest]:
        """Send the requests of ``duration_s`` seconds (``None``: until ``stop`` is set), or until
        ``stop`` is set; every answer is in :attr:`results`, in the order they came."""
        if duration_s is None and stop is None:
            raise ValueError("give a duration, a stop event, or both")
        stop = stop or threading.Event()
        start = time.monotonic()
        pool = ThreadPoolExecutor(self.max_in_flight, thread_name_prefix="engage-requests")
        done = threading.Event()  # this run's end, whatever ``stop`` (the caller's) says
        probing = threading.Thread(target=self._probe, args=(stop, done), name="engage-probes", daemon=True)
        if self.probe_s:
            probing.start()
        try:
            for due, stream, rng in itertools.chain(self.arrivals(), [(math.inf, "", None)]):
                end = min(due, duration_s if duration_s is not None else math.inf)
                delay = start + end - time.monotonic()
                if delay > 0 and stop.wait(None if math.isinf(delay) else delay):
                    break
                if rng is None or (duration_s is not None and due >= duration_s):
                    break
                inputs, truth = self.make_request(rng)
                with self._lock:
                    self.sent[stream] += 1
                pool.submit(self._send, start, due, stream, inputs, truth)
        finally:
            # stopped: requests not yet sent are dropped, those in flight finish (or time out)
            pool.shutdown(wait=True, cancel_futures=stop.is_set())
            done.set()
            if probing.is_alive():
                probing.join()
        return self.results

    def _probe(self, stop: threading.Event, done: threading.Event) -> None:
        """A request to every replica streams go to, every ``probe_s`` seconds, on this thread's
        kept connections; a probe that opened its connection (its handshake's round trip in it),
        failed or was not timed by the replica measures nothing. A probe's figure is its time less
        what the replica says it took (its ``x-engage-service-s``): the path there and back, HTTP on
        both ends.

        The probe is a ``/predict`` request of one of the pool's examples, not a ``/health`` one:
        the path's time depends on what it carries. On the continuum test's routes (21 to 142 ms)
        the requests' paths took 2 to 10 ms more than ``/health`` probes of the same paths, the
        more the longer the path; likely the hosts' TCP pacing an answer of several segments (BBR,
        this kernel's default, paces at a rate it estimates from the connection's deliveries),
        which a one-segment ``/health`` answer escapes."""
        while not (stop.wait(self.probe_s) or done.is_set()):
            with self._lock:
                urls = sorted({url for _, url in self.targets.values()})
            for url in urls:
                if stop.is_set() or done.is_set():
                    return
                figure = self._probe_once(url)
                if figure is not None:
                    self.probes.setdefault(url, []).append(figure)

    def _probe_once(self, url: str) -> float | None:
        for _attempt in range(2):
            try:
                connection, opened = self._connection(url, timeout_s=min(self.timeout_s, 2.0))
                body = self._probe_request()
                began = time.monotonic()
                self._post_predict(connection, body)
                response = connection.getresponse()
                response.read()
                took = time.monotonic() - began
            except (ConnectionError, http.client.RemoteDisconnected, http.client.BadStatusLine):
                self._drop(url)  # a kept connection the server had closed (idle): once more on a new one
                continue
            except Exception:
                self._drop(url)
                return None
            if response.will_close:
                self._drop(url)
            service = _seconds(response.getheader(SERVICE_TIME_HEADER))
            if response.status != 200 or opened or service is None:
                return None
            return took - service
        return None

    def _probe_request(self) -> bytes:
        """The body every probe sends: the pool's request for this generator's seed."""
        if self._probe_body is None:
            inputs, _ = self.make_request(np.random.default_rng(self.seed))
            self._probe_body = _predict_body(inputs)
        return self._probe_body

    def _post_predict(self, connection: http.client.HTTPConnection, body: bytes) -> None:
        """Send ``body`` to ``/predict`` with the key: what requests and probes send alike."""
        headers = {API_KEY_HEADER: self._key, "Content-Type": "application/json"}
        connection.request("POST", "/predict", body=body, headers=headers)

    def _connection(self, url: str, timeout_s: float | None = None) -> tuple[http.client.HTTPConnection, bool]:
        """This thread's open connection to ``url``, or a new one (``True``: opened now)."""
        connections = self._local.__dict__.setdefault("connections", {})
        if url in connections:
            return connections[url], False
        parsed = urllib.parse.urlsplit(url)
        connection = http.client.HTTPConnection(parsed.hostname, parsed.port or 80, timeout=timeout_s or self.timeout_s)
        connection.connect()
        connections[url] = connection
        return connection, True

    def _drop(self, url: str) -> None:
        connection = self._local.__dict__.get("connections", {}).pop(url, None)
        if connection is not None:
            connection.close()

    def _send(self, start: float, due: float, stream: str, inputs: list, truth: np.ndarray) -> None:
        with self._lock:
            source, url = self.targets[stream]
            self.in_flight[url] = self.in_flight.get(url, 0) + 1
        try:
            self._request(start, due, stream, source, url, inputs, truth)
        finally:
            with self._lock:
                self.in_flight[url] -= 1

    def _request(
        self, start: float, due: float, stream: str, source: str, url: str, inputs: list, truth: np.ndarray
    ) -> None:
        body = _predict_body(inputs)
        status, version, error, connected, service = 0, None, None, False, None
        sent = answered = None  # when the request left, when the answer's last byte came
        try:
            for _attempt in range(2):
                connection, connected = self._connection(url)
                try:
                    self._post_predict(connection, body)
                    sent = time.monotonic()
                    response = connection.getresponse()
                except (ConnectionError, http.client.RemoteDisconnected, http.client.BadStatusLine):
                    self._drop(url)
                    if connected:
                        raise
                    continue  # a kept connection the server had closed (idle): once more on a new one
                break
            payload = response.read()
            answered = time.monotonic()
            status = response.status
            service = _seconds(response.getheader(SERVICE_TIME_HEADER))
            if response.will_close:
                self._drop(url)
            if status == 200:
                answer = json.loads(payload)
                version = int(answer["version"])
                outputs = np.asarray(answer["outputs"], dtype=np.float64).ravel()
                truth = np.asarray(truth, dtype=np.float64).ravel()
                if outputs.size != truth.size:  # compared value for value: never broadcast
                    raise ValueError(f"an answer of {outputs.size} values for a truth of {truth.size}")
                error = float(np.linalg.norm(outputs - truth) / max(np.linalg.norm(truth), 1e-12))
        except Exception:  # no usable answer (refused, reset, truncated, not JSON): a failed request
            self._drop(url)
            status = 0 if status == 200 else status
        latency = (answered or time.monotonic()) - (start + due)
        waited = None if sent is None else sent - (start + due)
        with self._lock:
            self.results.append(
                ServedRequest(due, source, url, latency, status, version, error, connected, service, waited, stream)
            )

    # ------------------------------------------------------------------ figures

    def summary(self) -> dict[str, Any]:
        """See :meth:`ServedRequests.summary`."""
        return ServedRequests(self.results).summary()

    def log_to_mlflow(self, run_id: str, tracking_uri: str | None = None, folder: Path | None = None) -> None:
        """See :meth:`ServedRequests.log_to_mlflow`."""
        ServedRequests(self.results).log_to_mlflow(run_id, tracking_uri, folder)

    def plot(self, path: Path) -> None:
        """See :meth:`ServedRequests.plot`."""
        ServedRequests(self.results).plot(path)


def _predict_body(inputs: list) -> bytes:
    """A ``/predict`` request's body: ``{"inputs": [...]}`` as JSON."""
    return json.dumps({"inputs": inputs}).encode()


def _seconds(text: str | None) -> float | None:
    try:
        value = float(text) if text else None
    except ValueError:
        return None
    return value if value is not None and 0 <= value < 3600 else None


class ServedRequests:
    """Figures of served requests (a generator's :attr:`~RequestGenerator.results`, or those a
    generator on another host wrote): summary, MLflow metrics and plot.

    Example::

        >>> served = ServedRequests([ServedRequest(0.1, "edge-1", "http://fog-1", 0.02, 200, 3, 0.5)])
        >>> served.summary()["latency_ms_p50"], served.summary()["error_by_version"]
        (20.0, {3: 0.5})
    """

    def __init__(self, results: Sequence[ServedRequest]) -> None:
        self.results = list(results)

    @classmethod
    def read(cls, path: str | Path) -> ServedRequests:
        """The requests in a JSON file of ``python -m engage.deploy.serve.load``."""
        return cls([ServedRequest(**r) for r in json.loads(Path(path).read_text())["requests"]])

    def of(self, source: str) -> ServedRequests:
        """Those sent under ``source`` (a route's name)."""
        return ServedRequests([r for r in self.results if r.source == source])

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
        newest model version answering (``serve/...`` metrics, step = second); the whole run's
        :meth:`summary` (``serve/run/requests``, ``serve/run/latency_ms_p50``, ...); every request
        as ``serve/requests.json``; a plot of latency (ms) over time (s) and error against model
        version, ``serve/serving.png``."""
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
        # the whole run's figures under names of their own: one value each, never a point of the
        # per-second series above (a p50 of the whole run at second 0 would be read as one)
        summary = self.summary()
        client.log_batch(
            run_id,
            metrics=[
                Metric(f"serve/run/{k}", float(v), now, 0)
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


class RequestPool:
    """Requests drawn from a fixed set of examples: ``inputs`` (the model's positional arguments,
    each an array whose first axis indexes the examples) and the ``truth`` each should give. A
    request is one example, drawn with the request's own random stream; a pool saved with
    :meth:`save` is what ``python -m engage.deploy.serve.load`` sends from another host.

    Example::

        >>> pool = RequestPool([np.zeros((3, 2)), np.ones((3, 1))], np.arange(3.0).reshape(3, 1))
        >>> inputs, truth = pool(np.random.default_rng(0))
        >>> [np.shape(x) for x in inputs], truth.shape
        ([(1, 2), (1, 1)], (1, 1))
    """

    def __init__(self, inputs: Sequence[np.ndarray], truth: np.ndarray) -> None:
        self.inputs = [np.asarray(x) for x in inputs]
        self.truth = np.asarray(truth)
        if not self.inputs or any(len(x) != len(self.truth) for x in self.inputs) or not len(self.truth):
            raise ValueError("a request pool needs inputs and truth with the same number of examples (at least one)")

    def __len__(self) -> int:
        return len(self.truth)

    def __call__(self, rng: np.random.Generator) -> tuple[list, np.ndarray]:
        i = int(rng.integers(len(self.truth)))
        return [x[i : i + 1].tolist() for x in self.inputs], self.truth[i : i + 1]

    def save(self, path: str | Path) -> Path:
        path = Path(path)
        with open(path, "wb") as handle:
            np.savez(handle, truth=self.truth, **{f"input_{k}": x for k, x in enumerate(self.inputs)})
        return path

    @classmethod
    def load(cls, path: str | Path) -> RequestPool:
        with np.load(path, allow_pickle=False) as data:
            count = sum(1 for name in data.files if name.startswith("input_"))
            return cls([data[f"input_{k}"] for k in range(count)], data["truth"])


def _route(text: str) -> tuple[str, tuple[str, RateSchedule]]:
    """``NAME=RATE@URL`` (requests per second, or a schedule ``[[from_s, rate], ...]`` as JSON,
    to the replica at URL, recorded under NAME)."""
    try:
        name, rest = text.split("=", 1)
        rate, url = rest.rsplit("@", 1)
        schedule = RateSchedule.parse(json.loads(rate), "the rate")
    except ValueError as exc:
        raise argparse.ArgumentTypeError(
            f"{text!r} is not NAME=RATE@URL (e.g. fog-1=5@http://10.0.1.2:8100 or "
            f"fog-1=[[0,5],[30,1]]@http://10.0.1.2:8100): {exc}"
        ) from None
    if not name or not url.startswith("http://"):
        raise argparse.ArgumentTypeError(f"{text!r}: give a name, a rate and an http:// URL")
    return name, (url, schedule)


class RouteTable:
    """The file a running sender takes its routes from, and the file it reports to, every
    ``every_s`` seconds in a thread of its own: ``routes`` (JSON ``{"version": V, "routes":
    {STREAM: [ROUTE, URL]}}``, written by whoever places the replicas) is read again whenever it
    changes; ``counts`` (JSON ``{"version": V, "sent": {STREAM: N}, "in_flight": {URL: N},
    "elapsed_s": S}``) tells the placer which routing is in force, how many requests each stream
    sent and which replicas still have requests on their way."""

    def __init__(self, generator: RequestGenerator, routes: str, counts: str, every_s: float = 0.2) -> None:
        self.generator, self.routes, self.counts, self.every_s = generator, routes, counts, every_s
        self.version = 0
        self._seen: tuple[int, int] | None = None
        self._start = time.monotonic()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def poll(self) -> None:
        """Take the routes if they changed, then report."""
        from engage.core.files import write_private

        try:
            stat = os.stat(self.routes)
        except FileNotFoundError:
            stat = None
        if stat is not None and (stat.st_mtime_ns, stat.st_size) != self._seen:
            self._seen = (stat.st_mtime_ns, stat.st_size)
            table = json.loads(Path(self.routes).read_text())
            for stream, (route, url) in table["routes"].items():
                if stream in self.generator.targets:
                    self.generator.retarget(stream, route, url)
            self.version = int(table["version"])
        sent, in_flight = self.generator.counts()
        report = {"version": self.version, "sent": sent, "in_flight": in_flight}
        write_private(self.counts, json.dumps({**report, "elapsed_s": round(time.monotonic() - self._start, 3)}))

    def start(self) -> None:
        """Poll once now, then every ``every_s`` seconds until :meth:`stop`."""
        self.poll()
        self._thread = threading.Thread(target=self._run, name="engage-routes", daemon=True)
        self._thread.start()

    def _run(self) -> None:
        while not self._stop.wait(self.every_s):
            self.poll()

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join()


def main(argv: Sequence[str] | None = None) -> int:
    """``python -m engage.deploy.serve.load``: send a pool's requests to replicas from this host
    until ``--duration`` passes or SIGTERM/Ctrl-C; every request and the summary as JSON in
    ``--out``. Bad arguments: one line, exit code 2."""
    from engage.core.files import write_private
    from engage.deploy.serve.replica import read_api_key

    parser = argparse.ArgumentParser(prog="python -m engage.deploy.serve.load", description=main.__doc__)
    parser.add_argument("--pool", required=True, help="the requests, an .npz file of RequestPool.save")
    parser.add_argument("--api-key-file", required=True, help="the replicas' key, a 0600 file")
    parser.add_argument("--route", action="append", type=_route, required=True, metavar="NAME=RATE@URL")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--duration", type=float, default=None, help="seconds (default: until stopped)")
    parser.add_argument("--timeout", type=float, default=10.0, help="seconds a request may take")
    parser.add_argument("--probe-s", type=float, default=0.0, help="seconds between probe requests (0: none)")
    parser.add_argument("--routes-file", default=None, help="routes to follow while running (see RouteTable)")
    parser.add_argument("--counts-file", default=None, help="where requests sent and in flight are reported")
    parser.add_argument("--out", required=True, help="where the results go (JSON)")
    args = parser.parse_args(argv)
    try:
        pool = RequestPool.load(args.pool)
        key = read_api_key(args.api_key_file)
    except (OSError, ValueError, KeyError) as exc:
        print(f"engage requests: {getattr(exc, 'strerror', None) or exc}", file=sys.stderr)
        return 2
    if args.probe_s < 0:
        print(f"engage requests: --probe-s is {args.probe_s}; give seconds > 0, or 0 for no probes", file=sys.stderr)
        return 2
    if (args.routes_file is None) != (args.counts_file is None):
        print("engage requests: give --routes-file and --counts-file together, or neither", file=sys.stderr)
        return 2
    generator = RequestGenerator(
        dict(args.route), pool, api_key=key, seed=args.seed, timeout_s=args.timeout, probe_s=args.probe_s or None
    )
    table = RouteTable(generator, args.routes_file, args.counts_file) if args.routes_file else None
    stop = threading.Event()
    for signum in (signal.SIGTERM, signal.SIGINT):
        signal.signal(signum, lambda *_: stop.set())
    print(f"engage requests: {len(args.route)} route(s), {len(pool)} examples", flush=True)
    if table is not None:
        table.start()
    try:
        generator.run(args.duration, stop=stop)
    finally:
        if table is not None:
            table.stop()
    write_private(
        args.out,
        json.dumps(
            {
                "requests": [asdict(r) for r in generator.results],
                "probes": generator.probes,
                "summary": generator.summary(),
            }
        ),
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
