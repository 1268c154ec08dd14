"""engage-sampling's plugin: samplers and their ``sampler=NAME`` config options, and the
``+callbacks=NAME`` options of its Lightning callbacks."""

from __future__ import annotations

from typing import Any

from engage.core.config.options import ConfigOption
from engage.core.hookspecs import hookimpl
from engage.sampling import config

# (class name, config node, description); the classes are imported when the hook is called, not
# when the plugin is loaded (every Hydra composition loads it; SALib and SciPy take seconds)
SAMPLERS = {
    "lhs": ("LatinHypercubeSampler", config.LatinHypercubeConfig, "Latin hypercube designs"),
    "sobol_sequence": ("SobolSequenceSampler", config.SobolSequenceConfig, "scrambled Sobol' sequence"),
    "salib_sobol": ("SALibSobolSampler", config.SALibSobolConfig, "SALib Sobol design for Sobol indices"),
    "morris": ("MorrisSampler", config.MorrisConfig, "SALib Morris trajectories for screening"),
    "loss_driven": ("LossDrivenSampler", config.LossDrivenConfig, "around high-loss points plus exploration"),
    "breed": ("BreedSampler", config.BreedConfig, "generations bred around the highest-loss simulations"),
    "loss_density": (
        "LossDensitySampler",
        config.LossDensityConfig,
        "Sobol' sequence made denser along each parameter where losses are high",
    ),
    "sensitivity_weighted": (
        "SensitivityWeightedSampler",
        config.SensitivityWeightedConfig,
        "space filling stretched along sensitive parameters",
    ),
    "image_similarity": (
        "ImageSimilaritySampler",
        config.ImageSimilarityConfig,
        "refine where neighbouring outputs differ most",
    ),
}


@hookimpl
def engage_samplers() -> dict[str, type]:
    from engage.sampling import samplers

    return {name: getattr(samplers, class_name) for name, (class_name, _, _) in SAMPLERS.items()}


# ``+callbacks=NAME``: (callback class name in engage.sampling.callbacks, config node, description);
# the nodes carry no ``_target_``: this plugin builds them, through ``engage_callbacks``
CALLBACKS = {
    "sensitivity": (
        "SensitivityAnalysis",
        config.SensitivityAnalysisConfig,
        "Sobol/Morris indices of the model during training",
    ),
    "loss_driven": ("LossDrivenSampling", config.LossDrivenSamplingConfig, "per-simulation loss told to the sampler"),
    "image_similarity": (
        "ImageSimilaritySampling",
        config.ImageSimilaritySamplingConfig,
        "output similarity landscape for the sampler",
    ),
}


# What each adaptive sampler learns from, and the callback that tells it (with the options it
# needs to): a sampler chosen without it would never be told anything, and run as the
# space-filling design it starts from while its name says otherwise
FED_BY = {
    "loss_driven": ("loss_driven", {}),
    "breed": ("loss_driven", {}),
    "loss_density": ("loss_driven", {}),
    # analyses told once an epoch: their default period, in steps, may not come in a short run
    "image_similarity": ("image_similarity", {"every_n_epochs": 1, "every_n_steps": None}),
    "sensitivity_weighted": ("sensitivity", {"reweight_sampler": True, "every_n_epochs": 1, "every_n_steps": None}),
}


@hookimpl
def engage_callbacks(cfg: Any) -> list[Any]:
    """The sampling callbacks ``cfg.callbacks`` asks for (``+callbacks=[sensitivity,loss_driven]``),
    built with their options; a node of the same name with its own ``_target_`` is core's to build.
    An adaptive sampler (``sampler=loss_driven``, ...) chosen without the callback that tells it
    what it learns from gets that callback, and a line says so.

    Examples:
        >>> from omegaconf import OmegaConf
        >>> cfg = OmegaConf.create({"seed": 0, "callbacks": {"loss_driven": {"every_n_steps": 5}}})
        >>> [type(c).__name__ for c in engage_callbacks(cfg)]
        ['LossDrivenSampling']
    """
    from omegaconf import OmegaConf

    chosen = cfg.get("callbacks") or {}
    built = []
    for name, (class_name, _, _) in CALLBACKS.items():
        node = chosen.get(name)
        if node is None or "_target_" in node:
            continue
        from engage.sampling import callbacks  # SALib and scikit-image: only when a callback is chosen

        built.append(getattr(callbacks, class_name)(**OmegaConf.to_container(node, resolve=True)))
    feeder = sampler_feeder(cfg, built)
    if feeder is not None:
        built.append(feeder)
    _check_reweighting(cfg, built)
    return built


def _check_reweighting(cfg: Any, built: list[Any]) -> None:
    """Refuse, before anything runs, ``callbacks.sensitivity.reweight_sampler=true`` with a sampler
    that has no parameter weights to set."""
    from engage.core.config.validate import ConfigError

    target = (cfg.get("sampler") or {}).get("_target_")
    if not target or not any(getattr(c, "reweight_sampler", False) and c.sampler is None for c in built):
        return
    chosen = _class_of(target)  # none for a factory function: its sampler is checked when training starts
    if chosen is not None and not hasattr(chosen, "set_parameter_weights"):
        raise ConfigError(
            f"callbacks.sensitivity.reweight_sampler: the sampler {chosen.__name__} has no parameter weights to "
            "set; choose sampler=sensitivity_weighted or sampler=loss_driven, or set it to false"
        )


def sampler_feeder(cfg: Any, built: list[Any]) -> Any:
    """The callback the chosen sampler learns from (its defaults; an analysis once an epoch), when
    neither ``built`` nor a ``+callbacks.NAME._target_`` of the user's holds one; ``None`` when it
    needs none.

    Examples:
        >>> from omegaconf import OmegaConf
        >>> cfg = OmegaConf.create({"seed": 0, "sampler": {"_target_": "engage.sampling.samplers.breed.BreedSampler"}})
        >>> type(sampler_feeder(cfg, [])).__name__
        'LossDrivenSampling'
    """
    import dataclasses
    import logging

    target = (cfg.get("sampler") or {}).get("_target_")
    if not target:
        return None
    from engage.sampling import callbacks, samplers

    for sampler_name, (callback_name, needed) in FED_BY.items():
        if not _is_subclass(target, getattr(samplers, SAMPLERS[sampler_name][0])):
            continue
        class_name, node, _ = CALLBACKS[callback_name]
        feeder_class = getattr(callbacks, class_name)
        if any(isinstance(c, feeder_class) for c in built) or any(
            _is_subclass(user["_target_"], feeder_class)
            for user in (cfg.get("callbacks") or {}).values()
            if user and "_target_" in user
        ):
            return None
        options = {f.name: f.default for f in dataclasses.fields(node)} | needed
        if "seed" in options:  # the config's ``${seed}``
            options["seed"] = cfg.get("seed", 0)
        logging.getLogger("engage.sampling").info(
            "sampler %s learns from what %s tells it: added (+callbacks=%s to set its options)",
            target.rsplit(".", 1)[-1],
            class_name,
            callback_name,
        )
        return feeder_class(**options)
    return None


@hookimpl
def engage_config_options() -> list[ConfigOption]:
    options = [ConfigOption("sampler", name, node, text) for name, (_, node, text) in SAMPLERS.items()]
    # core's ``callbacks`` is a dict of named nodes: each option adds its own entry, so
    # ``+callbacks=[sensitivity,loss_driven]`` composes several and ``callbacks.NAME.KEY=V`` sets values
    options += [ConfigOption("callbacks", name, {name: node}, text) for name, (_, node, text) in CALLBACKS.items()]
    return options


def _class_of(target: str) -> type | None:
    """The class a ``_target_`` names; ``None`` for a factory function, or nothing importable
    (Hydra says so when it builds it)."""
    from hydra.utils import get_class

    try:
        found = get_class(target)
    except Exception:
        return None
    return found if isinstance(found, type) else None


def _is_subclass(target: str, base: type) -> bool:
    """Whether the ``_target_`` names a subclass of ``base``."""
    found = _class_of(target)
    return found is not None and issubclass(found, base)
