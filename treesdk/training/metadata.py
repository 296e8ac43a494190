"""Metadata written into every exported safetensors file (all values are strings)."""

from __future__ import annotations

import json
from typing import Any

from treesdk.interfaces import VelocityModel


def export_metadata(backend: VelocityModel, recipe: Any, iterations: int) -> dict[str, str]:
    """``treesdk.*`` keys: base model, backend, algorithm, recipe (JSON), version, iterations."""
    from treesdk import __version__

    facts = backend.describe()
    recipe_json = recipe.model_dump_json() if hasattr(recipe, "model_dump_json") else json.dumps(recipe)
    return {
        "treesdk.version": __version__,
        "treesdk.backend": backend.name,
        "treesdk.base_model": str(facts.get("model", facts.get("base_model", backend.name))),
        "treesdk.algorithm": str(getattr(recipe, "name", "custom")),
        "treesdk.recipes": recipe_json,
        "treesdk.iterations": str(int(iterations)),
    }
