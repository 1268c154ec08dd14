"""Re-placing a job's inference replicas while it serves: every slot, the placement is solved
again from the request rates the sources measured, and the replicas and routes follow it.

Each slot of ``plan.slot_s`` seconds:

1. the rate of each (source host, model) over the last slot, from the counts each sender
   reports (a re-placed plan has no comparison routes: each stream is one model's requests);
2. the plan's placement problem with these rates, solved by ``plan.solver``; ``online`` keeps
   its state from slot to slot (:class:`~engage.deploy.placement.online.OnlineSolver`, at most
   ``plan.max_moves`` new copies a slot), others solve each slot afresh;
3. the new plan applied within the nodes' memory (:meth:`Replacer.apply`): streams leave the
   replicas that go, those stop, the new ones start and answer (those of the model being
   trained get the newest weights published so far), and the streams take their new routes;
   each sender says it follows a new routing before anything is stopped, so a request is never
   sent to a replica being stopped.

Every slot is kept in :attr:`Replacer.timeline` (rates, replicas, moves, the seconds to solve and
to apply); a move the job's end interrupts (its replicas not answering yet) is given up and
named in :attr:`Replacer.given_up`. An error (a replica that does not answer, a sender that does
not follow) is kept in :attr:`Replacer.error` and re-placing stops; the job raises it (one line).

Example::

    >>> from engage.deploy.serving import ReplicaRecord, RouteRecord, ServingPlan
    >>> plan = ServingPlan((), (RouteRecord("edge-1", "fog-1", 5.0, True, 0.02),), "k", 20, {}, "online",
    ...                    seed=0, drain_s=1.0, placement={}, max_failed=0.05)
    >>> sender_streams(plan)
    {'edge-1': {'model': 'edge-1>fog-1'}}
"""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Callable, Iterable, Mapping
from dataclasses import replace
from pathlib import Path
from typing import Any

from engage.deploy.serving import TRAINED, ReplicaRecord, RouteRecord, ServingError, ServingPlan

#: the suffix of a model's stream to the root's replica (``model@root``)
COMPARE = "@root"
#: seconds a sender may take to follow new routes
FOLLOW_TIMEOUT_S = 10.0
#: seconds requests already on their way to a leaving replica may take (a request's own limit)
DRAIN_TIMEOUT_S = 10.0


def stream_of(route: RouteRecord) -> str:
    """The sender's stream a route carries: the model's name, or ``MODEL@root`` for the comparison route."""
    return route.model if route.chosen else f"{route.model}{COMPARE}"


def sender_streams(plan: ServingPlan) -> dict[str, dict[str, str]]:
    """Source host -> stream -> the route it follows in ``plan``."""
    return streams_of(plan.routes)


def streams_of(routes: Iterable[RouteRecord]) -> dict[str, dict[str, str]]:
    """Source host -> stream -> the route of ``routes`` it follows."""
    streams: dict[str, dict[str, str]] = {}
    for route in routes:
        streams.setdefault(route.source, {})[stream_of(route)] = route.label
    return streams


class SenderRoutes:
    """The routing a job's senders follow (:class:`~engage.deploy.serve.load.RouteTable` on
    their side): each source's routes file written under a new version, its counts file read
    back (the version it follows, requests sent, requests on their way to each replica), for
    each of ``sources``. ``check_alive`` raises when a process of the job ended (a sender that
    died never follows)."""

    def __init__(
        self,
        sources: list[str],
        routes_file: Callable[[str], Path],
        counts_file: Callable[[str], Path],
        check_alive: Callable[[], None],
    ) -> None:
        self.sources = list(sources)
        self.routes_file, self.counts_file, self.check_alive = routes_file, counts_file, check_alive
        self.version = 0
        #: source -> stream -> the route it was last given
        self.followed: dict[str, dict[str, str]] = {}

    def write(self, routes: Mapping[str, Mapping[str, tuple[str, str]]]) -> None:
        """Give each source ``stream -> (route, replica URL)`` under a new version."""
        from engage.core.files import write_private

        self.version += 1
        self.followed = {
            source: {stream: route for stream, (route, _) in table.items()} for source, table in routes.items()
        }
        for source, table in routes.items():
            urls = {stream: list(target) for stream, target in table.items()}
            write_private(self.routes_file(source), json.dumps({"version": self.version, "routes": urls}))

    def counts(self) -> dict[str, dict[str, Any]]:
        """Each source's last report (nothing sent yet where it has not reported)."""
        counts = {}
        for source in self.sources:
            try:
                counts[source] = json.loads(self.counts_file(source).read_text())
            except (OSError, ValueError):
                counts[source] = {"version": 0, "sent": {}, "elapsed_s": 0.0}
        return counts

    def await_followed(self) -> None:
        """Until every sender follows the last version; :class:`ServingError` after ``FOLLOW_TIMEOUT_S``."""
        deadline = time.monotonic() + FOLLOW_TIMEOUT_S
        while True:
            behind = [s for s, c in self.counts().items() if int(c.get("version", 0)) < self.version]
            if not behind:
                return
            self.check_alive()
            if time.monotonic() > deadline:
                raise ServingError(
                    f"serving: requests {', '.join(behind)} did not take routes version {self.version} "
                    f"within {FOLLOW_TIMEOUT_S:.0f} s"
                )
            time.sleep(0.05)

    def await_drained(self, urls: set[str]) -> None:
        """Until no sender has a request on its way to ``urls`` (those it sent before it followed
        other routes), at most ``DRAIN_TIMEOUT_S``; those still out then may fail."""
        deadline = time.monotonic() + DRAIN_TIMEOUT_S
        while urls and time.monotonic() < deadline:
            if not any(urls & set(c.get("in_flight", {})) for c in self.counts().values()):
                return
            time.sleep(0.05)


class Replacer:
    """Re-place ``plan``'s replicas every ``plan.slot_s`` seconds (see the module).

    ``start_replica`` starts a replica's process, ``services`` waits for it and stops it,
    ``publisher`` (a :class:`~engage.deploy.callbacks.PublishWeights` or ``None``) sends the
    weights to new replicas of the model being trained; ``routes_file(source)`` and
    ``counts_file(source)`` are each sender's; ``key`` is the replicas' API key.
    """

    def __init__(
        self,
        plan: ServingPlan,
        services: Any,
        start_replica: Callable[[ReplicaRecord], None],
        publisher: Any,
        routes_file: Callable[[str], Path],
        counts_file: Callable[[str], Path],
        key: str,
        ready_timeout_s: float = 180.0,
    ) -> None:
        self.plan = plan
        self.services = services
        self.start_replica = start_replica
        self.publisher = publisher
        self.senders = SenderRoutes(list(sender_streams(plan)), routes_file, counts_file, services.check_alive)
        self.key = key
        self.ready_timeout_s = ready_timeout_s
        self.timeline: list[dict[str, Any]] = []
        #: every route and replica a slot used, by name (what the run is judged and recorded on)
        self.routes: dict[str, RouteRecord] = {route.label: route for route in plan.routes}
        self.replicas: dict[str, ReplicaRecord] = {replica.name: replica for replica in plan.replicas}
        #: the replicas running now
        self.running: dict[str, ReplicaRecord] = dict(self.replicas)
        self.root = ""
        self.latency: dict[tuple[str, str, str], float] = {}
        self.error: BaseException | None = None
        #: the replicas of a move the job's end interrupted (started, never routed to)
        self.given_up: list[str] = []
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._started = 0.0

    # ------------------------------------------------------------------ routes

    def write_routes(self, streams: Mapping[str, Mapping[str, str]] | None = None) -> None:
        """Give every sender its routes (``source -> stream -> route``; default: :attr:`plan`'s)."""
        streams = streams or sender_streams(self.plan)
        self.senders.write(
            {
                source: {
                    stream: (label, self.running[self.routes[label].replica].url) for stream, label in table.items()
                }
                for source, table in streams.items()
            }
        )

    # ------------------------------------------------------------------ slots

    def start(self) -> None:
        """Re-place every slot, in a thread of its own, until :meth:`stop`."""
        self._started = time.monotonic()
        self._thread = threading.Thread(target=self._run, name="engage-replace", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        """Stop re-placing: a move under way ends at its next wait (a replica still starting is
        given up); :class:`ServingError` if it does not end in time."""
        self._stop.set()
        if self._thread is not None:
            limit = FOLLOW_TIMEOUT_S + DRAIN_TIMEOUT_S + 60
            self._thread.join(limit)
            if self._thread.is_alive():
                raise ServingError(f"serving: re-placing did not stop within {limit:.0f} s")

    def check(self) -> None:
        """Raise the error that stopped re-placing, if any."""
        if self.error is not None:
            raise self.error

    def _run(self) -> None:
        try:
            self._slots()
        except BaseException as exc:  # kept for the training thread, which raises it
            self.error = exc if isinstance(exc, ServingError) else ServingError(f"serving: re-placing failed: {exc!r}")

    def _solver(self) -> Any:
        from engage.core.plugins import placement_solvers
        from engage.deploy.placement.online import OnlineSolver

        if self.plan.solver == "online":
            return OnlineSolver(seed=self.plan.seed, max_moves=self.plan.max_moves)
        return placement_solvers()[self.plan.solver]()

    def _slots(self) -> None:
        from engage.deploy.placement import PlacementInfeasible, PlacementPlan, PlacementProblem
        from engage.deploy.serve.placing import placed, predicted_latencies

        peak = PlacementProblem.from_dict(self.plan.peak_problem())
        self.root, self.latency = peak.root, predicted_latencies(peak)
        solver = self._solver()
        previous = PlacementPlan(
            placement={k: list(v) for k, v in self.plan.placement.items()},
            routes=[],
            objective=0.0,
            latency_s=0.0,
            accuracy=0.0,
            energy_j=0.0,
            status="INITIAL",
            solver=self.plan.solver,
        )
        if hasattr(solver, "start"):
            solver.start(peak, previous)
        before = self.senders.counts()
        while not self._stop.wait(self.plan.slot_s):
            counts = self.senders.counts()
            entry: dict[str, Any] = {"slot": len(self.timeline) + 1, "t_s": round(time.monotonic() - self._started, 3)}
            rates = _rates(before, counts, sender_streams(self.plan))
            if rates is None:  # a sender has not reported since the last slot: nothing measured
                self.timeline.append({**entry, "skipped": "a sender reported no new counts"})
                continue
            before = counts
            entry["rates"] = {f"{s}/{m}": round(r, 3) for (s, m), r in rates.items()}
            started = time.perf_counter()
            try:
                solved = solver.solve(PlacementProblem.from_dict(self.plan.problem_with(rates)), previous)
            except PlacementInfeasible as exc:  # rates of one slot beyond what the plan was checked for
                self.timeline.append({**entry, "skipped": f"no placement serves these rates ({exc})"})
                continue
            solve_s = time.perf_counter() - started
            following = {
                (source, self.routes[label].model): self.running[self.routes[label].replica].host
                for source, streams in self.senders.followed.items()
                for label in streams.values()
            }
            applying = time.perf_counter()
            started_names, stopped_names = self.apply(placed(self.plan, solved, following))
            previous = solved
            self.timeline.append(
                {
                    **entry,
                    "replicas": sorted(name for name in self.running if name not in self.given_up),
                    "started": started_names,
                    "stopped": stopped_names,
                    "moves": int(getattr(solved, "moves", 0)),
                    "solve_ms": round(solve_s * 1000, 3),
                    "apply_s": round(time.perf_counter() - applying, 3),
                    "given_up": list(self.given_up),
                }
            )

    def apply(self, plan: ServingPlan) -> tuple[list[str], list[str]]:
        """Make ``plan`` the one in force; the replicas started and stopped.

        A node's memory holds the new plan's replicas, not the old and the new together, so
        replicas leave before others come: first each stream whose replica is leaving is routed
        to its new replica if that one runs already, else to its old replica if that one stays,
        else to the root's replica of its model (started for the while if it is not running);
        then the leaving replicas stop, the new ones start and answer (those of the model being
        trained given the newest weights published), and the streams take the new routes."""
        new = {r.name: r for r in plan.replicas}
        removed = [r for name, r in self.running.items() if name not in new]
        interim, extra = [], []
        for route in plan.routes:
            now = self._following(route)
            if route.replica in self.running:
                interim.append(route)
            elif now is not None and now.replica in new and now.replica in self.running:
                interim.append(now)
            else:
                root = plan.replica_at(self.root, route.model)
                if root.name not in self.running and root not in extra:
                    extra.append(root)
                interim.append(self._route(route, root))
        if not self._start(extra):
            return [], []
        self._follow(interim)
        self.senders.await_drained({r.url for r in removed})
        for replica in removed:
            self._stop_replica(replica)
        added = [r for name, r in new.items() if name not in self.running]  # a stand-in may be one
        if not self._start(added):
            return [], []
        self._follow(list(plan.routes))
        leaving = [r for r in extra if r.name not in new]
        self.senders.await_drained({r.url for r in leaving})
        for replica in leaving:
            self._stop_replica(replica)
        self.plan = plan
        return [r.name for r in [*extra, *added]], [r.name for r in [*removed, *leaving]]

    def _route(self, route: RouteRecord, replica: ReplicaRecord) -> RouteRecord:
        """``route``'s stream sent to ``replica`` instead, with that route's prediction."""
        predicted = self.latency[route.source, route.model, replica.host]
        return replace(route, replica=replica.name, predicted_s=predicted)

    def _following(self, route: RouteRecord) -> RouteRecord | None:
        """The route ``route``'s stream follows now."""
        label = self.senders.followed.get(route.source, {}).get(stream_of(route))
        return None if label is None else self.routes[label]

    def _start(self, replicas: list[ReplicaRecord]) -> bool:
        """Start ``replicas`` and wait until they answer; ``False`` when the job ends meanwhile
        (the move is given up; they are stopped with the others)."""
        for replica in replicas:
            self.start_replica(replica)
            self.running[replica.name] = replica
        deadline = time.monotonic() + self.ready_timeout_s
        for replica in replicas:
            if not self.services.wait_ready(replica, self.key, deadline, self.ready_timeout_s, self._stop):
                self.given_up = [r.name for r in replicas]
                return False
            self.replicas[replica.name] = replica
            if replica.model == TRAINED and self.publisher is not None:
                self._publish_to(replica)
        return True

    def _publish_to(self, replica: ReplicaRecord) -> None:
        """The newest weights to a new replica of the model being trained, tried twice; a
        replica that takes none would serve the untrained model: :class:`ServingError`."""
        for _attempt in range(2):
            publication = self.publisher.add_replica(replica.url)
            if publication is None or publication.status == 200:
                return
            time.sleep(1.0)
        raise ServingError(
            f"serving: replica {replica.name} did not take version {publication.version} of the weights "
            f"(HTTP {publication.status or 'no answer'}: {publication.detail[:200]})"
        )

    def _stop_replica(self, replica: ReplicaRecord) -> None:
        if replica.model == TRAINED and self.publisher is not None:
            self.publisher.remove_replica(replica.url)
        self.services.stop(f"replica {replica.name}")
        self.running.pop(replica.name, None)

    def _follow(self, routes: list[RouteRecord]) -> None:
        """Every sender follows ``routes`` (written under a new version when they change)."""
        for route in routes:
            self.routes.setdefault(route.label, route)
        streams = streams_of(routes)
        if streams != self.senders.followed:
            self.write_routes(streams)
            self.senders.await_followed()


def _rates(
    before: Mapping[str, Mapping[str, Any]], now: Mapping[str, Mapping[str, Any]], streams: Mapping[str, Any]
) -> dict[tuple[str, str], float] | None:
    """``(source, model) -> requests per second`` between two reports of the senders (a
    re-placed plan's streams are its models); ``None`` when a sender has not reported since
    ``before``."""
    rates = {}
    for source, names in streams.items():
        seconds = float(now[source]["elapsed_s"]) - float(before[source]["elapsed_s"])
        if seconds <= 0:
            return None
        for stream in names:
            sent = int(now[source]["sent"].get(stream, 0)) - int(before[source]["sent"].get(stream, 0))
            rates[source, stream] = max(sent, 0) / seconds
    return rates
