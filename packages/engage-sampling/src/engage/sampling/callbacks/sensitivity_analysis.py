"""Global sensitivity analysis of the model being trained, as a Lightning callback."""

from __future__ import annotations

import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import lightning.pytorch as pl
import numpy as np
from SALib.sample import morris as morris_sample
from SALib.sample import sobol as sobol_sample

from engage.core.space import ParameterSpace
from engage.sampling.analysis import SensitivityResult, morris_indices, sobol_indices
from engage.sampling.callbacks._common import (
    PeriodicAnalysis,
    Quantity,
    check_every,
    check_sampler,
    check_space,
    default_quantity,
    due,
    evaluate,
    find_sampler,
    find_space,
    log_figure,
    log_metrics,
    required_sampler,
    restore_sampler_state,
    saved_sampler,
    tried_quantity,
    with_sampler_state,
)
from engage.sampling.samplers._unit import check_whole

METHODS = ("sobol", "morris")


class SensitivityAnalysis(PeriodicAnalysis):
    """Every ``every_n_steps`` steps (default 1000, or every ``every_n_epochs`` epochs), and once
    more when training ends unless its last step was just analysed (both periods ``None``: only
    when :meth:`analyze` is called), evaluates a
    quantity of interest of the model over a SALib design of the parameter space and computes its sensitivity indices:
    first- and total-order Sobol indices with bootstrap confidence intervals (``method="sobol"``,
    ``base_samples·(d+2)`` evaluations) or Morris ``mu*``/``sigma`` (``method="morris"``, the cheap
    screening, ``trajectories·(d+1)`` evaluations).

    The quantity is ``quantity(model, unit_points) -> (n,)`` or ``(n, *field_shape)``, points being
    unit-normalised parameters (as in ENGAGE batches; ``inputs="values"`` passes parameter values
    instead). The default evaluates the model on the points themselves (with ``time = 1`` when its
    ``forward`` takes ``(parameters, time)``). For field outputs, indices are those of the field's
    mean, and ``S1``/``ST`` maps per cell are computed as well.

    Indices are logged as metrics (``sensitivity/ST/<name>``...) to every logger, and as bar
    charts (and maps) to MLflow. With ``reweight_sampler``, the active sampler (``sampler``, or the
    DataModule's ``sampler``) receives the normalised total indices through its
    ``set_parameter_weights`` so that more simulations go along sensitive parameters.

    Example::

        >>> import torch, lightning.pytorch as pl
        >>> class Linear(pl.LightningModule):
        ...     def __init__(self):
        ...         super().__init__()
        ...         self.net = torch.nn.Linear(2, 1)
        ...         with torch.no_grad():
        ...             self.net.weight.copy_(torch.tensor([[3.0, 1.0]]))
        ...     def forward(self, x):
        ...         return self.net(x)
        >>> callback = SensitivityAnalysis(names=["a", "b"], base_samples=256)
        >>> result = callback.analyze(Linear())
        >>> [round(float(s), 1) for s in result.ST]
        [0.9, 0.1]
    """

    def __init__(
        self,
        quantity: Quantity | None = None,
        space: ParameterSpace | None = None,
        names: Sequence[str] | None = None,
        num_parameters: int | None = None,
        method: str = "sobol",
        base_samples: int = 256,
        calc_second_order: bool = False,
        trajectories: int = 50,
        num_levels: int = 4,
        every_n_epochs: int | None = None,
        every_n_steps: int | None = 1000,
        num_resamples: int = 100,
        conf_level: float = 0.95,
        seed: int = 0,
        inputs: str = "unit",
        reweight_sampler: bool = False,
        sampler: Any = None,
        log_plots: bool = True,
        plot_dir: str | Path | None = None,
        batch_size: int = 8192,
    ):
        super().__init__()
        if method not in METHODS:
            raise ValueError(f"SensitivityAnalysis method must be one of {', '.join(METHODS)}, got {method!r}")
        owner = "SensitivityAnalysis"
        base_samples = check_whole(f"{owner} base_samples", base_samples, 2)
        if base_samples & (base_samples - 1):
            raise ValueError(f"SensitivityAnalysis base_samples must be a power of 2 (>= 2), got {base_samples}")
        if inputs not in ("unit", "values"):
            raise ValueError(f"SensitivityAnalysis inputs must be 'unit' or 'values', got {inputs!r}")
        num_resamples = check_whole(f"{owner} num_resamples", num_resamples)  # the bootstrap's
        trajectories = check_whole(f"{owner} trajectories", trajectories, 2)
        num_levels = check_whole(f"{owner} num_levels", num_levels, 2)
        if num_levels % 2:
            raise ValueError(f"SensitivityAnalysis num_levels must be even (Morris' design), got {num_levels}")
        if not 0 < conf_level < 1:
            raise ValueError(f"SensitivityAnalysis conf_level must be between 0 and 1 (exclusive), got {conf_level}")
        batch_size = check_whole(f"{owner} batch_size", batch_size)
        if isinstance(names, str):
            raise ValueError(f"SensitivityAnalysis names must be a list of names, got the string {names!r}")
        if num_parameters is not None:
            num_parameters = check_whole(f"{owner} num_parameters", num_parameters)
        space = check_space(owner, space)
        sampler = check_sampler(owner, sampler)
        check_every("SensitivityAnalysis", "every_n_steps", every_n_steps)
        check_every("SensitivityAnalysis", "every_n_epochs", every_n_epochs)
        self.quantity = quantity or default_quantity
        self.space = space
        self.names = list(names) if names is not None else None
        self.num_parameters = num_parameters
        self.method = method
        self.base_samples = int(base_samples)
        self.calc_second_order = bool(calc_second_order)
        self.trajectories = int(trajectories)
        self.num_levels = int(num_levels)
        self.every_n_epochs = every_n_epochs
        self.every_n_steps = every_n_steps
        self.num_resamples = int(num_resamples)
        self.conf_level = float(conf_level)
        self.seed = int(seed)
        self.inputs = inputs
        self.reweight_sampler = reweight_sampler
        self.sampler = sampler
        self._saved_sampler: Any = None
        self.log_plots = log_plots
        self.plot_dir = plot_dir
        self.batch_size = int(batch_size)
        #: results of every analysis so far (metrics plus ``epoch``/``step``), restored from checkpoints
        self.history: list[dict[str, float]] = []
        #: the latest full result (with maps), not checkpointed
        self.result: SensitivityResult | None = None
        #: wall time of the latest analysis in seconds
        self.last_duration_s = 0.0
        self._design: np.ndarray | None = None

    # ------------------------------------------------------------------ analysis
    def _resolve_names(self, trainer: pl.Trainer | None) -> list[str]:
        space = self.space
        if space is None and trainer is not None:
            space = find_space(trainer, None, find_sampler(trainer, self.sampler))
        if space is not None:
            if self.names is not None and list(self.names) != list(space.names):
                raise ValueError(
                    f"SensitivityAnalysis names={self.names} differ from the parameter space's {list(space.names)}; "
                    "drop names= (the space names them) or give the same ones"
                )
            self.space = space
            return space.names
        if self.names is not None:
            return self.names
        if self.num_parameters is not None:
            return [f"x{i + 1}" for i in range(int(self.num_parameters))]
        raise ValueError(
            "SensitivityAnalysis cannot tell the model's parameters; pass space=ParameterSpace(...), "
            "names=[...] or num_parameters=d"
        )

    def design(self, num_vars: int) -> np.ndarray:
        """The unit-cube SALib design (the same at every analysis, so indices compare over time)."""
        if self._design is None or self._design.shape[1] != num_vars:
            problem = {"num_vars": num_vars, "names": [str(i) for i in range(num_vars)], "bounds": [[0, 1]] * num_vars}
            if self.method == "sobol":
                self._design = sobol_sample.sample(
                    problem, self.base_samples, calc_second_order=self.calc_second_order, seed=self.seed
                )
            else:
                self._design = morris_sample.sample(
                    problem, self.trajectories, num_levels=self.num_levels, seed=self.seed
                )
        return self._design

    def analyze(self, model: Any, trainer: pl.Trainer | None = None) -> SensitivityResult:
        """Run one analysis of ``model`` now and return its result (also usable without a Trainer)."""
        names = self._resolve_names(trainer)
        if self.inputs == "values" and self.space is None:
            raise ValueError(
                "SensitivityAnalysis inputs='values' maps unit points to values with a parameter space: pass "
                "space=, or train with a DataModule that has one"
            )
        unit = self.design(len(names))
        points = self.space.from_unit(unit) if self.inputs == "values" else unit
        Y = evaluate(self.quantity, model, points, self.batch_size)
        common = {"num_resamples": self.num_resamples, "conf_level": self.conf_level, "seed": self.seed}
        if self.method == "sobol":
            return sobol_indices(Y, names, calc_second_order=self.calc_second_order, **common)
        return morris_indices(unit, Y, names, num_levels=self.num_levels, **common)

    def run(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> SensitivityResult:
        """Analyse, log, and re-weight the sampler if asked."""
        started = time.perf_counter()
        result = self.analyze(pl_module, trainer)
        self.result = result
        metrics = result.metrics()
        log_metrics(trainer, metrics)
        self.history.append({**metrics, "epoch": trainer.current_epoch, "step": trainer.global_step})
        if self.reweight_sampler:
            self._reweighted(trainer).set_parameter_weights(result.importance)
        if self.log_plots:
            self._plot(trainer, result)
        self.last_duration_s = time.perf_counter() - started
        return result

    def _plot(self, trainer: pl.Trainer, result: SensitivityResult) -> None:
        import matplotlib

        matplotlib.use("Agg", force=False)
        import matplotlib.pyplot as plt

        x = np.arange(len(result.names))
        fig, ax = plt.subplots(figsize=(1.2 * len(x) + 3, 3.2))
        if result.method == "sobol":
            ax.bar(x - 0.2, result.S1, 0.4, yerr=result.S1_conf, label="first order S1", capsize=3)
            ax.bar(x + 0.2, result.ST, 0.4, yerr=result.ST_conf, label="total order ST", capsize=3)
            ax.set_ylabel("Sobol index")
        else:
            ax.bar(x, result.mu_star, 0.5, yerr=result.mu_star_conf, label="mu*", capsize=3)
            ax.set_ylabel("mean |elementary effect|")
        ax.set_xticks(x, result.names, rotation=30)
        ax.legend()
        ax.set_title(f"sensitivity, epoch {trainer.current_epoch}, step {trainer.global_step}")
        fig.tight_layout()
        log_figure(trainer, fig, "sensitivity/indices", self.plot_dir)
        if result.ST_map is not None:
            maps = {"S1": result.S1_map, "ST": result.ST_map}
            d = len(result.names)
            fig, axes = plt.subplots(2, d, figsize=(2.4 * d, 4.6), squeeze=False)
            for row, (key, values) in enumerate(maps.items()):
                for j, name in enumerate(result.names):
                    ax = axes[row, j]
                    cell = values[j]
                    if cell.ndim == 2:
                        image = ax.imshow(cell, vmin=0, vmax=1, cmap="viridis")
                        ax.set_xticks([])
                        ax.set_yticks([])
                    else:
                        ax.plot(cell.reshape(-1))
                        ax.set_ylim(0, 1)
                    ax.set_title(f"{key} {name}", fontsize=9)
            if values[0].ndim == 2:
                fig.colorbar(image, ax=axes, shrink=0.8)
            log_figure(trainer, fig, "sensitivity/maps", self.plot_dir)

    # ------------------------------------------------------------------ Lightning hooks
    @property
    def state_key(self) -> str:
        # two analyses in one trainer (Sobol' and Morris, of parameters in the unit cube or as
        # values) each keep their own history; a period changed on resume keeps it too
        return self._generate_state_key(method=self.method, inputs=self.inputs)

    def on_fit_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        """Refuse, before training, an analysis that could not tell the model's parameters (no
        ``space``, ``names`` nor ``num_parameters``, and none from the sampler or the DataModule)
        rather than at its first analysis, ``every_n_steps`` steps into training."""
        self._saved_sampler = saved_sampler(trainer, self.sampler)
        if self.every_n_steps is not None or self.every_n_epochs is not None:
            names = self._resolve_names(trainer)
            tried_quantity("SensitivityAnalysis", "quantity", self.quantity, pl_module, len(names))
            if self.reweight_sampler:
                self._reweighted(trainer)

    def _reweighted(self, trainer: pl.Trainer) -> Any:
        """The sampler ``reweight_sampler`` re-weights; refused when there is none that can be."""
        return required_sampler(
            trainer, self.sampler, "SensitivityAnalysis(reweight_sampler=True)", "to re-weight",
            "set_parameter_weights",
            "parameter weights to set; use sampler=sensitivity_weighted or loss_driven, or reweight_sampler=False",
        )  # fmt: skip

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        if due(trainer.global_step, self.every_n_steps):
            self.run(trainer, pl_module)

    def state_dict(self) -> dict[str, Any]:
        return with_sampler_state(
            {"history": [dict(h) for h in self.history], "seed": self.seed, "method": self.method},
            self._saved_sampler,
        )

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        restore_sampler_state(state_dict, self.sampler)
        self.history = [dict(h) for h in state_dict.get("history", [])]
