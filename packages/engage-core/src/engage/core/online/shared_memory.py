"""The same-host path: the training buffer's sample block in POSIX shared memory.

When a simulation runs on the trainer's host, copying its samples through a TCP socket costs two
copies in the kernel per sample (sender to socket, socket to receiver). Instead, the trainer
places its buffer's block of samples in a shared-memory segment, hands each simulation the slots
it may fill (its credit), and the simulation writes its samples straight into them: one copy, in
the simulation's own process, and the message that follows carries no payload. See
``docs/protocol.md`` (section "Same-host shared memory").

The segment lives under ``/dev/shm`` (Linux). The trainer creates it, removes its name when the
run ends, and registers it with :mod:`multiprocessing.resource_tracker`, whose process removes
it should the trainer be killed. A simulation maps it by name, which the trainer grants in the
``JOB`` it sends that simulation once authenticated (never a name the client chose); on another
host (or in a container without the trainer's ``/dev/shm``) the name does not resolve and the
simulation streams over its socket as usual.

Example::

    >>> segment = SharedSegment.create(4096)
    >>> mapped = attach(segment.name, 4096)
    >>> mapped[:5] = b"hello"
    >>> bytes(segment.buffer[:5])
    b'hello'
    >>> segment.unlink()
"""

from __future__ import annotations

import logging
import mmap
import os
import secrets

#: where POSIX shared memory objects appear as files (Linux)
SHM_DIR = "/dev/shm"
# Map every page at once (23 ms for the default 128 MiB buffer): otherwise the first write to each
# 4 KiB page of a slot faults, a thousand faults per 4 MiB sample, which cost a third of the
# stream's rate at that size in a run that fills each slot once.
_MAP_FLAGS = mmap.MAP_SHARED | getattr(mmap, "MAP_POPULATE", 0)

log = logging.getLogger("engage.online")


def available() -> bool:
    """Whether this host has POSIX shared memory as files (Linux's ``/dev/shm``)."""
    return os.path.isdir(SHM_DIR) and os.access(SHM_DIR, os.W_OK)


def _check_name(name: str) -> str:
    if not name or "/" in name or name.startswith("."):
        raise ValueError(f"shared memory name {name!r} must be a plain file name (no '/')")
    return os.path.join(SHM_DIR, name)


class SharedSegment:
    """A shared-memory segment this process created; :attr:`buffer` is its writable memory.

    The memory stays mapped as long as anything (e.g. a numpy array over it) refers to it, even
    after :meth:`unlink` removed the name: unlinking only stops new processes from mapping it.
    """

    def __init__(self, name: str, size: int, buffer: mmap.mmap):
        self.name = name
        self.size = size
        self.buffer = buffer
        self._linked = True

    @classmethod
    def create(cls, size: int, prefix: str = "engage") -> SharedSegment:
        """A new zero-filled segment of ``size`` bytes with a unique name; ``OSError`` (``ENOSPC``)
        when the shared-memory file system cannot hold it."""
        if size < 1:
            raise ValueError(f"shared memory size must be >= 1 byte, got {size}")
        name = f"{prefix}-{os.getpid()}-{secrets.token_hex(4)}"
        path = _check_name(name)
        fd = os.open(path, os.O_CREAT | os.O_EXCL | os.O_RDWR, 0o600)
        try:
            # take the pages now: writing to a segment the file system cannot back kills the
            # writer with SIGBUS, so a /dev/shm too small fails here, cleanly, instead
            os.posix_fallocate(fd, 0, size)
            buffer = mmap.mmap(fd, size, flags=_MAP_FLAGS)
        except BaseException:
            os.unlink(path)
            raise
        finally:
            os.close(fd)
        _track(name)
        return cls(name, size, buffer)

    def unlink(self) -> None:
        """Remove the segment's name (idempotent); mappings stay valid."""
        if not self._linked:
            return
        self._linked = False
        try:
            os.unlink(os.path.join(SHM_DIR, self.name))
        except FileNotFoundError:
            pass
        _untrack(self.name)


def attach(name: str, size: int | None = None) -> mmap.mmap:
    """Map the segment ``name`` (at least ``size`` bytes; all of it by default), writable;
    ``OSError`` (e.g. ``FileNotFoundError`` on another host) if it cannot be, ``ValueError`` if
    it is smaller."""
    fd = os.open(_check_name(name), os.O_RDWR)
    try:
        actual = os.fstat(fd).st_size
        if size is not None and actual < size:
            raise ValueError(f"shared memory {name} holds {actual} bytes, {size} expected")
        return mmap.mmap(fd, actual if size is None else size, flags=_MAP_FLAGS)
    finally:
        os.close(fd)


# The resource tracker is a helper process that removes what its parent registered and left
# behind, even when the parent is killed with SIGKILL: a killed trainer leaves no segment.
def _track(name: str) -> None:
    from multiprocessing import resource_tracker

    resource_tracker.register("/" + name, "shared_memory")


def _untrack(name: str) -> None:
    from multiprocessing import resource_tracker

    resource_tracker.unregister("/" + name, "shared_memory")


def segment_for(size: int, prefix: str = "engage", what: str = "training buffer") -> SharedSegment | None:
    """A segment of ``size`` bytes for the training buffer, its name starting with ``prefix``
    (``engage-<run id>``), or None, with one warning naming the size and the fix, when there is
    no ``/dev/shm``, too little room in it, or the segment would take more than half the
    available memory (it takes its memory at once, where a buffer in the trainer's memory takes
    it as it fills: the faster path must not run the host out of memory)."""
    if not available():
        return None
    import psutil

    problem = "more than half the available memory" if size > psutil.virtual_memory().available // 2 else None
    segment = None
    if problem is None:
        try:
            segment = SharedSegment.create(size, prefix)
        except OSError as exc:
            problem = f"{exc.strerror or exc}; enlarge /dev/shm"
    if segment is None:
        log.warning(
            "simulations stream over sockets: no shared memory of %.1f MiB for the %s (%s); "
            "lower data.capacity to use it",
            size / 2**20,
            what,
            problem,
        )
        return None
    log.info(
        "%s in shared memory %s (%.1f MiB): simulations on this host write their samples into it",
        what,
        segment.name,
        size / 2**20,
    )
    return segment
