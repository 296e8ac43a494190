"""Rebuilding a trained policy from a run folder or one of its checkpoints."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from treesdk.training.checkpoint import load_checkpoint
from treesdk.interfaces import VelocityModel


def load_trained_backend(run_or_checkpoint: str | Path, **option_overrides: Any) -> tuple[VelocityModel, dict[str, Any], dict[str, Any]]:
    """The run's backend with the newest (or the given) checkpoint's weights loaded.

    The backend is rebuilt as :func:`treesdk.training.export.export_run` rebuilds it (its ``describe()``
    facts, then the options it was loaded with, from ``config.json``); non-None
    ``option_overrides`` win. Returns ``(backend, config.json, checkpoint state.json)``.
    """
    from treesdk import registry
    from treesdk.training.export import backend_options, find_checkpoint

    run, ckpt = find_checkpoint(run_or_checkpoint)
    config = json.loads((run / "config.json").read_text())
    backend_cfg = config.get("backend", {})
    factory = registry.load("backend", backend_cfg["name"])
    options = {**backend_options(backend_cfg, factory), **{k: v for k, v in option_overrides.items() if v is not None}}
    backend = factory(**options)
    trainable, _, state = load_checkpoint(ckpt)
    backend.load_trainable_state_dict(trainable)
    return backend, config, state
