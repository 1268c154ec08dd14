"""Serve the model a sweep job trains, on the hosts its launcher's placement engine chose."""

from __future__ import annotations

import json
import statistics
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import lightning.pytorch as pl
import numpy as np

from engage.deploy.job import HostRecord
from engage.deploy.serve.load import RequestPool, ServedRequests
from engage.deploy.serve.replacing import Replacer, sender_streams
from engage.deploy.serving import ReplicaRecord, RouteRecord, ServingError, ServingPlan

#: examples of the held-out simulations the request sources draw from, at most
POOL_SIZE = 512


class ServeWhileTraining(pl.Callback):
    """Start the inference replicas and request sources of a sweep's serving ``plan`` for the
    model this job trains, and record what they served.

    When fitting starts (first rank), one replica a host of ``plan.replicas`` is started there
    through the host's command prefix (``python -m engage.deploy.serve.supervisor``: restarted
    when it dies), built as the model being trained is: its class and its saved hyperparameters.
    When training starts (the replicas answering), the request sources begin: each source host
    of ``plan.routes`` sends Poisson requests to its replicas (``python -m
    engage.deploy.serve.load``), drawn from the held-out simulations' samples, whose fields are
    the answers' ground truth. :class:`PublishWeights` (added beside this callback) sends the
    weights every ``plan.every_n_steps`` steps. When training ends, the sources go on
    ``plan.drain_s`` seconds (the last version is served), then everything is stopped. Each
    replica's service time is the median of what it said each answer took (from the request's
    arrival to the answer's first bytes: its queues, worker and model), under the load the
    requests met; the plan's placement problem, given these as ``measured`` figures, predicts
    every route's latency. MLflow gets one run per service under the trainer's run:
    ``replica HOST`` (service time, restarts, log) and ``requests HOST`` (latency over time,
    error against model version, and per route the predicted and measured median latency), and
    the trainer's run ``serving/serving.json`` and ``serving/latency.png``. A route with no
    answer or with more than ``plan.max_failed`` of its requests failed, or a replica that
    answered nothing, fails the run (its MLflow run ``FAILED``).

    Other served models (``plan.models``) are built from their checkpoints. With
    ``plan.slot_s > 0`` a :class:`~engage.deploy.serve.replacing.Replacer` solves the placement
    again every slot from the rates the sources measured and moves replicas and routes to follow
    it (``publisher``, the :class:`PublishWeights` beside this callback, then sends the weights to
    new replicas of the model being trained); its timeline goes into ``serving.json`` and
    ``serving/placement.png``.

    A replica that does not answer within ``ready_timeout_s``, or a source or replica that ends
    on its own, fails the run with one line. Added by engage-deploy's plugin to an ``engage run``
    whose sweep has ``hydra.launcher.serving``; ``hosts`` and ``folder`` are the job's.

    Example::

        >>> from engage.deploy.serving import ReplicaRecord, RouteRecord, ServingPlan
        >>> plan = ServingPlan((ReplicaRecord("fog-1", "fog", "10.0.2.2", 8100),),
        ...                    (RouteRecord("edge-1", "fog-1", 5.0, True, 0.02),), "serve.key", 20, {}, "cpsat",
        ...                    seed=0, drain_s=3.0, placement={}, max_failed=0.05)
        >>> ServeWhileTraining(plan, [], "job").folder.name
        'serving'
    """

    def __init__(
        self,
        plan: ServingPlan,
        hosts: Sequence[HostRecord],
        folder: str | Path,
        ready_timeout_s: float = 180.0,
        publisher: Any = None,
    ) -> None:
        from engage.deploy.serve.services import ServiceProcesses

        self.plan = plan
        self.hosts = {host.name: host for host in hosts}
        self.folder = Path(folder) / "serving"
        self.ready_timeout_s = ready_timeout_s
        self.publisher = publisher
        self.services = ServiceProcesses(self.hosts, self.folder)
        self.replacer: Replacer | None = None
        #: per replica, the seconds one request takes there (measured); per route, the prediction
        self.service_s: dict[str, float] = {}
        #: per source host, the seconds its sender takes to send a request once it is due
        self.sender_s: dict[str, float] = {}
        self.predicted_s: dict[str, float] = {}
        self._key = ""

    # ------------------------------------------------------------------ Lightning hooks

    def setup(self, trainer: pl.Trainer, pl_module: pl.LightningModule, stage: str) -> None:
        if stage != "fit" or trainer.global_rank != 0:
            return
        from engage.deploy.serve.replica import read_api_key

        self._key = read_api_key(self.plan.api_key_file)
        self.folder.mkdir(parents=True, exist_ok=True)
        self._model = _model_spec(pl_module)
        self._check_models()
        self.replacer = Replacer(
            self.plan,
            self.services,
            self._start_replica,
            self.publisher,
            lambda source: self.services.file(f"requests {source}", ".routes.json"),
            lambda source: self.services.file(f"requests {source}", ".counts.json"),
            self._key,
            self.ready_timeout_s,
        )
        for replica in self.plan.replicas:
            self._start_replica(replica)

    def _check_models(self) -> None:
        """Each served model is built once here, where its class is imported already, so that
        replicas need not build it before they start (``--built``): the model being trained from
        its class and saved hyperparameters, the others from their checkpoints."""
        from engage.deploy.options import SERVING
        from engage.deploy.serve.replica import ModelSpec
        from engage.deploy.serve.supervisor import ServeError, check_model

        target, kwargs = self._model
        for name, checkpoint in self.plan.models.items():
            spec = ModelSpec(target, json.loads(kwargs), checkpoint)
            where = f"{SERVING}.models.{name}.checkpoint {checkpoint}" if checkpoint else f"the served model {target}"
            try:
                check_model(spec, where)
            except ServeError as exc:
                raise ServingError(f"serving: {exc}") from None

    def _start_replica(self, replica: ReplicaRecord) -> None:
        target, kwargs = self._model
        argv = [
            *("-m", "engage.deploy.serve.supervisor", "--built", "--model", target, "--model-kwargs", kwargs),
            *("--api-key-file", self.plan.api_key_file, "--host", replica.address, "--port", str(replica.port)),
            *("--name", replica.name, "--folder", str(self.folder / replica.name)),
        ]
        checkpoint = self.plan.models.get(replica.model)
        if checkpoint:
            argv += ["--checkpoint", checkpoint]
        self.services.start(f"replica {replica.name}", replica.host, argv)

    def on_train_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if trainer.global_rank != 0 or not self.services or self.replacer is None:
            return
        pool = RequestPool(*_examples(trainer, pl_module))
        deadline = time.monotonic() + self.ready_timeout_s  # for all of them together
        for replica in self.plan.replicas:
            self.services.wait_ready(replica, self._key, deadline, self.ready_timeout_s)
        path = pool.save(self.folder / "requests.npz")
        replacing = self.plan.slot_s > 0
        if replacing:
            self.replacer.write_routes()
        schedules = self.plan.source_schedules()
        for index, (source, streams) in enumerate(sender_streams(self.plan).items()):
            name = f"requests {source}"
            argv = ["-m", "engage.deploy.serve.load", "--pool", str(path), "--api-key-file", self.plan.api_key_file]
            for stream, label in streams.items():
                route = self.replacer.routes[label]
                rate = json.dumps(schedules[source][route.model])
                # a fixed placement's streams are its routes; re-placed ones follow the routes file
                named = stream if replacing else label
                argv += ["--route", f"{named}={rate}@{self.plan.replica(route.replica).url}"]
            if replacing:
                argv += ["--routes-file", str(self.services.file(name, ".routes.json"))]
                argv += ["--counts-file", str(self.services.file(name, ".counts.json"))]
            argv += ["--seed", str(self.plan.seed + index), "--out", str(self.services.file(name, ".json"))]
            self.services.start(name, source, argv)
        if replacing:
            self.replacer.start()

    def on_train_batch_end(self, trainer: pl.Trainer, *args: Any) -> None:
        if trainer.global_rank == 0 and trainer.global_step % 50 == 0:
            self._check()

    def _check(self) -> None:
        if self.replacer is not None:
            self.replacer.check()
        self.services.check_alive()

    def teardown(self, trainer: pl.Trainer, pl_module: pl.LightningModule, stage: str) -> None:
        if stage != "fit" or not self.services or trainer.global_rank != 0:
            return
        try:
            self._check()
            time.sleep(self.plan.drain_s)  # the last version, published at the end, is served too
        finally:
            self._stop_all()
        if self.replacer is not None:
            self.replacer.check()  # an error of its last slots
        self._record(trainer)

    def on_exception(self, trainer: pl.Trainer, pl_module: pl.LightningModule, exception: BaseException) -> None:
        self._stop_all()

    def _stop_all(self) -> None:
        try:
            if self.replacer is not None:
                self.replacer.stop()
        finally:
            self.services.stop_all()

    # ------------------------------------------------------------------ figures

    def replicas(self) -> list[ReplicaRecord]:
        """Every replica the job ran (those of every slot when the placement changed)."""
        return list(self.replacer.replicas.values()) if self.replacer is not None else list(self.plan.replicas)

    def routes(self) -> list[RouteRecord]:
        """Every route the job's sources followed."""
        return list(self.replacer.routes.values()) if self.replacer is not None else list(self.plan.routes)

    def measure(self, served: ServedRequests) -> None:
        """Each replica's service time, the median of what it said it took for the answers in
        ``served``; each source's sending time, the median from a request's due time to its
        sending; each route's latency predicted from them: the placement problem's, given the
        service times as measured figures, plus its source's sending time (:attr:`service_s`,
        :attr:`sender_s`, :attr:`predicted_s`)."""
        from engage.deploy.placement import PlacementProblem
        from engage.deploy.serve.placing import VARIANT, predicted_latencies

        for replica in self.replicas():
            answers = [r for r in served.results if r.replica == replica.url and r.ok]
            took = [r.service_s for r in answers if r.service_s is not None]
            if took:
                self.service_s[replica.name] = statistics.median(took)
        replicas = {replica.name: replica for replica in self.replicas()}
        measured = [
            {"node": replicas[name].host, "model": replicas[name].model, "variant": VARIANT, "seconds": seconds}
            for name, seconds in self.service_s.items()
        ]
        latency = predicted_latencies(PlacementProblem.from_dict({**self.plan.peak_problem(), "measured": measured}))
        for source in self.plan.sources():
            waited = [r.sent_s for r in served.results if r.source.startswith(f"{source}>") and r.sent_s is not None]
            if waited:
                self.sender_s[source] = statistics.median(waited)
        self.predicted_s = {
            route.label: latency[route.source, route.model, replicas[route.replica].host]
            + self.sender_s.get(route.source, 0.0)
            for route in self.routes()
            if route.replica in self.service_s
        }

    def route_figures(self, served: ServedRequests) -> list[dict[str, Any]]:
        """Per route: the engine's prediction (nominal and from measured service times), the
        measured median latency of the requests on kept connections, and their ratio."""
        rows = []
        for route in self.routes():
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
                    "measured_median_ms": None if median is None else round(median * 1000, 2),
                    "measured_over_predicted": None if not (median and predicted) else round(median / predicted, 3),
                }
            )
        return rows

    def _record(self, trainer: pl.Trainer) -> None:
        """One MLflow run per service under the trainer's run; ``serving.json`` in the job's folder."""
        served = ServedRequests([])
        senders = [f"requests {source}" for source in self.plan.sources()]
        for name in senders:
            path = self.services.file(name, ".json")
            if not path.exists():
                why = self.services.last_line(name)
                raise ServingError(f"serving: {name} wrote no results ({why})")
            served.results += ServedRequests.read(path).results
        self.measure(served)
        figures = {
            "plan": self.plan.to_dict() | {"api_key_file": "(not recorded)"},
            "service_ms": {k: round(v * 1000, 3) for k, v in self.service_s.items()},
            "sender_ms": {k: round(v * 1000, 3) for k, v in self.sender_s.items()},
            "routes": self.route_figures(served),
            "summary": served.summary(),
            "timeline": self.replacer.timeline if self.replacer is not None else [],
            "given_up": self.replacer.given_up if self.replacer is not None else [],
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
        unmeasured = [r.name for r in self.replicas() if r.name in used and r.name not in self.service_s]
        logger = trainer.logger
        if logger is not None and hasattr(logger, "run_id"):
            bad = set(unanswered) | {row["route"] for row in failing}
            self._log(logger, figures, served, senders, bad, set(unmeasured))
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
        self, logger: Any, figures: dict, served: Any, senders: list[str], failed: set[str], unmeasured: set[str]
    ) -> None:
        """The runs of :meth:`_record` (``FAILED`` for a replica that served nothing and for the
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
        for replica in self.replicas():
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
        layer_of = {h.name: h.layer for h in self.hosts.values()}
        for name in senders:
            kind, source = name.split(" ", 1)
            run = _child(client, experiment, parent, name, kind, source, layer_of.get(source, ""))
            status = "FAILED"
            try:
                ServedRequests([r for r in served.results if r.source.startswith(f"{source}>")]).log_to_mlflow(run)
                for row in figures["routes"]:
                    if row["route"].startswith(f"{source}>") and row["measured_over_predicted"] is not None:
                        replica = row["route"].split(">", 1)[1]
                        client.log_metric(run, f"serve/{replica}/predicted_ms", row["predicted_ms"])
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
    axes.bar(x - 0.2, [r["predicted_ms"] or 0 for r in rows], 0.4, label="predicted (measured service times)")
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


def _model_spec(pl_module: pl.LightningModule) -> tuple[str, str]:
    """The model's class and its saved hyperparameters as JSON: how a replica builds it."""
    cls = type(pl_module)
    try:
        kwargs = json.dumps(dict(pl_module.hparams), default=_plain)
    except TypeError as exc:
        raise ServingError(
            f"serving: {cls.__name__}'s hyperparameters are not JSON ({exc}); replicas are built from them: "
            "call save_hyperparameters() with plain values"
        ) from None
    return f"{cls.__module__}:{cls.__qualname__}", kwargs


def _plain(value: Any) -> Any:
    """Config containers (an ``engage run`` model's list arguments) as plain JSON values."""
    from omegaconf import OmegaConf

    if OmegaConf.is_config(value):
        return OmegaConf.to_container(value, resolve=True)
    if isinstance(value, tuple):
        return list(value)
    raise TypeError(f"Object of type {type(value).__name__} is not JSON serializable")


def _examples(trainer: pl.Trainer, pl_module: pl.LightningModule) -> tuple[list[np.ndarray], np.ndarray]:
    """Held-out samples (the model's inputs) and their fields in the model's output units
    (``(field - offset) / scale`` for a model with those buffers, as ``HeatSurrogate``)."""
    datamodule = trainer.datamodule
    loader = datamodule.val_dataloader() if datamodule is not None else None
    dataset = getattr(loader, "dataset", None)
    if dataset is None or len(dataset) == 0:
        raise ServingError("serving: answers are checked against held-out simulations; give data.val_simulations >= 1")
    step = max(1, len(dataset) // POOL_SIZE)
    items = [dataset[i] for i in range(0, len(dataset), step)][:POOL_SIZE]
    offset = float(getattr(pl_module, "offset", 0.0))
    scale = float(getattr(pl_module, "scale", 1.0))
    try:
        inputs = [np.stack([item[k].numpy() for item in items]) for k in ("parameters", "time")]
        truth = (np.stack([item["target"].numpy() for item in items]).astype(np.float64) - offset) / scale
    except (KeyError, TypeError, AttributeError):
        raise ServingError(
            "serving: requests are held-out samples with 'parameters', 'time' and 'target' (engage's online "
            "DataModule); this run's validation data has other samples"
        ) from None
    return inputs, truth
