"""Checkpoints written so that a kill at any moment leaves the previous one whole."""

from __future__ import annotations

import io
import os
import tempfile
import time
from pathlib import Path
from typing import Any

import torch
from lightning.pytorch.plugins.io import TorchCheckpointIO


class AtomicCheckpointIO(TorchCheckpointIO):
    """Lightning's checkpoint IO, but each file appears whole or not at all: the checkpoint is
    written to a temporary file beside its path, flushed to disk, then renamed over it. A run
    killed while it writes ``last.ckpt`` keeps the ``last.ckpt`` before it (Lightning's own IO
    writes into the file in place, and a kill then leaves it cut short). Local paths only;
    other URLs are written as Lightning writes them. The temporary files a process killed while
    it wrote left in a folder (``.last.ckpt.*.tmp``) are removed when the next run first writes
    there.

    Example::

        >>> import lightning.pytorch as pl
        >>> trainer = pl.Trainer(plugins=[AtomicCheckpointIO()], logger=False, enable_progress_bar=False)
    """

    def __init__(self) -> None:
        super().__init__()
        self._started = time.time()
        self._swept: set[Path] = set()

    def save_checkpoint(self, checkpoint: dict[str, Any], path: Any, storage_options: Any = None) -> None:
        target = Path(path)
        if "://" in str(path):
            super().save_checkpoint(checkpoint, path, storage_options)
            return
        target.parent.mkdir(parents=True, exist_ok=True)
        if target.parent not in self._swept:
            self._swept.add(target.parent)
            for stale in target.parent.glob(".*.ckpt.*.tmp"):
                try:
                    if stale.stat().st_mtime < self._started:  # another, killed, process's
                        stale.unlink()
                except OSError:
                    continue
        data = io.BytesIO()
        torch.save(checkpoint, data)
        fd, tmp = tempfile.mkstemp(prefix=f".{target.name}.", suffix=".tmp", dir=target.parent)
        try:
            with os.fdopen(fd, "wb") as f:
                f.write(data.getbuffer())
                f.flush()
                os.fsync(f.fileno())
            os.replace(tmp, target)
        except BaseException:
            if os.path.exists(tmp):
                os.unlink(tmp)
            raise
