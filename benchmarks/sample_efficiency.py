"""Sample efficiency of engage-sampling's samplers, and the overhead of its callbacks.

Two problems, fixed so that results compare across versions:

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

The callback overhead part trains core's ``HeatSurrogate`` with Lightning on 16x16 heat
simulations and times each callback's hooks against the training-step time, at the callback's
default frequency.

Run: ``python benchmarks/sample_efficiency.py`` (a few minutes on 2 cores); writes
``benchmarks/results/sample_efficiency.json`` and ``sample_efficiency.png``.
"""

from __future__ import annotations

import argparse
import json
import math
import platform
import time
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import lightning.pytorch as pl
import matplotlib.pyplot as plt
import numpy as np
import torch
from torch import nn

from engage.core import ParameterSpace, UniformSampler
from engage.core.data.simulated import SimulatedDataModule
from engage.core.models.heat_surrogate import HeatSurrogate
from engage.core.simulators import HeatEquation
from engage.sampling import (
    ImageSimilaritySampler,
    LatinHypercubeSampler,
    LossDrivenSampler,
    SensitivityWeightedSampler,
    SobolSequenceSampler,
    active_learning,
)
from engage.sampling.callbacks import ImageSimilaritySampling, LossDrivenSampling, SensitivityAnalysis

RESULTS = Path(__file__).parent / "results"
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
            logger=False,
            enable_checkpointing=False,
            enable_progress_bar=False,
            enable_model_summary=False,
            num_sanity_val_steps=0,
            limit_val_batches=0,
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


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seeds", type=int, default=len(SEEDS))
    parser.add_argument("--overhead-epochs", type=int, default=6)
    args = parser.parse_args()
    torch.set_num_threads(1)  # small MLPs: one thread is fastest, and runs stay comparable
    started = time.perf_counter()
    seeds = SEEDS[: args.seeds]
    results: dict = {"seeds": list(seeds), "machine": platform.processor() or platform.machine(), "problems": {}}
    for problem in (BumpProblem(), HeatProblem()):
        methods = ["uniform", "lhs", "sobol_sequence", "loss_driven", "sensitivity_weighted"]
        if problem.name == "heat":
            methods.append("image_similarity")
        test = problem.test_set()
        out = {
            "budget": problem.budget,
            "error": "relative L2" if problem.name == "heat" else "RMSE",
            "methods": {},
        }
        for method in methods:
            curves = [run_method(problem, method, seed, test) for seed in seeds]
            errors = np.array([[e for _, e in c] for c in curves])
            out["simulations"] = [n for n, _ in curves[0]]
            out["methods"][method] = {
                "mean": errors.mean(axis=0).tolist(),
                "std": errors.std(axis=0).tolist(),
                "final_per_seed": errors[:, -1].tolist(),
            }
            print(f"{problem.name:7s} {method:22s} final error {errors[:, -1].mean():.4f} ± {errors[:, -1].std():.4f}")
        results["problems"][problem.name] = out
    efficiency(results["problems"])
    results["callback_overhead"] = callback_overhead(args.overhead_epochs, train_simulations=24)
    results["wall_time_s"] = time.perf_counter() - started
    RESULTS.mkdir(parents=True, exist_ok=True)
    (RESULTS / "sample_efficiency.json").write_text(json.dumps(results, indent=1))
    plot(results, RESULTS / "sample_efficiency.png")
    print("\nsimulations to reach uniform's final error (fraction of the budget):")
    for name, out in results["problems"].items():
        for method, stats in out["methods"].items():
            print(f"  {name:7s} {method:22s} {stats['simulations_to_uniform_final_error']} "
                  f"({stats['fraction_of_uniform_budget']})")  # fmt: skip
    print("\ncallback overhead (callback time / training-step time, default frequency):")
    for name, stats in results["callback_overhead"].items():
        print(f"  {name:24s} step {stats['step_time_ms']:.1f} ms, overhead {stats['overhead_fraction']}")
    print(f"\nwrote {RESULTS / 'sample_efficiency.json'} in {results['wall_time_s']:.0f} s")


if __name__ == "__main__":
    main()
