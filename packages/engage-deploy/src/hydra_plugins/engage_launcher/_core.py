"""Heavy part of the ``engage`` launcher, imported only when a sweep is launched."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from hydra.core.utils import JobReturn


def launch(launcher: Any, job_overrides: Sequence[Sequence[str]], initial_job_idx: int) -> Sequence[JobReturn]:
    from engage.deploy.sweep import Sweep

    assert launcher.config is not None and launcher.task_function is not None and launcher.hydra_context is not None
    sweep = Sweep(
        hydra_context=launcher.hydra_context,
        task_function=launcher.task_function,
        config=launcher.config,
        options=launcher.params,
    )
    return sweep.run(job_overrides, initial_job_idx)
