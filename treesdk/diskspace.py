"""A full disk (or a file-size limit) said in words: which file, how much it needed, how much is free."""

from __future__ import annotations

import errno
import os
import shutil
from pathlib import Path

from treesdk.errors import UserError

__all__ = ["DiskFullError", "is_disk_full", "disk_full_error"]

#: errors of a write that did not fit: no space, a quota, a file-size limit (``ulimit -f``)
FULL = {errno.ENOSPC, errno.EFBIG, getattr(errno, "EDQUOT", errno.ENOSPC)}


class DiskFullError(UserError):
    """A write that did not fit; ``errno`` is the OS error's (ENOSPC, EDQUOT or EFBIG)."""

    def __init__(self, message: str, errno_: int | None = None) -> None:
        super().__init__(message)
        self.errno = errno_


def is_disk_full(exc: BaseException) -> bool:
    """True for an ``OSError`` meaning the data did not fit."""
    return isinstance(exc, OSError) and exc.errno in FULL


def _mib(n: float) -> str:
    return f"{n / 2**20:.1f} MiB" if n >= 2**20 else f"{int(n)} bytes"


def disk_full_error(exc: OSError, path: str | os.PathLike[str], needed: int | None, after: str = "") -> DiskFullError:
    """A :class:`DiskFullError` for ``exc`` raised writing ``path``: the bytes ``needed`` (None:
    unknown), the bytes free on its file system, the file-size limit when one is set, and ``after``
    (what still holds, e.g. "the previous checkpoint iter_000001 is intact")."""
    folder = Path(path).parent
    while not folder.exists() and folder != folder.parent:
        folder = folder.parent
    parts = [f"could not write {path}: {exc.strerror or exc}"]
    if needed is not None:
        parts.append(f"it needs about {_mib(needed)}")
    try:
        parts.append(f"{_mib(shutil.disk_usage(folder).free)} free on the file system of {folder}")
    except OSError:
        pass
    try:
        import resource

        soft, _ = resource.getrlimit(resource.RLIMIT_FSIZE)
        if soft != resource.RLIM_INFINITY:
            parts.append(f"files are limited to {_mib(soft)} (ulimit -f)")
    except (ImportError, OSError, ValueError):
        pass
    message = "; ".join(parts) + (f"; {after}" if after else "") + "; free space (or raise the limit) and try again"
    return DiskFullError(message, exc.errno)
