"""Defaults a pipeline folder carries for the diffusers backend: ``treesdk_defaults.json``.

A pipeline's own defaults are the full-size model's (1024 px, 512 text tokens, 81 video frames).
A folder may hold ``treesdk_defaults.json``, a JSON object of backend options (``resolution`` in
pixels, and family options such as ``max_sequence_length`` or ``num_frames``) that the backend
uses for any option the caller did not give. ``treesdk tiny`` writes one into every tiny pipeline,
so its small size is the default of every command. Names the family does not take are ignored.
"""

from __future__ import annotations

import inspect
import json
import os
from pathlib import Path
from typing import Any

from treesdk.errors import UserError

__all__ = ["DEFAULTS_FILE", "apply_folder_defaults", "read_folder_defaults", "write_folder_defaults"]

DEFAULTS_FILE = "treesdk_defaults.json"


def read_folder_defaults(model: Any) -> dict[str, int | float | str]:
    """The options in ``model/treesdk_defaults.json`` ({} when ``model`` is not a local folder with
    one); a file that is not a JSON object of numbers/strings is a ``UserError`` naming it."""
    if not isinstance(model, (str, os.PathLike)):
        return {}
    path = Path(model).expanduser() / DEFAULTS_FILE
    if not path.is_file():
        return {}
    from treesdk.safe_load import load_json

    data = load_json(path.read_text(encoding="utf-8"), str(path))
    if not isinstance(data, dict) or not all(
            isinstance(k, str) and isinstance(v, (int, float, str)) and not isinstance(v, bool) for k, v in data.items()):
        raise UserError(f"{path}: expected a JSON object of option names to numbers or strings, "
                        f"e.g. {{\"resolution\": 32}}")
    return data


def write_folder_defaults(folder: str | os.PathLike[str], defaults: dict[str, int | float | str]) -> Path:
    """Write ``folder/treesdk_defaults.json``; returns its path."""
    path = Path(folder) / DEFAULTS_FILE
    path.write_text(json.dumps(defaults, indent=2, sort_keys=True) + "\n", encoding="utf-8")
    return path


def apply_folder_defaults(model: Any, adapter_cls: type, resolution: int | None,
                          family_options: dict[str, Any]) -> tuple[int | None, dict[str, Any]]:
    """``(resolution, family_options)`` with the folder's defaults filling what was not given."""
    defaults = read_folder_defaults(model)
    if not defaults:
        return resolution, family_options
    accepted = {n for n, p in inspect.signature(adapter_cls.__init__).parameters.items()
                if n != "self" and p.kind in (p.POSITIONAL_OR_KEYWORD, p.KEYWORD_ONLY)}
    filled = {k: v for k, v in defaults.items() if k in accepted}
    if resolution is None and isinstance(defaults.get("resolution"), int):
        resolution = int(defaults["resolution"])
    return resolution, {**filled, **family_options}
