"""Serve the model a sweep job trains, on the hosts its launcher's placement engine chose."""

from __future__ import annotations

import json
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import lightning.pytorch as pl
import numpy as np

from engage.deploy.job import HostRecord
from engage.deploy.serve.load import RequestPool
from engage.deploy.serve.replacing import Replacer, sender_streams
from engage.deploy.serving import ReplicaRecord, RouteRecord, ServingError, ServingPlan

#: examples of the held-out simulations the request sources draw from, at most
POOL_SIZE = 512
#: seconds between a source's probes (requests of its pool) of each replica it sends to (the path's round trip)
PROBE_S = 1.0


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
    requests met; the plan's placement problem, given these as ``measured`` figures and each
    route's round trip as its source's probes measured it (every :data:`PROBE_S`
    seconds), predicts every route's latency
    (:class:`~engage.deploy.serve.record.ServingRecord`). MLflow gets one run per service under the trainer's run:
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
        #: what was served, judged and recorded at the end (:class:`~engage.deploy.serve.record.ServingRecord`)
        self.record: Any = None
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
            # a checkpoint's own hyperparameters build its model
            spec = ModelSpec(target, {} if checkpoint else json.loads(kwargs), checkpoint)
            where = f"{SERVING}.models.{name}.checkpoint {checkpoint}" if checkpoint else f"the served model {target}"
            try:
                check_model(spec, where)
            except ServeError as exc:
                raise ServingError(f"serving: {exc}") from None

    def _start_replica(self, replica: ReplicaRecord) -> None:
        target, kwargs = self._model
        argv = [
            *("-m", "engage.deploy.serve.supervisor", "--built", "--model", target),
            *("--api-key-file", self.plan.api_key_file, "--host", replica.address, "--port", str(replica.port)),
            *("--name", replica.name, "--folder", str(self.folder / replica.name)),
        ]
        checkpoint = self.plan.models.get(replica.model)
        # a checkpoint's own hyperparameters build its model; the model being trained, its arguments
        argv += ["--checkpoint", checkpoint] if checkpoint else ["--model-kwargs", kwargs]
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
            argv += ["--probe-s", str(PROBE_S)]
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

    def _record(self, trainer: pl.Trainer) -> None:
        """Judge and record what was served (:class:`~engage.deploy.serve.record.ServingRecord`)."""
        from engage.deploy.serve.record import ServingRecord

        timeline = self.replacer.timeline if self.replacer is not None else []
        given_up = self.replacer.given_up if self.replacer is not None else []
        self.record = ServingRecord(self.plan, self.services, self.replicas(), self.routes(), timeline, given_up)
        self.record.record(trainer.logger, {h.name: h.layer for h in self.hosts.values()})

    def replicas(self) -> list[ReplicaRecord]:
        """Every replica the job ran (those of every slot when the placement changed)."""
        return list(self.replacer.replicas.values()) if self.replacer is not None else list(self.plan.replicas)

    def routes(self) -> list[RouteRecord]:
        """Every route the job's sources followed."""
        return list(self.replacer.routes.values()) if self.replacer is not None else list(self.plan.routes)


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
