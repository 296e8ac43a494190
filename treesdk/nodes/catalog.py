"""The catalogue of node types: recipe parts (derived from the registry of parts), the recipe node,
the ComfyUI runtime nodes, and rewards/backends from the entry-point registry.

Output types (upper case, ComfyUI style; the ComfyUI pack prefixes them with ``TREESDK_`` except
ComfyUI's own ``IMAGE``/``MODEL``/``FLOAT``/``STRING``): see :data:`OUTPUT_TYPES`.
"""

from __future__ import annotations

import functools
import inspect

from pydantic import BaseModel, ConfigDict, Field, create_model

from treesdk import registry
from treesdk.nodes.options import plugin_node
from treesdk.nodes.spec import Connection, NodeSpec, plain_text
from treesdk.recipes import parts
from treesdk.recipes.parts import PartDecl
from treesdk.recipes.recipe import Recipe

#: what each output type carries
OUTPUT_TYPES: dict[str, str] = {
    "TREE": "tree shape (TreeSpec)",
    "WINDOW": "branching-window schedule (FixedWindow / SlidingWindow / RandomWindow)",
    "NOISE": "noise schedule of the window's SDE steps (NoiseSpec)",
    "SDE": "SDE step family of the stochastic steps (flow-sde, dance-sde, cps, ode, or a treesdk.sde plugin)",
    "ADVANTAGE": "advantage estimator (group, tree-backup, or a treesdk.estimators plugin)",
    "LOSS": "weighted loss term (clipped-surrogate, layertuning-sft, kl, or a treesdk.losses plugin)",
    "OPTIM": "optimiser settings (OptimSpec)",
    "RECIPE": "a whole algorithm (treesdk.recipes.Recipe)",
    "REWARD": "a constructed treesdk RewardModel",
    "BACKEND": "a constructed treesdk VelocityModel",
    "IMAGE": "ComfyUI image batch: float tensor [B, H, W, C] in [0, 1]",
    "MODEL": "a ComfyUI model patcher (ComfyUI's MODEL)",
    "FLOAT": "a float",
    "STRING": "a string",
}


# ----------------------------------------------------------------------------------------------
# input models that are not recipe parts


#: Recipe fields a recipe node sets itself; the others come from connections
RecipeSettings = create_model(
    "RecipeSettings",
    __config__=ConfigDict(extra="forbid"),
    __doc__="Scalar settings of a recipe: name, sampling steps T, velocity-call chunks (training and decode apart).",
    **{name: (Recipe.model_fields[name].annotation, Recipe.model_fields[name])
       for name in ("name", "steps", "chunk", "train_chunk", "decode_chunk")},
)


class TreeSearchSpec(BaseModel):
    """Inference-time reward-guided search: sample a k-ary tree per prompt, score every leaf with the
    reward and keep the best leaf. Costs ``roots * (s + (1 + ... + k^(d-1)) + k^d (T - s - d))``
    velocity evaluations per prompt."""

    model_config = ConfigDict(extra="forbid")

    prompt: str = Field("a handwritten digit 7", description="one prompt per line; one best image per prompt")
    steps: int = Field(10, ge=1, le=1000, description="sampling steps T")
    k: int = Field(2, ge=1, le=64, description="children per node at each window step (ignored if a tree is connected)")
    d: int = Field(3, ge=0, le=64, description="window length = tree depth (ignored if a tree is connected)")
    roots: int = Field(1, ge=1, le=1024, description="independent roots per prompt (ignored if a tree is connected)")
    window_start: int = Field(0, ge=0, description="first step of the branching window (0 = noisiest)")
    noise_level: float = Field(0.7, gt=0, le=10, description="Flow-GRPO SDE noise level a (ignored if a noise schedule is connected)")
    seed: int = Field(0, ge=0, le=2**63 - 1, description="seed of prompt i is seed + i")
    chunk: int = Field(64, ge=1, description="max nodes per velocity call")


class ScoreSpec(BaseModel):
    """Score an image batch with a treesdk reward."""

    model_config = ConfigDict(extra="forbid")

    prompt: str = Field("a handwritten digit 7", description="one prompt for all images, or one per line (B lines)")


class LoadLoraSpec(BaseModel):
    """Load a file written by ``treesdk export`` (LoRA, ComfyUI or digits format) into a model."""

    model_config = ConfigDict(extra="forbid")

    path: str = Field(..., min_length=1, description="safetensors file written by `treesdk export`")
    strength: float = Field(1.0, ge=-10, le=10, description="scale of the trained update (1 = as trained)")



RECIPE_CONNECTIONS: tuple[Connection, ...] = (
    Connection("tree", "TREE", True, "tree shape"),
    Connection("window", "WINDOW", False, "window schedule (default: fixed, start 0)"),
    Connection("noise", "NOISE", False, "noise schedule of the window's SDE steps (default: constant 0.7)"),
    Connection("sde", "SDE", False, "SDE step family of every stochastic step (default: flow-sde)"),
    Connection("advantage", "ADVANTAGE", True, "advantage estimator"),
    Connection("losses", "LOSS", True, "loss terms, summed with their weights", many=True),
    Connection("optim", "OPTIM", False, "optimiser settings (default: AdamW lr 1e-4)"),
)

def part_node(decl: PartDecl, source: str = "treesdk") -> NodeSpec:
    """The node of one declared recipe part: its spec's fields are the node's inputs, ``kind`` fixed."""
    slot = parts.SLOTS[decl.slot]
    fixed = {"kind": decl.name} if "kind" in decl.spec.model_fields and decl.kind is None else {}
    return NodeSpec(
        type=decl.node_type,
        inputs=decl.spec,
        outputs=((slot.name, slot.output),),
        description=plain_text(inspect.cleandoc(decl.spec.__doc__ or "").replace("\n", " ")),
        category=f"treesdk/recipe/{slot.category}",
        fixed=fixed,
        source=source,
    )


def part_nodes(plugins: bool = False) -> list[NodeSpec]:
    """A node per declared recipe part, in slot order (``plugins``: with entry-point parts)."""
    nodes = []
    for slot in parts.SLOTS:
        for decl in parts.parts(slot, plugins=plugins).values():
            nodes.append(part_node(decl, parts.source(decl)))
    return nodes


def builtin_nodes() -> dict[str, NodeSpec]:
    """The nodes treesdk defines itself (recipe parts, the recipe, and the ComfyUI runtime nodes)."""
    specs = [
        *part_nodes(plugins=False),
        NodeSpec(
            type="recipe",
            inputs=RecipeSettings,
            outputs=(("recipe", "RECIPE"),),
            description="A whole algorithm assembled from parts; the recipe checks that the window fits in T "
            "and that k^d leaves stay within max_leaves.",
            category="treesdk/recipe",
            connections=RECIPE_CONNECTIONS,
        ),
        NodeSpec(
            type="tree-search",
            inputs=TreeSearchSpec,
            outputs=(("images", "IMAGE"), ("scores", "STRING")),
            description=plain_text(inspect.cleandoc(TreeSearchSpec.__doc__ or "").replace("\n", " ")),
            category="treesdk/sampling",
            connections=(
                Connection("backend", "BACKEND", True, "the flow model to sample"),
                Connection("reward", "REWARD", True, "reward that picks the best leaf"),
                Connection("tree", "TREE", False, "tree shape (overrides k, d, roots)"),
                Connection("noise", "NOISE", False, "noise schedule (overrides noise_level)"),
            ),
        ),
        NodeSpec(
            type="score-images",
            inputs=ScoreSpec,
            outputs=(("mean", "FLOAT"), ("scores", "STRING")),
            description=inspect.cleandoc(ScoreSpec.__doc__ or ""),
            category="treesdk/rewards",
            connections=(
                Connection("images", "IMAGE", True, "ComfyUI images [B, H, W, C] in [0, 1]"),
                Connection("reward", "REWARD", True, "the reward"),
            ),
        ),
        NodeSpec(
            type="load-lora",
            inputs=LoadLoraSpec,
            outputs=(("model", "MODEL"), ("backend", "BACKEND")),
            description=inspect.cleandoc(LoadLoraSpec.__doc__ or "")
            + " A ComfyUI MODEL is patched through comfy.sd.load_lora_for_models; a treesdk backend gets "
            "base + strength * (trained - base) of its trainable weights.",
            category="treesdk/loaders",
            connections=(
                Connection("model", "MODEL", False, "ComfyUI model to patch (needs ComfyUI)"),
                Connection("backend", "BACKEND", False, "treesdk backend to load the export into"),
            ),
        ),
    ]
    return {spec.type: spec for spec in specs}


@functools.lru_cache(maxsize=1)
def _plugin_nodes() -> tuple[dict[str, NodeSpec], dict[str, str]]:
    """Nodes of registered rewards, backends and recipe parts, and ``{"kind:name": error}`` of the
    plugins that could not be turned into nodes (cached together; :func:`refresh` forgets both)."""
    nodes: dict[str, NodeSpec] = {}
    errors: dict[str, str] = {}
    for kind in ("reward", "backend"):
        for name in registry.available(kind):
            value = registry.entry_point_value(kind, name)
            try:
                spec = plugin_node(kind, name, registry.load(kind, name), value)
            except Exception as exc:  # noqa: BLE001 - one broken plugin never hides the others
                errors[f"{kind}:{name}"] = f"{value}: {type(exc).__name__}: {exc}"
                continue
            nodes[spec.type] = spec
    builtin = {(d.slot, d.name) for slot in parts.SLOTS for d in parts.parts(slot, plugins=False).values()}
    for slot in parts.SLOTS:
        for decl in parts.parts(slot).values():
            if (slot, decl.name) not in builtin:
                spec = part_node(decl, parts.source(decl))
                nodes[spec.type] = spec
    errors.update(parts.plugin_errors())
    return nodes, errors


def all_nodes(plugins: bool = True) -> dict[str, NodeSpec]:
    """Every node type by name: built-ins, then rewards, backends and recipe parts from the
    entry-point registry (``plugins=False`` leaves those out and imports no plugin). Plugins that
    fail to import are left out and listed by :func:`plugin_errors`."""
    nodes = builtin_nodes()
    if plugins:
        nodes.update(_plugin_nodes()[0])
    return nodes


def plugin_errors() -> dict[str, str]:
    """``{"reward:name": error}`` for registered plugins that could not be turned into nodes."""
    return dict(_plugin_nodes()[1])


def refresh() -> None:
    """Forget the cached plugin nodes (after installing a plugin in a running process)."""
    _plugin_nodes.cache_clear()


def get_node(type_name: str) -> NodeSpec:
    """The node type ``type_name``; ``KeyError`` listing the known types (and any plugin error)."""
    builtins = builtin_nodes()
    if type_name in builtins:
        return builtins[type_name]
    nodes = all_nodes()
    if type_name in nodes:
        return nodes[type_name]
    errors = plugin_errors()
    hint = f" (that plugin failed to import: {errors[type_name]})" if type_name in errors else ""
    raise KeyError(f"unknown node type {type_name!r}{hint}; known types: {', '.join(nodes)}")


__all__ = [
    "LoadLoraSpec",
    "OUTPUT_TYPES",
    "RECIPE_CONNECTIONS",
    "RecipeSettings",
    "ScoreSpec",
    "TreeSearchSpec",
    "all_nodes",
    "builtin_nodes",
    "get_node",
    "part_node",
    "part_nodes",
    "plugin_errors",
    "refresh",
]
