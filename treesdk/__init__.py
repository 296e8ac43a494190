"""treesdk: RL post-training of flow-matching text-to-image models with tree-structured sampling.

Public surface (stable): :func:`load_backend`, :func:`load_reward`, :func:`load_algorithm`,
:func:`train`, the interfaces in :mod:`treesdk.interfaces` and :mod:`treesdk.sde`.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from . import registry, sde
from .interfaces import AdvantageEstimator, LossTerm, RewardModel, Scheduler, VelocityModel

__version__ = "0.1.0"

if TYPE_CHECKING:  # pragma: no cover
    from .recipe import Recipe


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
    from .recipe import load_recipe

    return load_recipe(name_or_path, **overrides)


def train(*args: Any, **kwargs: Any):  # noqa: ANN201 - returns treesdk.trainer.Run
    """Run training; see :func:`treesdk.trainer.train`."""
    from .trainer import train as _train

    return _train(*args, **kwargs)


__all__ = [
    "AdvantageEstimator",
    "LossTerm",
    "RewardModel",
    "Scheduler",
    "VelocityModel",
    "load_algorithm",
    "load_backend",
    "load_reward",
    "registry",
    "sde",
    "train",
    "__version__",
]
