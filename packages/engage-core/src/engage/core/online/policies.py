"""The training buffer's read policies: which samples a batch holds, and when samples leave.

A policy is an object the buffer asks; :func:`read_policy` turns the names the config uses
(``fifo``, ``firo``, ``reservoir``) into one.

``fifo``
    first in, first out; each sample is read ``max_reads`` times (default once), oldest first.
``firo``
    first in, random out: a batch is drawn uniformly from the buffer, so consecutive time steps
    of one simulation are spread over many batches; a sample leaves after ``max_reads`` reads.
``reservoir``
    samples stay and are drawn again and again (up to ``max_reads`` if set); when the buffer is
    full a new sample evicts a random sample that has already been read at least once.
``deterministic``
    each sample once, in (simulation id, sample index) order, whatever the timing of the
    simulations: a run and its replay train on the same batches. A simulation's samples are
    served once every simulation with a smaller id has sent all of its own; credit keeps the
    simulations ahead from filling the buffer with samples it cannot serve yet
    (:class:`~engage.core.online.credit.Credit`).

Example::

    >>> import numpy as np
    >>> policy = read_policy("fifo")
    >>> policy.choose(np.array([5, 2, 7]), np.array([30, 10, 20]), 2, np.random.default_rng(0)).tolist()
    [2, 7]
"""

from __future__ import annotations

import math

import numpy as np


class ReadPolicy:
    """Which samples a batch takes (:meth:`choose`), how often a sample is read by default, and
    whether a full buffer may overwrite samples already read."""

    #: the name the config uses
    name: str = ""
    #: reads of one sample before it leaves, when ``max_reads`` is not given (None: no bound)
    default_max_reads: int | None = 1
    #: a full buffer overwrites a random sample read at least once to take a new one
    evicts: bool = False
    #: serves samples in simulation order (see :class:`Deterministic`): the buffer asks
    #: :meth:`servable`, credit follows the simulations' order
    ordered: bool = False

    def choose(
        self,
        occupied: np.ndarray,
        arrival: np.ndarray,
        n: int,
        rng: np.random.Generator,
        simulation: np.ndarray | None = None,
    ) -> np.ndarray:
        """``n`` of the ``occupied`` slots (``arrival``: their arrival numbers) for a batch; an
        ``ordered`` policy is given their simulation ids too (``simulation``)."""
        return occupied[rng.choice(len(occupied), size=n, replace=False)]

    def servable(self, occupied: np.ndarray, simulation: np.ndarray) -> np.ndarray:
        """The ``occupied`` slots a batch may take now (``simulation``: their simulation ids)."""
        return occupied

    def simulation_started(self, simulation_id: int) -> None:
        """A simulation was launched (again, for a retry)."""

    def simulation_ended(self, simulation_id: int) -> None:
        """A simulation sent its last sample, or was given up."""

    def open_before(self, simulation_id: int) -> list[int]:
        """The simulations still sending whose samples come before ``simulation_id``'s (an
        ordered policy's credit waits for them)."""
        return []

    def __repr__(self) -> str:
        return f"{type(self).__name__}()"


class FIFO(ReadPolicy):
    """First in, first out: the oldest samples, in order."""

    name = "fifo"

    def choose(
        self,
        occupied: np.ndarray,
        arrival: np.ndarray,
        n: int,
        rng: np.random.Generator,
        simulation: np.ndarray | None = None,
    ) -> np.ndarray:
        if n < len(occupied):
            # the n oldest in linear time, then in order: a full buffer is sorted once per batch otherwise
            oldest = np.argpartition(arrival, n - 1)[:n]
            return occupied[oldest[np.argsort(arrival[oldest])]]
        return occupied[np.argsort(arrival)]


class FIRO(ReadPolicy):
    """First in, random out: a uniform draw from the samples held."""

    name = "firo"


class Reservoir(ReadPolicy):
    """Samples are drawn again and again; a full buffer evicts a random sample already read."""

    name = "reservoir"
    default_max_reads = None
    evicts = True


class Deterministic(ReadPolicy):
    """Each sample once, in (simulation id, sample index) order, whatever the timing.

    The samples of a simulation are served once every simulation launched with a smaller id has
    sent all of its own (or was given up): the batches are then the same in every run with the
    same simulations, sampler and batch size. Credit goes to the simulations in id order, each
    leaving the buffer room for what those before it still have to send, so samples that cannot
    be served yet never fill it.

    Example::

        >>> policy = Deterministic()
        >>> for sim in (0, 1):
        ...     policy.simulation_started(sim)
        >>> slots, sims = np.array([0, 1, 2, 3]), np.array([1, 0, 1, 0])
        >>> policy.servable(slots, sims).tolist()  # simulation 0 is still sending
        [1, 3]
        >>> policy.simulation_ended(0)
        >>> policy.choose(slots, np.array([0, 1, 2, 3]), 3, np.random.default_rng(), simulation=sims).tolist()
        [1, 3, 0]
    """

    name = "deterministic"
    ordered = True

    def __init__(self) -> None:
        self._open: set[int] = set()

    def simulation_started(self, simulation_id: int) -> None:
        self._open.add(int(simulation_id))

    def simulation_ended(self, simulation_id: int) -> None:
        self._open.discard(int(simulation_id))

    @property
    def frontier(self) -> float:
        """The smallest id of a simulation still sending (infinity when none is)."""
        return min(self._open) if self._open else math.inf

    def open_before(self, simulation_id: int) -> list[int]:
        """The simulations still sending whose ids are smaller than ``simulation_id``."""
        return sorted(i for i in self._open if i < simulation_id)

    def servable(self, occupied: np.ndarray, simulation: np.ndarray) -> np.ndarray:
        return occupied[simulation <= self.frontier]

    def choose(
        self,
        occupied: np.ndarray,
        arrival: np.ndarray,
        n: int,
        rng: np.random.Generator,
        simulation: np.ndarray | None = None,
    ) -> np.ndarray:
        keys = (arrival,) if simulation is None else (arrival, simulation)  # the last key sorts first
        return occupied[np.lexsort(keys)[:n]]


#: the policies by the names the config uses
POLICIES: dict[str, type[ReadPolicy]] = {p.name: p for p in (FIFO, FIRO, Reservoir, Deterministic)}


def read_policy(policy: str | ReadPolicy) -> ReadPolicy:
    """The policy named ``policy`` (or ``policy`` itself)."""
    if isinstance(policy, ReadPolicy):
        return policy
    if policy not in POLICIES:
        raise ValueError(f"buffer policy {policy!r} is unknown; use one of {', '.join(POLICIES)}")
    return POLICIES[policy]()
