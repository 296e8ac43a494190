"""Atomic file writes: temporary file in the same folder, fsync, rename.

An interrupted write never leaves a truncated file under the final name; the previous file (if
any) stays readable until the rename. Temporary names carry the writer's process id
(``.NAME.PID.XXXX.tmp``); a writer killed with SIGKILL leaves one behind, and the next write of
the same name removes it (:func:`remove_stale_temps`) once that process is gone.
"""

from __future__ import annotations

import json
import os
import re
import shutil
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


def temp_prefix(target: Path) -> str:
    """Prefix of the temporary names used while writing ``target``: ``.NAME.PID.``"""
    return f".{target.name}.{os.getpid()}."


def process_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # another user's live process
        return True
    return True


def remove_stale_temps(target: Path) -> list[Path]:
    """Remove the temporary files/folders beside ``target`` (``.NAME.PID.*.tmp`` / ``.old``) whose
    writer process no longer exists; returns what was removed. A stale ``.old`` (the previous
    version, moved aside by a writer killed before its rename) is put back when ``target`` is missing."""
    folder = target.parent if str(target.parent) else Path(".")
    pattern = re.compile(rf"^\.{re.escape(target.name)}\.(\d+)\..*\.(tmp|old)$")
    removed = []
    try:
        entries = list(folder.iterdir())
    except OSError:
        return removed
    for entry in entries:
        match = pattern.match(entry.name)
        if not match or process_alive(int(match.group(1))):
            continue
        if match.group(2) == "old" and not target.exists():
            os.replace(entry, target)
            continue
        if entry.is_dir() and not entry.is_symlink():
            shutil.rmtree(entry, ignore_errors=True)
        else:
            entry.unlink(missing_ok=True)
        removed.append(entry)
    return removed


def check_writable(path: str | os.PathLike[str], what: str) -> Path:
    """Raise ``UserError`` naming ``what`` (a flag, e.g. ``"--out"``) and ``path`` when nothing could
    be written there: an existing folder where a file goes, the nearest existing parent a file or
    not writable. Checked before any work, so a bad path fails at once and nothing is written."""
    from .errors import UserError

    target = Path(path).expanduser()
    if target.is_dir():
        raise UserError(f"{what} {target}: is a folder; name a file")
    problem = unwritable_reason(target.parent)
    if problem:
        raise UserError(f"{what} {target}: {problem}")
    return target


def check_writable_folder(path: str | os.PathLike[str], what: str) -> Path:
    """Like :func:`check_writable` for a folder that will receive files (it may exist already)."""
    from .errors import UserError

    target = Path(path).expanduser()
    if target.exists() and not target.is_dir():
        raise UserError(f"{what} {target}: is a file, not a folder")
    problem = unwritable_reason(target)
    if problem:
        raise UserError(f"{what} {target}: {problem}")
    return target


def unwritable_reason(folder: str | os.PathLike[str]) -> str | None:
    """Why nothing could be created in ``folder`` (which may not exist yet), or None when it can:
    its nearest existing ancestor is a file, or is a folder this process cannot write."""
    probe = Path(folder)
    while not probe.exists() and probe != probe.parent:
        probe = probe.parent
    if not probe.is_dir():
        return f"{probe} is a file, not a folder"
    if not os.access(probe, os.W_OK | os.X_OK):
        return f"folder {probe} is not writable"
    return None


def make_folders(folder: str | os.PathLike[str]) -> list[Path]:
    """``mkdir -p folder``; returns the folders it created, outermost first (for
    :func:`remove_empty_folders` when the work they were made for fails)."""
    target = Path(folder)
    missing = [p for p in (target, *target.parents) if not p.exists()][::-1]
    for path in missing:
        path.mkdir(exist_ok=True)
    return missing


def remove_empty_folders(folders: list[Path]) -> None:
    """Remove those of ``folders`` (as :func:`make_folders` returns them) that are still empty,
    innermost first; folders that received anything are kept."""
    for path in reversed(folders):
        try:
            path.rmdir()
        except OSError:
            pass


def folder_mode() -> int:
    """Permission bits of a new folder under the current umask (``mkdtemp`` would give 0700)."""
    return 0o777 & ~_current_umask()


def atomic_write_bytes(path: str | os.PathLike[str], data: bytes | Callable[[Path], None]) -> Path:
    """Write ``data`` (bytes, or a callable that writes the given temp path) atomically to ``path``.

    Raises ``OSError`` naming the path when the folder is missing or not writable (an error about
    the temporary file is raised again naming ``path``, same type and ``errno``); on any error, an
    interrupt included, the temporary file is removed and an existing file at ``path`` is untouched.
    A symlink at ``path`` is replaced by the new file: the file it pointed to is left as it was.
    """
    target = Path(path)
    folder = target.parent if str(target.parent) else Path(".")
    if not folder.is_dir():
        raise OSError(f"cannot write {target}: folder {folder} does not exist")
    remove_stale_temps(target)
    try:
        fd, tmp_name = tempfile.mkstemp(prefix=temp_prefix(target), suffix=".tmp", dir=folder)
    except OSError as exc:  # a read-only or full file system, no permission: name the file asked for
        if exc.errno is not None and type(exc).__module__ == "builtins":
            raise type(exc)(exc.errno, exc.strerror or str(exc), str(target)) from exc
        raise
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
    except OSError as exc:
        tmp.unlink(missing_ok=True)
        if _about_the_temp_file(exc, tmp):  # name what was being written, not the temporary file
            raise type(exc)(exc.errno, exc.strerror or str(exc), str(target)) from exc
        raise
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    return target


def _about_the_temp_file(exc: OSError, tmp: Path) -> bool:
    """True for a built-in ``OSError`` with an errno about the temporary file (or about no file:
    a failed ``write``), which is raised again naming the target."""
    return exc.errno is not None and type(exc).__module__ == "builtins" and exc.filename in (None, str(tmp))


def atomic_save_safetensors(
    tensors: Mapping[str, torch.Tensor], path: str | os.PathLike[str], metadata: Mapping[str, str] | None = None
) -> Path:
    """Save ``tensors`` as safetensors at ``path`` atomically; metadata values must be strings."""
    meta = {str(k): str(v) for k, v in (metadata or {}).items()}
    contiguous = {name: t.detach().contiguous().cpu() for name, t in tensors.items()}
    return atomic_write_bytes(path, _safetensors_bytes(contiguous, metadata=meta))


def atomic_write_json(obj: Any, path: str | os.PathLike[str]) -> Path:
    """JSON-dump ``obj`` (indented, sorted keys) to ``path`` atomically, as strict JSON (NaN/inf
    floats become ``null``; Python's ``NaN``/``Infinity`` tokens are not JSON)."""
    text = json.dumps(finite_or_none(obj), indent=2, sort_keys=True, default=str, allow_nan=False)
    return atomic_write_bytes(path, (text + "\n").encode())


def finite_or_none(value: Any) -> Any:
    """``value`` with every NaN/inf float (in dicts and lists too) replaced by None: strict JSON."""
    import math

    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, Mapping):
        return {k: finite_or_none(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [finite_or_none(v) for v in value]
    return value


def strict_json_line(row: Mapping[str, Any]) -> str:
    """One JSON line (sorted keys) that any JSON parser reads: NaN/inf become ``null``."""
    return json.dumps(finite_or_none(row), sort_keys=True, allow_nan=False, default=str)


def truncate_jsonl(path: str | os.PathLike[str], keep: Callable[[dict[str, Any]], bool], what: str = "metrics file") -> int:
    """Keep the lines of the JSON-lines file ``path`` for which ``keep(row)`` is true, rewriting it
    atomically (a failure leaves the old file whole). A torn last line (a run killed mid-append, cut
    even inside a UTF-8 character) is dropped with a warning on the ``treesdk`` logger, its bytes kept
    in ``PATH.torn`` (appended), so nothing is lost; any other unreadable line is a ``UserError``
    naming the file and line. Returns the number of lines kept."""
    import logging

    from .errors import UserError
    from .safe_load import load_json

    target = Path(path)
    raw_lines = target.read_bytes().splitlines()
    kept = []
    for number, raw in enumerate(raw_lines, 1):
        if not raw.strip():
            continue
        try:
            line = raw.decode("utf-8", errors="strict")
            row = load_json(line, f"{what} {target} line {number}")
        except (UserError, UnicodeDecodeError) as exc:
            if number == len(raw_lines):  # torn by a kill during the last append: not data
                torn = target.with_name(target.name + ".torn")
                with open(torn, "ab") as f:
                    f.write(raw + b"\n")
                logging.getLogger("treesdk").warning(
                    "%s %s: its last line (%d) is incomplete (%d bytes, a run stopped mid-write); dropped it and "
                    "kept its bytes in %s", what, target, number, len(raw), torn)
                continue
            if isinstance(exc, UnicodeDecodeError):
                raise UserError(f"{what} {target} line {number}: not UTF-8 text ({exc.reason} at byte {exc.start})") from None
            raise
        if not isinstance(row, dict):
            raise UserError(f"{what} {target} line {number}: expected a JSON object, got {type(row).__name__}")
        if keep(row):
            kept.append(strict_json_line(row))
    atomic_write_bytes(target, "".join(line + "\n" for line in kept).encode())
    return len(kept)
