"""Config composition: shipped defaults, plugin options, project experiments on top."""

from pathlib import Path

import pytest

from engage.core.config.store import options_by_group
from engage.core.config.validate import ConfigError, compose_config

ROOT = Path(__file__).resolve().parents[3]


def test_defaults_compose_with_every_group():
    cfg = compose_config([])
    for group in ("trainer", "simulator", "sampler", "data", "model", "strategy", "logger"):
        assert group in cfg, group
    assert cfg.sampler.seed == cfg.seed  # interpolated from the top-level seed


def test_core_registers_its_options():
    groups = options_by_group()
    assert "uniform" in groups["sampler"] and "heat" in groups["simulator"] and "auto" in groups["strategy"]


def test_project_configs_add_experiments(monkeypatch):
    monkeypatch.chdir(ROOT)
    cfg = compose_config(["experiment=heat_sweep_width"])
    assert cfg.simulator.grid == 32 and cfg.logger.experiment == "heat-width"


def test_project_experiment_is_unknown_elsewhere(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    with pytest.raises(ConfigError, match="experiment=heat_sweep_width: unknown option"):
        compose_config(["experiment=heat_sweep_width"])


@pytest.mark.parametrize(
    ("override", "line"),
    [
        ("+experiment=heat_quick", "+experiment=heat_quick: experiment has a default; write experiment=heat_quick"),
        ("data.executor_options.partition=debug", "add it with +data.executor_options.partition=VALUE"),
        ("data.executor_options={log_dir: x}", "write ++data.executor_options={log_dir: x} to add"),
        ("hydra.launcher.foo=1", "hydra.launcher.foo: unknown key; `engage run --cfg hydra` shows Hydra's keys"),
        ("hydra.job.chdr=true", "hydra.job.chdr: unknown key; did you mean hydra.job.chdir? allowed: chdir,"),
        # Hydra's hints, which its first line alone leaves out
        ("model.lr=1,2", "model.lr=1,2: several values; write model.lr=[1,2] for a list, model.lr='1,2' for a"),
        ("+model.width=8", "+model.width=8: model.width exists already; write model.width=8 to change it, or ++"),
        ("~model.width", "~model.width: a field of HeatSurrogateConfig cannot be removed; set it instead"),
        ("model.lr=${oops}", "model.lr: reads ${oops}, which is not in the config"),
    ],
)
def test_command_line_slips_get_the_line_that_fixes_them(override, line):
    with pytest.raises(ConfigError) as error:
        compose_config([override])
    assert line in str(error.value), str(error.value)
