"""The Lightning strategy: one line in a Trainer, plan printed and logged to MLflow, bad input explained."""

from __future__ import annotations

import time

import lightning as L
import pytest
import torch
import torch.nn.functional as F
from lightning.pytorch.loggers import MLFlowLogger
from torch.utils.data import DataLoader, TensorDataset

from engage.memory import Decision, InfeasibleBudgetError, MemoryPlanningStrategy, parse_budget


class _LitGPT(L.LightningModule):
    def __init__(self, model: torch.nn.Module) -> None:
        super().__init__()
        self.model = model

    def training_step(self, batch: tuple[torch.Tensor], batch_idx: int) -> torch.Tensor:
        (idx,) = batch
        loss = F.cross_entropy(self.model(idx).flatten(0, 1), idx.flatten())
        self.log("loss", loss)
        return loss

    def configure_optimizers(self) -> torch.optim.Optimizer:
        return torch.optim.AdamW(self.parameters(), lr=1e-3)


def _loader(seq: int = 64) -> DataLoader:
    return DataLoader(TensorDataset(torch.randint(0, 128, (16, seq))), batch_size=8)


def _trainer(strategy: MemoryPlanningStrategy, tmp_path, **kwargs) -> L.Trainer:
    options = {
        "accelerator": "cpu",
        "max_steps": 2,
        "enable_checkpointing": False,
        "enable_progress_bar": False,
        "enable_model_summary": False,
        "default_root_dir": tmp_path,
        **kwargs,
    }
    return L.Trainer(strategy=strategy, **options)


@pytest.mark.slow
def test_memory_strategy_trains_and_logs_plan(tmp_path, gpt) -> None:
    model = _LitGPT(gpt)
    logger = MLFlowLogger(experiment_name="memory", tracking_uri=f"sqlite:///{tmp_path}/mlflow.db")
    strategy = MemoryPlanningStrategy(budget="8MiB", profile_path=str(tmp_path / "profile.json"))
    trainer = _trainer(strategy, tmp_path, logger=logger, log_every_n_steps=1, max_steps=5)
    trainer.fit(model, _loader())
    assert strategy.plan is not None and strategy.plan.predicted_peak <= 8 * 2**20
    assert strategy.measured_peak is not None and strategy.measured_peak <= 8 * 2**20
    assert (tmp_path / "profile.json").exists()
    client = logger.experiment
    names = {a.path for a in client.list_artifacts(logger.run_id)}
    assert {"memory_plan.txt", "memory_timeline.png", "memory_profile.json"} <= names
    metrics = client.get_run(logger.run_id).data.metrics
    assert metrics["memory/predicted_peak_bytes"] <= 8 * 2**20
    # a steady-state step's time beside the prediction: measured after the planning step and the
    # one after it, once, at the step it was measured
    (measured,) = client.get_metric_history(logger.run_id, "memory/measured_step_s")
    assert measured.step >= 3 and measured.value == strategy.measured_step_s > 0
    ratio = metrics["memory/step_time_measured_over_predicted"]
    assert ratio == pytest.approx(measured.value / strategy.plan.predicted_time)
    assert "forward" not in gpt.blocks[0].__dict__  # teardown gave the model back


def test_the_steady_step_timer_skips_the_first_steps_and_reports_once_per_plan() -> None:
    from engage.memory.step_timing import SteadyStepTimer

    timer = SteadyStepTimer(torch.device("cpu"), skip=1, runs=2)
    pauses = iter([0.05, 0.001, 0.002, 0.003, 0.004])
    results = []
    for _ in range(5):
        with timer.step():
            time.sleep(next(pauses))
        results.append(timer.result())
    # the first step (0.05 s) is never timed; the median of the next two is reported after them, once
    assert [r is not None for r in results] == [False, False, True, False, False]
    assert 0.001 <= results[2][0] < 0.04 and results[2][1] is None  # not the 0.05 s step
    timer.planned()  # a new plan: measured again
    for _ in range(3):
        with timer.step():
            pass
    assert timer.result() is not None
    with pytest.raises(ValueError, match="the first step is not steady"):
        SteadyStepTimer(torch.device("cpu"), skip=0)


def test_without_mlflow_the_plan_goes_to_the_loggers_metrics_and_its_files_beside_the_logs(tmp_path, gpt) -> None:
    import csv

    from lightning.pytorch.loggers import CSVLogger

    strategy = MemoryPlanningStrategy(budget="8MiB")
    logger = CSVLogger(tmp_path)
    _trainer(strategy, tmp_path, logger=logger, log_every_n_steps=1, max_steps=5).fit(_LitGPT(gpt), _loader())
    folder = tmp_path / "lightning_logs" / "version_0" / "memory_plan"
    assert sorted(p.name for p in folder.iterdir()) == sorted(
        ["memory_plan.txt", "memory_plan.json", "memory_profile.json", "memory_timeline.png"]
    )
    assert "budget 8.00 MiB" in (folder / "memory_plan.txt").read_text()
    with open(tmp_path / "lightning_logs" / "version_0" / "metrics.csv") as rows:
        logged = {key: value for row in csv.DictReader(rows) for key, value in row.items() if value}
    assert float(logged["memory/predicted_peak_bytes"]) == strategy.plan.predicted_peak
    assert float(logged["memory/measured_step_s"]) == pytest.approx(strategy.measured_step_s)


def test_memory_strategy_replans_on_new_shapes(tmp_path, gpt) -> None:
    strategy = MemoryPlanningStrategy(budget="16MiB", print_plan=False, verify=False)
    batches = [(torch.randint(0, 128, (8, n)),) for n in (32, 64, 32)]
    trainer = _trainer(strategy, tmp_path, logger=False, max_steps=3)
    trainer.fit(_LitGPT(gpt), DataLoader(batches, batch_size=None))
    assert len(strategy.plans) == 2


def test_memory_strategy_infeasible_budget_is_one_line(tmp_path, gpt) -> None:
    strategy = MemoryPlanningStrategy(budget="64KiB", print_plan=False)
    with pytest.raises(InfeasibleBudgetError, match=r"smallest feasible budget is [0-9.]+ MiB") as info:
        _trainer(strategy, tmp_path, logger=False, max_steps=1).fit(_LitGPT(gpt), _loader())
    assert "\n" not in str(info.value)


@pytest.mark.parametrize(
    ("budget", "match"),
    [
        ("12 GB?", "budget='12 GB\\?' is not a memory size"),
        (-5, "must be positive"),
        ("-5MiB", "budget='-5MiB' must be positive"),
        ("12G", "G alone could mean GiB \\(as Slurm reads it\\) or GB; write '12GiB' or '12GB'$"),
        (1.5, r"in \(0, 1\]; write a size such as '12GiB'$"),
        # a whole number from a command line (1e9) meant bytes
        (1e9, r"in \(0, 1\]; write 1000000000 for 1000000000 bytes, or a size such as '12GiB'$"),
        ("1000000000.0", r"no unit and is no fraction; write 1000000000 for 1000000000 bytes, a size with a unit"),
        # one byte, or all of it (1.0)? said, not guessed
        (1, r"^budget=1 is one byte; write 1.0 for all of the device's memory, or a size such as '12GiB'$"),
        ("01", r"^budget='01' is one byte; write 1.0"),
        (2.0, r"in \(0, 1\]; write a size such as '12GiB'$"),
    ],
)
def test_memory_bad_budget_names_field_and_fix(budget, match) -> None:
    with pytest.raises(ValueError, match=match):
        MemoryPlanningStrategy(budget=budget)


@pytest.mark.parametrize(
    ("kwargs", "error", "match"),
    [
        ({"verify": "no"}, ValueError, "verify='no' must be True or False"),  # a string is true
        ({"print_plan": 1}, ValueError, "print_plan=1 must be True or False"),
        ({"profile_path": 3}, ValueError, "profile_path=3 must be a file path"),
        ({"blocks": []}, ValueError, r"blocks=\[\] names no module; leave blocks out \(None\) to plan every"),
        ({"budgte": "1GiB"}, TypeError, "MemoryPlanningStrategy got unexpected keyword arguments budgte; it takes"),
    ],
)
def test_memory_strategy_arguments_of_the_wrong_kind_name_the_strategy_and_the_fix(kwargs, error, match) -> None:
    with pytest.raises(error, match=match):
        MemoryPlanningStrategy(budget="1GiB", **kwargs)


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks a machine without CUDA")
def test_memory_strategy_on_cuda_without_a_cuda_device_is_one_line() -> None:
    from engage.memory import UnsupportedSetupError

    with pytest.raises(UnsupportedSetupError, match="device='cuda', but torch sees no CUDA device"):
        MemoryPlanningStrategy(budget="1GiB", device="cuda")


def test_memory_budget_units() -> None:
    assert parse_budget("12GiB") == 12 * 2**30
    assert parse_budget("800 MB") == 800 * 10**6
    assert parse_budget(4096) == 4096
    # on the CPU a fraction is of the host's memory, as far as this process's cgroup allows
    import psutil

    from engage.memory.budget import host_memory

    assert 0 < host_memory() <= psutil.virtual_memory().total
    assert parse_budget(0.5, "cpu") == int(0.5 * host_memory())


def test_a_fraction_on_the_cpu_is_of_the_cgroup_limit_where_it_is_lower(tmp_path, monkeypatch) -> None:
    """A Slurm job given ``--mem=2G`` (or a container) has a cgroup limit below the host's memory:
    the fraction is of that; an unlimited group (v1's huge number, v2's ``max``) changes nothing."""
    import psutil

    from engage.memory import budget

    limit, unlimited, absent = tmp_path / "memory.max", tmp_path / "unlimited", tmp_path / "absent"
    limit.write_text(f"{2 * 2**30}\n")
    unlimited.write_text("max\n")
    monkeypatch.setattr(budget, "_cgroup_limit_files", lambda: [str(absent), str(unlimited), str(limit)])
    assert budget.host_memory() == min(2 * 2**30, psutil.virtual_memory().total)
    assert budget.parse_budget("0.5", "cpu") == min(2**30, psutil.virtual_memory().total // 2)
    monkeypatch.setattr(budget, "_cgroup_limit_files", lambda: [str(unlimited)])
    assert budget.host_memory() == psutil.virtual_memory().total


def test_memory_offload_is_asked_for_by_name_and_refused_off_cuda_or_compiled() -> None:
    from engage.memory import UnsupportedSetupError
    from engage.memory.decisions import check_decisions, runs_compiled

    with pytest.raises(UnsupportedSetupError, match=r"^decision 'offload' needs a CUDA device: on cpu host and"):
        MemoryPlanningStrategy(budget="1GiB", decisions=["keep", "offload"], device="cpu")
    default = MemoryPlanningStrategy(budget="1GiB", device="cpu").decisions
    assert default == [Decision.KEEP, Decision.SELECTIVE, Decision.RECOMPUTE]  # offload only when named
    cuda = torch.device("cuda")
    net = torch.nn.Sequential(torch.nn.Linear(2, 2), torch.nn.Linear(2, 2))
    assert not runs_compiled(net)
    net.add_module("fast", torch.compile(torch.nn.Linear(2, 2)))
    assert runs_compiled(net)
    with pytest.raises(UnsupportedSetupError, match=r"^decision 'offload' is not available under torch.compile"):
        check_decisions([Decision.KEEP, Decision.OFFLOAD], cuda, compiled=True)
    check_decisions([Decision.KEEP, Decision.OFFLOAD], cuda, compiled=False)
    check_decisions([Decision.KEEP, Decision.RECOMPUTE], torch.device("cpu"), compiled=True)


def test_memory_bad_solver_is_explained() -> None:
    with pytest.raises(ValueError, match="solver='magic' is unknown"):
        MemoryPlanningStrategy(budget="1GiB", solver="magic")
