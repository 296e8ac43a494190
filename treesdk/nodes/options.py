"""Node specs of registered rewards and backends, from their constructor options.

A plugin class may declare an ``Options`` pydantic model (its constructor's keyword arguments);
without one the spec is derived from its ``__init__`` signature (types simplified to JSON types,
descriptions read from the ``Args:`` section of its docstring). A third-party plugin thus appears in
every listing, schema and ComfyUI pack the built-ins appear in.
"""

from __future__ import annotations

import collections.abc
import functools
import inspect
import operator
import os
import pathlib
import re
import typing
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, create_model

from treesdk.nodes.spec import NodeSpec, is_union, plain_text


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
    args = typing.get_args(hint) if is_union(hint) else (hint,)
    mapped: list[Any] = []
    for arg in args:
        simple = _simple_type(arg)
        if simple is not None and simple not in mapped:
            mapped.append(simple)
    if not mapped or mapped == [type(None)]:
        return Any
    return functools.reduce(operator.or_, mapped) if len(mapped) > 1 else mapped[0]


def _simple_type(arg: Any) -> Any:
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
    return {name: plain_text(text) for name, text in out.items()}



def plugin_node(kind: str, name: str, cls: Any, value: str) -> NodeSpec:
    """The node of a registered reward or backend class."""
    model = options_model(cls)
    doc = plain_text(inspect.cleandoc(getattr(cls, "__doc__", None) or "").split("\n\n")[0].replace("\n", " "))
    return NodeSpec(
        type=f"{kind}:{name}",
        inputs=model,
        outputs=((kind, kind.upper()),),
        description=doc or f"{kind} {name!r} from the treesdk registry",
        category=f"treesdk/{kind}s",
        source=value,
        plugin=(kind, name),
    )
