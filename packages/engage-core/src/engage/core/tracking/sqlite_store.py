"""New MLflow SQLite stores, created in milliseconds instead of seconds.

MLflow creates an SQLite store by replaying every schema migration since its first release,
2 to 3 s of CPU on a small machine, paid by every sweep, ``engage run`` and ``mlflow server``
started on a new file. The schema depends only on the MLflow version, so the first new store
of each version is built the normal way, kept empty in the user's cache folder, and copied for
every later one. Only the ``Default`` experiment (id 0) is left out of the kept copy: MLflow
adds it on first open with an artifact location under the new store's working directory, as
it would for a store it created itself.

Example::

    >>> import tempfile
    >>> from pathlib import Path
    >>> uri = f"sqlite:///{Path(tempfile.mkdtemp()) / 'mlflow.db'}"
    >>> ensure_sqlite_store(uri)
    True
    >>> ensure_sqlite_store(uri)  # it exists now: left as it is
    False
"""

from __future__ import annotations

import contextlib
import os
import shutil
import sqlite3
import tempfile
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path

#: where the empty stores are kept (default: ``$XDG_CACHE_HOME/engage`` or ``~/.cache/engage``)
CACHE_DIR_ENV = "ENGAGE_CACHE_DIR"


def sqlite_path(uri: str) -> Path | None:
    """The file behind an ``sqlite:///`` URI; ``None`` for any other store (or an in-memory one)."""
    if not uri.startswith("sqlite:///"):
        return None
    path = uri.removeprefix("sqlite:///").split("?", 1)[0]
    if not path or path == ":memory:":
        return None
    # sqlite:////abs/path keeps its leading slash; sqlite:///rel/path is relative to the cwd
    return Path(path)


def cache_dir() -> Path:
    """The folder holding engage's per-user caches."""
    configured = os.environ.get(CACHE_DIR_ENV)
    if configured:
        return Path(configured)
    base = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
    return Path(base) / "engage"


def ensure_sqlite_store(uri: str) -> bool:
    """Create the MLflow store at an ``sqlite:///`` ``uri`` that does not exist yet from the
    kept empty store of the installed MLflow version; returns whether it copied one.

    Existing files and other stores are left alone. When no empty store can be kept (a
    read-only home, no MLflow installed), nothing happens and MLflow creates the store itself.
    """
    target = sqlite_path(uri)
    if target is None or target.exists():
        return False
    template = _empty_store()
    if template is None or not target.parent.is_dir():
        return False
    scratch = target.parent / f".{target.name}.{os.getpid()}.tmp"
    try:
        shutil.copyfile(template, scratch)
        # a link never replaces a store another process created meanwhile; a rename would
        os.link(scratch, target)
        return True
    except FileExistsError:
        return False
    except OSError:  # no hard links on this file system: MLflow creates the store itself
        return False
    finally:
        with contextlib.suppress(OSError):
            scratch.unlink()


def sqlite_store_is_current(uri: str, timeout_s: float = 10.0) -> bool:
    """Whether the SQLite store at ``uri`` opens for writing and has the schema of the installed
    MLflow (the revision of its kept empty store); ``False`` when that cannot be told without
    MLflow (another store, no kept empty store) or it differs: MLflow then says why."""
    target = sqlite_path(uri)
    template = _empty_store() if target is not None else None
    if target is None or template is None or not target.is_file():
        return False
    try:
        with contextlib.closing(sqlite3.connect(f"file:{target}?mode=rw", uri=True, timeout=timeout_s)) as db:
            revision = db.execute("SELECT version_num FROM alembic_version").fetchall()
            db.execute("SELECT experiment_id FROM experiments LIMIT 1").fetchall()
        with contextlib.closing(sqlite3.connect(f"file:{template}?mode=ro", uri=True)) as db:
            expected = db.execute("SELECT version_num FROM alembic_version").fetchall()
    except sqlite3.Error:
        return False
    return bool(revision) and revision == expected


def experiment_artifact_location(uri: str, name: str, timeout_s: float = 10.0) -> str | None:
    """Where the experiment called ``name`` of the SQLite store at ``uri`` keeps its artifacts,
    read without MLflow; ``None`` for another store, one that does not exist or cannot be read,
    or no such experiment."""
    target = sqlite_path(uri)
    if target is None or not target.is_file():
        return None
    try:
        with contextlib.closing(sqlite3.connect(f"file:{target}?mode=ro", uri=True, timeout=timeout_s)) as db:
            found = db.execute("SELECT artifact_location FROM experiments WHERE name = ?", (name,)).fetchone()
    except sqlite3.Error:
        return None
    return found[0] if found else None


def artifacts_behind_a_server(uri: str, experiment: str, uri_key: str, experiment_key: str) -> str | None:
    """One line refusing to write to ``experiment`` of the SQLite store at ``uri`` directly when an
    MLflow server created it with ``--serve-artifacts``: its artifact location
    (``mlflow-artifacts:...``) is resolved by that server alone, so artifacts written past it fail
    (or, through another server, land where that server keeps its own). ``uri_key`` and
    ``experiment_key`` name the settings the line tells to change; ``None`` when nothing is wrong."""
    location = experiment_artifact_location(uri, experiment)
    if location is None or not location.startswith("mlflow-artifacts:"):
        return None
    return (
        f"{experiment_key}: experiment {experiment!r} of {uri} keeps its artifacts behind an MLflow server "
        f"({location}); set {uri_key} to that server's http(s) address, or {experiment_key} to another name"
    )


def _empty_store() -> Path | None:
    """The kept empty store of the installed MLflow version, built on first use."""
    try:
        mlflow_version = version("mlflow")
    except PackageNotFoundError:
        return None
    folder = cache_dir() / "mlflow-stores"
    template = folder / f"empty-mlflow-{mlflow_version}.db"
    if template.is_file():
        return template
    try:
        folder.mkdir(parents=True, exist_ok=True)
        with tempfile.TemporaryDirectory(dir=folder) as scratch:
            built = Path(scratch) / "store.db"
            _build_empty_store(built)
            # concurrent builders each rename a complete file into place; the last one wins
            os.replace(built, template)
    except (OSError, sqlite3.Error):
        return None
    return template


def _build_empty_store(path: Path) -> None:
    """Let MLflow create a store at ``path`` (all migrations), then remove its ``Default``
    experiment, whose artifact location names the folder it was built in."""
    from mlflow.tracking import MlflowClient

    MlflowClient(tracking_uri=f"sqlite:///{path}").search_experiments(max_results=1)
    with contextlib.closing(sqlite3.connect(path)) as db:
        db.execute("DELETE FROM experiments WHERE experiment_id = 0")
        db.commit()
