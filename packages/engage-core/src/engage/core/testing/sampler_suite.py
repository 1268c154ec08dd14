"""The contract of :class:`engage.core.Sampler`, as a pytest suite to subclass."""

from __future__ import annotations

import copy
import pickle

import numpy as np
import pytest

from engage.core.samplers.base import FailureAction, Sampler
from engage.core.testing.parameter_spaces import parameter_spaces

SPACES = parameter_spaces()


class SamplerSuite:
    """Checks seeding, bounds, batch shapes, ``tell``, the online engine's calls by simulation
    record, failure reporting and checkpointing.

    Subclasses provide a ``make_sampler`` fixture: a callable ``(space, seed) -> Sampler``.
    Override :attr:`batch_sizes` when a sampler only produces certain batch sizes (a structured
    design) and :attr:`supported_spaces` to restrict the spaces it is run on.
    """

    batch_sizes: tuple[int, ...] = (1, 7, 16)
    supported_spaces: tuple[str, ...] = tuple(SPACES)

    @pytest.fixture
    def make_sampler(self):  # pragma: no cover - must be provided by the subclass
        pytest.fail("a SamplerSuite subclass must define a make_sampler fixture: (space, seed) -> Sampler")

    @pytest.fixture(params=list(SPACES))
    def space(self, request):
        if request.param not in self.supported_spaces:
            pytest.skip(f"space {request.param!r} is not supported by this sampler")
        return SPACES[request.param]

    def _draw(self, sampler: Sampler, rounds: int = 3) -> np.ndarray:
        return np.concatenate([sampler.ask(n) for n in self.batch_sizes[:rounds]])

    def test_is_a_sampler(self, make_sampler, space):
        assert isinstance(make_sampler(space, 0), Sampler)

    def test_batch_shapes(self, make_sampler, space):
        sampler = make_sampler(space, 0)
        for n in self.batch_sizes:
            points = sampler.ask(n)
            assert isinstance(points, np.ndarray)
            assert points.shape == (n, space.dim)
            assert np.issubdtype(points.dtype, np.floating)
        assert sampler.ask(0).shape == (0, space.dim)

    def test_points_inside_space(self, make_sampler, space):
        sampler = make_sampler(space, 1)
        points = self._draw(sampler)
        assert np.all(np.isfinite(points))
        assert space.contains(points), f"points outside {space}: {points}"

    def test_same_seed_same_points(self, make_sampler, space):
        np.testing.assert_array_equal(self._draw(make_sampler(space, 42)), self._draw(make_sampler(space, 42)))

    def test_different_seed_different_points(self, make_sampler, space):
        a, b = self._draw(make_sampler(space, 1)), self._draw(make_sampler(space, 2))
        assert not np.array_equal(a, b), "two seeds gave identical points"

    def test_points_not_constant(self, make_sampler, space):
        points = self._draw(make_sampler(space, 3))
        if len(points) > 1:
            assert np.ptp(points, axis=0).max() > 0

    def test_tell_accepts_results(self, make_sampler, space):
        sampler = make_sampler(space, 0)
        points = sampler.ask(self.batch_sizes[0])
        sampler.tell(points, losses=np.linspace(0.0, 1.0, len(points)))
        sampler.tell(points, outputs=[np.zeros(3)] * len(points))
        assert sampler.ask(self.batch_sizes[0]).shape == (self.batch_sizes[0], space.dim)

    def test_tell_by_simulation_id(self, make_sampler, space):
        sampler = make_sampler(space, 0)
        points = sampler.ask(self.batch_sizes[0])
        ids = np.arange(len(points)) * 3 + 7  # record ids, not ask positions
        sampler.tell(points, losses=np.linspace(0.0, 1.0, len(points)), simulation_ids=ids)
        sampler.tell(points, losses=np.linspace(1.0, 0.0, len(points)), simulation_ids=ids)
        assert sampler.ask(self.batch_sizes[0]).shape == (self.batch_sizes[0], space.dim)
        for wrong in (ids[:-1], -ids, ids + 0.5):
            with pytest.raises(ValueError):
                sampler.tell(points, losses=np.zeros(len(points)), simulation_ids=wrong)

    def test_tell_rejects_mismatched_results(self, make_sampler, space):
        sampler = make_sampler(space, 0)
        points = sampler.ask(self.batch_sizes[0])
        with pytest.raises(ValueError):
            sampler.tell(points, losses=np.zeros(len(points) + 1))

    def test_report_failure_says_what_it_does(self, make_sampler, space):
        sampler = make_sampler(space, 0)
        points = sampler.ask(self.batch_sizes[0])
        action = sampler.report_failure(points[:1])
        assert isinstance(action, FailureAction)
        assert sampler.ask(self.batch_sizes[0]).shape[1] == space.dim

    def test_told_by_record_once_per_simulation(self, make_sampler, space):
        from engage.core.online.record import SimulationRecord

        sampler = make_sampler(space, 0)
        points = sampler.ask(self.batch_sizes[0])
        records = [SimulationRecord.create(space, i, p, ask_index=i) for i, p in enumerate(points)]
        for record in records[1:]:
            sampler.simulation_finished(record)
        assert sampler.num_finished == len(records) - 1
        assert isinstance(sampler.simulation_failed(records[0]), FailureAction)
        assert sampler.ask(self.batch_sizes[0]).shape == (self.batch_sizes[0], space.dim)

    def test_resume_continues_identically(self, make_sampler, space):
        original = make_sampler(space, 5)
        first = original.ask(self.batch_sizes[0])
        original.tell(first, losses=np.arange(len(first), dtype=float))
        state = copy.deepcopy(original.state_dict())
        pickle.dumps(state)  # checkpoints must be able to hold it
        expected = self._draw(original)
        resumed = make_sampler(space, 999)
        resumed.load_state_dict(state)
        np.testing.assert_array_equal(self._draw(resumed), expected)

    def test_state_for_another_space_is_rejected(self, make_sampler, space):
        other_name = "continuous" if space == SPACES["one"] else "one"
        if other_name not in self.supported_spaces:
            pytest.skip("needs two supported spaces")
        state = make_sampler(SPACES[other_name], 0).state_dict()
        with pytest.raises(ValueError):
            make_sampler(space, 0).load_state_dict(state)
