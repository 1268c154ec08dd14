"""``engage`` command line: one-line errors with exit code 2, ``engage plugins``."""

import sys

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
        ("trainer.max_epoch=1", "trainer.max_epoch: unknown key; did you mean trainer.max_epochs? allowed:"),
        ("trainer.strategy=ddp", "trainer.strategy: ENGAGE builds the Trainer's strategy; set it with strategy="),
        ("trainer.num_sanity_val_steps=-2", "trainer.num_sanity_val_steps: must be >= -1, got -2"),
        ("trainer.val_check_interval=0", "trainer.val_check_interval: must be a number of batches (an integer >= 1)"),
        # a top-level key no interpolation reads would be ignored: a typo
        ("+seeed=3", "seeed: unknown key; did you mean seed? allowed: callbacks,"),
        ("~data", "data: no option chosen (removed with ~data?); choose one with data=<option>"),
        ("~model", "model: no option chosen (removed with ~model?); choose one with model=<option>"),
        # Lightning's own rule, before anything is created: 100 batches an epoch by default
        ("trainer.val_check_interval=500", "trainer.val_check_interval: 500 batches is more than an epoch holds (100,"),
        # the top level's own values, not only the groups'
        ("task=fitt", "task: must be fit or validate, got 'fitt'"),
        ("checkpoint_every_n_steps=-5", "checkpoint_every_n_steps: must be >= 0, got -5"),
        # Hydra's grammar names no override; the line does, with the fix
        (
            "ckpt_path=a/epoch=0-step=1.ckpt",
            "cannot parse override 'ckpt_path=a/epoch=0-step=1.ckpt' (mismatched input '=' expecting <EOF>); "
            "quote a value with special characters: ckpt_path='a/epoch=0-step=1.ckpt'",
        ),
    ],
)
def test_bad_input_is_one_line_and_exit_code_2(override, expected, capsys):
    assert main(["run", override]) == 2
    err = capsys.readouterr().err.strip()
    assert expected in err
    assert len(err.splitlines()) == 1, err


def test_a_top_level_key_an_interpolation_reads_is_a_variable():
    from engage.core.config.validate import check_values, compose_config

    cfg = compose_config(
        ["+width=8", "model.width=${width}", "trainer.val_check_interval=500", "trainer.check_val_every_n_epoch=null"]
    )
    check_values(cfg)  # the variable is read; the interval counts batches across epochs
    assert cfg.model.width == 8
    check_values(compose_config(["+w=8", "model.width='${oc.select:nothere,${w}}'"]))  # nested


def test_a_top_level_variable_read_by_hydras_own_settings_is_kept(capsys, tmp_path, monkeypatch):
    # past the top-level check, the run stops at the next one: the variable was accepted
    overrides = ["+tag=x", f"hydra.run.dir={tmp_path}/${{tag}}", "trainer.val_check_interval=500"]
    monkeypatch.setattr("sys.argv", ["engage", "run", *overrides])  # as the command line has it
    assert main(["run", *overrides]) == 2
    assert "trainer.val_check_interval: 500 batches" in capsys.readouterr().err


def test_a_value_checked_with_the_simulator_is_one_line_and_exit_code_2(capfd, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    # the buffer's memory depends on the simulator's samples: 8192 samples of 16 GiB
    assert main(["run", "simulator.grid=65536"]) == 2
    err = capfd.readouterr().err.strip()
    assert err.startswith("engage run: data.capacity: a full buffer of 8192 samples of (65536, 65536) float32"), err
    assert len(err.splitlines()) == 1, err
    assert list(tmp_path.rglob("*.db")) == []  # found before any tracking store was opened


def test_unknown_option_lists_installed_samplers(capsys):
    assert main(["run", "sampler=nonexistent"]) == 2
    listed = capsys.readouterr().err.split("installed: ")[1].split(", ")
    assert "uniform" in [name.strip() for name in listed]
    assert "pip install" not in listed[-1]  # engage-sampling is installed here


def test_an_unknown_option_of_a_package_not_installed_names_the_package(capsys, monkeypatch):
    import importlib.util

    find_spec = importlib.util.find_spec
    monkeypatch.setattr(
        importlib.util, "find_spec", lambda name, *a: None if name == "engage.memory" else find_spec(name, *a)
    )
    assert main(["run", "strategy=nonexistent"]) == 2
    line = capsys.readouterr().err.strip()
    assert line.endswith("(more come with engage-memory: pip install engage-memory)"), line


def test_every_value_of_a_sweep_is_checked(capsys):
    assert main(["run", "-m", "trainer.max_epochs=1,oops"]) == 2
    assert "trainer.max_epochs: expected integer, got 'oops'" in capsys.readouterr().err


def test_each_sweep_jobs_checkpoint_is_found_before_the_first_job(capsys, tmp_path):
    sweep = tmp_path / "sweep"
    sweep.mkdir()
    # no job of the sweep has a checkpoint in its folder (another sweep's folder, or none): refused
    assert main(["run", "-m", "model.width=4,8", "ckpt_path=last", f"hydra.sweep.dir={sweep}"]) == 2
    assert capsys.readouterr().err.strip() == (
        f"engage run: ckpt_path=last: no job of the sweep has a checkpoint in its folder under {sweep}; pass "
        "hydra.sweep.dir of the sweep to resume, or ckpt_path=PATH"
    )
    assert sorted(p.name for p in sweep.iterdir()) == []  # no job started, no folder made
    assert main(["run", "-m", "model.width=4,8", f"ckpt_path={tmp_path}/none.ckpt"]) == 2
    assert "no such checkpoint file" in capsys.readouterr().err


def test_a_resumed_sweeps_jobs_without_a_checkpoint_start_from_the_beginning(tmp_path, monkeypatch, capsys):
    """An interrupted sweep resumed with ``ckpt_path=last``: the jobs it never started (no folder)
    start from the beginning, said in one line, beside the jobs that resume."""
    from hydra import compose, initialize_config_module
    from hydra.core.global_hydra import GlobalHydra

    from engage.core.config.store import register_configs
    from engage.core.config.sweep_check import _check_checkpoints
    from engage.core.config.validate import CONFIG_MODULE, CONFIG_NAME

    register_configs()
    sweep = tmp_path / "sweep"
    (sweep / "0" / "checkpoints").mkdir(parents=True)
    (sweep / "0" / "checkpoints" / "last.ckpt").write_bytes(b"")
    overrides = ["model.width=4,8", "ckpt_path=last"]
    own = [f"hydra.sweep.dir={sweep}"]
    with initialize_config_module(config_module=CONFIG_MODULE, version_base="1.3"):
        config = compose(CONFIG_NAME, overrides=[*own, "ckpt_path=last"], return_hydra_config=True)
        _check_checkpoints(GlobalHydra.instance().hydra, CONFIG_NAME, own, overrides, config)
    assert capsys.readouterr().out.strip() == (
        "engage run: ckpt_path=last: job 1 has no checkpoint in its folder; it starts from the beginning"
    )


@pytest.mark.parametrize(
    ("launcher", "provider", "here"),
    [
        ("hydra._internal.core_plugins.basic_launcher.BasicLauncher", None, True),
        ("hydra_plugins.hydra_joblib_launcher.joblib_launcher.JoblibLauncher", None, True),
        ("hydra_plugins.engage_launcher.engage_launcher.EngageLauncher", "netns", True),
        ("hydra_plugins.engage_launcher.engage_launcher.EngageLauncher", "g5k", False),  # remote hosts' folders
        ("hydra_plugins.hydra_submitit_launcher.submitit_launcher.SlurmLauncher", None, False),
    ],
)
def test_a_sweeps_checkpoints_are_looked_for_only_where_its_jobs_run(launcher, provider, here):
    from omegaconf import OmegaConf

    from engage.core.config.sweep_check import _jobs_run_here

    hydra = {"sweeper": {"_target_": "hydra._internal.core_plugins.basic_sweeper.BasicSweeper"}}
    hydra["launcher"] = {"_target_": launcher, **({"infrastructure": {"provider": provider}} if provider else {})}
    assert _jobs_run_here(OmegaConf.create({"hydra": hydra})) is here


def test_a_glob_sweep_over_a_groups_options_is_expanded_and_checked(capsys):
    from engage.core.config.validate import compose_config

    # the check expands glob() with Hydra's config loader, as Hydra's sweeper does
    assert main(["run", "-m", "sampler=glob(lh*)", "model.width=-3"]) == 2
    assert capsys.readouterr().err.startswith("engage run: model.width: must be >= 4, got -3")
    assert compose_config(["sampler=glob(lh*)"], multirun=True).sampler._target_.endswith("LatinHypercubeSampler")


def test_an_interval_is_checked_at_both_ends_and_a_config_files_sweeper_params_before_any_job(
    capsys, tmp_path, monkeypatch
):
    from engage.core.config.validate import single_run_overrides

    # Optuna's sweeper draws from an interval: its ends are what can be checked
    assert single_run_overrides(["model.lr=interval(0.0005,0.01)", "model.width=tag(log, interval(4, 64))"]) == [
        ["model.lr=0.0005", "model.width=4"], ["model.lr=0.01", "model.width=4"], ["model.lr=0.0005", "model.width=64"],
    ]  # fmt: skip
    assert main(["run", "-m", "model.lr=interval(-1,0.01)"]) == 2
    assert capsys.readouterr().err.startswith("engage run: model.lr: must be > 0, got -1")
    assert main(["run", "-m", "model.lr=interval(0.01,0.0005)"]) == 2
    assert capsys.readouterr().err.strip() == (
        "engage run: model.lr: interval(0.01, 0.0005) has its ends reversed; write interval(0.0005, 0.01)"
    )
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    folder = tmp_path / "mine" / "experiment"
    folder.mkdir(parents=True)
    (folder / "grid.yaml").write_text(
        "# @package _global_\nhydra:\n  sweeper:\n    params:\n      model.lr: 0.001,-1\n"
    )
    sweep = tmp_path / "sweep"
    assert main(["run", "-m", "-cd", str(tmp_path / "mine"), "experiment=grid", f"hydra.sweep.dir={sweep}"]) == 2
    assert capsys.readouterr().err.strip().endswith("model.lr: must be > 0, got -1.0")
    assert not sweep.exists() and not list(tmp_path.glob("*.db"))  # before any job, folder or run
    # the command line replaces a param of the same key, as Hydra's sweepers do: -1 never runs
    grid = ["-cd", str(tmp_path / "mine"), "experiment=grid", f"hydra.sweep.dir={sweep}"]
    assert main(["run", "-m", *grid, "model.lr=0.01", "model.width=-3"]) == 2
    assert capsys.readouterr().err.strip().endswith("model.width: must be >= 4, got -3")
    # the params name the jobs by what they vary, as a command line's sweep does
    from engage.core.tracking.naming import job_run_name

    swept = ["model.lr=0.001,0.002", "experiment=grid"]
    assert job_run_name("s", 1, ["model.lr=0.002", "experiment=grid"], swept) == "s#1 model.lr=0.002"


def test_plugins_lists_core_contributions(capsys):
    assert main(["plugins"]) == 0
    out = capsys.readouterr().out
    for expected in ("core", "engage-core", "sampler: uniform", "samplers: uniform", "commands: plugins, replay, run"):
        assert expected in out


def test_plugins_options_lists_each_option_with_what_it_is(capsys, monkeypatch):
    monkeypatch.setenv("COLUMNS", "200")  # one line a row
    assert main(["plugins", "--options"]) == 0
    rows = [[cell.strip() for cell in line.split("│")[1:-1]] for line in capsys.readouterr().out.splitlines()]
    assert ["sampler", "uniform", "core", "independent random draws"] in rows
    # a YAML option: the first sentence of its opening comment
    (about,) = [row[3] for row in rows if row[:3] == ["experiment", "heat_quick", "core"]]
    assert about.startswith("A quick check that everything runs") and "\n" not in about


def test_hydras_own_refusals_of_its_flags_are_one_line(capsys, tmp_path):
    assert main(["run", "-m", "model.lr=1,2", "--cfg", "job"]) == 2
    assert capsys.readouterr().err.strip().splitlines() == [
        "engage run: --run, --multirun, --cfg, --info and --shell_completion exclude one another: give one of them"
    ]
    assert main(["run", "--experimental-rerun", str(tmp_path / "nope.pickle")]) == 2
    assert capsys.readouterr().err.strip().splitlines()[-1] == (
        f"engage run: --experimental-rerun {tmp_path}/nope.pickle: no such file; give a run's .hydra/config.pickle"
    )


def test_an_accelerator_this_machine_lacks_is_refused_before_the_run_folder(capsys, tmp_path):
    import torch

    if torch.cuda.is_available():
        pytest.skip("this machine has CUDA")
    assert main(["run", "trainer.accelerator=cuda", f"hydra.run.dir={tmp_path}/run"]) == 2
    assert capsys.readouterr().err.strip() == (
        "engage run: trainer.accelerator: 'cuda' is not available on this machine; use auto or cpu, or run where it is"
    )
    assert not (tmp_path / "run").exists()


def test_an_experiment_whose_artifacts_are_behind_a_server_is_refused_before_the_run_folder(capsys, tmp_path):
    """An MLflow server of the user's own with ``--serve-artifacts`` makes experiments whose
    artifacts only it resolves (``mlflow-artifacts:``): a run writing to its store directly would
    train, then fail with MLflow's traceback when it logs its first artifact."""
    from mlflow.tracking import MlflowClient

    store = f"sqlite:///{tmp_path / 'mlflow.db'}"
    MlflowClient(store).create_experiment("served", artifact_location="mlflow-artifacts:/1")
    capsys.readouterr()  # what MLflow said as it made the store
    run = ["run", f"hydra.run.dir={tmp_path}/run", f"logger.uri={store}", "logger.experiment=served"]
    assert main(run) == 2
    said = capsys.readouterr().err.strip()
    line = said.removeprefix("engage run: ")
    assert said.startswith("engage run: ") and line == (
        f"logger.experiment: experiment 'served' of {store} keeps its artifacts behind an MLflow server "
        "(mlflow-artifacts:/1); set logger.uri to that server's http(s) address, or logger.experiment to another name"
    )
    assert not (tmp_path / "run").exists()
    # a sweep of Hydra's launchers, before its parent run and its first job
    sweep = ["run", "-m", "seed=0,1", f"hydra.sweep.dir={tmp_path}/sweep", *run[2:]]
    assert main(sweep) == 2
    assert capsys.readouterr().err.strip().splitlines() == [f"engage run: {line}"]
    assert not (tmp_path / "sweep").exists()
    assert MlflowClient(store).search_runs(["1"]) == []


def test_a_relative_config_path_says_how_to_give_it(capsys):
    assert main(["run", "-cp", "my_configs", "-cn", "mine"]) == 2
    assert capsys.readouterr().err.strip() == (
        "engage run: --config-path: no config module 'engage.core.my_configs'; a relative -cp is read inside "
        "ENGAGE's package: give an absolute path (-cp $PWD/my_configs), or add a folder with -cd"
    )


def test_an_output_folder_that_cannot_be_written_is_one_line_before_anything(capsys, tmp_path):
    import os
    import subprocess

    (tmp_path / "afile").write_text("")
    assert main(["run", f"hydra.run.dir={tmp_path}/afile/run"]) == 2
    assert capsys.readouterr().err.strip() == (
        f"engage run: hydra.run.dir: {tmp_path}/afile is a file, not a folder; choose another hydra.run.dir"
    )
    if os.geteuid() != 0:
        return  # a read-only file system of the test's own needs root (any other user's folder would do)
    (tmp_path / "ro").mkdir()
    mounted = subprocess.run(["mount", "--bind", "-o", "ro", tmp_path / "ro", tmp_path / "ro"], capture_output=True)
    if mounted.returncode != 0:
        pytest.skip(f"no read-only bind mount here (a container without the right): {mounted.stderr!r}")
    try:
        assert main(["run", "-m", "model.width=8,16", f"hydra.sweep.dir={tmp_path}/ro/sweep"]) == 2
        assert capsys.readouterr().err.strip() == (
            f"engage run: hydra.sweep.dir: cannot write under {tmp_path}/ro (a read-only file system); "
            "choose another hydra.sweep.dir"
        )
    finally:
        subprocess.run(["umount", tmp_path / "ro"], check=True)


def test_unknown_command(capsys):
    assert main(["frobnicate"]) == 2
    assert "unknown command 'frobnicate'; available:" in capsys.readouterr().err
    assert main(["runn"]) == 2
    assert "unknown command 'runn'; did you mean 'run'? available:" in capsys.readouterr().err


def test_the_trainer_group_takes_every_argument_of_the_installed_trainer():
    import inspect

    import lightning.pytorch as pl

    from engage.core.config.schema import TRAINER_ARGUMENTS_OWNED, TrainerConfig

    lightning = set(inspect.signature(pl.Trainer.__init__).parameters) - {"self"}
    ours = set(TrainerConfig.__dataclass_fields__) | set(TRAINER_ARGUMENTS_OWNED)
    assert ours == lightning, f"missing {sorted(lightning - ours)}, not Lightning's {sorted(ours - lightning)}"


@pytest.mark.parametrize(
    ("override", "expected"),
    [
        ("trainer.accelerator=tpu", "engage run: trainer.accelerator: 'tpu' is not available on this machine"),
        ("trainer.devices=0", "engage run: trainer: "),
    ],
)
def test_lightnings_own_refusals_are_one_line_and_exit_code_2(override, expected, capfd, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    assert main(["run", override, "data=simulated", f"hydra.run.dir={tmp_path}"]) == 2
    err = capfd.readouterr().err.strip()
    assert err.startswith(expected) and len(err.splitlines()) == 1, err


def test_spawned_ranks_cannot_take_the_online_datamodule_one_line_and_exit_code_2(capfd, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    assert main(["run", "strategy.name=ddp_spawn", "trainer.devices=2", f"hydra.run.dir={tmp_path}"]) == 2
    err = capfd.readouterr().err.strip().splitlines()[-1]
    assert err.startswith("engage run: strategy: ranks started by spawn cannot take the online DataModule"), err
    assert "use strategy=ddp" in err and list(tmp_path.rglob("*.db")) == []  # before any run was recorded


@pytest.mark.parametrize(
    ("overrides", "expected"),
    [
        # Lightning would start this node's two ranks and wait for the other node's for ever
        (["trainer.num_nodes=2"], "engage run: trainer.num_nodes=2: nothing starts the other nodes' ranks here"),
        # the third rank would have no simulation of its own, and no rank could train
        (["trainer.devices=3", "data.simulations=2"], "engage run: data.simulations=2: fewer than the 3 ranks"),
    ],
)
def test_what_several_ranks_cannot_run_is_one_line_and_exit_code_2(overrides, expected, capfd, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    for name in ("MASTER_ADDR", "NODE_RANK"):
        monkeypatch.delenv(name, raising=False)
    assert main(["run", "strategy=ddp", "trainer.devices=2", *overrides, f"hydra.run.dir={tmp_path}"]) == 2
    err = capfd.readouterr().err.strip().splitlines()[-1]
    assert err.startswith(expected), err
    assert list(tmp_path.rglob("*.db")) == [] and not (tmp_path / "online").exists()


@pytest.mark.parametrize(
    ("overrides", "expected"),
    [
        (["trainer.num_nodes=2"], "engage run: trainer.num_nodes=2: this Slurm job has 1 node(s) (--nodes=1); set "
         "trainer.num_nodes=1, or run in an allocation of 2 nodes"),
        (["trainer.devices=1"], "engage run: trainer.devices=1: this Slurm job runs 2 task(s) a node "
         "(--ntasks-per-node=2), one a rank; set trainer.devices=2, or start 1 tasks a node (srun --ntasks-per-node)"),
    ],
)  # fmt: skip
def test_a_shape_the_slurm_job_does_not_have_is_one_line_and_exit_code_2(overrides, expected, capfd, tmp_path,
                                                                       monkeypatch):  # fmt: skip
    """``srun -N1 --ntasks-per-node=2 engage run ...``: Lightning checks the shape only as the fit
    starts, a traceback on each rank after the MLflow run was opened."""
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    slurm = {"SLURM_NTASKS": "2", "SLURM_NNODES": "1", "SLURM_NTASKS_PER_NODE": "2", "SLURM_JOB_NAME": "train",
             "SLURM_PROCID": "0", "SLURM_LOCALID": "0", "SLURM_NODEID": "0", "SLURM_NODELIST": "localhost",
             "SLURM_JOB_ID": "1"}  # fmt: skip
    for name, value in slurm.items():
        monkeypatch.setenv(name, value)
    assert main(["run", "strategy=ddp", "trainer.devices=2", *overrides, f"hydra.run.dir={tmp_path}"]) == 2
    assert capfd.readouterr().err.strip().splitlines()[-1] == expected
    assert list(tmp_path.rglob("*.db")) == []  # before any run was recorded


def test_what_the_config_builds_and_cannot_is_one_line_and_exit_code_2(capfd, tmp_path, monkeypatch):
    """A _target_ that cannot be imported, or a class that refuses its arguments: one line naming
    it, not Hydra's "Error executing job" line and its advice before it."""
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    assert main(["run", "data=simulated", "model._target_=nosuchmodule.Model", f"hydra.run.dir={tmp_path}"]) == 2
    err = capfd.readouterr().err.strip().splitlines()
    assert err == [
        'engage run: model._target_=nosuchmodule.Model: cannot be imported (ModuleNotFoundError("No module named '
        "'nosuchmodule'\")); check the module and name, and that its package is installed or on PYTHONPATH"
    ], err
    assert list(tmp_path.rglob("*.db")) == []


TINY_FAST = [
    "data=simulated", "simulator.steps=3", "data.train_simulations=2", "data.val_simulations=1", "model.width=4",
    "trainer.fast_dev_run=1", "trainer.enable_progress_bar=false",
]  # fmt: skip


def test_a_schedule_over_a_training_of_no_known_length_is_one_line_and_exit_code_2(tmp_path, monkeypatch, capfd):
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    endless = [a for a in TINY_FAST if not a.startswith("trainer.fast_dev_run")] + ["trainer.max_epochs=-1"]
    assert main(["run", *endless, f"hydra.run.dir={tmp_path}"]) == 2
    err = capfd.readouterr().err.strip().splitlines()
    lines = [line for line in err if line.startswith("engage run:")]
    assert lines == [
        "engage run: model.lr_schedule=cosine needs a training of known length: set trainer.max_epochs or "
        "trainer.max_steps, or model.lr_schedule=constant"
    ], err[-10:]


def test_a_config_dir_adds_experiments_for_real_runs_too(tmp_path, monkeypatch, capsys):
    """``-cd``/``--config-dir`` reach Hydra as its own flag: for ``--cfg job`` and for a run."""
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    folder = tmp_path / "mine" / "experiment"
    folder.mkdir(parents=True)
    (folder / "small.yaml").write_text("# @package _global_\nsimulator:\n  grid: 12\nseed: 41\n")
    assert main(["run", "-cd", str(tmp_path / "mine"), "experiment=small", "--cfg", "job"]) == 0
    out = capsys.readouterr().out
    assert "grid: 12" in out and "seed: 41" in out
    folder = str(tmp_path / "mine")
    code = main(["run", "--config-dir", folder, "experiment=small", *TINY_FAST, f"hydra.run.dir={tmp_path / 'run'}"])
    assert code == 0, capsys.readouterr().err[-2000:]


@pytest.mark.parametrize("flags", [["--info", "defaults"], ["--hydra-help"], ["--cfg", "hydra"], ["-c", "job"]])
def test_hydras_information_flags_work(flags, capsys):
    assert main(["run", *flags]) == 0
    assert capsys.readouterr().out.strip()


def test_shell_completion_lists_the_installed_samplers(monkeypatch, capsys):
    from engage.core.plugins import samplers

    monkeypatch.setenv("COMP_LINE", "engage run sampler=")
    monkeypatch.setenv("COMP_POINT", str(len("engage run sampler=")))
    assert main(["-sc", "query=bash"]) == 0
    offered = set(capsys.readouterr().out.split())
    assert {f"sampler={name}" for name in samplers()} <= offered, offered


def test_shell_completion_offers_the_sub_commands_first(monkeypatch, capsys):
    monkeypatch.setenv("COMP_LINE", "engage pl")
    assert main(["-sc", "query=bash"]) == 0
    assert {"run", "plugins", "replay", "--version"} <= set(capsys.readouterr().out.split())
    monkeypatch.delenv("COMP_LINE")
    # installed from engage run's flags too: for the program engage, not for every command named run
    assert main(["run", "-sc", "install=bash"]) == 0
    assert capsys.readouterr().out.strip().splitlines()[-1].endswith("-F hydra_bash_completion engage")


def test_version_names_the_installed_packages(capsys):
    assert main(["--version"]) == 0
    assert "engage-core 0.1.0" in capsys.readouterr().out


def test_a_bad_value_in_a_sweep_stops_it_before_any_job(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    assert main(["run", "-m", "trainer.max_epochs=1,-5", f"hydra.sweep.dir={tmp_path / 'sweep'}"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err[-1] == "engage run: trainer.max_epochs: must be >= -1, got -5"
    assert not (tmp_path / "mlflow.db").exists()  # no parent run, no job


def test_engages_configs_join_its_own_app_only(tmp_path, capsys):
    """Another Hydra app in the environment keeps its search path: no ENGAGE experiments, no
    ./configs read where it runs; engage run's lists each entry once."""
    import subprocess

    (tmp_path / "conf").mkdir()
    (tmp_path / "conf" / "config.yaml").write_text("lr: 0.1\n")
    (tmp_path / "configs" / "experiment").mkdir(parents=True)
    (tmp_path / "app.py").write_text(
        "import hydra\n\n"
        "@hydra.main(version_base='1.3', config_path='conf', config_name='config')\n"
        "def main(cfg):\n    pass\n\n"
        "main()\n"
    )
    shown = subprocess.run([sys.executable, "app.py", "--info", "searchpath"], cwd=tmp_path, capture_output=True,
                           text=True, timeout=120)  # fmt: skip
    assert shown.returncode == 0, shown.stderr
    assert "pkg://engage.core.conf" not in shown.stdout and f"{tmp_path}/configs" not in shown.stdout, shown.stdout
    assert main(["run", "--info", "searchpath"]) == 0
    paths = [line.split("|")[2].strip() for line in capsys.readouterr().out.splitlines() if line.count("|") == 3]
    assert "pkg://engage.core.conf" in paths and len(paths) == len(set(paths)), paths
