"""The swap experiment: Sobol' sensitivity analysis on the image renderer, image similarity on heat and Burgers.

Each of engage-sampling's two characterisations of a parameter space is applied to the problem
the other one was made for.

(a) Statistical impact analysis on the image renderer (engage-core ``ImageRenderer``, 32x32, six
    parameters, one of them the categorical shape). First- and total-order Sobol' indices with 95%
    bootstrap confidence intervals, from a ``SALibSobolSampler`` design of ``N·(d+2)`` renders
    analysed by ``engage.sampling.analysis``, of four quantities: the mean intensity (the
    quantity ``SensitivityAnalysis`` analyses for a field), the object's coverage (the fraction of
    pixels on the object, which lighting and material cannot change), the peak intensity (the
    specular highlight) and the whole image (per-pixel index maps aggregated over pixels, each
    pixel weighted by its variance, with a bootstrap over the design's groups). A parameter is
    negligible for a quantity when the upper end of its ST interval is below 0.01.

    Then whether steering by those indices helps learn the renderer: a small MLP (unit parameters
    to the 32x32 image, a fixed number of full-batch Adam steps with a cosine learning rate) is
    fitted on designs of equal size drawn by uniform random sampling, the scrambled Sobol'
    sequence, ``SensitivityWeightedSampler`` with equal weights (the same greedy maximin design,
    not steered) and ``SensitivityWeightedSampler`` weighted by the total indices of the mean
    intensity and of the image. Error: relative L2 on 256 held-out uniform renders; median and
    range over 5 seeds (the seed sets the design and the network's initialisation).

(b) Image-similarity landscapes on the heat equation (engage-core ``HeatEquation``, 16x16, 10
    implicit steps of 0.005) and the 1D viscous Burgers equation (``ViscousBurgers``, 64 cells, 8
    snapshots up to t = 0.5). 1024 points of a scrambled Sobol' sequence, each paired with its 4
    nearest neighbours in the unit cube; the dissimilarity of a pair's outputs
    (``engage.sampling.similarity``) is ``1 - SSIM``, NRMSE (normalised by the first output's
    norm) and ``1 / PSNR`` (a function of the plain RMSE, for the range of all outputs) of the
    final heat field; NRMSE and ``1 / PSNR`` of Burgers' final ``(1, 64)`` row (SSIM needs at
    least 3 rows) and ``1 - SSIM`` of its 8x64 space-time image (the 8 snapshots stacked).
    Per parameter: the Spearman correlation of a pair's dissimilarity with the pair's midpoint, the
    mean dissimilarity per fifth of the parameter's range (in unit coordinates: quantiles of its
    distribution, so log-spaced for Burgers' viscosity), and, per landscape, the share of the total
    dissimilarity carried by the top 10% of pairs. Whether refining by this landscape helps
    training is measured by ``sample_efficiency.py`` (sampler ``image_similarity``), not here.

Run: ``python benchmarks/swap_experiment.py`` (about 6 minutes on 2 cores; ``--quick``: smaller
designs, 2 seeds, one design size, under a minute); prints tables, writes
``benchmarks/results/swap_experiment.json`` and the figures ``swap_renderer_indices.png``,
``swap_renderer_maps.png``, ``swap_renderer_surrogate.png``, ``swap_similarity.png`` and
``swap_burgers_viscosity.png`` next to it (``--out`` for another folder).
"""

from __future__ import annotations

import argparse
import json
import math
import platform
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import matplotlib
from _cli import check_out, whole

matplotlib.use("Agg")
import matplotlib.pyplot as plt
import numpy as np
import torch
from scipy.stats import norm, spearmanr
from torch import nn

from engage.core import ParameterSpace, UniformSampler
from engage.core.simulators import HeatEquation
from engage.core.simulators.burgers import ViscousBurgers
from engage.core.simulators.render import ImageRenderer
from engage.sampling import SALibSobolSampler, SensitivityWeightedSampler, SobolSequenceSampler
from engage.sampling.analysis import sobol_index_maps, sobol_indices
from engage.sampling.similarity import similarity_landscape

RESULTS = Path(__file__).parent / "results"
NEGLIGIBLE_ST = 0.01  # a parameter whose ST interval stays below this explains < 1% of the variance
WEIGHT_FLOOR = 0.01  # smallest weight given to SensitivityWeightedSampler, so no axis is ignored outright
QUANTITIES = ("mean_intensity", "coverage", "peak_intensity", "image")
DESIGNS = ("uniform", "sobol_sequence", "maximin_equal", "weighted_mean_st", "weighted_image_st")


@dataclass(frozen=True)
class Settings:
    """Sizes of one run of the experiment."""

    render_size: int = 32
    sobol_base: int = 1024  # N of the Sobol' design: N·(d+2) renders
    num_resamples: int = 200  # bootstrap resamples for the confidence intervals
    design_sizes: tuple[int, ...] = (128, 256)
    seeds: tuple[int, ...] = (0, 1, 2, 3, 4)
    test_size: int = 256
    train_steps: int = 1000
    width: int = 128
    heat_points: int = 1024
    burgers_points: int = 1024
    neighbours: int = 4
    bins: int = 5


FULL = Settings()
QUICK = Settings(
    sobol_base=128, num_resamples=50, design_sizes=(128,), seeds=(0, 1), train_steps=400,
    heat_points=256, burgers_points=128,
)  # fmt: skip


# --------------------------------------------------------------------------- (a) renderer
def render(renderer: ImageRenderer, values: np.ndarray) -> np.ndarray:
    """Images ``(n, size, size)`` of the renderer at parameter values ``(n, d)``, as float64."""
    return np.stack([next(renderer.run(p)) for p in values]).astype(np.float64)


def renderer_quantities(images: np.ndarray) -> dict[str, np.ndarray]:
    """The renderer's natural summaries of images ``(n, h, w)``: mean intensity, coverage (the
    fraction of pixels on the object: shaded pixels are at least 0.05, background exactly 0), the
    peak intensity, and the image itself."""
    flat = images.reshape(len(images), -1)
    return {
        "mean_intensity": flat.mean(axis=1),
        "coverage": (flat > 0).mean(axis=1),
        "peak_intensity": flat.max(axis=1),
        "image": images,
    }


def aggregated_indices(
    images: np.ndarray, num_vars: int, num_resamples: int, conf_level: float = 0.95, seed: int = 0
) -> dict[str, np.ndarray]:
    """First- and total-order indices of a whole field output on a SALib Sobol' design, as the
    shares of the summed per-pixel variance: per-pixel maps weighted by each pixel's variance
    (pixels that never change carry no weight). Confidence half-widths from a bootstrap over the
    design's groups of ``d + 2`` rows, as SALib computes them for scalars (``z · std``)."""
    step = num_vars + 2
    cells = int(np.prod(images.shape[1:]))
    groups = images.reshape(-1, step, cells)

    def aggregate(chosen: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        with np.errstate(divide="ignore", invalid="ignore"):
            s1, st = sobol_index_maps(chosen.reshape(-1, cells), num_vars)
        variance = np.var(np.concatenate([chosen[:, 0], chosen[:, step - 1]]), axis=0)
        weights = variance / variance.sum()
        return np.nansum(s1 * weights, axis=1), np.nansum(st * weights, axis=1)

    s1, st = aggregate(groups)
    rng = np.random.default_rng(seed)
    boot = [aggregate(groups[rng.integers(0, len(groups), len(groups))]) for _ in range(num_resamples)]
    z = norm.ppf(0.5 + conf_level / 2)
    return {
        "S1": s1,
        "S1_conf": z * np.std([b[0] for b in boot], axis=0, ddof=1),
        "ST": st,
        "ST_conf": z * np.std([b[1] for b in boot], axis=0, ddof=1),
    }


def classify(st: float, conf: float) -> str:
    """``negligible`` when the upper end of the ST interval is below :data:`NEGLIGIBLE_ST`,
    ``minor`` when ST is below 0.05, else ``matters``."""
    if st + conf < NEGLIGIBLE_ST:
        return "negligible"
    return "minor" if st < 0.05 else "matters"


def renderer_sensitivity(size: int, base_samples: int, num_resamples: int, seed: int = 0) -> dict[str, Any]:
    """Sobol' indices of the renderer's quantities over its parameters (see the module docstring).
    Returns, per quantity, ``S1``, ``S1_conf``, ``ST``, ``ST_conf`` and a verdict per parameter,
    plus the per-pixel maps of the image under ``maps``."""
    renderer = ImageRenderer(size=size)
    names = renderer.space.names
    sampler = SALibSobolSampler(renderer.space, seed=seed, base_samples=base_samples)
    values = sampler.ask(sampler.block_rows)
    started = time.perf_counter()
    images = render(renderer, values)
    render_s = time.perf_counter() - started
    out: dict[str, Any] = {"names": names, "renders": len(values), "render_s": render_s, "quantities": {}}
    for quantity, y in renderer_quantities(images).items():
        if quantity == "image":
            indices = aggregated_indices(y, len(names), num_resamples, seed=seed)
            with np.errstate(divide="ignore", invalid="ignore"):
                s1_map, st_map = sobol_index_maps(y.reshape(len(y), -1), len(names))
            shape = (len(names), *y.shape[1:])
            out["maps"] = {"S1": s1_map.reshape(shape), "ST": st_map.reshape(shape)}
        else:
            result = sobol_indices(y, names, num_resamples=num_resamples, seed=seed)
            indices = {key: getattr(result, key) for key in ("S1", "S1_conf", "ST", "ST_conf")}
        indices = {key: np.asarray(value, dtype=np.float64) for key, value in indices.items()}
        indices["verdict"] = [classify(st, c) for st, c in zip(indices["ST"], indices["ST_conf"])]
        out["quantities"][quantity] = indices
    return out


class Surrogate:
    """A small MLP from unit parameters to a flattened output, fitted full-batch with Adam and a
    cosine-decayed learning rate for a fixed number of steps."""

    lr_max, lr_min = 3e-3, 1e-4

    def __init__(self, inputs: int, outputs: int, width: int, seed: int):
        torch.manual_seed(seed)
        self.net = nn.Sequential(
            nn.Linear(inputs, width), nn.SiLU(), nn.Linear(width, width), nn.SiLU(), nn.Linear(width, outputs)
        )

    def fit(self, x: np.ndarray, y: np.ndarray, steps: int) -> float:
        """Train on ``x`` ``(n, d)`` and ``y`` ``(n, ...)``; returns the final training MSE."""
        optimizer = torch.optim.Adam(self.net.parameters(), lr=self.lr_max)
        xt = torch.as_tensor(x, dtype=torch.float32)
        yt = torch.as_tensor(y.reshape(len(y), -1), dtype=torch.float32)
        loss = torch.zeros(())
        for step in range(steps):
            for group in optimizer.param_groups:
                group["lr"] = self.lr_min + 0.5 * (self.lr_max - self.lr_min) * (1 + math.cos(math.pi * step / steps))
            loss = ((self.net(xt) - yt) ** 2).mean()
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
        return float(loss.detach())

    @torch.no_grad()
    def predict(self, x: np.ndarray) -> np.ndarray:
        """Flattened predictions ``(n, outputs)`` at unit points ``x``."""
        return self.net(torch.as_tensor(x, dtype=torch.float32)).numpy()


def draw_design(method: str, space: ParameterSpace, n: int, seed: int, weights: dict[str, np.ndarray]) -> np.ndarray:
    """``n`` parameter values from one of :data:`DESIGNS`; ``weights`` holds the total indices of
    ``mean_intensity`` and ``image`` for the weighted designs."""
    if method == "uniform":
        return UniformSampler(space, seed=seed).ask(n)
    if method == "sobol_sequence":
        return SobolSequenceSampler(space, seed=seed).ask(n)
    sampler = SensitivityWeightedSampler(space, seed=seed)
    if method == "weighted_mean_st":
        sampler.set_parameter_weights(np.maximum(weights["mean_intensity"], WEIGHT_FLOOR))
    elif method == "weighted_image_st":
        sampler.set_parameter_weights(np.maximum(weights["image"], WEIGHT_FLOOR))
    elif method != "maximin_equal":
        raise ValueError(f"unknown design {method!r}; one of {', '.join(DESIGNS)}")
    return sampler.ask(n)


def relative_l2(prediction: np.ndarray, truth: np.ndarray) -> float:
    """``||prediction - truth|| / ||truth||`` over the whole set."""
    truth = truth.reshape(len(truth), -1)
    return float(np.linalg.norm(prediction.reshape(truth.shape) - truth) / np.linalg.norm(truth))


def surrogate_study(
    settings: Settings, weights: dict[str, np.ndarray], log: Callable[[str], None] = print
) -> dict[str, Any]:
    """Held-out error of the renderer's surrogate per design, design size and seed."""
    renderer = ImageRenderer(size=settings.render_size)
    space = renderer.space
    test_values = UniformSampler(space, seed=12345).ask(settings.test_size)
    test_x, test_y = space.to_unit(test_values), render(renderer, test_values)
    out: dict[str, Any] = {"test_size": settings.test_size, "designs": {}}
    for method in DESIGNS:
        per_size: dict[str, Any] = {}
        for n in settings.design_sizes:
            errors, train = [], []
            for seed in settings.seeds:
                values = draw_design(method, space, n, seed, weights)
                surrogate = Surrogate(space.dim, int(np.prod(test_y.shape[1:])), settings.width, seed)
                train.append(surrogate.fit(space.to_unit(values), render(renderer, values), settings.train_steps))
                errors.append(relative_l2(surrogate.predict(test_x), test_y))
            per_size[str(n)] = {
                "per_seed": errors,
                "median": float(np.median(errors)),
                "min": float(np.min(errors)),
                "max": float(np.max(errors)),
                "train_mse_median": float(np.median(train)),
            }
            log(f"  surrogate {method:18s} n={n:4d} held-out rel. L2 median {np.median(errors):.3f} "
                f"[{np.min(errors):.3f}, {np.max(errors):.3f}]")  # fmt: skip
        out["designs"][method] = per_size
    for per_size in out["designs"].values():
        for n, stats in per_size.items():
            uniform = np.asarray(out["designs"]["uniform"][n]["per_seed"])
            stats["median_ratio_to_uniform"] = float(np.median(np.asarray(stats["per_seed"]) / uniform))
    return out


# --------------------------------------------------------------------------- (b) similarity
def heat_problem() -> tuple[ParameterSpace, Callable[[np.ndarray], dict[str, np.ndarray]]]:
    """The heat equation's space and its output: the final 16x16 temperature field in K."""
    simulator = HeatEquation(grid=16, steps=10, dt=0.005)

    def outputs(values: np.ndarray) -> dict[str, np.ndarray]:
        *_, last = simulator.run(values)
        return {"field": last.astype(np.float64)}

    return simulator.space, outputs


def burgers_problem() -> tuple[ParameterSpace, Callable[[np.ndarray], dict[str, np.ndarray]]]:
    """Burgers' space and two views of a run: the final ``(1, 64)`` row as the simulator yields it,
    and its 8 snapshots stacked into an 8x64 space-time image (rows of one pixel leave SSIM
    undefined, so SSIM is taken on the space-time image)."""
    simulator = ViscousBurgers(grid=64, steps=8)

    def outputs(values: np.ndarray) -> dict[str, np.ndarray]:
        snapshots = np.concatenate(list(simulator.run(values)), axis=0).astype(np.float64)
        return {"final_row": snapshots[-1:], "space_time": snapshots}

    return simulator.space, outputs


PROBLEMS = {"heat": heat_problem, "burgers": burgers_problem}
#: (output, metric) pairs each problem's landscape is built from
VIEWS = {
    "heat": (("field", "ssim"), ("field", "nrmse"), ("field", "psnr")),
    "burgers": (("final_row", "nrmse"), ("final_row", "psnr"), ("space_time", "ssim")),
}
METRIC_LABELS = {"ssim": "1 - SSIM", "nrmse": "NRMSE", "psnr": "1 / PSNR"}


def landscape_summary(
    points: np.ndarray,
    edges: np.ndarray,
    dissimilarity: np.ndarray,
    names: list[str],
    bins: int,
    outputs: np.ndarray | None = None,
    top: float = 0.1,
) -> dict[str, Any]:
    """Where the dissimilarity of neighbour pairs concentrates, per parameter: Spearman's rho of
    dissimilarity against the pair's midpoint, the mean (and its standard error) per ``bins``-th
    of the unit range, and the mean unit coordinate of the ``top`` share of most dissimilar pairs.
    Two controls: rho against the pair's distance in the unit cube and, given the ``outputs``,
    against the pair's mean contrast (the standard deviation of an output over its cells)."""
    midpoints = 0.5 * (points[edges[:, 0]] + points[edges[:, 1]])
    distance = np.linalg.norm(points[edges[:, 0]] - points[edges[:, 1]], axis=1)
    order = np.argsort(dissimilarity)[::-1][: max(1, round(top * len(dissimilarity)))]
    out: dict[str, Any] = {
        "pairs": len(edges),
        "median_pair_distance": float(np.median(distance)),
        "mean": float(dissimilarity.mean()),
        "top_share": float(dissimilarity[order].sum() / dissimilarity.sum()),
        "spearman_pair_distance": float(spearmanr(distance, dissimilarity).statistic),
        "parameters": {},
    }
    if outputs is not None:
        contrast = outputs.reshape(len(outputs), -1).std(axis=1)
        pair_contrast = 0.5 * (contrast[edges[:, 0]] + contrast[edges[:, 1]])
        out["spearman_output_contrast"] = float(spearmanr(pair_contrast, dissimilarity).statistic)
    for j, name in enumerate(names):
        which = np.minimum((midpoints[:, j] * bins).astype(int), bins - 1)
        means, errors = [], []
        for b in range(bins):
            values = dissimilarity[which == b]
            means.append(float(values.mean()) if len(values) else float("nan"))
            errors.append(float(values.std(ddof=1) / np.sqrt(len(values))) if len(values) > 1 else float("nan"))
        out["parameters"][name] = {
            "spearman": float(spearmanr(midpoints[:, j], dissimilarity).statistic),
            "bin_means": means,
            "bin_sem": errors,
            "first_to_last_bin": means[0] / means[-1] if means[-1] > 0 else float("nan"),
            "top_pairs_mean_unit": float(midpoints[order, j].mean()),
        }
    return out


def similarity_study(problem: str, points: int, neighbours: int = 4, bins: int = 5, seed: int = 0) -> dict[str, Any]:
    """The similarity landscapes of ``problem`` (``heat`` or ``burgers``) on ``points`` scrambled
    Sobol' points, one per view of :data:`VIEWS`, summarised per parameter."""
    space, simulate = PROBLEMS[problem]()
    values = SobolSequenceSampler(space, seed=seed).ask(points)
    unit = space.to_unit(values)
    started = time.perf_counter()
    runs = [simulate(v) for v in values]
    outputs = {key: np.stack([run[key] for run in runs]) for key in runs[0]}
    out: dict[str, Any] = {
        "names": space.names,
        "points": points,
        "output_shapes": {key: list(value.shape[1:]) for key, value in outputs.items()},
        "simulate_s": time.perf_counter() - started,
        "views": {},
    }
    midpoints = None
    for output, metric in VIEWS[problem]:
        started = time.perf_counter()
        landscape = similarity_landscape(unit, outputs[output], neighbours=neighbours, metric=metric)
        summary = landscape_summary(
            unit, landscape.edges, landscape.dissimilarity, space.names, bins, outputs=outputs[output]
        )
        summary.update(output=output, metric=metric, landscape_s=time.perf_counter() - started)
        if problem == "burgers":  # the pairs themselves, against viscosity, for the figure
            midpoints = 0.5 * (unit[landscape.edges[:, 0]] + unit[landscape.edges[:, 1]])
            summary["pairs_dissimilarity"] = landscape.dissimilarity
        out["views"][f"{output}_{metric}"] = summary
    if problem == "burgers" and midpoints is not None:
        out["pairs_nu"] = space.from_unit(midpoints)[:, 0]
        out["bin_edges_nu"] = space.from_unit(np.outer(np.linspace(0, 1, bins + 1), np.ones(space.dim)))[:, 0]
    return out


# --------------------------------------------------------------------------- figures
def plot_indices(sensitivity: dict[str, Any], path: Path) -> None:
    """Bar charts of S1 and ST with their intervals, one panel per quantity."""
    names = sensitivity["names"]
    x = np.arange(len(names))
    fig, axes = plt.subplots(1, len(QUANTITIES), figsize=(4.2 * len(QUANTITIES), 3.8), sharey=True)
    for ax, quantity in zip(axes, QUANTITIES):
        q = sensitivity["quantities"][quantity]
        ax.bar(x - 0.2, q["S1"], 0.4, yerr=q["S1_conf"], capsize=3, label="first order S1")
        ax.bar(x + 0.2, q["ST"], 0.4, yerr=q["ST_conf"], capsize=3, label="total order ST")
        ax.axhline(NEGLIGIBLE_ST, color="k", lw=0.7, ls="--")
        ax.set_xticks(x, names, rotation=35, ha="right")
        ax.set_xlabel("renderer parameter")
        ax.set_title(quantity.replace("_", " "))
    axes[0].set_ylabel("Sobol' index (share of output variance, 1)")
    axes[0].legend(fontsize=8)
    fig.suptitle(f"ImageRenderer {sensitivity['size']}x{sensitivity['size']}, {sensitivity['renders']} renders, 95% CI")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def plot_maps(sensitivity: dict[str, Any], path: Path) -> None:
    """Per-pixel S1 and ST maps of the image, one column per parameter (grey: pixels that never change)."""
    names = sensitivity["names"]
    maps = sensitivity["maps"]
    fig, axes = plt.subplots(2, len(names), figsize=(2.2 * len(names) + 1.5, 5.0), squeeze=False, layout="constrained")
    cmap = plt.get_cmap("viridis").copy()
    cmap.set_bad("0.8")
    image = None
    for row, key in enumerate(("S1", "ST")):
        for j, name in enumerate(names):
            ax = axes[row, j]
            image = ax.imshow(np.ma.masked_invalid(maps[key][j]), vmin=0, vmax=1, cmap=cmap)
            ax.set_title(f"{key} {name}", fontsize=9)
            ax.tick_params(labelsize=6)
            if row == 1:
                ax.set_xlabel("pixel column (px)", fontsize=8)
            if j == 0:
                ax.set_ylabel("pixel row (px)", fontsize=8)
    fig.colorbar(image, ax=axes, shrink=0.8, label="Sobol' index of the pixel (1)")
    fig.suptitle("per-pixel Sobol' indices of the rendered image (grey: pixels that never change)")
    fig.savefig(path, dpi=110)
    plt.close(fig)


def plot_surrogate(surrogate: dict[str, Any], path: Path) -> None:
    """Held-out error per design: one point per seed, the median as a bar, per design size."""
    designs = list(surrogate["designs"])
    sizes = list(surrogate["designs"][designs[0]])
    fig, axes = plt.subplots(1, len(sizes), figsize=(5.2 * len(sizes), 4.0), squeeze=False)
    for ax, n in zip(axes[0], sizes):
        for i, method in enumerate(designs):
            stats = surrogate["designs"][method][n]
            ax.plot(np.full(len(stats["per_seed"]), i), stats["per_seed"], "o", ms=4, alpha=0.6, color=f"C{i}")
            ax.plot([i - 0.3, i + 0.3], [stats["median"]] * 2, color=f"C{i}", lw=2.5)
        ax.set_xticks(range(len(designs)), designs, rotation=30, ha="right")
        ax.set_xlabel("design of the training renders")
        ax.set_ylabel("held-out relative L2 error (1)")
        ax.set_title(f"{n} training renders (line: median, dots: seeds)")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def plot_similarity(similarity: dict[str, Any], bins: int, path: Path) -> None:
    """Mean dissimilarity of neighbour pairs per fifth of each parameter's range, one panel per view."""
    problems = list(similarity)
    columns = max(len(similarity[p]["views"]) for p in problems)
    fig, axes = plt.subplots(len(problems), columns, figsize=(5.4 * columns, 3.8 * len(problems)), squeeze=False)
    centres = (np.arange(bins) + 0.5) / bins
    for row, problem in enumerate(problems):
        for col, summary in enumerate(similarity[problem]["views"].values()):
            ax = axes[row, col]
            for name, stats in summary["parameters"].items():
                ax.errorbar(centres, stats["bin_means"], yerr=stats["bin_sem"], marker="o", ms=3, capsize=2, label=name)
            label = METRIC_LABELS[summary["metric"]]
            ax.set_xlabel("pair midpoint, unit coordinate of the parameter (0: low end, 1: high end)", fontsize=8)
            ax.set_ylabel(f"mean {label} of neighbour pairs (1)")
            ax.set_title(f"{problem}, {summary['output'].replace('_', ' ')}: {label}")
            ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def plot_burgers(burgers: dict[str, Any], path: Path) -> None:
    """Burgers: each pair's dissimilarity against viscosity, and final profiles at three viscosities."""
    views = list(burgers["views"].values())
    fig, axes = plt.subplots(1, len(views) + 1, figsize=(5 * (len(views) + 1), 4.0))
    edges = np.asarray(burgers["bin_edges_nu"])
    for ax, summary in zip(axes, views):
        label = METRIC_LABELS[summary["metric"]]
        ax.scatter(burgers["pairs_nu"], summary["pairs_dissimilarity"], s=4, alpha=0.35, label="neighbour pairs")
        means = summary["parameters"]["nu"]["bin_means"]
        ax.step(edges, [*means, means[-1]], where="post", color="k", label="mean per fifth of log ν")
        ax.set_xscale("log")
        ax.set_xlabel("viscosity ν at the pair's midpoint (dimensionless)")
        ax.set_ylabel(f"{label} of the pair (1)")
        ax.set_title(f"{summary['output'].replace('_', ' ')}: {label}")
        ax.legend(fontsize=8)
    simulator = ViscousBurgers(grid=64, steps=8, row=False)
    for nu in (1e-3, 7e-3, 5e-2):
        *_, last = simulator.run({"nu": nu, "amplitude": 1.0, "phase": 0.0})
        axes[-1].plot(simulator.x, last, label=f"ν = {nu:g}")
    axes[-1].set_xlabel("position x (dimensionless)")
    axes[-1].set_ylabel("u at t = 0.5 (dimensionless)")
    axes[-1].set_title("final profiles, amplitude 1, phase 0")
    axes[-1].legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


# --------------------------------------------------------------------------- main
def jsonable(value: Any) -> Any:
    """Arrays to (rounded) lists, recursively."""
    if isinstance(value, dict):
        return {k: jsonable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [jsonable(v) for v in value]
    if isinstance(value, np.ndarray):
        return jsonable(np.round(value, 6).tolist())
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, np.generic):
        return jsonable(value.item())
    return value


def print_tables(results: dict[str, Any]) -> None:
    """The tables of the report."""
    sensitivity = results["renderer_sensitivity"]
    names = sensitivity["names"]
    print("\n(a) Sobol' indices of the renderer, S1 ± 95% CI / ST ± 95% CI (verdict):")
    for quantity in QUANTITIES:
        q = sensitivity["quantities"][quantity]
        print(f"  {quantity}")
        for i, name in enumerate(names):
            print(f"    {name:16s} S1 {q['S1'][i]:6.3f} ± {q['S1_conf'][i]:.3f}   "
                  f"ST {q['ST'][i]:6.3f} ± {q['ST_conf'][i]:.3f}   {q['verdict'][i]}")  # fmt: skip
    surrogate = results["renderer_surrogate"]
    print("\n(a) surrogate of the renderer, held-out relative L2, median [min, max] over seeds (ratio to uniform):")
    for method, per_size in surrogate["designs"].items():
        cells = "  ".join(
            f"n={n}: {s['median']:.3f} [{s['min']:.3f}, {s['max']:.3f}] ({s['median_ratio_to_uniform']:.2f})"
            for n, s in per_size.items()
        )
        print(f"  {method:18s} {cells}")
    print("\n(b) similarity landscapes: Spearman rho of pair dissimilarity with each parameter, "
          "mean per fifth of its range")  # fmt: skip
    for problem, out in results["similarity"].items():
        for view, summary in out["views"].items():
            print(f"  {problem} {view}: {summary['pairs']} pairs, mean {summary['mean']:.4f}, "
                  f"top 10% of pairs carry {100 * summary['top_share']:.0f}%; rho with pair distance "
                  f"{summary['spearman_pair_distance']:+.2f}, with output contrast "
                  f"{summary['spearman_output_contrast']:+.2f}")  # fmt: skip
            for name, stats in summary["parameters"].items():
                bins = " ".join(f"{m:.4f}" for m in stats["bin_means"])
                print(f"    {name:10s} rho {stats['spearman']:+.2f}  fifths {bins}  "
                      f"first/last {stats['first_to_last_bin']:.2f}")  # fmt: skip


def main(argv: list[str] | None = None) -> None:
    """Run the experiment, print its tables, write the JSON and the figures."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="smaller designs, 2 seeds, one design size (< 1 min)")
    parser.add_argument("--seeds", type=whole(), help="how many of the seeds 0, 1, ... to run (default: 5, quick 2)")
    parser.add_argument("--out", type=Path, default=RESULTS, help="folder for the JSON and figures")
    args = parser.parse_args(argv)
    check_out(parser, args.out, folder=True)
    settings = QUICK if args.quick else FULL
    if args.seeds is not None:
        settings = Settings(**{**asdict(settings), "seeds": tuple(range(args.seeds))})
    torch.set_num_threads(1)  # small MLPs: one thread is fastest, and runs stay comparable
    started = time.perf_counter()
    results: dict[str, Any] = {
        "quick": args.quick,
        "settings": asdict(settings),
        "machine": platform.processor() or platform.machine(),
        "negligible_st_below": NEGLIGIBLE_ST,
    }
    print(f"(a) Sobol' analysis of the renderer: {settings.sobol_base} base samples ...")
    sensitivity = renderer_sensitivity(settings.render_size, settings.sobol_base, settings.num_resamples)
    sensitivity["size"] = settings.render_size
    results["renderer_sensitivity"] = sensitivity
    weights = {q: sensitivity["quantities"][q]["ST"] for q in ("mean_intensity", "image")}
    print("(a) surrogates of the renderer per design ...")
    phase = time.perf_counter()
    results["renderer_surrogate"] = surrogate_study(settings, weights)
    results["renderer_surrogate"]["weights"] = {
        q: np.maximum(w, WEIGHT_FLOOR) / np.maximum(w, WEIGHT_FLOOR).mean() for q, w in weights.items()
    }
    results["renderer_surrogate"]["wall_s"] = time.perf_counter() - phase
    print("(b) similarity landscapes ...")
    results["similarity"] = {
        "heat": similarity_study("heat", settings.heat_points, settings.neighbours, settings.bins),
        "burgers": similarity_study("burgers", settings.burgers_points, settings.neighbours, settings.bins),
    }
    results["wall_time_s"] = time.perf_counter() - started
    print_tables(results)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    plot_indices(sensitivity, out / "swap_renderer_indices.png")
    plot_maps(sensitivity, out / "swap_renderer_maps.png")
    plot_surrogate(results["renderer_surrogate"], out / "swap_renderer_surrogate.png")
    plot_similarity(results["similarity"], settings.bins, out / "swap_similarity.png")
    plot_burgers(results["similarity"]["burgers"], out / "swap_burgers_viscosity.png")
    (out / "swap_experiment.json").write_text(json.dumps(jsonable(results), indent=1))
    print(f"\nwrote {out / 'swap_experiment.json'} and swap_*.png in {results['wall_time_s']:.0f} s")


if __name__ == "__main__":
    main()
