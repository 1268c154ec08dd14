"""How a job finds its sweep's parent run: by id, or from a file its launcher writes later."""

from __future__ import annotations

import threading
from pathlib import Path

import pytest

from engage.core.tracking.store import PARENT_RUN_ENV, PARENT_RUN_FILE_ENV, parent_run_id


def test_the_id_in_the_environment_wins(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(PARENT_RUN_ENV, "abc")
    monkeypatch.setenv(PARENT_RUN_FILE_ENV, str(tmp_path / "never-written"))
    assert parent_run_id(timeout_s=0.1) == "abc"


def test_no_parent_without_either(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv(PARENT_RUN_ENV, raising=False)
    monkeypatch.delenv(PARENT_RUN_FILE_ENV, raising=False)
    assert parent_run_id() is None


def test_waits_for_the_file(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    path = tmp_path / "parent-run-id"
    monkeypatch.delenv(PARENT_RUN_ENV, raising=False)
    monkeypatch.setenv(PARENT_RUN_FILE_ENV, str(path))
    writer = threading.Timer(0.3, path.write_text, args=("0123abcd\n",))
    writer.start()
    try:
        assert parent_run_id(timeout_s=30) == "0123abcd"
    finally:
        writer.join()
    path.write_text("")  # the launcher could not open MLflow: no parent
    assert parent_run_id(timeout_s=1) is None


def test_a_file_never_written_warns_and_goes_on(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv(PARENT_RUN_ENV, raising=False)
    monkeypatch.setenv(PARENT_RUN_FILE_ENV, str(tmp_path / "parent-run-id"))
    with pytest.warns(UserWarning, match="ENGAGE_PARENT_RUN_FILE=.*not written within"):
        assert parent_run_id(timeout_s=0.2) is None
