"""The MLflow run context of a sweep job: the runs a job's own code opens (``mlflow.start_run()``,
Lightning's ``MLFlowLogger``) are made under the sweep's run and named by their job from the start.

MLflow asks every installed run context provider (entry point group
``mlflow.run_context_provider``) for tags when a run is created through its fluent API or a
Lightning logger; this one answers only inside a job of an engage sweep. Without it, such a run
would become the sweep's child only once its job ended, and a sweep stopped meanwhile would leave
it alone, without a parent.

Example::

    >>> SweepJobContext().in_context()  # not a sweep's job
    False
"""

from __future__ import annotations

import os
from pathlib import Path

from mlflow.tracking.context.abstract_context import RunContextProvider


class SweepJobContext(RunContextProvider):
    """Tags of a run opened in a sweep's job: its job, attempt and host, and its parent, the
    sweep's run, once the launcher has made it. Tags the code gives itself win."""

    def in_context(self) -> bool:
        from engage.deploy.job import JOB_FILE_ENV

        return JOB_FILE_ENV in os.environ

    def tags(self) -> dict[str, str]:
        from engage.core.tracking.store import PARENT_RUN_ENV, PARENT_RUN_FILE_ENV
        from engage.deploy.job import JobContract
        from engage.deploy.tracking import ATTEMPT_TAG, JOB_TAG, PARENT_TAG

        contract = JobContract.current()
        if contract is None or contract.tracking is None:
            return {}
        tags = {JOB_TAG: str(contract.index), ATTEMPT_TAG: str(contract.attempt), "engage.host": contract.host}
        parent = os.environ.get(PARENT_RUN_ENV)
        if not parent and os.environ.get(PARENT_RUN_FILE_ENV):
            try:  # written once the launcher made it; a run opened earlier gets it at the job's end
                parent = Path(os.environ[PARENT_RUN_FILE_ENV]).read_text().strip()
            except OSError:
                parent = None
        if parent:
            tags[PARENT_TAG] = parent
        return tags
