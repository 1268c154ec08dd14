"""engage.core.checkpoint_io: checkpoints whole or not at all."""

from __future__ import annotations


def test_a_checkpoint_write_killed_midway_leaves_no_partial_file_for_good(tmp_path):
    """AtomicCheckpointIO: the next run writing in the folder removes the temporary files a killed
    process left there (and none of its own)."""
    import os
    import time

    from engage.core.checkpoint_io import AtomicCheckpointIO

    stale = tmp_path / ".last.ckpt.abc123.tmp"
    stale.write_bytes(b"cut short")
    old = time.time() - 60
    os.utime(stale, (old, old))
    io = AtomicCheckpointIO()
    io.save_checkpoint({"step": 1}, tmp_path / "last.ckpt")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["last.ckpt"]
