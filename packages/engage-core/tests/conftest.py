"""Fixtures shared by engage-core's tests."""

import os
from pathlib import Path

import pytest

HERE = Path(__file__).parent


@pytest.fixture
def helpers_on_path(monkeypatch):
    """Simulation processes import ``test_online_helpers`` from this directory."""
    monkeypatch.setenv("PYTHONPATH", os.pathsep.join([str(HERE), os.environ.get("PYTHONPATH", "")]))
    monkeypatch.syspath_prepend(str(HERE))
    import test_online_helpers

    return test_online_helpers
