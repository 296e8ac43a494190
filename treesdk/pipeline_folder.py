"""A full diffusers pipeline folder around a trained transformer, and the ``--dtype`` of exports.

:func:`assemble_pipeline` writes what ``<Family>Pipeline.from_pretrained(folder)`` loads::

    folder/model_index.json        copied from the base model
    folder/transformer/            the trained (merged) transformer, written by ``write_transformer``
    folder/<every other component> (scheduler, VAE, text encoders, tokenizers) taken from the base

The other components are taken with ``components``:

* ``"link"`` (default): each file is hard-linked to the base's file (no extra disk space, and the
  folder stays valid when the base is moved or deleted: a hard link is a second name of the same
  data). Where a hard link is impossible (another file system, or a file system without them)
  the file is copied.
* ``"copy"``: every file copied (a folder to hand to someone else or to upload).
* ``"symlink"``: every component folder is a symbolic link to the base's (smallest; breaks when
  the base moves).

Files in a Hugging Face cache snapshot are symlinks to blobs; links and copies take the blob.

:func:`cast_safetensors` converts the floating-point tensors of written safetensors files to an
export dtype (``--dtype bf16``), keeping their metadata; integer tensors are left as they are.
"""

from __future__ import annotations

import json
import os
import shutil
from collections.abc import Callable, Sequence
from pathlib import Path

import torch
from safetensors import safe_open
from safetensors.torch import load_file

from treesdk.dtypes import DTYPES
from treesdk.io import atomic_save_safetensors

#: ways of taking the base's components (see module docstring)
COMPONENT_MODES = ("link", "copy", "symlink")

#: dtypes an export may be written in
_DTYPES = (torch.float32, torch.bfloat16, torch.float16)


def parse_export_dtype(name: str | None) -> torch.dtype | None:
    """``fp32|bf16|fp16`` (or the long names) -> torch dtype; None keeps the training dtype."""
    if name is None or str(name).lower() in ("", "none", "keep"):
        return None
    if DTYPES.get(str(name).lower()) not in _DTYPES:
        raise ValueError(f"--dtype {name!r}: expected fp32, bf16 or fp16 (or leave it out to keep the training dtype)")
    return DTYPES[str(name).lower()]


def pipeline_components(base: str | os.PathLike[str]) -> list[str]:
    """Component folder names listed in ``base/model_index.json`` (keys not starting with ``_``)."""
    index = Path(base) / "model_index.json"
    if not index.is_file():
        raise FileNotFoundError(f"{base}: no model_index.json, so it is not a diffusers pipeline folder; a full "
                                "pipeline export needs the base model in the diffusers layout")
    data = json.loads(index.read_text())
    return [k for k, v in data.items() if not k.startswith("_") and isinstance(v, list) and v[0] is not None]


def has_component(base: str | os.PathLike[str], name: str) -> bool:
    """Whether ``base`` is a pipeline folder whose ``model_index.json`` lists component ``name``."""
    try:
        return name in pipeline_components(base)
    except (FileNotFoundError, ValueError, OSError):
        return False


def _link_or_copy(src: Path, dst: Path, mode: str) -> None:
    real = Path(os.path.realpath(src))
    if mode == "link":
        try:
            os.link(real, dst)
            return
        except OSError:
            pass
    shutil.copy2(real, dst)


def take_component(base: Path, name: str, folder: Path, mode: str = "link") -> None:
    """Put the base's component ``name`` into ``folder/name`` (see module docstring for ``mode``)."""
    if mode not in COMPONENT_MODES:
        raise ValueError(f"components={mode!r}: expected one of {', '.join(COMPONENT_MODES)}")
    src = base / name
    if not src.is_dir():
        raise FileNotFoundError(f"the base model {base} lists component {name!r} in model_index.json but has no "
                                f"{name}/ folder")
    dst = folder / name
    if mode == "symlink":
        dst.symlink_to(src.resolve(), target_is_directory=True)
        return
    for path in sorted(src.rglob("*")):
        target = dst / path.relative_to(src)
        if path.is_dir():
            target.mkdir(parents=True, exist_ok=True)
        elif path.is_file():  # follows snapshot symlinks; skips dangling ones
            target.parent.mkdir(parents=True, exist_ok=True)
            _link_or_copy(path, target, mode)


def assemble_pipeline(folder: str | os.PathLike[str], base: str | os.PathLike[str],
                      write_transformer: Callable[[Path], Sequence[str] | None], *, components: str = "link",
                      trained: str = "transformer") -> list[str]:
    """Fill the (empty) ``folder`` with a full pipeline: the base's ``model_index.json`` and
    components, and ``write_transformer(folder / trained)`` for the trained one. Returns the files
    written by ``write_transformer`` plus ``model_index.json``."""
    folder, base = Path(folder), Path(base)
    names = pipeline_components(base)
    if trained not in names:
        raise ValueError(f"the base model {base} has no {trained!r} component in model_index.json "
                         f"(it has: {', '.join(names)})")
    shutil.copy2(os.path.realpath(base / "model_index.json"), folder / "model_index.json")
    for name in names:
        if name != trained:
            take_component(base, name, folder, components)
    (folder / trained).mkdir(exist_ok=True)
    written = list(write_transformer(folder / trained) or [])
    return [str(folder / "model_index.json"), *written]


def cast_safetensors(files: Sequence[str], dtype: torch.dtype | None) -> list[str]:
    """Rewrite every ``.safetensors`` file of ``files`` with floating-point tensors in ``dtype``
    (metadata kept, atomic writes); a no-op for ``dtype=None``. Returns ``files``."""
    if dtype is None:
        return list(files)
    for file in files:
        if not str(file).endswith(".safetensors"):
            continue
        with safe_open(str(file), framework="pt") as handle:
            metadata = dict(handle.metadata() or {})
        tensors = load_file(str(file))
        if all(not t.is_floating_point() or t.dtype == dtype for t in tensors.values()):
            continue
        cast = {k: (t.to(dtype) if t.is_floating_point() else t).contiguous() for k, t in tensors.items()}
        metadata["treesdk.dtype"] = str(dtype).replace("torch.", "")
        atomic_save_safetensors(cast, Path(file), metadata)
    return list(files)
