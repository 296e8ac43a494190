"""Atomic file writes: temporary file in the same folder, fsync, rename.

An interrupted write never leaves a truncated file under the final name; the previous file (if
any) stays readable until the rename.
"""

from __future__ import annotations

import json
import os
import tempfile
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import save as _safetensors_bytes


def _current_umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def atomic_write_bytes(path: str | os.PathLike[str], data: bytes | Callable[[Path], None]) -> Path:
    """Write ``data`` (bytes, or a callable that writes the given temp path) atomically to ``path``.

    Raises ``OSError`` naming the path when the folder is missing or not writable; on any error the
    temporary file is removed and an existing file at ``path`` is untouched.
    """
    target = Path(path)
    folder = target.parent if str(target.parent) else Path(".")
    if not folder.is_dir():
        raise OSError(f"cannot write {target}: folder {folder} does not exist")
    fd, tmp_name = tempfile.mkstemp(prefix=f".{target.name}.", suffix=".tmp", dir=folder)
    tmp = Path(tmp_name)
    try:
        if callable(data):
            os.close(fd)
            data(tmp)
            with open(tmp, "rb+") as handle:
                os.fsync(handle.fileno())
        else:
            with os.fdopen(fd, "wb") as handle:
                handle.write(data)
                handle.flush()
                os.fsync(handle.fileno())
        os.chmod(tmp, 0o666 & ~_current_umask())  # mkstemp's 0600 would hide exports from other users
        os.replace(tmp, target)
        dir_fd = os.open(folder, os.O_RDONLY)
        try:
            os.fsync(dir_fd)
        finally:
            os.close(dir_fd)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    return target


def atomic_save_safetensors(
    tensors: Mapping[str, torch.Tensor], path: str | os.PathLike[str], metadata: Mapping[str, str] | None = None
) -> Path:
    """Save ``tensors`` as safetensors at ``path`` atomically; metadata values must be strings."""
    meta = {str(k): str(v) for k, v in (metadata or {}).items()}
    contiguous = {name: t.detach().contiguous().cpu() for name, t in tensors.items()}
    return atomic_write_bytes(path, _safetensors_bytes(contiguous, metadata=meta))


def atomic_write_json(obj: Any, path: str | os.PathLike[str]) -> Path:
    """JSON-dump ``obj`` (indented, sorted keys) to ``path`` atomically."""
    return atomic_write_bytes(path, (json.dumps(obj, indent=2, sort_keys=True, default=str) + "\n").encode())
