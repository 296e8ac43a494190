"""Run folders are owned by one run: safe default names, no reuse, no silent change on resume.

* A new run writes into a folder that does not exist or is empty; a folder holding anything else
  is refused (:func:`check_out_dir`) unless ``--resume`` continues the run that is in it; a folder
  a live run holds (its :class:`RunLock`) is refused first, naming that run's pid.
* ``--resume`` continues only the same configuration: :func:`config_changes` lists every field
  that differs from the stored ``config.json``; fields in :data:`HARMLESS_ON_RESUME` (how long to
  run, how often to checkpoint, ...) may change, any other change is refused.
* Default folders are ``runs/<name>-<YYYYmmdd-HHMMSS>``. The name comes from the recipe (its ``name:`` field) or the preset; it is reduced to letters,
digits, ``.``, ``_`` and ``-`` so that a recipe naming itself ``../../x`` or ``/abs/path`` still
writes inside ``runs/``. Two runs started in the same second get ``...-2``, ``...-3``: the folder
is created with ``mkdir`` (which fails when it exists), so the claim is atomic.
"""

from __future__ import annotations

import re
import time
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

from treesdk.errors import UserError

#: the lock file of a live run inside its folder (see :class:`RunLock`)
LOCK_NAME = ".treesdk-run.lock"
#: longest run name kept (characters), before the time stamp
MAX_NAME = 80


def sanitize_run_name(name: str) -> str:
    """``name`` with every run of characters outside ``[A-Za-z0-9._-]`` replaced by ``-`` and
    leading/trailing dots and dashes removed (so no ``..``, no path separator); ``run`` if empty."""
    cleaned = re.sub(r"[^A-Za-z0-9._-]+", "-", str(name)).strip(".-")
    cleaned = re.sub(r"\.{2,}", ".", cleaned)[:MAX_NAME].strip(".-")
    return cleaned or "run"


def default_run_dir(name: str, root: str | Path = "runs", stamp: str | None = None) -> Path:
    """The first free ``root/<safe name>-<stamp>[-N]`` (not created; see :func:`claim_run_dir`)."""
    base = f"{sanitize_run_name(name)}-{stamp or time.strftime('%Y%m%d-%H%M%S')}"
    candidate = Path(root) / base
    n = 2
    while candidate.exists():
        candidate = Path(root) / f"{base}-{n}"
        n += 1
    return candidate


def claim_run_dir(name: str, root: str | Path = "runs", stamp: str | None = None) -> Path:
    """Create and return a new, empty ``root/<safe name>-<stamp>[-N]`` folder; a folder another
    run created in the meantime is never reused."""
    base = default_run_dir(name, root, stamp)
    Path(root).mkdir(parents=True, exist_ok=True)
    candidate, n = base, 2
    while True:
        try:
            candidate.mkdir()
            return candidate
        except FileExistsError:
            candidate = base.with_name(f"{base.name}-{n}")
            n += 1


def check_out_dir(out: str | Path, resume: bool, restarted: bool = False) -> None:
    """Refuse to start a new run in a folder that holds something (``resume`` False), or to resume
    from a folder that holds no run. ``restarted``: a torchrun restart of this very run (its
    workers find their own folder), which is never refused."""
    folder = Path(out)
    if folder.exists() and not folder.is_dir():
        raise UserError(f"--out {folder}: is a file, not a run folder")
    if not restarted:
        refuse_live_run(folder)
    if resume:
        from treesdk.training.run_folder.checkpoint import list_checkpoints

        if not (folder / "config.json").is_file():
            raise UserError(f"--resume: {folder} holds no run to continue (no config.json); drop --resume to start one there")
        if not list_checkpoints(folder):
            raise UserError(f"--resume: {folder} has no checkpoint (its run stopped before the first one): start the run "
                            "again in a new folder (or delete this one)")
        return
    if restarted or not folder.is_dir():
        return
    held = sorted(p.name + ("/" if p.is_dir() else "") for p in folder.iterdir() if p.name != LOCK_NAME)
    if held:
        shown = ", ".join(held[:5]) + (" ..." if len(held) > 5 else "")
        raise UserError(f"--out {folder} is not empty (it holds {shown}): pass --resume to continue the run in it, "
                        "or name a new folder; treesdk never mixes two runs in one folder")


#: configuration fields (dotted paths of config.json, a RunConfig) that may change when a run is
#: resumed: they say how long to run, where, what to write and what to evaluate, not how to train
HARMLESS_ON_RESUME = (
    "iters", "checkpoint", "export", "launch", "logging", "device", "backend.options.device",
    "backend.describe", "eval_rewards",
)


def _flatten(value: Any, prefix: str = "") -> dict[str, Any]:
    if isinstance(value, Mapping):
        out: dict[str, Any] = {}
        for key, item in value.items():
            out.update(_flatten(item, f"{prefix}{key}."))
        return out or {prefix.rstrip("."): {}}
    return {prefix.rstrip("."): value}


def config_changes(stored: Mapping[str, Any], new: Mapping[str, Any],
                   harmless: Iterable[str] = HARMLESS_ON_RESUME) -> list[str]:
    """``"field: stored -> new"`` for every dotted field that differs, leaving out ``harmless``
    fields and their sub-fields. Lists compare as values (``[1, 2]`` vs ``(1, 2)`` are equal)."""
    from treesdk.safe_load import excerpt

    allowed = tuple(harmless)

    def ignored(key: str) -> bool:
        return any(key == h or key.startswith(h + ".") for h in allowed)

    old, now = _flatten(stored), _flatten(new)
    changes = []
    for key in sorted(set(old) | set(now)):
        if ignored(key):
            continue
        a, b = old.get(key, "(unset)"), now.get(key, "(unset)")
        if isinstance(a, tuple):
            a = list(a)
        if isinstance(b, tuple):
            b = list(b)
        if a != b:
            changes.append(f"{key}: {excerpt(a, 60)} -> {excerpt(b, 60)}")
    return changes


def refuse_changed_config(run_dir: str | Path, stored: Mapping[str, Any], new: Mapping[str, Any],
                          also_harmless: Iterable[str] = ()) -> None:
    """``UserError`` listing the changed fields when ``--resume`` would continue ``run_dir`` with
    another configuration than the one it was started with (``also_harmless``: fields the stored
    configuration could not record, e.g. a first-release run's prompts)."""
    changes = config_changes(stored, new, (*HARMLESS_ON_RESUME, *also_harmless))
    if changes:
        shown = "; ".join(changes[:6]) + (f"; and {len(changes) - 6} more" if len(changes) > 6 else "")
        raise UserError(
            f"--resume {run_dir}: the configuration differs from the run's config.json ({shown}). A resumed run "
            "continues the same training; only --iters, checkpointing, export, evaluation rewards and where it runs "
            "may change. Pass --allow-config-change to train on differently, or start a new run (another --out)"
        )



def live_owner(run_dir: str | Path) -> list[str] | None:
    """``[pid, host]`` of the live run holding ``run_dir``'s lock, None when there is no lock or
    its process is gone (a lock of another host counts as live: its process cannot be checked).
    A lock just created and not yet written reads as ``["?"]``."""
    import socket

    from treesdk.io import process_alive

    try:
        owner = (Path(run_dir) / LOCK_NAME).read_text(errors="replace").split()
    except (FileNotFoundError, NotADirectoryError):
        return None
    pid = int(owner[0]) if owner and owner[0].isdigit() else -1
    same_host = len(owner) > 1 and owner[1] == socket.gethostname()
    if same_host and pid > 0 and not process_alive(pid):
        return None
    return owner[:2] or ["?"]


def _held_message(run_dir: Path, owner: list[str]) -> str:
    lock = run_dir / LOCK_NAME
    return (f"--out {run_dir}: another treesdk run (pid {' on '.join(owner)}) is using this folder; wait for it "
            f"to end, or stop it (kill -INT {owner[0]}: it checkpoints and exits), or delete {lock} if that run is gone")


def refuse_live_run(run_dir: str | Path) -> None:
    """``UserError`` naming the pid (and host) of the live run that holds ``run_dir``, if any: a
    second ``train`` on a folder in use is refused before anything is read, loaded or written,
    whether it would start a new run or ``--resume``. The lock of this very process (a trainer
    checking the folder it has just locked) is not another run."""
    import os
    import socket

    owner = live_owner(run_dir)
    if owner is not None and owner != [str(os.getpid()), socket.gethostname()]:  # not this process's own lock
        raise UserError(_held_message(Path(run_dir), owner))


class RunLock:
    """``RUN/.treesdk-run.lock`` (holding the owner's pid and host), created with ``O_EXCL``: a
    second ``treesdk train`` (a new run or a ``--resume``) on the same folder while the first is
    alive is refused; a lock left by a process that no longer exists on this host is taken over."""

    def __init__(self, run_dir: str | Path) -> None:
        self.path = Path(run_dir) / LOCK_NAME
        self.held = False

    def acquire(self) -> RunLock:
        import os
        import socket

        self.path.parent.mkdir(parents=True, exist_ok=True)
        me = f"{os.getpid()} {socket.gethostname()}\n"
        for _ in range(2):
            try:
                fd = os.open(self.path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
            except FileExistsError:
                owner = live_owner(self.path.parent)
                if owner is None:
                    self.path.unlink(missing_ok=True)  # left by a killed run
                    continue
                raise UserError(_held_message(self.path.parent, owner)) from None
            with os.fdopen(fd, "w") as handle:
                handle.write(me)
            self.held = True
            return self
        raise UserError(f"--out {self.path.parent}: could not take {self.path}")  # pragma: no cover

    def release(self) -> None:
        if self.held:
            self.path.unlink(missing_ok=True)
            self.held = False

    def __enter__(self) -> RunLock:
        return self.acquire()

    def __exit__(self, *exc: object) -> None:
        self.release()
