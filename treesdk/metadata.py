"""Metadata written into every exported safetensors file (all values are strings)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from .interfaces import VelocityModel


def export_metadata(backend: VelocityModel, recipe: Any, iterations: int) -> dict[str, str]:
    """``treesdk.*`` keys: base model, backend, algorithm, recipe (JSON), version, iterations."""
    from . import __version__

    facts = backend.describe()
    recipe_json = recipe.model_dump_json() if hasattr(recipe, "model_dump_json") else json.dumps(recipe)
    return {
        "treesdk.version": __version__,
        "treesdk.backend": backend.name,
        "treesdk.base_model": resolved_base_model(facts.get("model", facts.get("base_model", backend.name))),
        "treesdk.algorithm": str(getattr(recipe, "name", "custom")),
        "treesdk.recipe": recipe_json,
        "treesdk.iterations": str(int(iterations)),
    }


def resolved_base_model(model: Any) -> str:
    """A base model as stored in metadata: a local path made absolute (so ``export --check`` works
    from any folder), anything else (a hub id, a backend name) as given."""
    text = str(model)
    path = Path(text).expanduser()
    return str(path.resolve()) if text and path.exists() else text
