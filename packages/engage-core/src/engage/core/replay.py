"""``engage replay RUN_ID``: run a recorded ENGAGE run again from what MLflow holds, and compare.

Any run of ``engage run`` (alone or a job of a sweep, by Hydra's launchers or the engage
launcher) records its overrides, its config flags (``-cd``, ``-cp``, ``-cn``), its working folder,
its seed (in the config), the commit of its code and the versions of its packages. Replay runs
``engage run`` again with those, into the same store and experiment, tags the new run
``engage.replay_of``, warns when the commit or the packages differ, and compares the metric
curves: each step's value within a declared tolerance (``--rtol``, ``--atol``). Metrics that
measure the machine or the timing of a live stream (``system/``, ``online/``, ``run/``, rates,
waits, times) are reported apart and never fail a replay.

A deterministic CPU run replays with identical loss curves, offline and online (with
``data.policy=deterministic``, samples are served in simulation order whatever the timing).

Example::

    engage replay 3f2c9a1e5b7d4c6f8a0b1c2d3e4f5a6b --tracking-uri sqlite:///mlflow.db
"""

from __future__ import annotations

import argparse
import json
import math
import os
import re
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from engage.core.tracking.environment import git_state, package_versions
from engage.core.tracking.store import (
    ERROR_TAG,
    MLFLOW_EXPERIMENT_ENV,
    MLFLOW_RUN_ID_ENV,
    PARENT_RUN_ENV,
    PARENT_RUN_FILE_ENV,
    TRACKING_URI_ENV,
    TrackingUnavailable,
    bound_http_requests,
    check_reachable,
    resolve_tracking_uri,
)

#: metrics that measure the machine or the timing of a live stream: reported, never compared
TIMING_PREFIXES = ("system/", "online/", "run/", "job/")
TIMING_PARTS = ("time", "/s", "wait", "throughput", "per_s")
#: a live stream's totals that its timing cannot change when samples are served in simulation
#: order (``data.policy=deterministic``): what training took from the stream, compared then
DETERMINISTIC_TOTALS = ("online/batches_trained", "online/samples_trained")
#: the heading of the metrics reported and not compared
NOT_COMPARED = "depend on the machine or the stream's timing, not compared:"
#: Hydra flags that choose the config (recorded with a run, given again to its replay)
CONFIG_FLAGS = ("-cd", "--config-dir", "-cp", "--config-path", "-cn", "--config-name")


class ReplayError(RuntimeError):
    """The run cannot be replayed; one line saying why."""


#: MLflow's switch of its progress bars while it downloads artifacts
PROGRESS_BAR_ENV = "MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR"


def config_flags(argv: list[str]) -> list[str]:
    """The config-choosing flags of an ``engage run`` command line, with their values.

    >>> config_flags(["-m", "-cd", "conf", "--config-name=train", "model.lr=0.1"])
    ['-cd', 'conf', '--config-name=train']
    """
    out: list[str] = []
    for i, arg in enumerate(argv):
        if arg in CONFIG_FLAGS and i + 1 < len(argv):
            out += [arg, argv[i + 1]]
        elif arg.startswith(tuple(f"{flag}=" for flag in CONFIG_FLAGS if flag.startswith("--"))):
            out.append(arg)
    return out


def is_timing(name: str, policy: str | None = None) -> bool:
    """Whether metric ``name`` measures the machine or a stream's timing, for a run whose samples
    were read with ``policy`` (``data.policy``; the totals of :data:`DETERMINISTIC_TOTALS` do
    not under ``deterministic``)."""
    if policy == "deterministic" and name in DETERMINISTIC_TOTALS:
        return False
    return name.startswith(TIMING_PREFIXES) or any(part in name for part in TIMING_PARTS)


@dataclass
class Comparison:
    """One metric's curves, original and replayed: ``(step, value)`` pairs."""

    name: str
    original: list[tuple[int, float]]
    replayed: list[tuple[int, float]]
    largest_difference: float = 0.0
    matches: bool = True

    def line(self) -> str:
        last = f"{self.original[-1][1]!r} -> {self.replayed[-1][1]!r}" if self.original and self.replayed else ""
        if not self.matches:
            return (
                f"{self.name}: DIFFERENT ({len(self.original)} vs {len(self.replayed)} points, largest difference "
                f"{self.largest_difference:.3g}; last {last})"
            )
        return f"{self.name}: {len(self.original)} points match (largest difference {self.largest_difference:.3g})"


def compare_curves(
    name: str, original: list[tuple[int, float]], replayed: list[tuple[int, float]], rtol: float, atol: float
) -> Comparison:
    """Whether two curves have the same steps and values within ``atol + rtol * |original|``.

    >>> compare_curves("loss", [(0, 1.0), (1, 0.5)], [(0, 1.0), (1, 0.5000001)], 1e-6, 0).matches
    True
    >>> compare_curves("loss", [(0, 1.0)], [(0, 1.1)], 1e-6, 0).matches
    False
    """
    result = Comparison(name, original, replayed)
    if [s for s, _ in original] != [s for s, _ in replayed]:
        result.matches = False
        result.largest_difference = math.inf
        return result
    for (_, old), (_, new) in zip(original, replayed, strict=True):
        if math.isnan(old) and math.isnan(new):
            continue
        difference = abs(old - new)
        result.largest_difference = max(result.largest_difference, difference)
        if not difference <= atol + rtol * abs(old):
            result.matches = False
    return result


@dataclass
class ReplayResult:
    """The original and new runs, the compared curves, the timing metrics and the warnings."""

    original_run_id: str
    new_run_id: str | None
    exit_code: int
    compared: list[Comparison] = field(default_factory=list)
    timing: dict[str, tuple[float, float | None]] = field(default_factory=dict)
    warnings: list[str] = field(default_factory=list)
    #: the replay's Hydra output folder
    output_dir: str = ""
    #: the original run's ``data.policy`` (its read order), if it recorded one
    policy: str | None = None
    #: how the original run ended (MLflow's status) and why, when it did not finish
    original_status: str = "FINISHED"
    original_error: str | None = None
    #: why the replay did not finish, when it did not
    replay_error: str | None = None

    @property
    def identical(self) -> bool:
        return self.exit_code == 0 and bool(self.compared) and all(c.matches for c in self.compared)

    @property
    def failure_reproduced(self) -> bool:
        """The original run failed, and its replay failed for the same recorded cause."""

        def said(error: str | None) -> str:
            return " ".join((error or "").split())

        return (
            self.original_status == "FAILED"
            and self.exit_code != 0
            and bool(said(self.original_error))
            and said(self.replay_error) == said(self.original_error)
        )

    @property
    def verdict(self) -> str:
        """``identical``, ``failure reproduced`` or ``different``."""
        if self.failure_reproduced:
            return "failure reproduced"
        return "identical" if self.identical and self.original_status != "FAILED" else "different"


def _command(client: Any, run: Any, scratch: str) -> tuple[list[str], list[str], str | None]:
    """The command, overrides and working folder that ran ``run``."""
    tags = run.data.tags
    run_id = run.info.run_id
    if "engage.command" in tags:  # a job of the engage launcher: its app's own command
        import yaml

        path = client.download_artifacts(run_id, "engage/overrides.yaml", scratch)
        return (
            json.loads(tags["engage.command"]),
            list(yaml.safe_load(Path(path).read_text()) or []),
            tags.get("engage.cwd"),
        )
    try:
        overrides = json.loads(Path(client.download_artifacts(run_id, "run/overrides.json", scratch)).read_text())
    except Exception:
        location = run.info.artifact_uri or ""
        folder = location.removeprefix("file://") if location.startswith(("/", "file://")) else None
        if folder and not Path(folder).is_dir():  # a store moved without its artifacts' folder
            raise ReplayError(
                f"run {run_id}'s artifacts are not at {folder}, where the store says they are (moved with "
                "another folder?); put them back there to replay it"
            ) from None
        raise ReplayError(
            f"run {run_id} was not recorded by engage run (no run/overrides.json artifact): nothing to replay it from"
        ) from None
    try:
        recorded = json.loads(Path(client.download_artifacts(run_id, "run/command.json", scratch)).read_text())
    except Exception:
        recorded = {}
    flags = config_flags(list(recorded.get("argv", []))[1:])
    return [sys.executable, "-m", "engage.core.cli", "run", *flags], list(overrides), tags.get("engage.cwd")


def _from_the_same_checkpoint(run: Any, overrides: list[str]) -> tuple[list[str], str | None]:
    """A run that resumed from a checkpoint replays from that checkpoint (its ``engage.resumed_from``
    tag), not from ``ckpt_path=last`` of the replay's own new folder; :class:`ReplayError` when
    that file is gone. Returns the overrides and a warning: a run recorded before the tag named
    the file itself names ``last.ckpt``'s link, which may point at a later checkpoint now."""

    def resumes(override: str) -> bool:
        key, _, value = override.partition("=")
        return key.lstrip("+~") == "ckpt_path" and value.strip("'\"") not in ("", "null")

    resumed = [o for o in overrides if resumes(o)]
    if not resumed:
        return overrides, None
    path = run.data.tags.get("engage.resumed_from")
    if not path:
        raise ReplayError(
            f"run {run.info.run_id} resumed from a checkpoint ({resumed[-1]}) it did not record; "
            "replay the run it resumed"
        )
    if "://" not in path and not Path(path).is_file():
        raise ReplayError(
            f"run {run.info.run_id} resumed from {path}, which no longer exists; a replay starts from the "
            "same checkpoint"
        )
    warning = None
    if "://" not in path and Path(path).is_symlink():
        warning = f"the run recorded the link {path}, which now points at {os.path.realpath(path)}: replayed from that"
    quoted = path.replace("'", "\\'")  # Hydra's quoted strings: only quotes are escaped
    return [o for o in overrides if o not in resumed] + [f"ckpt_path='{quoted}'"], warning


#: params a replay sets otherwise by design (it resumes from the checkpoint's file itself)
REPLAY_PARAMS = ("ckpt_path",)


def config_drift(original: dict[str, str], replayed: dict[str, str], shown: int = 3) -> str:
    """The config values (MLflow params) a replay ran with that differ from the run's, as
    ``key: run's -> replay's``, the first ``shown`` of them; empty when there are none."""
    keys = sorted(k for k in {*original, *replayed} if k not in REPLAY_PARAMS and original.get(k) != replayed.get(k))
    if not keys:
        return ""
    listed = "; ".join(f"{k}: {original.get(k, '(none)')} -> {replayed.get(k, '(none)')}" for k in keys[:shown])
    return listed + (f"; and {len(keys) - shown} more" if len(keys) > shown else "")


def environment_warnings(run: Any, cwd: str | None) -> list[str]:
    """How the code and packages differ from the run's (empty when they do not)."""
    tags = run.data.tags
    found: list[str] = []
    recorded_commit = tags.get("mlflow.source.git.commit")
    current = git_state(cwd or None) if cwd is None or Path(cwd).is_dir() else {}
    if recorded_commit and current.get("commit") and current["commit"] != recorded_commit:
        found.append(f"the code is at commit {current['commit'][:12]}, the run was at {recorded_commit[:12]}")
    if tags.get("engage.git_dirty") == "True":
        found.append("the run's code had uncommitted changes (its git.diff artifact)")
    versions = package_versions()
    for key, value in sorted(tags.items()):
        if key.startswith("version."):
            name = key.removeprefix("version.")
            if name in versions and versions[name] != value:
                found.append(f"{name} is {versions[name]} here, the run had {value}")
    return found


def replay(
    run_id: str,
    tracking_uri: str | None = None,
    output_dir: str | os.PathLike[str] | None = None,
    rtol: float = 1e-6,
    atol: float = 0.0,
) -> ReplayResult:
    """Run ``run_id`` again and compare (see the module docstring)."""
    from mlflow.exceptions import MlflowException
    from mlflow.tracking import MlflowClient

    if tracking_uri and "://" not in tracking_uri:  # a path: an SQLite store, as the default ./mlflow.db
        tracking_uri = f"sqlite:///{Path(tracking_uri).resolve()}"
    uri = resolve_tracking_uri(tracking_uri)
    if uri.startswith("sqlite:///") and not Path(uri.removeprefix("sqlite:///")).is_file():
        raise ReplayError(f"there is no MLflow store at {uri}; pass --tracking-uri")
    if uri.startswith(("http://", "https://")):
        try:  # MLflow's own client would retry for minutes
            check_reachable(uri)
        except TrackingUnavailable as exc:
            raise ReplayError(f"{exc}; start it, or pass --tracking-uri") from None
        bound_http_requests(uri)
    if not re.fullmatch(r"[0-9a-f]{32}", run_id):
        raise ReplayError(f"{run_id!r} is no MLflow run id (32 hexadecimal digits); copy the whole id of the run")
    client = MlflowClient(uri)
    try:
        run = client.get_run(run_id)
    except MlflowException:
        overridden = os.environ.get(TRACKING_URI_ENV) and tracking_uri and uri != tracking_uri
        where = f" (named by {TRACKING_URI_ENV}, which takes precedence over --tracking-uri)" if overridden else ""
        raise ReplayError(f"run {run_id} is not in the tracking store {uri}{where}; pass --tracking-uri") from None
    if run.data.tags.get("engage.kind") == "sweep":
        raise ReplayError(f"run {run_id} is a sweep's parent run; replay one of its jobs' runs")
    with tempfile.TemporaryDirectory() as scratch:
        # a few small files: no progress bar of MLflow's among the replay's lines
        saved = os.environ.get(PROGRESS_BAR_ENV)
        os.environ[PROGRESS_BAR_ENV] = "false"
        try:
            command, overrides, cwd = _command(client, run, scratch)
        finally:
            if saved is None:
                os.environ.pop(PROGRESS_BAR_ENV, None)
            else:
                os.environ[PROGRESS_BAR_ENV] = saved
    overrides, linked = _from_the_same_checkpoint(run, overrides)
    warnings = environment_warnings(run, cwd) + ([linked] if linked else [])
    # beside the runs of the folder it is started in, as Hydra's own outputs/, not a temporary
    # folder left behind by each replay
    out = Path(output_dir) if output_dir else Path("outputs", f"replay-{run_id[:8]}-{time.strftime('%Y%m%d-%H%M%S')}")
    out = out.resolve()
    experiment = client.get_experiment(run.info.experiment_id)
    env = {k: v for k, v in os.environ.items() if k not in (PARENT_RUN_ENV, PARENT_RUN_FILE_ENV, MLFLOW_RUN_ID_ENV)}
    env[TRACKING_URI_ENV] = uri
    env[MLFLOW_EXPERIMENT_ENV] = experiment.name
    started = time.time()
    argv = [*command, *overrides, f"hydra.run.dir={out}"]
    proc = subprocess.run(argv, cwd=cwd if cwd and Path(cwd).is_dir() else None, env=env)
    found = client.search_runs(
        [run.info.experiment_id],
        filter_string=f"tags.`engage.output_dir` = '{out}' and attributes.start_time >= {int(started * 1000)}",
        max_results=1,
    )
    if found:
        new_id = found[0].info.run_id
    else:  # an app that does not log to MLflow itself: record the replay's outcome
        new = client.create_run(run.info.experiment_id, start_time=int(started * 1000), run_name=f"replay-{run_id[:8]}")
        new_id = new.info.run_id
        client.set_terminated(new_id, status="FINISHED" if proc.returncode == 0 else "FAILED")
    client.set_tag(new_id, "engage.replay_of", run_id)
    policy = run.data.params.get("data.policy")
    replayed = client.get_run(new_id)
    result = ReplayResult(
        run_id, new_id, proc.returncode, warnings=warnings, output_dir=str(out), policy=policy,
        original_status=run.info.status, original_error=run.data.tags.get(ERROR_TAG),
        replay_error=replayed.data.tags.get(ERROR_TAG),
    )  # fmt: skip
    drift = config_drift(run.data.params, replayed.data.params)
    if drift:
        result.warnings.append(
            f"the replay ran another config than the run's ({drift}): a config file, or a default, changed since"
        )
    new_metrics = replayed.data.metrics
    for name in sorted(run.data.metrics):
        if is_timing(name, policy):
            result.timing[name] = (run.data.metrics[name], new_metrics.get(name))
            continue
        curves = [
            [(m.step, m.value) for m in sorted(client.get_metric_history(r, name), key=lambda m: (m.step, m.timestamp))]
            for r in (run_id, new_id)
        ]
        result.compared.append(compare_curves(name, *curves, rtol=rtol, atol=atol))
    # the verdict is the replay run's own record, not the console's only
    different = [c.name for c in result.compared if not c.matches]
    client.set_tag(new_id, "engage.replay_verdict", result.verdict)
    client.set_tag(new_id, "engage.replay_tolerance", f"rtol={rtol:g} atol={atol:g}")
    if different:
        client.set_tag(new_id, "engage.replay_different", " ".join(different)[:5000])
    return result


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("run_id", help="MLflow run id of a run of engage run (alone or a job of a sweep)")
    parser.add_argument(
        "--tracking-uri",
        default=None,
        help="tracking store (default: MLFLOW_TRACKING_URI, else ./mlflow.db)",
    )
    parser.add_argument(
        "--output-dir", default=None, help="Hydra output folder of the replay (default: a new temp dir)"
    )
    parser.add_argument("--rtol", type=float, default=1e-6, help="relative tolerance of each compared value")
    parser.add_argument("--atol", type=float, default=0.0, help="absolute tolerance of each compared value")


def run_command(namespace: argparse.Namespace) -> int:
    """``engage replay``: exit 0 when the curves match (or a failed run fails again), 1 when they
    differ, 2 on bad input."""
    for name in ("rtol", "atol"):
        if not getattr(namespace, name) >= 0:
            print(f"engage replay: --{name} must be >= 0, got {getattr(namespace, name)}", file=sys.stderr)
            return 2
    try:
        result = replay(namespace.run_id, namespace.tracking_uri, namespace.output_dir, namespace.rtol, namespace.atol)
    except ReplayError as exc:
        print(f"engage replay: {exc}", file=sys.stderr)
        return 2
    for warning in result.warnings:
        print(f"engage replay: warning: {warning}", file=sys.stderr)
    if result.compared:
        print(f"compared within rtol={namespace.rtol:g}, atol={namespace.atol:g}:")
        for comparison in result.compared:
            print(f"  {comparison.line()}")
    elif result.original_status == "KILLED":
        print("no curve to compare: the original run was stopped (KILLED) before it logged one")
    else:
        print("no curve to compare: the original run logged none the replay can compare")
    if result.timing:
        print(NOT_COMPARED)
        for name, (old, new) in result.timing.items():
            print(f"  {name}: {old:.6g} -> {'-' if new is None else f'{new:.6g}'}")
    if result.original_status == "FAILED":
        print(f"the original run failed: {result.original_error or '(its cause was not recorded)'}")
    if result.exit_code:
        print(f"the replay exited with code {result.exit_code}: {result.replay_error or '(see its output above)'}")
    verdict = {"identical": "identical", "failure reproduced": "failure reproduced"}.get(result.verdict, "DIFFERENT")
    if result.failure_reproduced or result.original_status == "FAILED":
        print(f"replay of {result.original_run_id}: run {result.new_run_id} in {result.output_dir}, {verdict}")
        return 0 if result.failure_reproduced else 1
    if not result.identical and result.compared and result.policy not in (None, "deterministic"):
        # the usual cause: a buffer read in an order that depends on when samples arrive
        print(
            f"the run read its samples with data.policy={result.policy}, in an order that depends on when they "
            "arrive: only a run with data.policy=deterministic replays exactly"
        )
    print(f"replay of {result.original_run_id}: run {result.new_run_id} in {result.output_dir}, metrics {verdict}")
    return 0 if result.identical else 1
