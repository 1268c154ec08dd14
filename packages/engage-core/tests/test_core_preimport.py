"""engage.core.preimport: heavy imports with the collector paused, then frozen out of its walks."""

from __future__ import annotations

import gc
import sys

import pytest

from engage.core.preimport import preimport


@pytest.fixture
def fresh_module(tmp_path, monkeypatch):
    """A module no test imported yet, whose import makes a reference cycle."""
    name = f"engage_preimport_probe_{id(tmp_path)}"
    (tmp_path / f"{name}.py").write_text("class Node:\n    pass\n\nA = Node()\nA.me = A\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    yield name
    sys.modules.pop(name, None)


@pytest.fixture
def collector():
    was_on = gc.isenabled()
    yield
    gc.unfreeze()
    (gc.enable if was_on else gc.disable)()


def test_imports_with_the_collector_paused_then_freezes(fresh_module, collector):
    gc.enable()
    paused = []
    real_import = __import__("importlib").import_module

    def watching(name, *args):
        paused.append(gc.isenabled())
        return real_import(name, *args)

    frozen = gc.get_freeze_count()
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr("engage.core.preimport.importlib.import_module", watching)
        preimport(fresh_module)
    assert paused == [False]
    assert gc.isenabled()
    assert fresh_module in sys.modules
    assert gc.get_freeze_count() > frozen  # the module's objects are beyond the collector's walks
    assert gc.is_tracked(sys.modules[fresh_module].A)


def test_a_collector_that_was_off_stays_off_and_errors_still_restore(fresh_module, collector):
    gc.disable()
    preimport(fresh_module)
    assert not gc.isenabled()
    gc.enable()
    with pytest.raises(ModuleNotFoundError):
        preimport("engage_no_such_module_anywhere")
    assert gc.isenabled()


def test_nothing_is_frozen_when_every_module_is_imported_already(collector):
    gc.enable()
    gc.unfreeze()
    garbage = []
    garbage.append(garbage)  # a cycle a later job of the same process left
    preimport("json", "os")
    assert gc.get_freeze_count() == 0
