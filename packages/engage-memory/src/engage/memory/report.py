"""Showing a plan: the memory timeline plot, its files, and its figures to Lightning's loggers."""

from __future__ import annotations

import tempfile
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from engage.memory.plan import Plan
from engage.memory.profile import Profile


def plot_timeline(
    predicted: Sequence[tuple[str, int]],
    measured: Sequence[tuple[str, int]] | None,
    budget: int,
    path: str | Path,
    title: str = "memory timeline",
) -> Path:
    """Save a plot of the step's memory phase by phase, predicted against measured, with the budget.

    Examples:
        >>> import tempfile, os
        >>> out = plot_timeline([("a", 10), ("b", 20)], [("a", 11), ("b", 19)], 25, tempfile.mktemp(suffix=".png"))
        >>> os.path.getsize(out) > 0
        True
    """
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    # the largest binary unit in which the budget is at least 1: a small model's plot reads 96 KiB, not 0.0001 GiB
    unit, scale = next((u, 2**p) for u, p in (("GiB", 30), ("MiB", 20), ("KiB", 10), ("B", 0)) if budget >= 2**p)
    fig, ax = plt.subplots(figsize=(max(6, 0.35 * len(predicted)), 4))
    xs = range(len(predicted))
    ax.plot(xs, [v / scale for _, v in predicted], marker="o", label="predicted")
    if measured:
        values = dict(measured)
        ax.plot(xs, [values.get(label, float("nan")) / scale for label, _ in predicted], marker="x", label="measured")
    ax.axhline(budget / scale, color="red", linestyle="--", label="budget")
    ax.set_xticks(list(xs))
    ax.set_xticklabels([label for label, _ in predicted], rotation=90, fontsize=7)
    ax.set_xlabel("phase of the training step (forward, then backward, block by block)")
    ax.set_ylabel(f"device memory allocated ({unit})")
    ax.set_title(title)
    ax.legend()
    fig.tight_layout()
    path = Path(path)
    fig.savefig(path)
    plt.close(fig)
    return path


#: the files a plan is shown by: its table, its JSON, the profile it was solved from, the timeline plot
PLAN_FILES = ("memory_plan.txt", "memory_plan.json", "memory_profile.json", "memory_timeline.png")


def write_plan_files(
    folder: str | Path,
    plan: Plan,
    profile: Profile,
    measured_peak: int | None,
    measured: Sequence[tuple[str, int]] | None,
) -> list[Path]:
    """Write :data:`PLAN_FILES` into ``folder`` (made if needed); returns their paths."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "memory_plan.txt").write_text(plan.render(measured_peak))
    plan.save(folder / "memory_plan.json")
    profile.save(folder / "memory_profile.json")
    plot_timeline(plan.timeline, measured, plan.budget, folder / "memory_timeline.png")
    return [folder / name for name in PLAN_FILES]


def report_plan(
    loggers: Sequence[Any],
    plan: Plan,
    profile: Profile,
    measured_peak: int | None,
    measured: Sequence[tuple[str, int]] | None,
    folder: str | Path,
    step: int = 0,
) -> list[str]:
    """Show a plan to each of a trainer's Lightning ``loggers``: its figures as metrics to every
    logger; its :data:`PLAN_FILES` as artifacts of an ``MLFlowLogger``'s run, and in ``folder``
    when no logger keeps artifacts (a CSV or TensorBoard logger, or none). Call on global rank
    zero only. Returns where the files went.

    Examples:
        >>> from lightning.pytorch.loggers import CSVLogger
        >>> from engage.memory.plan import Plan
        >>> from engage.memory.profile import Profile
        >>> import tempfile
        >>> folder = tempfile.mkdtemp()
        >>> plan = Plan(names=[], decisions=[], budget=2**20, predicted_peak=2**19, predicted_time=0.01, solver="dp")
        >>> profile = Profile(blocks=[], base=100, prologue_peak=120, epilogue_peak={"keep": 10},
        ...                   epilogue_delta={"keep": 5}, end_live=90, fwd_order=[], bwd_order=[], chain=True,
        ...                   step_time=0.1)
        >>> [Path(p).name for p in report_plan([CSVLogger(folder)], plan, profile, None, None, folder)]
        ['memory_plan.txt', 'memory_plan.json', 'memory_profile.json', 'memory_timeline.png']
    """
    metrics = {
        "memory/budget_bytes": float(plan.budget),
        "memory/predicted_peak_bytes": float(plan.predicted_peak),
        "memory/predicted_step_s": float(plan.predicted_time),
        "memory/solve_s": float(plan.solve_seconds),
        "memory/profiling_s": float(profile.profiling_seconds),
    }
    if measured_peak is not None:
        metrics["memory/measured_peak_bytes"] = float(measured_peak)
    where: list[str] = []
    for logger in loggers:
        logger.log_metrics(metrics, step=step)
        if type(logger).__name__ == "MLFlowLogger":
            with tempfile.TemporaryDirectory() as tmp:
                for path in write_plan_files(tmp, plan, profile, measured_peak, measured):
                    logger.experiment.log_artifact(logger.run_id, str(path))
                    where.append(f"mlflow:{logger.run_id}/{path.name}")
    if not where:
        where = [str(path) for path in write_plan_files(folder, plan, profile, measured_peak, measured)]
    return where


def log_steady_step(logger: Any, plan: Plan, seconds: float, peak: int | None, step: int) -> None:
    """Log a steady-state step's measured time (and, on CUDA, peak) beside the plan's predictions
    to a Lightning logger, at training step ``step``."""
    metrics = {
        "memory/measured_step_s": float(seconds),
        "memory/predicted_step_s": float(plan.predicted_time),
        "memory/step_time_measured_over_predicted": float(seconds / plan.predicted_time)
        if plan.predicted_time > 0
        else float("nan"),
    }
    if peak is not None:
        metrics["memory/measured_steady_peak_bytes"] = float(peak)
        metrics["memory/predicted_peak_bytes"] = float(plan.predicted_peak)
    logger.log_metrics(metrics, step=step)
