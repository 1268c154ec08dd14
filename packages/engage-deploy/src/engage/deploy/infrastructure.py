"""Infrastructure as config: layers of hosts running services, and network constraints between layers.

The shape follows E2Clab's layers-and-services description: each layer (``cloud``, ``fog``,
``edge``, ...) has a number of identical hosts with per-host CPU and memory limits and the
services placed on it; network constraints set the one-way delay, rate and loss between two
layers. Host names are ``<layer>-<i>``, 1-based (``edge-1``, ``cloud-1``).

Units:

* durations: ``"20ms"``, ``"1.5s"``, ``"250us"``, ``"0"`` (bare numbers are milliseconds, as in ``tc``);
* rates: ``tc`` units, ``"100mbit"``, ``"1gbit"``, ``"512kbit"``, ``"10bit"``; ``"mbps"`` etc. mean
  bytes per second as in ``tc``; a bare number is bits per second;
* sizes: ``"512MiB"``, ``"2GiB"``, ``"512M"`` (binary, as cgroups read it), ``"500MB"`` (decimal);
* loss: a fraction in ``[0, 1)`` (5 % is ``0.05``).

``delay`` is one-way and applies to each direction of a link (EnOSlib ``Netem`` semantics): a
symmetric constraint of 20 ms gives a 40 ms round trip.

Example::

    >>> infra = Infrastructure.from_dict({
    ...     "provider": "local",
    ...     "layers": [{"name": "cloud", "hosts": 1, "cpu": 4, "memory": "4GiB"},
    ...                {"name": "edge", "hosts": 2, "cpu": 1, "memory": "512MiB",
    ...                 "services": [{"name": "simulator", "quantity": 2}]}],
    ...     "network": [{"src": "edge", "dst": "cloud", "delay": "20ms", "rate": "50mbit"}],
    ... })
    >>> infra.validate()
    >>> infra.host_names()
    ['cloud-1', 'edge-1', 'edge-2']
    >>> parse_duration("20ms"), parse_rate("50mbit"), parse_size("512MiB")
    (0.02, 50000000.0, 536870912)
"""

from __future__ import annotations

import dataclasses
import re
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from typing import Any


class InfrastructureError(ValueError):
    """An infrastructure description is invalid; the message is one line naming the field and the fix."""


_NUMBER = r"\s*(-?[0-9]*\.?[0-9]+(?:[eE][-+]?[0-9]+)?)\s*"  # signed: a negative one is said to be so

_DURATION_UNITS = {"": 1e-3, "us": 1e-6, "usec": 1e-6, "ms": 1e-3, "msec": 1e-3, "s": 1.0, "sec": 1.0, "m": 60.0}
# tc's rate units: "bit" suffixes are bits per second, "bps" suffixes are bytes per second.
_RATE_UNITS = {
    "": 1.0,
    "bit": 1.0,
    "kbit": 1e3,
    "mbit": 1e6,
    "gbit": 1e9,
    "tbit": 1e12,
    "bps": 8.0,
    "kbps": 8e3,
    "mbps": 8e6,
    "gbps": 8e9,
    "tbps": 8e12,
}
_SIZE_UNITS = {
    "": 1,
    "b": 1,
    "k": 1024,
    "ki": 1024,
    "kib": 1024,
    "m": 1024**2,
    "mi": 1024**2,
    "mib": 1024**2,
    "g": 1024**3,
    "gi": 1024**3,
    "gib": 1024**3,
    "t": 1024**4,
    "ti": 1024**4,
    "tib": 1024**4,
    "kb": 1000,
    "mb": 1000**2,
    "gb": 1000**3,
    "tb": 1000**4,
}


def _parse(value: Any, units: Mapping[str, float], what: str, example: str) -> float:
    if isinstance(value, bool):
        raise InfrastructureError(f"{what}: {value!r} is not a quantity; write it like {example!r}")
    if isinstance(value, (int, float)):
        number, unit = float(value), ""
    else:
        match = re.fullmatch(_NUMBER + r"([A-Za-z]*)\s*", str(value))
        if match is None:
            raise InfrastructureError(f"{what}: cannot read {value!r}; write it like {example!r}")
        number, unit = float(match.group(1)), match.group(2).lower()
    if unit not in units:
        known = ", ".join(u for u in units if u)
        raise InfrastructureError(f"{what}: unknown unit {unit!r} in {value!r}; use one of {known} (e.g. {example!r})")
    if number < 0:
        raise InfrastructureError(f"{what}: {value!r} is negative; use a value >= 0 like {example!r}")
    return number * units[unit]


def parse_duration(value: str | float, what: str = "duration") -> float:
    """Seconds in a ``tc``-style duration (``"20ms"``, ``"1s"``, ``"250us"``; bare numbers are ms).

    >>> parse_duration("20ms"), parse_duration("1.5s"), parse_duration(0)
    (0.02, 1.5, 0.0)
    """
    return _parse(value, _DURATION_UNITS, what, "20ms")


def parse_rate(value: str | float, what: str = "rate") -> float:
    """Bits per second in a ``tc``-style rate (``"100mbit"``, ``"1gbit"``; ``"mbps"`` is megabytes/s).

    >>> parse_rate("100mbit"), parse_rate("1mbps")
    (100000000.0, 8000000.0)
    """
    return _parse(value, _RATE_UNITS, what, "100mbit")


def parse_size(value: str | int, what: str = "size") -> int:
    """Bytes in a size (``"512MiB"``, ``"2G"`` binary; ``"500MB"`` decimal; bare numbers are bytes).

    >>> parse_size("512MiB"), parse_size("1G"), parse_size("1MB")
    (536870912, 1073741824, 1000000)
    """
    return int(_parse(value, _SIZE_UNITS, what, "512MiB"))


@dataclass
class Service:
    """A service placed on a layer: ``quantity`` instances (``simulator``, ``trainer``, ``inference``).

    ``cpu`` (cores, 1 unless given) and ``memory`` (none unless given) are what one instance
    needs; ``engage place`` uses them, and ``traffic`` (``{other service: mbit/s}``) says how much
    it sends to other services in total; ``pinned`` (true or false) keeps it on the layer that
    lists it (``engage place`` may move the others).
    """

    name: str
    quantity: int = 1
    cpu: float = 1.0
    memory: str | None = None
    traffic: dict[str, float] = field(default_factory=dict)
    pinned: bool = False


@dataclass
class Layer:
    """``hosts`` identical hosts named ``<name>-1`` .. ``<name>-<hosts>``, each limited to ``cpu``
    cores and ``memory`` (``None``: no limit), running ``services``."""

    name: str
    hosts: int = 1
    cpu: float | None = None
    memory: str | None = None
    services: list[Service] = field(default_factory=list)

    def host_names(self) -> list[str]:
        """``["<name>-1", ..., "<name>-<hosts>"]``."""
        return [f"{self.name}-{i}" for i in range(1, self.hosts + 1)]

    @property
    def memory_bytes(self) -> int | None:
        """The memory limit in bytes, or ``None``."""
        return None if self.memory is None else parse_size(self.memory, f"layer {self.name!r} memory")


@dataclass
class NetworkConstraint:
    """Traffic between layers ``src`` and ``dst``: one-way ``delay`` per direction, ``rate``
    (``None``: unlimited), ``loss`` fraction; ``symmetric`` applies it to ``dst -> src`` too."""

    src: str
    dst: str
    delay: str = "0ms"
    rate: str | None = None
    loss: float = 0.0
    symmetric: bool = True

    @property
    def delay_s(self) -> float:
        """One-way delay in seconds."""
        return parse_duration(self.delay, f"network {self.src}->{self.dst} delay")

    @property
    def rate_bps(self) -> float | None:
        """Rate in bits per second, or ``None`` when unlimited."""
        return None if self.rate is None else parse_rate(self.rate, f"network {self.src}->{self.dst} rate")

    def directions(self) -> list[tuple[str, str]]:
        """``[(src, dst)]``, plus ``(dst, src)`` when symmetric."""
        return [(self.src, self.dst), (self.dst, self.src)] if self.symmetric else [(self.src, self.dst)]


def _default_layers() -> list[Layer]:
    return [Layer(name="local", hosts=1)]


@dataclass
class Infrastructure:
    """Where the jobs of a sweep run: a ``provider`` (``local``, ``netns``, ``g5k``, ``chameleon``,
    ``vagrant``, ``static``), its ``layers``, the ``network`` constraints between them, and
    provider ``options`` (testbed site, cluster, walltime, SSH user, ...)."""

    provider: str = "local"
    layers: list[Layer] = field(default_factory=_default_layers)
    network: list[NetworkConstraint] = field(default_factory=list)
    options: dict[str, Any] = field(default_factory=dict)

    # ------------------------------------------------------------------ construction

    @classmethod
    def from_dict(cls, data: Mapping[str, Any] | None) -> Infrastructure:
        """Build from a plain mapping (a YAML file or an OmegaConf node converted to a container).

        Unknown keys are an :class:`InfrastructureError` naming the key and the known ones.
        """
        if data is None:
            return cls()
        if hasattr(data, "_metadata"):  # an OmegaConf node
            from omegaconf import OmegaConf

            data = OmegaConf.to_container(data, resolve=True)  # type: ignore[assignment]
        if not isinstance(data, Mapping):
            raise InfrastructureError(f"infrastructure: expected a mapping, got {type(data).__name__}")
        data = dict(data)
        _check_keys(data, cls, "infrastructure")
        layers = []
        for i, raw in enumerate(data.get("layers") or []):
            where = f"infrastructure.layers[{i}]"
            if not isinstance(raw, Mapping):
                raise InfrastructureError(f"{where}: expected a mapping with name, hosts, cpu, memory, services")
            raw = dict(raw)
            _check_keys(raw, Layer, where)
            if "name" not in raw:
                raise InfrastructureError(f"{where}.name is missing; give every layer a name such as 'edge'")
            services = []
            for j, svc in enumerate(raw.get("services") or []):
                swhere = f"{where}.services[{j}]"
                if isinstance(svc, str):
                    svc = {"name": svc}
                if not isinstance(svc, Mapping) or "name" not in svc:
                    raise InfrastructureError(f"{swhere}: expected a name or a mapping with name and quantity")
                svc = dict(svc)
                _check_keys(svc, Service, swhere)
                services.append(Service(**svc))
            raw["services"] = services
            layers.append(Layer(**raw))
        network = []
        for i, raw in enumerate(data.get("network") or []):
            where = f"infrastructure.network[{i}]"
            if not isinstance(raw, Mapping):
                raise InfrastructureError(f"{where}: expected a mapping with src, dst, delay, rate, loss, symmetric")
            raw = dict(raw)
            _check_keys(raw, NetworkConstraint, where)
            for key in ("src", "dst"):
                if key not in raw:
                    raise InfrastructureError(f"{where}.{key} is missing; name the layers the constraint links")
            network.append(NetworkConstraint(**raw))
        return cls(
            provider=str(data.get("provider", "local")),
            layers=layers if "layers" in data and data["layers"] is not None else _default_layers(),
            network=network,
            options=dict(data.get("options") or {}),
        )

    def to_dict(self) -> dict[str, Any]:
        """A plain mapping that :meth:`from_dict` reads back (what ``infrastructure.yaml`` holds)."""
        return dataclasses.asdict(self)

    # ------------------------------------------------------------------ queries

    def layer(self, name: str) -> Layer:
        """The layer called ``name``."""
        for layer in self.layers:
            if layer.name == name:
                return layer
        raise InfrastructureError(f"no layer named {name!r}; layers are {[lay.name for lay in self.layers]}")

    def host_names(self) -> list[str]:
        """Every host name, layer by layer."""
        return [name for layer in self.layers for name in layer.host_names()]

    def iter_hosts(self) -> Iterator[tuple[Layer, str]]:
        """``(layer, host name)`` for every host."""
        for layer in self.layers:
            for name in layer.host_names():
                yield layer, name

    def constraint_between(self, src_layer: str, dst_layer: str) -> NetworkConstraint | None:
        """The constraint that applies to traffic from ``src_layer`` to ``dst_layer``, if any."""
        for constraint in self.network:
            if (src_layer, dst_layer) in constraint.directions():
                return constraint
        return None

    # ------------------------------------------------------------------ validation

    def validate(self, known_providers: list[str] | None = None) -> None:
        """Raise :class:`InfrastructureError` (one line) on the first problem found.

        Checks the provider name, that every layer has a unique name and at least one host,
        per-host CPU and memory, and that each constraint names existing layers with readable
        units and a loss fraction in ``[0, 1)``.
        """
        if known_providers is None:
            from engage.deploy.providers import provider_names

            known_providers = provider_names()
        if self.provider not in known_providers:
            raise InfrastructureError(
                f"infrastructure.provider: unknown provider {self.provider!r}; known providers: "
                f"{', '.join(known_providers)}"
            )
        if not self.layers:
            raise InfrastructureError("infrastructure.layers is empty; declare at least one layer with hosts >= 1")
        seen: set[str] = set()
        for i, layer in enumerate(self.layers):
            # paths as in the YAML list (infrastructure.layers[1]), as reading it names them
            where, named = f"infrastructure.layers[{i}]", f"layer {layer.name!r}"
            if not isinstance(layer.name, str) or not re.fullmatch(r"[A-Za-z][A-Za-z0-9_]*", layer.name):
                raise InfrastructureError(
                    f"{where}.name is {layer.name!r}; a layer name starts with a letter and holds only "
                    f"letters, digits and '_' (host names are '<layer>-<i>')"
                )
            if layer.name in seen:
                raise InfrastructureError(f"{where}.name: two layers are named {layer.name!r}; give each a unique name")
            seen.add(layer.name)
            if isinstance(layer.hosts, bool) or not isinstance(layer.hosts, int) or layer.hosts < 1:
                raise InfrastructureError(f"{where}.hosts is {layer.hosts!r} ({named}); a layer needs hosts >= 1")
            if layer.cpu is not None and (isinstance(layer.cpu, bool) or float(layer.cpu) <= 0):
                raise InfrastructureError(f"{where}.cpu is {layer.cpu!r} ({named}); use a number of cores > 0, or null")
            if layer.memory is not None and parse_size(layer.memory, f"{where}.memory") == 0:
                raise InfrastructureError(
                    f"{where}.memory is {layer.memory!r} ({named}); use a size like '512MiB', or null"
                )
            for j, service in enumerate(layer.services):
                at, named = f"{where}.services[{j}]", f"service {service.name!r}"
                if isinstance(service.quantity, bool) or not isinstance(service.quantity, int) or service.quantity < 1:
                    raise InfrastructureError(f"{at}.quantity is {service.quantity!r} ({named}); use an integer >= 1")
                if service.memory is not None:
                    parse_size(service.memory, f"{at}.memory")
                if not isinstance(service.pinned, bool):
                    raise InfrastructureError(f"{at}.pinned is {service.pinned!r} ({named}); use true or false")
        pairs: set[tuple[str, str]] = set()
        for i, constraint in enumerate(self.network):
            where = f"infrastructure.network[{i}]"
            for key in ("src", "dst"):
                name = getattr(constraint, key)
                if name not in seen:
                    raise InfrastructureError(
                        f"{where}.{key}: no layer named {name!r}; layers are {', '.join(sorted(seen))}"
                    )
            if constraint.src == constraint.dst:
                raise InfrastructureError(
                    f"{where}: src and dst are both {constraint.src!r}; constraints link two different layers"
                )
            parse_duration(constraint.delay, f"{where}.delay")
            if constraint.rate is not None and parse_rate(constraint.rate, f"{where}.rate") <= 0:
                raise InfrastructureError(f"{where}.rate is {constraint.rate!r}; use a rate > 0 like '100mbit' or null")
            if not isinstance(constraint.symmetric, bool):
                raise InfrastructureError(f"{where}.symmetric is {constraint.symmetric!r}; use true or false")
            loss = constraint.loss
            if isinstance(loss, bool) or not isinstance(loss, (int, float)) or not 0.0 <= float(loss) < 1.0:
                raise InfrastructureError(f"{where}.loss is {loss!r}; use a fraction in [0, 1) (5% is 0.05)")
            for direction in constraint.directions():
                if direction in pairs:
                    raise InfrastructureError(
                        f"{where}: a second constraint for {direction[0]} -> {direction[1]}; keep one per direction"
                    )
                pairs.add(direction)


def _check_keys(data: Mapping[str, Any], cls: type, where: str) -> None:
    known = [f.name for f in dataclasses.fields(cls)]
    for key in data:
        if key not in known:
            raise InfrastructureError(f"{where}: unknown key {key!r}; known keys are {', '.join(known)}")
