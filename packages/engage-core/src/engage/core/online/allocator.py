"""Keep the memory of freed network frames in this process, for the next frames to reuse.

Samples of the buffer's ``zero_copy_bytes`` and more stay in the memory ZeroMQ received them
into, one allocation per message, until a batch has read them. glibc's allocator gives such
memory back to the kernel as soon as it is freed: blocks above its mmap threshold are unmapped,
the top of a heap is trimmed, an empty thread heap is unmapped. Every new frame's pages are then
faulted in and zeroed again. With 4 MiB samples that was 100 to 200 page faults per sample, and
the receiving process spent 800-1030 us of CPU time per sample against 540-660 us without them
(``benchmarks/online_throughput.py``'s transport runs, one simulation).

:func:`retain_freed_memory` raises three of glibc's thresholds (``mallopt``) so that frames come
from its heaps and what they free stays mapped, up to the bytes the training buffer can hold. The
trainer's resident memory then stays at the most frames it held at once: the buffer's capacity,
which the user sized anyway. Settings the process's environment gives the allocator
(``MALLOC_*_``, ``GLIBC_TUNABLES``) or another allocator (``LD_PRELOAD``) take precedence: nothing
is changed then.

Example::

    >>> from engage.core.online.allocator import retain_freed_memory
    >>> retain_freed_memory(frame_bytes=4 << 20, keep_bytes=1 << 30) in (True, False)
    True
"""

from __future__ import annotations

import ctypes
import logging
import os
import platform
import threading

log = logging.getLogger("engage.online")

# mallopt parameters (malloc.h)
M_TRIM_THRESHOLD = -1
M_TOP_PAD = -2
M_MMAP_THRESHOLD = -3
#: the largest mmap threshold glibc accepts on 64-bit hosts (half the size of a thread heap)
MMAP_THRESHOLD_MAX = 32 << 20
#: a thread heap's size: with this much padding, glibc keeps thread heaps (ZeroMQ's I/O thread
#: allocates the frames) instead of unmapping them when they empty
TOP_PAD = 64 << 20

_lock = threading.Lock()
_applied: dict[int, int] = {}  # what this process set, so later calls only ever raise it


def configured_elsewhere() -> str | None:
    """Why this process's allocator must be left alone (its environment configures it, or it is
    not glibc's), or None."""
    if platform.system() != "Linux" or platform.libc_ver()[0] != "glibc":
        return "the C library is not glibc"
    if "malloc" in os.environ.get("LD_PRELOAD", ""):
        return "another allocator is preloaded (LD_PRELOAD)"
    if "glibc.malloc." in os.environ.get("GLIBC_TUNABLES", ""):
        return "GLIBC_TUNABLES configures it"
    named = sorted(key for key in os.environ if key.startswith("MALLOC_") and key.endswith("_"))
    if named:
        return f"{', '.join(named)} configure{'s' if len(named) == 1 else ''} it"
    return None


def retain_freed_memory(frame_bytes: int, keep_bytes: int) -> bool:
    """Have glibc serve allocations of ``frame_bytes`` from its heaps and keep up to
    ``keep_bytes`` of freed memory mapped; returns whether the allocator is set so.

    It is left alone (False) when :func:`configured_elsewhere` says so, or when frames are too
    large for glibc's heaps (above :data:`MMAP_THRESHOLD_MAX`). Settings only ever grow: a second
    buffer in this process keeps what the first one needed.
    """
    if frame_bytes <= 0 or keep_bytes < 0:
        raise ValueError(f"frame_bytes must be > 0 and keep_bytes >= 0, got {frame_bytes} and {keep_bytes}")
    reason = configured_elsewhere()
    if reason is None and frame_bytes >= MMAP_THRESHOLD_MAX - (1 << 20):
        reason = f"frames of {frame_bytes / 2**20:.0f} MiB are mapped one by one whatever it is set to"
    if reason is not None:
        log.debug("the memory allocator is left as it is: %s", reason)
        return False
    # twice the frame: ZeroMQ and malloc add a header to the sample, and a coalesced message is larger
    wanted = {
        M_MMAP_THRESHOLD: min(MMAP_THRESHOLD_MAX, max(2 * frame_bytes, 1 << 20)),
        M_TRIM_THRESHOLD: max(keep_bytes, TOP_PAD),
        M_TOP_PAD: TOP_PAD,
    }
    with _lock:
        if all(_applied.get(key, -1) >= value for key, value in wanted.items()):
            return True
        mallopt = ctypes.CDLL(None).mallopt
        mallopt.argtypes, mallopt.restype = [ctypes.c_int, ctypes.c_int], ctypes.c_int
        for key, value in wanted.items():
            value = max(value, _applied.get(key, 0))
            if value > 0x7FFFFFFF:
                value = 0x7FFFFFFF  # mallopt takes an int: 2 GiB kept is as good as more
            if not mallopt(key, value):
                log.debug("mallopt(%d, %d) was refused: the memory allocator is left as it is", key, value)
                return False
            _applied[key] = value
    log.info(
        "network frames of %.2f MiB reuse freed memory: the allocator keeps up to %.0f MiB of it",
        frame_bytes / 2**20,
        _applied[M_TRIM_THRESHOLD] / 2**20,
    )
    return True
