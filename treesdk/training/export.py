"""Export a trained run and check exported files; format-agnostic (the formats live in the backends).

* :func:`export_run` rebuilds a run's backend from its ``config.json`` (a
  :class:`~treesdk.training.config.RunConfig`) with its latest (or a given) checkpoint and calls
  ``backend.export(fmt, out, metadata)``, with the ``treesdk.*`` metadata of
  :func:`treesdk.training.metadata.export_metadata`.
* :func:`check_file` reads an exported file back (headers only: key names, shapes, metadata),
  says which format it is, which modules it touches and the LoRA rank, and checks every tensor
  against the base model's shapes.

Key layouts (BFL FLUX, SAI SD3, diffusers LoRA names, the digits file) are not known here: each
backend class declares the :class:`Layout` objects that read its files in its ``export_layouts``
attribute, and :func:`check_file` loads the backend named in the file's metadata through the
entry-point registry to get them.

Run folder layout read here (written by :mod:`treesdk.training.trainer` / :mod:`treesdk.training.checkpoint`)::

    RUN/config.json                                    the run's RunConfig
    RUN/checkpoints/iter_NNNNNN/trainable.safetensors  backend.trainable_state_dict()
    RUN/checkpoints/iter_NNNNNN/state.json             {"iteration": N, ...}
"""

from __future__ import annotations

import os
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Protocol

import torch
from safetensors import safe_open
from safetensors.torch import load_file

from treesdk import registry
from treesdk.io import unwritable_reason
from treesdk.recipes import Recipe
from treesdk.training.config import read_run_config
from treesdk.training.metadata import export_metadata
from treesdk.training.runs import backend_options, find_checkpoint, rebuild_backend

#: export formats the CLI offers (each backend lists what it supports in ``export_formats``)
FORMATS = ("lora", "diffusers", "comfyui", "digits")

Shapes = dict[str, tuple[int, ...]]


# ---------------------------------------------------------------------------------------------
# reports and layouts


@dataclass
class Inspection:
    """What a :class:`Layout` found in a file: format name, model family, modules touched (base
    model names), LoRA rank (None for full weights) and problems (empty = every key maps onto the
    base model with the right shape)."""

    format: str
    family: str | None
    modules: list[str]
    rank: int | None
    problems: list[str] = field(default_factory=list)


@dataclass
class FileReport:
    """Result of :func:`check_file`; ``ok`` is True when the base model was found and every tensor
    of the file maps onto it with the right shape."""

    path: str
    format: str
    family: str | None
    modules: list[str]
    rank: int | None
    tensors: int
    base: str | None
    base_checked: bool
    problems: list[str]
    metadata: dict[str, str]

    @property
    def ok(self) -> bool:
        return self.base_checked and not self.problems

    def summary(self) -> str:
        """Human-readable multi-line report (what ``treesdk export --check`` prints)."""
        shown = ", ".join(self.modules[:6]) + (f", ... ({len(self.modules)} in all)" if len(self.modules) > 6 else "")
        lines = [
            f"file:     {self.path}",
            f"format:   {self.format}" + (f" ({self.family})" if self.family else ""),
            f"tensors:  {self.tensors}",
            f"modules:  {shown or '-'}",
            f"rank:     {self.rank if self.rank is not None else '-'}",
            f"base:     {self.base or 'unknown'}",
        ]
        for key in ("treesdk.backend", "treesdk.algorithm", "treesdk.iterations", "treesdk.version"):
            if key in self.metadata:
                lines.append(f"{key.split('.', 1)[1] + ':':<10}{self.metadata[key]}")
        if self.ok:
            lines.append("check:    OK, every tensor maps onto the base model with the right shape")
        else:
            lines.append(f"check:    FAILED ({len(self.problems)} problem{'s' if len(self.problems) != 1 else ''})")
            lines.extend(f"  - {p}" for p in self.problems[:20])
            if len(self.problems) > 20:
                lines.append(f"  ... {len(self.problems) - 20} more")
        return "\n".join(lines)


class Layout(Protocol):
    """Knows one family of key layouts. ``inspect`` returns None for files it does not recognise.

    Args of ``inspect``: ``shapes`` of the file's tensors, the file's ``metadata``, and
    ``base_shapes`` of the base model as found on disk (any layout the backend understands), or
    None when no base model is available (then only the format is determined).
    """

    def inspect(self, shapes: Shapes, metadata: Mapping[str, str], base_shapes: Shapes | None) -> Inspection | None: ...


def compare_shapes(shapes: Mapping[str, tuple[int, ...]], expected: Mapping[str, tuple[int, ...]]) -> list[str]:
    """Problems (one line each) when ``shapes`` differs from ``expected`` in keys or shapes."""
    problems = [f"{k}: not in the base model" for k in sorted(set(shapes) - set(expected))]
    problems += [f"{k}: missing (the base model has it, shape {list(expected[k])})" for k in sorted(set(expected) - set(shapes))]
    problems += [
        f"{k}: shape {list(shapes[k])}, the base model has {list(expected[k])}"
        for k in sorted(set(shapes) & set(expected))
        if tuple(shapes[k]) != tuple(expected[k])
    ]
    return problems


# ---------------------------------------------------------------------------------------------
# reading files and base models


def _safetensors_files(path: Path) -> list[Path]:
    """The safetensors files that make up ``path`` (a file, a model folder or a pipeline folder)."""
    if path.is_file():
        return [path]
    if not path.is_dir():
        return []
    for sub in (path / "transformer", path):
        files = sorted(sub.glob("*.safetensors"))
        if files:
            return files
    return []


def read_header(path: str | os.PathLike[str]) -> tuple[Shapes, dict[str, str]]:
    """``(shapes, metadata)`` of a safetensors file, or of every safetensors file of a folder
    (a diffusers model folder or a pipeline folder's ``transformer/``), without loading tensors."""
    p = Path(path)
    files = _safetensors_files(p)
    if not files:
        raise FileNotFoundError(f"{p}: no safetensors file there (expected a .safetensors file or a folder holding them)")
    shapes: Shapes = {}
    metadata: dict[str, str] = {}
    for file in files:
        try:
            with safe_open(str(file), framework="pt") as handle:
                metadata.update(handle.metadata() or {})
                for key in handle.keys():
                    shapes[key] = tuple(handle.get_slice(key).get_shape())
        except Exception as exc:  # noqa: BLE001 - a corrupt file becomes one clear message
            raise ValueError(f"{file} is not a readable safetensors file: {type(exc).__name__}: {exc}") from exc
    return shapes, metadata


def nonfinite_tensors(path: str | os.PathLike[str], limit: int = 5) -> list[str]:
    """Problems (one line each, at most ``limit`` named) for floating tensors of ``path`` (a file or
    folder, as :func:`read_header`) that hold NaN or infinity; reads one tensor at a time."""
    bad: list[str] = []
    for file in _safetensors_files(Path(path)):
        with safe_open(str(file), framework="pt") as handle:
            for key in handle.keys():
                tensor = handle.get_tensor(key)
                if tensor.is_floating_point() and not bool(torch.isfinite(tensor).all()):
                    bad.append(key)
    lines = [f"{k}: holds NaN or inf values (a diverged run or a damaged file)" for k in bad[:limit]]
    if len(bad) > limit:
        lines.append(f"... and {len(bad) - limit} more tensors with NaN or inf values")
    return lines


def _hub_cache_folder(repo_id: str) -> Path | None:
    """The newest local snapshot of ``repo_id`` in the Hugging Face cache, if any (no download)."""
    if "/" not in repo_id:
        return None
    cache = Path(os.environ.get("HF_HUB_CACHE") or Path(os.environ.get("HF_HOME", Path.home() / ".cache" / "huggingface")) / "hub")
    snapshots = cache / f"models--{repo_id.replace('/', '--')}" / "snapshots"
    if not snapshots.is_dir():
        return None
    found = sorted(snapshots.iterdir(), key=lambda p: p.stat().st_mtime)
    return found[-1] if found else None


def _resolve_base(base: str | os.PathLike[str] | None) -> Path | None:
    if base is None or str(base) == "":
        return None
    p = Path(str(base)).expanduser()
    if p.exists():
        return p
    return _hub_cache_folder(str(base))


def backend_layouts(backend_name: str | None) -> list[Layout]:
    """The layouts backends declare in their ``export_layouts`` class attribute: of the backend
    named ``backend_name`` (imported through the entry-point registry), or of every registered
    backend when None. A backend that fails to import is skipped (``treesdk plugins`` names it)."""
    names = [backend_name] if backend_name else registry.available("backend")
    layouts: list[Layout] = []
    for name in names:
        try:
            factory = registry.load("backend", name)
        except registry.PluginError:
            continue
        layouts += [layout for layout in getattr(factory, "export_layouts", ()) if all(type(layout) is not type(x) for x in layouts)]
    return layouts


def check_file(
    path: str | os.PathLike[str],
    base: str | os.PathLike[str] | None = None,
    layouts: Iterable[Layout] | None = None,
) -> FileReport:
    """Read an exported file back and check it against its base model.

    Args:
        path: a safetensors file (LoRA, BFL/SAI single file, digits file) or a diffusers model
            folder (``config.json`` + ``diffusion_pytorch_model*.safetensors``).
        base: the base model (folder, pipeline folder, single file or a local hub cache id); None
            takes ``treesdk.base_model`` from the file's metadata.
        layouts: layouts to try; None = the ``export_layouts`` of the backend named in the
            metadata (of every registered backend when the file names none).

    Returns a :class:`FileReport`; its ``format`` is one of ``lora-diffusers``, ``lora-comfyui``,
    ``bfl-flux``, ``sai-sd3``, ``diffusers-transformer``, ``digits`` (or ``unknown``).
    Raises ``FileNotFoundError`` / ``ValueError`` when the file cannot be read at all.
    """
    shapes, metadata = read_header(path)
    base_name = str(base) if base is not None else metadata.get("treesdk.base_model")
    base_path = _resolve_base(base_name)
    base_shapes: Shapes | None = None
    problems: list[str] = []
    if base_path is not None:
        base_shapes, _ = read_header(base_path)
    elif base_name:
        problems.append(f"base model {base_name!r} not found on disk (nor in the local Hugging Face cache); pass --base PATH")
    else:
        problems.append("the file names no base model (metadata treesdk.base_model); pass --base PATH")
    if layouts is None:
        candidates: list[Layout] = backend_layouts(metadata.get("treesdk.backend"))
    else:
        candidates = list(layouts)
    found: Inspection | None = None
    for layout in candidates:
        found = layout.inspect(shapes, metadata, base_shapes)
        if found is not None:
            break
    if found is None:
        found = Inspection("unknown", None, [], None, [
            "no layout recognises these keys: the backend named in the file's metadata (treesdk.backend) "
            "declares none that fits, or the file names no backend"
        ])
    problems += nonfinite_tensors(path)
    return FileReport(
        path=str(path),
        format=found.format,
        family=found.family,
        modules=found.modules,
        rank=found.rank,
        tensors=len(shapes),
        base=str(base_path) if base_path is not None else base_name,
        base_checked=base_shapes is not None and found.format != "unknown",
        problems=problems + found.problems,
        metadata=dict(metadata),
    )


# ---------------------------------------------------------------------------------------------
# export of a run


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
            dtype (None = as trained); see :func:`treesdk.training.pipeline_folder.cast_safetensors`.

    A run trained with EMA for export (``ema.use``) exports the checkpoint's EMA weights, as its
    own end-of-run export did. A model card (:mod:`treesdk.training.model_card`) is written beside ``lora`` and ``diffusers``
    exports: in the folder of the LoRA file, at the top of the pipeline folder.

    Raises ``ValueError`` (format the backend cannot produce, no adapter for ``lora``),
    ``FileNotFoundError`` (no run/checkpoint) or ``OSError`` (unwritable ``out``); existing files
    are untouched in every case.
    """
    from treesdk.training.checkpoint import load_trainable, read_state

    run, ckpt = find_checkpoint(run_or_checkpoint)
    config = read_run_config(run)
    state = read_state(ckpt)
    name = config.backend.name
    factory = registry.load("backend", name)
    formats = tuple(getattr(factory, "export_formats", ()))
    if fmt not in formats:
        raise ValueError(f"backend {name!r} cannot export format {fmt!r}; it supports: {', '.join(formats) or 'nothing'}")
    from .model_card import write_model_card
    from .optimization import load_ema_weights
    from .pipeline_folder import cast_safetensors, parse_export_dtype

    export_dtype = parse_export_dtype(dtype)
    target = Path(out).expanduser() if out is not None else run / "export" / default_export_name(fmt)
    _check_not_inside_checkpoints(target, run)
    _check_writable(target)
    target.parent.mkdir(parents=True, exist_ok=True)  # created before the (slow) model load
    if not target.suffix and not target.exists():
        target.mkdir()  # a folder target: the backend writes into it (or replaces it atomically)
    if fmt == "lora" and backend_options(config, factory).get("lora_rank") == 0:
        raise ValueError(f"run {run} trained the whole model (no LoRA adapter); export 'diffusers' or 'comfyui' instead of 'lora'")
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


def load_tensors(path: str | os.PathLike[str]) -> dict[str, torch.Tensor]:
    """All tensors of a safetensors file or folder (see :func:`read_header`)."""
    out: dict[str, torch.Tensor] = {}
    for file in _safetensors_files(Path(path)):
        out.update(load_file(str(file)))
    return out
