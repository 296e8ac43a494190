"""Exported files read back: which format a file is, which modules it touches, its LoRA rank, and
whether every tensor maps onto the base model with the right shape (``treesdk export --check``).

Key layouts (BFL FLUX, SAI SD3, diffusers LoRA names, the digits file) are not known here: each
backend class declares the :class:`Layout` objects that read its files in its ``export_layouts``
attribute, and :func:`check_file` loads the backend named in the file's metadata through the
entry-point registry to get them. A layout reports what it found as an :class:`Inspection`.
Only headers are read (key names, shapes, metadata), plus one tensor at a time for the NaN check.
"""

from __future__ import annotations

import os
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Protocol

from treesdk import registry
from treesdk.hub_cache import hub_snapshot
from treesdk.state_dicts import Shapes, compare_shapes, nonfinite_tensors, read_header

__all__ = ["FileReport", "Inspection", "Layout", "backend_layouts", "check_file", "compare_shapes"]


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


def _resolve_base(base: str | os.PathLike[str] | None) -> Path | None:
    if base is None or str(base) == "":
        return None
    p = Path(str(base)).expanduser()
    if p.exists():
        return p
    return hub_snapshot(str(base))


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
