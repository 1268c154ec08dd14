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

Example::

    >>> import numpy as np
    >>> policy = read_policy("fifo")
    >>> policy.choose(np.array([5, 2, 7]), np.array([30, 10, 20]), 2, np.random.default_rng(0)).tolist()
    [2, 7]
"""

from __future__ import annotations

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

    def choose(self, occupied: np.ndarray, arrival: np.ndarray, n: int, rng: np.random.Generator) -> np.ndarray:
        """``n`` of the ``occupied`` slots (``arrival``: their arrival numbers) for a batch."""
        return occupied[rng.choice(len(occupied), size=n, replace=False)]

    def __repr__(self) -> str:
        return f"{type(self).__name__}()"


class FIFO(ReadPolicy):
    """First in, first out: the oldest samples, in order."""

    name = "fifo"

    def choose(self, occupied: np.ndarray, arrival: np.ndarray, n: int, rng: np.random.Generator) -> np.ndarray:
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


#: the policies by the names the config uses
POLICIES: dict[str, type[ReadPolicy]] = {p.name: p for p in (FIFO, FIRO, Reservoir)}


def read_policy(policy: str | ReadPolicy) -> ReadPolicy:
    """The policy named ``policy`` (or ``policy`` itself)."""
    if isinstance(policy, ReadPolicy):
        return policy
    if policy not in POLICIES:
        raise ValueError(f"buffer policy {policy!r} is unknown; use one of {', '.join(POLICIES)}")
    return POLICIES[policy]()
