"""Building a run's parts from its :class:`~treesdk.training.config.RunConfig`, and rebuilding a
trained policy from a run folder: the one path the trainer, ``export``, ``sample`` and ``eval`` share."""

from __future__ import annotations

import inspect
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from treesdk import registry
from treesdk.interfaces import DEFAULT_ITERS, RewardModel, VelocityModel
from treesdk.training.config import RewardConfig, RunConfig
from treesdk.training.exporting.trained_policy import (  # noqa: F401 - re-exported: the run machinery's readers
    accepted_options, backend_options, find_checkpoint, load_trained_backend, rebuild_backend)


@dataclass
class RunParts:
    """Everything a :class:`RunConfig` names, built; ``config`` is the resolved config (recipe
    inline, rewards explicit, backend facts recorded): what ``config.json`` stores."""

    config: RunConfig
    backend: VelocityModel
    rewards: dict[str, RewardModel]
    eval_reward_models: dict[str, RewardModel]
    prompts: list[str]
    eval_prompts: list[str]
    eval_seeds: list[int]
    export_format: str | None


def load_rewards(configs: Mapping[str, RewardConfig], device: str | None) -> dict[str, RewardModel]:
    """Reward models by registry name with their options, on ``device``."""
    models = {}
    for name, cfg in configs.items():
        factory = registry.load("reward", name)
        registry.check_options("reward", name, factory, cfg.options, f"--reward-opt {name}:KEY")
        model = factory(**cfg.options)
        models[name] = model.to(device) if device else model
    return models


def build_run_parts(config: RunConfig, backend: VelocityModel | None = None, factory: Any = None) -> RunParts:
    """Load the backend (unless given; wrapped for ``config.precision``), resolve the recipe with the
    backend's scale defaults, and load the rewards (the backend's defaults when the config names
    none), prompts and eval set. ``factory``: the backend's entry point when the caller has already
    loaded it (the run path loads it once)."""
    from treesdk.training.loop.precision import with_precision

    if backend is None:
        factory = factory if factory is not None else registry.load("backend", config.backend.name)
        registry.check_options("backend", config.backend.name, factory, config.backend_options(), "--backend-opt")
        backend = factory(**config.backend_options())
    vm = with_precision(backend, config.precision)  # bf16/fp16: autocast around velocity and decode
    recipe = config.resolve_recipe(vm.recipe_defaults(), getattr(backend, "default_recipe", None))  # backend: vm may be a wrapper
    weights = {n: r.weight for n, r in config.rewards.items()} or vm.default_rewards()
    if not weights:
        raise ValueError(f"backend {config.backend.name!r} has no default reward: name one with --reward NAME[=WEIGHT]")
    heldout = list(config.eval_rewards) if config.eval_rewards is not None else [r for r in vm.heldout_rewards() if r not in weights]
    resolved = config.resolved(recipe, weights, heldout, getattr(backend, "default_iters", DEFAULT_ITERS))
    resolved = resolved.model_copy(update={"backend": resolved.backend.model_copy(update={"describe": vm.describe()})})
    eval_prompts, eval_seeds = vm.eval_set()
    fmt = config.export.format or vm.default_export_format()
    return RunParts(
        config=resolved,
        backend=vm,
        rewards=load_rewards(resolved.rewards, config.device),
        eval_reward_models=load_rewards(resolved.eval_rewards or {}, config.device),
        prompts=config.prompts.load(vm.default_prompts()),
        eval_prompts=list(eval_prompts),
        eval_seeds=list(eval_seeds),
        export_format=None if fmt == "none" else fmt,
    )


def parts_from_objects(backend: VelocityModel, recipe: Any, rewards: Mapping[str, RewardModel], prompts: Any, *,
                       weights: Mapping[str, float] | None = None, eval_prompts: Any = None, eval_seeds: Any = None,
                       eval_rewards: Mapping[str, RewardModel] | None = None, backend_options: Mapping[str, Any] | None = None,
                       **settings: Any) -> RunParts:
    """:class:`RunParts` over objects already built (the parts form of :func:`treesdk.train`).

    ``settings`` are named as RunConfig fields (``iters``, ``batch``, ``seed``, ``ema``, ...) or,
    for the fields of a section, as their ``treesdk train`` flag (``checkpoint_every``,
    ``keep_checkpoints``, ``export_format``, ``report_to``, ``eval_every``, ``profile``; see
    :func:`treesdk.training.settings.run_settings`); the rest are RunConfig's defaults, but no
    export unless ``export_format`` names one. ``backend_options`` are recorded in ``config.json``
    (the options the backend was built with, so that export/sample/eval can rebuild it)."""
    from treesdk.recipes import Recipe, load_recipe
    from treesdk.training.settings import run_settings

    check_parts(prompts, rewards, weights)
    recipe = recipe if isinstance(recipe, Recipe) else load_recipe(recipe)
    weighted = {name: float((weights or {}).get(name, 1.0)) for name in rewards}
    data: dict[str, Any] = {
        "backend": {"name": backend.name, "options": dict(backend_options or {}), "describe": backend.describe()},
        "recipe": recipe, "rewards": weighted, "eval_rewards": sorted(eval_rewards or {}), "export": {"format": None},
    }
    by_flag = {s.name: s.path for s in run_settings() if "." in s.path and not s.path.startswith(("backend.", "overrides."))}
    for key, value in settings.items():
        path = key if key in RunConfig.model_fields else by_flag.get(key)
        if path is None:
            raise TypeError(f"train(): unknown setting {key!r}; settings are RunConfig fields or "
                            f"{', '.join(sorted(by_flag))}")
        *sections, leaf = path.split(".")
        target = data
        for section in sections:
            target = target.setdefault(section, {})
        target[leaf] = value
    config = RunConfig.model_validate(data)
    if config.iters is None:
        config = config.model_copy(update={"iters": int(getattr(backend, "default_iters", DEFAULT_ITERS))})
    eval_prompts = list(eval_prompts or [])
    return RunParts(
        config=config, backend=backend, rewards=dict(rewards), eval_reward_models=dict(eval_rewards or {}),
        prompts=list(prompts), eval_prompts=eval_prompts,
        eval_seeds=list(eval_seeds) if eval_seeds is not None else list(range(len(eval_prompts))),
        export_format=config.export.format if config.export.format not in (None, "none") else None,
    )


def check_parts(prompts: Any, rewards: Mapping[str, Any], weights: Mapping[str, float] | None) -> None:
    """Python API arguments of a run: ``prompts`` a list (one string would be read character by
    character) and ``weights`` only for rewards that are passed."""
    from treesdk.errors import UserError
    from treesdk.safe_load import excerpt

    if isinstance(prompts, (str, bytes)):
        raise UserError(f"prompts: got one string ({excerpt(prompts, 60)}), which would be read character by "
                        "character; pass a list of prompts, e.g. [\"a cat\"]")
    unknown = sorted(set(weights or {}) - set(rewards))
    if unknown:
        raise UserError(f"weights name {unknown}, which are not among the rewards {sorted(rewards)}; "
                        "give a weight for a reward that is passed in `rewards`")


def precheck_run_config(config: RunConfig, factory: Any = None) -> None:
    """Check what can be checked before any model loads (each error names the flag or file): the
    prompts, the option keys of the rewards named, the backend's option keys, and the recipe (fully
    for a recipe file, the paths of the overrides for a preset, whose values the backend's scale
    defaults may still change). ``factory``: the backend's entry point, when already loaded."""
    if config.prompts.items is not None or config.prompts.file is not None:
        config.prompts.load([])
    factory = factory if factory is not None else registry.load("backend", config.backend.name)
    registry.check_options("backend", config.backend.name, factory, config.backend_options(), "--backend-opt")
    named = {**config.rewards, **(config.eval_rewards or {})}
    for name, reward in named.items():
        options = {**config.reward_options.get(name, {}), **reward.options}
        registry.check_options("reward", name, registry.load("reward", name), options, f"--reward-opt {name}:KEY")
    config.check_recipe(getattr(factory, "default_recipe", None))  # a class attribute: no model is loaded


def option_names(kind: str, name: str) -> set[str] | None:
    """Keyword options the registered ``kind`` plugin ``name`` takes (None: any, or an unknown name,
    which fails later with the registry's own message)."""
    try:
        factory = registry.load(kind, name)
    except Exception:  # noqa: BLE001 - unknown or broken plugin: reported where it is loaded
        return None
    return factory_option_names(factory)


def factory_option_names(factory: Any) -> set[str] | None:
    """Keyword options a loaded plugin factory takes (None: any); see :func:`option_names`."""
    accepted = accepted_options(factory)
    adapter = getattr(factory, "adapter_class", None)  # a diffusers family backend: **family_options
    if accepted is None and adapter is not None:
        named = {n for n, p in inspect.signature(factory).parameters.items() if p.kind is not p.VAR_KEYWORD}
        family = accepted_options(adapter)
        accepted = None if family is None else named | family
    return None if accepted is None else accepted - {"self"}


__all__ = ["RunParts", "accepted_options", "backend_options", "build_run_parts", "find_checkpoint", "load_rewards",
           "factory_option_names", "load_trained_backend", "option_names", "parts_from_objects", "rebuild_backend"]
