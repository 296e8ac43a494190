"""Node specs: every composable part of treesdk described once, as a pydantic model of its inputs.

A :class:`NodeSpec` names a node type (``"tree-backup"``), the pydantic model of its inputs, the
typed connections it takes from other nodes and what it produces. The same spec drives:

* validation of recipe graph files (:mod:`treesdk.graph`),
* ``treesdk nodes`` (the listing) and ``treesdk nodes --schema`` (JSON Schema of a recipe file),
* the generated ComfyUI node pack (:mod:`treesdk.comfyui_pack`), through :meth:`NodeSpec.input_types`,
  which returns ComfyUI's ``INPUT_TYPES`` dict (``{"required": {...}, "optional": {...}}``).

Recipe parts reuse the pydantic classes of :mod:`treesdk.recipe` as their input models (a field
such as ``kind`` that the node type fixes is hidden). Rewards and backends come from the entry-point
registry: a plugin class may declare an ``Options`` pydantic model (its constructor's keyword
arguments); without one the spec is derived from its ``__init__`` signature (types simplified to
JSON types, descriptions read from the ``Args:`` section of its docstring). A third-party plugin thus
appears in every listing, schema and ComfyUI pack the built-ins appear in.

Output types (upper case, ComfyUI style; the ComfyUI pack prefixes them with ``TREESDK_`` except
ComfyUI's own ``IMAGE``/``MODEL``/``FLOAT``/``STRING``): see :data:`OUTPUT_TYPES`.
"""

from __future__ import annotations

import functools
import inspect
import json
import math
import operator
import os
import pathlib
import re
import typing
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, Literal, Union

from pydantic import BaseModel, ConfigDict, Field, ValidationError, create_model
from pydantic_core import PydanticUndefined

from .recipe import (
    ClippedSurrogateSpec,
    FixedWindow,
    GroupAdvantageSpec,
    KLSpec,
    LayerTuningSpec,
    NoiseSpec,
    OptimSpec,
    Part,
    RandomWindow,
    Recipe,
    SlidingWindow,
    TreeBackupSpec,
    TreeSpec,
)

#: what each output type carries
OUTPUT_TYPES: dict[str, str] = {
    "TREE": "tree shape (treesdk.recipe.TreeSpec)",
    "WINDOW": "branching-window schedule (FixedWindow / SlidingWindow / RandomWindow)",
    "NOISE": "noise schedule of the window's Flow-GRPO SDE steps (NoiseSpec)",
    "STEP": "sampler step used outside the window (ODE or Flow-GRPO SDE)",
    "ADVANTAGE": "advantage estimator (GroupAdvantageSpec / TreeBackupSpec)",
    "LOSS": "weighted loss term (ClippedSurrogateSpec / LayerTuningSpec / KLSpec)",
    "OPTIM": "optimiser settings (OptimSpec)",
    "RECIPE": "a whole algorithm (treesdk.recipe.Recipe)",
    "REWARD": "a constructed treesdk RewardModel",
    "BACKEND": "a constructed treesdk VelocityModel",
    "IMAGE": "ComfyUI image batch: float tensor [B, H, W, C] in [0, 1]",
    "MODEL": "a ComfyUI model patcher (ComfyUI's MODEL)",
    "FLOAT": "a float",
    "STRING": "a string",
}


# ----------------------------------------------------------------------------------------------
# input models that are not recipe parts


class ODEStep(Part):
    """Deterministic Euler step ``x + (s_next - s) v`` outside the window (no trained edges there)."""

    kind: Literal["ode"] = "ode"


class FlowGRPOSDEStep(Part):
    """Flow-GRPO SDE step outside the window (GRPO / DanceGRPO): one stochastic, trained, non-branching
    step per node, ``std = a sqrt(s / (1 - s))``."""

    kind: Literal["flow-grpo-sde"] = "flow-grpo-sde"
    noise_level: float | None = Field(
        None, gt=0, le=10, description="noise level a of these steps (default: the noise schedule's level)"
    )


#: the step types a recipe may use outside its branching window
StepSpec = Union[ODEStep, FlowGRPOSDEStep]

#: Recipe fields a recipe node sets itself; the others come from connections
RecipeSettings = create_model(
    "RecipeSettings",
    __config__=ConfigDict(extra="forbid"),
    __doc__="Scalar settings of a recipe: name, sampling steps T, velocity-call chunk.",
    **{name: (Recipe.model_fields[name].annotation, Recipe.model_fields[name]) for name in ("name", "steps", "chunk")},
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


# ----------------------------------------------------------------------------------------------
# specs


@dataclass(frozen=True)
class Connection:
    """A typed input that comes from another node's output (a link in ComfyUI, a name in a graph)."""

    name: str
    type: str
    required: bool = True
    description: str = ""
    many: bool = False  # a list of such outputs (a recipe's losses)


@dataclass(frozen=True)
class InputField:
    """One input field of a node, as listed by ``treesdk nodes`` and turned into a ComfyUI widget.

    ``widget`` is ComfyUI's type (``INT``, ``FLOAT``, ``BOOLEAN``, ``STRING``) or ``"CHOICE"`` (then
    ``choices`` lists the values) or ``"JSON"`` (a structured value, a JSON string in ComfyUI).
    ``minimum``/``maximum`` are inclusive bounds; ``exclusive_minimum``/``exclusive_maximum`` say
    the bound itself is not allowed (pydantic ``gt``/``lt``). ``nullable``: None is a valid value.
    """

    name: str
    annotation: str
    widget: str
    required: bool
    default: Any
    nullable: bool
    description: str = ""
    minimum: float | None = None
    maximum: float | None = None
    exclusive_minimum: bool = False
    exclusive_maximum: bool = False
    choices: tuple[Any, ...] = ()


class NodeInputError(ValueError):
    """Invalid inputs of one node: ``problems`` is a list of ``(field, message)``."""

    def __init__(self, node_type: str, problems: list[tuple[str, str]]) -> None:
        self.node_type = node_type
        self.problems = problems
        super().__init__("; ".join(f"field {f!r}: {m}" for f, m in problems))


@dataclass(frozen=True)
class NodeSpec:
    """A node type: its input model, connections and outputs.

    Attributes:
        type: the name used in graph files and listings (``"tree-backup"``, ``"reward:jpeg-compressibility"``).
        inputs: pydantic model of the node's own inputs (its widgets).
        outputs: ``(name, type)`` pairs; the first is what the node gives in a recipe graph.
        description: one paragraph (the input model's docstring by default).
        category: ComfyUI category (``"treesdk/recipe/advantage"``).
        fixed: fields of ``inputs`` the node type sets (``{"kind": "tree-backup"}``); not user inputs.
        hidden: fields of ``inputs`` filled from elsewhere, with the reason shown if a user sets them.
        connections: typed inputs from other nodes.
        source: ``"treesdk"`` or the entry point (``"treesdk_plugins.jpeg:JpegCompressibilityReward"``).
        plugin: ``(kind, name)`` for rewards and backends built through the registry.
    """

    type: str
    inputs: type[BaseModel]
    outputs: tuple[tuple[str, str], ...]
    description: str = ""
    category: str = "treesdk"
    fixed: Mapping[str, Any] = field(default_factory=dict)
    hidden: Mapping[str, str] = field(default_factory=dict)
    connections: tuple[Connection, ...] = ()
    source: str = "treesdk"
    plugin: tuple[str, str] | None = None

    @property
    def output(self) -> str:
        """Type of the first output (what a recipe graph connects)."""
        return self.outputs[0][1]

    @property
    def title(self) -> str:
        """Display name, e.g. ``"Tree Backup"`` or ``"Reward: jpeg-compressibility"``."""
        if self.plugin is not None:
            return f"{self.plugin[0].capitalize()}: {self.plugin[1]}"
        return " ".join(w.upper() if w in {"sde", "ode", "kl", "sft", "lora"} else w.capitalize() for w in self.type.split("-"))

    # -- fields ------------------------------------------------------------------------------

    def field_names(self) -> list[str]:
        """User-settable input fields, in declaration order."""
        return [n for n in self.inputs.model_fields if n not in self.fixed and n not in self.hidden]

    def fields(self) -> list[InputField]:
        """:class:`InputField` rows of the user-settable inputs."""
        return [describe_field(name, self.inputs.model_fields[name]) for name in self.field_names()]

    def default_inputs(self) -> dict[str, Any]:
        """JSON values of every field that has a default (the node as a user would leave it)."""
        return {f.name: _jsonable(f.default) for f in self.fields() if not f.required}

    def validate(self, inputs: Mapping[str, Any] | None) -> BaseModel:
        """Validate user ``inputs`` into an instance of :attr:`inputs` (fixed fields added).

        Raises :class:`NodeInputError` listing ``(field, message)`` for every bad field, including
        unknown fields and fields the node type sets itself.
        """
        inputs = dict(inputs or {})
        problems: list[tuple[str, str]] = []
        for name in list(inputs):
            if name in self.fixed:
                problems.append((name, f"is set by the node type {self.type!r} (to {self.fixed[name]!r}); remove it"))
            elif name in self.hidden:
                problems.append((name, self.hidden[name]))
        if problems:
            raise NodeInputError(self.type, problems)
        try:
            return self.inputs.model_validate({**inputs, **self.fixed})
        except ValidationError as exc:
            problems = []
            for loc, message in validation_problems(exc):
                if loc == "-":  # a whole-node check: name the fields its message mentions
                    named = [n for n in self.field_names() if re.search(rf"(?<![\w.]){re.escape(n)}\b", message)]
                    loc = ", ".join(named) or "-"
                problems.append((loc, message))
            raise NodeInputError(self.type, problems) from exc

    # -- JSON Schema and ComfyUI -------------------------------------------------------------

    def json_schema(self) -> dict[str, Any]:
        """JSON Schema of the node's ``inputs`` mapping (fixed and hidden fields left out)."""
        schema = self.inputs.model_json_schema()
        props = schema.get("properties", {})
        for name in [*self.fixed, *self.hidden]:
            props.pop(name, None)
        if "required" in schema:
            schema["required"] = [n for n in schema["required"] if n in props]
            if not schema["required"]:
                del schema["required"]
        schema["additionalProperties"] = False
        schema["title"] = f"{self.type} inputs"
        if self.description:
            schema["description"] = self.description
        return schema

    def input_types(self, type_prefix: str = "TREESDK_") -> dict[str, dict[str, tuple]]:
        """ComfyUI ``INPUT_TYPES``: ``{"required": {name: (TYPE, options)}, "optional": {...}}``.

        Fields with a value always (not nullable) are required widgets; nullable fields are
        optional (strings: an empty string means None; numbers: an input socket, unset means None).
        Connections become sockets of their (prefixed) type; ``many`` connections become three
        numbered sockets, the first required.
        """
        required: dict[str, tuple] = {}
        optional: dict[str, tuple] = {}
        for conn in self.connections:
            ctype = comfy_type(conn.type, type_prefix)
            opts = {"tooltip": conn.description} if conn.description else {}
            if conn.many:
                for i in range(1, 4):
                    (required if conn.required and i == 1 else optional)[f"{conn.name}_{i}"] = (ctype, dict(opts))
            else:
                (required if conn.required else optional)[conn.name] = (ctype, opts)
        for f in self.fields():
            kind, opts = comfy_widget(f)
            (optional if f.nullable else required)[f.name] = (kind, opts)
        return {"required": required, "optional": optional}


def comfy_type(output_type: str, prefix: str = "TREESDK_") -> str:
    """ComfyUI socket type of a treesdk output type (ComfyUI's own types are kept as they are)."""
    return output_type if output_type in {"IMAGE", "MODEL", "FLOAT", "STRING", "INT", "BOOLEAN"} else prefix + output_type


def comfy_widget(f: InputField) -> tuple[Any, dict[str, Any]]:
    """``(type_or_choices, options)`` of one field in ComfyUI's INPUT_TYPES convention."""
    opts: dict[str, Any] = {}
    if f.widget == "CHOICE":
        kind: Any = list(f.choices)
        if f.default is not None and f.default in f.choices:
            opts["default"] = f.default
    elif f.widget == "BOOLEAN":
        kind = "BOOLEAN"
        opts["default"] = bool(f.default) if f.default is not None else False
    elif f.widget in {"INT", "FLOAT"}:
        kind = f.widget
        integer = kind == "INT"
        lo, hi = f.minimum, f.maximum
        if lo is not None and f.exclusive_minimum and integer:
            lo = lo + 1
        if hi is not None and f.exclusive_maximum and integer:
            hi = hi - 1
        if integer:
            opts["min"] = int(lo) if lo is not None else -(2**31)
            opts["max"] = int(hi) if hi is not None else 2**63 - 1 if f.name == "seed" else 2**31 - 1
            opts["step"] = 1
        else:
            opts["min"] = float(lo) if lo is not None else -1e9
            opts["max"] = float(hi) if hi is not None else 1e9
            opts["step"] = _float_step(f.default)
            opts["round"] = False  # keep small values such as a 1e-4 clip range exact
        if f.default is not None and not f.required:
            opts["default"] = int(f.default) if integer else float(f.default)
        elif not f.required:
            opts["forceInput"] = True  # None default: an input socket; unconnected means None
    elif f.widget == "STRING":
        kind = "STRING"
        opts["default"] = "" if f.default is None else str(f.default)
        opts["multiline"] = f.name == "prompt"
    else:  # JSON: structured value edited as a JSON string
        kind = "STRING"
        opts["default"] = "" if f.default is None else json.dumps(_jsonable(f.default))
    tip = f.description or f.annotation
    if f.nullable:
        tip += " (empty/unset = None)" if kind == "STRING" or opts.get("forceInput") else " (optional)"
    if f.widget == "JSON":
        tip += " [JSON]"
    if f.exclusive_minimum and f.widget == "FLOAT":
        tip += f" (must be > {f.minimum})"
    opts["tooltip"] = tip
    return kind, opts


def _float_step(default: Any) -> float:
    """A widget step fine enough for the default value (0.01 for values of order one)."""
    if isinstance(default, (int, float)) and default != 0 and abs(default) < 0.1:
        return 10.0 ** (math.floor(math.log10(abs(default))) - 1)
    return 0.01


# ----------------------------------------------------------------------------------------------
# fields


def describe_field(name: str, info: Any) -> InputField:
    """:class:`InputField` of pydantic field ``info`` (a ``FieldInfo``)."""
    annotation = info.annotation
    args = typing.get_args(annotation) if _is_union(annotation) else (annotation,)
    nullable = type(None) in args
    base = [a for a in args if a is not type(None)]
    widget, choices = "JSON", ()
    if len(base) == 1:
        b = base[0]
        if typing.get_origin(b) is Literal:
            widget, choices = "CHOICE", typing.get_args(b)
        elif b is bool:
            widget = "BOOLEAN"
        elif b is int:
            widget = "INT"
        elif b is float:
            widget = "FLOAT"
        elif b is str:
            widget = "STRING"
    elif base and set(base) <= {int, float}:
        widget = "FLOAT"
    if info.default is not PydanticUndefined:
        default = info.default
    elif info.default_factory is not None:
        default = info.default_factory()
    else:
        default = None
    if annotation is Any and default is None and not info.is_required():
        nullable = True  # e.g. ``pipeline: Any = None``: an empty widget means "not given"
    bounds: dict[str, float] = {}
    for meta in info.metadata:
        for key in ("ge", "gt", "le", "lt"):
            value = getattr(meta, key, None)
            if value is not None:
                bounds[key] = value
    return InputField(
        name=name,
        annotation=_type_name(annotation),
        widget=widget,
        required=info.is_required(),
        default=default,
        nullable=nullable,
        description=info.description or "",
        minimum=bounds.get("ge", bounds.get("gt")),
        maximum=bounds.get("le", bounds.get("lt")),
        exclusive_minimum="gt" in bounds,
        exclusive_maximum="lt" in bounds,
        choices=tuple(choices),
    )


def _is_union(annotation: Any) -> bool:
    import types

    return typing.get_origin(annotation) in (Union, types.UnionType)


def _type_name(annotation: Any) -> str:
    if annotation is type(None):
        return "None"
    if _is_union(annotation):
        return " | ".join(_type_name(a) for a in typing.get_args(annotation))
    if typing.get_origin(annotation) is Literal:
        return " | ".join(repr(a) for a in typing.get_args(annotation))
    if isinstance(annotation, type) and not typing.get_args(annotation):
        return annotation.__name__
    return str(annotation).replace("typing.", "")


def _jsonable(value: Any) -> Any:
    if isinstance(value, BaseModel):
        return value.model_dump(mode="json")
    if isinstance(value, tuple):
        return [_jsonable(v) for v in value]
    return value


def validation_problems(error: ValidationError) -> list[tuple[str, str]]:
    """``(field, message)`` pairs of a pydantic error; ``field`` is the dotted location or ``"-"``
    for whole-model checks (whose messages name the fields themselves)."""
    out = []
    for item in error.errors():
        loc = ".".join(str(p) for p in item["loc"]) or "-"
        message = item["msg"].removeprefix("Value error, ")
        if item["type"] not in {"missing"} and "input" in item and not isinstance(item["input"], Mapping):
            message += f" (got {item['input']!r})"
        out.append((loc, message))
    return out


# ----------------------------------------------------------------------------------------------
# rewards and backends from the registry


def options_model(cls: Any) -> type[BaseModel]:
    """The pydantic model of a plugin's constructor options.

    ``cls.Options`` when the class declares one (a pydantic model whose fields are the keyword
    arguments of ``cls``); otherwise derived from ``cls.__init__``: each named parameter becomes a
    field with its default (required if it has none), its annotation simplified to JSON types
    (paths, devices and dtypes become ``str``; sequences ``list``) and its description from the
    ``Args:`` section of the class or ``__init__`` docstring. ``*args``/``**kwargs`` are left out.
    """
    declared = getattr(cls, "Options", None)
    if isinstance(declared, type) and issubclass(declared, BaseModel):
        return declared
    init = cls.__init__ if isinstance(cls, type) else cls
    try:
        signature = inspect.signature(init)
    except (TypeError, ValueError):
        signature = inspect.Signature()
    try:
        hints = typing.get_type_hints(init)
    except Exception:  # noqa: BLE001 - unresolvable annotations: fall back to the defaults' types
        hints = {}
    docs = {**_param_docs(getattr(init, "__doc__", None)), **_param_docs(getattr(cls, "__doc__", None))}
    fields: dict[str, Any] = {}
    for param in signature.parameters.values():
        if param.name == "self" or param.kind in (param.VAR_POSITIONAL, param.VAR_KEYWORD):
            continue
        default = ... if param.default is inspect.Parameter.empty else param.default
        hint = _json_hint(hints.get(param.name), default)
        if isinstance(default, (os.PathLike, tuple)):
            default = str(default) if isinstance(default, os.PathLike) else list(default)
        fields[param.name] = (hint, Field(default, description=docs.get(param.name)))
    name = getattr(cls, "__name__", "Plugin")
    return create_model(
        f"{name}Options",
        __config__=ConfigDict(extra="forbid", arbitrary_types_allowed=False),
        __doc__=f"Options of {name} (derived from its __init__ signature).",
        **fields,
    )


_SIMPLE = (bool, int, float, str)


def _json_hint(hint: Any, default: Any) -> Any:
    if hint is None:
        if default is None or default is ...:
            return Any
        return type(default) if type(default) in _SIMPLE else Any
    args = typing.get_args(hint) if _is_union(hint) else (hint,)
    mapped: list[Any] = []
    for arg in args:
        simple = _simple_type(arg)
        if simple is not None and simple not in mapped:
            mapped.append(simple)
    if not mapped or mapped == [type(None)]:
        return Any
    return functools.reduce(operator.or_, mapped) if len(mapped) > 1 else mapped[0]


def _simple_type(arg: Any) -> Any:
    import collections.abc

    if arg is type(None) or arg in _SIMPLE:
        return arg
    origin = typing.get_origin(arg)
    if origin is Literal:
        return arg
    if arg in (os.PathLike, pathlib.Path, pathlib.PurePath) or origin is os.PathLike:
        return str
    if getattr(arg, "__module__", "").startswith("torch") and getattr(arg, "__name__", "") in {"device", "dtype"}:
        return str
    if origin in (list, tuple, collections.abc.Sequence, set, frozenset) or arg in (list, tuple):
        inner = typing.get_args(arg)
        item = _simple_type(inner[0]) if inner else None
        return list[item] if item not in (None, type(None)) else list
    if origin in (dict, collections.abc.Mapping) or arg is dict:
        return dict[str, Any]
    return None


def _param_docs(doc: str | None) -> dict[str, str]:
    """``{name: description}`` from a Google-style ``Args:`` section."""
    if not doc:
        return {}
    lines = inspect.cleandoc(doc).splitlines()
    out: dict[str, str] = {}
    in_args, current, indent = False, None, None
    for line in lines:
        if re.match(r"^\s*(Args|Arguments|Parameters):\s*$", line):
            in_args, current, indent = True, None, None
            continue
        if not in_args:
            continue
        if not line.strip():
            current = None
            continue
        this = len(line) - len(line.lstrip())
        if indent is None:
            indent = this
        if this < indent:
            in_args = False
            continue
        match = re.match(r"^\s*([\w, ]+?)\s*(\([^)]*\))?:\s*(.*)$", line) if this == indent else None
        if match:
            names = [n.strip() for n in match.group(1).split(",")]
            for n in names:
                out[n] = match.group(3).strip()
            current = names
        elif current:
            for n in current:
                out[n] = (out[n] + " " + line.strip()).strip()
    return {name: _plain(text) for name, text in out.items()}


def _plain(text: str) -> str:
    """Docstring markup to plain text (tooltips): ``x`` -> x, :class:`X` -> X."""
    text = re.sub(r":[\w.]+:`~?([^`]*)`", r"\1", text)
    return text.replace("``", "")


def plugin_node(kind: str, name: str, cls: Any, value: str) -> NodeSpec:
    """The node of a registered reward or backend class."""
    model = options_model(cls)
    doc = _plain(inspect.cleandoc(getattr(cls, "__doc__", None) or "").split("\n\n")[0].replace("\n", " "))
    return NodeSpec(
        type=f"{kind}:{name}",
        inputs=model,
        outputs=((kind, kind.upper()),),
        description=doc or f"{kind} {name!r} from the treesdk registry",
        category=f"treesdk/{kind}s",
        source=value,
        plugin=(kind, name),
    )


# ----------------------------------------------------------------------------------------------
# the registry of nodes


_KIND_SET_BY_TYPE = "kind"

RECIPE_CONNECTIONS: tuple[Connection, ...] = (
    Connection("tree", "TREE", True, "tree shape"),
    Connection("window", "WINDOW", False, "window schedule (default: fixed, start 0)"),
    Connection("noise", "NOISE", False, "noise schedule of the window's SDE steps (default: constant 0.7)"),
    Connection("outside", "STEP", False, "step outside the window: ode (default) or flow-grpo-sde (GRPO)"),
    Connection("advantage", "ADVANTAGE", True, "advantage estimator"),
    Connection("losses", "LOSS", True, "loss terms, summed with their weights", many=True),
    Connection("optim", "OPTIM", False, "optimiser settings (default: AdamW lr 1e-4)"),
)

_OUTSIDE_HIDDEN = "is set by the recipe's `outside` step node (ode or flow-grpo-sde), not by the tree node"


def _part(type_: str, model: type[BaseModel], output: str, category: str, out_name: str) -> NodeSpec:
    fixed = {}
    kind_field = model.model_fields.get(_KIND_SET_BY_TYPE)
    if kind_field is not None and typing.get_origin(kind_field.annotation) is Literal:
        values = typing.get_args(kind_field.annotation)
        if len(values) == 1:
            fixed = {_KIND_SET_BY_TYPE: values[0]}
    hidden = {}
    if model is TreeSpec:
        hidden = {"sde_outside_window": _OUTSIDE_HIDDEN, "outside_noise_level": _OUTSIDE_HIDDEN}
    return NodeSpec(
        type=type_,
        inputs=model,
        outputs=((out_name, output),),
        description=_plain(inspect.cleandoc(model.__doc__ or "").replace("\n", " ")),
        category=f"treesdk/recipe/{category}",
        fixed=fixed,
        hidden=hidden,
    )


def builtin_nodes() -> dict[str, NodeSpec]:
    """The nodes treesdk defines itself (recipe parts, the recipe, and the ComfyUI runtime nodes)."""
    specs = [
        _part("tree", TreeSpec, "TREE", "tree", "tree"),
        _part("fixed-window", FixedWindow, "WINDOW", "window", "window"),
        _part("sliding-window", SlidingWindow, "WINDOW", "window", "window"),
        _part("random-window", RandomWindow, "WINDOW", "window", "window"),
        _part("noise-schedule", NoiseSpec, "NOISE", "sde", "noise"),
        _part("ode", ODEStep, "STEP", "sde", "step"),
        _part("flow-grpo-sde", FlowGRPOSDEStep, "STEP", "sde", "step"),
        _part("group-advantage", GroupAdvantageSpec, "ADVANTAGE", "advantage", "advantage"),
        _part("tree-backup", TreeBackupSpec, "ADVANTAGE", "advantage", "advantage"),
        _part("clipped-surrogate", ClippedSurrogateSpec, "LOSS", "loss", "loss"),
        _part("layertuning-sft", LayerTuningSpec, "LOSS", "loss", "loss"),
        _part("kl", KLSpec, "LOSS", "loss", "loss"),
        _part("adamw", OptimSpec, "OPTIM", "optim", "optim"),
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
            description=_plain(inspect.cleandoc(TreeSearchSpec.__doc__ or "").replace("\n", " ")),
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


_PLUGIN_ERRORS: dict[str, str] = {}


@functools.lru_cache(maxsize=1)
def _plugin_nodes() -> dict[str, NodeSpec]:
    from . import registry

    nodes: dict[str, NodeSpec] = {}
    _PLUGIN_ERRORS.clear()
    for kind in ("reward", "backend"):
        for name, ep in sorted(registry._entry_points(kind).items()):
            try:
                cls = ep.load()
                spec = plugin_node(kind, name, cls, ep.value)
            except registry.IMPORT_FAILURES as exc:  # one broken plugin never hides the others
                _PLUGIN_ERRORS[f"{kind}:{name}"] = f"{ep.value}: {registry.describe_failure(exc)}"
                continue
            nodes[spec.type] = spec
    return nodes


def all_nodes(plugins: bool = True) -> dict[str, NodeSpec]:
    """Every node type by name: built-ins, then rewards and backends from the entry-point registry
    (``plugins=False`` leaves those out and imports no plugin). Plugins that fail to import are
    left out and listed by :func:`plugin_errors`."""
    nodes = builtin_nodes()
    if plugins:
        nodes.update(_plugin_nodes())
    return nodes


def plugin_errors() -> dict[str, str]:
    """``{"reward:name": error}`` for registered plugins that could not be turned into nodes."""
    _plugin_nodes()
    return dict(_PLUGIN_ERRORS)


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
    hint = f" (that plugin failed to import: {_PLUGIN_ERRORS[type_name]})" if type_name in _PLUGIN_ERRORS else ""
    raise KeyError(f"unknown node type {type_name!r}{hint}; known types: {', '.join(nodes)}")


__all__ = [
    "Connection",
    "FlowGRPOSDEStep",
    "InputField",
    "LoadLoraSpec",
    "NodeInputError",
    "NodeSpec",
    "ODEStep",
    "OUTPUT_TYPES",
    "RECIPE_CONNECTIONS",
    "RecipeSettings",
    "ScoreSpec",
    "StepSpec",
    "TreeSearchSpec",
    "all_nodes",
    "comfy_type",
    "comfy_widget",
    "describe_field",
    "get_node",
    "options_model",
    "plugin_errors",
    "refresh",
]
