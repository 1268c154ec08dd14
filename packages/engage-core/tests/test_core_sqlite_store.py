"""New MLflow SQLite stores copied from a kept empty one."""

from __future__ import annotations

import sqlite3
from pathlib import Path

import pytest

from engage.core.tracking.sqlite_store import ensure_sqlite_store, sqlite_path


def schema(path: Path) -> dict[str, list[str]]:
    """Each table's and index's definition, as sorted lines: MLflow's migrations write a table's
    constraints in an order that varies from one creation to the next."""
    with sqlite3.connect(path) as db:
        rows = db.execute("SELECT name, sql FROM sqlite_master WHERE type IN ('table', 'index')")
        return {name: sorted(line.strip().rstrip(",") for line in (sql or "").splitlines()) for name, sql in rows}


def test_copied_store_is_what_mlflow_creates(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from mlflow.tracking import MlflowClient

    monkeypatch.setenv("ENGAGE_CACHE_DIR", str(tmp_path / "cache"))
    (tmp_path / "a").mkdir()
    (tmp_path / "b").mkdir()
    fresh = tmp_path / "a" / "fresh.db"
    monkeypatch.chdir(tmp_path / "a")
    MlflowClient(f"sqlite:///{fresh}").search_experiments()  # MLflow's own, every migration

    copied = tmp_path / "b" / "mlflow.db"
    monkeypatch.chdir(tmp_path / "b")
    assert ensure_sqlite_store(f"sqlite:///{copied}")
    assert schema(copied) == schema(fresh)
    assert list((tmp_path / "cache" / "mlflow-stores").glob("empty-mlflow-*.db"))

    client = MlflowClient(f"sqlite:///{copied}")
    default = client.get_experiment("0")
    # MLflow adds the Default experiment where this store is, not where the empty one was built
    assert default.name == "Default"
    assert default.artifact_location == str(tmp_path / "b" / "mlruns" / "0")
    experiment = client.create_experiment("e")
    assert experiment == "1"
    run = client.create_run(experiment)
    client.log_metric(run.info.run_id, "loss", 0.5)
    assert client.get_run(run.info.run_id).data.metrics == {"loss": 0.5}
    assert not list((tmp_path / "b").glob(".*.tmp"))


def test_existing_store_and_other_uris_are_left_alone(tmp_path: Path) -> None:
    existing = tmp_path / "mlflow.db"
    existing.write_bytes(b"not touched")
    assert not ensure_sqlite_store(f"sqlite:///{existing}")
    assert existing.read_bytes() == b"not touched"
    assert not ensure_sqlite_store("http://127.0.0.1:5000")
    assert not ensure_sqlite_store("sqlite:///:memory:")
    assert not ensure_sqlite_store(f"sqlite:///{tmp_path / 'missing-folder' / 'mlflow.db'}")
    assert not (tmp_path / "missing-folder").exists()
    assert sqlite_path("sqlite:////abs/mlflow.db?timeout=5") == Path("/abs/mlflow.db")


def test_unusable_cache_falls_back_to_mlflow(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from mlflow.tracking import MlflowClient

    blocker = tmp_path / "cache-is-a-file"
    blocker.write_text("")
    monkeypatch.setenv("ENGAGE_CACHE_DIR", str(blocker))
    store = tmp_path / "mlflow.db"
    assert not ensure_sqlite_store(f"sqlite:///{store}")
    assert not store.exists()
    # MLflow then creates the store itself, as without engage
    assert MlflowClient(f"sqlite:///{store}").get_experiment("0").name == "Default"


def test_a_current_store_is_checked_without_importing_mlflow(tmp_path: Path) -> None:
    """``check_reachable`` opens an SQLite store of the installed MLflow's schema with sqlite3:
    seconds of MLflow imports saved before a run or a sweep starts."""
    import subprocess
    import sys

    ensure_sqlite_store(f"sqlite:///{tmp_path / 'first.db'}")  # the kept empty store exists from now on
    store = tmp_path / "mlflow.db"
    code = (
        "import sys\n"
        "from engage.core.tracking.store import check_reachable\n"
        f"check_reachable('sqlite:///{store}')\n"
        "print('mlflow' in sys.modules)\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120, check=True)
    assert out.stdout.strip() == "False" and store.is_file()


def test_a_store_of_another_schema_or_no_store_is_left_to_mlflow(tmp_path: Path) -> None:
    from engage.core.tracking.sqlite_store import sqlite_store_is_current
    from engage.core.tracking.store import TrackingUnavailable, check_reachable

    current = tmp_path / "current.db"
    ensure_sqlite_store(f"sqlite:///{current}")
    assert sqlite_store_is_current(f"sqlite:///{current}")
    old = tmp_path / "old.db"
    old.write_bytes(current.read_bytes())
    with sqlite3.connect(old) as db:
        db.execute("UPDATE alembic_version SET version_num = 'an-older-revision'")
    assert not sqlite_store_is_current(f"sqlite:///{old}")
    garbage = tmp_path / "garbage.db"
    garbage.write_text("not a database" * 100)
    assert not sqlite_store_is_current(f"sqlite:///{garbage}")
    with pytest.raises(TrackingUnavailable, match="cannot be used"):
        check_reachable(f"sqlite:///{garbage}")
