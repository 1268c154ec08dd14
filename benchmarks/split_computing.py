"""Split computing on an emulated link: measured end-to-end latency against the placement
model's prediction from measured compute and transfer figures.

A ``netns`` infrastructure of two hosts, ``edge-1`` and ``cloud-1``, joined by a link with a
one-way delay and a rate (``--delay``, ``--rate``). A small convolutional model
(:func:`model`: input 4x64x64 float32, 64 KiB) can be served three ways: whole on the cloud (the
input crosses the link), split after its first convolution (``early``: a 512 KiB tensor crosses)
or after its fourth, strided one (``late``: 8 KiB, after milliseconds of compute). The edge's
memory holds either head but not the whole model.

1. The link is measured (UDP round trips, a TCP stream's goodput) and each host profiles the
   whole model, every head and every tail (``python -m engage.deploy.serve.split profile``).
2. A placement problem with those figures (``measured`` entries, the link's measured delay and
   rate) gives each option's predicted latency, and CP-SAT chooses one. The same problem with
   nominal compute only (:data:`NOMINAL_GFLOPS`) gives the prediction without measurements.
3. The tail server runs on ``cloud-1`` (CURVE, one client key), the heads on ``edge-1``;
   ``--requests`` closed-loop requests per option, each answer checked against the whole model.

Pass condition (what the test asserts): each option's median latency within 20% of its
prediction, the options ranked by measured latency as predicted, and the engine's choice the
fastest measured.

Run: ``python benchmarks/split_computing.py`` (as root, with network namespaces; about a minute for
the two default link settings, ``--quick`` 20 s);
writes ``benchmarks/results/split_computing.json``.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from _cli import check_out, whole

HERE = Path(__file__).resolve().parent
RESULTS = HERE / "results"
INPUT_SHAPE = (4, 64, 64)
SPLITS = {"cloud": 0, "early": 2, "late": 8}
TAIL_PORT = 5301


def model() -> Any:
    """4x64x64 -> conv 32 (512 KiB) -> conv 64 -> conv 32 -> strided conv 8x16x16 (8 KiB) -> conv 32
    -> 256 -> 10: milliseconds of compute before the late split, so that measured compute counts."""
    from torch import nn

    return nn.Sequential(
        nn.Conv2d(4, 32, 3, padding=1),
        nn.ReLU(),
        nn.Conv2d(32, 64, 3, padding=1),
        nn.ReLU(),
        nn.Conv2d(64, 32, 3, padding=1),
        nn.ReLU(),
        nn.Conv2d(32, 8, 3, stride=4, padding=1),
        nn.ReLU(),
        nn.Conv2d(8, 32, 3, padding=1),
        nn.ReLU(),
        nn.Flatten(),
        nn.Linear(32 * 16 * 16, 256),
        nn.ReLU(),
        nn.Linear(256, 10),
    )


def _flops(layers: Any, x: Any) -> list[float]:
    """FLOPs of each layer on ``x`` (torch's flop counter)."""
    import torch
    from torch.utils.flop_counter import FlopCounterMode

    counts = []
    with torch.no_grad():
        for layer in layers:
            with FlopCounterMode(display=False) as counter:
                x = layer(x)
            counts.append(float(counter.get_total_flops()))
    return counts


#: nominal GFLOP/s of both hosts, what a placement problem holds without measurements: a
#: datasheet-style peak for two cores at about 3 GHz with AVX2 FMA (32 FLOP a cycle each), which a
#: model's layers reach only in part
NOMINAL_GFLOPS = 200.0


def placement_problem(spec: Any, link: dict, measured: list[dict]) -> Any:
    """The placement problem of one request class at the edge, with measured figures (none:
    nominal compute only, :data:`NOMINAL_GFLOPS` on both hosts). The edge's memory holds every
    head but not the whole model."""
    from engage.deploy.placement import PlacementProblem

    layers, parts = spec.build()
    flops = _flops(layers, spec.example())
    total = sum(flops)
    params = [sum(p.numel() * p.element_size() for p in layer.parameters()) for layer in layers]
    size = sum(params)
    edge_memory = max(sum(params[:at]) for at in spec.splits.values()) + 1024
    tensors = spec.tensor_bytes(parts)
    splits = [
        {"name": name, "compute": sum(flops[:at]) / total, "tensor": tensors[name], "size": sum(params[:at]) / size}
        for name, at in spec.splits.items()
        if at > 0
    ]
    return PlacementProblem.from_dict(
        {
            "nodes": [
                {"name": "cloud", "compute": NOMINAL_GFLOPS},
                {"name": "edge", "compute": NOMINAL_GFLOPS, "memory": edge_memory},
            ],
            "links": [{"src": "edge", "dst": "cloud", "delay": link["delay"], "rate": link["rate"]}],
            "models": [
                {
                    "name": "cnn",
                    "input": tensors["cloud"],
                    "variants": [{"name": "v1", "size": size, "accuracy": 1.0, "gflop": total / 1e9, "splits": splits}],
                }
            ],
            "requests": [{"node": "edge", "model": "cnn", "rate": 1.0}],
            "objective": {"latency": 1.0, "inaccuracy": 0.0},
            "measured": measured,
        }
    )


def _way(split: str | None, node: str) -> str:
    """An option's name in the rows: its split point, or the node serving the whole model."""
    return split or node


def _latencies(problem: Any) -> dict[str, float]:
    """Each way's predicted latency (seconds) for the one request class."""
    return {_way(o.split, o.node): o.latency for o in problem.classes[0].options}


def _env() -> dict[str, str]:
    """The hosts' processes import the model from this script's folder (no empty entry: it would
    put their working folder on ``sys.path``)."""
    paths = [str(HERE), *(p for p in os.environ.get("PYTHONPATH", "").split(os.pathsep) if p)]
    return {"PYTHONPATH": os.pathsep.join(paths)}


def _start(provider: Any, host: Any, argv: list[str], folder: Path, name: str) -> tuple:
    out, err = folder / f"{name}.json", folder / f"{name}.err"
    return provider.run(host, argv, env=_env(), log_path=out, stderr_path=err), host, name, out, err


def _finish(started: tuple, timeout: float = 120.0) -> Any:
    proc, host, name, out, err = started
    try:
        code = proc.wait(timeout)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()
        raise RuntimeError(f"{name} on {host.name} took over {timeout:.0f} s") from None
    if code != 0:
        raise RuntimeError(f"{name} on {host.name} exited {code}: {err.read_text().strip()[-400:]}")
    return json.loads(out.read_text())


def run(folder: Path, *, delay: str = "10ms", rate: str = "20mbit", requests: int = 20, repeats: int = 30) -> dict:
    """Deploy, measure, predict and serve; the figures as one mapping."""
    from engage.deploy.infrastructure import Infrastructure
    from engage.deploy.netem.measure import measure_link
    from engage.deploy.placement import CpSatSolver
    from engage.deploy.processes import terminate
    from engage.deploy.providers.netns import NetnsProvider
    from engage.deploy.serve.replica import ModelSpec
    from engage.deploy.serve.split import SplitSpec, issue_keys, link_figures, placement_figures

    started = time.perf_counter()
    if str(HERE) not in sys.path:  # the model's factory is this script's, for this process as for the hosts'
        sys.path.insert(0, str(HERE))
    infra = Infrastructure.from_dict(
        {
            "provider": "netns",
            "layers": [{"name": "cloud"}, {"name": "edge"}],
            "network": [{"src": "edge", "dst": "cloud", "delay": delay, "rate": rate}],
        }
    )
    infra.validate()
    provider = NetnsProvider(infra, folder / "infrastructure")
    spec = SplitSpec(ModelSpec("split_computing:model"), INPUT_SHAPE, dict(SPLITS))
    folder.mkdir(parents=True, exist_ok=True)
    spec_path = folder / "split.json"
    spec_path.write_text(spec.to_json())
    tail_keys, head_keys = issue_keys(folder / "keys")
    tail_proc = None
    try:
        provider.deploy()
        provider.apply_network()
        edge, cloud = provider.host("edge-1"), provider.host("cloud-1")
        link_result = measure_link(provider, "edge-1", "cloud-1", probes=300, interval=0.002, stream_seconds=2.0)
        link = link_figures(link_result)
        module = [sys.executable, "-m", "engage.deploy.serve.split"]
        # one host at a time, alone on the machine: the hosts share its cores here
        profiles = {
            name: _finish(
                _start(provider, host, [*module, "profile", str(spec_path), "--repeats", str(repeats)], folder, name)
            )
            for name, host in (("edge", edge), ("cloud", cloud))
        }
        tail_proc = provider.run(
            cloud, [*module, "tail", str(spec_path), "--keys", str(tail_keys), "--bind", cloud.address,
                    "--port", str(TAIL_PORT)],
            env=_env(),
            log_path=folder / "tail.log",
        )  # fmt: skip
        measured = placement_figures(
            spec, profiles["edge"], profiles["cloud"], head_node="edge", tail_node="cloud", model="cnn", variant="v1"
        )
        problem = placement_problem(spec, link, measured)
        predicted = _latencies(problem)
        nominal = _latencies(placement_problem(spec, link, []))
        # the same problems on a link that costs nothing: each way's predicted compute alone
        free = {"delay": 0.0, "rate": None}
        compute = _latencies(placement_problem(spec, free, measured))
        compute_nominal = _latencies(placement_problem(spec, free, []))
        route = CpSatSolver().solve(problem).routes[0]
        chosen = _way(route.split, route.node)
        head = [*module, "head", str(spec_path), "--keys", str(head_keys), "--connect", f"{cloud.address}:{TAIL_PORT}"]
        head += [*(a for name in SPLITS for a in ("--split", name)), "--requests", str(requests), "--warmup", "5"]
        answers = _finish(_start(provider, edge, head, folder, "head"), timeout=240.0)
    finally:
        if tail_proc is not None:
            terminate(tail_proc.pid)
            tail_proc.wait()
        provider.destroy()
    tensor_bytes = spec.tensor_bytes()
    rows = []
    for answer in answers:
        name = answer["split"]
        median = answer["median_latency_s"]
        head_s, tail_s = statistics.median(answer["head_s"]), statistics.median(answer["tail_s"])
        rows.append(
            {
                "option": name,
                "layers_on_edge": SPLITS[name],
                "tensor_bytes": tensor_bytes[name],
                "predicted_ms": round(predicted[name] * 1000, 2),
                "measured_median_ms": round(median * 1000, 2),
                "measured_p90_ms": round(statistics.quantiles(answer["latency_s"], n=10)[-1] * 1000, 2),
                "measured_over_predicted": round(median / predicted[name], 3),
                "predicted_nominal_ms": round(nominal[name] * 1000, 2),
                "measured_over_nominal": round(median / nominal[name], 3),
                "head_ms": round(head_s * 1000, 3),
                "tail_ms": round(tail_s * 1000, 3),
                "compute_ms": round((head_s + tail_s) * 1000, 3),
                "predicted_compute_ms": round(compute[name] * 1000, 3),
                "nominal_compute_ms": round(compute_nominal[name] * 1000, 3),
                "max_abs_error": answer["max_abs_error"],
            }
        )
    by_measured = [r["option"] for r in sorted(rows, key=lambda r: r["measured_median_ms"])]
    by_predicted = [r["option"] for r in sorted(rows, key=lambda r: r["predicted_ms"])]
    return {
        "benchmark": "split_computing",
        "machine": {"cpus": os.cpu_count(), "platform": platform.platform(), "python": platform.python_version()},
        "link": {
            "configured": {"delay": delay, "rate": rate},
            "measured": link,
            "rtt_median_ms": link_result["probe"]["rtt_median_ms"],
            "goodput_bps": link_result["stream"]["goodput_bps"],
        },
        "profiles": profiles,
        "options_not_served": sorted(set(predicted) - set(SPLITS)),
        "rows": rows,
        "chosen": chosen,
        "ranked_by_prediction": by_predicted,
        "ranked_by_measurement": by_measured,
        "requests_per_option": requests,
        "seconds": round(time.perf_counter() - started, 1),
    }


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--link", nargs=2, action="append", metavar=("DELAY", "RATE"),
        help="one-way delay and rate of the edge-cloud link (repeatable; default 10ms 20mbit and 30ms 50mbit)",
    )  # fmt: skip
    parser.add_argument(
        "--requests", type=whole(), default=None, help="measured requests per option (default 40; quick 10)"
    )
    parser.add_argument(
        "--quick", action="store_true", help="the first link setting only, 10 requests per option unless --requests"
    )
    parser.add_argument(
        "--out", type=Path, default=RESULTS / "split_computing.json", help="the JSON to write (default %(default)s)"
    )
    args = parser.parse_args(argv)
    from engage.deploy.infrastructure import InfrastructureError, parse_duration, parse_rate

    for delay, rate in args.link or []:
        try:
            parse_duration(delay, "--link DELAY")
            parse_rate(rate, "--link RATE")
        except InfrastructureError as exc:
            parser.error(f"argument {exc}")
    if os.geteuid() != 0:
        parser.error("the link is emulated between network namespaces (tc, veth), which needs root")
    check_out(parser, args.out)
    requests = args.requests or (10 if args.quick else 40)
    links = args.link or [("10ms", "20mbit"), ("30ms", "50mbit")]
    if args.quick:
        links = links[:1]
    settings = []
    for delay, rate in links:
        folder = Path(tempfile.mkdtemp(prefix="engage-split-"))
        try:
            result = run(folder, delay=delay, rate=rate, requests=requests)
        finally:
            shutil.rmtree(folder, ignore_errors=True)
        settings.append(result)
        link = result["link"]
        print(
            f"link {delay} {rate}: RTT {link['rtt_median_ms']:.2f} ms, goodput {link['goodput_bps'] / 1e6:.2f} Mbit/s"
        )
        print(f"  {'option':8} {'tensor':>9} {'predicted':>10} {'measured':>9} {'ratio':>6}")
        for row in result["rows"]:
            print(
                f"  {row['option']:8} {row['tensor_bytes']:>9} {row['predicted_ms']:>8.1f}ms "
                f"{row['measured_median_ms']:>7.1f}ms {row['measured_over_predicted']:>6.3f}"
            )
        print(f"  engine's choice: {result['chosen']}; measured ranking {result['ranked_by_measurement']}")
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps({"benchmark": "split_computing", "settings": settings}, indent=1) + "\n")


if __name__ == "__main__":
    main()
