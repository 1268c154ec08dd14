"""engage-deploy's plugin: the ``infrastructure`` and ``placement`` configs, the ``deploy`` and
``slurm`` executors, the infrastructure providers, the placement solvers, the ``engage place`` and
``engage serve`` sub-commands, the serving callbacks of a sweep job whose launcher serves, and the
MLflow run id of an ``engage run`` that is a sweep's job (the launcher adds its records to that
run by id)."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from engage.core.commands import Command
from engage.core.hookspecs import hookimpl

if TYPE_CHECKING:
    from engage.core.events import RunRecord


@hookimpl
def engage_config_searchpath() -> list[str]:
    # the shipped `infrastructure/*.yaml` examples (local, netns, g5k, chameleon, vagrant, static)
    return ["pkg://engage.deploy.conf"]


def _place_arguments(parser):
    from engage.deploy.placement.cli import add_arguments

    add_arguments(parser)


def _place(namespace):
    from engage.deploy.placement.cli import run_command

    return run_command(namespace)


def _serve_arguments(parser):
    from engage.deploy.serve.supervisor import add_arguments

    add_arguments(parser)


def _serve(namespace):
    from engage.deploy.serve.supervisor import run_command

    return run_command(namespace)


@hookimpl
def engage_executors() -> dict:
    from engage.deploy.executor import DeployExecutor
    from engage.deploy.slurm.executor import SlurmExecutor

    return {"deploy": DeployExecutor, "slurm": SlurmExecutor}


@hookimpl
def engage_providers() -> dict:
    from engage.deploy.providers.local import LocalProvider
    from engage.deploy.providers.netns import NetnsProvider
    from engage.deploy.providers.slurm import SlurmProvider
    from engage.deploy.providers.testbeds import ChameleonProvider, G5kProvider, StaticProvider, VagrantProvider

    return {
        "local": LocalProvider,
        "netns": NetnsProvider,
        "g5k": G5kProvider,
        "chameleon": ChameleonProvider,
        "vagrant": VagrantProvider,
        "static": StaticProvider,
        "slurm": SlurmProvider,
    }


@hookimpl
def engage_placement_solvers() -> dict:
    from engage.deploy.placement import CpSatSolver, ExhaustiveSolver, GreedySolver
    from engage.deploy.placement.online import OnlineSolver

    return {
        "cpsat": lambda time_limit_s=10.0, **options: CpSatSolver(time_limit_s, **options),
        "greedy": lambda time_limit_s=10.0: GreedySolver(),
        "exhaustive": lambda time_limit_s=10.0: ExhaustiveSolver(),
        "online": lambda time_limit_s=10.0: OnlineSolver(),
    }


@hookimpl
def engage_commands() -> list[Command]:
    return [
        Command(
            "place",
            "place model variants (or workflow services) on the continuum with OR-Tools",
            _place_arguments,
            _place,
        ),
        Command(
            "serve",
            "serve a model while it trains: an inference replica (LitServe) that takes new weights",
            _serve_arguments,
            _serve,
        ),
    ]


@hookimpl
def engage_run_started(record: RunRecord) -> None:
    """In a sweep's job: the run's id goes to the job's folder (the launcher adds its records to
    that run), and the run is tagged with the job's number and attempt from the start, so that a
    sweep counts it as its job even where the launcher could not record it (killed meanwhile)."""
    from engage.deploy.job import JobContract, write_run_id

    if not record.run_id or not write_run_id(record.run_id):
        return
    job = JobContract.current()
    if job is None:
        return
    from mlflow.tracking import MlflowClient

    from engage.deploy.tracking import ATTEMPT_TAG, CONFIG_HASH_TAG, JOB_TAG

    tags = {JOB_TAG: str(job.index), ATTEMPT_TAG: str(job.attempt)}
    if job.config_hash:
        tags[CONFIG_HASH_TAG] = job.config_hash
    try:
        client = MlflowClient(record.tracking_uri)
        for name, value in tags.items():
            client.set_tag(record.run_id, name, value)
    except Exception as exc:  # the launcher tags it as it records the job; the run goes on
        import logging

        logging.getLogger("engage.deploy").warning(
            "job %d: its run could not be tagged as its job yet: %s", job.index, exc
        )


@hookimpl
def engage_callbacks(cfg: Any) -> list[Any]:
    """In a Slurm job: :class:`~engage.deploy.callbacks.SlurmRequeue` (which arms itself where
    Slurm may requeue the job: ``sbatch --requeue``, a sweep's jobs with
    ``infrastructure.options.requeue``), unless the config adds it itself. In a job of a sweep
    whose launcher serves (``hydra.launcher.serving``): its replicas and request sources, and the
    weights' publication to the replicas."""
    from engage.deploy.job import JobContract
    from engage.deploy.slurm.requeue import in_slurm_job

    callbacks: list[Any] = []
    named = [str(node.get("_target_", "")) for node in (cfg.get("callbacks") or {}).values() if node]
    # every rank of a job decides alike (its environment); the callback asks slurmctld, once
    if in_slurm_job() and not any(target.endswith("SlurmRequeue") for target in named):
        from engage.deploy.callbacks import SlurmRequeue

        callbacks.append(SlurmRequeue())
    job = JobContract.current()
    if job is None or job.serving is None:
        return callbacks
    from engage.deploy.callbacks import PublishWeights, ServeWhileTraining
    from engage.deploy.serving import TRAINED

    plan = job.serving
    urls = [replica.url for replica in plan.replicas if replica.model == TRAINED]
    publisher = PublishWeights(urls, api_key_file=plan.api_key_file, every_n_steps=plan.every_n_steps)
    # the replicas and sources first: PublishWeights sends to replicas that answer
    return [*callbacks, ServeWhileTraining(plan, job.hosts, job.folder, publisher=publisher), publisher]
