"""How treesdk words bad input: a short excerpt of a value, and one formatter of pydantic errors.

Every pydantic ``ValidationError`` a user can cause (recipes, recipe parts, node inputs, run
files) is worded by :func:`validation_problems` / :func:`validation_message`: one line per bad
field, its dotted location (or the command-line flag that set it), the message without
pydantic's ``"Value error, "`` prefix, and the value seen (an :func:`excerpt`, never a whole
mapping) unless the field is missing.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from pydantic import ValidationError

__all__ = ["EXCERPT_CHARS", "excerpt", "validation_message", "validation_problems"]

#: longest excerpt of an input echoed in an error message (characters)
EXCERPT_CHARS = 120


def excerpt(value: Any, limit: int = EXCERPT_CHARS) -> str:
    """``repr(value)`` cut to ``limit`` characters (``...`` marks the cut). Large containers are
    not walked: their repr is built from the first items only."""
    if isinstance(value, (dict, list, tuple)) and len(value) > 8:
        head = list(value.items())[:8] if isinstance(value, dict) else list(value)[:8]
        text = f"{type(value).__name__} of {len(value)} items starting {_short_repr(head, limit)}"
    else:
        text = _short_repr(value, limit)
    return text if len(text) <= limit else text[: limit - 3] + "..."


def _short_repr(value: Any, limit: int) -> str:
    import reprlib

    short = reprlib.Repr()
    short.maxstring = short.maxother = limit
    short.maxlist = short.maxdict = short.maxtuple = 8
    short.maxlevel = 3
    return short.repr(value)


def validation_problems(error: ValidationError, whole: str = "-",
                        rename: Mapping[str, str] | None = None) -> list[tuple[str, str]]:
    """``(field, message)`` pairs of a pydantic error. ``field`` is the dotted location, renamed
    through ``rename`` (e.g. ``{"iters": "--iters"}``), or ``whole`` for whole-model checks (whose
    messages name the fields themselves); ``message`` ends with ``(got <excerpt>)`` when a value
    was seen and is not a mapping or list."""
    out = []
    for item in error.errors():
        loc = ".".join(str(p) for p in item["loc"]) or whole
        loc = (rename or {}).get(loc, loc)
        message = item["msg"].removeprefix("Value error, ")
        if item["type"] != "missing" and "input" in item and not isinstance(item["input"], (Mapping, list)):
            message += f" (got {excerpt(item['input'])})"
        out.append((loc, message))
    return out


def validation_message(header: str, error: ValidationError, whole: str = "-",
                       rename: Mapping[str, str] | None = None) -> str:
    """``header`` then one indented ``field: message`` line per problem (:func:`validation_problems`)."""
    return "\n".join([header, *(f"  {loc}: {message}" for loc, message in validation_problems(error, whole, rename))])
