"""What the sampling callbacks share: finding the active sampler and the parameter space,
evaluating a model on parameter points, logging metrics and figures."""

from __future__ import annotations

import inspect
from collections.abc import Callable
from pathlib import Path
from typing import Any

import lightning.pytorch as pl
import numpy as np
import torch
from lightning.pytorch.utilities import rank_zero_warn

from engage.core.space import ParameterSpace

#: ``quantity(model, unit_points) -> (n,) or (n, *shape)``: what a callback evaluates on a design
Quantity = Callable[[torch.nn.Module, torch.Tensor], torch.Tensor]


def find_sampler(trainer: pl.Trainer, explicit: Any = None) -> Any:
    """The sampler given explicitly, else the DataModule's ``sampler`` attribute, else ``None``."""
    if explicit is not None:
        return explicit
    datamodule = getattr(trainer, "datamodule", None)
    return getattr(datamodule, "sampler", None)


def saved_sampler(trainer: pl.Trainer, explicit: Any) -> Any:
    """The sampler whose state a callback keeps in checkpoints: the one given to it (``explicit``),
    unless the trainer's DataModule holds that very sampler (ENGAGE's online DataModule saves its
    own, with the simulations in flight); else ``None``. A plain Lightning run that resumes then
    proposes the points it would have proposed without the interruption."""
    datamodule = getattr(trainer, "datamodule", None)
    if explicit is None or getattr(datamodule, "sampler", None) is explicit or not hasattr(explicit, "state_dict"):
        return None
    return explicit


def with_sampler_state(state: dict[str, Any], sampler: Any) -> dict[str, Any]:
    """``state`` with ``sampler``'s own (see :func:`saved_sampler`) under ``sampler``."""
    return state if sampler is None else {**state, "sampler": sampler.state_dict()}


def restore_sampler_state(state: dict[str, Any], explicit: Any) -> None:
    """Give the sampler given to a callback the state its checkpoint kept (if it kept one)."""
    if explicit is not None and state.get("sampler") is not None:
        explicit.load_state_dict(state["sampler"])


def required_sampler(trainer: pl.Trainer, explicit: Any, owner: str, purpose: str, attribute: str, lacking: str) -> Any:
    """The sampler ``owner`` works with (:func:`find_sampler`), refused with one line when there is
    none (``purpose``: what it would do with it) or when it lacks ``attribute`` (``lacking``: what
    that is, and the fix)."""
    sampler = find_sampler(trainer, explicit)
    if sampler is None:
        raise ValueError(
            f"{owner} found no sampler {purpose}: pass sampler=, or train with a DataModule that has one (ENGAGE's do)"
        )
    if not hasattr(sampler, attribute):
        raise ValueError(f"{owner}: the sampler {type(sampler).__name__} has no {lacking}")
    return sampler


def find_space(trainer: pl.Trainer, explicit: ParameterSpace | None, sampler: Any = None) -> ParameterSpace | None:
    """The parameter space: given, else the sampler's, else the DataModule simulator's."""
    if explicit is not None:
        return explicit
    for owner in (sampler, getattr(getattr(trainer, "datamodule", None), "simulator", None)):
        space = getattr(owner, "space", None)
        if isinstance(space, ParameterSpace):
            return space
    return None


def _takes_time(module: torch.nn.Module) -> bool:
    try:
        parameters = inspect.signature(module.forward).parameters.values()
    except (TypeError, ValueError):
        return False
    positional = [
        p
        for p in parameters
        if p.kind in (p.POSITIONAL_ONLY, p.POSITIONAL_OR_KEYWORD) and p.default is inspect.Parameter.empty
    ]
    return len(positional) >= 2


def default_quantity(model: torch.nn.Module, unit_points: torch.Tensor) -> torch.Tensor:
    """The model's output for inputs that are the (unit-normalised) parameters themselves.

    Models of ENGAGE DataModules that take ``(parameters, time)`` are evaluated at the final time
    (``time = 1``). A ``(n, 1)`` output is squeezed to ``(n,)``.
    """
    if _takes_time(model):
        out = model(unit_points, torch.ones(len(unit_points), 1, dtype=unit_points.dtype, device=unit_points.device))
    else:
        out = model(unit_points)
    return out.squeeze(1) if out.ndim == 2 and out.shape[1] == 1 else out


@torch.no_grad()
def evaluate(quantity: Quantity, model: torch.nn.Module, unit_points: np.ndarray, batch_size: int = 8192) -> np.ndarray:
    """``quantity`` on all points in batches, in eval mode, on the model's device, as numpy."""
    try:
        reference = next(model.parameters())
        device, dtype = reference.device, reference.dtype
    except StopIteration:
        device, dtype = torch.device("cpu"), torch.float32
    was_training = model.training
    model.eval()
    try:
        chunks = []
        for start in range(0, len(unit_points), batch_size):
            x = torch.as_tensor(unit_points[start : start + batch_size], dtype=dtype, device=device)
            chunks.append(torch.as_tensor(quantity(model, x)).detach().float().cpu().numpy())
    finally:
        model.train(was_training)
    out = np.concatenate(chunks)
    if out.shape[0] != len(unit_points):
        raise ValueError(f"the quantity returned {out.shape[0]} values for {len(unit_points)} points")
    return out


def tried_quantity(owner: str, field: str, quantity: Quantity, model: torch.nn.Module, dim: int) -> np.ndarray:
    """``quantity`` on two points of ``dim`` parameters, tried before training: a model that cannot
    take them is refused in one line naming ``field`` (the callback's argument that fixes it) now,
    rather than failing with the framework's error at the first analysis."""
    try:
        return evaluate(quantity, model, np.full((2, dim), 0.5))
    except Exception as exc:
        cause = " ".join(str(exc).split())[:200] or type(exc).__name__
        raise ValueError(
            f"{owner} could not evaluate the model on points of the {dim} parameters of its space "
            f"({type(exc).__name__}: {cause}); give {field}=, a function of (model, unit points), or a space "
            "whose parameters are the model's inputs"
        ) from None


def log_metrics(trainer: pl.Trainer, metrics: dict[str, float]) -> None:
    """Send metrics to every logger of the trainer (rank zero only)."""
    if not trainer.is_global_zero:
        return
    for logger in trainer.loggers:
        logger.log_metrics(metrics, step=trainer.global_step)


def log_figure(trainer: pl.Trainer, figure: Any, key: str, plot_dir: str | Path | None = None) -> list[str]:
    """Log a matplotlib figure to MLflow as an image of ``key`` at the trainer's global step (the
    MLflow UI shows the images of a key with a step slider) when an MLflow logger is attached, and
    save it under ``plot_dir`` as ``KEY_epochE_stepS.png`` when given; returns where it went.
    Closes the figure."""
    import matplotlib.pyplot as plt
    import numpy as np

    where = []
    step = trainer.global_step
    try:
        if trainer.is_global_zero:
            image = None
            for logger in trainer.loggers:
                experiment = getattr(logger, "experiment", None)
                run_id = getattr(logger, "run_id", None)
                if run_id is not None and hasattr(experiment, "log_image"):
                    if image is None:
                        figure.canvas.draw()
                        image = np.asarray(figure.canvas.buffer_rgba())[..., :3].copy()
                    experiment.log_image(run_id, image, key=key, step=step)
                    where.append(f"mlflow:{run_id}/{key}@{step}")
            if plot_dir is not None:
                target = Path(plot_dir) / f"{key}_epoch{trainer.current_epoch:04d}_step{step:07d}.png"
                target.parent.mkdir(parents=True, exist_ok=True)
                figure.savefig(target, dpi=100)
                where.append(str(target))
    finally:
        plt.close(figure)
    return where


def warn_once(owner: Any, key: str, message: str) -> None:
    """A warning per callback instance and kind (a training loop would repeat it every step)."""
    seen = owner.__dict__.setdefault("_warned", set())
    if key not in seen:
        seen.add(key)
        rank_zero_warn(message)


def due(step_or_epoch: int, every: int | None) -> bool:
    """Whether a periodic action runs at this 1-based step or epoch count."""
    return every is not None and every > 0 and step_or_epoch % every == 0


def check_space(owner: str, space: Any) -> ParameterSpace | None:
    """A callback's ``space``: a :class:`ParameterSpace`, a mapping as a config declares one
    (``{"x": {"low": 0, "high": 1}}``), or ``None`` (taken from the sampler or the DataModule)."""
    if space is None or isinstance(space, ParameterSpace):
        return space
    if isinstance(space, dict) or hasattr(space, "items"):
        return ParameterSpace.from_config(dict(space))
    raise ValueError(
        f"{owner} space must be a ParameterSpace or a mapping such as {{'x': {{'low': 0, 'high': 1}}}}, "
        f"got {type(space).__name__}"
    )


def check_sampler(owner: str, sampler: Any) -> Any:
    """A callback's ``sampler``: ``None`` (the DataModule's) or a sampler object, not its name."""
    if sampler is not None and not hasattr(sampler, "tell"):
        raise ValueError(
            f"{owner} sampler must be a sampler object (such as LossDrivenSampler(space)), or None for the "
            f"DataModule's; got {sampler!r}"
        )
    return sampler


class PeriodicAnalysis(pl.Callback):
    """What the callbacks that analyse the model every ``every_n_steps`` steps or
    ``every_n_epochs`` epochs share (each has its own ``run(trainer, pl_module)`` and keeps a
    ``history`` of results, each with its ``step``): the epoch's period, one more analysis of
    the trained model when training ends off the period, and the state of checkpoints written
    before each analysis had a key of its own (saved under the class's name)."""

    every_n_steps: int | None
    every_n_epochs: int | None
    history: list[dict[str, float]]

    def on_load_checkpoint(self, trainer: pl.Trainer, pl_module: pl.LightningModule, checkpoint: dict) -> None:
        states = checkpoint.get("callbacks") or {}
        if self.state_key not in states and type(self).__qualname__ in states:
            self.load_state_dict(states[type(self).__qualname__])

    def on_train_epoch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if due(trainer.current_epoch + 1, self.every_n_epochs):
            self.run(trainer, pl_module)  # type: ignore[attr-defined]

    def on_train_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        """The trained model's analysis, when the period did not end on the last step (a run
        shorter than ``every_n_steps`` would otherwise have none); none without a period, or
        without a step trained."""
        if (self.every_n_steps is None and self.every_n_epochs is None) or trainer.global_step == 0:
            return
        if not self.history or self.history[-1]["step"] != trainer.global_step:
            self.run(trainer, pl_module)  # type: ignore[attr-defined]


def check_every(owner: str, name: str, value: int | None) -> int | None:
    """A periodic action's ``every_n_steps`` or ``every_n_epochs``: ``None`` (never) or a whole
    number >= 1; 0 would silently never run."""
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ValueError(f"{owner} {name} must be a whole number >= 1, or None to not run on {name[8:]}; got {value!r}")
    return value
