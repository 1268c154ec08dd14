"""The serving plan of a sweep: where the inference replicas of the model each job trains run, and
where each request source's requests go; one typed record, carried by the job contract.

The launcher makes it once per sweep with the placement engine
(:func:`engage.deploy.serve.placing.plan_serving`); the job's
:class:`~engage.deploy.callbacks.ServeWhileTraining` starts what it names. Only the standard
library here: a job's runner reads it before anything heavy is imported.

Example::

    >>> plan = ServingPlan(
    ...     replicas=(ReplicaRecord("fog-1", "fog", "10.0.2.2", 8100),),
    ...     routes=(RouteRecord("edge-1", "fog-1", 5.0, True, 0.031),),
    ...     api_key_file="serve.key", every_n_steps=20, problem={}, solver="cpsat", seed=0, drain_s=3.0,
    ...     placement={"fog-1": ["model/served"]}, max_failed=0.05)
    >>> ServingPlan.from_dict(plan.to_dict()) == plan, plan.replica("fog-1").url
    (True, 'http://10.0.2.2:8100')
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import asdict, dataclass, field
from typing import Any

from engage.core.online.outcome import OnlineRunFailed
from engage.deploy.serve.demand import TRAINED, RateSchedule


def requests_at(rates: Mapping[tuple[str, str], float]) -> list[dict[str, Any]]:
    """A placement problem's ``requests`` for ``rates`` (``(source host, model) -> requests per
    second``), those at no rate left out (a request class needs a positive rate)."""
    return [{"node": host, "model": model, "rate": float(rate)} for (host, model), rate in rates.items() if rate > 0]


class ServingError(OnlineRunFailed):
    """A replica or a request source could not do its part; one line saying which and why. A run
    that serves while it trains did not do what it was asked: ``engage run`` ends with that line,
    exit code 4 and a FAILED MLflow run."""


@dataclass(frozen=True)
class ReplicaRecord:
    """One inference replica: its ``name`` (the host's for the model being trained, ``MODEL:HOST``
    for another served ``model``), the host's ``layer``, the ``address`` and ``port`` it listens on,
    and its ``host``."""

    name: str
    layer: str
    address: str
    port: int
    model: str = TRAINED
    host: str = ""

    def __post_init__(self) -> None:
        if not self.host:
            object.__setattr__(self, "host", self.name)

    @property
    def url(self) -> str:
        return f"http://{self.address}:{self.port}"


@dataclass(frozen=True)
class RouteRecord:
    """Requests of one ``source`` host to one replica at ``rate`` per second: the engine's route
    for that source (``chosen``), or a comparison route to the root's replica; ``predicted_s``:
    the engine's latency for it from the plan's nominal figures."""

    source: str
    replica: str
    rate: float
    chosen: bool
    predicted_s: float
    model: str = TRAINED

    @property
    def label(self) -> str:
        """``edge-1>fog-1``: how its requests are named in results and MLflow."""
        return f"{self.source}>{self.replica}"


@dataclass(frozen=True)
class ServingPlan:
    """Every replica and route of a sweep's serving, the replicas' ``api_key_file`` (0600),
    publication every ``every_n_steps`` optimizer steps, the placement ``problem`` solved (its
    ``to_dict``) and the ``solver`` that solved it, the request generators' ``seed`` and the
    seconds ``drain_s`` they go on after training ends (the last version is served then), and
    ``max_failed``, the largest fraction of a route's requests that may fail in a run that
    succeeds."""

    replicas: tuple[ReplicaRecord, ...]
    routes: tuple[RouteRecord, ...]
    api_key_file: str
    every_n_steps: int
    problem: Mapping[str, Any]
    solver: str
    seed: int
    drain_s: float
    placement: Mapping[str, list[str]]
    max_failed: float
    #: every served model: name -> its checkpoint (``None``: the model being trained), in port order
    models: Mapping[str, str | None] = field(default_factory=lambda: {TRAINED: None})
    #: source layer -> model -> ``[[from_s, rate], ...]`` (see :mod:`engage.deploy.serve.demand`)
    schedules: Mapping[str, Mapping[str, list[list[float]]]] = field(default_factory=dict)
    #: every host of the paths: name -> ``[layer, address]`` (where replicas may go)
    hosts: Mapping[str, list[str]] = field(default_factory=dict)
    port: int = 0
    slot_s: float = 0.0
    max_moves: float | None = None
    compare_root: bool = False

    def replica(self, name: str) -> ReplicaRecord:
        return next(r for r in self.replicas if r.name == name)

    def replica_at(self, host: str, model: str) -> ReplicaRecord:
        """The replica of ``model`` on ``host``, as any plan of this sweep names it."""
        layer, address = self.hosts[host]
        name = host if model == TRAINED else f"{model}:{host}"
        return ReplicaRecord(name, layer, address, self.port + list(self.models).index(model), model, host)

    def source_schedules(self) -> dict[str, dict[str, list[list[float]]]]:
        """Source host -> model -> its ``[[from_s, rate], ...]``."""
        return {
            host: dict(models)
            for layer, models in self.schedules.items()
            for host, (host_layer, _address) in self.hosts.items()
            if host_layer == layer
        }

    def problem_with(self, rates: Mapping[tuple[str, str], float]) -> dict[str, Any]:
        """The placement problem with ``rates`` (``(source host, model) -> requests per second``;
        zero rates left out) instead of the rates it was solved for."""
        return {**self.problem, "requests": requests_at(rates)}

    def peak_problem(self) -> dict[str, Any]:
        """The problem with every source sending every model at its peak: its options predict
        every route a run may use."""
        return self.problem_with(
            {
                (host, model): RateSchedule(tuple((start, rate) for start, rate in steps)).peak
                for host, models in self.source_schedules().items()
                for model, steps in models.items()
            }
        )

    def sources(self) -> list[str]:
        """The source hosts, in route order."""
        return list(dict.fromkeys(route.source for route in self.routes))

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> ServingPlan:
        return cls(
            replicas=tuple(ReplicaRecord(**r) for r in data["replicas"]),
            routes=tuple(RouteRecord(**r) for r in data["routes"]),
            api_key_file=str(data["api_key_file"]),
            every_n_steps=int(data["every_n_steps"]),
            problem=dict(data["problem"]),
            solver=str(data["solver"]),
            seed=int(data["seed"]),
            drain_s=float(data["drain_s"]),
            placement={k: list(v) for k, v in dict(data["placement"]).items()},
            max_failed=float(data["max_failed"]),
            models=dict(data.get("models", {TRAINED: None})),
            schedules={
                k: {m: [list(x) for x in v] for m, v in dict(d).items()}
                for k, d in dict(data.get("schedules", {})).items()
            },
            hosts={k: list(v) for k, v in dict(data.get("hosts", {})).items()},
            port=int(data.get("port", 0)),
            slot_s=float(data.get("slot_s", 0.0)),
            max_moves=None if data.get("max_moves") is None else float(data["max_moves"]),
            compare_root=bool(data.get("compare_root", False)),
        )
