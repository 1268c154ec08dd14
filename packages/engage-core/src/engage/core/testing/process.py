"""Run the ``engage`` command in a child process, as a user would (for end-to-end tests)."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

#: the smallest ``engage run`` that still trains: 16x16 heat equation, 2 simulations, 1 epoch of at
#: most 5 batches (online epochs are 100 batches by default)
TINY_RUN = (
    "simulator.grid=16",
    "simulator.steps=5",
    "data.train_simulations=2",
    "data.val_simulations=1",
    "trainer.max_epochs=1",
    "trainer.limit_train_batches=5",
    "model.width=4",
    "trainer.enable_progress_bar=false",
    "trainer.log_every_n_steps=1",
)


def run_engage(
    *args: str, cwd: str | Path, timeout: float = 300, env: dict[str, str] | None = None
) -> subprocess.CompletedProcess[str]:
    """``engage ARGS`` in ``cwd`` with this interpreter; sweep variables and MLflow's store and
    experiment of a parent process removed (unless ``env`` sets them)."""
    full_env = {**os.environ, **(env or {})}
    for inherited in (
        "ENGAGE_PARENT_RUN_ID",
        "ENGAGE_PARENT_RUN_FILE",
        "ENGAGE_TRACKING_URI",
        "MLFLOW_TRACKING_URI",
        "MLFLOW_EXPERIMENT_NAME",
    ):
        if not env or inherited not in env:
            full_env.pop(inherited, None)
    return subprocess.run(
        [sys.executable, "-m", "engage.core.cli", *args],
        cwd=cwd,
        capture_output=True,
        text=True,
        timeout=timeout,
        env=full_env,
    )
