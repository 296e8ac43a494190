"""Default run folders: ``runs/<name>-<YYYYmmdd-HHMMSS>``, with a safe name and never shared.

The name comes from the recipe (its ``name:`` field) or the preset; it is reduced to letters,
digits, ``.``, ``_`` and ``-`` so that a recipe naming itself ``../../x`` or ``/abs/path`` still
writes inside ``runs/``. Two runs started in the same second get ``...-2``, ``...-3``: the folder
is created with ``mkdir`` (which fails when it exists), so the claim is atomic.
"""

from __future__ import annotations

import re
import time
from pathlib import Path

#: longest run name kept (characters), before the time stamp
MAX_NAME = 80


def sanitize_run_name(name: str) -> str:
    """``name`` with every run of characters outside ``[A-Za-z0-9._-]`` replaced by ``-`` and
    leading/trailing dots and dashes removed (so no ``..``, no path separator); ``run`` if empty."""
    cleaned = re.sub(r"[^A-Za-z0-9._-]+", "-", str(name)).strip(".-")
    cleaned = re.sub(r"\.{2,}", ".", cleaned)[:MAX_NAME].strip(".-")
    return cleaned or "run"


def default_run_dir(name: str, root: str | Path = "runs", stamp: str | None = None) -> Path:
    """The first free ``root/<safe name>-<stamp>[-N]`` (not created; see :func:`claim_run_dir`)."""
    base = f"{sanitize_run_name(name)}-{stamp or time.strftime('%Y%m%d-%H%M%S')}"
    candidate = Path(root) / base
    n = 2
    while candidate.exists():
        candidate = Path(root) / f"{base}-{n}"
        n += 1
    return candidate


def claim_run_dir(name: str, root: str | Path = "runs", stamp: str | None = None) -> Path:
    """Create and return a new, empty ``root/<safe name>-<stamp>[-N]`` folder; a folder another
    run created in the meantime is never reused."""
    base = default_run_dir(name, root, stamp)
    Path(root).mkdir(parents=True, exist_ok=True)
    candidate, n = base, 2
    while True:
        try:
            candidate.mkdir()
            return candidate
        except FileExistsError:
            candidate = base.with_name(f"{base.name}-{n}")
            n += 1
