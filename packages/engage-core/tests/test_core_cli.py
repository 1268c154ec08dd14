"""``engage`` command line: one-line errors with exit code 2, ``engage plugins``."""

import pytest

from engage.core.cli import main


@pytest.mark.parametrize(
    ("override", "expected"),
    [
        ("trainer.max_epochs=oops", "trainer.max_epochs: expected integer, got 'oops'"),
        ("sampler=nonexistent", "sampler=nonexistent: unknown option for 'sampler'; installed: "),
        ("trainer.fooo=1", "trainer.fooo: unknown key; allowed: accelerator,"),
        ("+trainer.fooo=1", "trainer.fooo: unknown key; allowed: accelerator,"),
        ("trainer.max_epochs=-5", "trainer.max_epochs: must be >= -1, got -5"),
        ("simulator.grid=2", "simulator.grid: must be >= 3, got 2"),
        ("data.coalesce_bytes=-1", "data.coalesce_bytes: must be >= 0, got -1"),
        ("data.shared_memory=maybe", "data.shared_memory: Value 'maybe' is not a valid bool"),
        ("trainer.precision=77", "trainer.precision: must be one of 32-true"),
        ("trainer.max_epochs", "cannot parse override 'trainer.max_epochs'"),
        ("nokey=1", "nokey: unknown key; allowed: callbacks, checkpoint_every_n_steps, ckpt_path, data, logger"),
    ],
)
def test_bad_input_is_one_line_and_exit_code_2(override, expected, capsys):
    assert main(["run", override]) == 2
    err = capsys.readouterr().err.strip()
    assert expected in err
    assert len(err.splitlines()) == 1, err


def test_a_value_checked_with_the_simulator_is_one_line_and_exit_code_2(capfd, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    # the buffer's memory depends on the simulator's samples: 8192 samples of 16 GiB
    with pytest.raises(SystemExit) as exit_:
        main(["run", "simulator.grid=65536"])
    err = capfd.readouterr().err.strip()
    assert exit_.value.code == 2
    assert err.startswith("engage run: data.capacity: a full buffer of 8192 samples of (65536, 65536) float32"), err
    assert len(err.splitlines()) == 1, err
    assert list(tmp_path.rglob("*.db")) == []  # found before any tracking store was opened


def test_unknown_option_lists_installed_samplers(capsys):
    assert main(["run", "sampler=nonexistent"]) == 2
    listed = capsys.readouterr().err.split("installed: ")[1].split(", ")
    assert "uniform" in [name.strip() for name in listed]


def test_every_value_of_a_sweep_is_checked(capsys):
    assert main(["run", "-m", "trainer.max_epochs=1,oops"]) == 2
    assert "trainer.max_epochs: expected integer, got 'oops'" in capsys.readouterr().err


def test_plugins_lists_core_contributions(capsys):
    assert main(["plugins"]) == 0
    out = capsys.readouterr().out
    for expected in ("core", "engage-core", "sampler=uniform", "simulator=heat", "commands: plugins, run"):
        assert expected in out


def test_unknown_command(capsys):
    assert main(["frobnicate"]) == 2
    assert "unknown command 'frobnicate'; available:" in capsys.readouterr().err
