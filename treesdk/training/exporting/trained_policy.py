"""Reading a trained run back: its folder and checkpoint, its backend rebuilt as it trained, its
trained (or EMA) weights loaded — what ``treesdk export``, ``sample`` and ``eval`` start from."""

from __future__ import annotations

import inspect
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

from treesdk import registry
from treesdk.interfaces import VelocityModel
from treesdk.training.config import RunConfig, read_run_config
from treesdk.training.run_folder.checkpoint import latest_checkpoint, load_checkpoint



def find_checkpoint(run_or_checkpoint: str | Path) -> tuple[Path, Path]:
    """``(run folder, checkpoint folder)`` for a run folder (its latest checkpoint) or a checkpoint
    folder (``RUN/checkpoints/<name>/`` with ``trainable.safetensors`` and ``state.json``)."""
    path = Path(run_or_checkpoint).expanduser()
    if not path.exists():
        raise FileNotFoundError(f"{path} does not exist; expected a run folder or one of its checkpoints/<name>/ folders")
    ckpt = latest_checkpoint(path)
    run = path if ckpt != path else ckpt.parent.parent
    if not (run / "config.json").is_file():
        raise FileNotFoundError(f"{run / 'config.json'} not found: {ckpt} does not sit in a run folder written by treesdk train")
    return run, ckpt


def accepted_options(factory: Callable[..., Any]) -> set[str] | None:
    """Keyword names ``factory`` accepts; None when it takes ``**kwargs`` or has no signature."""
    try:
        params = inspect.signature(factory).parameters
    except (TypeError, ValueError):  # pragma: no cover
        return None
    if any(p.kind is inspect.Parameter.VAR_KEYWORD for p in params.values()):
        return None
    return set(params)


def backend_options(config: RunConfig, factory: Callable[..., Any]) -> dict[str, Any]:
    """Constructor options that rebuild a run's backend with ``factory``.

    The facts the backend reported when it trained (``config.backend.describe``: ``model_path`` or
    ``model``, ``resolution``, ``dtype``, ``lora`` rank/alpha/targets, ``full_finetune``,
    ``guidance``, ``shift``, ...) fill what the run was not given explicitly, keeping only names the
    factory accepts; the options the run was loaded with (``config.backend_options()``) win.
    """
    facts = dict(config.backend.describe)
    options: dict[str, Any] = {}
    model = facts.get("model_path") or facts.get("model")
    if model is not None:
        options["model"] = model
    lora = facts.get("lora")
    if isinstance(lora, Mapping):
        options["lora_rank"] = lora.get("rank")
        options["lora_alpha"] = lora.get("alpha")
        options["lora_targets"] = lora.get("target_modules")
    elif facts.get("full_finetune"):
        options["lora_rank"] = 0
    for key in ("resolution", "dtype", "guidance", "guidance_scale", "shift", "max_sequence_length"):
        if key in facts:
            options[key] = facts[key]
    accepted = accepted_options(factory)
    if accepted is not None:
        options = {k: v for k, v in options.items() if k in accepted and v is not None}
    options.update(config.backend_options())
    return options


def rebuild_backend(config: RunConfig, **option_overrides: Any) -> VelocityModel:
    """The run's backend, untrained, built as it was for training; non-None ``option_overrides`` win
    (a ``device`` the factory does not take is dropped)."""
    factory = registry.load("backend", config.backend.name)
    overrides = {k: v for k, v in option_overrides.items() if v is not None}
    accepted = accepted_options(factory)
    if "device" in overrides and accepted is not None and "device" not in accepted:
        overrides.pop("device")
    registry.check_options("backend", config.backend.name, factory, config.backend_options(),
                           "the run's config.json backend.options")
    return factory(**{**backend_options(config, factory), **overrides})


def load_trained_backend(run_or_checkpoint: str | Path, **option_overrides: Any) -> tuple[VelocityModel, RunConfig, dict[str, Any]]:
    """The run's backend with the newest (or the given) checkpoint's weights loaded (its EMA weights
    when the run used EMA for evaluation; ``state["ema"]`` says whether).

    Returns ``(backend, the run's RunConfig, checkpoint state.json)``.
    """
    run, ckpt = find_checkpoint(run_or_checkpoint)
    config = read_run_config(run)
    trainable, _, state = load_checkpoint(ckpt)  # verified and finite before the (slow) model load
    backend = rebuild_backend(config, **option_overrides)
    backend.load_trainable_state_dict(trainable)
    from treesdk.training.optimisation.optimization import load_ema_weights

    state.pop("extra", None)
    state["ema"] = load_ema_weights(backend, config.ema, ckpt, "eval")  # the weights the run evaluated
    return backend, config, state


__all__ = ["accepted_options", "backend_options", "find_checkpoint", "load_trained_backend", "rebuild_backend"]
