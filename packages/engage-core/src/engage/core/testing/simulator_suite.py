"""The contract of :class:`engage.core.Simulator`, as a pytest suite to subclass."""

from __future__ import annotations

import itertools

import numpy as np
import pytest

from engage.core.simulators.base import Simulator
from engage.core.space import ParameterSpace


class SimulatorSuite:
    """Checks the stream contract: declared shape and dtype, declared length, determinism,
    parameter validation.

    Subclasses provide a ``simulator`` fixture (a small instance: the suite runs it a few times).
    """

    @pytest.fixture
    def simulator(self):  # pragma: no cover - must be provided by the subclass
        pytest.fail("a SimulatorSuite subclass must define a simulator fixture")

    @staticmethod
    def _point(simulator: Simulator, u: float = 0.37) -> np.ndarray:
        return simulator.space.from_unit(np.full((1, simulator.space.dim), u))[0]

    def test_declares_its_contract(self, simulator):
        assert isinstance(simulator, Simulator), f"{type(simulator).__name__} is not a Simulator"
        space = simulator.space
        assert isinstance(space, ParameterSpace) and space.dim >= 1, f"space is {space!r}, not a ParameterSpace"
        shape = tuple(simulator.sample_shape)
        assert all(int(s) > 0 for s in shape), f"sample_shape {shape} has a size that is not positive"
        np.dtype(simulator.dtype)
        per_run = simulator.samples_per_run
        assert per_run is None or per_run >= 1, f"samples_per_run is {per_run!r}; give None or at least 1"

    def test_samples_match_declaration(self, simulator):
        samples = list(simulator.run(self._point(simulator)))
        assert samples, "a run produced no samples"
        shape, dtype = tuple(simulator.sample_shape), np.dtype(simulator.dtype)
        for i, sample in enumerate(samples):
            assert sample.shape == shape, f"sample {i} has shape {sample.shape}; sample_shape declares {shape}"
            assert sample.dtype == dtype, f"sample {i} is {sample.dtype}; dtype declares {dtype}"
            if np.issubdtype(sample.dtype, np.floating):
                bad = np.size(sample) - int(np.isfinite(sample).sum())
                assert not bad, f"sample {i} has {bad} values that are NaN or infinite"
        if simulator.samples_per_run is not None:
            assert len(samples) == simulator.samples_per_run, (
                f"a run yielded {len(samples)} samples; samples_per_run declares {simulator.samples_per_run}"
            )

    def test_fresh_samples_claim_holds(self, simulator):
        # a simulator that says its samples are fresh must not hand out the same memory twice:
        # the client sends such samples without waiting, so a rewrite would corrupt one in flight
        if not simulator.fresh_samples:
            pytest.skip("the simulator may reuse its sample memory (the safe default)")
        samples = list(simulator.run(self._point(simulator)))
        for earlier, later in itertools.pairwise(samples):
            assert not np.shares_memory(earlier, later), "fresh_samples is True but two samples share memory"

    def test_deterministic(self, simulator):
        point = self._point(simulator, 0.61)
        for a, b in zip(simulator.run(point), simulator.run(point), strict=True):
            np.testing.assert_array_equal(a, b)

    def test_parameters_change_output(self, simulator):
        a = list(simulator.run(self._point(simulator, 0.1)))
        b = list(simulator.run(self._point(simulator, 0.9)))
        assert any(not np.array_equal(x, y) for x, y in zip(a, b)), "output ignores the parameters"

    def test_values_within_declared_range(self, simulator):
        if simulator.value_range is None:
            pytest.skip("no value_range declared")
        low, high = simulator.value_range
        slack = 1e-3 * abs(high - low)
        for i, sample in enumerate(simulator.run(self._point(simulator, 0.8))):
            assert sample.min() >= low - slack and sample.max() <= high + slack, (
                f"sample {i} spans [{sample.min()}, {sample.max()}]; value_range declares [{low}, {high}]"
            )

    def test_rejects_out_of_range_parameters(self, simulator):
        bad = simulator.space.bounds[:, 1] + 1.0 + np.abs(simulator.space.bounds[:, 1])
        with pytest.raises(ValueError):
            next(iter(simulator.run(bad)))

    def test_rejects_wrong_number_of_parameters(self, simulator):
        with pytest.raises(ValueError):
            next(iter(simulator.run(np.zeros(simulator.space.dim + 1))))

    def test_accepts_named_parameters(self, simulator):
        point = self._point(simulator)
        named = simulator.space.to_dicts(point[None, :])[0]
        for a, b in zip(simulator.run(named), simulator.run(point)):
            np.testing.assert_array_equal(a, b)
