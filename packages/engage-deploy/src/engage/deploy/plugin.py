"""engage-deploy's plugin: the ``infrastructure`` and ``placement`` configs and the ``engage replay`` and
``engage place`` sub-commands."""

from __future__ import annotations

from engage.core.commands import Command
from engage.core.hookspecs import hookimpl


@hookimpl
def engage_config_searchpath() -> list[str]:
    # the shipped `infrastructure/*.yaml` examples (local, netns, g5k, chameleon, vagrant, static)
    return ["pkg://engage.deploy.conf"]


def _replay_arguments(parser):
    from engage.deploy.replay import add_arguments

    add_arguments(parser)


def _place_arguments(parser):
    from engage.deploy.placement.cli import add_arguments

    add_arguments(parser)


def _place(namespace):
    from engage.deploy.placement.cli import run_command

    return run_command(namespace)


def _replay(namespace):
    from engage.deploy.replay import run_command

    return run_command(namespace)


@hookimpl
def engage_executors() -> dict:
    from engage.deploy.executor import DeployExecutor

    return {"deploy": DeployExecutor}


@hookimpl
def engage_commands() -> list[Command]:
    return [
        Command(
            "replay", "re-run one job of a sweep from its MLflow record and compare metrics", _replay_arguments, _replay
        ),
        Command(
            "place",
            "place model variants (or workflow services) on the continuum with OR-Tools",
            _place_arguments,
            _place,
        ),
    ]
