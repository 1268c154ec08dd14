"""The plugin registers ``strategy=memory`` with ENGAGE core."""

from __future__ import annotations

import dataclasses

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
