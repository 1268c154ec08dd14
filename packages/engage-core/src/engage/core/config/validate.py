"""Composition and validation of ``engage run`` configs, with one-line errors.

Hydra reports composition problems over several lines with a hint about ``HYDRA_FULL_ERROR``;
users of ``engage run`` get one line naming the key and what is allowed, and exit code 2.
"""

from __future__ import annotations

import difflib
import itertools
import re
from collections.abc import Callable, Iterable, Sequence
from dataclasses import fields, is_dataclass
from typing import Any

from hydra import compose, initialize_config_module
from hydra.core.global_hydra import GlobalHydra
from hydra.core.override_parser.overrides_parser import OverridesParser
from hydra.core.override_parser.types import ValueType
from hydra.errors import HydraException, OverrideParseException
from omegaconf import DictConfig, OmegaConf
from omegaconf.errors import OmegaConfBaseException

from engage.core.config.schema import ConfigValueError
from engage.core.config.store import options_by_group, register_configs

CONFIG_MODULE = "engage.core.conf"
CONFIG_NAME = "config"
EXIT_CONFIG_ERROR = 2


class ConfigError(ValueError):
    """A config that cannot run; the message is one line naming the key and what is allowed."""


def _first_line(text: str) -> str:
    return next((line.strip() for line in text.splitlines() if line.strip()), text.strip())


def _keys_of(cfg: DictConfig | None, dotted: str) -> list[str]:
    parent = dotted.rsplit(".", 1)[0] if "." in dotted else ""
    node = OmegaConf.select(cfg, parent) if parent and cfg is not None else cfg
    if isinstance(node, DictConfig):
        return sorted(k for k in node.keys() if not str(k).startswith("_"))
    return []


def _fields_of(error: BaseException | None) -> list[str]:
    """The fields of the structured config an OmegaConf ``error`` was raised in (a Hydra
    plugin's options, such as a launcher's, which the composed config ``base`` does not hold)."""
    node_type = getattr(error, "object_type", None)
    if isinstance(node_type, type) and is_dataclass(node_type):
        return sorted(f.name for f in fields(node_type) if not f.name.startswith("_"))
    return []


def missing_interpolation(key: str, missing: str) -> str:
    """The line for ``key`` whose value reads ``${missing}``, which the config does not hold."""
    return f"{key}: reads ${{{missing}}}, which is not in the config (removed, or misspelt?)"


def _launchers_with(option: str) -> list[str]:
    """The installed Hydra launchers (``hydra/launcher=NAME``) that take ``option``."""
    return sorted(name for name in _launcher_nodes() if option in _launcher_keys(name))


def _launcher_nodes() -> dict[str, DictConfig]:
    from hydra.core.config_store import ConfigStore

    launchers = ConfigStore.instance().repo.get("hydra", {}).get("launcher", {})
    return {
        name.removesuffix(".yaml"): entry.node
        for name, entry in launchers.items()
        if isinstance(getattr(entry, "node", None), DictConfig)
    }


def _launcher_keys(name: str) -> set[str]:
    """The options launcher ``name`` takes."""
    node = _launcher_nodes().get(name)
    return {str(k) for k in node.keys() if not str(k).startswith("_")} if node is not None else set()


def unknown_key(key: str, allowed: list[str]) -> str:
    """The line for an unknown ``key``: the closest allowed name first, then all of them (a
    ``trainer`` argument ENGAGE builds itself says where it is set instead)."""
    from engage.core.config.schema import TRAINER_ARGUMENTS_OWNED

    group, _, name = key.rpartition(".")
    if group == "trainer" and name in TRAINER_ARGUMENTS_OWNED:
        return f"{key}: ENGAGE builds the Trainer's {name}; set it with {TRAINER_ARGUMENTS_OWNED[name]}"
    close = difflib.get_close_matches(name, allowed, n=1, cutoff=0.6)
    hint = f"did you mean {group + '.' if group else ''}{close[0]}? " if close else ""
    if group == "hydra.launcher" and name not in allowed:
        # an option of another launcher than the one chosen (Hydra's basic by default)
        others = [launcher for launcher in _launchers_with(name) if not set(allowed) >= _launcher_keys(launcher)]
        if others:
            chosen = " or ".join(f"hydra/launcher={launcher}" for launcher in others)
            return f"{key}: the chosen launcher has no such option; it is an option of {chosen}"
    if not allowed and key.startswith("hydra."):
        return f"{key}: unknown key; `engage run --cfg hydra` shows Hydra's keys"
    if not allowed:  # a mapping of free keys (data.executor_options): a new one is added with +
        return f"{key}: not in the config; add it with +{key}=VALUE"
    return f"{key}: unknown key; {hint}allowed: {', '.join(allowed)}"


def keywords_not_taken(function: Callable[..., object], given: Iterable[str]) -> tuple[list[str], list[str]]:
    """``(the names of given that function does not take, the names it takes)``; both empty when
    it takes ``**kwargs`` (what it passes them on to checks them)."""
    import inspect

    parameters = inspect.signature(function).parameters
    if any(p.kind is inspect.Parameter.VAR_KEYWORD for p in parameters.values()):
        return [], []
    taken = [name for name in parameters if name != "self"]
    return [name for name in given if name not in taken], taken


#: the config groups whose further options come with another ENGAGE package: (module, distribution)
_GROUP_PACKAGES = {
    "sampler": ("engage.sampling", "engage-sampling"),
    "callbacks": ("engage.sampling", "engage-sampling"),
    "strategy": ("engage.memory", "engage-memory"),
    "hydra/launcher": ("engage.deploy", "engage-deploy"),
    "infrastructure": ("engage.deploy", "engage-deploy"),
    "placement": ("engage.deploy", "engage-deploy"),
    "serving": ("engage.deploy", "engage-deploy"),
}


def _package_hint(group: str) -> str:
    """Where more options of ``group`` come from, when that ENGAGE package is not installed."""
    import importlib.util

    module, distribution = _GROUP_PACKAGES.get(group.lstrip("+"), (None, None))
    if module is None or importlib.util.find_spec(module) is not None:
        return ""
    return f" (more come with {distribution}: pip install {distribution})"


def _target_key(cfg: Any, target: str, prefix: str = "") -> str | None:
    """The config path of the node whose ``_target_`` is ``target`` (depth first), if any."""
    if isinstance(cfg, DictConfig):
        if cfg.get("_target_", None) == target:
            return prefix or None
        for key in cfg:
            found = _target_key(cfg._get_node(key), target, f"{prefix}.{key}" if prefix else str(key))
            if found:
                return found
    return None


def explain(exc: BaseException, base: DictConfig | None = None) -> str:
    """Turn a Hydra/OmegaConf composition error into one line."""
    text = str(exc) + ("\n" + str(exc.__cause__) if exc.__cause__ is not None else "")
    located = re.match(r"Error locating target '([^']+)'", str(exc))
    if located:  # a _target_ that cannot be imported: say which and why, not Hydra's advice
        key = _target_key(base, located.group(1)) if base is not None else None
        where = f"{key}._target_" if key else "_target_"
        lines = [line.strip() for line in str(exc.__cause__ or "").splitlines() if line.strip()]
        why = f" ({lines[1] if len(lines) > 1 else lines[0]})" if lines else ""
        return (
            f"{where}={located.group(1)}: cannot be imported{why}; check the module and name, and that its "
            "package is installed or on PYTHONPATH"
        )
    built = re.match(r"Error in call to target '([^']+)'", str(exc))
    if built:  # the object a config builds refused its arguments: say what and why
        cause = exc.__cause__
        why = f"{type(cause).__name__}: {_first_line(str(cause))}" if cause is not None else _first_line(text)
        return f"building {built.group(1)} failed: {why}"
    several = re.search(r"Multiple values for (\S+)\. To override a value use 'override \S+: (\S+)'", text)
    if several:  # +group=option where the group has a default
        group, option = several.group(1), several.group(2)
        return f"+{group}={option}: {group} has a default; write {group}={option}"
    ambiguous = re.search(r"Ambiguous value for argument '([^=']+)=([^']*)'", text)
    if ambiguous:  # Hydra's three ways out, on one line
        key, value = ambiguous.groups()
        return (
            f"{key}={value}: several values; write {key}=[{value}] for a list, {key}='{value}' for a string, "
            "or add -m to sweep over them"
        )
    no_default = re.search(r"Could not override '([^']+)'\. No match in the defaults list\.", text)
    appended = re.search(r"To append to your default list use \+(\S+)", text)
    if no_default and appended:
        group = no_default.group(1)
        return f"{appended.group(1)}: {group} has no default to replace; write +{appended.group(1)}"
    exists = re.search(r"Could not append to config\. An item is already at '([^']+)'\.", text)
    plus = re.search(r"Either remove \+ prefix: '([^']*)'", text)
    if exists and plus:
        key, override = exists.group(1), plus.group(1)
        return f"+{override}: {key} exists already; write {override} to change it, or ++{override}"
    module = re.search(r"Primary config module '([^']+)' not found", text)
    if module:  # a relative --config-path is a package path next to ENGAGE's own configs
        return (
            f"--config-path: no config module {module.group(1)!r}; a relative -cp is read inside ENGAGE's "
            "package: give an absolute path (-cp $PWD/my_configs), or add a folder with -cd"
        )
    parse = re.search(r"Error parsing override '([^']*)'\n(.*)", text)
    if parse:
        return f"cannot parse override {parse.group(1)!r} ({parse.group(2).strip()}); write key=value or group=option"
    missing = re.search(r"Could not find '([^']+)/([^'/]+)'", text)
    if missing:
        group, name = missing.group(1), missing.group(2)
        options = (
            re.findall(r"^\t(\S+)$", text.split("Available options", 1)[-1], flags=re.M)
            if "Available options" in text
            else []
        )
        allowed = ", ".join(options) if options else "none installed"
        return f"{group}={name}: unknown option for '{group}'; installed: {allowed}{_package_hint(group)}"
    override = (
        re.search(r"Could not override '([^']+)'", text)
        or re.search(r"Error merging override ([^=\s]+)=", text)
        or re.search(r"Could not append to config\. An item is already at '([^']+)'", text)
    )
    key = override.group(1) if override else None
    full_key = re.search(r"full_key: (\S+)", text)
    key = key or (full_key.group(1) if full_key else None)
    # OmegaConf's own errors carry the key when their text does not (a --cfg --resolve)
    key = key or getattr(exc, "full_key", None) or getattr(exc.__cause__, "full_key", None) or None
    if re.search(r"not in struct|Key '[^']+' not in '|Key '[^']+' is not in struct", text):
        assigned = re.search(r"To append to your config use \+(\S+)=(.*)", text)
        if key and full_key and full_key.group(1).startswith(f"{key}.") and assigned:
            # a mapping given whole (data.executor_options={bogus: 1}) to a key that holds one
            value = assigned.group(2).strip()
            return f"{key}: '=' replaces only keys it has; write ++{key}={value} to add {full_key.group(1)}"
        return unknown_key(key or "", _keys_of(base, key or "") or _fields_of(exc.__cause__))
    undeletable = re.search(r"(\w+) \(DictConfig\) does not support deletion", text)
    if undeletable and key:
        return f"~{key}: a field of {undeletable.group(1)} cannot be removed; set it instead ({key}=VALUE)"
    unresolved = re.search(r"Interpolation key '([^']+)' not found", text)
    if unresolved and key:
        return missing_interpolation(key, unresolved.group(1))
    converted = re.search(r"Value '([^']*)' (?:of type '\w+' )?could not be converted to (\w+)", text)
    if converted:
        return f"{key}: expected {converted.group(2).lower()}, got {converted.group(1)!r}"
    invalid = re.search(r"Invalid value '([^']*)', expected one of \[([^\]]*)\]", text)
    if invalid:
        return f"{key}: {invalid.group(1)!r} is not allowed; choose one of {invalid.group(2)}"
    for line in text.splitlines():
        if line.strip() and not line.strip().startswith(
            ("To append", "Set the environment", "full_key", "object_type", "reference_type", "Error merging")
        ):
            prefix = f"{key}: " if key and key not in line else ""
            return f"{prefix}{line.strip()}"
    return _first_line(text)


def check_values(cfg: DictConfig) -> None:
    """Run every structured config's range checks (``__post_init__``), and those that need two
    groups at once; raise :class:`ConfigError`."""
    for group in cfg.keys():
        if group == "hydra" or OmegaConf.is_missing(cfg, group):
            continue  # a group with no option chosen: said below
        _check_node(cfg, cfg[group], str(group))
        if group == "callbacks" and isinstance(cfg[group], DictConfig):
            # each callback chosen (+callbacks=NAME) is a structured config of its own
            for name in cfg[group].keys():
                if not OmegaConf.is_missing(cfg[group], name):
                    _check_node(cfg, cfg[group][name], f"{group}.{name}")
    # the top level's own values (task, checkpoint_every_n_steps, ...): the groups above are
    # nodes of their own, the top level is no dataclass instance Hydra builds
    from types import SimpleNamespace

    from engage.core.config.schema import EngageConfig

    scalars = {
        f.name: cfg.get(f.name, f.default)
        for f in fields(EngageConfig)
        if f.name not in cfg or not (OmegaConf.is_missing(cfg, f.name) or isinstance(cfg[f.name], DictConfig))
    }
    try:
        EngageConfig.__post_init__(SimpleNamespace(**scalars))  # type: ignore[arg-type]
    except ConfigValueError as exc:
        raise ConfigError(f"{exc.key}: {exc.message}") from None
    _check_top_level(cfg)
    _check_validation_interval(cfg)
    _check_executor(cfg)


def check_accelerator(cfg: DictConfig) -> None:
    """``trainer.accelerator`` named (not ``auto`` or ``cpu``) must be there on this machine,
    which Lightning would say only once the run's folder exists. For a run that trains here:
    a sweep's jobs may run on other machines (a Slurm partition of GPU nodes)."""
    name = OmegaConf.select(cfg, "trainer.accelerator", default="auto")
    if not isinstance(name, str) or name in ("auto", "cpu"):
        return
    from lightning.pytorch.accelerators import AcceleratorRegistry

    wanted = ["cuda", "mps"] if name == "gpu" else [name]
    known = AcceleratorRegistry.available_accelerators()
    if not all(w in known for w in wanted):
        return  # an accelerator object or a name Lightning does not register: Lightning says
    try:  # the class's own check: making an accelerator may need its package (torch_xla)
        available = any(AcceleratorRegistry[w]["accelerator"].is_available() for w in wanted)
    except Exception:  # it cannot tell: Lightning says, when it makes the Trainer
        return
    if not available:
        raise ConfigError(
            f"trainer.accelerator: {name!r} is not available on this machine; use auto or cpu, or run where it is"
        )


def check_store(config: DictConfig) -> None:
    """The run's experiment, when an MLflow server of the user's own created it in an SQLite
    store with ``--serve-artifacts``, is used through that server (read with ``sqlite3``,
    without MLflow); raise :class:`ConfigError`."""
    from engage.core.tracking.sqlite_store import artifacts_behind_a_server
    from engage.core.tracking.store import resolve_experiment, resolve_tracking_uri

    uri = resolve_tracking_uri(OmegaConf.select(config, "logger.uri", default=None))
    experiment = resolve_experiment(OmegaConf.select(config, "logger.experiment", default=None))
    line = artifacts_behind_a_server(uri, experiment, "logger.uri", "logger.experiment")
    if line is not None:
        raise ConfigError(line)


def _check_executor(cfg: DictConfig) -> None:
    """``data.executor`` installed, and its options ones it takes, with values it can check
    without building it (an executor may submit a probe job when built)."""
    executor = OmegaConf.select(cfg, "data.executor", default=None)
    if not isinstance(executor, str):
        return
    from engage.core.online.wiring import check_executor

    options = OmegaConf.select(cfg, "data.executor_options", default=None)
    try:
        check_executor(executor, OmegaConf.to_container(options, resolve=True) if options is not None else {})
    except ValueError as exc:
        raise ConfigError(str(exc)) from None


def _check_node(cfg: DictConfig, node: object, where: str) -> None:
    """The range checks of one structured config node at ``where`` (unknown keys first)."""
    node_type = OmegaConf.get_type(node) if isinstance(node, DictConfig) else None
    if node_type is None or not is_dataclass(node_type):
        return
    known = {f.name for f in fields(node_type)}
    extra = sorted(str(k) for k in node.keys() if k not in known)
    if extra:
        raise ConfigError(unknown_key(f"{where}.{extra[0]}", sorted(k for k in known if not k.startswith("_"))))
    try:
        OmegaConf.to_object(node)
    except ConfigValueError as exc:
        raise ConfigError(f"{where}.{exc.key}: {exc.message}") from None
    except OmegaConfBaseException as exc:
        cause = exc.__cause__ or exc.__context__
        if isinstance(cause, ConfigValueError):
            raise ConfigError(f"{where}.{cause.key}: {cause.message}") from None
        raise ConfigError(explain(exc, cfg)) from None


def _check_top_level(cfg: DictConfig) -> None:
    """Every group chosen, and no top-level key the run would ignore: ``+seeed=3`` is a typo, while
    a key that an interpolation reads (``+width=64 model.width=${width}``) is a variable."""
    from engage.core.config.schema import EngageConfig

    # ENGAGE's keys, and the groups plugins add (each a key of the registered schema)
    allowed = sorted({f.name for f in fields(EngageConfig)} | set(options_by_group()))
    for name in ("simulator", "sampler", "data", "model", "strategy"):
        node = cfg.get(name) if name in cfg and not OmegaConf.is_missing(cfg, name) else None
        # an option of these groups names what it builds; values alone (an experiment's, after
        # ~data) build nothing
        built = isinstance(node, DictConfig) and ("_target_" in node or name == "strategy")
        if not built:
            raise ConfigError(f"{name}: no option chosen (removed with ~{name}?); choose one with {name}=<option>")
    extra = [str(k) for k in cfg.keys() if k not in allowed and k != "hydra"]
    if extra:
        # interpolations as written: ${width}, ${..width} (relative), ${oc.select:width,8}, nested
        # ones, and those of Hydra's own settings on the command line (hydra.run.dir=out/${tag})
        text = OmegaConf.to_yaml(cfg) + "\n".join(_command_line_overrides())
        bodies = [text[m.end() : text.find("}", m.end())] for m in re.finditer(r"\$\{", text)]
        unread = [
            k for k in extra if not any(re.search(r"(?:^|[\s:,(\[])\.*" + re.escape(k) + r"\b", b) for b in bodies)
        ]
        if unread:
            line = unknown_key(unread[0], allowed)
            raise ConfigError(f"{line} (a top-level key is kept only when an interpolation reads it)")


def _command_line_overrides() -> list[str]:
    """The command line as written (Hydra keeps its own settings' overrides resolved)."""
    import sys

    return [str(arg) for arg in sys.argv[1:]]


def _check_validation_interval(cfg: DictConfig) -> None:
    """A batch count for ``trainer.val_check_interval`` fits in an epoch of a DataModule that
    says how many batches one holds (``data.batches_per_epoch``), as Lightning requires."""
    trainer, data = cfg.get("trainer"), cfg.get("data")
    interval = trainer.get("val_check_interval") if isinstance(trainer, DictConfig) else None
    batches = data.get("batches_per_epoch") if isinstance(data, DictConfig) else None
    if not isinstance(interval, int) or isinstance(interval, bool) or not isinstance(batches, int):
        return
    if trainer.get("check_val_every_n_epoch", 1) is None or trainer.get("fast_dev_run"):
        return  # counted across epochs; fast_dev_run sets its own interval
    limit = trainer.get("limit_train_batches")
    if isinstance(limit, int) and not isinstance(limit, bool):
        batches = min(batches, limit)
    elif isinstance(limit, float):
        batches = int(batches * limit)
    if interval > batches:
        raise ConfigError(
            f"trainer.val_check_interval: {interval} batches is more than an epoch holds ({batches}, from "
            "data.batches_per_epoch and trainer.limit_train_batches); lower it, or set "
            "trainer.check_val_every_n_epoch=null to count batches across epochs"
        )


def single_run_overrides(overrides: Sequence[str], config_loader: Any = None) -> list[list[str]]:
    """Override lists that cover every value of every sweep (others at their first value), and
    both ends of an ``interval()``; ``config_loader`` (Hydra's) expands ``glob()`` over a group's
    options, as Hydra's sweeper does."""
    parsed = OverridesParser.create(config_loader=config_loader).parse_overrides(list(overrides))
    plain: list[str] = []
    sweeps: list[tuple[str, list[str]]] = []
    for override in parsed:
        if override.value_type == ValueType.INTERVAL_SWEEP:
            # a sweeper that draws from an interval (Optuna's): its two ends are checked
            interval = override.value()
            if interval.start > interval.end:
                raise ConfigError(
                    f"{override.get_key_element()}: interval({interval.start:g}, {interval.end:g}) has its ends "
                    f"reversed; write interval({interval.end:g}, {interval.start:g})"
                )
            ends = [str(int(x)) if float(x).is_integer() else repr(float(x)) for x in (interval.start, interval.end)]
            sweeps.append((override.get_key_element(), ends))
        elif override.is_sweep_override():
            key = override.get_key_element()
            values = list(itertools.islice(override.sweep_string_iterator(), 64))
            sweeps.append((key, values))
        else:
            plain.append(override.input_line)
    if not sweeps:
        return [plain]
    firsts = [f"{key}={values[0]}" for key, values in sweeps]
    variants = [plain + firsts]
    for index, (key, values) in enumerate(sweeps):
        for value in values[1:]:
            variant = list(firsts)
            variant[index] = f"{key}={value}"
            variants.append(plain + variant)
    return variants


def sweeper_params(config: DictConfig, config_loader: Any = None) -> list[str]:
    """The sweeper's ``params`` from the config (``hydra.sweeper.params``, as Hydra's basic and
    Optuna's sweepers take them) as overrides: checked with the command line's before any job,
    recorded on the sweep's run, and naming its jobs by what they vary. An entry in another
    sweeper's own form (not an override's text) is left to that sweeper.

    Example::

        >>> sweeper_params(OmegaConf.create({"hydra": {"sweeper": {"params": {
        ...     "model.lr": "interval(0.0005, 0.01)", "model.width": "8,16", "other": {"kind": "own"}}}}}))
        ['model.lr=interval(0.0005, 0.01)', 'model.width=8,16']
    """
    params = OmegaConf.select(config, "hydra.sweeper.params", default=None)
    if not isinstance(params, DictConfig):
        return []
    parser = OverridesParser.create(config_loader=config_loader)
    kept = []
    for key, value in params.items():
        if isinstance(value, str | int | float | bool):
            try:
                parser.parse_overrides([f"{key}={value}"])
            except HydraException:
                continue
            kept.append(f"{key}={value}")
    return kept


def last_per_key(overrides: Sequence[str]) -> list[str]:
    """``overrides`` with one per key, the last, as Hydra's sweepers take them: the command
    line's ``model.lr=0.01`` replaces a config file's ``model.lr: 0.5,1`` in ``params``.

    Example::

        >>> last_per_key(["model.lr=0.5,1", "seed=1", "model.lr=0.01"])
        ['seed=1', 'model.lr=0.01']
    """
    parsed = OverridesParser.create().parse_overrides(list(overrides))
    last = {o.get_key_element(): i for i, o in enumerate(parsed)}
    return [text for i, (text, o) in enumerate(zip(overrides, parsed, strict=True)) if last[o.get_key_element()] == i]


def unparsable(overrides: Sequence[str]) -> str | None:
    """One line naming the first override Hydra's grammar refuses (its own message names none),
    with the fix for a value holding ``=`` or other special characters; ``None`` when all parse."""
    parser = OverridesParser.create()
    for override in overrides:
        try:
            parser.parse_overrides([override])
        except HydraException as exc:
            key, sep, value = override.partition("=")
            hint = f"; quote a value with special characters: {key}='{value}'" if sep and value else ""
            return f"cannot parse override {override!r} ({_first_line(str(exc))}){hint}"
    return None


def option_choices(args: Sequence[str]) -> list[str]:
    """The overrides among ``args`` that choose an option (``sampler=loss_driven``,
    ``+callbacks=...``), not a value inside one (``sampler.sigma=0.1``) nor a flag."""
    return [a for a in args if "=" in a and not a.startswith("-") and "." not in a.split("=", 1)[0]]


def _chosen(overrides: Sequence[str]) -> DictConfig | None:
    """The config with only the options chosen among ``overrides``, whose keys an unknown key's
    line lists; ``None`` if that fails too."""
    try:
        return compose(config_name=CONFIG_NAME, overrides=option_choices(overrides))
    except (HydraException, OmegaConfBaseException):
        return None


def compose_config(overrides: Sequence[str] = (), *, multirun: bool = False) -> DictConfig:
    """Compose and validate the config of ``engage run`` with these overrides.

    With ``multirun``, sweep overrides (``a=1,2``) are expanded and every value is checked.
    Returns the config of the first job. Raises :class:`ConfigError`.
    """
    register_configs()
    GlobalHydra.instance().clear()
    first: DictConfig | None = None
    with initialize_config_module(config_module=CONFIG_MODULE, version_base="1.3"):
        try:
            loader = GlobalHydra.instance().config_loader()
            variants = single_run_overrides(overrides, loader) if multirun else [list(overrides)]
        except HydraException as exc:
            raise ConfigError(unparsable(overrides) or f"cannot parse overrides: {_first_line(str(exc))}") from None
        base = compose(config_name=CONFIG_NAME)
        for variant in variants:
            try:
                cfg = compose(config_name=CONFIG_NAME, overrides=variant)
            except (HydraException, OmegaConfBaseException) as exc:
                # Hydra's grammar names no override it refuses: found here, only when it refused one
                refused = unparsable(variant) if isinstance(exc, OverrideParseException) else None
                raise ConfigError(refused or explain(exc, _chosen(variant) or base)) from None
            check_values(cfg)
            first = first or cfg
    GlobalHydra.instance().clear()
    assert first is not None
    return first
