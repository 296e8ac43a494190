""""Did you mean" for unknown names: valid choices ordered by similarity to what was typed."""

from __future__ import annotations

import difflib
from collections.abc import Iterable


def closest_first(name: str, valid: Iterable[str]) -> list[str]:
    """``valid`` sorted by similarity to ``name`` (most similar first; ties keep alphabetical order)."""
    choices = sorted(set(valid))
    lowered = name.lower()
    return sorted(choices, key=lambda c: -difflib.SequenceMatcher(None, lowered, c.lower()).ratio())


def unknown_name_message(what: str, name: str, valid: Iterable[str]) -> str:
    """``"unknown {what} 'nmae'; valid: name, other, ..."`` with the closest choice first."""
    ordered = closest_first(name, valid)
    if not ordered:
        return f"unknown {what} {name!r}: there are none to choose from"
    return f"unknown {what} {name!r}; valid (closest first): {', '.join(ordered)}"
