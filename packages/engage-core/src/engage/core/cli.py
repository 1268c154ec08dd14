"""The ``engage`` command: ``engage run``, ``engage plugins``, and sub-commands from plugins."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence

from rich.console import Console
from rich.table import Table

from engage.core.commands import Command
from engage.core.plugins import PluginError, flatten, get_plugin_manager, plugin_infos

HYDRA_INFO_FLAGS = ("--help", "-h", "--hydra-help", "--cfg", "-c", "--info", "-i", "--shell-completion", "-sc")


def _run(namespace: argparse.Namespace) -> int:
    """Validate the overrides (one-line errors, exit code 2), then hand over to Hydra."""
    import hydra

    from engage.core.config.store import register_configs
    from engage.core.config.validate import CONFIG_MODULE, CONFIG_NAME, EXIT_CONFIG_ERROR, ConfigError, compose_config
    from engage.core.run import task

    args = list(namespace.args)
    multirun = "-m" in args or "--multirun" in args
    if not any(flag in args for flag in HYDRA_INFO_FLAGS):
        overrides = [a for a in args if not a.startswith("-")]
        try:
            cfg = compose_config(overrides, multirun=multirun)
        except ConfigError as exc:
            print(f"engage run: {exc}", file=sys.stderr)
            return EXIT_CONFIG_ERROR
        if multirun:
            # the sweep's parent run is opened inside Hydra, where a failure would be a traceback
            code = _check_sweep_tracking(cfg)
            if code:
                return code
    register_configs()
    app = hydra.main(version_base="1.3", config_path=f"pkg://{CONFIG_MODULE}", config_name=CONFIG_NAME)(task)
    saved_argv = sys.argv
    sys.argv = ["engage run", *args]
    try:
        app()
    finally:
        sys.argv = saved_argv
    return 0


def _check_sweep_tracking(cfg) -> int:
    import os

    from engage.core.run import EXIT_TRACKING_UNAVAILABLE
    from engage.core.tracking.store import (
        TRACKING_URI_ENV,
        TrackingUnavailable,
        check_reachable,
        default_tracking_uri,
        resolve_tracking_uri,
    )

    uri = resolve_tracking_uri(cfg.logger.uri)
    try:
        check_reachable(uri, cfg.logger.timeout_s)
    except TrackingUnavailable as exc:
        if not cfg.logger.fallback_local:
            print(f"engage run: {exc}; start it, set logger.uri, or allow logger.fallback_local=true", file=sys.stderr)
            return EXIT_TRACKING_UNAVAILABLE
        local = default_tracking_uri().replace("mlflow.db", "mlflow-fallback.db")
        print(f"engage run: {exc}; logging the sweep locally to {local}", file=sys.stderr)
        os.environ[TRACKING_URI_ENV] = local
        cfg.logger.uri = local
    return 0


def _plugins(namespace: argparse.Namespace) -> int:
    from engage.core.config.store import config_options
    from engage.core.plugins import executors, samplers, simulators

    manager = get_plugin_manager()
    console = Console()
    table = Table(title="Installed ENGAGE plugins")
    for column in ("plugin", "package", "version", "contributes"):
        table.add_column(column)
    options = config_options(manager)
    registries = {"sampler": samplers(manager), "simulator": simulators(manager), "executor": executors(manager)}
    commands = {c.name: c for c in flatten(manager.hook.engage_commands())}
    for info in plugin_infos(manager):
        plugin = manager.get_plugin(info.name)
        lines = []
        mine = sorted(f"{o.group}={o.name}" for p, o in options if p == info.name)
        if mine:
            lines.append("options: " + ", ".join(mine))
        for kind, registry in registries.items():
            own = sorted(name for name, cls in registry.items() if _owned_by(manager, info.name, kind, name))
            if own:
                lines.append(f"{kind}s: " + ", ".join(own))
        own_commands = sorted(n for n in commands if _command_owner(manager, n) == info.name)
        if own_commands:
            lines.append("commands: " + ", ".join(own_commands))
        others = [h for h in info.hooks if h not in _REGISTRATION_HOOKS]
        if others:
            lines.append("hooks: " + ", ".join(others))
        del plugin
        table.add_row(info.name, info.distribution or "-", info.version or "-", "\n".join(lines) or "-")
    console.print(table)
    return 0


_REGISTRATION_HOOKS = {
    "engage_config_options",
    "engage_samplers",
    "engage_simulators",
    "engage_executors",
    "engage_commands",
}
_KIND_HOOK = {"sampler": "engage_samplers", "simulator": "engage_simulators", "executor": "engage_executors"}


def _owned_by(manager, plugin_name: str, kind: str, name: str) -> bool:
    for impl in getattr(manager.hook, _KIND_HOOK[kind]).get_hookimpls():
        if impl.plugin_name == plugin_name and name in (impl.function() or {}):
            return True
    return False


def _command_owner(manager, command: str) -> str | None:
    for impl in manager.hook.engage_commands.get_hookimpls():
        if any(c.name == command for c in impl.function() or ()):
            return impl.plugin_name
    return None


def core_commands() -> list[Command]:
    """The sub-commands engage-core itself provides."""
    return [
        Command(
            "run",
            "train from a Hydra config: engage run [group=option] [key=value ...] [-m for sweeps]",
            lambda p: p.add_argument("args", nargs=argparse.REMAINDER, help="Hydra overrides and flags"),
            _run,
            passthrough=True,
        ),
        Command("plugins", "list installed plugins and what each contributes", lambda p: None, _plugins),
    ]


def build_parser() -> tuple[argparse.ArgumentParser, dict[str, Command]]:
    manager = get_plugin_manager()
    parser = argparse.ArgumentParser(prog="engage", description="ENGAGE: online training from live simulations.")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    commands: dict[str, Command] = {}
    for command in flatten(manager.hook.engage_commands()):
        if command.name in commands:
            raise PluginError(f"two plugins add the command {command.name!r}; uninstall one of them")
        commands[command.name] = command
        sub_parser = sub.add_parser(
            command.name, help=command.help, description=command.help, add_help=not command.passthrough
        )
        command.add_arguments(sub_parser)
        manager.hook.engage_add_cli_arguments(parser=sub_parser, command=command.name)
    return parser, commands


def main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    try:
        parser, commands = build_parser()
    except PluginError as exc:
        print(f"engage: {exc}", file=sys.stderr)
        return 2
    if not argv or argv[0] in ("-h", "--help"):
        parser.print_help()
        return 0
    name = argv[0]
    if name not in commands:
        print(f"engage: unknown command {name!r}; available: {', '.join(sorted(commands))}", file=sys.stderr)
        return 2
    command = commands[name]
    if command.passthrough:
        namespace = argparse.Namespace(command=name, args=argv[1:])
    else:
        namespace = parser.parse_args(argv)
    return int(command.run(namespace) or 0)


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
