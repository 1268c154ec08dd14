"""A sweep launched again into its sweep directory continues its MLflow parent run.

A launcher that resumes (engage-deploy's, ``hydra.launcher.resume=true``) runs only the jobs an
earlier launch into the same ``hydra.sweep.dir`` did not complete; the jobs taken from that
launch keep their runs. The sweep is then one MLflow parent run over all its launches, as one
Lightning fit resumed from a checkpoint is one run. The launcher says which run its last launch
there recorded under (a launcher class's ``resumed_parent(config)``; engage-deploy's reads its
experiment folders), and a resuming launch reopens that run (``RUNNING`` again, ended with this
launch's status) when :func:`continuable` finds it the same sweep's: in the same store and
experiment, tagged ``engage.kind=sweep`` with the same ``engage.sweep_dir``, not deleted, and
with the same ``sweep_overrides`` param where it has one. Otherwise a new parent run opens.

Example (``client`` an ``MlflowClient`` of the sweep's store)::

    if run_id and continuable(client, run_id, "multirun/exp1", experiment_id):
        reopen(client, run_id)
"""

from __future__ import annotations

from typing import Any

__all__ = ["LAUNCHES_TAG", "continuable", "reopen"]

#: the tag of a sweep's run counting the launches it spans (from 2; absent: one)
LAUNCHES_TAG = "engage.launches"


def continuable(
    client: Any, run_id: str, sweep_dir: str, experiment_id: str, sweep_overrides: str | None = None
) -> bool:
    """Whether ``run_id``, the run an earlier launch into ``sweep_dir`` recorded under, is this
    sweep's run (see the module)."""
    try:
        run = client.get_run(run_id)
    except Exception:  # another store's run, or one deleted for good
        return False
    tags, params = run.data.tags, run.data.params
    return (
        run.info.lifecycle_stage == "active"
        and run.info.experiment_id == experiment_id
        and tags.get("engage.kind") == "sweep"
        and tags.get("engage.sweep_dir") == str(sweep_dir)
        and (sweep_overrides is None or params.get("sweep_overrides", sweep_overrides) == sweep_overrides)
    )


def reopen(client: Any, run_id: str) -> None:
    """Mark ``run_id`` ``RUNNING`` again, counting the launches it spans in :data:`LAUNCHES_TAG`;
    the cause an earlier launch ended with (``engage.error``) goes: this launch says its own."""
    from engage.core.tracking.store import ERROR_TAG

    tags = client.get_run(run_id).data.tags
    client.update_run(run_id, status="RUNNING")
    client.set_tag(run_id, LAUNCHES_TAG, str(int(tags.get(LAUNCHES_TAG, "1")) + 1))
    if ERROR_TAG in tags:
        client.delete_tag(run_id, ERROR_TAG)
