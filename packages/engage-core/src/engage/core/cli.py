"""The ``engage`` command: ``engage run``, ``engage plugins``, and sub-commands from plugins."""

from __future__ import annotations

import argparse
import difflib
import re
import sys
from collections.abc import Sequence
from typing import Any, NoReturn

from rich.console import Console
from rich.table import Table

from engage.core.commands import Command
from engage.core.plugins import DISABLE_ENV, PluginError, get_plugin_manager, per_plugin, plugin_infos

#: Hydra's own flags for shell completion, which also work as ``engage -sc ...``
COMPLETION_FLAGS = ("-sc", "--shell-completion")


def _run(namespace: argparse.Namespace, program: str = "engage run") -> int:
    """Hand the arguments, unchanged, to Hydra's app: its command line whole (``-m``, ``-cd``,
    ``-cp``, ``-cn``, ``--cfg``, ``--info``, ``-sc``). Hydra's and OmegaConf's composition errors
    become one line with exit code 2 here; the config's own checks, Lightning's refusals and an
    unreachable tracking store are put in one line by the task (and a sweep's callbacks), whose
    exit codes this returns; anything else keeps Hydra's report."""
    import os

    import hydra
    from hydra_plugins.engage_core.searchpath import engage_app_runs

    from engage.core.config.store import register_configs
    from engage.core.config.validate import CONFIG_MODULE, CONFIG_NAME
    from engage.core.rank_env import LOCAL_RANK_ENV, WORLD_SIZE_ENV
    from engage.core.run import RunFailed, Terminated, sigterm_raises_terminated, task
    from engage.core.tracking.store import PARENT_RUN_ENV, TRACKING_URI_ENV
    from engage.core.tracking.sweep import end_open_sweep

    if os.environ.get(LOCAL_RANK_ENV, "0") != "0" and WORLD_SIZE_ENV in os.environ:
        # a rank that a DDP launcher (Lightning's, torchrun) started: it ends with its starter
        from engage.core.executors import tie_to_parent
        from engage.core.run import RANK_STARTER_ENV

        starter = os.environ.get(RANK_STARTER_ENV)  # engage run's rank 0, when it started this one
        if not tie_to_parent(int(starter) if starter else None):
            print(f"{program}: the process that started this rank (pid {starter}) is gone", file=sys.stderr)
            return 1
    register_configs()
    engage_app_runs()  # ENGAGE's search path, even where -cp replaces its primary configs
    app = hydra.main(version_base="1.3", config_path=f"pkg://{CONFIG_MODULE}", config_name=CONFIG_NAME)(task)
    saved_argv, saved_full_error = sys.argv, os.environ.get("HYDRA_FULL_ERROR")
    # a sweep's parent run (and store) this process runs a job of, if any: a sweep that ends
    # early leaves them as they were
    saved_sweep = {name: os.environ.get(name) for name in (PARENT_RUN_ENV, TRACKING_URI_ENV)}
    parent = saved_sweep[PARENT_RUN_ENV]
    # Hydra reads its command line from sys.argv (a DDP fit's other ranks are started from this
    # run's overrides: engage.core.training)
    sys.argv = [program, *namespace.args]
    os.environ["HYDRA_FULL_ERROR"] = "1"  # Hydra's exceptions reach this function, to be put in one line
    # SIGTERM between a sweep's jobs too: its parent run ends KILLED
    put_back_sigterm = sigterm_raises_terminated()
    try:
        app()
    except (KeyboardInterrupt, Terminated):
        end_open_sweep(parent, "KILLED")
        raise
    except SystemExit as exc:  # the task's own exit codes (2, 3, 4) and Hydra's
        code = exc.code if isinstance(exc.code, int) else int(exc.code is not None)
        if code:
            end_open_sweep(parent, "FAILED")
        return code
    except RunFailed as exc:  # a run, or a sweep's first failed job
        end_open_sweep(parent, "FAILED")  # its summary, then the cause as the last line
        if not exc.printed_here:  # a job of another process whose standard error was its own log
            print(f"engage run: {' '.join(exc.line.split())}", file=sys.stderr)
        return exc.exit_code
    except Exception as exc:
        end_open_sweep(parent, "FAILED")
        code = _one_line(exc, namespace.args)
        if code is None:
            _set_env("HYDRA_FULL_ERROR", saved_full_error)
            _hydra_report(exc)
        return code
    finally:
        put_back_sigterm()
        sys.argv = saved_argv
        _set_env("HYDRA_FULL_ERROR", saved_full_error)
        for name, value in saved_sweep.items():
            _set_env(name, value)
    return 0


def _hydra_report(error: Exception) -> NoReturn:
    """Report ``error`` as Hydra would have (and exit as it does), or raise it where the user
    asked for full errors."""
    from hydra._internal.utils import run_and_report

    def again() -> None:
        raise error

    run_and_report(again)
    raise error


def _set_env(name: str, value: str | None) -> None:
    import os

    if value is None:
        os.environ.pop(name, None)
    else:
        os.environ[name] = value


def _one_line(exc: BaseException, args: Sequence[str] = ()) -> int | None:
    """Print ``exc`` as one line naming the key, if it is bad input; its exit code (or None).
    ``args``: the command line, for the override Hydra's grammar refused (its message names none)."""
    from hydra.errors import HydraException, OverrideParseException
    from omegaconf.errors import OmegaConfBaseException

    from engage.core.config.validate import EXIT_CONFIG_ERROR, ConfigError, explain, missing_interpolation, unparsable

    refused = None
    flags = re.fullmatch(r"Only one of (--run, .*) can be specified", str(exc)) if isinstance(exc, ValueError) else None
    rerun = re.fullmatch(r"File (.*) does not exist!", str(exc)) if isinstance(exc, ValueError) else None
    if flags:  # Hydra's own refusals of its flags, raised as ValueError
        refused = f"{flags.group(1)} exclude one another: give one of them"
    elif rerun:
        refused = f"--experimental-rerun {rerun.group(1)}: no such file; give a run's .hydra/config.pickle"
    if isinstance(exc, OverrideParseException):
        refused = unparsable([a for a in args if "=" in a and not a.startswith("-")])
    if isinstance(exc, (ConfigError, PluginError)):  # a plugin's contribution that cannot work
        line, code = str(exc), EXIT_CONFIG_ERROR
    elif refused is not None:
        line, code = refused, EXIT_CONFIG_ERROR
    elif isinstance(exc, (HydraException, OmegaConfBaseException)):
        line, code = explain(exc, _base_config(args)), EXIT_CONFIG_ERROR
        unresolved = re.fullmatch(r"Interpolation key '([^']+)' not found", line)
        readers = [a.partition("=")[0] for a in args if unresolved and "${" + unresolved.group(1) in a]
        if readers:  # a resolved print (--cfg --resolve) names no key: the override that reads it
            line = missing_interpolation(readers[0], unresolved.group(1))
    else:
        return None
    print(f"engage run: {' '.join(line.split())}", file=sys.stderr)
    return code


def _base_config(args: Sequence[str] = ()):
    """The config with the options ``args`` choose (``sampler=loss_driven``) and no other
    override, for the keys an error lists (None if even that fails)."""
    from engage.core.config.validate import compose_config, option_choices

    for overrides in (option_choices(args), []):
        try:
            return compose_config(overrides)
        except Exception:
            continue
    return None


def _completion(argv: list[str], commands: Sequence[str] = ()) -> int:
    """``engage -sc query=bash`` (as Hydra's installed completion script calls it) and
    ``engage -sc install=bash``: the sub-commands after ``engage``, then Hydra's completion of
    ``engage run``'s command line."""
    import os

    line = os.environ.get("COMP_LINE")
    if line is not None:
        words = line.split()
        if len(words) <= 1 or (len(words) == 2 and not line.endswith(" ")):  # the sub-command itself
            print(" ".join([*sorted(commands), "--help", "--version"]))
            return 0
        if words[1] != "run":  # another sub-command's arguments: the shell's own (file names)
            return 0
        # Hydra completes what follows the program (a word begun after a space: a new one)
        os.environ["COMP_LINE"] = " ".join([words[0], *words[2:]]) + (" " if line.endswith(" ") else "")
        if "COMP_POINT" in os.environ:
            os.environ["COMP_POINT"] = str(
                max(0, int(os.environ["COMP_POINT"]) - (len(line) - len(os.environ["COMP_LINE"])))
            )
    return _run(argparse.Namespace(command="run", args=argv), program="engage")


def _version() -> int:
    """The installed ENGAGE packages and their versions."""
    from importlib.metadata import distributions

    found = sorted(
        {(d.metadata["Name"], d.version) for d in distributions() if (d.metadata["Name"] or "").startswith("engage")}
    )
    for name, version in found:
        print(f"{name} {version}")
    return 0


def _plugins(namespace: argparse.Namespace) -> int:
    from engage.core.config.store import check_config_names, config_options
    from engage.core.plugins import merge_mappings, per_plugin

    manager = get_plugin_manager()
    console = Console()
    table = Table(title="Installed ENGAGE plugins")
    for column in ("plugin", "package", "version", "contributes"):
        table.add_column(column)
    options = config_options(manager)
    check_config_names(manager, options)
    # what each plugin's own implementation returns, each called through pluggy
    registry_hooks = _registries(manager.hook)
    registries = {kind: per_plugin(manager, hook) for kind, hook in registry_hooks.items()}
    listed = _LISTED_HOOKS | {hook.name for hook in registry_hooks.values()}
    for kind, results in registries.items():
        merge_mappings(results, kind)  # two plugins registering one name: one line naming both
    commands = per_plugin(manager, manager.hook.engage_commands)
    searchpaths = per_plugin(manager, manager.hook.engage_config_searchpath)
    for info in plugin_infos(manager):
        lines = []
        groups: dict[str, list[str]] = {}
        for plugin_name, option in options:
            if plugin_name == info.name:
                groups.setdefault(option.group, []).append(option.name)
        for plugin_name, entries in searchpaths:
            if plugin_name == info.name:
                for entry in entries or ():
                    for group, names in _searchpath_options(entry).items():
                        groups.setdefault(group, []).extend(names)
        for group, names in sorted(groups.items()):
            lines.append(f"{group}: " + ", ".join(sorted(names)))
        for kind, results in registries.items():
            own = sorted(name for plugin_name, result in results if plugin_name == info.name for name in result or {})
            if own:
                lines.append(f"{kind}s: " + ", ".join(own))
        own_commands = sorted(c.name for plugin_name, result in commands if plugin_name == info.name for c in result)
        if own_commands:
            lines.append("commands: " + ", ".join(own_commands))
        if info.hydra_plugins:
            lines.append("Hydra plugins: " + ", ".join(info.hydra_plugins))
        others = [h for h in info.hooks if h not in listed]
        if others:
            lines.append("hooks: " + ", ".join(others))
        table.add_row(info.name, info.distribution or "-", info.version or "-", "\n".join(lines) or "-")
    console.print(table)
    if namespace.options:
        console.print(_options_table(options, searchpaths))
    return 0


def _options_table(options: list, searchpaths: list[tuple[str, Any]]) -> Table:
    """Every option of every config group (``group=option``), with its plugin and what it is: a
    :class:`ConfigOption`'s ``help``, a YAML option's opening comment."""
    from rich.markup import escape

    from engage.core.config.validate import CONFIG_MODULE

    rows = [(o.group, o.name, plugin, o.help) for plugin, o in options]
    for plugin, entries in [("core", [f"pkg://{CONFIG_MODULE}"]), *searchpaths]:
        for entry in entries or ():
            for group, names in _searchpath_options(entry).items():
                rows.extend((group, name, plugin, about) for name, about in names.items())
    table = Table(title="Config options (engage run group=option)")
    for column in ("group", "option", "plugin", "what it is"):
        table.add_column(column)
    for group, name, plugin, about in sorted(rows):
        table.add_row(group, name, plugin, escape(about) or "-")
    return table


def _searchpath_options(entry: str) -> dict[str, dict[str, str]]:
    """The YAML options under a ``pkg://`` search-path entry, by config group, with their descriptions."""
    from engage.core.config.store import yaml_options

    return {
        group: {name: _first_sentence(file.read_text()) for name, file in names.items()}
        for group, names in yaml_options(entry).items()
    }


def _first_sentence(yaml_text: str) -> str:
    """The first sentence of a YAML config's opening comment (after ``# @package``), its description."""
    comment = []
    for line in yaml_text.splitlines():
        if not line.startswith("#"):
            break
        if not line.startswith("# @package"):
            comment.append(line.lstrip("#").strip())
    text = " ".join(comment)
    end = re.search(r"\.(\s+[A-Z(]|$)", text)  # a full stop before a new sentence, not "e.g. this"
    return text[: end.start()] if end else text


def _registries(hook: Any) -> dict[str, Any]:
    """The registry hooks (of a plugin manager's ``hook``) whose contributions ``engage plugins``
    lists by name, by kind."""
    return {
        "sampler": hook.engage_samplers,
        "simulator": hook.engage_simulators,
        "executor": hook.engage_executors,
        "provider": hook.engage_providers,
        "placement solver": hook.engage_placement_solvers,
    }


#: hooks besides the registries that ``engage plugins`` lists by what they contribute (a plugin's
#: other hooks are listed by name)
_LISTED_HOOKS = {"engage_config_options", "engage_config_searchpath", "engage_commands"}


def _plugins_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--options", action="store_true", help="also list every config group's options and what each is"
    )


def _replay_arguments(parser: argparse.ArgumentParser) -> None:
    from engage.core.replay import add_arguments

    add_arguments(parser)


def _replay(namespace: argparse.Namespace) -> int:
    from engage.core.replay import run_command

    return run_command(namespace)


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
        Command("plugins", "list installed plugins and what each contributes", _plugins_arguments, _plugins),
        Command(
            "replay",
            "run a recorded run again from its MLflow record and compare its metric curves",
            _replay_arguments,
            _replay,
        ),
    ]


def build_parser() -> tuple[argparse.ArgumentParser, dict[str, Command]]:
    manager = get_plugin_manager()
    parser = argparse.ArgumentParser(
        prog="engage",
        description="ENGAGE: online training from live simulations.",
        epilog='engage --version lists the installed ENGAGE packages; eval "$(engage -sc install=bash)" '
        "completes the sub-commands and engage run's overrides in bash.",
    )
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    commands: dict[str, Command] = {}
    owner: dict[str, str] = {}
    for plugin, added in reversed(
        per_plugin(manager, manager.hook.engage_commands)
    ):  # in registration order, core first
        for command in added or ():
            if command.name in commands:
                raise PluginError(
                    f"plugins {owner[command.name]!r} and {plugin!r} both add the command {command.name!r}; "
                    f"uninstall one of them, or set {DISABLE_ENV} to one of them"
                )
            commands[command.name], owner[command.name] = command, plugin
    for command in sorted(commands.values(), key=lambda c: c.name):
        sub_parser = sub.add_parser(
            command.name, help=command.help, description=command.help, add_help=not command.passthrough
        )
        command.add_arguments(sub_parser)
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
    if argv[0] == "--version":
        return _version()
    if argv[0] in COMPLETION_FLAGS:
        return _completion(argv, list(commands))
    if argv[0] == "run" and any(arg in COMPLETION_FLAGS for arg in argv[1:]):
        # engage run -sc install=bash: the same script as engage -sc (Hydra would register "run")
        return _completion(argv[1:], list(commands))
    name = argv[0]
    if name not in commands:
        close = difflib.get_close_matches(name, commands, n=1)
        hint = f"did you mean {close[0]!r}? " if close else ""
        print(f"engage: unknown command {name!r}; {hint}available: {', '.join(sorted(commands))}", file=sys.stderr)
        return 2
    command = commands[name]
    if command.passthrough:
        namespace = argparse.Namespace(command=name, args=argv[1:])
    else:
        namespace = parser.parse_args(argv)
    from engage.core.quick_exit import skip_last_collection
    from engage.core.run import Terminated

    skip_last_collection()
    try:
        return int(command.run(namespace) or 0)
    except PluginError as exc:  # a plugin that breaks the command before it starts (its options, hooks)
        print(f"engage {name}: {' '.join(str(exc).split())}", file=sys.stderr)
        return 2
    except KeyboardInterrupt as exc:
        if type(exc) is KeyboardInterrupt:  # Ctrl-C itself, not an error of that family
            # one line, not a traceback; Python still ends the process by SIGINT after its exit
            # handlers, as a shell or a job script expects of a program stopped by Ctrl-C
            print(f"engage {name}: interrupted (Ctrl-C)", file=sys.stderr)
            sys.excepthook = _interrupted_quietly
        raise
    except Terminated as exc:
        return exc.end_process(f"engage {name}")


def _interrupted_quietly(kind: type[BaseException], error: BaseException, traceback: Any) -> None:
    if not issubclass(kind, KeyboardInterrupt):
        sys.__excepthook__(kind, error, traceback)


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
