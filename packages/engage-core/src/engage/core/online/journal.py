"""The simulation journal: one JSON line per change of a simulation's state, at any fsspec URL.

Lines are appended as they happen, so the journal of a killed run is complete up to the kill;
a journal is a record for people and tools, never read to restore a run (a checkpoint holds
that state). Entries carry the run's id, so runs that share a journal file stay apart.

Example::

    >>> journal = Journal("memory://engage-doc/journal.jsonl")
    >>> journal.append({"simulation_id": 0, "status": "running"})
    >>> journal.append({"simulation_id": 0, "status": "finished"})
    >>> journal.latest()[0]["status"]
    'finished'
"""

from __future__ import annotations

import json
import os
import threading
import time
from typing import Any, BinaryIO

import fsspec
from fsspec.implementations.local import LocalFileSystem


class Journal:
    """Append-only JSON lines at ``url`` (local path, ``file://``, ``memory://``, ``s3://``...).

    On a local disk the journal keeps one file open for appending and writes each line with one
    ``write`` call as it comes (no open and close per line: a run of 100,000 simulations writes
    200,000 lines); :meth:`close` releases it. A file rotated (renamed) or deleted while the run
    writes is noticed at the next line, which goes into a new file at the journal's path (one
    ``stat`` a line, as logging's ``WatchedFileHandler``). File systems that cannot append (object stores)
    get the whole journal rewritten on each change, which keeps it correct at the cost of
    bandwidth.
    """

    def __init__(self, url: str, run_id: str | None = None):
        self.url = url
        #: written into every entry; :meth:`latest` and :meth:`table` read only this run's entries
        self.run_id = run_id
        # a private filesystem instance: fsspec caches instances, and a transaction on the shared
        # one (Lightning writes checkpoints in one) would capture appends made from this thread
        self.fs, self.path = fsspec.core.url_to_fs(url, skip_instance_cache=True)
        parent = self.fs._parent(self.path)
        if parent:
            self.fs.makedirs(parent, exist_ok=True)
        self._lines: list[str] | None = None  # kept only when appending is not possible
        self._local = isinstance(self.fs, LocalFileSystem)
        self._file: BinaryIO | None = None  # the local file, open for appending
        self._lock = threading.Lock()

    def append(self, entry: dict[str, Any]) -> None:
        """Write one entry (a ``time`` field is added when missing)."""
        entry = {"time": time.time(), **entry}
        if self.run_id is not None:
            entry.setdefault("run_id", self.run_id)
        line = json.dumps(entry, default=str) + "\n"
        with self._lock:
            if self._local:
                if self._file is not None and not self._still_at_path(self._file):
                    self._file.close()  # rotated or deleted: the lines from now on go to the path
                    self._file = None
                if self._file is None:
                    self._file = open(self.path, "ab", buffering=0)  # kept open until close()
                data = memoryview(line.encode())
                while data:  # one write(2) on a file opened O_APPEND as a rule; a short write goes on
                    written = self._file.write(data)
                    if not written:
                        raise OSError(f"journal {self.url}: nothing written")
                    data = data[written:]
                return
            if self._lines is None:
                try:
                    with self.fs.open(self.path, "ab") as f:
                        f.write(line.encode())
                    return
                except (NotImplementedError, ValueError, OSError):
                    self._lines = [json.dumps(e, default=str) + "\n" for e in self.read()]
            self._lines.append(line)
            with self.fs.open(self.path, "wb") as f:
                f.write("".join(self._lines).encode())

    def _still_at_path(self, file: BinaryIO) -> bool:
        """Whether the journal's path still names the file open for appending."""
        try:
            named = os.stat(self.path)
        except FileNotFoundError:
            return False
        opened = os.fstat(file.fileno())
        return (named.st_dev, named.st_ino) == (opened.st_dev, opened.st_ino)

    def close(self) -> None:
        """Release the open file (a later :meth:`append` opens it again)."""
        with self._lock:
            if self._file is not None:
                self._file.close()
                self._file = None

    def read(self) -> list[dict[str, Any]]:
        """Every entry in order ([] when the journal does not exist yet); a torn last line from a
        killed writer is skipped."""
        if not self.fs.exists(self.path):
            return []
        with self.fs.open(self.path, "rb") as f:
            text = f.read().decode(errors="replace")
        entries = []
        for line in text.splitlines():
            try:
                entries.append(json.loads(line))
            except json.JSONDecodeError:
                continue
        return entries

    def latest(self) -> dict[int, dict[str, Any]]:
        """The last entry of each simulation id (of this journal's run, when it has a run id)."""
        out: dict[int, dict[str, Any]] = {}
        for entry in self.read():
            if self.run_id is not None and entry.get("run_id") != self.run_id:
                continue
            if "simulation_id" in entry:
                out[int(entry["simulation_id"])] = entry
        return out
