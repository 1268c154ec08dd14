"""Every installed sampler end to end: one ``engage run`` multirun over all of them, online."""

import pytest
from mlflow.tracking import MlflowClient

from engage.core.config.store import options_by_group
from engage.core.testing.process import TINY_RUN, run_engage


@pytest.mark.slow
@pytest.mark.timeout(600)
def test_every_installed_sampler_completes_every_simulation_it_was_asked_for(tmp_path):
    samplers = options_by_group()["sampler"]
    assert {"uniform", "lhs", "salib_sobol", "morris", "image_similarity", "loss_driven"} <= set(samplers)
    result = run_engage(
        "run", "-m", *TINY_RUN, "data.train_simulations=4", "simulator.steps=4", f"sampler={','.join(samplers)}",
        cwd=tmp_path, timeout=580,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr[-4000:]
    client = MlflowClient(tracking_uri=f"sqlite:///{tmp_path / 'mlflow.db'}")
    runs = client.search_runs([client.get_experiment_by_name("engage").experiment_id])
    jobs = {r.data.params["sampler._target_"]: r for r in runs if r.data.tags.get("engage.kind") != "sweep"}
    assert len(jobs) == len(samplers), sorted(jobs)
    for target, run in jobs.items():
        metrics = run.data.metrics
        assert run.info.status == "FINISHED", target
        assert metrics["online/simulations_requested"] == metrics["online/simulations_completed"] == 4, target
        assert metrics["online/samples_received"] == 16, target
