"""Heavy part of the ``engage`` launcher, imported only when a sweep is launched."""

from __future__ import annotations

import signal
import sys
from collections.abc import Sequence
from typing import Any

from hydra.core.utils import JobReturn


def launch(launcher: Any, job_overrides: Sequence[Sequence[str]], initial_job_idx: int) -> Sequence[JobReturn]:
    from engage.core.quick_exit import skip_last_collection
    from engage.deploy.sweep import Sweep, SweepInterrupted

    assert launcher.options is not None and launcher.hydra_context is not None, "setup() first"
    skip_last_collection()  # 0.7 s of a one-job sweep's exit
    sweep = Sweep(
        hydra_context=launcher.hydra_context,
        task_function=launcher.task_function,
        config=launcher.config,
        options=launcher.options,
        infrastructure=launcher.infrastructure,
        placement=launcher.placement,
    )
    try:
        return sweep.run(job_overrides, initial_job_idx)
    except SweepInterrupted:
        # the running jobs are stopped and marked KILLED already; exit as a process killed by SIGTERM would
        print("engage launcher: stopped by SIGTERM", file=sys.stderr)
        sys.exit(128 + signal.SIGTERM)
    except KeyboardInterrupt:
        print("engage launcher: interrupted", file=sys.stderr)
        sys.exit(128 + signal.SIGINT)
