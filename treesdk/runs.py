"""Rebuilding a trained policy from a run folder or one of its checkpoints."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from .checkpoint import latest_checkpoint, load_checkpoint
from .interfaces import VelocityModel


def read_run_config(run_or_checkpoint: str | Path) -> tuple[Path, dict[str, Any]]:
    """``(run folder, config.json)`` of a run folder or a checkpoint folder inside one."""
    path = Path(run_or_checkpoint)
    for folder in (path, path.parent.parent):
        if (folder / "config.json").is_file():
            return folder, json.loads((folder / "config.json").read_text())
    raise FileNotFoundError(f"{path} is not a treesdk run folder or checkpoint: no config.json found there or two levels up")


def load_trained_backend(run_or_checkpoint: str | Path, **option_overrides: Any) -> tuple[VelocityModel, dict[str, Any], dict[str, Any]]:
    """The run's backend with the newest (or the given) checkpoint's weights loaded.

    Returns ``(backend, config.json, checkpoint state.json)``.
    """
    from . import load_backend

    _, config = read_run_config(run_or_checkpoint)
    backend_cfg = config.get("backend", {})
    options = {**backend_cfg.get("options", {}), **{k: v for k, v in option_overrides.items() if v is not None}}
    backend = load_backend(backend_cfg["name"], **options)
    trainable, _, state = load_checkpoint(latest_checkpoint(run_or_checkpoint))
    backend.load_trainable_state_dict(trainable)
    return backend, config, state
