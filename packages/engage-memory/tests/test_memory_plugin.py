"""The plugin registers ``strategy=memory`` with ENGAGE core."""

from __future__ import annotations

import dataclasses
import subprocess
import sys

import pytest


def test_memory_plugin_offers_strategy_option() -> None:
    pytest.importorskip("engage.core.config")
    from engage.memory import plugin

    options = {option.name: option for option in plugin.engage_config_options()}
    assert sorted(options) == ["memory", "memory_ddp"]
    assert {option.group for option in options.values()} == {"strategy"}
    assert options["memory_ddp"].node.name == "memory_ddp"
    fields = {f.name: f.default for f in dataclasses.fields(options["memory"].node)}
    assert fields["solver"] == "auto"
    assert plugin.engage_strategy(None) is None


def test_engage_run_gets_the_memory_strategies_through_the_strategy_hook() -> None:
    pytest.importorskip("engage.core.config")
    from engage.core.config.validate import compose_config
    from engage.core.training import build_strategy
    from engage.memory import DDPMemoryPlanningStrategy, MemoryPlanningStrategy

    strategy = build_strategy(compose_config(["strategy=memory", "strategy.budget=2GiB", "strategy.solver=dp"]))
    assert type(strategy) is MemoryPlanningStrategy
    assert (strategy.budget, strategy.solver) == ("2GiB", "dp")
    ddp = build_strategy(compose_config(["strategy=memory_ddp", "strategy.budget=1GiB"]))
    assert type(ddp) is DDPMemoryPlanningStrategy and ddp.budget == "1GiB"
    # any other strategy is core's to build
    assert build_strategy(compose_config(["strategy=ddp"])) == "ddp"


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


def test_the_strategy_and_planner_leave_or_tools_unloaded_until_a_plan_asks_cp_sat() -> None:
    code = (
        "import sys; from engage.memory import MemoryPlanner, MemoryPlanningStrategy; "
        "assert 'ortools' not in sys.modules, 'ortools loaded'; "
        "from engage.memory.planner import MemoryPlanner as P; from engage.memory.profile import Profile; "
        "P._engine(None, Profile.__new__(Profile), 'cpsat'); assert 'ortools' in sys.modules"
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


def test_memory_strategy_options_are_one_line_before_the_run() -> None:
    from engage.core.config.validate import ConfigError, compose_config
    from engage.memory.options import StrategyOptionError, check_options

    for override, expected in (
        ("strategy.budget=0", "strategy.budget: budget='0' must be positive"),
        ("strategy.budget=1.5", "strategy.budget: budget='1.5' has no unit and is no fraction"),
        ("strategy.solver=greedy", "strategy.solver: solver='greedy' is unknown"),
        ("strategy.decisions=[]", r"strategy.decisions: decisions=\[\]; give a list of at least one of"),
        ("strategy.loss_chunks=0", "strategy.loss_chunks: must be a whole number >= 1"),
    ):
        with pytest.raises(ConfigError, match=expected):
            compose_config(["strategy=memory", override])
    assert check_options("0.5GiB", "auto", ["keep"]) and check_options("0.5", "dp", ["keep", "recompute"])
    with pytest.raises(StrategyOptionError, match="decisions='keep'; give a list"):
        check_options("1GiB", "auto", "keep")
