"""How the ranks of a distributed online fit tell one another why one of them failed."""

from __future__ import annotations

import os
import subprocess
import sys
import time

from engage.core.online.outcome import OnlineRunFailed
from engage.core.online.rank_failures import FAILURE_FILE, RankFailures, peer_lost


def test_a_rank_reads_why_another_failed_and_only_what_this_fit_wrote(tmp_path):
    def where(rank):
        return str(tmp_path / f"rank{rank}")

    stale = tmp_path / "rank1" / FAILURE_FILE  # an earlier incarnation's, kept by a resumed run
    stale.parent.mkdir()
    stale.write_text("OnlineRunFailed: the earlier run's cause")
    os.utime(stale, (time.time() - 60, time.time() - 60))
    zero, one = RankFailures(where, 0, 2), RankFailures(where, 1, 2)
    assert zero.peer(wait_s=0) is None
    # what every rank gets, or another rank's failure seen from here: nothing written
    for nothing in (
        KeyboardInterrupt(),
        SystemExit(143),
        RuntimeError("[../gloo/pair.cc:553] Connection closed by peer"),
    ):
        one.note(nothing)
        assert zero.peer(wait_s=0) is None
    short = OnlineRunFailed("online run failed: 1 of 4 simulations completed")
    one.note(short)
    assert zero.peer(wait_s=0) == "rank 1 of 2 failed: online run failed: 1 of 4 simulations completed"
    assert short.left_to_rank_zero  # rank 0 reports a run that fell short; a crash keeps its traceback
    crash = IndexError("list index out of range")
    one.note(crash)
    assert zero.peer(wait_s=0) == "rank 1 of 2 failed: IndexError: list index out of range"
    assert not getattr(crash, "left_to_rank_zero", False)
    assert peer_lost(RuntimeError("[/gloo/transport/tcp/pair.cc:553] Connection closed by peer [127.0.0.1]:1"))
    assert not peer_lost(ConnectionResetError("Connection reset by peer"))  # a server's, not a rank's


def test_a_rank_that_left_nothing_is_named_by_how_its_process_ended(tmp_path):
    killed = subprocess.Popen([sys.executable, "-c", "import os, signal; os.kill(os.getpid(), signal.SIGKILL)"])
    killed.wait()
    failures = RankFailures(lambda rank: str(tmp_path / f"rank{rank}"), 0, 2)
    assert failures.peer([killed], wait_s=0) == "rank 1 of 2 stopped: its process was killed by SIGKILL"
