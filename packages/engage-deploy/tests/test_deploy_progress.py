"""A sweep shows its jobs as they end: a line each with status, duration and counts, or a live bar."""

import logging

from engage.deploy.progress import SweepProgress


def test_each_ended_job_is_one_line_with_the_counts(caplog):
    caplog.set_level(logging.INFO, logger="engage.deploy.sweep")
    with SweepProgress(total=3, live=False) as progress:
        for index in range(3):
            progress.started(index)
        assert progress.counts() == {"completed": 0, "failed": 0, "running": 3, "waiting": 0}
        progress.ended(1, "FAILED")
        progress.ended(0, "COMPLETED")
    lines = [r.getMessage() for r in caplog.records]
    assert lines[0].startswith("engage launcher: job #1 FAILED in ") and lines[0].endswith("(1 of 3 ended, 1 failed)")
    assert lines[1].endswith("(2 of 3 ended, 1 failed)")
    assert progress.counts() == {"completed": 1, "failed": 1, "running": 1, "waiting": 0}


def test_the_live_bar_counts_the_same_and_logs_nothing(caplog):
    caplog.set_level(logging.INFO, logger="engage.deploy.sweep")
    with SweepProgress(total=2, live=True) as progress:
        progress.started(0)
        progress.ended(0, "COMPLETED")
        assert progress._bar is not None
    assert progress._bar is None and not caplog.records
    assert progress.counts() == {"completed": 1, "failed": 0, "running": 0, "waiting": 1}


def test_a_long_job_still_shows_the_counts_now_and_then(caplog):
    """Outside a terminal (a log, a batch job's output), a launch whose jobs run long says how
    they stand every heartbeat_s, instead of nothing until the first job ends."""
    import time

    caplog.set_level(logging.INFO, logger="engage.deploy.sweep")
    with SweepProgress(total=2, live=False, heartbeat_s=0.2) as progress:
        progress.started(0)
        time.sleep(0.7)
    beats = [r.getMessage() for r in caplog.records]
    assert len(beats) >= 2, beats
    assert beats[0].startswith("engage launcher: 1 running, 0 completed, 0 failed, 1 waiting (0m0"), beats


def test_jobs_pending_in_a_batch_queue_count_as_queued_not_running(caplog):
    caplog.set_level(logging.INFO, logger="engage.deploy.sweep")
    pending = {1, 2}
    with SweepProgress(total=4, live=False, heartbeat_s=0.2, queued=lambda: pending) as progress:
        for index in range(3):
            progress.started(index)
        assert progress.counts() == {"completed": 0, "failed": 0, "running": 1, "waiting": 1, "queued": 2}
        pending.discard(1)  # Slurm started it
        progress.ended(0, "COMPLETED")
        assert progress.counts() == {"completed": 1, "failed": 0, "running": 1, "waiting": 1, "queued": 1}
        import time

        time.sleep(0.5)
    beats = [r.getMessage() for r in caplog.records if "waiting (" in r.getMessage()]
    assert beats and beats[0].startswith("engage launcher: 1 running, 1 queued, 1 completed, 0 failed, 1 waiting")
