"""Recipes: algorithms as data.

* :mod:`treesdk.recipes.parts` — the registry of recipe part kinds (each declared once: spec + builder);
* :mod:`treesdk.recipes.recipe` — the :class:`Recipe` model and the built-in part specs;
* :mod:`treesdk.recipes.loading` — presets, files (nested or graph form), dotted overrides;
* :mod:`treesdk.recipes.presets` — the four published algorithms.
"""

from __future__ import annotations

from treesdk.recipes.loading import RecipeError, apply_overrides, load_recipe, read_recipe_file
from treesdk.recipes.recipe import *  # noqa: F403 - the part specs and Recipe
from treesdk.recipes.recipe import __all__ as _recipe_names
from treesdk.recipes import forward_parts as _forward_parts  # noqa: F401 - declares nft, awm, velocity-kl

from treesdk.recipes.pruning import prune_edges

__all__ = [*_recipe_names, "RecipeError", "apply_overrides", "load_recipe", "prune_edges", "read_recipe_file"]
