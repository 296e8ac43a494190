"""The registry of recipe parts: every part kind is declared once, as its pydantic spec (and its builder, if any).

A recipe is assembled from parts in seven slots. Each slot has kinds, keyed by the spec's ``kind``
field; each kind is one :class:`PartDecl` (spec class, and a builder where the spec is not itself
the runtime object):

========== ======== ================================================== ===========================
slot       output   built-in kinds                                     third-party entry points
========== ======== ================================================== ===========================
tree       TREE     ``tree``
window     WINDOW   ``fixed``, ``sliding``, ``random``
noise      NOISE    ``constant`` / ``linear`` / ``per-step`` (one spec)
sde        SDE      ``flow-sde``, ``dance-sde``, ``cps``, ``ode``      ``treesdk.sde``
advantage  ADVANTAGE ``group``, ``tree-backup``, ``depthwise``         ``treesdk.estimators``
loss       LOSS     ``clipped-surrogate``, ``layertuning-sft``, ``kl`` ``treesdk.losses``
optim      OPTIM    ``adamw``
========== ======== ================================================== ===========================

Everything else derives from these declarations: recipe validation (a part's ``kind`` selects its
spec), the builders the trainer calls (:func:`build`), the node list of ``treesdk nodes``, the JSON
Schema of recipe files, graph files and the generated ComfyUI nodes (:mod:`treesdk.nodes`).

Adding an SDE step family is one declaration: a spec whose ``kind`` is a one-value ``Literal`` and a
builder returning a :class:`treesdk.sde.SDEFamily`, the one shape of a family: its transition
``mean_std(x, v, sigma, sigma_next, noise_level) -> (mean, std)`` (float32 mean ``[B, ...]``; ``std``
the transition std, broadcastable; sigma walks from 1 = noise to 0 = data), with the Gaussian
log-prob averaged over elements unless the family gives its own ``log_prob``::

    class DanceSDE(Part):
        kind: Literal["dance-sde"] = "dance-sde"

    declare(PartDecl("sde", DanceSDE, build=lambda spec: SDEFamily("dance-sde", dance_mean_std)))

A loss term or an estimator is one class, its own spec and runtime object: a :class:`RuntimePart`
that is also a :class:`treesdk.interfaces.LossTerm` (its weight is its ``weight`` field) or a
:class:`treesdk.interfaces.AdvantageEstimator`, declared without a builder
(``PartDecl("loss", ClippedSurrogate)``); a spec that builds a separate object declares its builder.
A third-party package points an entry point at its :class:`PartDecl`::

    [project.entry-points."treesdk.losses"]
    entropy-bonus = "my_package.parts:ENTROPY_BONUS"      # a PartDecl(slot="loss", ...)

Entry points are read on first use of a kind that is not built in (and by the listings); one that
fails to import is reported by name and never breaks the others.
"""

from __future__ import annotations

import typing
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Literal

from pydantic import BaseModel, ValidationError

from treesdk import registry
from treesdk.interfaces import AdvantageEstimator, LossTerm
from treesdk.part import Part, RuntimePart
from treesdk.sde import SDEFamily
from treesdk.validation import validation_problems


@dataclass(frozen=True)
class Slot:
    """A place in a recipe that holds parts: its output type and the entry-point kind that extends it."""

    name: str
    output: str
    category: str
    plugin_kind: str | None = None  # a treesdk.registry kind ("loss", "estimator", "sde")


SLOTS: dict[str, Slot] = {
    s.name: s
    for s in (
        Slot("tree", "TREE", "tree"),
        Slot("window", "WINDOW", "window"),
        Slot("noise", "NOISE", "sde"),
        Slot("sde", "SDE", "sde", "sde"),
        Slot("advantage", "ADVANTAGE", "advantage", "estimator"),
        Slot("loss", "LOSS", "loss", "loss"),
        Slot("optim", "OPTIM", "optim"),
    )
}


@dataclass(frozen=True)
class PartDecl:
    """One kind of part: the slot it fills, its spec class and its builder.

    Attributes:
        slot: a key of :data:`SLOTS`.
        spec: the pydantic model of the part's inputs; its ``kind`` field (a one-value ``Literal``)
            is the kind's name, unless ``kind`` is given.
        build: ``spec instance -> runtime object``; None when the spec is its own runtime object
            (a :class:`~treesdk.interfaces.LossTerm` or :class:`~treesdk.interfaces.AdvantageEstimator`
            that is also a :class:`Part`) or plain data read by the trainer (tree, window, noise, optim).
        node: the node type name in graph files and listings (default: the kind).
        kind: the kind's name when the spec has no one-value ``kind`` field.
    """

    slot: str
    spec: type[BaseModel]
    build: Callable[[Any], Any] | None = None
    node: str | None = None
    kind: str | None = None

    @property
    def name(self) -> str:
        if self.kind is not None:
            return self.kind
        field = self.spec.model_fields.get("kind")
        values = typing.get_args(field.annotation) if field is not None and typing.get_origin(field.annotation) is Literal else ()
        if len(values) != 1:
            raise TypeError(f"{self.spec.__name__}: a part spec needs `kind: Literal['name']` (or PartDecl(kind=...))")
        return str(values[0])

    @property
    def node_type(self) -> str:
        return self.node or self.name


_BUILTIN: dict[str, dict[str, PartDecl]] = {name: {} for name in SLOTS}
_SOURCES: dict[tuple[str, str], str] = {}


def declare(decl: PartDecl, source: str = "treesdk") -> PartDecl:
    """Add a part kind to the registry (built-ins call this at import of :mod:`treesdk.recipes.recipe`)."""
    if decl.slot not in SLOTS:
        raise ValueError(f"part slot {decl.slot!r} is unknown; expected one of {', '.join(SLOTS)}")
    _BUILTIN[decl.slot][decl.name] = decl
    _SOURCES[(decl.slot, decl.name)] = source
    return decl


def _plugins(slot: str) -> tuple[dict[str, PartDecl], dict[str, str]]:
    """Declarations registered by entry point for ``slot``, and ``{name: error}`` for broken ones."""
    kind = SLOTS[slot].plugin_kind
    found: dict[str, PartDecl] = {}
    errors: dict[str, str] = {}
    if kind is None:
        return found, errors
    for name in registry.available(kind):
        if name in _BUILTIN[slot]:
            continue
        try:
            decl = registry.load(kind, name)
        except registry.PluginError as exc:
            errors[name] = str(exc)
            continue
        if not isinstance(decl, PartDecl) or decl.slot != slot or decl.name != name:
            errors[name] = (f"entry point {registry.GROUPS[kind]}:{name} must name a PartDecl(slot={slot!r}) whose kind "
                            f"is {name!r}, got {decl!r}")
            continue
        found[name] = decl
    return found, errors


def parts(slot: str, plugins: bool = True) -> dict[str, PartDecl]:
    """Every kind of ``slot`` by name: built-ins, then entry-point plugins (broken ones left out)."""
    out = dict(_BUILTIN[slot])
    if plugins:
        out.update(_plugins(slot)[0])
    return out


def plugin_errors() -> dict[str, str]:
    """``{"loss:name": error}`` for part plugins that could not be loaded."""
    return {f"{slot}:{name}": err for slot in SLOTS for name, err in _plugins(slot)[1].items()}


def source(decl: PartDecl) -> str:
    """``"treesdk"`` for built-ins, else the entry point's value."""
    if (decl.slot, decl.name) in _SOURCES:
        return _SOURCES[(decl.slot, decl.name)]
    kind = SLOTS[decl.slot].plugin_kind
    return registry.entry_point_value(kind, decl.name) if kind else "?"


def lookup(slot: str, kind: str) -> PartDecl:
    """The declaration of ``kind`` in ``slot``; ValueError naming the known kinds otherwise."""
    if kind in _BUILTIN[slot]:
        return _BUILTIN[slot][kind]
    found, errors = _plugins(slot)
    if kind in found:
        return found[kind]
    if kind in errors:
        raise ValueError(f"{slot} kind {kind!r} is registered but failed to load: {errors[kind]}")
    raise ValueError(f"unknown {slot} kind {kind!r}; known kinds: {', '.join(parts(slot))}")


def validate_part(slot: str, value: Any, default_kind: str | None = None) -> BaseModel:
    """A part of ``slot`` from a mapping (its ``kind`` selects the spec) or an instance of a declared spec.

    Used as a pydantic ``before`` validator; errors are ValueErrors naming the field and value.
    """
    if isinstance(value, BaseModel):
        kind = getattr(value, "kind", None)
        if kind is not None and isinstance(value, lookup(slot, str(kind)).spec):
            return value
        value = value.model_dump()
    if not isinstance(value, dict):
        raise ValueError(f"a {slot} part must be a mapping with a `kind`, got {value!r}")
    kind = value.get("kind", default_kind)
    if kind is None:
        raise ValueError(f"a {slot} part needs a `kind`; known kinds: {', '.join(parts(slot))}")
    decl = lookup(slot, str(kind))
    try:
        return decl.spec.model_validate({**value, "kind": kind} if "kind" in decl.spec.model_fields else value)
    except ValidationError as exc:
        problems = "; ".join(f"{loc}: {message}" for loc, message in validation_problems(exc, whole=str(kind)))
        raise ValueError(f"{slot} {kind!r}: {problems}") from None


def build(slot: str, spec: BaseModel) -> Any:
    """The runtime object of a part (an estimator, a loss term, an :class:`~treesdk.sde.SDEFamily`)."""
    decl = lookup(slot, str(getattr(spec, "kind")))
    if decl.build is None:
        if isinstance(spec, (LossTerm, AdvantageEstimator)):
            return spec  # the part is its own runtime object
        raise ValueError(f"{slot} kind {decl.name!r} is plain data; it has no builder")
    built = decl.build(spec)
    if slot == "sde" and not isinstance(built, SDEFamily):
        raise ValueError(f"sde kind {decl.name!r} ({source(decl)}) built {built!r}; an sde builder returns a "
                         "treesdk.sde.SDEFamily, e.g. SDEFamily(name, mean_std)")
    return built


__all__ = ["Part", "PartDecl", "RuntimePart", "SLOTS", "Slot", "build", "declare", "lookup", "parts", "plugin_errors",
           "source", "validate_part"]
