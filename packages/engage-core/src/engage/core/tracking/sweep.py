"""A Hydra callback that makes every multirun one MLflow parent run with a child run per job."""

from __future__ import annotations

import json
import os
import sys
from typing import Any

from hydra.core.utils import JobReturn, JobStatus
from hydra.experimental.callback import Callback
from omegaconf import DictConfig, OmegaConf

from engage.core.tracking.naming import (
    ATTEMPT_TAG,
    CONFIG_HASH_TAG,
    JOB_TAG,
    PARAM_MAX_CHARS,
    SWEEP_OVERRIDES_TAG,
    sweep_name,
)
from engage.core.tracking.resumed_sweep import continuable, reopen
from engage.core.tracking.store import (
    PARENT_RUN_ENV,
    TRACKING_URI_ENV,
    UNAVAILABLE_FIX,
    TrackingUnavailable,
    check_reachable,
    fallback_tracking_uri,
    resolve_experiment,
    resolve_tracking_uri,
)
from engage.core.tracking.uninterrupted import uninterrupted_client


class MLflowSweepCallback(Callback):
    """Opens a parent run when a multirun starts and closes it when the sweep ends.

    Jobs find the parent through the ``ENGAGE_PARENT_RUN_ID`` environment variable (inherited by
    launcher processes and shipped to remote hosts by engage-deploy) and tag their own runs with
    ``mlflow.parentRunId``. The parent records the sweep's overrides and directory, and at the end
    the number of jobs that finished and failed; it ends ``FAILED`` if any job failed.

    Enabled by default in ``engage run``'s config::

        hydra:
          callbacks:
            mlflow_sweep:
              _target_: engage.core.tracking.sweep.MLflowSweepCallback
    """

    def __init__(self) -> None:
        self.run_id: str | None = None
        self.tracking_uri: str | None = None
        self.counts = {"completed": 0, "failed": 0}
        #: the first failed job's exit code and line, which a sweep that goes on past failed jobs
        #: (Optuna's ``max_failure_rate``) ends with
        self.first_failure: tuple[int, str] | None = None
        self._previous_env: dict[str, str | None] = {}

    def on_multirun_start(self, config: DictConfig, **kwargs: Any) -> None:
        logger_cfg = config.get("logger") or {}
        try:
            # the launcher's refusal comes before the sweep's run exists
            launcher_store = launcher_preflight(config)
        except ValueError as exc:
            print(f"engage run: {exc}", file=sys.stderr)
            raise SystemExit(2) from None
        self.tracking_uri = launcher_store or resolve_tracking_uri(logger_cfg.get("uri"))
        try:
            check_reachable(self.tracking_uri, float(logger_cfg.get("timeout_s", 10.0)))
        except TrackingUnavailable as exc:
            if launcher_store:
                from engage.core.run import EXIT_TRACKING_UNAVAILABLE

                print(f"engage run: {exc}; start it or change the launcher's store", file=sys.stderr)
                raise SystemExit(EXIT_TRACKING_UNAVAILABLE) from None
            if not logger_cfg.get("fallback_local"):
                # before any job (Hydra would turn an exception here into a warning and go on)
                from engage.core.run import EXIT_TRACKING_UNAVAILABLE

                print(f"engage run: {exc}; {UNAVAILABLE_FIX}", file=sys.stderr)
                raise SystemExit(EXIT_TRACKING_UNAVAILABLE) from None
            local = fallback_tracking_uri()
            print(f"engage run: {exc}; logging the sweep locally to {local}", file=sys.stderr)
            self.tracking_uri = local
        client = uninterrupted_client(self.tracking_uri)
        name = resolve_experiment(logger_cfg.get("experiment"))
        experiment = client.get_experiment_by_name(name)
        experiment_id = experiment.experiment_id if experiment else client.create_experiment(name)
        sweep_overrides = swept_overrides(config)
        sweep_dir = str(OmegaConf.select(config, "hydra.sweep.dir", default=""))
        overrides_param = sweep_overrides_param(sweep_overrides)
        # a launch that resumes the sweep of its sweep directory continues that sweep's run
        earlier = launcher_resumed_parent(config)
        if earlier is not None and continuable(client, earlier, sweep_dir, experiment_id, overrides_param):
            reopen(client, earlier)
            self.run_id = earlier
        else:
            run = client.create_run(
                experiment_id,
                run_name=_parent_name(logger_cfg),
                tags={
                    "engage.kind": "sweep",
                    "engage.sweep_dir": sweep_dir,
                    "engage.launcher": str(OmegaConf.select(config, "hydra.launcher._target_", default="")),
                },
            )
            self.run_id = run.info.run_id
            client.log_param(self.run_id, "sweep_overrides", overrides_param)
            # whole, for the names of the jobs' runs (which show the values the sweep varies)
            client.set_tag(self.run_id, SWEEP_OVERRIDES_TAG, json.dumps(sweep_overrides)[:8000])
        for key, value in ((PARENT_RUN_ENV, self.run_id), (TRACKING_URI_ENV, self.tracking_uri)):
            self._previous_env[key] = os.environ.get(key)
            os.environ[key] = value

    def on_job_end(self, config: DictConfig, job_return: JobReturn, **kwargs: Any) -> None:
        from engage.core.run import EXIT_REQUEUED

        if getattr(job_return._return_value, "exit_code", None) == EXIT_REQUEUED:
            # Slurm requeued the job: it goes on in its next incarnation, neither failed nor done
            # (this runs in the job's own process under the engage launcher)
            return
        if job_return.status == JobStatus.COMPLETED:
            self.counts["completed"] += 1
        else:
            self.counts["failed"] += 1
            if self.first_failure is None:
                error = job_return._return_value
                line = getattr(error, "line", None) or f"{type(error).__name__}: {error}"
                self.first_failure = (int(getattr(error, "exit_code", 1)), " ".join(str(line).split()))
        if self.run_id is None:
            return
        client = uninterrupted_client(self.tracking_uri)
        # a job of another process (joblib's workers) may have failed the sweep already
        if not self.counts["failed"] and client.get_run(self.run_id).info.status != "FAILED":
            return
        # from the first failure on, at each job's end: Hydra's basic sweeper raises the job's error
        # after its batch, and the sweep's end (where the parent gets its final counts) never comes
        # jobs in other processes (joblib's workers) count theirs apart: the store has them all
        children = job_runs(client, self.run_id)
        failed = sum(1 for r in children if r.info.status == "FAILED")
        stopped = sum(1 for r in children if r.info.status == "KILLED")
        ended = self.counts["completed"] + self.counts["failed"]
        client.log_metric(self.run_id, "jobs", float(max(len(children), ended)))
        client.log_metric(self.run_id, "jobs_failed", float(max(failed, self.counts["failed"] - stopped)))
        client.log_metric(self.run_id, "jobs_stopped", float(stopped))
        client.set_terminated(self.run_id, status="FAILED")

    def on_multirun_end(self, config: DictConfig, **kwargs: Any) -> None:
        if self.run_id is None:
            return
        client = uninterrupted_client(self.tracking_uri)
        status, failed = close_sweep(client, self.run_id, self.tracking_uri, failed_here=self.counts["failed"])
        for key, previous in self._previous_env.items():
            if previous is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = previous
        if status == "FAILED":
            # a sweeper that went on past failed jobs (Optuna's max_failure_rate) returns as if all
            # went well: the sweep ends as one whose sweeper stopped at its first failed job does
            from engage.core.online.outcome import EXIT_RUN_FAILED

            code, line = self.first_failure or (EXIT_RUN_FAILED, _first_failed_job(client, self.run_id, failed))
            print(f"engage run: {line}", file=sys.stderr)
            raise SystemExit(code)


#: launchers whose jobs are processes of this machine that end with the sweep (Hydra's basic
#: launcher runs them in its own process, joblib's in workers that die with it): once the sweep
#: is over, a job run of theirs still RUNNING was stopped with it. Other launchers' jobs may
#: outlive the sweep (a cluster's), or end their own runs (submitit's local ones).
LOCAL_PROCESS_LAUNCHERS = ("hydra._internal.core_plugins.basic_launcher.BasicLauncher", "JoblibLauncher")


def close_sweep(
    client: Any, run_id: str, tracking_uri: str | None, status: str | None = None, failed_here: int = 0
) -> tuple[str, int]:
    """End the sweep's run ``run_id`` and say how it went, at its end (``status`` None:
    ``FAILED`` if a job failed, else ``FINISHED``) or when it stopped early (``KILLED`` or
    ``FAILED``). Early, its jobs' runs still RUNNING under a launcher of local processes end
    ``KILLED`` (their processes went with the sweep), and others still running are counted as
    such, not as failed. The parent gets ``jobs``, ``jobs_failed``, the best job and its
    status, and the console one line with the ``mlflow ui`` command. ``failed_here``: jobs this
    process saw fail (whose runs may not say so). Returns the status and the jobs that did not
    complete (failed or stopped)."""
    parent = client.get_run(run_id)
    children = job_runs(client, run_id)
    statuses = [r.info.status for r in children]
    if status is not None and parent.data.tags.get("engage.launcher", "").endswith(LOCAL_PROCESS_LAUNCHERS):
        for i, child in enumerate(children):
            if child.info.status == "RUNNING":
                client.set_terminated(child.info.run_id, status="KILLED")
                statuses[i] = "KILLED"
    # at its end every job has ended: a run left RUNNING did not report success
    failed, stopped, running = log_job_counts(client, run_id, running_failed=status is None, statuses=statuses)
    status = status or ("FAILED" if failed or stopped or failed_here else "FINISHED")
    best = best_job(children)  # the FINISHED ones: those ended KILLED just now were not
    if best is not None:
        metric, value, name = best
        client.log_metric(run_id, f"best/{metric}", value)
        client.set_tag(run_id, "engage.best_job", name)
    client.set_terminated(run_id, status=status)
    print(
        f"sweep {parent.info.run_name} ({run_id}) {status}: {len(statuses)} jobs, {failed} failed"
        + (f", {stopped} stopped" if stopped else "")
        + (f", {running} still running" if running else "")
        + (f"; best {best[0]}={best[1]:.4g} ({best[2]})" if best is not None else "")
        + f"\nMLflow: mlflow ui --backend-store-uri {tracking_uri}",
        file=sys.stderr,
    )
    return status, max(failed + stopped, failed_here)


def _first_failed_job(client: Any, run_id: str, failed: int) -> str:
    """The line naming the sweep's first failed job and why (its runs' ``engage.error``), for a
    sweep whose jobs ran in other processes, whose errors this one did not see."""
    from engage.core.tracking.store import ERROR_TAG

    runs = sorted(job_runs(client, run_id), key=lambda r: r.info.start_time or 0)
    ended = "did not complete" if any(run.info.status == "KILLED" for run in runs) else "failed"
    for run in runs:
        if run.info.status in ("FAILED", "KILLED"):
            why = run.data.tags.get(ERROR_TAG) or ("it was stopped" if run.info.status == "KILLED" else "see its log")
            return f"{failed} of the sweep's jobs {ended}; the first, {run.info.run_name}: {why}"
    return f"{failed} of the sweep's jobs {ended}"


def job_runs(client: Any, run_id: str) -> list[Any]:
    """The runs of the jobs of the sweep whose run is ``run_id`` (its children): of a job run
    more than once (a launcher's retries, a launch that resumed the sweep), the one job of its
    number (``engage.job``) and config (``engage.config_hash``, where the run has it: a batched
    sweeper resumed in a new process numbers its trials from 0 again), the latest attempt alone
    stands for it."""
    children = client.search_runs(
        [client.get_run(run_id).info.experiment_id],
        filter_string=f"tags.mlflow.parentRunId = '{run_id}'",
        max_results=50000,
    )

    def order(run: Any) -> tuple[int, int]:
        attempt = run.data.tags.get(ATTEMPT_TAG, "0")
        return run.info.start_time or 0, int(attempt) if attempt.isdigit() else 0

    latest: dict[tuple[str, str], Any] = {}
    runs = []
    for run in children:
        job = run.data.tags.get(JOB_TAG)
        if job is None:
            runs.append(run)
            continue
        key = (job, run.data.tags.get(CONFIG_HASH_TAG, ""))
        if key not in latest or order(run) >= order(latest[key]):
            latest[key] = run
    return runs + list(latest.values())


#: what a sweep's jobs are ranked by, the first their runs have (as ``engage run`` returns it)
OBJECTIVES = ("val/rel_l2", "val/loss")


def best_job(children: list[Any]) -> tuple[str, float, str] | None:
    """``(metric, value, run name)`` of the finished job whose :data:`OBJECTIVES` metric is
    lowest, or ``None`` when none has one."""
    finished = [r for r in children if r.info.status == "FINISHED"]
    for metric in OBJECTIVES:
        scored = [(r.data.metrics[metric], r.info.run_name) for r in finished if metric in r.data.metrics]
        if scored:
            value, name = min(scored)
            return metric, value, name
    return None


def log_job_counts(
    client: Any, run_id: str, running_failed: bool = True, statuses: list[str] | None = None
) -> tuple[int, int, int]:
    """Log a sweep's ``jobs`` (its jobs' runs), ``jobs_failed`` and ``jobs_stopped`` (KILLED) on
    its run ``run_id``, as its end or its interrupt gives them; returns ``(jobs_failed,
    jobs_stopped, still running)``. Runs still RUNNING count as failed when ``running_failed``
    (the sweep's end, after which none should be), else apart, in ``jobs_running`` (a sweep
    stopped early whose jobs run elsewhere). ``statuses``: the jobs' runs' statuses where the
    caller has them, else they are looked up."""
    if statuses is None:
        statuses = [r.info.status for r in job_runs(client, run_id)]
    running = sum(1 for status in statuses if status in ("RUNNING", "SCHEDULED"))
    stopped = sum(1 for status in statuses if status == "KILLED")
    failed = sum(1 for status in statuses if status not in ("FINISHED", "KILLED"))
    if not running_failed:
        failed -= running
        client.log_metric(run_id, "jobs_running", float(running))
    client.log_metric(run_id, "jobs", float(len(statuses)))
    client.log_metric(run_id, "jobs_failed", float(failed))
    client.log_metric(run_id, "jobs_stopped", float(stopped))
    return failed, stopped, 0 if running_failed else running


def swept_overrides(config: DictConfig) -> list[str]:
    """What a sweep varies, as overrides: the sweeper's params (a config file's, Optuna's search
    space) and the command line's, which replaces a param of the same key."""
    from engage.core.config.validate import last_per_key, sweeper_params

    task = list(OmegaConf.select(config, "hydra.overrides.task", default=[]) or [])
    return last_per_key(sweeper_params(config) + task)


def sweep_overrides_param(overrides: list[str]) -> str:
    """The ``sweep_overrides`` param of a sweep's run: what tells a sweep launched again into its
    folder from another sweep there."""
    return " ".join(overrides)[:PARAM_MAX_CHARS]


def launcher_preflight(config: DictConfig) -> str | None:
    """What the sweep's launcher says of its options before the sweep exists.

    A launcher class may define ``preflight(config) -> str | None`` (engage-deploy's does): it
    checks its options against the whole config and raises :class:`ValueError` with one line naming
    the key and the fix, or returns the MLflow store its jobs record to when its options name one
    (the sweep's parent run goes there too). Other launchers are checked by Hydra as usual.
    """
    preflight = getattr(_launcher_class(config), "preflight", None)
    return preflight(config) if callable(preflight) else None


def launcher_resumed_parent(config: DictConfig) -> str | None:
    """The sweep run of the launch this one resumes, if the sweep's launcher resumes one.

    A launcher class may define ``resumed_parent(config) -> str | None`` (engage-deploy's does,
    with ``hydra.launcher.resume``): the id of the parent run its last launch into the same sweep
    directory recorded under, which this sweep then continues
    (:mod:`engage.core.tracking.resumed_sweep`). Other launchers run every job again, under a new
    parent run."""
    resumed_parent = getattr(_launcher_class(config), "resumed_parent", None)
    return resumed_parent(config) if callable(resumed_parent) else None


def _launcher_class(config: DictConfig) -> Any:
    """The class ``hydra.launcher._target_`` names, or ``None`` (Hydra reports one it cannot load)."""
    target = OmegaConf.select(config, "hydra.launcher._target_", default=None)
    if not target:
        return None
    from hydra.utils import get_class

    try:
        return get_class(str(target))
    except Exception:
        return None


def end_open_sweep(previous_parent: str | None, status: str) -> None:
    """End the parent run a multirun opened in this process and could not close (a job's exit,
    an error or Ctrl-C ended the sweep before Hydra's end of multirun, which closes it and puts
    back ``previous_parent``): ``status`` (``FAILED`` or ``KILLED``), with what
    :func:`close_sweep` records and says, also where its first failed job marked it ``FAILED``
    already; a parent ended ``KILLED`` already (by the launcher that was stopped) is left as
    it is. ``previous_parent``: the parent this process had before the sweep (a job's own, not
    to be ended). Never raises: a store that fails here gets one line, and the sweep's own
    cause and exit code stand."""
    parent = os.environ.get(PARENT_RUN_ENV)
    if not parent or parent == previous_parent:
        return
    tracking_uri = os.environ.get(TRACKING_URI_ENV)
    try:
        client = uninterrupted_client(tracking_uri)
        if client.get_run(parent).info.status in ("RUNNING", "FAILED"):
            close_sweep(client, parent, tracking_uri, status=status)
    except Exception as exc:  # the store itself failed: the sweep's cause is what to report
        print(
            f"engage run: the sweep's MLflow run {parent} could not be ended {status} in {tracking_uri} "
            f"({type(exc).__name__}: {' '.join(str(exc).split())[:200]})",
            file=sys.stderr,
        )


def _parent_name(logger_cfg: Any) -> str:
    """``logger.run_name`` names the sweep (its jobs are then ``NAME#N ...``) when it is a name as
    written; one that interpolates (``lr_${model.lr}``, ``${hydra:job.override_dirname}``) is each
    job's own, resolved in that job, and the sweep gets a name of its own."""
    if isinstance(logger_cfg, DictConfig) and "run_name" in logger_cfg:
        if OmegaConf.is_interpolation(logger_cfg, "run_name"):
            return sweep_name()
        value = logger_cfg.get("run_name")
        return str(value) if value else sweep_name()
    return sweep_name()
