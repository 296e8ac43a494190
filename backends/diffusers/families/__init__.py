"""The diffusers families: the ``diffusers_family`` kind of :mod:`treesdk.registry` (entry-point group
``treesdk.diffusers_families``).

Each entry maps a family name to its :class:`~treesdk_backends.diffusers.adapter.FamilyAdapter`
subclass, built-in or third-party alike::

    [project.entry-points."treesdk.diffusers_families"]
    flux = "treesdk_backends.diffusers.families.flux:FluxAdapter"

:func:`detect_family` picks the adapter for a checkpoint from ``model_index.json``'s ``_class_name``
(and the adapter's :meth:`~FamilyAdapter.accepts` when several serve the same pipeline class). An
adapter that fails to import is reported by name and never hides the others.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from treesdk import registry

from ..adapter import FamilyAdapter

__all__ = ["GROUP", "family_names", "adapter_class", "adapters", "detect_family"]

#: the entry-point group (``treesdk.registry`` kind ``diffusers_family``)
GROUP = registry.GROUPS["diffusers_family"]


def family_names() -> list[str]:
    """Registered family names, sorted."""
    return registry.available("diffusers_family")


def adapter_class(family: str) -> type[FamilyAdapter]:
    """The adapter registered as ``family``; ``ValueError`` naming the known families otherwise."""
    if family not in family_names():
        raise ValueError(f"unknown diffusers family {family!r}; registered ({GROUP}): {', '.join(family_names()) or 'none'}")
    try:
        cls = registry.load("diffusers_family", family)
    except registry.PluginError as exc:
        raise ValueError(str(exc)) from exc
    if not (isinstance(cls, type) and issubclass(cls, FamilyAdapter)):
        raise ValueError(f"diffusers family {family!r} ({registry.entry_point_value('diffusers_family', family)}) "
                         "is not a FamilyAdapter subclass")
    return cls


def adapters() -> tuple[dict[str, type[FamilyAdapter]], dict[str, str]]:
    """Every family that imports (name -> adapter class) and every one that does not (name -> error)."""
    ok: dict[str, type[FamilyAdapter]] = {}
    broken: dict[str, str] = {}
    for name in family_names():
        try:
            ok[name] = adapter_class(name)
        except ValueError as exc:
            broken[name] = str(exc)
    return ok, broken


def detect_family(class_name: str, where: str, model_index: dict[str, Any] | None = None,
                  folder: Path | None = None) -> type[FamilyAdapter]:
    """The adapter serving pipeline class ``class_name`` (read from ``where``, named in errors)."""
    ok, broken = adapters()
    candidates = [cls for cls in ok.values() if class_name in cls.pipeline_classes]
    if len(candidates) > 1:
        candidates = [cls for cls in candidates if cls.accepts(model_index or {}, folder)]
    if len(candidates) == 1:
        return candidates[0]
    if not candidates:
        served = ", ".join(f"{n} ({'/'.join(c.pipeline_classes)})" for n, c in sorted(ok.items()))
        extra = f"; families that failed to import: {broken}" if broken else ""
        raise ValueError(
            f"no diffusers family serves pipeline class {class_name!r} ({where}); registered: {served}{extra}"
        )
    names = ", ".join(sorted(c.family for c in candidates))
    raise ValueError(f"pipeline class {class_name!r} ({where}) is served by several families ({names}); "
                     "pick one with --backend NAME (or family=NAME)")
