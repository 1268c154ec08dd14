"""Memory planning on CPU: engage-memory against PyTorch's own policies, eager and under torch.compile.

Models: a GPT (24 layers, width 256, 4 heads, vocabulary 512, sequence 256, batch 4) and a 4-level U-Net
(64x64 RGB, batch 8, 32 base channels; encoder and decoder lists of three blocks, GroupNorm and SiLU). Every
step is a full training step: forward, loss, backward, AdamW step, ``zero_grad(set_to_none=True)``.

Policies: ``none``; ``per_block`` (``torch.utils.checkpoint`` around every block, non-reentrant); ``sac``
(PyTorch selective activation checkpointing per block through ``create_selective_checkpoint_contexts``:
matmul, attention and convolution outputs ``MUST_SAVE``, everything else ``PREFER_RECOMPUTE``); ``compile``
and ``compile_0.5`` / ``compile_0.1`` (``torch.compile`` with ``torch._functorch.config.activation_memory_budget``
1.0, 0.5, 0.1); engage-memory eager (``engage@<policy>``) and compiled (``engage_compiled@<policy>``) with
the budget set to that policy's measured peak, and at the smallest feasible budget (``floor``). Eager plans
are compared with eager policies, compiled plans with compiled ones.

Peak memory, two ways: the meter's peak (engage-memory's ``MemoryMeter``: live tensor bytes at every ATen op,
weights, optimizer state and batch included; eager only, compiled code cannot run under it) and the RSS peak
(VmHWM reset through ``/proc/self/clear_refs`` before the step; glibc's mmap threshold is fixed at 64 KiB for
the whole run, so that every tensor is its own mapping and freed memory leaves the RSS), reported as the live
bytes at the step's start plus the RSS growth over the step. The meter's peak sets the eager budgets, the RSS
peak (less what the RSS holds beyond tensors, the median gap between the two on the eager policies) the
compiled ones. Time: process CPU time (all threads) and wall time per step. Each round runs every policy in
an order that rotates every round: one step for the RSS peak, one untimed step, ``--steps`` timed steps. A
ratio is the median over rounds of the round's ENGAGE median over the reference's.

Also: predicted against measured peak and step time of every plan, profiling and solving time, and solving
a 96-block chain (the GPT's profile repeated four times) with the DP and CP-SAT solvers.

Run (2 cores shared with other work: one model per run keeps each run under 15 minutes)::

    nice -n 10 python benchmarks/memory_cpu.py --model gpt    # about 12 minutes on 2 cores
    nice -n 10 python benchmarks/memory_cpu.py --model unet   # about 9 minutes
    nice -n 10 python benchmarks/memory_cpu.py --quick        # both models, small, 2 rounds: under 5 minutes

Each run updates its models' entries in ``benchmarks/results/memory_cpu.json``
(``memory_cpu_quick.json`` with ``--quick``) and prints a table.
"""

from __future__ import annotations

import argparse
import contextlib
import copy
import ctypes
import functools
import gc
import json
import os
import platform
import statistics
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

# Before torch loads: one compile worker, so that no background process competes for the two cores.
os.environ.setdefault("TORCHINDUCTOR_COMPILE_THREADS", "1")

import torch
import torch._functorch.config as functorch_config
import torch.nn.functional as F
from _cli import check_out, whole
from memory_gpt import Layer  # the decoder layer of memory_gpt.py beside this script
from torch import nn
from torch.utils.checkpoint import CheckpointPolicy, checkpoint, create_selective_checkpoint_contexts

from engage.memory import (
    CpSatSolver,
    Decision,
    DynamicProgrammingSolver,
    InfeasibleBudgetError,
    MemoryMeter,
    MemoryPlanner,
    Plan,
    Profile,
    find_blocks,
)

RESULTS = Path(__file__).parent / "results"
MIB = 2**20
#: compiled PyTorch policies: name -> torch._functorch.config.activation_memory_budget
COMPILED = {"compile": 1.0, "compile_0.5": 0.5, "compile_0.1": 0.1}


# ----------------------------------------------------------------------------------------------- models


class GPT(nn.Module):
    def __init__(self, layers: int, d: int, heads: int, vocab: int, seq: int) -> None:
        super().__init__()
        self.embed, self.position = nn.Embedding(vocab, d), nn.Embedding(seq, d)
        self.layers = nn.ModuleList([Layer(d, heads) for _ in range(layers)])
        self.norm, self.unembed = nn.LayerNorm(d), nn.Linear(d, vocab, bias=False)

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:
        h = self.embed(tokens) + self.position(torch.arange(tokens.shape[1], device=tokens.device))
        for layer in self.layers:
            h = layer(h)
        return self.unembed(self.norm(h))


def _conv(cin: int, cout: int, stride: int = 1) -> list[nn.Module]:
    return [nn.Conv2d(cin, cout, 3, stride=stride, padding=1), nn.GroupNorm(8, cout), nn.SiLU()]


class Down(nn.Module):
    def __init__(self, cin: int, cout: int) -> None:
        super().__init__()
        self.body = nn.Sequential(*_conv(cin, cout, 2), *_conv(cout, cout))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.body(x)


class Up(nn.Module):
    def __init__(self, cin: int, cout: int) -> None:
        super().__init__()
        self.reduce = nn.Conv2d(cin, cout, 1)
        self.body = nn.Sequential(*_conv(2 * cout, cout), *_conv(cout, cout))

    def forward(self, x: torch.Tensor, skip: torch.Tensor) -> torch.Tensor:
        return self.body(torch.cat([F.interpolate(self.reduce(x), scale_factor=2.0), skip], dim=1))


class UNet(nn.Module):
    """Four resolution levels: three down blocks (encoder), a middle block, three up blocks (decoder)."""

    def __init__(self, c: int, levels: int = 4) -> None:
        super().__init__()
        self.stem = nn.Sequential(*_conv(3, c))
        self.encoder = nn.ModuleList([Down(c * 2**i, c * 2 ** (i + 1)) for i in range(levels - 1)])
        width = c * 2 ** (levels - 1)
        self.middle = nn.Sequential(*_conv(width, width))
        self.decoder = nn.ModuleList([Up(c * 2 ** (i + 1), c * 2**i) for i in reversed(range(levels - 1))])
        self.head = nn.Conv2d(c, 3, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.stem(x)
        skips = []
        for down in self.encoder:
            skips.append(x)
            x = down(x)
        x = self.middle(x)
        for up in self.decoder:
            x = up(x, skips.pop())
        return self.head(x)


SHAPES = {
    "gpt": {"layers": 24, "d": 256, "heads": 4, "vocab": 512, "seq": 256, "batch": 4},
    "unet": {"channels": 32, "levels": 4, "size": 64, "batch": 8},
}
QUICK_SHAPES = {
    "gpt": {"layers": 4, "d": 256, "heads": 4, "vocab": 512, "seq": 256, "batch": 4},
    "unet": {"channels": 16, "levels": 4, "size": 64, "batch": 8},
}


def build(name: str, shape: dict) -> tuple[nn.Module, tuple[torch.Tensor, ...], Callable[..., torch.Tensor]]:
    """The model, its batch and its loss ``loss(model, *batch)``, seeded."""
    torch.manual_seed(0)
    if name == "gpt":
        model = GPT(shape["layers"], shape["d"], shape["heads"], shape["vocab"], shape["seq"])
        tokens = torch.randint(0, shape["vocab"], (shape["batch"], shape["seq"]))

        def gpt_loss(m: nn.Module, tokens: torch.Tensor) -> torch.Tensor:
            return F.cross_entropy(m(tokens).flatten(0, 1), tokens.flatten())

        return model, (tokens,), gpt_loss
    model = UNet(shape["channels"], shape["levels"])
    size, batch = shape["size"], shape["batch"]
    images, target = torch.randn(batch, 3, size, size), torch.randn(batch, 3, size, size)

    def unet_loss(m: nn.Module, images: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        return F.mse_loss(m(images), target)

    return model, (images, target), unet_loss


# ------------------------------------------------------------------------------------- PyTorch policies

_SAVED_OPS = {
    getattr(torch.ops.aten, name).default
    for name in (
        "mm",
        "addmm",
        "bmm",
        "baddbmm",
        "convolution",
        "_scaled_dot_product_flash_attention_for_cpu",
        "_scaled_dot_product_efficient_attention",
        "_scaled_dot_product_flash_attention",
    )
    if hasattr(torch.ops.aten, name)
}


def _sac_policy(ctx: Any, op: Any, *args: Any, **kwargs: Any) -> CheckpointPolicy:
    """PyTorch's documented SAC recipe: save the matmul-like ops' outputs, recompute everything else."""
    return CheckpointPolicy.MUST_SAVE if op in _SAVED_OPS else CheckpointPolicy.PREFER_RECOMPUTE


def _checkpointed(original: Callable[..., Any], selective: bool, *args: Any, **kwargs: Any) -> Any:
    if selective:
        context = functools.partial(create_selective_checkpoint_contexts, _sac_policy)
        return checkpoint(original, *args, use_reentrant=False, context_fn=context, **kwargs)
    return checkpoint(original, *args, use_reentrant=False, **kwargs)


class BlockPatch:
    """Per-block ``torch.utils.checkpoint`` (whole or selective) on the model's blocks, removable."""

    def __init__(self, blocks: list[tuple[str, nn.Module]], selective: bool) -> None:
        self.blocks, self.selective = blocks, selective

    def install(self) -> None:
        for _, module in self.blocks:
            module.forward = functools.partial(_checkpointed, module.forward, self.selective)

    def remove(self) -> None:
        for _, module in self.blocks:
            del module.forward


# ------------------------------------------------------------------------------------------- measuring

_LIBC = ctypes.CDLL("libc.so.6") if platform.system() == "Linux" else None
_M_MMAP_THRESHOLD = -3


def _status_kib(key: str) -> int:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith(key + ":"):
                return int(line.split()[1])
    raise KeyError(key)


def _rss_supported() -> bool:
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
        return _LIBC is not None and _status_kib("VmHWM") > 0
    except OSError:
        return False


def _malloc_setup() -> None:
    """Every allocation of 64 KiB or more is its own mapping, unmapped when freed (glibc's threshold is fixed
    instead of growing): the RSS follows the live tensors instead of a heap that keeps what it once held."""
    _LIBC.mallopt(_M_MMAP_THRESHOLD, 64 * 1024)


@contextlib.contextmanager
def _rss_window() -> Iterator[dict]:
    """``out["growth"]``: bytes the RSS peaked above its value at the start."""
    out: dict = {}
    gc.collect()
    _LIBC.malloc_trim(0)
    with open("/proc/self/clear_refs", "w") as f:
        f.write("5")
    start = _status_kib("VmRSS")
    yield out
    out["growth"] = max(_status_kib("VmHWM") - start, 0) * 1024


def _storage_bytes(tensors: list[torch.Tensor]) -> int:
    seen: dict[int, int] = {}
    for t in tensors:
        storage = t.untyped_storage()
        seen[storage.data_ptr()] = storage.nbytes()
    return sum(seen.values())


class Runner:
    """One policy: a model (shared by the eager policies, own copy for compiled ones), its optimizer and how
    to switch the policy on before its steps."""

    def __init__(
        self,
        name: str,
        mode: str,
        model: nn.Module,
        opt: torch.optim.Optimizer,
        batch: tuple[torch.Tensor, ...],
        loss_fn: Callable[..., torch.Tensor],
        activate: Callable[[], None] = lambda: None,
        budget: float | None = None,
    ) -> None:
        self.name, self.mode = name, mode
        self.model, self.opt, self.batch, self.loss_fn = model, opt, batch, loss_fn
        self.activate = activate
        self.budget = budget  # activation_memory_budget of a compiled policy
        self.cpu: list[float] = []
        self.wall: list[float] = []
        self.rss_growth: list[int] = []
        self.meter_peak: int | None = None
        self.info: dict[str, Any] = {}

    def _config(self) -> contextlib.AbstractContextManager:
        if self.budget is None:
            return contextlib.nullcontext()
        return functorch_config.patch(activation_memory_budget=self.budget)

    def step(self) -> None:
        with self._config():
            self.loss_fn(self.model, *self.batch).backward()
        self.opt.step()
        self.opt.zero_grad(set_to_none=True)

    def live_at_start(self) -> int:
        """Bytes alive when a step starts: weights, optimizer state, batch (no gradients: set to None)."""
        tensors = [p for p in self.model.parameters()]
        tensors += [v for s in self.opt.state.values() for v in s.values() if isinstance(v, torch.Tensor)]
        return _storage_bytes([*tensors, *self.batch])

    def timed(self, steps: int) -> None:
        """One untimed step (the heap and caches after the other policies' steps), then ``steps`` timed."""
        self.activate()
        self.step()
        cpu, wall = [], []
        for _ in range(steps):
            c0, w0 = time.process_time(), time.perf_counter()
            self.step()
            wall.append(time.perf_counter() - w0)
            cpu.append(time.process_time() - c0)
        self.cpu.append(statistics.median(cpu))
        self.wall.append(statistics.median(wall))

    def measure_rss(self) -> None:
        self.activate()
        with _rss_window() as out:
            self.step()
        self.rss_growth.append(out["growth"])

    def measure_meter(self) -> int:
        self.activate()
        with MemoryMeter(self.model, self.opt, *self.batch) as meter:
            self.step()
        self.meter_peak = meter.peak
        return meter.peak

    @property
    def rss_peak(self) -> int | None:
        """Live bytes at the step's start plus the median RSS growth over the step."""
        return self.live_at_start() + int(statistics.median(self.rss_growth)) if self.rss_growth else None


# --------------------------------------------------------------------------------------------- running


def _compiled(model: nn.Module, budget: float) -> nn.Module:
    """``torch.compile`` with Inductor under ``activation_memory_budget``, through a backend of its own: dynamo
    keeps one compiled graph per backend, so that models of one class compiled for different budgets do not
    share a graph (parameters are graph inputs, so the module instance alone does not tell them apart)."""
    from torch._inductor.compile_fx import compile_fx

    def backend(gm: torch.fx.GraphModule, example_inputs: list) -> Any:
        with functorch_config.patch(activation_memory_budget=budget):
            return compile_fx(gm, example_inputs)

    return torch.compile(model, backend=backend)


def _graphs() -> int:
    from torch._dynamo.utils import counters

    return int(counters["stats"]["unique_graphs"])


def _median_ratio(a: list[float], b: list[float]) -> float:
    return statistics.median(x / y for x, y in zip(a, b))


def _chain_of(profile: Profile, times: int) -> Profile:
    """The profile's blocks repeated ``times`` times as one chain (a deeper model of the same blocks)."""
    data = profile.to_dict()
    n = len(profile.blocks)
    blocks = [dict(b, name=f"{b['name']}#{k}") for k in range(times) for b in data["blocks"]]
    data.update(blocks=blocks, fwd_order=list(range(n * times)), bwd_order=list(range(n * times))[::-1], modules=[])
    return Profile.from_dict(data)


def plan_96(profile: Profile) -> dict:
    """Solving time of a 96-block chain with each solver, at a budget between the floor and keeping all."""
    chain = _chain_of(profile, max(1, 96 // len(profile.blocks)))
    n = len(chain.blocks)
    keep = chain.predict_peak([Decision.KEEP] * n)
    out: dict[str, Any] = {"blocks": n}
    plans = {}
    budget = (DynamicProgrammingSolver().minimum_budget(chain) + keep) // 2
    out["budget_bytes"] = budget
    for solver in (DynamicProgrammingSolver(), CpSatSolver()):
        started = time.perf_counter()
        plan = solver.solve(chain, budget)
        out[f"{solver.name}_solve_s"] = round(time.perf_counter() - started, 3)
        started = time.perf_counter()
        out[f"{solver.name}_floor_bytes"] = solver.minimum_budget(chain)
        out[f"{solver.name}_floor_s"] = round(time.perf_counter() - started, 3)
        out[f"{solver.name}_predicted_step_s"] = round(plan.predicted_time, 4)
        plans[solver.name] = plan
    out["same_predicted_time_within_1pct"] = (
        abs(plans["dp"].predicted_time - plans["cpsat"].predicted_time) <= 0.01 * plans["dp"].predicted_time
    )
    return out


def run_model(
    name: str, shape: dict, rounds: int, steps: int, compiled_policies: dict[str, float], compiled_floor: bool
) -> dict:
    started = time.perf_counter()
    base, batch, loss_fn = build(name, shape)
    blocks = find_blocks(base)
    eager_model = base
    eager_opt = torch.optim.AdamW(eager_model.parameters(), lr=1e-4)
    runners: list[Runner] = []
    state = {"patch": None}

    def use(patch: Any) -> Callable[[], None]:
        def activate() -> None:
            if state["patch"] is patch:
                return
            if state["patch"] is not None:
                state["patch"].remove()
            if patch is not None:
                patch.install()
            state["patch"] = patch

        return activate

    eager = {
        "none": use(None),
        "per_block": use(BlockPatch(blocks, selective=False)),
        "sac": use(BlockPatch(blocks, selective=True)),
    }
    for policy, activate in eager.items():
        runners.append(Runner(policy, "eager", eager_model, eager_opt, batch, loss_fn, activate))
    compile_s: dict[str, float] = {}
    for policy, budget in compiled_policies.items():
        model = copy.deepcopy(base)
        runners.append(
            Runner(
                policy,
                "compiled",
                _compiled(model, budget),
                torch.optim.AdamW(model.parameters(), lr=1e-4),
                batch,
                loss_fn,
                budget=budget,
            )
        )
    by_name = {r.name: r for r in runners}

    # Warm-up (and compilation), then the PyTorch policies' peaks that set ENGAGE's budgets.
    for runner in runners:
        runner.activate()
        w0 = time.perf_counter()
        runner.step()
        if runner.mode == "compiled":
            compile_s[runner.name] = round(time.perf_counter() - w0, 1)
        runner.step()
    for runner in runners:
        if runner.mode == "eager":
            runner.measure_meter()
        runner.measure_rss()
    print(f"[{name}] baselines ready after {time.perf_counter() - started:.0f} s", flush=True)

    # ENGAGE: one profile on the eager model, plans at each policy's peak and at the floor.
    use(None)()
    planner = MemoryPlanner(eager_model)
    engage_patch = _EngagePatch(planner)

    def profile_step() -> None:
        loss_fn(eager_model, *batch).backward()

    profile = planner.profile(profile_step, optimizers=[eager_opt], roots=list(batch))
    planner.runtime.remove()
    floor = planner.minimum_budget(profile)
    targets = [("per_block", by_name["per_block"].meter_peak), ("sac", by_name["sac"].meter_peak), ("floor", floor)]
    # Compiled budgets come from RSS peaks; the RSS holds more than tensors (allocator, library buffers): take
    # off what it holds above the meter's peak on the eager policies, so that both budgets mean the same.
    rss_overhead = int(statistics.median(r.rss_peak - r.meter_peak for r in runners if r.mode == "eager"))
    compiled_targets = [(p, by_name[p].rss_peak - rss_overhead) for p in compiled_policies if p != "compile"] + (
        [("floor", floor)] if compiled_policies and compiled_floor else []
    )
    plans: dict[str, Plan | str] = {}
    solve_s: dict[str, float] = {}
    for label, budget in [*targets, *[(f"compiled:{p}", b) for p, b in compiled_targets]]:
        engage_patch.install()
        w0 = time.perf_counter()
        try:
            plans[label] = planner.plan(int(budget), profile=profile)
        except InfeasibleBudgetError as exc:
            plans[label] = str(exc)
        solve_s[label] = round(time.perf_counter() - w0, 3)
    engage_patch.remove()
    for label, budget in targets:
        plan = plans[label]
        runner = Runner(
            f"engage@{label}",
            "eager",
            eager_model,
            eager_opt,
            batch,
            loss_fn,
            use(_EngagePatch(planner, plan if isinstance(plan, Plan) else None)),
        )
        runner.info = _plan_info(plan, budget)
        if isinstance(plan, Plan):
            runners.append(runner)
            runner.activate()
            runner.step()
            runner.measure_meter()
            runner.measure_rss()
        else:
            runner.info["skipped"] = True
            runners.append(runner)
    for label, budget in compiled_targets:
        plan = plans[f"compiled:{label}"]
        model = copy.deepcopy(base)
        runner_name = f"engage_compiled@{label}"
        info = _plan_info(plan, budget)
        if not isinstance(plan, Plan):
            skipped = Runner(runner_name, "compiled", model, eager_opt, batch, loss_fn)
            skipped.info = {**info, "skipped": True}
            runners.append(skipped)
            continue
        compiled_planner = MemoryPlanner(model)
        compiled_planner.apply(plan)
        runner = Runner(
            runner_name,
            "compiled",
            _compiled(model, 1.0),
            torch.optim.AdamW(model.parameters(), lr=1e-4),
            batch,
            loss_fn,
        )
        runner.info = info
        w0 = time.perf_counter()
        runner.step()
        compile_s[runner_name] = round(time.perf_counter() - w0, 1)
        runner.step()
        runner.measure_rss()
        runners.append(runner)
    use(None)()
    print(f"[{name}] plans ready after {time.perf_counter() - started:.0f} s", flush=True)

    # Interleaved rounds: per policy the RSS step (it empties the heap), a warm-up step, the timed steps.
    active = [r for r in runners if not r.info.get("skipped")]
    graphs = _graphs()
    for rnd in range(rounds):
        order = active[rnd % len(active) :] + active[: rnd % len(active)]
        for runner in order:
            runner.measure_rss()
            runner.timed(steps)
        print(f"[{name}] round {rnd + 1}/{rounds} after {time.perf_counter() - started:.0f} s", flush=True)
    use(None)()

    rows = [_row(r, by_name, rss_overhead) for r in runners]
    return {
        "shape": shape,
        "blocks": [n for n, _ in blocks],
        "rounds": rounds,
        "steps_per_round": steps,
        "profiling_s": round(profile.profiling_seconds, 2),
        "solve_s": solve_s,
        "compile_s": compile_s,
        "graphs_compiled_during_rounds": _graphs() - graphs,
        "rss_overhead_bytes": rss_overhead,
        "floor_bytes": floor,
        "planning_96_blocks": plan_96(profile) if name == "gpt" else None,
        "rows": rows,
        "targets": _targets(rows),
        "seconds": round(time.perf_counter() - started, 1),
    }


class _EngagePatch:
    """Switches engage-memory's runtime on the shared eager model on (with a plan) or off."""

    def __init__(self, planner: MemoryPlanner, plan: Plan | None = None) -> None:
        self.planner, self.plan = planner, plan

    def install(self) -> None:
        self.planner.runtime.install()
        if self.plan is not None:
            self.planner.apply(self.plan)

    def remove(self) -> None:
        self.planner.runtime.remove()


def _plan_info(plan: Plan | str, budget: float | None) -> dict:
    if not isinstance(plan, Plan):
        return {"budget_bytes": int(budget or 0), "error": plan}
    return {
        "budget_bytes": int(plan.budget),
        "predicted_peak_bytes": plan.predicted_peak,
        "predicted_step_s": round(plan.predicted_time, 4),
        "decisions": plan.counts(),
        "plan": [d.value for d in plan.decisions],
    }


#: the reference of each ENGAGE row: the policy whose peak is its budget (the floor: per-block checkpoint)
def _reference(row_name: str) -> str | None:
    if "@" not in row_name:
        return None
    kind, target = row_name.split("@")
    if target == "floor":
        return "per_block" if kind == "engage" else "compile_0.1"
    return target


def _row(runner: Runner, by_name: dict[str, Runner], rss_overhead: int) -> dict:
    row: dict[str, Any] = {"policy": runner.name, "mode": runner.mode, **runner.info}
    if runner.info.get("skipped"):
        return row
    row.update(
        meter_peak_bytes=runner.meter_peak,
        rss_peak_bytes=runner.rss_peak,
        rss_growth_bytes=int(statistics.median(runner.rss_growth)),
        live_at_start_bytes=runner.live_at_start(),
        step_cpu_s=round(statistics.median(runner.cpu), 4),
        step_wall_s=round(statistics.median(runner.wall), 4),
        rounds_cpu_s=[round(x, 4) for x in runner.cpu],
        rounds_wall_s=[round(x, 4) for x in runner.wall],
    )
    reference = _reference(runner.name)
    if reference is not None and reference in by_name:
        ref = by_name[reference]
        row["reference"] = reference
        row["cpu_ratio"] = round(_median_ratio(runner.cpu, ref.cpu), 4)
        row["wall_ratio"] = round(_median_ratio(runner.wall, ref.wall), 4)
        row["reference_meter_peak_bytes"] = ref.meter_peak
        row["reference_rss_peak_bytes"] = ref.rss_peak
    if "predicted_peak_bytes" in row:
        # Compiled code cannot run under the meter: its RSS peak less what the RSS holds beyond tensors.
        measured = runner.meter_peak if runner.meter_peak is not None else runner.rss_peak - rss_overhead
        row["predicted_over_measured_peak"] = round(row["predicted_peak_bytes"] / measured, 4)
        row["predicted_over_measured_step"] = round(row["predicted_step_s"] / row["step_wall_s"], 4)
    return row


def _targets(rows: list[dict]) -> list[dict]:
    """The issue's targets, each with the figure and whether it was met."""
    out = []
    for row in rows:
        if "@" not in row["policy"] or row.get("skipped"):
            if "@" in row["policy"]:
                out.append({"target": f"{row['policy']}: a plan exists", "met": False, "figure": row.get("error")})
            continue
        ref, kind = row.get("reference"), row["policy"].split("@")[1]
        if kind == "per_block" and row["mode"] == "eager":
            out.append(
                {
                    "target": f"{row['policy']}: step <= 0.9x per_block",
                    "figure": row["cpu_ratio"],
                    "met": row["cpu_ratio"] <= 0.9,
                }
            )
        if kind != "floor":
            out.append(
                {
                    "target": f"{row['policy']}: step <= 1.03x {ref}",
                    "figure": row["cpu_ratio"],
                    "met": row["cpu_ratio"] <= 1.03,
                }
            )
            peak, ref_peak = (
                (row["meter_peak_bytes"], row["reference_meter_peak_bytes"])
                if row["mode"] == "eager"
                else (row["rss_peak_bytes"], row["reference_rss_peak_bytes"])
            )
            out.append(
                {
                    "target": f"{row['policy']}: peak <= {ref}'s peak",
                    "figure": round(peak / ref_peak, 4),
                    "met": peak <= ref_peak,
                }
            )
        out.append(
            {
                "target": f"{row['policy']}: predicted peak within 10%",
                "figure": row["predicted_over_measured_peak"],
                "met": abs(row["predicted_over_measured_peak"] - 1) <= 0.10,
            }
        )
        out.append(
            {
                "target": f"{row['policy']}: predicted step within 15%",
                "figure": row["predicted_over_measured_step"],
                "met": abs(row["predicted_over_measured_step"] - 1) <= 0.15,
            }
        )
    return out


def _mib(x: float | None) -> str:
    return "-" if x is None else f"{x / MIB:.1f}"


def print_table(name: str, result: dict) -> None:
    header = (
        "policy",
        "mode",
        "budget MiB",
        "meter peak",
        "RSS peak",
        "pred peak",
        "CPU s",
        "wall s",
        "pred s",
        "CPU ratio",
        "vs",
    )
    print(f"\n{name}: peaks in MiB; time per step (median); ratio: median over rounds of ENGAGE/reference")
    print(" | ".join(header))
    for row in result["rows"]:
        if row.get("skipped"):
            print(f"{row['policy']} | {row['mode']} | {_mib(row.get('budget_bytes'))} | {row.get('error', '')}")
            continue
        print(
            " | ".join(
                [
                    row["policy"],
                    row["mode"],
                    _mib(row.get("budget_bytes")),
                    _mib(row["meter_peak_bytes"]),
                    _mib(row["rss_peak_bytes"]),
                    _mib(row.get("predicted_peak_bytes")),
                    f"{row['step_cpu_s']:.3f}",
                    f"{row['step_wall_s']:.3f}",
                    f"{row['predicted_step_s']:.3f}" if "predicted_step_s" in row else "-",
                    f"{row['cpu_ratio']:.3f}" if "cpu_ratio" in row else "-",
                    row.get("reference", "-"),
                ]
            )
        )
    for target in result["targets"]:
        print(f"{'met   ' if target['met'] else 'missed'} {target['target']}: {target['figure']}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", choices=["gpt", "unet", "all"], default="all", help="which model (default both)")
    parser.add_argument(
        "--quick", action="store_true", help="4-layer GPT, 16-channel U-Net, 2 rounds, 1 step, compiled at 0.1 only"
    )
    parser.add_argument("--rounds", type=whole(), default=None, help="interleaved rounds (default 5; quick 2)")
    parser.add_argument(
        "--steps", type=whole(), default=None, help="timed steps per policy and round (default 2; quick 1)"
    )
    parser.add_argument("--no-compile", action="store_true", help="leave out the torch.compile rows")
    parser.add_argument(
        "--out",
        type=Path,
        default=None,
        help="JSON to update (default benchmarks/results/memory_cpu.json; quick: memory_cpu_quick.json)",
    )
    args = parser.parse_args()
    rounds = args.rounds or (2 if args.quick else 5)
    steps = args.steps or (1 if args.quick else 2)
    if not _rss_supported():
        parser.error("the RSS peak needs Linux (/proc/self/clear_refs and glibc's mallopt)")
    out = check_out(parser, args.out or RESULTS / ("memory_cpu_quick.json" if args.quick else "memory_cpu.json"))
    _malloc_setup()
    torch._dynamo.config.cache_size_limit = torch._dynamo.config.recompile_limit = 64
    shapes = QUICK_SHAPES if args.quick else SHAPES
    names = ["gpt", "unet"] if args.model == "all" else [args.model]
    result = json.loads(out.read_text()) if out.exists() else {}
    result.setdefault("models", {})
    for name in names:
        compiled = {} if args.no_compile else {"compile_0.1": 0.1} if args.quick else dict(COMPILED)
        model_result = run_model(name, shapes[name], rounds, steps, compiled, compiled_floor=not args.quick)
        model_result["machine"] = {
            "python": platform.python_version(),
            "torch": torch.__version__,
            "cpus": os.cpu_count(),
            "threads": torch.get_num_threads(),
            "platform": platform.platform(),
            "load_average": [round(x, 2) for x in os.getloadavg()],
        }
        model_result["settings"] = {
            "quick": args.quick,
            "rounds": rounds,
            "steps": steps,
            "compile": not args.no_compile,
        }
        result["models"][name] = model_result
        out.parent.mkdir(parents=True, exist_ok=True)
        out.write_text(json.dumps(result, indent=1))
        print_table(name, model_result)


if __name__ == "__main__":
    main()
