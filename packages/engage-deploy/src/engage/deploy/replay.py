"""``engage replay RUN_ID``: run one recorded job again from what MLflow holds, and compare.

The launcher records, for every job, the command of its app (``engage run`` or the Hydra
script), its working directory and its exact overrides (``engage/overrides.yaml``). Replay
runs that command with those overrides as a single run, logging to the same tracking store,
tags the new run ``engage.replay_of`` and compares its final metrics with the original's
(system and timing metrics left out: they differ by nature).

Example::

    engage replay 3f2c9a1e5b7d4c6f8a0b1c2d3e4f5a6b --tracking-uri sqlite:///mlflow.db
"""

from __future__ import annotations

import argparse
import json
import math
import os
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

import yaml

#: metrics that measure the machine, not the model: not compared
VOLATILE_PREFIXES = ("system/", "job/", "run/wall_time", "time", "epoch_time")
VOLATILE_PARTS = ("time", "/s", "wait", "throughput")


class ReplayError(RuntimeError):
    """The run cannot be replayed; one line saying why."""


@dataclass
class ReplayResult:
    """The original and new run ids, the compared metrics and whether they are identical."""

    original_run_id: str
    new_run_id: str | None
    exit_code: int
    compared: dict[str, tuple[float, float | None]] = field(default_factory=dict)

    @property
    def identical(self) -> bool:
        return self.exit_code == 0 and all(
            new is not None and (old == new or (math.isnan(old) and math.isnan(new)))
            for old, new in self.compared.values()
        )


def _default_uri() -> str:
    return os.environ.get("ENGAGE_TRACKING_URI") or f"sqlite:///{(Path.cwd() / 'mlflow.db').resolve()}"


def comparable_metrics(metrics: dict[str, float]) -> dict[str, float]:
    """The metrics of a run that a replay must reproduce."""
    return {
        k: v
        for k, v in metrics.items()
        if not k.startswith(VOLATILE_PREFIXES) and not any(part in k for part in VOLATILE_PARTS)
    }


def replay(
    run_id: str, tracking_uri: str | None = None, output_dir: str | os.PathLike[str] | None = None
) -> ReplayResult:
    """Re-run the job recorded as ``run_id`` and compare metrics (see the module docstring)."""
    from mlflow.exceptions import MlflowException
    from mlflow.tracking import MlflowClient

    uri = tracking_uri or _default_uri()
    client = MlflowClient(uri)
    try:
        run = client.get_run(run_id)
    except MlflowException:
        raise ReplayError(f"run {run_id} is not in the tracking store {uri}; pass --tracking-uri") from None
    tags = run.data.tags
    if "engage.command" not in tags:
        raise ReplayError(f"run {run_id} was not launched by the engage launcher (no engage.command tag)")
    command = json.loads(tags["engage.command"])
    with tempfile.TemporaryDirectory() as scratch:
        try:
            path = client.download_artifacts(run_id, "engage/overrides.yaml", scratch)
            overrides = list(yaml.safe_load(Path(path).read_text()) or [])
        except Exception:  # older records: the space-separated parameter
            overrides = [o for o in run.data.params.get("overrides", "").split() if o != "(none)"]
    out = Path(output_dir) if output_dir else Path(tempfile.mkdtemp(prefix=f"engage-replay-{run_id[:8]}-"))
    out = out.resolve()
    env = {
        k: v
        for k, v in os.environ.items()
        if k not in ("ENGAGE_PARENT_RUN_ID", "ENGAGE_PARENT_RUN_FILE", "MLFLOW_RUN_ID")
    }
    env["ENGAGE_TRACKING_URI"] = uri
    env["MLFLOW_TRACKING_URI"] = uri
    argv = [*command, *overrides, f"hydra.run.dir={out}"]
    started = time.time()
    proc = subprocess.run(argv, cwd=tags.get("engage.cwd") or None, env=env, timeout=None)
    experiment_id = run.info.experiment_id
    found = client.search_runs(
        [experiment_id],
        filter_string=f"tags.`engage.output_dir` = '{out}' and attributes.start_time >= {int(started * 1000)}",
        max_results=1,
    )
    if found:
        new_id = found[0].info.run_id
    else:  # an app that does not log to MLflow itself: record the replay's outcome
        new = client.create_run(experiment_id, start_time=int(started * 1000), run_name=f"replay-{run_id[:8]}")
        new_id = new.info.run_id
        client.log_param(new_id, "overrides", " ".join(overrides) or "(none)")
        client.set_terminated(new_id, status="FINISHED" if proc.returncode == 0 else "FAILED")
    client.set_tag(new_id, "engage.replay_of", run_id)
    new_metrics = client.get_run(new_id).data.metrics
    compared = {k: (v, new_metrics.get(k)) for k, v in sorted(comparable_metrics(run.data.metrics).items())}
    return ReplayResult(run_id, new_id, proc.returncode, compared)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("run_id", help="MLflow run id of a job launched by the engage launcher")
    parser.add_argument(
        "--tracking-uri", default=None, help="tracking store (default: ENGAGE_TRACKING_URI or ./mlflow.db)"
    )
    parser.add_argument(
        "--output-dir", default=None, help="Hydra output folder of the replay (default: a new temp dir)"
    )


def run_command(namespace: argparse.Namespace) -> int:
    """``engage replay``: exit 0 when the metrics match, 1 when they differ, 2 on bad input."""
    try:
        result = replay(namespace.run_id, namespace.tracking_uri, namespace.output_dir)
    except ReplayError as exc:
        print(f"engage replay: {exc}", file=sys.stderr)
        return 2
    for key, (old, new) in result.compared.items():
        mark = "=" if new is not None and old == new else "!="
        print(f"{key}: {old!r} {mark} {new!r}")
    verdict = "identical" if result.identical else "DIFFERENT"
    print(f"replay of {result.original_run_id}: run {result.new_run_id}, metrics {verdict}")
    return 0 if result.identical else 1
