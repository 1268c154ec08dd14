"""engage-deploy's plugin: the ``infrastructure`` and ``placement`` configs, the ``deploy`` executor and
the ``engage place`` sub-command."""

from __future__ import annotations

from engage.core.commands import Command
from engage.core.hookspecs import hookimpl


@hookimpl
def engage_config_searchpath() -> list[str]:
    # the shipped `infrastructure/*.yaml` examples (local, netns, g5k, chameleon, vagrant, static)
    return ["pkg://engage.deploy.conf"]


def _place_arguments(parser):
    from engage.deploy.placement.cli import add_arguments

    add_arguments(parser)


def _place(namespace):
    from engage.deploy.placement.cli import run_command

    return run_command(namespace)


@hookimpl
def engage_executors() -> dict:
    from engage.deploy.executor import DeployExecutor

    return {"deploy": DeployExecutor}


@hookimpl
def engage_commands() -> list[Command]:
    return [
        Command(
            "place",
            "place model variants (or workflow services) on the continuum with OR-Tools",
            _place_arguments,
            _place,
        ),
    ]
