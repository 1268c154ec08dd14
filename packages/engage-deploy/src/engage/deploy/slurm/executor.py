"""The ``slurm`` executor: each simulation a Slurm batch job (``data.executor=slurm``), and Slurm
job states as the simulation fleet sees them.

Without an accounting daemon (slurmdbd), job states come from slurmctld, which keeps a finished
job for ``MinJobAge`` seconds: the executor reads every live job's state with one
``squeue --states=all`` call per interval (:class:`JobStates`). A state becomes the exit code of
a simulation process: ``None`` while the job is pending or running, ``0`` when it completed, and
a non-zero code (which the fleet retries from the sample index) otherwise; the same mapping
reads ``scontrol show job -o`` lines (:func:`exit_code_for`).
"""

from __future__ import annotations

import os
import queue
import re
import secrets
import shlex
import socket
import subprocess
import threading
import time
import warnings
from collections.abc import Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any

from engage.core.config.validate import ConfigError
from engage.core.executors import Executor, LaunchRequest, SimulationProcess, log_tail
from engage.core.files import write_private
from engage.core.rank_env import TORCH_DISTRIBUTED_ENV
from engage.deploy.providers.base import address_towards
from engage.deploy.slurm.reaper import JobReaper
from engage.deploy.slurm.values import check_job_values

if TYPE_CHECKING:
    from engage.deploy.slurm.group import SlurmTask

#: Exit code of a job that Slurm ended (failed, cancelled, timed out, out of memory, ...).
SLURM_FAILURE = 75

RUNNING_STATES = frozenset(
    {"PENDING", "CONFIGURING", "RUNNING", "COMPLETING", "SUSPENDED", "REQUEUED", "RESIZING", "SIGNALING"}
)
FAILED_STATES = frozenset(
    {
        "FAILED",
        "TIMEOUT",
        "NODE_FAIL",
        "OUT_OF_MEMORY",
        "PREEMPTED",
        "CANCELLED",
        "BOOT_FAIL",
        "DEADLINE",
        "REVOKED",
        "SPECIAL_EXIT",
    }
)


#: why a task of a job array pends while its array runs as many tasks as its ``%`` limit allows
ARRAY_WAIT_REASONS = frozenset({"JobArrayTaskLimit"})

#: seconds ``scancel`` may take before its jobs are reported as possibly still running
SCANCEL_TIMEOUT_S = 60.0


def scancel(*targets: str) -> bool:
    """Cancel ``targets`` (job ids, or ``--name=NAME``); whether ``scancel`` did. One that fails or
    does not answer within :data:`SCANCEL_TIMEOUT_S` (slurmctld overloaded or gone) is warned about
    with its words and the command to run, never raised: it is called while a run ends or from
    watch threads. A job Slurm no longer knows (it ended meanwhile) counts as cancelled."""
    try:
        out = subprocess.run(["scancel", *targets], capture_output=True, text=True, timeout=SCANCEL_TIMEOUT_S)
        why = " ".join(out.stderr.split())[:300] or f"exit code {out.returncode}"
        # a job that ended meanwhile is gone, as asked ("Invalid job id specified")
        if out.returncode == 0 or "invalid job id" in why.lower():
            return True
    except (subprocess.TimeoutExpired, OSError) as exc:
        why = f"no answer within {SCANCEL_TIMEOUT_S:g} s" if isinstance(exc, subprocess.TimeoutExpired) else str(exc)
    warnings.warn(
        f"scancel failed ({why}); these jobs may still be queued or running: scancel {' '.join(targets)}",
        stacklevel=2,
    )
    return False


def parse_job_line(line: str) -> dict[str, str]:
    """The ``Key=Value`` fields of one ``scontrol show job -o`` line (or ``show node -o``)."""
    fields: dict[str, str] = {}
    for token in line.split():
        key, sep, value = token.partition("=")
        if sep:
            fields[key] = value
    return fields


def job_state(line: str) -> str:
    """The base state of a job (``CANCELLED by 0`` and flags such as ``+`` dropped)."""
    return base_state(parse_job_line(line).get("JobState", ""))


def base_state(state: str) -> str:
    """A state as Slurm's commands print it (``COMPLETED+``, ``cancelled``) reduced to its name."""
    return state.split("+")[0].upper()


def job_exit_code(job_id: str) -> int | None:
    """The exit code Slurm recorded for an ended job (``ExitCode=CODE:SIGNAL`` of ``scontrol show
    job``: its batch script's, so its simulation's), while the controller still knows the job;
    ``None`` when it does not, or the job ended by a signal."""
    try:
        out = subprocess.run(["scontrol", "show", "job", "-o", job_id], capture_output=True, text=True, timeout=30)
    except (OSError, subprocess.TimeoutExpired):
        return None
    code, _, signum = parse_job_line(out.stdout).get("ExitCode", "").partition(":")
    return int(code) if code.isdigit() and int(code) > 0 and signum in ("", "0") else None


def exit_code_for(line: str) -> int | None:
    """The exit code a simulation process reports for this job line, or ``None`` while it runs."""
    return exit_code_for_state(job_state(line))


def exit_code_for_state(state: str) -> int | None:
    """The exit code a simulation process reports for a job in Slurm state ``state``."""
    if state in RUNNING_STATES:
        return None
    if state == "COMPLETED":
        return 0
    if state in FAILED_STATES:
        return SLURM_FAILURE
    raise ValueError(f"unknown Slurm job state {state!r}")


class JobStates:
    """The states of an executor's live jobs, read for all of them with one ``squeue`` call at
    most every ``interval_s`` seconds, not one ``scontrol`` call per job: 256 live simulations
    polled twice a second would otherwise be 512 commands a second against slurmctld.

    ``squeue --states=all`` lists ended jobs too, for ``MinJobAge`` seconds; a watched job it no
    longer lists was forgotten by slurmctld before it was seen ending.
    """

    def __init__(self, interval_s: float = 0.5):
        self.interval_s = interval_s
        #: job id -> when it was first watched; a job submitted after the last query is not judged by it
        self._watched: dict[str, float] = {}
        self._states: dict[str, tuple[str, str]] = {}  # job id -> (state, reason), from the last answer
        self._nodes: dict[str, str] = {}  # job id -> the node(s) it was given, once it was
        self._asked_at = -float("inf")
        self._answered = False
        self._lock = threading.Lock()
        #: ``squeue`` calls made: one per interval however many jobs live
        self.queries = 0

    def watch(self, job_id: str) -> None:
        with self._lock:
            self._watched.setdefault(job_id, time.monotonic())

    def forget(self, job_id: str) -> None:
        with self._lock:
            self._watched.pop(job_id, None)
            self._states.pop(job_id, None)
            self._nodes.pop(job_id, None)

    def node(self, job_id: str) -> str:
        """The node(s) the job was given, as of the last answer; ``""`` before it was."""
        with self._lock:
            return self._nodes.get(job_id, "")

    def state(self, job_id: str) -> tuple[str, str] | None:
        """``(state, reason)`` of a watched job; ``("", "")`` while unknown yet (slurmctld did not
        answer, or the job was submitted after the last answer); ``None`` when slurmctld no
        longer knows it."""
        with self._lock:
            now = time.monotonic()
            if now - self._asked_at >= self.interval_s:
                self._query(now)
            if not self._answered or self._watched.get(job_id, now) >= self._asked_at:
                return ("", "")
            return self._states.get(job_id)

    def _query(self, now: float) -> None:
        self._asked_at = now
        ids = ",".join(self._watched)
        if not ids:
            self._answered, self._states = True, {}
            return
        self.queries += 1
        # --all: jobs in hidden partitions too; no SQUEUE_* variables of the user's filtering them out
        # --array: a task of a job array on a line of its own (``12_3``), pending ones too
        command = ["squeue", "--all", "--array", "--noheader", "--states=all", f"--jobs={ids}", "--format=%i|%T|%r|%N"]
        env = {k: v for k, v in os.environ.items() if not k.startswith("SQUEUE_")}
        try:
            out = subprocess.run(command, capture_output=True, text=True, timeout=30, env=env)
        except (OSError, subprocess.TimeoutExpired):
            self._answered = False  # ask again at the next poll
            return
        if out.returncode != 0:
            # every job asked about was forgotten (squeue then refuses the list); else no answer now
            self._answered = "invalid job id" in (out.stderr or "").lower()
            self._states = {}
            return
        states = {}
        for line in out.stdout.splitlines():
            job_id, _, rest = line.strip().partition("|")
            state, _, rest = rest.partition("|")
            reason, _, nodes = rest.partition("|")
            if job_id:
                states[job_id] = (base_state(state), reason)
                if nodes:
                    self._nodes[job_id] = nodes
        self._answered, self._states = True, states


# --- where the trainer listens ---------------------------------------------------------------


def config_values(config_text: str) -> dict[str, str]:
    """The ``Key = Value`` lines of ``scontrol show config`` output, in their order.

    >>> config_values("MaxArraySize            = 4001\\nSlurmctldPort = 6817-6818")
    {'MaxArraySize': '4001', 'SlurmctldPort': '6817-6818'}
    """
    values: dict[str, str] = {}
    for line in config_text.splitlines():
        key, sep, value = line.partition("=")
        if sep:
            values.setdefault(key.strip(), value.strip())
    return values


def show_config() -> str:
    """What ``scontrol show config`` prints now; ``OSError`` or ``subprocess.TimeoutExpired``
    when it cannot run or does not answer within 30 s."""
    return subprocess.run(["scontrol", "show", "config"], capture_output=True, text=True, timeout=30).stdout


def controller_endpoint(config_text: str) -> tuple[str, int]:
    """``(address, port)`` of the first ``slurmctld`` in ``scontrol show config`` output.

    ``SlurmctldHost[0] = name(address)`` gives the address; a bare name is the address itself
    (resolved later). The port is the first of a ``SlurmctldPort`` range.
    """
    values = config_values(config_text)
    host = next((value for key, value in values.items() if key.startswith("SlurmctldHost")), "")
    name, _, address = host.partition("(")
    host = address.rstrip(")") or name
    if not host:
        raise ValueError("no SlurmctldHost in Slurm's configuration")
    return host, int(values.get("SlurmctldPort", "6817").split("-")[0])


def slurmctld_endpoint() -> tuple[str, int]:
    """:func:`controller_endpoint` of the configuration ``scontrol show config`` prints now;
    ``OSError``, ``ValueError`` or ``subprocess.TimeoutExpired`` when it cannot tell."""
    return controller_endpoint(show_config())


def max_array_size(config_text: str) -> int:
    """``MaxArraySize`` in ``scontrol show config`` output (Slurm's default, 1001, where it is
    not said): the task ids of a job array are below it.

    >>> max_array_size("MaxArraySize            = 4001\\nMaxJobCount = 10000")
    4001
    """
    value = config_values(config_text).get("MaxArraySize", "")
    return int(value) if value.isdigit() else 1001


def check_local_address(address: str) -> None:
    """Raise ``OSError`` unless ``address`` is one of this machine's IPv4 addresses, and neither
    the unspecified address (every interface) nor a loopback one (no other node reaches it)."""
    import ipaddress

    try:
        ip = ipaddress.ip_address(address)
    except ValueError:
        raise OSError(f"{address!r} is not an IP address") from None
    if ip.is_unspecified or ip.is_loopback:
        raise OSError("every interface, or the loopback, which compute nodes do not reach")
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
        probe.bind((address, 0))


#: variables never put in a job's environment (slurmctld stores it and shows it to administrators)
_SECRET = re.compile(r"PASSWORD|PASSWD|TOKEN|SECRET|CREDENTIAL|_KEY$|_PASS$|_PAT$|^MLFLOW_TRACKING_USERNAME$", re.I)


def job_environment(environ: Mapping[str, str]) -> dict[str, str]:
    """``environ`` without the variables named like secrets.

    >>> job_environment({"PATH": "/bin", "MLFLOW_TRACKING_PASSWORD": "x", "AWS_SECRET_ACCESS_KEY": "y"})
    {'PATH': '/bin'}
    """
    return {k: v for k, v in environ.items() if not _SECRET.search(k)}


#: where Slurm's commands find its configuration: a job's environment keeps it
SLURM_CONF_ENV = "SLURM_CONF"


def step_environment(environ: Mapping[str, str]) -> dict[str, str]:
    """The environment of a job whose script starts ``srun``: :func:`job_environment`, less this
    process's own ``SLURM_*`` and ``SRUN_*`` variables (``srun`` takes them as options, and a
    process inside an allocation has them) and torch.distributed's rank variables; where
    Slurm's configuration is (``SLURM_CONF``) stays.

    >>> step_environment({"PATH": "/bin", "SLURM_CONF": "/etc/s.conf", "SRUN_CPUS_PER_TASK": "8", "RANK": "3"})
    {'PATH': '/bin', 'SLURM_CONF': '/etc/s.conf'}
    """
    return {
        k: v
        for k, v in job_environment(environ).items()
        if k == SLURM_CONF_ENV or not (k.startswith(("SLURM_", "SRUN_")) or k in TORCH_DISTRIBUTED_ENV)
    }


def bind_address_for(given: str | None, field: str, what: str) -> str:
    """The address a server for jobs listens on: ``given`` (refused in one line naming ``field``
    when it is not one of this machine's), else this machine's address on its route to
    ``slurmctld``, which compute nodes reach as well on a cluster whose nodes and controller
    share a network."""
    if given is not None:
        try:
            check_local_address(str(given))
        except OSError as exc:
            raise ConfigError(
                f"{field}: {given!r} is not an address of this machine ({exc.strerror or exc}); "
                "give one that `ip -4 addr` lists, or leave it unset"
            ) from None
        return str(given)
    try:
        return address_towards(*slurmctld_endpoint())
    except (OSError, ValueError, subprocess.TimeoutExpired) as exc:
        raise ConfigError(
            f"{what}: cannot tell which address compute nodes reach this machine at ({exc}); set {field}"
        ) from None


# --- submission -------------------------------------------------------------------------------


def sbatch_flags(
    *,
    partition: str | None = None,
    time: str | None = None,
    cpus_per_task: int | None = None,
    mem: str | None = None,
    account: str | None = None,
    gpus: int | None = None,
    nodes: int | None = None,
    ntasks_per_node: int | None = None,
    gpus_per_node: int | None = None,
) -> list[str]:
    """``sbatch`` flags for the options given (``None``: Slurm's default).

    >>> sbatch_flags(partition="gpu", nodes=2, ntasks_per_node=4, gpus_per_node=4)
    ['--partition=gpu', '--nodes=2', '--ntasks-per-node=4', '--gpus-per-node=4']
    """
    pairs = (
        ("partition", partition),
        ("time", time),
        ("cpus-per-task", cpus_per_task),
        ("mem", mem),
        ("account", account),
        ("gpus", gpus),
        ("nodes", nodes),
        ("ntasks-per-node", ntasks_per_node),
        ("gpus-per-node", gpus_per_node),
    )
    return [f"--{flag}={value}" for flag, value in pairs if value is not None]


def slurm_path(path: Path | str) -> str:
    """``path`` for ``--output``, where Slurm expands ``%`` patterns (``%%`` is one ``%``).

    >>> slurm_path("/runs/100%/sim-1-1.log")
    '/runs/100%%/sim-1-1.log'
    """
    return str(path).replace("%", "%%")


def batch_script(extra: list[str], body: list[str]) -> str:
    """A batch script: ``extra`` as ``#SBATCH`` lines, then ``body``.

    >>> batch_script(["--qos=short"], ["exec true"])
    '#!/bin/sh\\n#SBATCH --qos=short\\nexec true\\n'
    """
    return "\n".join(["#!/bin/sh", *(f"#SBATCH {x}" for x in extra), *body]) + "\n"


def source_keys(keys: Path | None) -> list[str]:
    """Script lines that read a simulation's keys' file into its environment and delete it."""
    if keys is None:
        return []
    quoted = shlex.quote(str(keys))
    return [f". {quoted}", f"rm -f {quoted}"]


def discard_keys(keys: Path | None) -> None:
    """Delete a simulation's keys' file that its job did not read: the job was cancelled or
    withdrawn before it started, or ended without running its script."""
    if keys is not None:
        try:
            keys.unlink(missing_ok=True)
        except OSError:
            pass  # the run's folder is gone with it


def check_submission(flags: list[str], field: str, what: str) -> None:
    """Ask ``slurmctld`` whether a job with ``flags`` would be accepted (``sbatch --test-only``);
    one line naming ``field`` (``data.executor_options``) and the fix when it would not."""
    try:
        out = subprocess.run(
            ["sbatch", "--test-only", *flags, "--wrap", "true"],
            capture_output=True,
            text=True,
            timeout=30,
            env=job_environment(os.environ),
        )
    except (OSError, subprocess.TimeoutExpired) as exc:
        raise ConfigError(f"{what}: sbatch cannot run ({exc}); install Slurm's client") from None
    if out.returncode != 0:
        msg = " ".join(out.stderr.split())
        if "partition" in msg.lower():
            raise ConfigError(f"{field}.partition: {msg}; pick one that `sinfo` lists") from None
        if "node configuration is not available" in msg or "memory specification" in msg.lower():
            asked = " ".join(flag for flag in flags if flag.startswith(("--mem", "--cpus", "--gpus", "--nodes")))
            many = [f for f in flags if f.startswith("--nodes=") and f.removeprefix("--nodes=") not in ("", "1")]
            fix = "fewer nodes, " if many else ""  # a partition of fewer nodes than a job asks
            raise ConfigError(
                f"{field}: {msg}: no node of the partition has what a job asks ({asked or 'its defaults'}); "
                f"ask for {fix}less mem or fewer cpus_per_task (`sinfo -N -l` lists the nodes, their CPUs and memory)"
            ) from None
        if "gres" in msg.lower() or "generic resource" in msg.lower():
            asked = " ".join(flag for flag in flags if flag.startswith(("--gpus", "--gres")))
            raise ConfigError(
                f"{field}: {msg}: no node of the partition has the GPUs or resources a job asks ({asked}); "
                "ask for none there, or pick a partition whose nodes have them (`sinfo -o '%P %N %G'`)"
            ) from None
        raise ConfigError(f"{what}: {msg}; check that slurmctld is reachable (`sinfo`) and {field}") from None


# --- the executor -----------------------------------------------------------------------------


def sbatch(argv: list[str], env: Mapping[str, str], job_name: str) -> tuple[str | None, str]:
    """Run ``argv`` (an ``sbatch --parsable`` command for a job named ``job_name``): ``(job id,
    "")``, or ``(None, why)`` in one line when ``sbatch`` refused the job or did not answer
    within 120 s (the job, which slurmctld may have taken meanwhile, is then cancelled by its
    unique name). Never raises but ``KeyboardInterrupt`` and the like, after cancelling the job by
    its name: a failed submission fails attempts, never the caller's thread."""
    try:
        out = subprocess.run(argv, capture_output=True, text=True, env=dict(env), timeout=120)
    except subprocess.TimeoutExpired:
        scancel(f"--name={job_name}")
        return None, "sbatch failed: no answer within 120 s"
    except Exception as exc:
        return None, f"sbatch failed: {type(exc).__name__}: {exc}"
    except BaseException:  # Ctrl-C while sbatch ran: slurmctld may have taken the job already
        scancel(f"--name={job_name}")
        raise
    if out.returncode != 0:
        return None, f"sbatch failed: {' '.join(out.stderr.split())}"
    return out.stdout.strip().split(";")[0], ""


class SlurmProcess(SimulationProcess):
    """One simulation submitted as a batch job; ``poll`` reads its state from the executor's
    :class:`JobStates`. The executor submits it from its own thread: until ``sbatch`` answered,
    :attr:`job_id` is ``None`` and the simulation counts as starting (a refusal makes it a
    failed attempt whose log tail is ``sbatch``'s message)."""

    def __init__(
        self,
        job_id: str | None,
        log_path: Path,
        max_pending_s: float,
        states: JobStates | None = None,
        keys: Path | None = None,
    ) -> None:
        self.job_id: str | None = None
        self.log_path = log_path
        #: the keys' file its script reads and deletes; deleted here once the job ended or was
        #: withdrawn, in case it never started (cancelled while pending)
        self.keys = keys
        self.max_pending_s = max_pending_s
        self._submitted = time.monotonic()
        self._states = states or JobStates()
        self._code: int | None = None
        self._refusal = ""
        self._killed = False
        self._lock = threading.Lock()
        self._node = ""
        self._state = ""  # as of the last look at the queue
        self._started = False  # seen in any state but PENDING or CANCELLED (a requeued job pends again)
        self.job_name = ""
        #: the state (and reason) Slurm ended the job in, when it failed (``TIMEOUT (TimeLimit)``)
        self.ended = ""
        if job_id is not None:
            self.submitted_as(job_id)

    @property
    def pid(self) -> int | None:
        """The job's id as a number; ``None`` for a task of an array (``12_3``) and before ``sbatch``."""
        return int(self.job_id) if self.job_id is not None and self.job_id.isdigit() else None

    @property
    def host(self) -> str:
        """The node Slurm gave the job (``squeue``'s ``%N``); ``""`` until it was seen running.
        A simulation also names it when it connects; this one tells where a job ran that died
        before it could (a node that failed as the job started)."""
        if not self._node and self.job_id is not None:
            self._node = self._states.node(self.job_id)
        return self._node

    @property
    def starting(self) -> bool:
        """Waiting in the executor's queue for its ``sbatch``."""
        return self.job_id is None and self._code is None

    def submitted_as(self, job_id: str) -> None:
        """``sbatch`` accepted the job: watch it (or cancel it at once if killed meanwhile)."""
        with self._lock:
            self.job_id = job_id
            self._submitted = time.monotonic()  # max_pending_s counts from here, not from the queue
            killed = self._killed
            if not killed:
                self._states.watch(job_id)
        if killed:
            scancel(job_id)

    def submit(self, argv: list[str], env: Mapping[str, str]) -> None:
        """Run ``argv`` (an ``sbatch --parsable`` command for this job, named :attr:`job_name`):
        the job is then watched, or the attempt failed with ``sbatch``'s words; nothing when it
        was killed before. Never raises."""
        if not self.wanted:
            return
        job_id, refusal = sbatch(argv, env, self.job_name)
        if job_id is None:
            self.refused(refusal)
        else:
            self.submitted_as(job_id)

    def refused(self, message: str) -> None:
        """``sbatch`` refused the job: the attempt failed, with its message as the log tail."""
        with self._lock:
            self._refusal = message
            self._code = SLURM_FAILURE

    @property
    def waiting(self) -> bool:
        """Submitted or queued for ``sbatch``, and not seen started by Slurm yet."""
        return self._code is None and not self._started

    @property
    def queued(self) -> bool:
        """Pending in Slurm's queue as of the last look (or not seen by Slurm yet)."""
        return self._code is None and self._state in ("", "PENDING")

    @property
    def started(self) -> bool:
        """Seen started by Slurm: in any state but pending, or cancelled (while it pended)."""
        return self._started

    @property
    def wanted(self) -> bool:
        """Still to be submitted (not killed before ``sbatch`` ran)."""
        return not self._killed

    def poll(self) -> int | None:
        if self._code is not None:
            return self._code
        if self.job_id is None:
            return None  # in the executor's submission queue
        answer = self._states.state(self.job_id)
        if answer is None:  # ended and forgotten before it was seen ending: its outcome is unknown
            return self._settle(SLURM_FAILURE)
        state, reason = answer
        if not state:
            return None
        if state == "PENDING" and self._state not in ("", "PENDING"):
            self._submitted = time.monotonic()  # pending again, requeued: waiting anew
        self._state = state
        self._started = self._started or state not in ("PENDING", "CANCELLED")
        if state == "PENDING" and reason in ARRAY_WAIT_REASONS:
            self._submitted = time.monotonic()  # held by its array's own limit: not waiting for Slurm yet
        elif state == "PENDING" and time.monotonic() - self._submitted > self.max_pending_s:
            warnings.warn(
                f"Slurm job {self.job_id} pending for over {self.max_pending_s:.0f} s ({reason or '?'}); "
                "cancelled, to be retried",
                stacklevel=2,
            )
            self.kill()
            return self._settle(SLURM_FAILURE)
        try:
            code = exit_code_for_state(state)
        except ValueError:
            return None
        if code:
            self.ended = f"{state} ({reason})" if reason and reason != "None" else state
            if state == "FAILED":  # its script's own exit code, where Slurm kept it (a crash, an error)
                code = job_exit_code(self.job_id) or code
        return None if code is None else self._settle(code)

    def _settle(self, code: int) -> int:
        self._code = code
        discard_keys(self.keys)
        if self.job_id is not None:
            _ = self.host  # kept: the states of a job that ended are forgotten
            self._states.forget(self.job_id)
        return code

    def kill(self) -> None:
        job_id = self.withdraw(give_up=True)
        if job_id is not None:
            scancel(job_id)

    def withdraw(self, give_up: bool = False) -> str | None:
        """Never submit it from now on; its job id if it was submitted and has not ended (for the
        caller to cancel), else ``None``. One still queued ends at once as a failed attempt, and
        so does a submitted one when ``give_up`` (never polled as running again)."""
        with self._lock:
            self._killed = True
            live = self.job_id if self._code is None else None
            if self._code is None and (self.job_id is None or give_up):
                self._code = SLURM_FAILURE
        discard_keys(self.keys)
        if self.job_id is not None:
            _ = self.host  # kept: its state is forgotten now
            self._states.forget(self.job_id)  # never polled again: no longer asked about
        return live

    def stderr_tail(self, limit: int = 4000) -> str:
        if self._refusal:
            return self._refusal[-limit:]
        return self.headed_tail(self.log_path, limit)

    def headed_tail(self, log_path: Path, limit: int) -> str:
        """The end of ``log_path`` within ``limit`` characters, after a line saying how Slurm
        ended the job when it failed it (the log may be cut short or empty then)."""
        head = f"Slurm ended job {self.job_id}: {self.ended}\n" if self.ended else ""
        return head + log_tail(log_path, max(0, limit - len(head)))


class SlurmExecutor(Executor):
    """Simulations as Slurm batch jobs (``data.executor=slurm``), submitted with ``sbatch --parsable``.

    A simulation is a shell command, not a pickled Python function, so plain ``sbatch`` of a
    small batch script fits it better than submitit. Secrets are written to a ``0600`` file in
    the run's folder that the script reads and deletes, never put in the job's environment
    (slurmctld stores that). Options: ``partition``, ``time``, ``cpus_per_task``, ``mem``,
    ``account``, ``extra`` (further ``#SBATCH`` lines), ``max_pending_s`` (default 600),
    ``bind_address`` and ``simulations_per_job`` (default 1).

    With ``simulations_per_job`` above 1, the simulations queued within half a second of each
    other share a batch job, up to that many, each as a job step with ``cpus_per_task`` and
    ``mem`` (then required) of its own; the job asks for the sum, on one node: see
    :mod:`.group`. The run's ``data.concurrency`` still caps the simulations running at once.

    The trainer listens on one address that jobs on other nodes reach: ``bind_address`` when
    given, else this machine's address on its route to ``slurmctld`` (from ``scontrol show
    config``), which compute nodes reach as well on a cluster whose nodes and controller share a
    network. Never every interface: simulations authenticate, but the port stays off networks
    that have no business with it.

    When it is made, the executor checks the options with ``sbatch --test-only`` and, with
    ``check_folder`` (default), that a job on a compute node sees the folder it will run in (the
    current folder, where the run's folder and its logs, scripts and key files are made): the
    trainer writes a file with a random token there and a one-line job (``sbatch --wait``) must
    read the same token from it. A node-local folder fails this even where the same path exists
    on the node. A probe job still pending after ``probe_timeout_s`` is cancelled with a warning
    (a busy cluster cannot tell), and the run goes on.
    """

    shares_memory = False
    #: compute nodes see the working folder (checked), not the trainer's temporary folder, where
    #: the run's own key files are: a simulation's keys go into a ``0600`` file beside its batch
    #: script, which the script reads into its environment and deletes
    shares_filesystem = False

    def __init__(
        self,
        log_dir: str | None = None,
        partition: str | None = None,
        time: str | None = None,
        cpus_per_task: int | None = None,
        mem: str | None = None,
        account: str | None = None,
        extra: list[str] | None = None,
        max_pending_s: float = 600.0,
        check_folder: bool = True,
        probe_timeout_s: float = 60.0,
        bind_address: str | None = None,
        simulations_per_job: int = 1,
    ):
        given = {"time": time, "mem": mem, "cpus_per_task": cpus_per_task, "partition": partition, "account": account}
        given |= {"max_pending_s": max_pending_s, "probe_timeout_s": probe_timeout_s, "check_folder": check_folder}
        try:
            check_job_values("data.executor_options", given)  # its arguments' names are its own
        except ValueError as exc:
            raise ConfigError(str(exc)) from None
        self.log_dir = Path(log_dir or os.getcwd())
        self.max_pending_s = float(max_pending_s)
        if isinstance(simulations_per_job, bool) or not isinstance(simulations_per_job, int) or simulations_per_job < 1:
            raise ConfigError(
                f"data.executor_options.simulations_per_job: {simulations_per_job!r} is not an integer >= 1; "
                "give how many simulations one Slurm job may run (1: a job each)"
            )
        self.simulations_per_job = simulations_per_job
        self.options = sbatch_flags(
            partition=partition, time=time, cpus_per_task=cpus_per_task, mem=mem, account=account
        )
        #: flags of each simulation's step (in a job of several)
        self.step_options = sbatch_flags(cpus_per_task=cpus_per_task or 1, mem=mem)
        self._job_options = {"partition": partition, "time": time, "cpus_per_task": cpus_per_task, "account": account}
        self._mem = mem
        self._groups = 0
        self._jobs = 0  # simulations submitted as jobs of their own
        self._closed = False
        self.extra = [str(line) for line in (extra or [])]
        self._processes: list[SlurmProcess | SlurmTask] = []
        self.states = JobStates()
        self._queue: queue.SimpleQueue = queue.SimpleQueue()
        self._submitter: threading.Thread | None = None
        self._lock = threading.Lock()
        #: in every job name of this executor, so that a job can be named even when sbatch hung
        self.token = secrets.token_hex(4)
        #: cancels this executor's jobs if this process is killed before :meth:`shutdown`
        self._reaper = JobReaper(self.token)
        self._check()
        self.address = bind_address_for(bind_address, "data.executor_options.bind_address", "data.executor=slurm")
        if check_folder:
            self._check_folder(Path(os.getcwd()), float(probe_timeout_s))

    @classmethod
    def check_options(cls, options: Mapping[str, Any], field: str = "data.executor_options") -> None:
        """The option names, then the values sbatch would refuse or take otherwise than meant."""
        super().check_options(options, field)
        check_job_values(field, options)

    def group_options(self, simulations: int) -> list[str]:
        """``sbatch`` flags of a job of ``simulations`` simulations: one node, a task each, the
        memory of all of them (one simulation a job: :attr:`options`)."""
        if self.simulations_per_job == 1:
            return self.options
        from engage.deploy.slurm.group import job_memory

        mem = job_memory(self._mem, simulations, "data.executor_options.mem")
        return ["--nodes=1", f"--ntasks={simulations}", *sbatch_flags(**self._job_options, mem=mem)]

    def _check(self) -> None:
        # the largest job it will submit, with its #SBATCH lines of ``extra``, as the launcher checks its own
        flags = [*self.group_options(self.simulations_per_job), *self.extra]
        check_submission(flags, "data.executor_options", "data.executor=slurm")

    def _check_folder(self, folder: Path, timeout_s: float) -> None:
        """Refuse (one line) a folder that a job on a compute node does not see as this host does."""
        token = secrets.token_hex(8)
        probe = folder / f".engage-probe-{token}"
        name = f"engage-probe-{token}"
        try:
            probe.write_text(token)
        except OSError as exc:
            raise ConfigError(f"data.executor=slurm: cannot write in the working folder {folder} ({exc})") from None
        command = f'test "$(cat {shlex.quote(str(probe))} 2>/dev/null)" = {token}'
        try:
            done = subprocess.run(
                [
                    *("sbatch", "--wait", "--parsable", f"--job-name={name}", "--output=/dev/null"),
                    *(*self.options, f"--chdir={folder}", "--wrap", command),
                ],
                capture_output=True,
                text=True,
                timeout=timeout_s,
                env=job_environment(os.environ),
            )
        except subprocess.TimeoutExpired:
            scancel(f"--name={name}")
            warnings.warn(
                f"data.executor=slurm: the job checking that compute nodes see {folder} did not run within "
                f"{timeout_s:.0f} s; going on unchecked",
                stacklevel=2,
            )
            return
        finally:
            probe.unlink(missing_ok=True)
        if done.returncode != 0:
            raise ConfigError(
                f"data.executor=slurm: compute nodes do not see the working folder {folder} as this host does "
                "(a job there could not read a file written here); run from a folder on a filesystem the nodes "
                "share, or set data.executor_options.check_folder=false"
            ) from None

    def start(self, request: LaunchRequest) -> SimulationProcess:
        """Write the simulation's batch script (and its keys' file) and queue it for ``sbatch``;
        returns at once: the executor's thread submits, so a slow ``slurmctld`` never holds up
        the thread that receives samples."""
        folder = Path(request.log_dir or self.log_dir)
        folder.mkdir(parents=True, exist_ok=True)
        stem = f"sim-{request.simulation_id}-{request.attempt}"
        keys = None
        if request.secrets:
            keys = folder / f"{stem}.secrets"
            write_private(keys, "".join(f"export {k}={shlex.quote(v)}\n" for k, v in request.secrets.items()))
        from engage.core.online.link import PARENT_PID_ENV  # the online stack: loaded by a run already

        # the job's parent is slurmstepd, not the trainer: no parent-pid watch
        own = {k: v for k, v in request.env.items() if k != PARENT_PID_ENV}
        if self.simulations_per_job > 1:
            from engage.deploy.slurm.group import SlurmTask

            task = SlurmTask(folder, stem, request.command, own, keys)
            self._enqueue(task, task)
            return task
        script = folder / f"{stem}.sbatch"
        script.write_text(batch_script(self.extra, [*source_keys(keys), f"exec {shlex.join(request.command)}"]))
        log_path = folder / f"{stem}.log"
        with self._lock:  # a held-out and a training simulation may share a number: never a name
            self._jobs += 1
            job_name = f"engage-{stem}.{self._jobs}-{self.token}"
        argv = [
            "sbatch",
            "--parsable",
            f"--job-name={job_name}",
            f"--output={slurm_path(log_path)}",
            f"--chdir={os.getcwd()}",
            # a job Slurm requeued (after a node failure) would start the simulation again from its
            # first sample under a spent key: the fleet retries it instead, from its sample index
            "--no-requeue",
            *self.options,
            str(script),
        ]
        # slurmctld stores a job's environment: none of this process's secrets (an MLflow password)
        env = {**{k: v for k, v in job_environment(os.environ).items() if k != PARENT_PID_ENV}, **own}
        process = SlurmProcess(None, log_path, self.max_pending_s, self.states, keys=keys)
        process.job_name = job_name
        self._enqueue(process, (process, argv, env))
        return process

    def _enqueue(self, process: SlurmProcess | SlurmTask, item: object) -> None:
        with self._lock:
            if self._closed:
                # started while shutdown() cancels the rest: never submitted, so nothing outlives it
                process.withdraw()
                return
            if self._submitter is None:
                self._reaper.start()  # the jobs go with this process, however it ends
                self._submitter = threading.Thread(target=self._submit_queued, name="engage-sbatch", daemon=True)
                self._submitter.start()
            self._processes.append(process)
        self._queue.put(item)

    def _submit_queued(self) -> None:
        """The submission thread: ``sbatch`` each queued simulation in turn, or with up to
        ``simulations_per_job - 1`` others queued within :data:`~.group.GROUP_WAIT_S` of it."""
        while (item := self._queue.get()) is not None:
            if self.simulations_per_job == 1:
                process, argv, env = item
                process.submit(argv, env)  # nothing for one killed before its turn
                continue
            from engage.deploy.slurm.group import GROUP_WAIT_S

            tasks, deadline, ending = [item], time.monotonic() + GROUP_WAIT_S, False
            while len(tasks) < self.simulations_per_job:
                try:
                    more = self._queue.get(timeout=max(0.0, deadline - time.monotonic()))
                except queue.Empty:
                    break
                if more is None:
                    ending = True
                    break
                tasks.append(more)
            self._submit_group(tasks)
            if ending:
                return

    def _submit_group(self, tasks: list[SlurmTask]) -> None:
        """One batch job for ``tasks`` (those not killed meanwhile), a job step each. Never
        raises: what fails here fails these simulations' attempts, as a refused ``sbatch``."""
        from engage.deploy.slurm.group import group_script

        self._groups += 1
        stem = f"group-{self._groups}-{self.token}"  # the token last, as in every job name
        folder = tasks[0].log_path.parent
        job = SlurmProcess(None, folder / f"{stem}.log", self.max_pending_s, self.states)
        job.job_name = f"engage-sim-{stem}"
        # the whole list first: a simulation killed while the others join sees all of its job
        members = [task for task in tasks if task.wanted]
        joined = [task for task in members if task.attach(job, members, f"{task.stem}-{self.token}")]
        if not joined:
            return
        try:
            script = folder / f"{stem}.sbatch"
            script.write_text(group_script(joined, self.step_options, self.extra))
            argv = [
                *("sbatch", "--parsable", f"--job-name={job.job_name}", f"--output={slurm_path(job.log_path)}"),
                *(f"--chdir={os.getcwd()}", "--no-requeue", *self.group_options(len(joined)), str(script)),
            ]
            env = step_environment(os.environ)  # the script's srun reads SLURM_* as options
        except Exception as exc:
            job.refused(f"could not write the job's script: {type(exc).__name__}: {exc}")
            return
        job.submit(argv, env)

    @property
    def queued(self) -> int:
        """Simulations waiting for their ``sbatch``."""
        return self._queue.qsize()

    def bind_host(self) -> str:
        return self.address

    def shutdown(self) -> None:
        """Stop submitting, then cancel the jobs still queued or running when the run ends; a
        simulation started while this runs is never submitted. A later :meth:`start` submits
        again (the trainer may validate after fitting), and the next shutdown cancels it."""
        with self._lock:
            self._closed = True
            processes, self._processes = list(self._processes), []
            submitter, self._submitter = self._submitter, None
        # a job of several simulations is named once
        live = list(dict.fromkeys(job_id for process in processes if (job_id := process.withdraw()) is not None))
        if submitter is not None:
            self._queue.put(None)
            submitter.join(150)  # the sbatch under way, if any, answers; its job is then cancelled
        if live:
            scancel(*live)
        self._reaper.stop()
        with self._lock:
            self._closed = False  # a later start() (held-out simulations after fit) runs again
