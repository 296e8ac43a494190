"""JSON Schema (draft 2020-12) of recipe graph files, built from every node spec."""

from __future__ import annotations

import json
import re
from typing import Any

from treesdk.nodes.catalog import RECIPE_CONNECTIONS, all_nodes
from treesdk.nodes.graph import SETTINGS
from treesdk.recipes.recipe import Recipe



def graph_json_schema(plugins: bool = True) -> dict[str, Any]:
    """JSON Schema (draft 2020-12) of a recipe graph file, built from every node spec.

    Editors use it to autocomplete and check recipe files (YAML via ``# yaml-language-server:
    $schema=...``). ``plugins=False`` leaves out reward and backend nodes.
    """
    specs = [s for s in all_nodes(plugins).values() if not s.connections]
    defs: dict[str, Any] = {}
    entries = []
    for spec in specs:
        inputs = spec.json_schema()
        if "$defs" in inputs:  # hoist the node's own definitions under a unique prefix
            prefix = re.sub(r"[^\w]", "_", spec.type) + "__"
            inner = inputs.pop("$defs")
            text = json.dumps(inputs).replace('"#/$defs/', f'"#/$defs/{prefix}')
            inputs = json.loads(text)
            for key, value in inner.items():
                defs[prefix + key] = json.loads(json.dumps(value).replace('"#/$defs/', f'"#/$defs/{prefix}'))
        entry_name = "node:" + spec.type
        defs[entry_name] = {
            "type": "object",
            "title": spec.title,
            "description": f"{spec.description} Gives {spec.output}.",
            "properties": {
                "type": {"const": spec.type},
                "inputs": inputs,
                "description": {"type": "string"},
            },
            "required": ["type"],
            "additionalProperties": False,
        }
        entries.append({"$ref": f"#/$defs/{entry_name}"})
    defs["node"] = {"oneOf": entries}

    settings = Recipe.model_json_schema()["properties"]
    recipe_props: dict[str, Any] = {name: settings[name] for name in SETTINGS}
    for conn in RECIPE_CONNECTIONS:
        fitting = [s.type for s in specs if s.output == conn.type]
        ref = {
            "anyOf": [
                {"type": "string", "description": f"name of a node giving {conn.type} ({', '.join(fitting)})"},
                {"$ref": "#/$defs/node"},
            ]
        }
        if conn.many:
            weighted = {
                "type": "object",
                "properties": {"node": {"type": "string"}, "weight": {"type": "number", "minimum": 0}},
                "required": ["node"],
                "additionalProperties": False,
            }
            recipe_props[conn.name] = {
                "type": "array",
                "minItems": 1,
                "items": {"anyOf": [*ref["anyOf"], weighted]},
                "description": conn.description,
            }
        else:
            recipe_props[conn.name] = {**ref, "description": conn.description}
    return {
        "$schema": "https://json-schema.org/draft/2020-12/schema",
        "title": "treesdk recipe graph",
        "description": "A treesdk recipe as a graph of named nodes (see `treesdk nodes`).",
        "type": "object",
        "properties": {
            "$schema": {"type": "string"},
            "description": {"type": "string"},
            "nodes": {"type": "object", "additionalProperties": {"$ref": "#/$defs/node"}},
            "recipe": {
                "type": "object",
                "properties": recipe_props,
                "required": [c.name for c in RECIPE_CONNECTIONS if c.required],
                "additionalProperties": False,
            },
        },
        "required": ["nodes", "recipe"],
        "additionalProperties": False,
        "$defs": defs,
    }


__all__ = ["graph_json_schema"]
