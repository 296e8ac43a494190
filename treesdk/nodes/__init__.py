"""Node views of treesdk's parts: specs, the catalogue, graph files and the ComfyUI pack.

* :mod:`treesdk.nodes.spec` — :class:`NodeSpec`: a node type's inputs, connections, outputs;
* :mod:`treesdk.nodes.options` — specs of registered rewards/backends from their constructors;
* :mod:`treesdk.nodes.catalog` — every node type (recipe parts come from :mod:`treesdk.recipes.parts`);
* :mod:`treesdk.nodes.graph` — recipe files as graphs of named nodes, and their JSON Schema;
* :mod:`treesdk.nodes.comfyui_pack` — the generated ComfyUI node pack and its runtime.
"""

from __future__ import annotations

from treesdk.nodes.catalog import *  # noqa: F403
from treesdk.nodes.catalog import __all__ as _catalog_names
from treesdk.nodes.options import options_model, plugin_node
from treesdk.nodes.spec import (
    Connection,
    InputField,
    NodeInputError,
    NodeSpec,
    comfy_type,
    comfy_widget,
    describe_field,
    validation_problems,
)

__all__ = [
    *_catalog_names,
    "Connection",
    "InputField",
    "NodeInputError",
    "NodeSpec",
    "comfy_type",
    "comfy_widget",
    "describe_field",
    "options_model",
    "plugin_node",
    "validation_problems",
]
