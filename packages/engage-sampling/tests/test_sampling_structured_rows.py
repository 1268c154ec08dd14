"""Structured designs find a result's row in constant time, and the online engine's failures by
the row's position in the design, never by its values."""

import time

import numpy as np

from engage.core import ParameterSpace
from engage.core.online.record import SimulationRecord
from engage.sampling.samplers.morris import MorrisSampler
from engage.sampling.samplers.salib_sobol import SALibSobolSampler

SPACE = ParameterSpace.from_config({f"x{i}": {"low": 0.0, "high": 1.0} for i in range(3)})


def _tell_one_at_a_time(n: int) -> float:
    sampler = SALibSobolSampler(SPACE, seed=0)
    points = sampler.ask(n)
    started = time.perf_counter()
    for i in range(n):
        sampler.tell(points[i : i + 1], losses=[float(points[i, 0])])
    elapsed = time.perf_counter() - started
    assert sampler.num_told == n and len(sampler._results) == n
    return elapsed


def test_telling_rows_one_at_a_time_costs_the_same_per_row_however_many_were_told():
    # the best of three damps a busy host; quadratic telling took 38 s for 2,560 rows
    ten, twenty = (min(_tell_one_at_a_time(n) for _ in range(3)) for n in (10_240, 20_480))
    assert twenty <= 2.2 * ten, (ten, twenty)
    assert _tell_one_at_a_time(40_960) < 1.0


def test_a_failed_simulation_is_found_by_its_row_not_its_values():
    sampler = MorrisSampler(SPACE, seed=0, num_levels=4)
    points = sampler.ask(20 * sampler.group_size)  # 80 rows on a grid of 64 points
    # rows with equal values (trajectories share grid points) are told apart by their position
    first = next(i for i in range(len(points)) for j in range(i) if np.array_equal(points[i], points[j]))
    record = SimulationRecord.create(SPACE, 0, points[first], ask_index=first)
    sampler.simulation_failed(record)
    assert sampler._failed_rows == {first}
    assert sampler.complete_groups()[1] == 1
