"""What a job's serving served, judged and recorded: each replica's service time, each route's
latency predicted from it and measured, the requests that failed, the re-placing timeline; one
``serving.json``, plots, and one MLflow run per service under the trainer's run.

Example::

    >>> from engage.deploy.serving import ReplicaRecord, RouteRecord, ServingPlan
    >>> from engage.deploy.serve.services import ServiceProcesses
    >>> plan = ServingPlan((ReplicaRecord("fog-1", "fog", "10.0.2.2", 8100),),
    ...                    (RouteRecord("edge-1", "fog-1", 5.0, True, 0.02),), "serve.key", 20, {}, "cpsat",
    ...                    seed=0, drain_s=3.0, placement={}, max_failed=0.05)
    >>> record = ServingRecord(plan, ServiceProcesses({}, "serving"), plan.replicas, plan.routes, [], [])
    >>> record.route_figures(ServedRequests([]))[0]["requests"]
    0
"""

from __future__ import annotations

import json
import statistics
import time
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

from engage.deploy.serve.load import ServedRequests
from engage.deploy.serving import ReplicaRecord, RouteRecord, ServingError, ServingPlan


class ServingRecord:
    """The figures of ``plan``'s serving by the job's ``services`` (their files): every replica
    and route it used (``replicas``, ``routes``; those of every slot when the placement changed),
    the re-placing ``timeline`` and the moves ``given_up``."""

    def __init__(
        self,
        plan: ServingPlan,
        services: Any,
        replicas: Sequence[ReplicaRecord],
        routes: Sequence[RouteRecord],
        timeline: Sequence[dict[str, Any]],
        given_up: Sequence[str],
    ) -> None:
        self.plan = plan
        self.services = services
        self.folder = services.folder
        self.replicas = list(replicas)
        self.routes = list(routes)
        self.timeline = list(timeline)
        self.given_up = list(given_up)
        #: per replica, the seconds one request takes there (measured); per route, the prediction
        self.service_s: dict[str, float] = {}
        #: per source host, the seconds its sender takes to send a request once it is due
        self.sender_s: dict[str, float] = {}
        self.predicted_s: dict[str, float] = {}
        #: per route, the median of its sender's probes of its replica, and the
        #: declared round trip it replaces in the prediction
        self.path_s: dict[str, float] = {}
        self.declared_s: dict[str, float] = {}
        #: source host -> replica URL -> seconds of each probe (read with the senders' requests)
        self.probes: dict[str, dict[str, list[float]]] = {}

    def measure(self, served: ServedRequests) -> None:
        """Each replica's service time, the median of what it said it took for the answers in
        ``served``; each source's sending time, the median from a request's due time to its
        sending; each route's latency predicted from them: the placement problem's, given the
        service times as measured figures, plus its source's sending time, with the path's round
        trip as its sender's probes measured it (:attr:`probes`) instead of the declared
        one where there are probes (:attr:`service_s`, :attr:`sender_s`, :attr:`path_s`,
        :attr:`predicted_s`)."""
        from engage.deploy.placement import PlacementProblem
        from engage.deploy.serve.placing import VARIANT, predicted_latencies

        for replica in self.replicas:
            answers = [r for r in served.results if r.replica == replica.url and r.ok]
            took = [r.service_s for r in answers if r.service_s is not None]
            if took:
                self.service_s[replica.name] = statistics.median(took)
        replicas = {replica.name: replica for replica in self.replicas}
        measured = [
            {"node": replicas[name].host, "model": replicas[name].model, "variant": VARIANT, "seconds": seconds}
            for name, seconds in self.service_s.items()
        ]
        latency = predicted_latencies(PlacementProblem.from_dict({**self.plan.peak_problem(), "measured": measured}))
        for source in self.plan.sources():
            waited = [r.sent_s for r in served.results if r.source.startswith(f"{source}>") and r.sent_s is not None]
            if waited:
                self.sender_s[source] = statistics.median(waited)
        problem = PlacementProblem.from_dict(self.plan.problem)
        for route in self.routes:
            replica = replicas[route.replica]
            self.declared_s[route.label] = _round_trip(problem, route.source, replica.host)
            if route.replica not in self.service_s:
                continue
            predicted = latency[route.source, route.model, replica.host] + self.sender_s.get(route.source, 0.0)
            probed = self.probes.get(route.source, {}).get(replica.url)
            if probed:
                # the path as measured (the emulator's forwarding and HTTP on both ends included)
                # instead of its declared round trip
                self.path_s[route.label] = statistics.median(probed)
                predicted += self.path_s[route.label] - self.declared_s[route.label]
            self.predicted_s[route.label] = predicted

    def route_figures(self, served: ServedRequests) -> list[dict[str, Any]]:
        """Per route: the engine's prediction (nominal and from measured service times), the
        measured median latency of the requests on kept connections, and their ratio."""
        rows = []
        for route in self.routes:
            sent = served.of(route.label).results
            answered = [r for r in sent if r.ok and not r.connected]
            median = statistics.median(r.latency_s for r in answered) if answered else None
            predicted = self.predicted_s.get(route.label)
            failed = sum(not r.ok for r in sent)
            rows.append(
                {
                    "route": route.label,
                    "source": route.source,
                    "replica": route.replica,
                    "model": route.model,
                    "chosen": route.chosen,
                    "requests": len(sent),
                    "ok": sum(r.ok for r in sent),
                    "answered": len(answered),
                    "failed": failed,
                    "failed_fraction": round(failed / len(sent), 4) if sent else None,
                    "predicted_nominal_ms": round(route.predicted_s * 1000, 2),
                    "predicted_ms": None if predicted is None else round(predicted * 1000, 2),
                    "round_trip_declared_ms": round(self.declared_s[route.label] * 1000, 2),
                    "round_trip_probed_ms": (
                        round(self.path_s[route.label] * 1000, 2) if route.label in self.path_s else None
                    ),
                    "measured_median_ms": None if median is None else round(median * 1000, 2),
                    "measured_over_predicted": None if not (median and predicted) else round(median / predicted, 3),
                }
            )
        return rows

    def record(self, logger: Any, layers: Mapping[str, str]) -> None:
        """One MLflow run per service under the trainer's run (``logger``'s, an MLFlowLogger; none
        without one); ``serving.json`` in the serving folder; :class:`ServingError` (one line) for
        a route or replica that did not serve, or a route that failed too often."""
        served = ServedRequests([])
        senders = [f"requests {source}" for source in self.plan.sources()]
        for name in senders:
            path = self.services.file(name, ".json")
            if not path.exists():
                why = self.services.last_line(name)
                raise ServingError(f"serving: {name} wrote no results ({why})")
            served.results += ServedRequests.read(path).results
            self.probes[name.split(" ", 1)[1]] = json.loads(path.read_text()).get("probes", {})
        self.measure(served)
        figures = {
            "plan": self.plan.to_dict() | {"api_key_file": "(not recorded)"},
            "service_ms": {k: round(v * 1000, 3) for k, v in self.service_s.items()},
            "sender_ms": {k: round(v * 1000, 3) for k, v in self.sender_s.items()},
            "routes": self.route_figures(served),
            "summary": served.summary(),
            "timeline": self.timeline,
            "given_up": self.given_up,
        }
        (self.folder / "serving.json").write_text(json.dumps(figures, indent=1, default=str))
        # a route of a fixed placement must have answers on kept connections (its latency is
        # judged on them); one a re-placing used for a while, an answer if it carried requests
        replaced = self.plan.slot_s > 0
        unanswered = [
            row["route"]
            for row in figures["routes"]
            if ((not row["ok"] and row["requests"]) if replaced else not row["answered"])
        ]
        # judged on the counts (the fraction in serving.json is rounded for reading)
        limit = self.plan.max_failed
        failing = [row for row in figures["routes"] if row["ok"] and row["failed"] > limit * row["requests"]]
        used = {row["replica"] for row in figures["routes"] if row["requests"] or not replaced}
        unmeasured = [r.name for r in self.replicas if r.name in used and r.name not in self.service_s]
        if logger is not None and hasattr(logger, "run_id"):
            bad = set(unanswered) | {row["route"] for row in failing}
            self._log(logger, figures, served, senders, bad, set(unmeasured), layers)
        # a run never reports more than it served
        if unanswered or unmeasured:
            what = [f"route {r}" for r in unanswered] + [f"replica {r}" for r in unmeasured]
            kept = "" if replaced else " on kept connections"
            raise ServingError(f"serving: no answer{kept} for {', '.join(what)}; see {self.folder}")
        if failing:
            what = ", ".join(f"{row['route']} {row['failed']} of {row['requests']}" for row in failing)
            raise ServingError(
                f"serving: requests failed beyond serving.max_failed={self.plan.max_failed:g}: {what}; "
                f"see {self.folder}"
            )

    def _log(
        self,
        logger: Any,
        figures: dict,
        served: Any,
        senders: list[str],
        failed: set[str],
        unmeasured: set[str],
        layers: Mapping[str, str],
    ) -> None:
        """The runs of :meth:`record` (``FAILED`` for a replica that served nothing and for the
        sender of a route in ``failed``)."""
        client, parent = logger.experiment, logger.run_id
        experiment = client.get_run(parent).info.experiment_id
        client.log_dict(parent, figures, "serving/serving.json")
        client.log_figure(parent, _latency_figure(figures["routes"]), "serving/latency.png")
        if figures["timeline"]:
            from mlflow.entities import Metric

            now = int(time.time() * 1000)
            metrics = [
                Metric(name, float(value), now, slot["slot"])
                for slot in figures["timeline"]
                for name, value in (("serve/replicas", len(slot["replicas"])), ("serve/moves", slot["moves"]))
            ]
            for i in range(0, len(metrics), 900):
                client.log_batch(parent, metrics=metrics[i : i + 900])
            client.log_figure(parent, _placement_figure(figures["timeline"]), "serving/placement.png")
        for replica in self.replicas:
            run = _child(client, experiment, parent, f"replica {replica.name}", "replica", replica.name, replica.layer)
            status = "FAILED"
            try:
                client.log_param(run, "url", replica.url)
                if replica.name in self.service_s:
                    client.log_metric(run, "serve/service_ms", self.service_s[replica.name] * 1000)
                folder = self.folder / replica.name
                if (folder / "status.json").exists():
                    restarts = json.loads((folder / "status.json").read_text()).get("restarts", 0)
                    client.log_metric(run, "serve/restarts", restarts)
                for name in ("status.json", "replica.log"):
                    if (folder / name).exists():
                        client.log_artifact(run, str(folder / name), "replica")
                status = "FAILED" if replica.name in unmeasured else "FINISHED"
            finally:
                client.set_terminated(run, status)
        for name in senders:
            kind, source = name.split(" ", 1)
            run = _child(client, experiment, parent, name, kind, source, layers.get(source, ""))
            status = "FAILED"
            try:
                ServedRequests([r for r in served.results if r.source.startswith(f"{source}>")]).log_to_mlflow(run)
                for row in figures["routes"]:
                    if row["route"].startswith(f"{source}>") and row["measured_over_predicted"] is not None:
                        replica = row["route"].split(">", 1)[1]
                        client.log_metric(run, f"serve/{replica}/predicted_ms", row["predicted_ms"])
                        if row["round_trip_probed_ms"] is not None:
                            client.log_metric(run, f"serve/{replica}/round_trip_probed_ms", row["round_trip_probed_ms"])
                        client.log_metric(run, f"serve/{replica}/measured_median_ms", row["measured_median_ms"])
                mine = {row["route"] for row in figures["routes"] if row["route"].startswith(f"{source}>")}
                status = "FAILED" if mine & failed else "FINISHED"
            finally:
                client.set_terminated(run, status)


def _latency_figure(rows: Sequence[dict[str, Any]]) -> Any:
    """Predicted and measured median latency (ms) of each route, the engine's routes marked."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    figure, axes = plt.subplots(figsize=(max(5.0, 1.4 * len(rows)), 4))
    x = np.arange(len(rows))
    axes.bar(
        x - 0.2,
        [r["predicted_ms"] or 0 for r in rows],
        0.4,
        label="predicted (measured service times, probed round trips)",
    )
    axes.bar(x + 0.2, [r["measured_median_ms"] or 0 for r in rows], 0.4, label="measured median")
    axes.set_xticks(x, [f"{r['route']}{' *' if r['chosen'] else ''}" for r in rows], rotation=20, ha="right")
    axes.set_xlabel("route (source > replica; * the engine's choice)")
    axes.set_ylabel("latency per request (ms)")
    axes.legend()
    figure.tight_layout()
    plt.close(figure)
    return figure


def _placement_figure(timeline: Sequence[dict[str, Any]]) -> Any:
    """Measured request rates (requests/s) over time, and which replicas each slot held."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    figure, (rates, held) = plt.subplots(2, 1, sharex=True, figsize=(8, 6))
    times = [slot["t_s"] for slot in timeline]
    for key in sorted({k for slot in timeline for k in slot["rates"]}):
        rates.step(times, [slot["rates"].get(key, 0.0) for slot in timeline], where="post", label=key)
    rates.set_ylabel("measured rate (requests/s)")
    rates.legend(fontsize="small")
    names = sorted({name for slot in timeline for name in slot["replicas"]})
    for row, name in enumerate(names):
        present = [t for t, slot in zip(times, timeline) if name in slot["replicas"]]
        held.scatter(present, [row] * len(present), marker="s", s=30)
    held.set_yticks(range(len(names)), names)
    held.set_xlabel("time since requests began (s), one point a slot")
    held.set_ylabel("replica held")
    figure.tight_layout()
    plt.close(figure)
    return figure


def _child(client: Any, experiment: str, parent: str, name: str, kind: str, host: str, layer: str) -> str:
    tags = {"mlflow.parentRunId": parent, "engage.kind": kind, "engage.host": host, "engage.layer": layer}
    return client.create_run(experiment, run_name=name, tags=tags).info.run_id


def _round_trip(problem: Any, source: str, node: str) -> float:
    """Seconds there and back along the declared links from ``source`` up to ``node`` (0 on the
    source itself); :class:`ServingError` for a node off the source's path."""
    path = problem.path(source)
    if node not in path:
        raise ServingError(f"serving: {node} is not on the path of {source} ({' -> '.join(path)})")
    return sum(2 * problem.links[hop].delay for hop in path[: path.index(node)])
