"""engage-core's own plugin: the defaults every installation has."""

from __future__ import annotations

from engage.core.commands import Command
from engage.core.config.options import ConfigOption
from engage.core.config.schema import (
    CommandSimulatorConfig,
    HeatSimulatorConfig,
    HeatSurrogateConfig,
    LightningStrategyConfig,
    MLflowLoggerConfig,
    RenderSimulatorConfig,
    SimulatedDatasetConfig,
    TrainerConfig,
    UniformSamplerConfig,
)
from engage.core.hookspecs import hookimpl
from engage.core.online.config import OnlineDataConfig
from engage.core.samplers.uniform import UniformSampler
from engage.core.simulators.burgers import BurgersSimulatorConfig
from engage.core.simulators.heat import HeatEquation


@hookimpl
def engage_config_options() -> list[ConfigOption]:
    options = [
        ConfigOption("trainer", "default", TrainerConfig, "Lightning Trainer arguments"),
        ConfigOption("simulator", "heat", HeatSimulatorConfig, "2D heat equation, implicit finite differences"),
        ConfigOption("simulator", "burgers", BurgersSimulatorConfig, "1D viscous Burgers, smooth to shock-forming"),
        ConfigOption("simulator", "render", RenderSimulatorConfig, "ray-marched shaded shape, one image per run"),
        ConfigOption(
            "simulator", "command", CommandSimulatorConfig, "a program in any language that speaks the protocol"
        ),
        ConfigOption("sampler", "uniform", UniformSamplerConfig, "independent random draws"),
        ConfigOption("data", "simulated", SimulatedDatasetConfig, "simulate a fixed set first, then train in epochs"),
        ConfigOption("data", "online", OnlineDataConfig, "stream samples from simulations running during training"),
        ConfigOption("model", "heat_surrogate", HeatSurrogateConfig, "MLP to a learned basis of a 2D field"),
        ConfigOption("logger", "mlflow", MLflowLoggerConfig, "Lightning's MLFlowLogger, SQLite store by default"),
    ]
    for name in ("auto", "ddp", "ddp_spawn", "fsdp", "single_device"):
        node = LightningStrategyConfig(name=name)
        options.append(ConfigOption("strategy", name, node, f"Lightning's {name!r} strategy"))
    return options


@hookimpl
def engage_samplers():
    return {"uniform": UniformSampler}


@hookimpl
def engage_executors():
    from engage.core.executors import LocalExecutor

    return {"local": LocalExecutor}


@hookimpl
def engage_simulators():
    from engage.core.simulators.burgers import ViscousBurgers
    from engage.core.simulators.executable import ExecutableSimulator
    from engage.core.simulators.render import ImageRenderer

    return {"heat": HeatEquation, "burgers": ViscousBurgers, "render": ImageRenderer, "command": ExecutableSimulator}


@hookimpl
def engage_commands() -> list[Command]:
    from engage.core.cli import core_commands

    return core_commands()
