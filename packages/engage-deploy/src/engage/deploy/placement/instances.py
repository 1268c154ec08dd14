"""Seeded instances on edge -> fog -> cloud trees, for benchmarks and tests.

Figures are of the right order for image models on the continuum: edge devices of 20-100 GFLOP/s
with 0.5-2 GiB for models at 0.05 J/GFLOP, fog servers of 0.5-2 TFLOP/s with 8-16 GiB at
0.02 J/GFLOP, a cloud of 20 TFLOP/s without memory limit at 0.005 J/GFLOP; edge links of 5-20 ms one-way and
50-200 mbit/s, fog links of 20-40 ms and 1 gbit/s. Each model has a small, a medium and a large
variant (more accuracy for more compute and memory); medium and large ones can be split after
30 % or 60 % of their compute, where the intermediate tensor is smaller than the input. Each edge
node asks for up to five models, drawn by Zipf popularity, at 1-10 requests per second.
"""

from __future__ import annotations

import numpy as np

from engage.deploy.placement.problem import Link, Model, Node, PlacementProblem, Requests, SplitPoint, Variant, Weights

MiB = 2**20


def random_tree_problem(
    nodes: int,
    models: int,
    seed: int = 0,
    *,
    models_per_edge: int = 5,
    load: float = 1.0,
    weights: Weights | None = None,
) -> PlacementProblem:
    """A tree of ``nodes`` nodes (one cloud, about a tenth fog, the rest edge) and ``models`` models;
    ``load`` multiplies every request rate.

    Example::

        >>> problem = random_tree_problem(nodes=20, models=10, seed=1)
        >>> len(problem.nodes), len(problem.models), problem.root
        (20, 10, 'cloud')
    """
    if nodes < 3:
        raise ValueError(f"nodes is {nodes}; a tree needs a cloud, a fog and an edge node (3 or more)")
    if models < 1:
        raise ValueError(f"models is {models}; use 1 or more")
    rng = np.random.default_rng(seed)
    fogs = max(1, round(nodes / 10))
    edges = nodes - 1 - fogs
    node_list = [Node("cloud", compute=20_000.0, memory=None, joules_per_gflop=0.005)]
    links = []
    for f in range(1, fogs + 1):
        node_list.append(
            Node(
                f"fog-{f}",
                compute=float(rng.uniform(500, 2000)),
                memory=int(rng.choice([8, 12, 16])) * 1024 * MiB,
                joules_per_gflop=0.02,
            )
        )
        links.append(Link(f"fog-{f}", "cloud", delay=float(rng.uniform(0.020, 0.040)), rate=1e9))
    for e in range(1, edges + 1):
        node_list.append(
            Node(
                f"edge-{e}",
                compute=float(rng.uniform(20, 100)),
                memory=int(rng.choice([512, 1024, 2048])) * MiB,
                joules_per_gflop=0.05,
            )
        )
        fog = f"fog-{(e - 1) % fogs + 1}"
        links.append(
            Link(f"edge-{e}", fog, delay=float(rng.uniform(0.005, 0.020)), rate=float(rng.uniform(50, 200)) * 1e6)
        )
    model_list = []
    for m in range(1, models + 1):
        base = float(rng.uniform(0.60, 0.72))
        input_bytes = int(rng.uniform(50, 200) * 1000)
        variants = []
        for name, size_mib, gain, gflop in (
            ("small", rng.uniform(20, 60), 0.0, rng.uniform(1, 3)),
            ("medium", rng.uniform(80, 200), rng.uniform(0.05, 0.10), rng.uniform(5, 10)),
            ("large", rng.uniform(300, 600), rng.uniform(0.10, 0.18), rng.uniform(20, 40)),
        ):
            splits = ()
            if name != "small":
                splits = tuple(
                    SplitPoint(f"block{k}", compute=fraction, tensor=int(input_bytes * rng.uniform(0.1, 0.5)))
                    for k, fraction in ((1, 0.3), (2, 0.6))
                )
            variants.append(Variant(name, int(size_mib * MiB), min(0.99, base + gain), float(gflop), splits))
        model_list.append(Model(f"model-{m}", tuple(variants), input=input_bytes))
    popularity = 1.0 / np.arange(1, models + 1) ** 0.8
    popularity /= popularity.sum()
    requests = []
    for e in range(1, edges + 1):
        count = min(models_per_edge, models)
        picked = rng.choice(models, size=count, replace=False, p=popularity)
        for m in sorted(picked):
            requests.append(Requests(f"edge-{e}", f"model-{m + 1}", float(rng.uniform(1, 10)) * load))
    return PlacementProblem(node_list, links, model_list, requests, weights or Weights(energy=0.01))
