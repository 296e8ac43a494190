"""Export a trained run, format-agnostic (the formats live in the backends).

:func:`export_run` rebuilds a run's backend from its ``config.json`` (a
:class:`~treesdk.training.config.RunConfig`) with its latest (or a given) checkpoint and calls
``backend.export(fmt, out, metadata)``, with the ``treesdk.*`` metadata of
:func:`treesdk.training.exporting.metadata.export_metadata`. Reading an exported file back
(``treesdk export --check``) is :func:`treesdk.export_files.check_file`.

Run folder layout read here (written by :mod:`treesdk.training.loop.trainer` / :mod:`treesdk.training.run_folder.checkpoint`)::

    RUN/config.json                                    the run's RunConfig
    RUN/checkpoints/iter_NNNNNN/trainable.safetensors  backend.trainable_state_dict()
    RUN/checkpoints/iter_NNNNNN/state.json             {"iteration": N, ...}
"""

from __future__ import annotations

import os
from pathlib import Path

from treesdk.export_files import check_file  # noqa: F401 - the export API's reader, re-exported
from treesdk import registry
from treesdk.io import make_folders, remove_empty_folders, unwritable_reason
from treesdk.pipeline_folder import cast_safetensors, parse_export_dtype
from treesdk.recipes import Recipe
from treesdk.training.config import read_run_config
from treesdk.training.exporting.metadata import export_metadata
from treesdk.training.exporting.trained_policy import backend_options, find_checkpoint, rebuild_backend

#: export formats the CLI offers (each backend lists what it supports in ``export_formats``)
FORMATS = ("lora", "diffusers", "comfyui", "digits")


def _check_writable(out: Path) -> None:
    """Raise ``OSError`` naming ``out`` when nothing could be written there (checked before any
    work, so a bad path fails fast and nothing is touched)."""
    problem = unwritable_reason(out if out.is_dir() else out.parent)
    if problem:
        raise OSError(f"cannot write {out}: {problem}")


def _check_not_inside_checkpoints(target: Path, run: Path) -> None:
    """Refuse a target inside the run's ``checkpoints/`` folder, the folder itself or the run folder
    itself: an export there would replace the weights it is read from (or a run's own files)."""
    resolved, checkpoints = target.resolve(), (run / "checkpoints").resolve()
    if resolved == run.resolve() or resolved == checkpoints or checkpoints in resolved.parents:
        raise ValueError(f"--out {target}: inside the run's checkpoints (or the run folder itself); an export there "
                         f"would overwrite the weights it reads; give a path outside {checkpoints}, e.g. {run / 'export'}")


def export_run(
    run_or_checkpoint: str | os.PathLike[str],
    fmt: str = "lora",
    out: str | os.PathLike[str] | None = None,
    device: str | None = "cpu",
    dtype: str | None = None,
) -> list[str]:
    """Export a run's policy; returns the files written (the model card ``README.md`` last).

    Args:
        run_or_checkpoint: a run folder (its latest checkpoint) or one checkpoint folder.
        fmt: ``lora`` (default), ``diffusers``, ``comfyui`` or ``digits``; the backend must list it
            in ``export_formats``.
        out: target file or folder; None = ``RUN/export/<fmt default name>``.
        device: device to load the backend on for the export (None = as trained).
        dtype: ``fp32``/``bf16``/``fp16``: floating-point tensors of the written weights in that
            dtype (None = as trained); see :func:`treesdk.pipeline_folder.cast_safetensors`.

    A run trained with EMA for export (``ema.use``) exports the checkpoint's EMA weights, as its
    own end-of-run export did. A model card (:mod:`treesdk.training.exporting.model_card`) is written beside ``lora`` and ``diffusers``
    exports: in the folder of the LoRA file, at the top of the pipeline folder.

    Raises ``ValueError`` (format the backend cannot produce, no adapter for ``lora``),
    ``FileNotFoundError`` (no run/checkpoint) or ``OSError`` (unwritable ``out``); existing files
    are untouched in every case, an interrupt (``KeyboardInterrupt``) included: every file is
    written to a temporary name and renamed, and the folders this call made are removed again
    when they stayed empty. An existing file at ``out`` is replaced atomically; a symlink at
    ``out`` is replaced by the exported file (the file it pointed to is left as it was).
    """
    from treesdk.training.run_folder.checkpoint import read_state

    run, ckpt = find_checkpoint(run_or_checkpoint)
    config = read_run_config(run)
    state = read_state(ckpt)
    name = config.backend.name
    factory = registry.load("backend", name)
    formats = tuple(getattr(factory, "export_formats", ()))
    if fmt not in formats:
        raise ValueError(f"backend {name!r} cannot export format {fmt!r}; it supports: {', '.join(formats) or 'nothing'}")
    export_dtype = parse_export_dtype(dtype)
    target = Path(out).expanduser() if out is not None else run / "export" / default_export_name(fmt)
    _check_not_inside_checkpoints(target, run)
    if not target.suffix and target.exists() and not target.is_dir():
        raise ValueError(f"--out {target}: an existing file without a suffix, where a folder (or a .safetensors file) goes; "
                         f"name the file with its suffix (e.g. {target}.safetensors) or a folder")
    _check_writable(target)
    if fmt == "lora" and backend_options(config, factory).get("lora_rank") == 0:
        raise ValueError(f"run {run} trained the whole model (no LoRA adapter); export 'diffusers' or 'comfyui' instead of 'lora'")
    # folders made here (the target's parents; a folder target, which the backend writes into or
    # replaces atomically) before the (slow) model load are removed again if the export fails or
    # is interrupted and they stayed empty
    created = make_folders(target if not target.suffix and not target.exists() else target.parent)
    try:
        return _export(run, ckpt, config, state, name, fmt, target, device, export_dtype)
    except BaseException:
        remove_empty_folders(created)
        raise


def _export(run: Path, ckpt: Path, config, state: dict, name: str, fmt: str, target: Path,  # noqa: ANN001 - a RunConfig
            device: str | None, export_dtype) -> list[str]:  # noqa: ANN001 - a torch dtype or None
    from treesdk.training.run_folder.checkpoint import load_trainable

    from .model_card import write_model_card
    from treesdk.training.optimisation.optimization import load_ema_weights

    trainable = load_trainable(ckpt)  # verified and finite before the (slow) model load
    backend = rebuild_backend(config, device=device)
    backend.load_trainable_state_dict(trainable)
    averaged = load_ema_weights(backend, config.ema, ckpt, "export")  # as the run's own end-of-run export
    recipe = config.recipe if isinstance(config.recipe, Recipe) else config.resolve_recipe()
    metadata = export_metadata(name, {**config.backend.describe, **backend.describe()}, recipe, int(state.get("iteration", 0)))
    metadata["treesdk.ema"] = str(averaged)
    files = cast_safetensors(list(backend.export(fmt, str(target), metadata)), export_dtype)
    rewards = {n: r.weight for n, r in config.rewards.items()} or None
    card = write_model_card(files, fmt, metadata, rewards=rewards)
    return files + ([str(card)] if card is not None else [])


def default_export_name(fmt: str) -> str:
    """File (or folder, for ``diffusers``) name of format ``fmt`` inside ``RUN/export/``."""
    return {"lora": "lora.safetensors", "comfyui": "comfyui.safetensors", "diffusers": "pipeline"}.get(
        fmt, f"{fmt}.safetensors"
    )

