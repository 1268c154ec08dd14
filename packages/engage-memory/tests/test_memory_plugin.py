"""The plugin registers ``strategy=memory`` with ENGAGE core."""

from __future__ import annotations

import dataclasses
import subprocess
import sys

import pytest


def test_memory_plugin_offers_strategy_option() -> None:
    pytest.importorskip("engage.core.config")
    from engage.memory import plugin

    (option,) = plugin.engage_config_options()
    assert (option.group, option.name) == ("strategy", "memory")
    fields = {f.name: f.default for f in dataclasses.fields(option.node)}
    assert fields["_target_"] == "engage.memory.MemoryPlanningStrategy"
    assert fields["solver"] == "auto"
    assert plugin.engage_strategy(None) is None


def test_memory_plugin_instantiates_from_config() -> None:
    pytest.importorskip("engage.core.config")
    hydra_utils = pytest.importorskip("hydra.utils")
    from omegaconf import OmegaConf

    from engage.memory import MemoryPlanningStrategy
    from engage.memory.plugin import MemoryStrategyConfig

    cfg = OmegaConf.structured(MemoryStrategyConfig(budget="2GiB"))
    strategy = hydra_utils.instantiate(cfg)
    assert isinstance(strategy, MemoryPlanningStrategy)
    assert strategy.budget == "2GiB"


def test_memory_plugin_registers_through_plugin_manager() -> None:
    plugins = pytest.importorskip("engage.core.plugins")
    manager = plugins.get_plugin_manager()
    if manager.get_plugin("memory") is None:
        pytest.skip("engage-memory entry point not installed in this environment")
    options = plugins.flatten(manager.hook.engage_config_options())
    assert any(o.group == "strategy" and o.name == "memory" for o in options)


def test_memory_plugin_import_loads_neither_torch_nor_lightning() -> None:
    # A fresh interpreter: this test session has long imported torch.
    code = (
        "import sys, engage.memory, engage.memory.plugin; "
        "loaded = [m for m in ('torch', 'lightning') if m in sys.modules]; "
        "assert not loaded, loaded"
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr


def test_memory_package_names_load_lazily() -> None:
    import engage.memory

    for name in engage.memory.__all__:
        assert getattr(engage.memory, name) is not None
    assert set(engage.memory.__all__) <= set(dir(engage.memory))
    with pytest.raises(AttributeError, match="no attribute 'Nope'"):
        _ = engage.memory.Nope
    assert sorted(engage.memory.__all__) == sorted(engage.memory._EXPORTS)
