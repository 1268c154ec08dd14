"""The sampling callbacks selected from ``engage run`` with ``+callbacks=NAME``."""

import numpy as np
import pytest
from mlflow.tracking import MlflowClient

from engage.core.config.validate import ConfigError, compose_config
from engage.core.testing.process import TINY_RUN, run_engage


def test_callback_options_compose_into_core_callbacks(tmp_path):
    overrides = ["sampler=lhs", "+callbacks=[sensitivity,loss_driven]", "callbacks.sensitivity.base_samples=64"]
    cfg = compose_config(overrides)
    assert set(cfg.callbacks) == {"sensitivity", "loss_driven"}
    assert cfg.callbacks.sensitivity.base_samples == 64
    assert cfg.callbacks.loss_driven.every_n_steps == 10
    # the sampling plugin builds its own callbacks through engage_callbacks, each once
    from engage.core.training import build_callbacks
    from engage.sampling.callbacks import LossDrivenSampling, SensitivityAnalysis

    built = build_callbacks(cfg, tmp_path)
    assert [type(c) for c in built if type(c).__module__.startswith("engage.sampling")] == [
        SensitivityAnalysis,
        LossDrivenSampling,
    ]
    assert next(c for c in built if isinstance(c, SensitivityAnalysis)).base_samples == 64
    assert set(compose_config(["+callbacks=image_similarity"]).callbacks) == {"image_similarity"}
    with pytest.raises(ConfigError, match=r"callbacks\.sensitivity\.bogus: unknown key"):
        compose_config(["+callbacks=sensitivity", "callbacks.sensitivity.bogus=1"])
    with pytest.raises(ConfigError, match="installed: image_similarity, loss_driven, sensitivity"):
        compose_config(["+callbacks=nope"])


def test_an_adaptive_sampler_chosen_alone_gets_the_callback_it_learns_from(tmp_path, caplog):
    from engage.core.training import build_callbacks
    from engage.sampling.callbacks import ImageSimilaritySampling, LossDrivenSampling, SensitivityAnalysis

    def sampling_callbacks(*overrides):
        built = build_callbacks(compose_config(list(overrides)), tmp_path)
        return [c for c in built if type(c).__module__.startswith("engage.sampling")]

    caplog.set_level("INFO", logger="engage.sampling")
    # chosen alone, each adaptive sampler would be told nothing and run as a space-filling design
    for sampler in ("loss_driven", "breed", "loss_density"):
        (feeder,) = sampling_callbacks(f"sampler={sampler}")
        assert type(feeder) is LossDrivenSampling and feeder.every_n_steps == 10
    assert (
        "learns from what LossDrivenSampling tells it: added (+callbacks=loss_driven to set its options)" in caplog.text
    )
    (feeder,) = sampling_callbacks("sampler=image_similarity")
    assert type(feeder) is ImageSimilaritySampling
    (feeder,) = sampling_callbacks("sampler=sensitivity_weighted", "seed=7")
    assert type(feeder) is SensitivityAnalysis and feeder.reweight_sampler and feeder.seed == 7
    # chosen by the user, with their options, it is not added twice; other samplers need none
    (feeder,) = sampling_callbacks("sampler=breed", "+callbacks=loss_driven", "callbacks.loss_driven.every_n_steps=3")
    assert feeder.every_n_steps == 3
    own = "+callbacks.mine={_target_: engage.sampling.callbacks.LossDrivenSampling, every_n_steps: 4}"
    (feeder,) = sampling_callbacks("sampler=loss_driven", own)
    assert feeder.every_n_steps == 4
    assert sampling_callbacks("sampler=sobol_sequence") == sampling_callbacks("sampler=uniform") == []
    # a re-weighting asked of a sampler with no weights is refused before anything runs
    with pytest.raises(ConfigError, match=r"^callbacks.sensitivity.reweight_sampler: the sampler UniformSampler"):
        sampling_callbacks("+callbacks=sensitivity", "callbacks.sensitivity.reweight_sampler=true")


@pytest.mark.slow
@pytest.mark.timeout(300)
def test_engage_run_records_the_sensitivity_callback_metrics(tmp_path):
    result = run_engage(
        "run",
        *TINY_RUN,
        "data=online",  # simulations streamed while training, the sampler asked by the scheduler
        "sampler=lhs",
        "+callbacks=sensitivity",
        "callbacks.sensitivity.every_n_epochs=1",
        "callbacks.sensitivity.every_n_steps=null",
        "callbacks.sensitivity.base_samples=16",
        "callbacks.sensitivity.num_resamples=10",
        "callbacks.sensitivity.log_plots=false",
        cwd=tmp_path,
        timeout=280,  # a loaded CI machine; about 20 s otherwise
    )
    assert result.returncode == 0, result.stderr[-3000:]
    client = MlflowClient(tracking_uri=f"sqlite:///{tmp_path / 'mlflow.db'}")
    experiment = client.get_experiment_by_name("engage")
    assert experiment is not None
    (run,) = client.search_runs([experiment.experiment_id])
    assert run.info.status == "FINISHED"
    assert run.data.params["sampler._target_"].endswith("LatinHypercubeSampler")
    assert run.data.params["data._target_"].endswith("OnlineDataModule")
    names = ("T_init", "T_top", "T_bottom", "T_left", "T_right")  # the heat equation's parameters
    metrics = {k: v for k, v in run.data.metrics.items() if k.startswith("sensitivity/ST/")}
    assert metrics, f"no sensitivity metrics among {sorted(run.data.metrics)}"
    assert all(np.isfinite(v) and v >= 0.0 for v in metrics.values())  # total indices are non-negative
    assert set(metrics) == {f"sensitivity/ST/{n}" for n in names}


def test_callback_and_sampler_values_are_one_line_before_the_run(tmp_path):
    for overrides, expected in (
        (["+callbacks=sensitivity", "callbacks.sensitivity.base_samples=100"], "base_samples: must be a power of 2"),
        (["+callbacks=sensitivity", "callbacks.sensitivity.method=foo"], "method: must be one of sobol, morris"),
        (["+callbacks=sensitivity", "callbacks.sensitivity.conf_level=2"], "conf_level: must be between 0 and 1"),
        (["+callbacks=sensitivity", "callbacks.sensitivity.every_n_steps=0"], "every_n_steps: must be >= 1, or null"),
        (["+callbacks=loss_driven", "callbacks.loss_driven.schedule=cosin"], "schedule: must be one of"),
        (["+callbacks=loss_driven", "callbacks.loss_driven.exploration=1.5"], "exploration: must be between 0 and 1"),
        (["+callbacks=image_similarity", "callbacks.image_similarity.source=target"], "source: must be one of"),
        (["+callbacks=image_similarity", "callbacks.image_similarity.probe_points=1"], "probe_points: must be >= 2"),
        (["sampler=breed", "sampler.spread=inf"], "sampler.spread: must be finite and > 0"),
        (["sampler=loss_driven", "sampler.sigma=inf"], "sampler.sigma: must be finite and > 0"),
    ):
        with pytest.raises(ConfigError, match=expected):
            compose_config(overrides)
    # a single run refused leaves no output folder: checked before Hydra makes one
    proc = run_engage("run", "+callbacks=sensitivity", "callbacks.sensitivity.conf_level=2", cwd=tmp_path, timeout=120)
    assert proc.returncode == 2 and proc.stderr.strip() == (
        "engage run: callbacks.sensitivity.conf_level: must be between 0 and 1 (exclusive), got 2.0"
    )
    assert not (tmp_path / "outputs").exists()
    # an unknown key lists the keys of the option chosen on the command line
    proc = run_engage("run", "sampler=loss_driven", "sampler.sigmaa=0.1", cwd=tmp_path, timeout=120)
    assert proc.returncode == 2 and "sampler.sigmaa: unknown key; did you mean sampler.sigma?" in proc.stderr
