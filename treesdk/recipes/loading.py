"""Loading recipes: preset names (entry-point group ``treesdk.algorithms``), YAML/JSON files in the
nested or the graph form, mappings, and dotted overrides such as ``{"tree.k": 3, "window.start": 2}``."""

from __future__ import annotations

import json
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import yaml
from pydantic import ValidationError

from treesdk import registry
from treesdk.recipes.recipe import Recipe




def apply_overrides(data: dict[str, Any], overrides: Mapping[str, Any]) -> dict[str, Any]:
    """Set dotted keys (``"tree.k"``, ``"losses.0.eps"``) in a nested dict/list, in place."""
    for dotted, value in overrides.items():
        parts = dotted.split(".")
        node: Any = data
        for i, part in enumerate(parts[:-1]):
            key: Any = int(part) if isinstance(node, list) else part
            if isinstance(node, dict) and key not in node:
                node[key] = {}
            try:
                node = node[key]
            except (IndexError, KeyError, TypeError) as exc:
                raise ValueError(f"override {dotted!r}: no field {'.'.join(parts[: i + 1])!r} in the recipe") from exc
        last = parts[-1]
        if isinstance(node, list):
            node[int(last)] = value
        else:
            node[last] = value
    return data


def read_recipe_file(path: str | Path) -> dict[str, Any]:
    """Recipe data from a ``.yaml``/``.yml`` or ``.json`` file."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"recipe file {path} does not exist")
    text = path.read_text()
    if path.suffix.lower() in {".yaml", ".yml"}:
        data = yaml.safe_load(text)
    else:
        data = json.loads(text)
    if not isinstance(data, dict):
        raise ValueError(f"recipe file {path} must hold a mapping, got {type(data).__name__}")
    return data


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
    if "nodes" in data:  # a recipe graph (treesdk.nodes.graph): compile it to the nested form first
        # graph files are read by the node layer, which sits above recipes (it derives node specs
        # from this package): imported here, on use, so that the layers stay one-way
        from treesdk.nodes.graph import compile_graph

        source = str(name_or_path) if isinstance(name_or_path, (str, Path)) else "<mapping>"
        data = compile_graph(data, source=source).model_dump(mode="json")
    data = apply_overrides(data, overrides)
    try:
        return Recipe.model_validate(data)
    except ValidationError as exc:
        raise RecipeError(str(name_or_path) if not isinstance(name_or_path, Recipe) else name_or_path.name, exc) from exc


class RecipeError(ValueError):
    """An invalid recipe; the message lists every bad field with its location."""

    def __init__(self, source: str, error: ValidationError) -> None:
        lines = [f"invalid recipe {source!r}:"]
        for item in error.errors():
            loc = ".".join(str(p) for p in item["loc"]) or "(recipe)"
            got = "" if isinstance(item.get("input"), (dict, list)) else f" (got {item.get('input')!r})"
            lines.append(f"  {loc}: {item['msg'].removeprefix('Value error, ')}{got}")
        super().__init__("\n".join(lines))
        self.errors = error.errors()
