"""Settings shared by every package's tests."""

from __future__ import annotations

import os

import pytest


@pytest.fixture(autouse=True, scope="session")
def engage_cache_dir(tmp_path_factory: pytest.TempPathFactory) -> str:
    """One cache folder for the session (the kept empty MLflow store among others), inherited by
    every process the tests start, so no test reads or writes the user's own cache."""
    folder = os.environ.get("ENGAGE_CACHE_DIR") or str(tmp_path_factory.mktemp("engage-cache"))
    os.environ["ENGAGE_CACHE_DIR"] = folder
    return folder
