"""Node specs: a node type as the pydantic model of its inputs, its connections and its outputs.

A :class:`NodeSpec` names a node type (``"tree-backup"``), the pydantic model of its inputs, the
typed connections it takes from other nodes and what it produces. The same spec drives validation of
graph files (:mod:`treesdk.nodes.graph`), ``treesdk nodes`` (listing, ``--schema``) and the generated
ComfyUI pack (:meth:`NodeSpec.input_types` returns ComfyUI's ``INPUT_TYPES`` dict).
"""

from __future__ import annotations

import json
import math
import re
import types
import typing
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, Literal, Union

from pydantic import BaseModel, ValidationError
from pydantic_core import PydanticUndefined

from treesdk.validation import validation_problems  # noqa: F401 - the one formatter, re-exported for node callers


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
    args = typing.get_args(annotation) if is_union(annotation) else (annotation,)
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


def is_union(annotation: Any) -> bool:
    """Whether ``annotation`` is ``X | Y`` or ``Union[X, Y]``."""
    return typing.get_origin(annotation) in (Union, types.UnionType)


def _type_name(annotation: Any) -> str:
    if annotation is type(None):
        return "None"
    if is_union(annotation):
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


def plain_text(text: str) -> str:
    """Docstring markup to plain text (tooltips): ``x`` -> x, :class:`X` -> X."""
    text = re.sub(r":[\w.]+:`~?([^`]*)`", r"\1", text)
    return text.replace("``", "")
