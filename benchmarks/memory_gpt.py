"""Memory planning on a GPT-2-small-shaped model: PyTorch's own policies against engage-memory's plans.

Shape and settings follow the project's reference figures (12 layers, d=768, 12 heads, vocabulary 50257,
batch 16, sequence 1024, AdamW, bf16 autocast; on one H100 the unplanned step peaks at 18.01 GiB and
takes 80.2 ms, per-block checkpointing 13.33 GiB at 93.5 ms). Every row of one run is measured on the same
device. On CPU (``--device cpu --small``) memory is counted with engage-memory's MemoryMeter.

    python benchmarks/memory_gpt.py --device cuda            # GPU figures
    python benchmarks/memory_gpt.py --device cpu --small     # CI-sized check of budget adherence
"""

from __future__ import annotations

import argparse
import contextlib
import copy
import dataclasses
import json
import statistics
import sys
import tempfile
import time
from pathlib import Path

import torch
import torch.nn.functional as F
from _cli import check_out
from torch import nn
from torch.utils.checkpoint import checkpoint, checkpoint_sequential

from engage.memory import (
    Decision,
    InfeasibleBudgetError,
    MemoryMeter,
    MemoryPlanner,
    Plan,
    Profile,
    chunked_cross_entropy,
)
from engage.memory.decisions import ALL_DECISIONS

FULL = {"layers": 12, "d": 768, "heads": 12, "vocab": 50257, "seq": 1024, "batch": 16}
SMALL = {"layers": 6, "d": 128, "heads": 4, "vocab": 512, "seq": 128, "batch": 4}
ACTIVATION_HEAVY = {"vocab": 8192, "seq": 2048}


class Layer(nn.Module):
    """Pre-norm decoder layer: causal self-attention then a 4x MLP, both residual."""

    def __init__(self, d: int, heads: int) -> None:
        super().__init__()
        self.heads = heads
        self.norm_attn, self.norm_mlp = nn.LayerNorm(d), nn.LayerNorm(d)
        self.to_qkv, self.attn_out = nn.Linear(d, 3 * d), nn.Linear(d, d)
        self.mlp_in, self.mlp_out = nn.Linear(d, 4 * d), nn.Linear(4 * d, d)

    def forward(self, h: torch.Tensor) -> torch.Tensor:
        n, t, d = h.shape
        qkv = self.to_qkv(self.norm_attn(h)).reshape(n, t, 3, self.heads, d // self.heads).permute(2, 0, 3, 1, 4)
        ctx = F.scaled_dot_product_attention(qkv[0], qkv[1], qkv[2], is_causal=True)
        h = h + self.attn_out(ctx.transpose(1, 2).reshape(n, t, d))
        return h + self.mlp_out(F.gelu(self.mlp_in(self.norm_mlp(h))))


class Decoder(nn.Module):
    """Token and position embeddings, a stack of layers, final norm and an untied output projection."""

    def __init__(self, layers: int, d: int, heads: int, vocab: int, seq: int, policy: str = "none") -> None:
        super().__init__()
        self.embed, self.position = nn.Embedding(vocab, d), nn.Embedding(seq, d)
        self.layers = nn.Sequential(*[Layer(d, heads) for _ in range(layers)])
        self.norm, self.unembed = nn.LayerNorm(d), nn.Linear(d, vocab, bias=False)
        self.policy = policy
        self.loss_chunks = 1

    def forward(self, tokens: torch.Tensor, targets: torch.Tensor | None = None) -> torch.Tensor:
        """Logits; with ``targets`` and ``loss_chunks > 1``, the chunked loss instead (no full logits)."""
        h = self.embed(tokens) + self.position(torch.arange(tokens.shape[1], device=tokens.device))
        if self.policy == "per_block":
            for layer in self.layers:
                h = checkpoint(layer, h, use_reentrant=False)
        elif self.policy.startswith("sequential_"):
            h = checkpoint_sequential(self.layers, int(self.policy.split("_")[1]), h, use_reentrant=False)
        else:
            h = self.layers(h)
        if targets is not None and self.loss_chunks > 1:
            return chunked_cross_entropy(self.norm(h), self.unembed, targets, chunks=self.loss_chunks)
        return self.unembed(self.norm(h))


def _loss(model: nn.Module, tokens: torch.Tensor, device: str) -> torch.Tensor:
    with torch.autocast(device, dtype=torch.bfloat16):
        if getattr(model, "loss_chunks", 1) > 1:
            return model(tokens, tokens)
        logits = model(tokens)
        return F.cross_entropy(logits.float().flatten(0, 1), tokens.flatten())


def _measure(model: nn.Module, tokens: torch.Tensor, device: str, steps: int, warm: int) -> dict:
    """Peak bytes and median step time of full training steps (forward, backward, AdamW)."""
    opt = torch.optim.AdamW(model.parameters(), lr=1e-4, fused=device == "cuda")
    times, peak = [], 0
    # On CPU one extra, untimed step runs under the meter (its per-op bookkeeping would skew the clock).
    for i in range(steps + (device == "cpu")):
        meter = MemoryMeter(model, opt, tokens) if device == "cpu" and i == steps else None
        ctx = meter if meter is not None else contextlib.nullcontext()
        if device == "cuda":
            torch.cuda.synchronize()
            torch.cuda.reset_peak_memory_stats()
        start = time.perf_counter()
        with ctx:
            _loss(model, tokens, device).backward()
            opt.step()
            opt.zero_grad(set_to_none=True)
        if device == "cuda":
            torch.cuda.synchronize()
            peak = max(peak, torch.cuda.max_memory_allocated())
        if meter is not None:
            peak = meter.peak
        if warm <= i < steps:
            times.append(time.perf_counter() - start)
    return {
        "peak_GiB": round(peak / 2**30, 4),
        "peak_bytes": int(peak),
        "step_ms": round(1000 * statistics.median(times), 2),
    }


def _profile(model: nn.Module, tokens: torch.Tensor, device: str) -> tuple[MemoryPlanner, Profile, float]:
    # On CUDA the plans may also offload saved activations to host memory (asked for by name).
    decisions = [*ALL_DECISIONS, Decision.OFFLOAD] if device == "cuda" else list(ALL_DECISIONS)
    planner = MemoryPlanner(model, device=device, decisions=decisions)
    opt = torch.optim.AdamW(model.parameters(), lr=1e-4)
    started = time.perf_counter()
    profile = planner.profile(lambda: _loss(model, tokens, device).backward(), optimizers=[opt], roots=[tokens])
    return planner, profile, time.perf_counter() - started


def run(args: argparse.Namespace) -> dict:
    shape = dict(SMALL if args.small else FULL)
    if args.activation_heavy:
        shape.update(ACTIVATION_HEAVY if not args.small else {"vocab": 256, "seq": 256})
    device = args.device
    torch.manual_seed(0)
    steps, warm = (3, 1) if args.small else (12, 4)
    tokens = torch.randint(0, shape["vocab"], (shape["batch"], shape["seq"]), device=device)
    dims = {k: shape[k] for k in ("layers", "d", "heads", "vocab", "seq")}
    base = Decoder(**dims).to(device)
    rows: list[dict] = []

    def record(name: str, model: nn.Module, **extra) -> dict:
        row = {"policy": name, **_measure(model, tokens, device, steps, warm), **extra}
        rows.append(row)
        print(json.dumps(row), flush=True)
        return row

    def fresh(policy: str = "none", loss_chunks: int = 1) -> nn.Module:
        model = copy.deepcopy(base)
        model.policy = policy
        model.loss_chunks = loss_chunks
        return model

    none = record("none", fresh())
    per_block = record("per_block_checkpoint", fresh("per_block"))
    # The output layer's logits (batch x sequence x vocabulary) never exist at once: see chunked_cross_entropy.
    record("none_chunked_loss_8", fresh(loss_chunks=8))
    record("per_block_checkpoint_chunked_loss_8", fresh("per_block", loss_chunks=8))
    sequential = {}
    for segments in (2, 4):
        sequential[segments] = record(f"checkpoint_sequential_{segments}", fresh(f"sequential_{segments}"))
    if device == "cuda" and not args.no_compile:
        import torch._functorch.config as functorch_config

        record("compile", torch.compile(fresh()))
        for budget in (0.5, 0.1):
            torch._dynamo.reset()
            functorch_config.activation_memory_budget = budget
            record(f"compile_budget_{budget}", torch.compile(fresh()))
        functorch_config.activation_memory_budget = 1.0
        torch._dynamo.reset()
    if device == "cuda":
        try:
            from rockmate import PureRockmate

            rk = PureRockmate(fresh(), tokens, budget=int(per_block["peak_bytes"]))
            record("rockmate_at_per_block_peak", rk)
        except Exception as exc:  # rockmate is optional and fragile across torch versions
            print(json.dumps({"rockmate_error": repr(exc)[:300]}), flush=True)

    model = fresh()
    planner, profile, profiling_s = _profile(model, tokens, device)
    with tempfile.TemporaryDirectory() as tmp:
        saved = profile.save(Path(tmp) / "profile.json")
        started = time.perf_counter()
        reloaded = Profile.load(saved)
        floor = planner.minimum_budget(reloaded)
        solve_probe = planner.plan(per_block["peak_bytes"], profile=reloaded)
        solve_s = time.perf_counter() - started
    del solve_probe
    n = len(profile.blocks)
    all_recompute = [Decision.RECOMPUTE] * n
    planner.apply(Plan.from_decisions(profile, all_recompute, 2**62, "floor"))
    floor_row = record(
        "floor_all_recompute", model, predicted_peak_GiB=round(profile.predict_peak(all_recompute) / 2**30, 4)
    )
    offers_offload = Decision.OFFLOAD in profile.available
    if offers_offload:
        all_offload = [Decision.OFFLOAD] * n
        planner.apply(Plan.from_decisions(profile, all_offload, 2**62, "manual"))
        moved = planner.runtime.offloader.stats["offloaded_bytes"] + planner.runtime.offloader.stats["fetched_bytes"]
        row = record(
            "all_offload",
            model,
            predicted_peak_GiB=round(profile.predict_peak(all_offload) / 2**30, 4),
            predicted_step_ms=round(1000 * profile.predict_time(all_offload), 2),
        )
        stats = planner.runtime.offloader.stats
        copied = stats["offloaded_bytes"] + stats["fetched_bytes"] - moved
        row["copied_GiB_per_step"] = round(copied / steps / 2**30, 4)
        row["host_copy_GB_per_s"] = round(copied / steps / row["step_ms"] / 1e6, 2)
        row["fetched_on_demand"] = stats["on_demand"]
    budgets = {
        "planned_at_per_block_peak": per_block["peak_bytes"],
        "planned_at_sequential_2_peak": sequential[2]["peak_bytes"],
        "planned_at_sequential_4_peak": sequential[4]["peak_bytes"],
        "planned_floor_plus_5pct": int(max(floor, floor_row["peak_bytes"]) * 1.05),
        "planned_midway": (per_block["peak_bytes"] + none["peak_bytes"]) // 2,
    }
    plans = [(name, budget, profile) for name, budget in budgets.items()]
    if offers_offload:
        # The same budgets without offload: what moving activations to the host adds to recomputation.
        eager_only = dataclasses.replace(profile, decisions=[d.value for d in ALL_DECISIONS])
        plans += [(f"{name}_no_offload", budget, eager_only) for name, budget in budgets.items()]
    for name, budget, chosen in plans:
        try:
            plan = planner.plan(budget, profile=chosen)
        except InfeasibleBudgetError as exc:
            rows.append({"policy": name, "budget_bytes": budget, "error": str(exc)})
            print(json.dumps(rows[-1]), flush=True)
            continue
        row = record(
            name,
            model,
            budget_GiB=round(budget / 2**30, 4),
            predicted_peak_GiB=round(plan.predicted_peak / 2**30, 4),
            predicted_step_ms=round(1000 * plan.predicted_time, 2),
            decisions=plan.counts(),
        )
        row["budget_bytes"] = budget
        row["within_budget"] = row["peak_bytes"] <= budget
        row["predicted_vs_measured"] = round(plan.predicted_peak / max(row["peak_bytes"], 1), 4)
    planner.remove()
    return {
        "device": torch.cuda.get_device_name() if device == "cuda" else "cpu",
        "torch": torch.__version__,
        "shape": shape,
        "small": args.small,
        "activation_heavy": args.activation_heavy,
        "profiling_s": round(profiling_s, 3),
        "solve_from_saved_profile_s": round(solve_s, 3),
        "minimum_feasible_budget_GiB": round(floor / 2**30, 4),
        "rows": rows,
    }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--device",
        default="cuda" if torch.cuda.is_available() else "cpu",
        choices=["cuda", "cpu"],
        help="where the model trains (default: cuda when this torch sees a GPU, else cpu)",
    )
    parser.add_argument("--small", action="store_true", help="CI-sized shapes")
    parser.add_argument("--activation-heavy", action="store_true", help="vocabulary 8192, sequence 2048")
    parser.add_argument("--no-compile", action="store_true", help="skip torch.compile rows")
    parser.add_argument(
        "--out", default=str(Path(__file__).parent / "results"), help="folder for the JSON (default benchmarks/results)"
    )
    args = parser.parse_args()
    if args.device == "cuda" and not torch.cuda.is_available():
        parser.error("argument --device: cuda, but this torch sees no GPU; give --device cpu")
    out = check_out(parser, args.out, folder=True)
    result = run(args)
    tag = "memory_gpt_" + args.device + ("_small" if args.small else "")
    tag += "_activation_heavy" if args.activation_heavy else ""
    (out / f"{tag}.json").write_text(json.dumps(result, indent=1))
    print(json.dumps({k: v for k, v in result.items() if k != "rows"}))
    # a check of budget adherence: a plan whose measured peak passed its budget fails the run
    planned = [row for row in result["rows"] if "within_budget" in row]
    over = [row for row in planned if not row["within_budget"]]
    print(f"memory_gpt: {len(planned) - len(over)} of {len(planned)} plans within their budget")
    for row in over:
        budget, measured = row["budget_bytes"], row["peak_bytes"]
        print(
            f"memory_gpt: {row['policy']} over its budget: {measured / 2**30:.4f} GiB measured against "
            f"{budget / 2**30:.4f} GiB ({100 * (measured / budget - 1):+.1f}%)",
            file=sys.stderr,
        )
    if not planned:
        print("memory_gpt: no plan was made, so no budget was checked", file=sys.stderr)
    return 1 if over or not planned else 0


if __name__ == "__main__":
    sys.exit(main())
