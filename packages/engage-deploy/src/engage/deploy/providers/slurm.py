"""The ``slurm`` provider: the jobs of a sweep as Slurm batch jobs (``+infrastructure=slurm``).

Its hosts are job slots, not machines: ``layers[0].hosts`` slots (``slurm-1`` ...) cap the jobs
running at once, and Slurm places each job on a node of the partition. The jobs of a launch are
one job array (:meth:`SlurmProvider.run_array`, task ``i`` job ``i``, the slots its ``%``
limit); a retry, and every job with ``options.array: false``, is a batch job of its own
(:meth:`SlurmProvider.run`, at most one a slot in Slurm's queue). A job is ``python -m
engage.deploy.runner JOB_DIR`` in a small batch script, submitted with ``sbatch``; its state is
read with the Slurm executor's
:class:`~engage.deploy.slurm.executor.JobStates` (one ``squeue`` call per interval for every
live job: no accounting daemon needed). The experiment folder must be on a filesystem the compute
nodes share: the job reads its contract (``job.json``, 0600, with the sweep's MLflow credentials)
and pickled payload there and writes its result beside them.

The sweep's MLflow server listens on this machine's address towards ``slurmctld`` (or
``options.bind_address``) and asks for credentials. The job's environment is this process's,
less its own Slurm and rank variables, MLflow credentials and anything named like a secret
(``*PASSWORD*``, ``*TOKEN*``, ``*SECRET*``, ``*CREDENTIAL*``, ``*_KEY``, ...): slurmctld stores
a job's environment.

``infrastructure.options``: ``partition``, ``time``, ``cpus_per_task``, ``mem``, ``account``,
``gpus``, ``extra`` (further ``#SBATCH`` lines), ``array`` (true), ``requeue`` (false) and
``requeue_signal_s`` (90), ``max_pending_s`` (600) and ``bind_address``;
``nodes``, ``ntasks_per_node`` and ``gpus_per_node`` shape a multi-node job: with more than one
task, the script starts the runner with ``srun``, once a task, and each task is one rank of the
job's fit under Lightning's ``SLURMEnvironment`` (:mod:`engage.deploy.slurm.ranks`).

Example::

    >>> infra = Infrastructure.from_dict(
    ...     {"provider": "slurm", "layers": [{"name": "slurm", "hosts": 4}], "options": {"partition": "debug"}}
    ... )
    >>> SlurmProvider(infra, "/tmp/engage-doc").options["partition"]
    'debug'
"""

from __future__ import annotations

import logging
import os
import secrets
import shlex
import signal
import subprocess
import threading
import time
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from engage.core.config.validate import ConfigError
from engage.core.tracking.store import inherited_environ
from engage.deploy.infrastructure import Infrastructure, InfrastructureError
from engage.deploy.providers.base import Host, Provider, ProviderError
from engage.deploy.slurm.reaper import JobReaper
from engage.deploy.slurm.values import check_job_values, time_limit_s

log = logging.getLogger(__name__)

#: every option and its default; one place
OPTIONS: dict[str, Any] = {
    "partition": None,
    "time": None,
    "cpus_per_task": None,
    "mem": None,
    "account": None,
    "gpus": None,
    "nodes": 1,
    "ntasks_per_node": 1,
    "gpus_per_node": None,
    "extra": [],
    "array": True,
    "requeue": False,
    "requeue_signal_s": 90,
    "max_pending_s": 600.0,
    "bind_address": None,
}


#: Slurm may send a job's ``--signal`` up to this many seconds before the time it was asked for
#: (sbatch(1), ``--signal``: "due to the resolution of event handling by Slurm")
SIGNAL_RESOLUTION_S = 60


def _options(infrastructure: Infrastructure) -> dict[str, Any]:
    """The provider's options, defaults filled in; one line naming an unknown or malformed one."""
    given = dict(infrastructure.options or {})
    unknown = sorted(set(given) - set(OPTIONS))
    if unknown:
        raise InfrastructureError(
            f"infrastructure.options.{unknown[0]}: not a slurm option; options are {', '.join(OPTIONS)}"
        )
    options = {**OPTIONS, **given}
    try:
        check_job_values("infrastructure.options", options)
    except ValueError as exc:
        raise InfrastructureError(str(exc)) from None
    signal_s = options["requeue_signal_s"]
    if isinstance(signal_s, bool) or not isinstance(signal_s, int) or not 1 <= signal_s <= 65535:
        raise InfrastructureError(
            f"infrastructure.options.requeue_signal_s is {signal_s!r}; give whole seconds from 1 to 65535, e.g. 90"
        )
    if not isinstance(options["requeue"], bool):
        raise InfrastructureError(
            f"infrastructure.options.requeue is {options['requeue']!r}; give true (the job is requeued on its "
            "warning signal, a time-out's or a preemption's, and resumes) or false (the launcher retries it)"
        )
    limit_s = time_limit_s(options["time"])
    if options["requeue"] and limit_s is not None and limit_s - signal_s <= SIGNAL_RESOLUTION_S:
        # signalled at its start, the job would checkpoint and be requeued for ever
        raise InfrastructureError(
            f"infrastructure.options.time={options['time']!r} ({limit_s} s) leaves a requeued job "
            f"{limit_s - signal_s} s before its warning signal (requeue_signal_s={signal_s}), which Slurm may send "
            f"up to {SIGNAL_RESOLUTION_S} s early: the job could be requeued as it starts, for ever; give a time "
            f"over {signal_s + SIGNAL_RESOLUTION_S} s or a smaller requeue_signal_s"
        )
    if not isinstance(options["array"], bool):
        raise InfrastructureError(
            f"infrastructure.options.array is {options['array']!r}; give true (the jobs of a launch as one job "
            "array) or false (each job submitted on its own)"
        )
    if not isinstance(options["extra"], (list, tuple)):
        raise InfrastructureError("infrastructure.options.extra: give a list of #SBATCH options, e.g. ['--qos=short']")
    for key in ("nodes", "ntasks_per_node", "gpus_per_node"):
        value = options[key]
        if value is None and key == "gpus_per_node":
            continue
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            raise InfrastructureError(f"infrastructure.options.{key} is {value!r}; give a whole number from 1, e.g. 2")
    return options


def check_ranks(infrastructure: Infrastructure, config: Any) -> None:
    """For jobs of several ranks, a job config's ``trainer.num_nodes`` and ``trainer.devices``
    (Lightning's defaults where it has none; ``devices`` as a count, a list of indices, ``auto``
    or -1, which only the node can tell) must be the job's nodes and tasks per node: Lightning's
    ``SLURMEnvironment`` gives each task a rank and refuses a mismatch, but only inside the job.
    Raises :class:`InfrastructureError` with one line naming both keys."""
    from omegaconf import OmegaConf

    options = _options(infrastructure)
    nodes, per_node = int(options["nodes"]), int(options["ntasks_per_node"])
    trainer = OmegaConf.select(config, "trainer", default=None)
    if nodes * per_node == 1 or trainer is None:
        return
    key = "hydra.launcher.infrastructure.options"
    num_nodes = OmegaConf.select(trainer, "num_nodes", default=1)  # Lightning's default
    if num_nodes != nodes:
        raise InfrastructureError(
            f"{key}.nodes={nodes}: each job runs on {nodes} nodes, but trainer.num_nodes is {num_nodes}; "
            f"set trainer.num_nodes={nodes}"
        )
    devices = OmegaConf.select(trainer, "devices", default="auto")
    if isinstance(devices, str) and devices.lstrip("-").isdigit():
        devices = int(devices)
    if OmegaConf.is_list(devices) or isinstance(devices, (list, tuple)):
        devices = len(devices)  # device indices
    if devices in ("auto", -1):
        return  # as many as the node shows each task: known only there, where Lightning checks it
    if devices != per_node:
        raise InfrastructureError(
            f"{key}.ntasks_per_node={per_node}: each node runs {per_node} ranks, one a task, but trainer.devices "
            f"is {devices!r}; set trainer.devices={per_node}"
        )


class SlurmJob:
    """A sweep job submitted to Slurm, standing for its process: ``pid`` is ``None``;
    :meth:`poll` and :meth:`wait` read its state; :meth:`cancel` ``scancel``\\ s it, after which
    its ``returncode`` is ``-SIGTERM`` (the launcher records it KILLED). A job Slurm ended
    (failed, timed out, out of memory, node failure, cancelled by someone else) has the Slurm
    executor's failure code, which the launcher retries like a failed job."""

    pid = None

    def __init__(self, process: Any) -> None:
        self._process = process  # a SlurmProcess: state reading, pending limit, cancel
        self.returncode: int | None = None
        self._lock = threading.Lock()  # the job's thread polls while the launcher may cancel

    @property
    def job_id(self) -> str | None:
        return self._process.job_id

    @property
    def node(self) -> str:
        return self._process.host

    @property
    def ended(self) -> str:
        """How Slurm ended it (``TIMEOUT (TimeLimit)``, ``NODE_FAIL (NodeDown)``, ...), once it
        ended; the launcher's line for a failed attempt says it."""
        return self._process.ended

    def submitted_as(self, job_id: str) -> None:
        """``sbatch`` took it as ``job_id`` (``12_3``: task 3 of array 12)."""
        self._process.submitted_as(job_id)

    def refused(self, message: str) -> None:
        """``sbatch`` refused it: a failed job, ``message`` its log's tail."""
        self._process.refused(message)

    @property
    def waiting(self) -> bool:
        """Not started by Slurm yet, as far as the last look at the queue tells."""
        return self.returncode is None and self._process.waiting

    @property
    def queued(self) -> bool:
        """Pending in Slurm's queue now (before it runs, or requeued), as the last look tells."""
        return self.returncode is None and self._process.queued

    @property
    def started(self) -> bool:
        """Seen started by Slurm (running, or ended other than cancelled while pending)."""
        return self._process.started

    def poll(self) -> int | None:
        with self._lock:
            if self.returncode is None:
                self.returncode = self._process.poll()
            return self.returncode

    def wait(self, timeout: float | None = None) -> int:
        deadline = None if timeout is None else time.monotonic() + timeout
        while self.poll() is None:
            if deadline is not None and time.monotonic() >= deadline:
                raise subprocess.TimeoutExpired(f"slurm job {self.job_id}", timeout)
            time.sleep(0.25)
        assert self.returncode is not None
        return self.returncode

    def cancel(self) -> None:
        from engage.deploy.slurm.executor import scancel

        job_id = self.withdraw()
        if job_id is not None:
            scancel(job_id)

    def withdraw(self) -> str | None:
        """Stopped: never submitted from now on, recorded as cancelled; its job id when it is
        queued or running, for the caller to ``scancel`` (with others, in one call)."""
        with self._lock:
            if self.returncode is not None:
                return None
            self.returncode = -signal.SIGTERM
            return self._process.withdraw(give_up=True)


#: job options ``sbatch --test-only`` accepted in this process
_ACCEPTED: set[tuple[str, ...]] = set()


class SlurmProvider(Provider):
    """Jobs of a sweep as Slurm batch jobs; see the module docstring."""

    name = "slurm"
    #: jobs are not processes of this machine: no fork server, no process sampling
    local_processes = False

    def __init__(self, infrastructure: Infrastructure, workdir: str | os.PathLike[str]) -> None:
        super().__init__(infrastructure, workdir)
        self.options: dict[str, Any] = _options(infrastructure)
        self.warnings: list[str] = []
        self.token = secrets.token_hex(4)
        #: cancels the sweep's jobs if this process is killed before :meth:`destroy`
        self._reaper = JobReaper(self.token)
        self._address: str | None = None
        self._jobs: list[SlurmJob] = []
        self._jobs_lock = threading.Lock()  # job threads submit while the launcher may destroy
        self._destroyed = False
        self._states: Any = None
        self._array_size: int | None = None  # slurmctld's MaxArraySize, asked once
        self.flags: list[str] = []

    @property
    def ranks_per_job(self) -> int:
        """Tasks each job runs as (``nodes`` x ``ntasks_per_node``), one rank each."""
        return int(self.options["nodes"]) * int(self.options["ntasks_per_node"])

    @classmethod
    def check(cls, infrastructure: Infrastructure) -> None:
        """The options, then ``sbatch --test-only`` with them (a partition or account Slurm does
        not know, an unreachable slurmctld) and the address the sweep's server would listen on."""
        provider = cls(infrastructure, os.getcwd())
        try:
            provider.deploy_checks()
        except (ConfigError, ProviderError) as exc:
            raise InfrastructureError(str(exc)) from None

    def deploy_checks(self) -> None:
        """What :meth:`check` and :meth:`deploy` ask Slurm (one line each when it refuses)."""
        from engage.deploy.slurm.executor import check_submission

        self.flags = self._flags()
        submission = (*self.flags, *(str(x) for x in self.options["extra"]))
        # asked once a process: the launcher checks before the sweep (Hydra's sweep callback),
        # in its setup and when it deploys, each the same submission seconds apart
        if submission not in _ACCEPTED:
            check_submission(list(submission), "infrastructure.options", "infrastructure.provider=slurm")
            _ACCEPTED.add(submission)
        self.planned_launcher_address()

    def _flags(self) -> list[str]:
        from engage.deploy.slurm.executor import sbatch_flags

        o = self.options
        # the job's shape, one task too: Slurm then sets SLURM_NTASKS, without which Lightning does
        # not take the job for a Slurm job (SLURMEnvironment.detect) and a requeued incarnation
        # would not resume from its HPC checkpoint
        return sbatch_flags(
            partition=o["partition"], time=o["time"], cpus_per_task=o["cpus_per_task"],
            mem=o["mem"], account=o["account"], gpus=o["gpus"], gpus_per_node=o["gpus_per_node"],
            nodes=o["nodes"], ntasks_per_node=o["ntasks_per_node"],
        )  # fmt: skip

    def planned_launcher_address(self) -> str:
        """This machine's address towards ``slurmctld`` (or ``options.bind_address``): where
        jobs on compute nodes reach the sweep's MLflow server."""
        if self._address is None:
            from engage.deploy.slurm.executor import bind_address_for

            try:
                self._address = bind_address_for(
                    self.options["bind_address"], "infrastructure.options.bind_address", "infrastructure.provider=slurm"
                )
            except ConfigError as exc:
                raise ProviderError(str(exc)) from None
        return self._address

    def launcher_address(self) -> str:
        return self.planned_launcher_address()

    def deploy(self) -> list[Host]:
        """Check the options with ``sbatch --test-only`` (one line naming the option when Slurm
        refuses them), then make the job slots."""
        from engage.deploy.slurm.executor import JobStates

        try:
            self.deploy_checks()
        except ConfigError as exc:
            raise ProviderError(str(exc)) from None
        address = self.planned_launcher_address()
        with self._jobs_lock:
            self._destroyed = False  # deployed again: submitting again
        self._states = JobStates()
        self._reaper.start()  # the jobs go with this process, however it ends
        self.hosts = [
            Host(name=name, layer=layer.name, address=address, cpu=layer.cpu, memory=layer.memory_bytes)
            for layer, name in self.infrastructure.iter_hosts()
        ]
        return self.hosts

    def apply_network(self) -> None:
        if self.infrastructure.network:
            message = (
                f"the slurm provider runs jobs on the cluster's own network: {len(self.infrastructure.network)} "
                "network constraints ignored"
            )
            self.warnings.append(message)
            log.warning(message)

    def run(
        self,
        host: Host,
        command: Sequence[str],
        env: Mapping[str, str] | None = None,
        cwd: str | os.PathLike[str] | None = None,
        log_path: str | os.PathLike[str] | None = None,
        *,
        stderr_path: str | os.PathLike[str] | None = None,
    ) -> SlurmJob:  # type: ignore[override]
        """Submit ``command`` as a batch job; returns once ``sbatch`` answered. A refusal is a
        failed job (its message in the job's stderr log). The job is known to :meth:`destroy`
        before ``sbatch`` runs: one destroyed meanwhile (Ctrl-C) is cancelled as soon as Slurm
        names it, and none is submitted after :meth:`destroy`."""
        from engage.deploy.slurm.executor import step_environment

        if self._states is None:
            raise ProviderError("slurm: run() before deploy()")
        folder = Path(log_path).parent if log_path is not None else self.workdir
        folder.mkdir(parents=True, exist_ok=True)
        script = self._script(folder / "job.sbatch", command, "")
        out = Path(log_path) if log_path is not None else folder / "stdout.log"
        err = Path(stderr_path) if stderr_path is not None else out
        name = f"engage-job-{folder.name}-{host.name}-{self.token}"
        argv = self._sbatch_argv(name, out, err, cwd, script)
        (job,) = self._register(name, [out])
        if job.returncode is not None:  # destroyed meanwhile: never submitted
            return job
        # none of this process's own Slurm or rank variables: a job of several ranks runs srun, which
        # reads SLURM_* as options, and any job's fit finds its ranks itself
        job._process.submit(argv, step_environment({**inherited_environ(), **(env or {})}))
        if job.job_id is None and job._process.wanted:  # refused: sbatch's words in the job's stderr log
            with open(err, "a") as handle:
                handle.write(job._process.stderr_tail() + "\n")
        return job

    @property
    def array_limit(self) -> int:
        """With ``options.array`` (the default), a launch's jobs are one job array, at most as
        many running as the layer has slots."""
        return len(self.hosts) if self.options["array"] else 0

    def run_array(
        self,
        command: Sequence[str],
        folders: Mapping[int, Path],
        limit: int,
        env: Mapping[str, str] | None = None,
        cwd: str | os.PathLike[str] | None = None,
    ) -> dict[int, SlurmJob]:
        """Submit jobs as one job array with one ``sbatch``: ``folders`` maps each job's index to
        its folder (``<jobs>/<index>``, one parent for all). Task ``t`` is the job of index
        ``first + t`` (``first``, the smallest index: a later launch of a sweep starts its
        array at task 0 too), runs ``command`` and its job's folder, and logs to the folder's
        ``stdout.log`` and ``stderr.log`` (through ``<jobs>/array-<first>-<last>/<t>``, a link
        to the folder, for Slurm's ``%a``); at most ``limit`` tasks run at once (the array's
        ``%``). Returns the job of each index (all within :meth:`array_indices`' bound). A
        refused ``sbatch`` fails every task, its words in each job's stderr log."""
        from engage.deploy.slurm.executor import sbatch, slurm_path, step_environment

        if self._states is None:
            raise ProviderError("slurm: run_array() before deploy()")
        indices = sorted(folders)
        if self.array_indices(indices) != indices:
            raise ProviderError(f"slurm: an array's task ids stay below MaxArraySize={self._max_array_size()}")
        if not indices:
            return {}
        roots = {Path(folders[index]).parent for index in indices}
        if len(roots) != 1 or any(Path(folders[index]).name != str(index) for index in indices):
            raise ProviderError(f"slurm: an array's job folders are named by their index, in one folder: {folders}")
        (root,) = roots
        first = indices[0]
        stem = f"array-{first}-{indices[-1]}"
        links = root / stem
        links.mkdir(exist_ok=True)
        for index in indices:
            link = links / str(index - first)
            if not link.is_symlink():
                link.symlink_to(Path("..") / str(index))
        task = f'{shlex.quote(str(root) + os.sep)}"$(({first} + SLURM_ARRAY_TASK_ID))"'
        script = self._script(root / f"{stem}.sbatch", command, task)
        name = f"engage-job-{stem}-{self.token}"
        throttle = f"%{limit}" if 0 < limit < len(indices) else ""
        # %a: each task logs to its job's folder (``%`` itself written %% in the folder's path)
        tasks = Path(f"{slurm_path(links)}/%a")
        array = f"--array={_ranges([index - first for index in indices])}{throttle}"
        argv = self._sbatch_argv(name, tasks / "stdout.log", tasks / "stderr.log", cwd, script, array, escape=False)
        jobs = dict(zip(indices, self._register(name, [root / str(index) / "stdout.log" for index in indices])))
        if next(iter(jobs.values())).returncode is not None:  # destroyed meanwhile: never submitted
            return jobs
        array_id, refusal = sbatch(argv, step_environment({**inherited_environ(), **(env or {})}), name)
        for index, job in jobs.items():
            if array_id is None:
                job.refused(refusal)
                with open(root / str(index) / "stderr.log", "a") as handle:
                    handle.write(refusal + "\n")
            else:
                job.submitted_as(f"{array_id}_{index - first}")
        return jobs

    def cancel_pending(self, jobs: Sequence[Any]) -> None:
        """``scancel --state=PENDING`` the jobs among ``jobs`` Slurm has not started, in one call:
        Slurm leaves any that started meanwhile running. Their threads see them end."""
        from engage.deploy.slurm.executor import scancel

        ids = [job.job_id for job in jobs if isinstance(job, SlurmJob) and job.job_id is not None]
        if ids:
            scancel("--state=PENDING", *ids)

    def array_indices(self, indices: Sequence[int]) -> list[int]:
        """Those of ``indices`` that one array holds: task ids count from the smallest index and
        stay below slurmctld's ``MaxArraySize`` (``scontrol show config``); the launcher submits
        the others one by one."""
        if not self.array_limit or not indices:
            return []
        first, bound = min(indices), self._max_array_size()
        return sorted(index for index in indices if index - first < bound)

    def _max_array_size(self) -> int:
        if self._array_size is None:
            from engage.deploy.slurm.executor import max_array_size, show_config

            try:
                self._array_size = max_array_size(show_config())
            except (OSError, subprocess.TimeoutExpired):
                self._array_size = max_array_size("")
        return self._array_size

    def _script(self, path: Path, command: Sequence[str], argument: str) -> Path:
        """The batch script at ``path``: the options' ``extra`` lines, then ``exec`` of ``command``
        (with ``srun`` for a job of several ranks) and ``argument`` as shell text."""
        from engage.deploy.slurm.executor import batch_script

        line = f"exec {shlex.join(self._tasks(command))} {argument}".rstrip()
        path.write_text(batch_script([str(x) for x in self.options["extra"]], [line]))
        return path

    def _sbatch_argv(
        self,
        name: str,
        out: Path,
        err: Path,
        cwd: str | os.PathLike[str] | None,
        script: Path,
        *more: str,
        escape: bool = True,
    ) -> list[str]:
        """``sbatch`` of ``script`` as job ``name``, logging to ``out`` and ``err`` (appended; their
        ``%`` escaped unless ``escape`` is off, for Slurm's own ``%a``), with the requeue options,
        the provider's ``#SBATCH`` flags and ``more``."""
        from engage.deploy.slurm.executor import slurm_path

        logs = [str(path) if not escape else slurm_path(path) for path in (out, err)]
        return [
            *("sbatch", "--parsable", f"--job-name={name}", f"--output={logs[0]}", f"--error={logs[1]}"),
            *("--open-mode=append", f"--chdir={cwd or os.getcwd()}", *self._requeue_flags(), *self.flags, *more),
            str(script),
        ]

    def _register(self, name: str, logs: Sequence[Path]) -> list[SlurmJob]:
        """A job named ``name`` for each log, known to :meth:`destroy` before ``sbatch`` runs; all
        cancelled at once (never submitted) if the provider was destroyed meanwhile."""
        from engage.deploy.slurm.executor import SlurmProcess

        jobs = []
        for log_path in logs:
            process = SlurmProcess(None, log_path, float(self.options["max_pending_s"]), self._states)
            process.job_name = name
            jobs.append(SlurmJob(process))
        with self._jobs_lock:
            self._jobs.extend(jobs)
            destroyed = self._destroyed
        if destroyed:
            for job in jobs:
                job.cancel()
        return jobs

    def _requeue_flags(self) -> list[str]:
        """``--no-requeue`` (a failed job is the launcher's to retry, ``hydra.launcher.retries``), or
        with ``options.requeue`` ``--requeue`` and the warning signal ``requeue_signal_s`` before the
        time limit: ``USR1`` to the runner itself (``B:``, the batch script execs it) or to each
        task of a job of several ranks, where :class:`~engage.deploy.callbacks.SlurmRequeue`
        takes it."""
        if not self.options["requeue"]:
            return ["--no-requeue"]
        target = "B:" if self.ranks_per_job == 1 else ""
        return ["--requeue", f"--signal={target}USR1@{int(self.options['requeue_signal_s'])}"]

    def _tasks(self, command: Sequence[str]) -> list[str]:
        """``command`` as the batch script runs it: itself, or once a task with ``srun`` for a job
        of several ranks (one failed rank ends the others: the rest would wait for it forever)."""
        if self.ranks_per_job == 1:
            return list(command)
        cpus = self.options["cpus_per_task"]
        # srun inside a batch job takes the allocation's tasks, but not its --cpus-per-task
        return ["srun", "--kill-on-bad-exit=1", *([f"--cpus-per-task={cpus}"] if cpus else []), *command]

    def command_for(self, host: Host, command: Sequence[str], env=None, cwd=None) -> list[str]:
        raise ProviderError("slurm: jobs are submitted with run(), not started as local commands")

    def describe(self) -> dict[str, Any]:
        return {**super().describe(), "slurm": {"sbatch": self.flags, "extra": list(self.options["extra"])}}

    def destroy(self) -> None:
        """Cancel the jobs still queued or running, and those whose ``sbatch`` is under way."""
        from engage.deploy.slurm.executor import scancel

        with self._jobs_lock:
            self._destroyed = True
            jobs, self._jobs = self._jobs, []
        live = [job_id for job in jobs if (job_id := job.withdraw()) is not None]
        if live:
            scancel(*live)  # one call, however many jobs and array tasks
        self._reaper.stop()
        self.hosts = []


def _ranges(indices: Sequence[int]) -> str:
    """Sorted job indices as an ``--array`` list of ranges.

    >>> _ranges([0, 1, 2, 5, 7, 8])
    '0-2,5,7-8'
    """
    parts: list[str] = []
    start = previous = indices[0]
    for index in [*indices[1:], None]:
        if index is not None and index == previous + 1:
            previous = index
            continue
        parts.append(str(start) if start == previous else f"{start}-{previous}")
        if index is not None:
            start = previous = index
    return ",".join(parts)
