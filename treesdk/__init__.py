"""treesdk: RL post-training of flow-matching text-to-image models with tree-structured sampling.

Public surface (stable): :func:`load_backend`, :func:`load_reward`, :func:`load_algorithm`,
:class:`RunConfig`, :func:`train`, :class:`Trainer`, the interfaces in :mod:`treesdk.interfaces`
and the SDE math in :mod:`treesdk.sde`. What ``treesdk train`` is built from is public too:
:func:`run_training` (the one run path, which :func:`train` takes), :func:`run_settings` (every
setting with its flag, help and panel, read from ``RunConfig``), and the run-file readers
:func:`read_config_file`, :func:`is_run_file_data`, :func:`run_config_from_data`, with
:func:`option_names` (a plugin's keyword options) and :func:`default_precision`.

Layers, each importing only the ones below it:

* the kernel (this folder): ``interfaces``, ``sde``, ``sampler``, ``advantages``, ``losses``,
  ``rewards``, ``images``, ``io``, ``registry``;
* :mod:`treesdk.recipes`: the registry of recipe parts, the :class:`Recipe`, presets, loading;
* :mod:`treesdk.training`: the run configuration, the trainer, update, checkpoints, distributed
  runs, export;
* :mod:`treesdk.nodes`: node specs, graph files, the ComfyUI pack.
"""

from __future__ import annotations

from typing import Any

from treesdk import registry, sde
from treesdk._version import __version__
from treesdk.interfaces import AdvantageEstimator, LossTerm, RewardModel, VelocityModel
from treesdk.recipes import Recipe, load_recipe
from treesdk.training.parallel.collective import Collective
from treesdk.training.config import RunConfig, is_run_file_data, read_config_file, run_config_from_data
from treesdk.training.exporting.export import export_run
from treesdk.training.loop.plan import plan_run
from treesdk.training.loop.precision import default_precision
from treesdk.training.exporting.trained_policy import load_trained_backend
from treesdk.training.loop.runs import option_names
from treesdk.training.loop.session import run_training, train
from treesdk.training.settings import Setting, run_settings
from treesdk.training.loop.trainer import Run, Trainer


def load_backend(name: str, **options: Any) -> VelocityModel:
    """Construct the backend registered as ``name`` (entry-point group ``treesdk.backends``).

    Common options every backend accepts: ``model`` (path or local cache id; None = the backend's
    default), ``resolution`` (pixels), ``device``, ``dtype``.
    """
    factory = registry.load("backend", name)
    registry.check_options("backend", name, factory, options, "--backend-opt")
    return factory(**options)


def load_reward(name: str, **options: Any) -> RewardModel:
    """Construct the reward registered as ``name`` (entry-point group ``treesdk.rewards``)."""
    factory = registry.load("reward", name)
    registry.check_options("reward", name, factory, options, f"--reward-opt {name}:KEY")
    return factory(**options)


def load_algorithm(name_or_path: str, **overrides: Any) -> Recipe:
    """A preset by name (``treesdk.algorithms``) or a recipe file (YAML/JSON), with overrides applied.

    Overrides use dotted paths into the recipe, e.g. ``{"tree.k": 3, "window.start": 2}``.
    """
    return load_recipe(name_or_path, **overrides)


__all__ = [
    "AdvantageEstimator",
    "Collective",
    "LossTerm",
    "Recipe",
    "RewardModel",
    "Run",
    "RunConfig",
    "Setting",
    "Trainer",
    "VelocityModel",
    "load_algorithm",
    "load_backend",
    "load_reward",
    "registry",
    "sde",
    "export_run",
    "load_trained_backend",
    "plan_run",
    "default_precision",
    "is_run_file_data",
    "option_names",
    "read_config_file",
    "run_config_from_data",
    "run_settings",
    "run_training",
    "train",
    "__version__",
]
