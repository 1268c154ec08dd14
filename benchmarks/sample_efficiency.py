"""Sample efficiency of engage-sampling's samplers, online and offline, and the overhead of its callbacks.

Online (``--part online``): each sampler chooses the simulations of an ``OnlineDataModule`` run (the
DataModule ``engage run data=online`` uses: simulation processes streaming into the training
buffer) while Lightning trains core's default surrogate (``HeatSurrogate``) for a fixed number of
steps; the adaptive samplers are fed by their callbacks as in ``engage run`` (``LossDrivenSampling``
for loss-driven, Breed and loss-density sampling, telling each sample's squared relative error,
``ImageSimilaritySampling`` for image similarity). The buffer
is small and its samples leave after their share of the reads, so simulations wait for training
and each new point is chosen from what the network has learnt by then. Problems: the 16x16 heat
equation (smooth: the field is linear in its parameters) and the 1D viscous Burgers equation on 64
cells (a shock forms at low viscosity: the difficulty varies across the space). Each budget of
simulations is a separate run with the same training steps; error: relative L2 of the whole
trajectory on 32 held-out uniform simulations; 5 seeds, medians. From the curves: how many
simulations each method needs to reach the scrambled Sobol' sequence's error at the nominal budget.
On Burgers, ``informed_sobol`` is the Sobol' sequence made denser where the problem is known to
be hard (the lowest viscosities): not a sampler anyone could run without that knowledge, but a
yardstick of what moving the design towards the hard region buys at these budgets.

Offline (``--part offline``), the second table: an active-learning loop outside Lightning:

(a) the 2D heat equation (engage-core ``HeatEquation``, 16x16 grid, 10 implicit steps), a small
    MLP learning the final temperature field from the 5 parameters; error: relative L2 on 64
    held-out uniform simulations;
(b) on [0,1]^4, f(x) = sin(2π x1)·x2 + 3·exp(−‖x − c‖² / (2·0.05²)), c uniform from seed 2024,
    a small MLP; error: RMSE on 4096 held-out uniform points.

For a fixed budget of simulations, run in rounds, each method's held-out error is recorded
after every round (the MLP is refitted, warm-started, after each round), over 5 seeds.
Loss-driven sampling (half Sobol' exploration, proposals around the highest-loss points with a
radius shrinking as they fill, the farthest of 4 proposals) is told the error of the current
surrogate at each new point before the refit; sensitivity-weighted sampling gets the total Sobol
indices of the current surrogate (``SensitivityAnalysis``) each round; image-similarity sampling
(problem (a) only) is told the simulated fields.

The callback overhead part (``--part overhead``) trains core's ``HeatSurrogate`` with Lightning on
16x16 heat simulations and times each callback's hooks against the training-step time, at the
callback's default frequency.

Run: ``python benchmarks/sample_efficiency.py`` (all parts: about an hour on 2 cores,
the online part most of it); ``--quick`` checks the online part in a few minutes. Writes
``benchmarks/results/sample_efficiency.json``, ``sample_efficiency.png`` (offline) and
``sample_efficiency_online.png``.
"""

from __future__ import annotations

import argparse
import json
import logging
import math
import platform
import tempfile
import time
import warnings
from pathlib import Path

import matplotlib
from _cli import check_out, whole

matplotlib.use("Agg")
import lightning.pytorch as pl
import matplotlib.pyplot as plt
import numpy as np
import torch
from torch import nn

from engage.core import ParameterSpace, UniformSampler
from engage.core.data.simulated import SimulatedDataModule
from engage.core.models.heat_surrogate import HeatSurrogate
from engage.core.online import OnlineDataModule
from engage.core.online.report import PER_SAMPLE_RELATIVE_LOSS
from engage.core.simulators import HeatEquation
from engage.core.simulators.burgers import ViscousBurgers
from engage.sampling import (
    BreedSampler,
    ImageSimilaritySampler,
    LatinHypercubeSampler,
    LossDensitySampler,
    LossDrivenSampler,
    SensitivityWeightedSampler,
    SobolSequenceSampler,
    active_learning,
)
from engage.sampling.callbacks import ImageSimilaritySampling, LossDrivenSampling, SensitivityAnalysis

RESULTS = Path(__file__).parent / "results"
#: a Trainer that trains only: no logger, checkpoint, progress bar, summary or validation
QUIET_TRAINER = {
    "logger": False,
    "enable_checkpointing": False,
    "enable_progress_bar": False,
    "enable_model_summary": False,
    "num_sanity_val_steps": 0,
    "limit_val_batches": 0,
}
SEEDS = (0, 1, 2, 3, 4)


# --------------------------------------------------------------------------- problems
class BumpProblem:
    """(b): a smooth oscillation plus a narrow bump that uniform sampling rarely hits."""

    name = "bump4d"
    budget, rounds = 256, 16
    space = ParameterSpace.from_config({f"x{i}": {"low": 0.0, "high": 1.0} for i in range(1, 5)})
    centre = np.random.default_rng(2024).uniform(size=4)

    def simulate(self, p: np.ndarray) -> float:
        bump = 3.0 * np.exp(-np.sum((p - self.centre) ** 2) / (2 * 0.05**2))
        return float(np.sin(2 * np.pi * p[0]) * p[1] + bump)

    def test_set(self) -> tuple[np.ndarray, np.ndarray]:
        x = np.random.default_rng(99).uniform(size=(4096, 4))
        return x, np.array([self.simulate(p) for p in x])

    def error(self, prediction: np.ndarray, truth: np.ndarray) -> float:
        return float(np.sqrt(np.mean((prediction.reshape(truth.shape) - truth) ** 2)))


class HeatProblem:
    """(a): final temperature field of the heat equation, normalised to [0, 1]."""

    name = "heat"
    budget, rounds = 64, 8

    def __init__(self) -> None:
        self.simulator = HeatEquation(grid=16, steps=10, dt=0.005)
        self.space = self.simulator.space

    def simulate(self, p: np.ndarray) -> np.ndarray:
        *_, last = self.simulator.run(p)
        return (last.astype(np.float64) - 100.0) / 400.0

    def test_set(self) -> tuple[np.ndarray, np.ndarray]:
        values = UniformSampler(self.space, seed=12345).ask(64)
        return self.space.to_unit(values), np.stack([self.simulate(p) for p in values])

    def error(self, prediction: np.ndarray, truth: np.ndarray) -> float:
        prediction = prediction.reshape(truth.shape)
        return float(np.linalg.norm(prediction - truth) / np.linalg.norm(truth))


# --------------------------------------------------------------------------- surrogate
LR_MAX, LR_MIN = 3e-3, 1e-4


class Surrogate:
    """A small MLP on unit inputs, refitted (warm start) after every round."""

    def __init__(self, dim: int, out: int, seed: int, steps: int = 300):
        torch.manual_seed(seed)
        self.net = nn.Sequential(nn.Linear(dim, 64), nn.SiLU(), nn.Linear(64, 64), nn.SiLU(), nn.Linear(64, out))
        self.optimizer = torch.optim.Adam(self.net.parameters(), lr=LR_MAX)
        self.steps = steps

    def fit(self, x: np.ndarray, y: np.ndarray) -> None:
        xt = torch.as_tensor(x, dtype=torch.float32)
        yt = torch.as_tensor(y.reshape(len(y), -1), dtype=torch.float32)
        for step in range(self.steps):
            # cosine decay within each refit: a constant rate left some seeds far from a minimum at
            # the end of a round, and that training noise, not the points, decided the comparison
            for group in self.optimizer.param_groups:
                group["lr"] = LR_MIN + 0.5 * (LR_MAX - LR_MIN) * (1 + math.cos(math.pi * step / self.steps))
            loss = ((self.net(xt) - yt) ** 2).mean()
            self.optimizer.zero_grad()
            loss.backward()
            self.optimizer.step()

    @torch.no_grad()
    def predict(self, x: np.ndarray) -> np.ndarray:
        return self.net(torch.as_tensor(x, dtype=torch.float32)).numpy()


def run_method(problem, method: str, seed: int, test: tuple[np.ndarray, np.ndarray]) -> list[tuple[int, float]]:
    space = problem.space
    batch = problem.budget // problem.rounds
    samplers = {
        "uniform": lambda: UniformSampler(space, seed=seed),
        "lhs": lambda: LatinHypercubeSampler(space, seed=seed, design_size=batch),
        "sobol_sequence": lambda: SobolSequenceSampler(space, seed=seed),
        "loss_driven": lambda: LossDrivenSampler(space, seed=seed, exploration=0.5, sigma=0.1, candidates=4),
        "sensitivity_weighted": lambda: SensitivityWeightedSampler(space, seed=seed),
        "image_similarity": lambda: ImageSimilaritySampler(space, seed=seed, exploration=0.3, metric="ssim"),
    }
    sampler = samplers[method]()
    example = problem.simulate(space.from_unit(np.full((1, space.dim), 0.5))[0])
    surrogate = Surrogate(space.dim, int(np.size(example)), seed)
    analysis = SensitivityAnalysis(space=space, base_samples=256, num_resamples=10, log_plots=False)
    curve: list[tuple[int, float]] = []

    def surrogate_error(points: np.ndarray, outputs: list) -> np.ndarray:
        # the surrogate's error at new points *before* it learns them: what it has not learnt yet
        predicted = surrogate.predict(space.to_unit(points))
        truth = np.stack([np.ravel(o) for o in outputs])
        return np.sqrt(np.mean((predicted.reshape(truth.shape) - truth) ** 2, axis=1))

    def refit(result) -> None:
        x = space.to_unit(result.points)
        y = np.stack([np.ravel(o) for o in result.outputs])
        surrogate.fit(x, y)
        curve.append((result.simulations, problem.error(surrogate.predict(test[0]), test[1])))
        if method == "sensitivity_weighted":
            st = analysis.analyze(lambda_model(surrogate)).importance
            sampler.set_parameter_weights(np.maximum(st, 0.02))

    active_learning(
        problem.simulate,
        sampler,
        budget=problem.budget,
        batch_size=batch,
        loss=surrogate_error if method == "loss_driven" else None,
        on_round=refit,
    )
    return curve


def lambda_model(surrogate: Surrogate) -> nn.Module:
    """The surrogate's network reduced to one output (field mean) for the sensitivity analysis."""

    class Mean(nn.Module):
        def forward(self, x):
            return surrogate.net(x).mean(dim=1)

    return Mean()


def efficiency(problems_out: dict) -> None:
    """Add, per problem, how many simulations each method needs to reach uniform's final error."""
    for out in problems_out.values():
        uniform_final = out["methods"]["uniform"]["mean"][-1]
        for stats in out["methods"].values():
            reached = [n for n, e in zip(out["simulations"], stats["mean"]) if e <= uniform_final]
            stats["simulations_to_uniform_final_error"] = reached[0] if reached else None
            stats["fraction_of_uniform_budget"] = reached[0] / out["simulations"][-1] if reached else None


# --------------------------------------------------------------------------- callback overhead
class HookTimer(pl.Callback):
    """Times training steps, and the hooks of one wrapped callback."""

    def __init__(self, inner: pl.Callback | None):
        self.inner = inner
        self.step_time = 0.0
        self.callback_time = 0.0
        self.steps = 0
        self._t = 0.0

    def _timed(self, name, *args):
        if self.inner is None:
            return
        started = time.perf_counter()
        getattr(self.inner, name)(*args)
        self.callback_time += time.perf_counter() - started

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx):
        self._t = time.perf_counter()

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
        self.step_time += time.perf_counter() - self._t
        self.steps += 1
        self._timed("on_train_batch_end", trainer, pl_module, outputs, batch, batch_idx)

    def on_train_epoch_end(self, trainer, pl_module):
        self._timed("on_train_epoch_end", trainer, pl_module)

    def on_train_end(self, trainer, pl_module):
        # periodic analyses run every N steps; time one and spread it over its N steps
        self.run_time = 0.0
        if self.inner is not None and hasattr(self.inner, "run"):
            started = time.perf_counter()
            self.inner.run(trainer, pl_module)
            self.run_time = time.perf_counter() - started


def callback_overhead(epochs: int, train_simulations: int) -> dict:
    simulator = HeatEquation(grid=16, steps=10, dt=0.005)
    cases = {
        "none": lambda sampler: None,
        "SensitivityAnalysis": lambda sampler: SensitivityAnalysis(log_plots=False),
        "LossDrivenSampling": lambda sampler: LossDrivenSampling(),
        "ImageSimilaritySampling": lambda sampler: ImageSimilaritySampling(log_plots=False),
    }
    out = {}
    for name, make in cases.items():
        torch.manual_seed(0)
        sampler = LossDrivenSampler(simulator.space, seed=0)
        datamodule = SimulatedDataModule(simulator, sampler, train_simulations=train_simulations, val_simulations=2)
        model = HeatSurrogate(5, (16, 16), value_range=(100.0, 500.0), width=16)
        timer = HookTimer(make(sampler))
        trainer = pl.Trainer(
            max_epochs=epochs,
            callbacks=[timer],
            **QUIET_TRAINER,
        )
        trainer.fit(model, datamodule=datamodule)
        inner = timer.inner
        every = getattr(inner, "every_n_steps", None) if inner is not None and hasattr(inner, "run") else None
        step_time = timer.step_time / max(timer.steps, 1)
        periodic = timer.run_time / (every * step_time) if every else 0.0
        out[name] = {
            "steps": timer.steps,
            "default_every_n_steps": every,
            "one_analysis_s": timer.run_time,
            "step_time_ms": 1e3 * timer.step_time / max(timer.steps, 1),
            "callback_time_s": timer.callback_time,
            "overhead_fraction": timer.callback_time / timer.step_time + periodic,
        }
    return out


# --------------------------------------------------------------------------- online path
FIXED = ("uniform", "lhs", "sobol_sequence")
#: sensitivity-weighted sampling is left out online: its analysis runs every 1000 steps by default,
#: after these runs end, so it would be a space-filling design with equal weights
ADAPTIVE = ("loss_driven", "breed", "loss_density", "image_similarity")
#: the samplers told the training losses (by ``LossDrivenSampling``)
LOSS_AWARE = ("loss_driven", "breed", "loss_density")
#: fixed designs told in advance where a problem is hard (problems that know it only): what knowing
#: the hard region buys with such a design, a yardstick for the adaptive samplers
INFORMED = ("informed_sobol",)


class InformedSobol(SobolSequenceSampler):
    """The scrambled Sobol' sequence with its points moved by ``towards_hard`` (a map of the unit
    cube onto itself that is denser where the problem is known to be hard)."""

    def __init__(self, space: ParameterSpace, seed: int, towards_hard) -> None:
        super().__init__(space, seed=seed)
        self.towards_hard = towards_hard

    def _ask(self, n: int) -> np.ndarray:
        return self.space.from_unit(self.towards_hard(self._next_unit(n)))


def denser_at_low_viscosity(unit: np.ndarray, power: float = 2.5) -> np.ndarray:
    """Burgers' hard region is its low viscosities (the shock): the unit log-viscosity ``u``
    becomes ``u ** power`` (density proportional to ``u ** (1 / power - 1)``; with 2.5, 52% of the
    points in the lowest fifth of log-viscosity against 20%); amplitude and phase are kept."""
    moved = unit.copy()
    moved[:, 0] = unit[:, 0] ** power
    return moved


class OnlineProblem:
    """A simulator run through ``OnlineDataModule`` and the default surrogate, and its held-out set.

    ``varies`` says whether its difficulty varies across the parameter space (where adaptive
    sampling should pay) or not (where it cannot, and must not cost).
    """

    def __init__(self, name: str, simulator, varies: bool, width: int, steps: int, towards_hard=None):
        self.name, self.simulator, self.varies, self.width, self.steps = name, simulator, varies, width, steps
        #: where the problem is known to be hard, for :data:`INFORMED` designs (a map of unit points)
        self.towards_hard = towards_hard
        self.space = simulator.space
        self._test: tuple[np.ndarray, np.ndarray] | None = None

    def test_set(self, simulations: int = 32) -> tuple[np.ndarray, np.ndarray]:
        """Unit parameters ``(n, d)`` and trajectories ``(n, samples_per_run, *shape)`` of held-out
        uniform simulations, run in this process (seed 12345, the same for every method)."""
        if self._test is None:
            values = UniformSampler(self.space, seed=12345).ask(simulations)
            fields = np.stack([np.stack(list(self.simulator.run(p))) for p in values])
            self._test = self.space.to_unit(values), fields
        return self._test

    @torch.no_grad()
    def error(self, model: HeatSurrogate) -> float:
        """Mean over held-out simulations of the relative L2 error of the whole trajectory, in the
        simulator's units: the surrogate's own ``val/rel_l2``."""
        unit, fields = self.test_set()
        n, steps = fields.shape[:2]
        parameters = torch.as_tensor(np.repeat(unit, steps, axis=0), dtype=torch.float32)
        times = torch.as_tensor(np.tile(np.arange(1, steps + 1) / steps, n)[:, None], dtype=torch.float32)
        model.eval()
        predicted = model.predict_field(parameters, times).numpy().reshape(n, -1)
        truth = fields.reshape(n, -1).astype(np.float64)
        return float(np.mean(np.linalg.norm(predicted - truth, axis=1) / np.linalg.norm(truth, axis=1)))


def online_problems() -> list[OnlineProblem]:
    return [
        # the surrogate's width and training steps: enough that its error is limited by the data
        # (Burgers: a model trained 1500 steps on 32 simulations has half the error of one on 16;
        # at 600 steps every budget left it near 0.5), at a few milliseconds a step
        OnlineProblem("heat", HeatEquation(grid=16, steps=10, dt=0.005), varies=False, width=16, steps=600),
        OnlineProblem(
            "burgers",
            ViscousBurgers(grid=64, steps=8),
            varies=True,
            width=64,
            steps=1500,
            towards_hard=denser_at_low_viscosity,
        ),
    ]


def similarity_metric(simulator) -> str:
    """SSIM compares windows of at least 3x3 pixels: NRMSE for row outputs such as Burgers'."""
    return "ssim" if min(simulator.sample_shape) >= 3 else "nrmse"


def online_sampler(
    method: str, space: ParameterSpace, seed: int, simulations: int, metric: str = "ssim", towards_hard=None
):  # fmt: skip
    """The sampler of ``method`` as ``engage run sampler=NAME`` makes it (defaults), except the
    Breed generation, sized to the budget so that a run sees several generations; ``informed_sobol``
    needs the problem's ``towards_hard``."""
    if method == "informed_sobol":
        if towards_hard is None:
            raise ValueError("informed_sobol needs a problem that knows where it is hard (towards_hard)")
        return InformedSobol(space, seed, towards_hard)
    if method == "uniform":
        return UniformSampler(space, seed=seed)
    if method == "lhs":
        return LatinHypercubeSampler(space, seed=seed, design_size=simulations)
    if method == "sobol_sequence":
        return SobolSequenceSampler(space, seed=seed)
    if method == "loss_driven":
        return LossDrivenSampler(space, seed=seed)
    if method == "breed":
        return BreedSampler(space, seed=seed, generation_size=max(4, simulations // 5), generations=4)
    if method == "loss_density":
        return LossDensitySampler(space, seed=seed)
    if method == "image_similarity":
        return ImageSimilaritySampler(space, seed=seed, metric=metric)
    raise ValueError(f"unknown method {method!r}")


def online_callbacks(method: str, metric: str = "ssim") -> list[pl.Callback]:
    """The callback that feeds ``method``'s sampler, at its default frequency (none for fixed designs).
    The loss-aware samplers are told each sample's squared relative error, the measure the
    benchmark judges by (the surrogate returns it beside its loss)."""
    if method in LOSS_AWARE:
        return [LossDrivenSampling(output_key=PER_SAMPLE_RELATIVE_LOSS)]
    if method == "image_similarity":
        return [ImageSimilaritySampling(log_plots=False, metric=metric)]
    return []


def online_run(problem: OnlineProblem, method: str, seed: int, simulations: int, steps: int) -> dict:
    """One online training run: ``simulations`` simulation processes chosen by ``method`` while a
    surrogate trains for ``steps`` steps; returns its held-out error and what it used."""
    simulator, batch_size = problem.simulator, 32
    torch.manual_seed(seed)
    metric = similarity_metric(simulator)
    sampler = online_sampler(method, problem.space, seed, simulations, metric, problem.towards_hard)
    samples = simulations * simulator.samples_per_run
    with tempfile.TemporaryDirectory(prefix="engage-sample-efficiency-") as workdir:
        datamodule = OnlineDataModule(
            simulator,
            sampler,
            simulations=simulations,
            val_simulations=0,
            batch_size=batch_size,
            batches_per_epoch=steps,
            # a small buffer whose samples leave after their share of the reads: simulations wait
            # for training, so that each new point is chosen from what the network has learnt
            capacity=2 * batch_size,
            policy="firo",
            max_reads=max(1, math.ceil(steps * batch_size / samples)),
            concurrency=2,
            seed=seed,
            workdir=workdir,
        )
        model = HeatSurrogate(
            problem.space.dim, simulator.sample_shape, value_range=simulator.value_range, width=problem.width
        )
        trainer = pl.Trainer(
            max_steps=steps,
            max_epochs=1,
            callbacks=online_callbacks(method, metric),
            **QUIET_TRAINER,
            default_root_dir=workdir,
        )
        started = time.perf_counter()
        trainer.fit(model, datamodule=datamodule)
        wall = time.perf_counter() - started
    if trainer.global_step != steps:
        raise RuntimeError(f"{method} trained {trainer.global_step} of {steps} steps")
    return {"error": problem.error(model), "wall_s": wall, "told": sampler.num_told, "finished": sampler.num_finished}


def simulations_to_reach(budgets: list[int], errors: list[float], target: float) -> float | None:
    """Simulations at which the error curve first reaches ``target``, interpolated linearly in
    log(error) between budgets (the first budget when it is reached there; None: never)."""
    for i, error in enumerate(errors):
        if error <= target:
            if i == 0:
                return float(budgets[0])
            previous = errors[i - 1]
            share = (math.log(previous) - math.log(target)) / (math.log(previous) - math.log(error))
            return budgets[i - 1] + share * (budgets[i] - budgets[i - 1])
    return None


def online_benchmark(
    seeds: tuple[int, ...],
    budgets: list[int],
    nominal: int,
    steps_scale: float,
    problems: list[str],
    methods: list[str],
    previous: dict | None = None,
) -> dict:
    """``methods`` on ``problems`` through the online DataModule, each problem trained for its own
    steps (times ``steps_scale``): the held-out error of every seed at each budget of simulations.

    The other methods of a problem in ``previous`` (the results file's problems) are kept when
    they were measured with the same budgets, steps and seeds, so that one method can be measured
    again, or added, without running the others."""
    out: dict = {}
    for problem in online_problems():
        if problem.name not in problems:
            continue
        problem.test_set()
        steps = max(1, round(problem.steps * steps_scale))
        errors, walls = kept_results((previous or {}).get(problem.name), budgets, steps, len(seeds), methods)
        for method in methods:
            if method in INFORMED and problem.towards_hard is None:
                continue  # the problem does not know where it is hard
            errors[method] = [[math.nan] * len(budgets) for _ in seeds]
            for s, seed in enumerate(seeds):
                for b, simulations in enumerate(budgets):
                    run = online_run(problem, method, seed, simulations, steps)
                    errors[method][s][b] = run["error"]
                    walls.setdefault(method, []).append(run["wall_s"])
                    print(
                        f"  online {problem.name:8s} {method:21s} seed {seed} {simulations:3d} simulations: "
                        f"error {run['error']:.4f} ({run['wall_s']:.1f} s)",
                        flush=True,
                    )
        out[problem.name] = summarize_online(problem, budgets, nominal, steps, errors, walls)
    return out


def kept_results(
    before: dict | None, budgets: list[int], steps: int, seeds: int, methods: list[str]
) -> tuple[dict[str, list[list[float]]], dict[str, list[float]]]:
    """The errors ``[seed][budget]`` and run times of a problem's methods other than ``methods``
    from its previous summary, when that was measured with the same budgets, steps and seeds."""
    errors: dict[str, list[list[float]]] = {}
    walls: dict[str, list[float]] = {}
    if before and (before["budgets"], before["steps"], before["seeds"]) == (budgets, steps, seeds):
        for method, stats in before["methods"].items():
            if method not in methods:
                errors[method] = stats["per_seed"]
                walls[method] = [stats["mean_run_s"]] if stats.get("mean_run_s") is not None else []
    return errors, walls


def summarize_online(
    problem: OnlineProblem,
    budgets: list[int],
    nominal: int,
    steps: int,
    errors: dict[str, list[list[float]]],
    walls: dict[str, list[float]] | None = None,
) -> dict:
    """One problem's results from each method's errors ``[seed][budget]``: median and quartiles per
    budget, and the simulations each method needs to reach the Sobol' sequence's median error at the
    ``nominal`` budget (as a share of it)."""
    methods = {}
    for method, table in errors.items():
        array = np.asarray(table, dtype=np.float64)
        methods[method] = {
            "median": np.median(array, axis=0).tolist(),
            "quartiles": np.quantile(array, [0.25, 0.75], axis=0).tolist(),
            "per_seed": array.tolist(),
            "mean_run_s": float(np.mean(walls[method])) if walls and method in walls else None,
        }
    target = methods["sobol_sequence"]["median"][budgets.index(nominal)] if "sobol_sequence" in methods else None
    for stats in methods.values():
        reached = None if target is None else simulations_to_reach(budgets, stats["median"], target)
        stats["simulations_to_sobol_error"] = reached
        stats["fraction_of_sobol_budget"] = None if reached is None else reached / nominal
    return {
        "varies": problem.varies,
        "error": "relative L2 (held-out, 32 uniform simulations)",
        "budgets": budgets,
        "nominal_budget": nominal,
        "steps": steps,
        "batch_size": 32,
        "seeds": len(next(iter(errors.values()))),
        "surrogate_width": problem.width,
        "sobol_error_at_nominal": target,
        "methods": methods,
    }


def online_targets(out: dict) -> dict:
    """The targets: on problems whose difficulty varies, the best adaptive sampler needs at most 60%
    of the Sobol' sequence's simulations; on smooth ones, no adaptive sampler needs over 110%."""
    targets = {}
    for name, results in out["problems"].items():
        fractions = {m: results["methods"][m]["fraction_of_sobol_budget"] for m in ADAPTIVE if m in results["methods"]}
        known = {m: f for m, f in fractions.items() if f is not None}
        if results["varies"]:
            best = min(known, key=known.get) if known else None
            targets[name] = {
                "rule": "best adaptive <= 60% of the Sobol' sequence's simulations",
                "best": best,
                "fraction": known.get(best) if best else None,
                "met": bool(best and known[best] <= 0.6),
            }
        else:
            worst = {m: (f if f is not None else math.inf) for m, f in fractions.items()}
            targets[name] = {
                "rule": "every adaptive <= 110% of the Sobol' sequence's simulations",
                "fractions": fractions,
                "met": all(f <= 1.1 for f in worst.values()),
            }
    return targets


def plot_online(online: dict, path: Path) -> None:
    problems = online["problems"]
    fig, axes = plt.subplots(1, len(problems), figsize=(6 * len(problems), 4.2))
    for ax, (name, results) in zip(np.atleast_1d(axes), problems.items()):
        budgets = np.asarray(results["budgets"])
        for method, stats in results["methods"].items():
            median = np.asarray(stats["median"])
            low, high = (np.asarray(q) for q in stats["quartiles"])
            style = "--" if method in FIXED else ":" if method in INFORMED else "-"
            color = f"C{[*FIXED, *ADAPTIVE, *INFORMED].index(method) % 10}"  # one colour a method on every panel
            ax.plot(budgets, median, style, marker="o", ms=3, label=method, color=color)
            ax.fill_between(budgets, low, high, alpha=0.12, color=color)
        if results["sobol_error_at_nominal"] is not None:
            ax.axhline(results["sobol_error_at_nominal"], color="k", lw=0.8, ls=":", label="Sobol' sequence, nominal")
        ax.axvline(results["nominal_budget"], color="grey", lw=0.6)
        ax.set_yscale("log")
        ax.set_xlabel("simulations run (count)")
        ax.set_ylabel("held-out relative L2 error (-)")
        ax.set_title(f"online, {name}: {results['steps']} steps, median and quartiles of {results['seeds']} seeds")
        ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


# --------------------------------------------------------------------------- main
def plot(results: dict, path: Path) -> None:
    problems = results["problems"]
    fig, axes = plt.subplots(1, len(problems), figsize=(6 * len(problems), 4.2))
    for ax, (name, out) in zip(np.atleast_1d(axes), problems.items()):
        sims = np.asarray(out["simulations"])
        for method, stats in out["methods"].items():
            mean, std = np.asarray(stats["mean"]), np.asarray(stats["std"])
            ax.plot(sims, mean, marker="o", ms=3, label=method)
            ax.fill_between(sims, mean - std, mean + std, alpha=0.15)
        ax.axhline(out["methods"]["uniform"]["mean"][-1], color="k", lw=0.8, ls="--", label="uniform, final")
        ax.set_yscale("log")
        ax.set_xlabel("simulations run")
        ax.set_ylabel(out["error"])
        ax.set_title(f"{name} ({len(results['seeds'])} seeds, mean ± std)")
        ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


PARTS = ("online", "offline", "overhead")


def run_offline(seeds: tuple[int, ...]) -> dict:
    out: dict = {}
    for problem in (BumpProblem(), HeatProblem()):
        methods = ["uniform", "lhs", "sobol_sequence", "loss_driven", "sensitivity_weighted"]
        if problem.name == "heat":
            methods.append("image_similarity")
        test = problem.test_set()
        result = {"budget": problem.budget, "error": "relative L2" if problem.name == "heat" else "RMSE", "methods": {}}
        for method in methods:
            curves = [run_method(problem, method, seed, test) for seed in seeds]
            errors = np.array([[e for _, e in c] for c in curves])
            result["simulations"] = [n for n, _ in curves[0]]
            result["methods"][method] = {
                "mean": errors.mean(axis=0).tolist(),
                "std": errors.std(axis=0).tolist(),
                "final_per_seed": errors[:, -1].tolist(),
            }
            final = errors[:, -1]
            print(f"  offline {problem.name:7s} {method:22s} final error {final.mean():.4f} ± {final.std():.4f}")
        out[problem.name] = result
    efficiency(out)
    return out


def report(results: dict) -> None:
    online = results.get("online")
    if online:
        print("\nonline: median held-out error against simulations run; last column: share of the Sobol' "
              "sequence's nominal budget needed to reach its error there")  # fmt: skip
        for name, out in online["problems"].items():
            kind = "difficulty varies" if out["varies"] else "smooth"
            print(f"  {name} ({kind}, {out['steps']} steps, {out['seeds']} seeds): budgets {out['budgets']}")
            for method, stats in out["methods"].items():
                fraction = stats["fraction_of_sobol_budget"]
                share = "not reached" if fraction is None else f"{100 * fraction:.0f}%"
                errors = " ".join(f"{e:.4f}" for e in stats["median"])
                print(f"    {method:21s} {errors}  {share}")
        for name, target in online["targets"].items():
            print(f"  target on {name}: {target['rule']}: {'met' if target['met'] else 'missed'}")
    if results.get("problems"):
        print("\noffline: simulations to reach uniform's final error (fraction of the budget):")
        for name, out in results["problems"].items():
            for method, stats in out["methods"].items():
                print(f"  {name:7s} {method:22s} {stats['simulations_to_uniform_final_error']} "
                      f"({stats['fraction_of_uniform_budget']})")  # fmt: skip
    if results.get("callback_overhead"):
        print("\ncallback overhead (callback time / training-step time, default frequency):")
        for name, stats in results["callback_overhead"].items():
            print(f"  {name:24s} step {stats['step_time_ms']:.1f} ms, overhead {stats['overhead_fraction']}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--seeds",
        type=whole(),
        default=len(SEEDS),
        help=f"seeds per method, at most {len(SEEDS)} (default {len(SEEDS)})",
    )
    parser.add_argument(
        "--part",
        choices=(*PARTS, "all"),
        default="all",
        help="run one part only; the others keep their figures from the existing results file",
    )
    parser.add_argument(
        "--quick",
        action="store_true",
        help="online part only, 1 seed, budgets 8/16/20 of 16, half the training steps: a check that it "
        "runs (a few minutes), written to sample_efficiency_quick.json",
    )
    problems = [problem.name for problem in online_problems()]
    parser.add_argument(
        "--problems", nargs="+", choices=problems, default=problems, help="online problems to run (default all)"
    )
    parser.add_argument(
        "--methods",
        nargs="+",
        choices=[*FIXED, *ADAPTIVE, *INFORMED],
        default=[*FIXED, *ADAPTIVE, *INFORMED],
        help="online samplers to run (the others keep their figures from the results file)",
    )
    parser.add_argument(
        "--overhead-epochs", type=whole(), default=30, help="epochs of 8 steps each callback is timed over (default 30)"
    )
    parser.add_argument("--out", type=Path, default=RESULTS, help="folder for the JSON and the plots")
    args = parser.parse_args()
    if args.seeds > len(SEEDS):
        parser.error(f"argument --seeds: at most {len(SEEDS)} (the seeds {SEEDS}), got {args.seeds}")
    check_out(parser, args.out, folder=True)
    logging.getLogger("lightning.pytorch").setLevel(logging.ERROR)
    # Lightning's hint to use srun when Slurm's commands are installed: not what a benchmark wants
    warnings.filterwarnings("ignore", message=".*`srun` command is available.*")
    torch.set_num_threads(1)  # small MLPs: one thread is fastest, and runs stay comparable
    started = time.perf_counter()
    seeds = SEEDS[: 1 if args.quick else args.seeds]
    parts = ("online",) if args.quick else PARTS if args.part == "all" else (args.part,)
    name = "sample_efficiency_quick" if args.quick else "sample_efficiency"
    path = args.out / f"{name}.json"
    results: dict = json.loads(path.read_text()) if path.exists() and not args.quick else {}
    results.update({"machine": platform.processor() or platform.machine()})
    if "online" in parts:
        budgets, nominal, scale = ([8, 16, 20], 16, 0.5) if args.quick else ([8, 16, 32, 40], 32, 1.0)
        problems = {**results.get("online", {}).get("problems", {})}
        problems.update(online_benchmark(seeds, budgets, nominal, scale, args.problems, args.methods, problems))
        results["online"] = {"problems": problems}
        results["online"]["targets"] = online_targets(results["online"])
    if "offline" in parts:
        results["seeds"] = list(seeds)
        results["problems"] = run_offline(seeds)
    if "overhead" in parts:
        results["callback_overhead"] = callback_overhead(args.overhead_epochs, train_simulations=24)
    walls = results.get("wall_time_s")
    measured = "+".join(parts)
    if "online" in parts and set(args.methods) != {*FIXED, *ADAPTIVE, *INFORMED}:
        measured += f" ({' '.join(args.methods)})"  # a partial run's time is not the part's
    results["wall_time_s"] = {**(walls if isinstance(walls, dict) else {}), measured: time.perf_counter() - started}
    args.out.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(results, indent=1))
    if "online" in parts:
        plot_online(results["online"], args.out / f"{name}_online.png")
    if "offline" in parts:
        plot(results, args.out / f"{name}.png")
    report(results)
    print(f"\nwrote {path} in {time.perf_counter() - started:.0f} s")


if __name__ == "__main__":
    main()
