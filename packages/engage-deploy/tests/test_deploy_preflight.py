"""``engage run -m hydra/launcher=engage`` refuses bad launcher input before the sweep exists: one
line naming the key, exit code 2 (3 for a store that does not answer), and no MLflow store, run,
sweep folder or host left behind."""

from __future__ import annotations

import socket

import pytest

from engage.core.testing.process import run_engage

SWEEP = ["run", "-m", "hydra/launcher=engage", "trainer.fast_dev_run=true", "seed=0,1"]


def _closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.mark.slow
@pytest.mark.parametrize(
    ("overrides", "code", "line"),
    [
        (["hydra.launcher.layer=fog"], 2, "hydra.launcher.layer: no layer named 'fog'; layers are local"),
        (
            ["data.executor=deploy", "+data.executor_options.layer=fog"],
            2,
            "data.executor_options.layer: no layer named 'fog'; layers are local",
        ),
        (["hydra.launcher.parallelism=-2"], 2, "hydra.launcher.parallelism is -2; use 0 (one per core) or more"),
        (["hydra.launcher.mlflow.tracking_uri=http://127.0.0.1:{port}"], 3, "MLflow server http://127.0.0.1:"),
    ],
    ids=["jobs-layer", "simulations-layer", "parallelism", "unreachable-store"],
)
def test_bad_launcher_input_is_one_line_before_the_sweep_exists(tmp_path, overrides, code, line):
    overrides = [o.format(port=_closed_port()) for o in overrides]
    done = run_engage(*SWEEP, *overrides, cwd=tmp_path, timeout=120)
    lines = [text for text in done.stderr.splitlines() if text.strip()]
    assert done.returncode == code, done.stderr[-2000:]
    assert len(lines) == 1 and line in lines[0], lines
    assert sorted(p.name for p in tmp_path.iterdir()) == [], "something was created before the refusal"


@pytest.mark.parametrize("fallback", [False, True])
def test_a_store_that_does_not_answer_stops_the_sweep_unless_it_may_record_locally(tmp_path, fallback):
    """A plain Hydra app with the engage launcher: a ``tracking_uri`` that does not answer is one
    line and exit code 3 before the sweep exists, or, with ``mlflow.fallback_local``, a warning,
    and the sweep is recorded in ``mlflow-fallback.db`` of the working folder."""
    import subprocess
    import sys
    from pathlib import Path

    from mlflow.tracking import MlflowClient

    app = Path(__file__).parent / "apps" / "deploy_app.py"
    argv = [sys.executable, str(app), "-m", "hydra/launcher=engage", "hydra.sweep.dir=sweep", "+x=1"]
    argv += [f"hydra.launcher.mlflow.tracking_uri=http://127.0.0.1:{_closed_port()}"]
    argv += [f"hydra.launcher.mlflow.fallback_local={str(fallback).lower()}"]
    done = subprocess.run(argv, cwd=tmp_path, capture_output=True, text=True, timeout=120)
    said = [line for line in done.stderr.splitlines() if line.startswith("engage launcher:")]
    if not fallback:
        assert done.returncode == 3 and len(said) == 1 and "is unreachable" in said[0], done.stderr[-2000:]
        assert sorted(p.name for p in tmp_path.iterdir()) == []
        return
    assert done.returncode == 0, done.stderr[-2000:]
    assert said[0].startswith("engage launcher: warning: hydra.launcher.mlflow.tracking_uri: MLflow server"), said
    assert said[0].endswith(f"recording the sweep locally to sqlite:///{tmp_path / 'mlflow-fallback.db'}"), said
    client = MlflowClient(f"sqlite:///{tmp_path / 'mlflow-fallback.db'}")
    runs = client.search_runs([client.get_experiment_by_name("engage").experiment_id])
    assert sorted(r.data.tags.get("engage.kind", "job") for r in runs) == ["job", "sweep"]
