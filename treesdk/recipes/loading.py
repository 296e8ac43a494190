"""Loading recipes: preset names (entry-point group ``treesdk.algorithms``), YAML/JSON files in the
nested or the graph form, mappings, and dotted overrides such as ``{"tree.k": 3, "window.start": 2}``."""

from __future__ import annotations

import json
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from pydantic import ValidationError

from treesdk import registry
from treesdk.errors import RecipeError, UserError
from treesdk.recipes.recipe import Recipe
from treesdk.safe_load import excerpt, read_mapping_file


def apply_overrides(data: dict[str, Any], overrides: Mapping[str, Any]) -> dict[str, Any]:
    """Set dotted keys (``"tree.k"``, ``"losses.0.eps"``) in a nested dict/list, in place.

    Raises ``UserError`` naming the override when a step of the path is not a field of the
    recipe (a number inside ``tree.k``, a list index past the end, a word where a list index goes).
    """
    for dotted, value in overrides.items():
        parts = dotted.split(".")
        node: Any = data
        for i, part in enumerate(parts):
            here = ".".join(parts[: i + 1])
            last = i == len(parts) - 1
            if isinstance(node, list):
                if not part.lstrip("-").isdigit() or not -len(node) <= int(part) < len(node):
                    raise UserError(f"--set {dotted}: {here!r} is not an index of that list "
                                    f"(it has {len(node)} items: 0..{len(node) - 1})")
                key: Any = int(part)
            elif isinstance(node, dict):
                key = part
                if not last and key not in node:
                    node[key] = {}
            else:
                parent = ".".join(parts[:i])
                raise UserError(f"--set {dotted}: {parent!r} is a value ({type(node).__name__} {excerpt(node)}), "
                                f"it has no field {part!r}")
            if last:
                node[key] = value
            else:
                node = node[key]
    return data


def read_recipe_file(path: str | Path) -> dict[str, Any]:
    """Recipe data from a ``.yaml``/``.yml`` or ``.json`` file (bounded: see :mod:`treesdk.safe_load`)."""
    return read_mapping_file(path, "recipe file")


def load_recipe(name_or_path: str | Recipe | Mapping[str, Any], **overrides: Any) -> Recipe:
    """A preset name, a recipe file, a mapping or a Recipe, with dotted ``overrides`` applied.

    Raises :class:`RecipeError` with pydantic's messages (naming the field) when invalid.
    """
    if isinstance(name_or_path, Recipe):
        data = name_or_path.model_dump(mode="json")
    elif isinstance(name_or_path, Mapping):
        data = json.loads(json.dumps(dict(name_or_path)))
    elif Path(str(name_or_path)).suffix.lower() in {".yaml", ".yml", ".json"}:
        data = read_recipe_file(name_or_path)
    else:
        factory = registry.load("algorithm", str(name_or_path))
        preset = factory() if callable(factory) else factory
        data = preset.model_dump(mode="json") if isinstance(preset, Recipe) else dict(preset)
    if "nodes" in data:  # a recipe graph: compile it to the nested form first
        # graph files are read by the node layer, which sits above recipes (it derives node specs
        # from this package); it is registered as the recipe form "graph" (entry-point group
        # treesdk.recipe_forms, as presets are), so this package imports nothing above it
        compile_graph = registry.load("recipe_form", "graph")
        source = str(name_or_path) if isinstance(name_or_path, (str, Path)) else "<mapping>"
        data = compile_graph(data, source=source).model_dump(mode="json")
    data = apply_overrides(data, overrides)
    try:
        return Recipe.model_validate(data)
    except ValidationError as exc:
        if isinstance(name_or_path, Recipe):
            source = name_or_path.name
        elif isinstance(name_or_path, Mapping):  # never echo the whole mapping: its name says which
            source = str(name_or_path.get("name", "<mapping>"))
        else:
            source = str(name_or_path)
        raise RecipeError(source, exc) from exc

