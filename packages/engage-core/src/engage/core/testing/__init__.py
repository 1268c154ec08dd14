"""Conformance suites that every sampler and simulator, in-tree or out-of-tree, subclasses.

Like Hydra's ``LauncherTestSuite``: subclass the suite in your test module, provide the fixture
it asks for, and pytest runs every contract check against your implementation::

    import pytest
    from engage.core.testing import SamplerSuite

    class TestMySampler(SamplerSuite):
        @pytest.fixture
        def make_sampler(self):
            return lambda space, seed: MySampler(space, seed=seed)
"""

from engage.core.testing.parameter_spaces import parameter_spaces
from engage.core.testing.sampler_suite import SamplerSuite
from engage.core.testing.simulator_suite import SimulatorSuite

__all__ = ["SamplerSuite", "SimulatorSuite", "parameter_spaces"]
