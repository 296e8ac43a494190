"""The examples shipped with treesdk (recipe and run files, scripts, a third-party reward plugin).

Installed as the package ``treesdk_examples`` so that a wheel install has them too:
``treesdk examples`` lists them and ``treesdk examples --copy DIR`` copies them into ``DIR``.
"""

from __future__ import annotations

from pathlib import Path


def folder() -> Path:
    """Where the examples are installed."""
    return Path(__file__).resolve().parent


def files() -> list[Path]:
    """Every example file (relative to :func:`folder`), sorted; no caches, not this module."""
    root = folder()
    return sorted(
        p.relative_to(root) for p in root.rglob("*")
        if p.is_file() and "__pycache__" not in p.parts and p != root / "__init__.py" and ".egg-info" not in str(p)
    )
