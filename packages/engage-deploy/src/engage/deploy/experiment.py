"""The experiment folder of one launch: its layout, resume, and the only writer of ``result.json``.

Every launch writes a time-stamped folder of the same shape for every provider::

    <sweep dir>/.engage/<YYYYmmdd-HHMMSS>/
        infrastructure.yaml        the infrastructure asked for, and the hosts deployed
        placement.json             with ``placement: optimize``: the host of every service instance
        sweep.json                 options, counts, MLflow ids, tracking incidents
        parent-run-id              the MLflow run the jobs record under (a resumed sweep continues it)
        mlflow-server.log          the sweep's MLflow server output (when it starts one; later
                                   launches of the process on the same store use that server)
        hosts/<host>/metrics.csv   system metrics sampled every monitor_interval_s
        jobs/<idx>/                stdout.log, stderr.log, config.yaml, overrides.yaml, result.json,
                                   job.json (the job's contract), job.pkl/result.pkl (exchanged
                                   with the runner), mlflow-run-id (the run the job opened)

A job whose resolved config (and task) completed in an earlier launch into the same sweep
directory is found by :meth:`ExperimentFolder.completed` and not run again, and the sweep's
MLflow run is the one that launch recorded under (:meth:`ExperimentFolder.recorded_parent`).

Example::

    >>> import tempfile
    >>> from pathlib import Path
    >>> folder = ExperimentFolder.create(Path(tempfile.mkdtemp()))
    >>> folder.write_result(0, {"status": "COMPLETED", "config_hash": "abc"})
    >>> folder.update_result(0, mlflow_run_id="123")
    >>> sorted(folder.read_result(0))
    ['config_hash', 'index', 'mlflow_run_id', 'status']
"""

from __future__ import annotations

import hashlib
import inspect
import json
import re
import shutil
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml
from omegaconf import DictConfig, OmegaConf

from engage.deploy.tracking import write_json

#: the file of a launch folder holding the id of the MLflow run its jobs record under
PARENT_RUN_FILE = "parent-run-id"
#: an MLflow run id
RUN_ID = re.compile(r"[0-9a-f]{32}")
#: the result files a job leaves in its folder: a retry starts without them
ATTEMPT_FILES = ("result.pkl", "runner.json", "mlflow-run-id")


@dataclass
class SweepJob:
    """One job of a launch: its number, overrides, composed config, what resume matches on
    (``config_hash``) and its folder."""

    index: int
    overrides: list[str]
    config: DictConfig
    config_hash: str
    folder: Path


def task_identity(task_function: Any) -> str:
    """Module, name and code of the task function: a job of another app never counts as done."""
    module = getattr(task_function, "__module__", "")
    name = getattr(task_function, "__qualname__", repr(task_function))
    try:
        code = inspect.getsource(task_function)
    except (OSError, TypeError):
        code_object = getattr(task_function, "__code__", None)
        code = repr((code_object.co_code, code_object.co_consts)) if code_object else ""
    return f"{module}:{name}:{hashlib.sha256(code.encode()).hexdigest()}"


def config_hash(cfg: DictConfig, task: str = "") -> str:
    """SHA-256 of a job's resolved config without the ``hydra`` node, and of its task (what resume
    matches on)."""
    container: Any
    plain = OmegaConf.masked_copy(cfg, [k for k in cfg if k != "hydra"]) if "hydra" in cfg else cfg
    try:
        container = OmegaConf.to_container(plain, resolve=True)
    except Exception:  # an interpolation only the job can resolve: hash the unresolved form
        container = OmegaConf.to_container(plain, resolve=False)
    text = json.dumps({"config": container, "task": task}, sort_keys=True, default=str)
    return hashlib.sha256(text.encode()).hexdigest()


class ExperimentFolder:
    """The folder of one launch (see the module docstring); :meth:`create` makes a new one."""

    def __init__(self, path: Path, sweep_dir: Path) -> None:
        self.path = path
        self.sweep_dir = sweep_dir

    @classmethod
    def create(cls, sweep_dir: Path) -> ExperimentFolder:
        """A new time-stamped folder under ``sweep_dir/.engage``."""
        sweep_dir = sweep_dir.resolve()
        base = sweep_dir / ".engage"
        stamp = time.strftime("%Y%m%d-%H%M%S")
        path, n = base / stamp, 1
        while path.exists():  # two launches in one second (tests, batched sweepers)
            n += 1
            path = base / f"{stamp}-{n}"
        (path / "jobs").mkdir(parents=True)
        return cls(path, sweep_dir)

    @property
    def name(self) -> str:
        return self.path.name

    @property
    def parent_run_file(self) -> Path:
        """Where the launch writes the id of the MLflow run its jobs record under (empty: none)."""
        return self.path / PARENT_RUN_FILE

    @staticmethod
    def recorded_parent(sweep_dir: Path, before: Path | None = None) -> str | None:
        """The MLflow run the last launch into ``sweep_dir`` (other than ``before``, a launch
        folder) recorded its jobs under, if any."""
        written = []
        for path in (sweep_dir / ".engage").glob(f"*/{PARENT_RUN_FILE}"):
            try:
                if path.parent != before:
                    written.append((path.stat().st_mtime_ns, path.read_text().strip()))
            except OSError:
                continue
        ids = [run_id for _, run_id in sorted(written) if RUN_ID.fullmatch(run_id)]
        return ids[-1] if ids else None

    def job_folder(self, index: int) -> Path:
        return self.path / "jobs" / str(index)

    def host_folder(self, host: str) -> Path:
        folder = self.path / "hosts" / host
        folder.mkdir(parents=True, exist_ok=True)
        return folder

    # ------------------------------------------------------------------ jobs

    def add_job(self, index: int, overrides: Sequence[str], config: DictConfig, task: str) -> SweepJob:
        """The job's folder with its resolved ``config.yaml`` and ``overrides.yaml``."""
        folder = self.job_folder(index)
        folder.mkdir(parents=True, exist_ok=True)
        plain = OmegaConf.masked_copy(config, [k for k in config if k != "hydra"])
        try:
            text = OmegaConf.to_yaml(plain, resolve=True)
        except Exception:  # interpolations that only resolve inside the job
            text = OmegaConf.to_yaml(plain)
        (folder / "config.yaml").write_text(text)
        self._write_overrides(folder, overrides)
        return SweepJob(index, list(overrides), config, config_hash(config, task), folder)

    def clear_attempt(self, job: SweepJob) -> None:
        """Remove what an earlier attempt of ``job`` left for the launcher to read."""
        for name in ATTEMPT_FILES:
            (job.folder / name).unlink(missing_ok=True)

    def completed(self) -> dict[tuple[int, str], Path]:
        """(job number, config hash) -> job folder of every job that completed in an earlier
        launch here. A job is the one of its number, its hash only confirming it is the same:
        a batched sweeper (Optuna) numbers its jobs on from batch to batch, and a trial that asks
        for a config an earlier trial ran is a new job, run again."""
        found: dict[tuple[int, str], Path] = {}
        for result in sorted((self.sweep_dir / ".engage").glob("*/jobs/*/result.json")):
            if result.parent.parent.parent == self.path or not result.parent.name.isdigit():
                continue
            data = read_json(result)
            if data.get("status") == "COMPLETED" and (result.parent / "result.pkl").is_file():
                found[(int(result.parent.name), data["config_hash"])] = result.parent
        return found

    def copy_result(self, job: SweepJob, previous: Path) -> bytes:
        """Take the result of ``previous`` (an earlier launch's job folder) for ``job``; returns
        the pickled ``JobReturn``."""
        data = read_json(previous / "result.json")
        self.write_result(job.index, {**data, "resumed_from": str(previous)})
        shutil.copy(previous / "result.pkl", job.folder / "result.pkl")
        return (job.folder / "result.pkl").read_bytes()

    # ------------------------------------------------------------------ result.json

    def write_result(self, index: int, data: Mapping[str, Any]) -> None:
        """Write job ``index``'s ``result.json`` (the only writer of these files)."""
        folder = self.job_folder(index)
        folder.mkdir(parents=True, exist_ok=True)
        write_json(folder / "result.json", {**data, "index": index})

    def update_result(self, index: int, **values: Any) -> None:
        """Add ``values`` to job ``index``'s ``result.json``."""
        self.write_result(index, {**self.read_result(index), **values})

    def read_result(self, index: int) -> dict[str, Any]:
        return read_json(self.job_folder(index) / "result.json")

    def mark_interrupted(
        self, killed: Sequence[int], jobs: Sequence[tuple[int, Sequence[str]]], hashes: Mapping[int, str]
    ) -> None:
        """After an interrupt: the ``killed`` jobs are KILLED, the jobs never started NOT_STARTED."""
        for index in killed:
            self.update_result(index, status="KILLED", error="interrupted")
        for index, overrides in jobs:
            folder = self.job_folder(index)
            if not (folder / "overrides.yaml").exists():  # interrupted before it was even composed
                folder.mkdir(parents=True, exist_ok=True)
                self._write_overrides(folder, overrides)
            if not (folder / "result.json").exists():
                record: dict[str, Any] = {"status": "NOT_STARTED"}
                if index in hashes:
                    record["config_hash"] = hashes[index]
                self.write_result(index, record)

    # ------------------------------------------------------------------ the launch

    def write_infrastructure(self, asked: Mapping[str, Any], deployed: Mapping[str, Any]) -> None:
        description = {"infrastructure": dict(asked), "deployed": dict(deployed)}
        (self.path / "infrastructure.yaml").write_text(yaml.safe_dump(description, sort_keys=False))

    def write_placement(self, plan: Mapping[str, Any]) -> None:
        write_json(self.path / "placement.json", plan)

    def write_summary(self, summary: Mapping[str, Any]) -> None:
        write_json(self.path / "sweep.json", {"folder": str(self.path), **summary})

    @staticmethod
    def _write_overrides(folder: Path, overrides: Sequence[str]) -> None:
        (folder / "overrides.yaml").write_text(yaml.safe_dump(list(overrides), default_flow_style=False))


def read_json(path: Path) -> dict[str, Any]:
    """A JSON file's object, or ``{}`` when it is missing or unreadable."""
    try:
        data = json.loads(path.read_text())
    except (OSError, json.JSONDecodeError):
        return {}
    return data if isinstance(data, dict) else {}
