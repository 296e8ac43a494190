"""Bounded parsing of every YAML/JSON text treesdk reads: recipe and config files, run files,
and command-line values (``--set``, ``--backend-opt``, ``--reward-opt``).

Every failure is a :class:`~treesdk.errors.UserError` that names the file (or flag), the line and
column where the parser stopped, and a short excerpt, never the whole input:

* files over ``max_bytes`` are refused before being read (recipe/config files: 1 MiB);
* bytes that are not UTF-8 text are reported with their offset;
* YAML aliases may not expand the data beyond :data:`MAX_NODES` values (an "alias bomb" of a few
  hundred bytes otherwise becomes billions of values once walked), nor refer to themselves;
* nesting deeper than Python's recursion limit is refused;
* error messages echo at most :data:`EXCERPT_CHARS` characters of the input.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import yaml

from .errors import UserError
from .validation import EXCERPT_CHARS, excerpt  # noqa: F401 - re-exported: the one excerpt of inputs in errors

#: largest recipe/config file read (bytes)
MAX_CONFIG_BYTES = 1 << 20
#: largest prompt file read (bytes)
MAX_PROMPT_BYTES = 64 << 20
#: largest number of values (mappings, lists, scalars) a parsed document may expand to: more than a
#: 1 MiB file can spell out, so only aliases repeating sub-trees reach it
MAX_NODES = 1_000_000
def read_text(path: str | Path, what: str, max_bytes: int = MAX_CONFIG_BYTES) -> str:
    """The UTF-8 text of ``path`` (``what`` names it in errors, e.g. ``"recipe file"``)."""
    p = Path(path)
    if not p.exists():
        raise FileNotFoundError(f"{what} {p} does not exist")
    if not p.is_file():
        raise UserError(f"{what} {p} is not a file")
    size = p.stat().st_size
    if size > max_bytes:
        raise UserError(f"{what} {p} is {size} bytes; {what}s are limited to {max_bytes} bytes")
    data = p.read_bytes()
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise UserError(
            f"{what} {p} is not UTF-8 text (byte 0x{data[exc.start]:02x} at offset {exc.start}); "
            f"expected a text file"
        ) from None


def _mark(mark: Any) -> str:
    return f"line {mark.line + 1}, column {mark.column + 1}" if mark is not None else "an unknown position"


def check_size(data: Any, source: str, max_nodes: int = MAX_NODES) -> Any:
    """Refuse ``data`` when walking it would visit more than ``max_nodes`` values (shared
    sub-trees counted every time they appear, as a YAML alias expands) or when it contains itself."""
    sizes: dict[int, int] = {}
    open_ids: set[int] = set()

    def size(obj: Any) -> int:
        if not isinstance(obj, (dict, list)):
            return 1
        key = id(obj)
        if key in sizes:
            return sizes[key]
        if key in open_ids:
            raise UserError(f"{source}: a YAML alias refers to a node that contains it (recursive data is not allowed)")
        open_ids.add(key)
        total = 1
        for child in obj.values() if isinstance(obj, dict) else obj:
            total += size(child)
            if total > max_nodes:
                raise UserError(
                    f"{source}: the data expands to more than {max_nodes} values (YAML aliases "
                    "repeating large sub-trees?); write it out without aliases or make it smaller"
                )
        open_ids.discard(key)
        sizes[key] = total
        return total

    try:
        size(data)
    except RecursionError:
        raise UserError(f"{source}: nested too deeply") from None
    return data


def load_yaml(text: str, source: str, max_nodes: int = MAX_NODES) -> Any:
    """``yaml.safe_load(text)`` with errors naming ``source`` and the position, and the size bound."""
    try:
        data = yaml.safe_load(text)
    except yaml.MarkedYAMLError as exc:
        problem = exc.problem or exc.context or "syntax error"
        raise UserError(f"{source}: YAML error at {_mark(exc.problem_mark)}: {problem}") from None
    except yaml.YAMLError as exc:
        raise UserError(f"{source}: not valid YAML: {excerpt(str(exc))}") from None
    except RecursionError:
        raise UserError(f"{source}: nested too deeply") from None
    return check_size(data, source, max_nodes)


def load_json(text: str, source: str, max_nodes: int = MAX_NODES) -> Any:
    """``json.loads(text)`` with errors naming ``source``, the position and an excerpt."""
    try:
        data = json.loads(text)
    except json.JSONDecodeError as exc:
        near = text[exc.pos : exc.pos + 40]
        where = f"line {exc.lineno}, column {exc.colno}"
        hint = " (the file ends there: truncated?)" if exc.pos >= len(text.rstrip()) else f" near {excerpt(near)}"
        raise UserError(f"{source}: not valid JSON at {where}: {exc.msg}{hint}") from None
    except RecursionError:
        raise UserError(f"{source}: nested too deeply") from None
    return check_size(data, source, max_nodes)


def read_yaml_file(path: str | Path, what: str, max_bytes: int = MAX_CONFIG_BYTES) -> Any:
    """Parsed YAML of ``path`` (JSON is YAML too) with every bound of this module."""
    return load_yaml(read_text(path, what, max_bytes), f"{what} {path}")


def read_json_file(path: str | Path, what: str, max_bytes: int = MAX_CONFIG_BYTES) -> Any:
    """Parsed JSON of ``path`` with every bound of this module."""
    return load_json(read_text(path, what, max_bytes), f"{what} {path}")


def read_mapping_file(path: str | Path, what: str, max_bytes: int = MAX_CONFIG_BYTES) -> dict[str, Any]:
    """A ``.yaml``/``.yml``/``.json`` file that must hold a mapping (JSON for ``.json``)."""
    p = Path(path)
    data = read_json_file(p, what, max_bytes) if p.suffix.lower() == ".json" else read_yaml_file(p, what, max_bytes)
    if not isinstance(data, dict):
        raise UserError(f"{what} {p} must hold a mapping (KEY: VALUE lines), got {type(data).__name__}: {excerpt(data)}")
    return data


def parse_value(text: str, flag: str, max_chars: int = 64 << 10) -> Any:
    """A command-line value parsed as YAML (``3`` -> int, ``[1, 2]`` -> list, ``abc`` -> str);
    ``flag`` (e.g. ``"--set tree.k"``) names it in errors."""
    if len(text) > max_chars:
        raise UserError(f"{flag}: the value is {len(text)} characters; values are limited to {max_chars}")
    return load_yaml(text, f"{flag}={excerpt(text, 60)}")
