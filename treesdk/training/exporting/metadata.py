"""Metadata written into every exported safetensors file (all values are strings)."""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

from treesdk._version import __version__
from treesdk.recipes import Recipe


def export_metadata(backend_name: str, facts: Mapping[str, Any], recipe: Recipe, iterations: int) -> dict[str, str]:
    """``treesdk.*`` keys: version, backend, base model (``facts`` are the backend's ``describe()``:
    ``model_path``/``model``/``base_model``), algorithm (the recipe's name), recipe (JSON), iterations."""
    base = facts.get("model_path") or facts.get("model") or facts.get("base_model") or backend_name
    return {
        "treesdk.version": __version__,
        "treesdk.backend": backend_name,
        "treesdk.base_model": resolved_base_model(base),
        "treesdk.algorithm": recipe.name,
        "treesdk.recipe": recipe.model_dump_json(),
        "treesdk.iterations": str(int(iterations)),
    }


def resolved_base_model(model: Any) -> str:
    """A base model as stored in metadata: a local path made absolute (so ``export --check`` works
    from any folder), anything else (a hub id, a backend name) as given."""
    text = str(model)
    path = Path(text).expanduser()
    return str(path.resolve()) if text and path.exists() else text
