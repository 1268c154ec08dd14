"""engage-memory on one CUDA GPU, in one run: the gpu-marked tests, memory_gpt.py and a reference script.

Runs, one after the other on the same GPU, each as its own process with a time limit:

1. ``pytest -m gpu packages/*/tests/test_*_gpu.py`` (offload: exact gradients, memory saved, no device-wide
   synchronisation; the strategy planning offload under a budget);
2. ``benchmarks/memory_gpt.py --device cuda --no-compile`` (PyTorch's eager policies and engage-memory's
   plans, offload included, on a GPT-2-small-shaped model);
3. with ``--anchor PATH``, a reference script that measures PyTorch's own policies, compiled ones included,
   on the same model shape and writes ``memory_anchor.json`` into ``$OUT``.

It saves ``memory_gpu.json`` (each part's exit code and duration, the test outcome, and every engage-memory
plan next to the PyTorch policy whose peak it was given as budget: step-time ratio and peaks) and each
part's log into ``--out``, and exits non-zero if a part failed.

    python benchmarks/memory_gpu.py --anchor path/to/memory_anchor.py --out benchmarks/results
"""

from __future__ import annotations

import argparse
import json
import os
import re
import subprocess
import sys
import time
from pathlib import Path

from _cli import check_out, number

ROOT = Path(__file__).resolve().parent.parent


def _run(name: str, cmd: list[str], out: Path, limit: float, env: dict[str, str]) -> dict:
    """Run one part, its output both shown and saved to ``<out>/<name>.log``."""
    started = time.perf_counter()
    log = out / f"{name}.log"
    print(f"== {name}: {' '.join(cmd)} (limit {limit:.0f} s)", flush=True)
    with log.open("w") as sink:
        proc = subprocess.Popen(cmd, cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
        assert proc.stdout is not None
        deadline = started + limit
        try:
            for line in proc.stdout:
                sys.stdout.write(line)
                sink.write(line)
                if time.perf_counter() > deadline:
                    raise TimeoutError
            rc = proc.wait(timeout=max(deadline - time.perf_counter(), 1))
        except (TimeoutError, subprocess.TimeoutExpired):
            proc.kill()
            proc.wait()
            rc = 124
            sink.write(f"\n{name}: stopped after its limit of {limit:.0f} s\n")
    seconds = round(time.perf_counter() - started, 1)
    print(f"== {name}: exit {rc} after {seconds} s", flush=True)
    return {"part": name, "rc": rc, "seconds": seconds}


def _test_outcome(log: Path) -> dict[str, int]:
    """Counts from pytest's last summary line (``3 passed, 1 failed in 12.3s``)."""
    text = log.read_text() if log.exists() else ""
    return {kind: int(n) for n, kind in re.findall(r"(\d+) (passed|failed|skipped|error|errors)\b", text)}


def _rows_from_log(log: Path) -> list[dict]:
    """The policy rows a part printed (one JSON object a line), for a part stopped before it saved them."""
    rows = []
    for line in log.read_text().splitlines() if log.exists() else []:
        if line.startswith('{"policy"'):
            rows.append(json.loads(line))
    return rows


def _compare(engage: dict, anchor: list[dict]) -> list[dict]:
    """Each engage-memory plan against the PyTorch policy (same run, same GPU) whose peak set its budget."""
    rows = {r["policy"]: r for r in engage.get("rows", [])}
    local = {
        "per_block_checkpoint": "planned_at_per_block_peak",
        "checkpoint_sequential_2": "planned_at_sequential_2_peak",
        "checkpoint_sequential_4": "planned_at_sequential_4_peak",
    }
    out = []
    for name, planned in local.items():
        for suffix in ("", "_no_offload"):
            plan, base = rows.get(planned + suffix), rows.get(name)
            if not plan or not base or "step_ms" not in plan:
                continue
            out.append(
                {
                    "pytorch_policy": name,
                    "engage_plan": planned + suffix,
                    "pytorch_peak_GiB": base["peak_GiB"],
                    "engage_peak_GiB": plan["peak_GiB"],
                    "step_ratio": round(plan["step_ms"] / base["step_ms"], 3),
                    "decisions": plan.get("decisions"),
                }
            )
    none = rows.get("none")
    for ref in anchor:
        if none and ref.get("policy") == "none":
            out.append(
                {
                    "same_model_check": "unplanned step, memory_gpt.py against the reference script",
                    "peak_ratio": round(none["peak_GiB"] / ref["peak_GiB"], 3),
                    "step_ratio": round(none["step_ms"] / ref["step_ms"], 3),
                }
            )
    return out


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--anchor", help="reference script to run third (writes memory_anchor.json into $OUT)")
    parser.add_argument("--out", default=str(ROOT / "benchmarks" / "results"), help="folder for JSON and logs")
    parser.add_argument(
        "--limit", type=number(unit="s"), default=570.0, help="seconds for all parts together (default 570)"
    )
    parser.add_argument("--skip-tests", action="store_true", help="run the benchmarks only")
    args = parser.parse_args()
    import torch

    if not torch.cuda.is_available():
        parser.error("this torch sees no CUDA GPU, which every part measures; run it on a machine with one")
    out = check_out(parser, args.out, folder=True).resolve()
    env = {**os.environ, "PYTHONUNBUFFERED": "1", "OUT": str(out)}
    started = time.perf_counter()

    def left(share: float) -> float:
        return max((args.limit - (time.perf_counter() - started)) * share, 30.0)

    parts = []
    if not args.skip_tests:
        pytest_cmd = [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "-m", "gpu", "-rA"]
        gpu_files = sorted(str(p.relative_to(ROOT)) for p in (ROOT / "packages").glob("*/tests/test_*_gpu.py"))
        parts.append(_run("gpu_tests", [*pytest_cmd, *gpu_files], out, left(0.3), env))
        if not _test_outcome(out / "gpu_tests.log").get("passed"):
            parts[-1]["rc"] = parts[-1]["rc"] or 5  # every test skipped: no CUDA device was seen
    bench = [sys.executable, "benchmarks/memory_gpt.py", "--device", "cuda", "--no-compile", "--out", str(out)]
    parts.append(_run("memory_gpt", bench, out, left(0.45 if args.anchor else 1.0), env))
    if args.anchor:
        parts.append(_run("memory_anchor", [sys.executable, args.anchor], out, left(1.0), env))
    engage_file, anchor_file = out / "memory_gpt_cuda.json", out / "memory_anchor.json"
    engage = json.loads(engage_file.read_text()) if engage_file.exists() else {}
    anchor = json.loads(anchor_file.read_text()) if anchor_file.exists() else _rows_from_log(out / "memory_anchor.log")
    summary = {
        "device": engage.get("device"),
        "torch": engage.get("torch"),
        "parts": parts,
        "tests": _test_outcome(out / "gpu_tests.log"),
        "comparison": _compare(engage, anchor),
        "seconds": round(time.perf_counter() - started, 1),
    }
    (out / "memory_gpu.json").write_text(json.dumps(summary, indent=1))
    print(json.dumps(summary, indent=1))
    failed = [p["part"] for p in parts if p["rc"] != 0]
    if failed:
        print(f"memory_gpu: {', '.join(failed)} failed; see their logs in {out}", file=sys.stderr)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
