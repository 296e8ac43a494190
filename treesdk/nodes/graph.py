"""Recipe files as graphs of named nodes, validated as a whole and compiled to a :class:`Recipe`.

A graph file (YAML or JSON) has two sections::

    nodes:                      # named nodes: a type from treesdk.nodes.catalog and its inputs
      tree:  {type: tree, inputs: {k: 2, d: 4}}
      win:   {type: random-window, inputs: {p: 0.5}}
      adv:   {type: tree-backup, inputs: {clip: 5.0}}
      clip:  {type: clipped-surrogate, inputs: {clip: reward-adaptive, eps_low: 5.0e-5, eps_high: 2.0e-4}}
      sft:   {type: layertuning-sft, inputs: {weight: 0.05}}
    recipe:                     # the sink: scalar settings + connections by node name
      name: hybrid
      steps: 10
      tree: tree                # slot -> a node whose output type fits the slot
      window: win
      advantage: adv
      losses: [clip, {node: sft, weight: 0.1}]   # a loss entry may override the node's weight

Slots (:data:`treesdk.nodes.catalog.RECIPE_CONNECTIONS`): ``tree`` (TREE), ``window`` (WINDOW), ``noise``
(NOISE), ``sde`` (SDE: the step family of every stochastic step, default ``flow-sde``), ``advantage``
(ADVANTAGE), ``losses`` (a list of LOSS), ``optim`` (OPTIM); ``tree``, ``advantage`` and ``losses``
are required, the rest default as :class:`treesdk.recipes.Recipe` does. A slot may also hold an
inline node (``window: {type: fixed-window, inputs: {start: 2}}``).

The graph compiles to the nested recipe and uses its names: a part node's inputs are the fields of
the nested part (the steps outside the window are the tree node's ``sde_outside_window`` and
``outside_noise_level``, as ``tree.sde_outside_window`` in a nested file; they use the recipe's
``sde`` family), and an SDE-family node is named by its ``kind`` (``flow-sde``, ``dance-sde``,
``cps``, ``ode``). The older spellings, a recipe ``outside`` slot holding an ``ode`` or
``flow-grpo-sde`` step node and the node type ``ode-family``, still load, with a ``FutureWarning``
naming the new spelling (:func:`upgrade_graph`).

Validation collects every problem before failing, and each message names the node and the field:
unknown node types, bad inputs (types, bounds, choices), dangling connections, nodes of the wrong
output type in a slot. The assembled recipe is then validated by :class:`Recipe` itself, whose
cross-field checks (the window fits in T; ``roots * k**d <= max_leaves``) are reported against the
nodes that hold those fields. Nodes not connected to the recipe (e.g. reward or backend nodes kept
for reference) are validated too.
"""

from __future__ import annotations

import copy
import re
import warnings
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from pydantic import BaseModel, ValidationError

from treesdk.errors import RecipeError
from treesdk.nodes.catalog import RECIPE_CONNECTIONS, all_nodes, builtin_nodes, part_nodes
from treesdk.nodes.spec import NodeInputError, NodeSpec, validation_problems
from treesdk.recipes.recipe import Recipe
from treesdk.safe_load import excerpt

#: top-level keys a graph file may have
TOP_LEVEL_KEYS = ("$schema", "description", "nodes", "recipe")
SETTINGS = ("name", "steps", "chunk", "train_chunk", "decode_chunk")
_SLOTS = {c.name: c for c in RECIPE_CONNECTIONS}


@dataclass(frozen=True)
class Problem:
    """One thing wrong in a graph: where (``node``, with its ``type`` when known; ``"recipe"`` for
    the recipe section), which ``field``, and what."""

    node: str
    field: str
    message: str
    type: str | None = None

    def __str__(self) -> str:
        where = "recipe" if self.node == "recipe" else f"node {self.node!r}" + (f" ({self.type})" if self.type else "")
        return f"{where}, field {self.field!r}: {self.message}" if self.field != "-" else f"{where}: {self.message}"


class GraphError(RecipeError):
    """An invalid recipe graph; the message lists every problem, one per line.

    A :class:`treesdk.recipes.RecipeError` (so callers that catch invalid recipes catch it too);
    ``problems`` holds the :class:`Problem` items, ``errors`` them as ``{"loc", "msg"}`` dicts.
    """

    def __init__(self, source: str, problems: list[Problem]) -> None:  # noqa: D107 - no pydantic error here
        ValueError.__init__(self, "\n".join([f"invalid recipe graph {source!r}:", *(f"  {p}" for p in problems)]))
        self.source = source
        self.problems = problems
        self.errors = [{"loc": (p.node, p.field), "msg": p.message, "type": "graph"} for p in problems]


@dataclass
class Graph:
    """A validated graph: node name -> ``(spec, validated inputs)``, and the compiled recipe."""

    nodes: dict[str, tuple[NodeSpec, BaseModel]]
    recipe: Recipe
    connections: dict[str, str | list[str]] = field(default_factory=dict)

    def unused(self) -> list[str]:
        """Nodes no recipe slot refers to."""
        used: set[str] = set()
        for target in self.connections.values():
            used.update(target if isinstance(target, list) else [target])
        return [name for name in self.nodes if name not in used]


def compile_graph(data: Mapping[str, Any], source: str = "<graph>") -> Recipe:
    """The :class:`Recipe` a graph describes; :class:`GraphError` naming node and field if invalid."""
    return parse_graph(data, source).recipe


def parse_graph(data: Mapping[str, Any], source: str = "<graph>") -> Graph:
    """Validate a whole graph and compile it; see the module docstring for the format."""
    problems: list[Problem] = []
    if not isinstance(data, Mapping):
        raise GraphError(source, [Problem("recipe", "-", f"a graph must be a mapping, got {type(data).__name__}")])
    data = upgrade_graph(data, source)
    for key in data:
        if key not in TOP_LEVEL_KEYS:
            problems.append(Problem("recipe", str(key), f"unknown top-level key; expected {', '.join(TOP_LEVEL_KEYS)}"))
    raw_nodes = data.get("nodes")
    if not isinstance(raw_nodes, Mapping):
        problems.append(Problem("recipe", "nodes", f"must be a mapping of node name -> node, got {type(raw_nodes).__name__}"))
        raw_nodes = {}
    section = data.get("recipe")
    if not isinstance(section, Mapping):
        problems.append(Problem("recipe", "recipe", f"a graph needs a `recipe` mapping, got {type(section).__name__}"))
        section = {}

    known = _known_nodes(raw_nodes, section)
    nodes: dict[str, tuple[NodeSpec, BaseModel]] = {}
    for name, raw in raw_nodes.items():
        parsed = _parse_node(str(name), raw, known, problems)
        if parsed is not None:
            nodes[str(name)] = parsed

    # the recipe section: settings, then every slot
    recipe_data: dict[str, Any] = {}
    connections: dict[str, str | list[str]] = {}
    for key, value in section.items():
        if key in SETTINGS:
            recipe_data[key] = value
        elif key not in _SLOTS:
            allowed = ", ".join([*SETTINGS, *_SLOTS])
            problems.append(Problem("recipe", str(key), f"unknown recipe field; expected one of {allowed}"))
    for slot, conn in _SLOTS.items():
        value = section.get(slot)
        if value is None:
            if conn.required and section:
                problems.append(Problem("recipe", slot, f"missing: connect a node giving {conn.type} ({conn.description})"))
            continue
        if conn.many:
            if not isinstance(value, list) or not value:
                problems.append(Problem("recipe", slot, f"must be a non-empty list of {conn.type} nodes, got {excerpt(value)}"))
                continue
            items, names = [], []
            for i, entry in enumerate(value):
                weight = None
                if isinstance(entry, Mapping) and "node" in entry:
                    extra = sorted(set(entry) - {"node", "weight"})
                    if extra:
                        problems.append(Problem("recipe", f"{slot}[{i}]", f"unknown keys {extra}; a loss entry has `node` and optional `weight`"))
                    weight = entry.get("weight")
                    entry = entry["node"]
                resolved = _resolve(f"{slot}[{i}]", entry, conn.type, nodes, known, problems)
                if resolved is None:
                    continue
                node_name, instance = resolved
                dumped = instance.model_dump(mode="json")
                if weight is not None:
                    dumped["weight"] = weight
                items.append(dumped)
                names.append(node_name)
            recipe_data[slot] = items
            connections[slot] = names
        else:
            resolved = _resolve(slot, value, conn.type, nodes, known, problems)
            if resolved is not None:
                connections[slot] = resolved[0]
                recipe_data[slot] = resolved[1].model_dump(mode="json")

    if problems:
        raise GraphError(source, problems)
    try:
        recipe = Recipe.model_validate(recipe_data)
    except ValidationError as exc:
        raise GraphError(source, _recipe_problems(exc, connections, nodes)) from exc
    return Graph(nodes=nodes, recipe=recipe, connections=connections)


#: old node type -> the name it has now (the nested recipe's ``sde.kind``)
RENAMED_TYPES = {"ode-family": "ode"}
#: node types the old ``outside`` slot took: is the step stochastic (``tree.sde_outside_window``)?
_OUTSIDE_TYPES = {"ode": False, "flow-grpo-sde": True}


def upgrade_graph(data: Mapping[str, Any], source: str = "<graph>") -> Mapping[str, Any]:
    """``data`` in the current vocabulary (a copy when anything changed; ``FutureWarning`` per old
    spelling): node type ``ode-family`` becomes ``ode``; a recipe ``outside`` slot (an ``ode`` or
    ``flow-grpo-sde`` node, named or inline) becomes the tree node's ``sde_outside_window`` and
    ``outside_noise_level`` inputs, and its node is dropped when nothing else refers to it. Shapes
    this cannot read are left for :func:`parse_graph` to report."""
    nodes, section = data.get("nodes"), data.get("recipe")
    if not isinstance(nodes, Mapping) or not isinstance(section, Mapping):
        return data
    out: dict[str, Any] = copy.deepcopy(dict(data))
    nodes, section = out["nodes"], out["recipe"]
    changed = False
    inline = [v for value in section.values() for v in (value if isinstance(value, list) else [value]) if isinstance(v, dict)]
    for node in [*nodes.values(), *inline]:
        if isinstance(node, dict) and node.get("type") in RENAMED_TYPES:
            old, node["type"] = node["type"], RENAMED_TYPES[node["type"]]
            warnings.warn(f"{source}: node type {old!r} is now {node['type']!r} (the recipe's sde kind)", FutureWarning, stacklevel=3)
            changed = True
    outside = section.get("outside")
    step = nodes.get(outside) if isinstance(outside, str) else outside
    if isinstance(step, dict) and step.get("type") in _OUTSIDE_TYPES:
        tree = nodes.get(section["tree"]) if isinstance(section.get("tree"), str) else section.get("tree")
        if isinstance(tree, dict) and isinstance(tree.get("inputs") or {}, Mapping):
            del section["outside"]
            tree["inputs"] = dict(tree.get("inputs") or {})
            tree["inputs"]["sde_outside_window"] = _OUTSIDE_TYPES[step["type"]]
            level = (step.get("inputs") or {}).get("noise_level") if isinstance(step.get("inputs") or {}, Mapping) else None
            if level is not None:
                tree["inputs"]["outside_noise_level"] = level
            used = [v for k, v in section.items() for v in (v if isinstance(v, list) else [v])]
            if isinstance(outside, str) and outside not in used:
                del nodes[outside]
            warnings.warn(f"{source}: recipe `outside` ({step['type']} node) is the old spelling; set the tree node's "
                          f"inputs sde_outside_window: {str(_OUTSIDE_TYPES[step['type']]).lower()}"
                          + (f" and outside_noise_level: {level}" if level is not None else "")
                          + " (tree.sde_outside_window of the nested recipe; the steps use the recipe's sde family)",
                          FutureWarning, stacklevel=3)
            changed = True
    return out if changed else data


def _known_nodes(raw_nodes: Mapping[str, Any], section: Mapping[str, Any]) -> dict[str, NodeSpec]:
    """Node types the graph needs; plugins are imported only when a graph names one."""
    types = {raw.get("type") for raw in raw_nodes.values() if isinstance(raw, Mapping)}
    for value in section.values():
        for entry in value if isinstance(value, list) else [value]:
            if isinstance(entry, Mapping):
                types.add(entry.get("type"))
    builtins = builtin_nodes()
    return builtins if all(t in builtins for t in types if isinstance(t, str)) else all_nodes()


def _parse_node(
    name: str, raw: Any, known: dict[str, NodeSpec], problems: list[Problem]
) -> tuple[NodeSpec, BaseModel] | None:
    if not isinstance(raw, Mapping):
        problems.append(Problem(name, "-", f"a node must be a mapping with `type` and `inputs`, got {excerpt(raw)}"))
        return None
    extra = sorted(set(raw) - {"type", "inputs", "description"})
    if extra:
        problems.append(Problem(name, str(extra[0]), "unknown key; a node has `type`, `inputs` and optional `description`"))
    type_name = raw.get("type")
    if not isinstance(type_name, str) or type_name not in known:
        problems.append(Problem(name, "type", f"unknown node type {type_name!r}; known types: {', '.join(known)}"))
        return None
    spec = known[type_name]
    inputs = raw.get("inputs") or {}
    if not isinstance(inputs, Mapping):
        problems.append(Problem(name, "inputs", f"must be a mapping of field -> value, got {excerpt(inputs)}", type_name))
        return None
    if spec.connections:
        problems.append(Problem(name, "type", f"{type_name!r} is a runtime (ComfyUI) node, not a part of a recipe graph", type_name))
        return None
    try:
        return spec, spec.validate(inputs)
    except NodeInputError as exc:
        problems.extend(Problem(name, f, m, type_name) for f, m in exc.problems)
        return None


def _resolve(
    slot: str,
    value: Any,
    want: str,
    nodes: dict[str, tuple[NodeSpec, BaseModel]],
    known: dict[str, NodeSpec],
    problems: list[Problem],
) -> tuple[str, BaseModel] | None:
    """The node a slot refers to (by name or inline), checked against the slot's type."""
    if isinstance(value, Mapping):  # inline node
        name = f"recipe.{slot}"
        parsed = _parse_node(name, value, known, problems)
        if parsed is None:
            return None
        nodes[name] = parsed
    elif isinstance(value, str):
        name = value
        if name not in nodes:
            # a node that exists but failed validation was reported already
            return None if _declared_but_invalid(name, problems) else _dangling(slot, name, nodes, problems)
        parsed = nodes[name]
    else:
        problems.append(Problem("recipe", slot, f"must name a node (a string) or be an inline node, got {excerpt(value)}"))
        return None
    spec, instance = parsed
    if spec.output != want:
        fitting = [n for n, (s, _) in nodes.items() if s.output == want]
        problems.append(
            Problem(
                "recipe",
                slot,
                f"wrong type: takes a node giving {want}, but node {name!r} ({spec.type}) gives {spec.output}"
                + (f"; nodes giving {want}: {', '.join(fitting)}" if fitting else ""),
            )
        )
        return None
    return name, instance


def _declared_but_invalid(name: str, problems: list[Problem]) -> bool:
    return any(p.node == name for p in problems)


def _dangling(slot: str, name: str, nodes: Mapping[str, Any], problems: list[Problem]) -> None:
    declared = ", ".join(n for n in nodes if not n.startswith("recipe.")) or "none"
    problems.append(Problem("recipe", slot, f"dangling connection: no node named {name!r} (declared nodes: {declared})"))
    return None


_LOSS_KINDS = {"clipped-surrogate", "layertuning-sft", "kl"}
_FIELD_REF = re.compile(r"\b(tree|window|noise|advantage|optim)\.(\w+)")


def _recipe_problems(
    error: ValidationError, connections: Mapping[str, str | list[str]], nodes: Mapping[str, tuple[NodeSpec, BaseModel]]
) -> list[Problem]:
    """Recipe errors reported against the graph's nodes (cross-field checks name every node involved)."""
    out = []
    for loc, message in validation_problems(error):
        head, _, rest = loc.partition(".")
        if head in SETTINGS:
            out.append(Problem("recipe", head, message))
            continue
        if head in connections and head != "losses" and rest:
            node = str(connections[head])
            out.append(Problem(node, rest, message, nodes[node][0].type if node in nodes else None))
            continue
        if head == "losses" and rest:
            index, _, sub = rest.partition(".")
            names = connections.get("losses", [])
            node = names[int(index)] if index.isdigit() and int(index) < len(names) else "?"
            sub = ".".join(part for part in sub.split(".") if part not in _LOSS_KINDS)  # drop union tags
            out.append(Problem("recipe", f"losses[{index}]" + (f".{sub}" if sub else ""), f"(node {node!r}) {message}"))
            continue
        # whole-recipe check: name the nodes whose fields the message mentions
        refs = []
        for slot, attr in dict.fromkeys(_FIELD_REF.findall(message)):
            node = connections.get(slot)
            refs.append(f"node {node!r} field {attr!r}" if isinstance(node, str) else f"recipe {slot}.{attr} (default)")
        if re.search(r"\bsteps\b", message):
            refs.append("recipe field 'steps'")
        where = "; ".join(refs) or "the recipe"
        out.append(Problem("recipe", "-", f"{message} [involves {where}]"))
    return out


# ----------------------------------------------------------------------------------------------
# writing graphs


def recipe_to_graph(recipe: Recipe) -> dict[str, Any]:
    """The graph form of a recipe (one node per part, inputs that differ from the defaults only)."""
    by_model = {spec.inputs: spec for spec in [*part_nodes(plugins=True), *builtin_nodes().values()] if not spec.connections}
    nodes: dict[str, Any] = {}
    section: dict[str, Any] = {"name": recipe.name, "steps": recipe.steps}
    for name in SETTINGS[2:]:
        if getattr(recipe, name) != Recipe.model_fields[name].default:
            section[name] = getattr(recipe, name)

    def add(name: str, part: BaseModel) -> str:
        spec = by_model[type(part)]
        base, i = name, 2
        while name in nodes:  # two loss terms of the same kind
            name, i = f"{base}-{i}", i + 1
        set_values = {
            f: _json(getattr(part, f)) for f in spec.field_names() if getattr(part, f) != spec.inputs.model_fields[f].get_default(call_default_factory=True)
        }
        nodes[name] = {"type": spec.type, "inputs": set_values} if set_values else {"type": spec.type}
        return name

    tree = recipe.tree
    section["tree"] = add("tree", tree)
    section["window"] = add("window", recipe.window)
    section["noise"] = add("noise", recipe.noise)
    section["sde"] = add("sde", recipe.sde)
    section["advantage"] = add("advantage", recipe.advantage)
    section["losses"] = [add(loss.kind, loss) for loss in recipe.losses]
    section["optim"] = add("optim", recipe.optim)
    return {"nodes": nodes, "recipe": section}


def _json(value: Any) -> Any:
    if isinstance(value, BaseModel):  # a nested part setting (tree.prune)
        return value.model_dump(mode="json")
    return list(value) if isinstance(value, tuple) else value


__all__ = [
    "Graph",
    "GraphError",
    "Problem",
    "compile_graph",
    "parse_graph",
    "recipe_to_graph",
    "upgrade_graph",
]
