"""Rebuilding a trained policy from a run folder or one of its checkpoints."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from .checkpoint import load_checkpoint
from .interfaces import VelocityModel


def load_trained_backend(run_or_checkpoint: str | Path, **option_overrides: Any) -> tuple[VelocityModel, dict[str, Any], dict[str, Any]]:
    """The run's backend with the newest (or the given) checkpoint's weights loaded.

    The backend is rebuilt as :func:`treesdk.export.export_run` rebuilds it (its ``describe()``
    facts, then the options it was loaded with, from ``config.json``); non-None
    ``option_overrides`` win. Returns ``(backend, config.json, checkpoint state.json)``.
    """
    from . import registry
    from .export import backend_options, find_checkpoint

    from .errors import UserError
    from .safe_load import read_json_file

    run, ckpt = find_checkpoint(run_or_checkpoint)
    config = read_json_file(run / "config.json", "run configuration")
    backend_cfg = config.get("backend", {}) if isinstance(config, dict) else {}
    if not isinstance(backend_cfg, dict) or "name" not in backend_cfg:
        raise UserError(f"{run / 'config.json'} has no backend name (expected {{'backend': {{'name': ...}}}})")
    factory = registry.load("backend", backend_cfg["name"])
    options = {**backend_options(backend_cfg, factory), **{k: v for k, v in option_overrides.items() if v is not None}}
    trainable, _, state = load_checkpoint(ckpt)  # verified and finite before the (slow) model load
    backend = factory(**options)
    backend.load_trainable_state_dict(trainable)
    return backend, config, state
