"""Checkpoints: trainable weights and optimiser state as safetensors, the rest as JSON.

Layout of ``RUN/checkpoints/iter_000012/``::

    trainable.safetensors   backend.trainable_state_dict()
    optimizer.safetensors   every tensor of optimizer.state_dict()["state"] as "state.<param>.<name>",
                            the RNG states ("rng.*") and extra tensors such as the EMA ("ema.*")
    state.json              {"iteration": 12, "param_groups": [...], "recipe": {...}, ...}

A checkpoint folder is written under a temporary name, fsynced, then renamed: a run killed while
writing leaves the previous checkpoint intact and no half-written folder under a final name.

``state.json`` also records the size and SHA-256 of each safetensors file (``"files"``). Every
reader verifies them (:func:`verify_checkpoint`): a checkpoint truncated or altered afterwards (a
full disk, a bad copy) is named with the file at fault, and a run folder falls back to its newest
intact checkpoint with a warning. Checkpoints written before the checksums existed (the first
release) are checked for structure (the safetensors header must account for every byte of the
file) and used with a warning that their contents could not be verified.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import re
import shutil
import struct
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file

from treesdk.errors import CheckpointError, NonFiniteWeightsError
from treesdk.diskspace import is_disk_full
from treesdk.io import atomic_save_safetensors, atomic_write_json
from treesdk.state_dicts import StateDictDiff, diff_state_dicts  # noqa: F401 - re-exported

_NAME = re.compile(r"^iter_(\d{6,})$")
_log = logging.getLogger("treesdk")
_VERIFIED: set[tuple[tuple[str, int, int], ...]] = set()  # (path, size, mtime_ns) of each file of verified checkpoints


def checkpoint_dir(run_dir: str | Path, iteration: int) -> Path:
    return Path(run_dir) / "checkpoints" / f"iter_{iteration:06d}"


def list_checkpoints(run_dir: str | Path) -> list[Path]:
    """Complete checkpoints of a run, oldest first."""
    root = Path(run_dir) / "checkpoints"
    if not root.is_dir():
        return []
    found = [p for p in root.iterdir() if p.is_dir() and _NAME.match(p.name) and (p / "state.json").is_file()]
    return sorted(found, key=lambda p: int(_NAME.match(p.name).group(1)))  # type: ignore[union-attr]


def latest_checkpoint(run_or_checkpoint: str | Path) -> Path:
    """The checkpoint folder itself (verified), or the newest intact checkpoint of a run folder.

    A damaged newest checkpoint of a run folder is skipped with a warning naming the file at
    fault; :class:`~treesdk.errors.CheckpointError` when no checkpoint is intact, or when the
    checkpoint folder named directly is damaged.
    """
    path = Path(run_or_checkpoint)
    if (path / "state.json").is_file() and (path / "trainable.safetensors").is_file():
        verify_checkpoint(path)
        return path
    found = list_checkpoints(path)
    if not found:
        raise FileNotFoundError(
            f"no checkpoint in {path}: expected {path}/checkpoints/iter_NNNNNN/ with trainable.safetensors and state.json"
        )
    problems = []
    for folder in reversed(found):
        try:
            verify_checkpoint(folder)
        except CheckpointError as exc:
            problems.append(str(exc))
            continue
        for problem in problems:
            _log.warning("warning: %s; using the newest intact checkpoint %s instead", problem, folder)
        return folder
    raise CheckpointError(f"no intact checkpoint in {path}: " + "; ".join(problems))


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 24), b""):
            digest.update(block)
    return digest.hexdigest()


def file_record(path: Path) -> dict[str, Any]:
    """``{"bytes": size, "sha256": hex digest}`` of ``path`` (stored in ``state.json["files"]``)."""
    return {"bytes": path.stat().st_size, "sha256": _sha256(path)}


def _check_safetensors_structure(path: Path) -> str | None:
    """Why ``path`` is not a complete safetensors file (None when its header accounts for every byte)."""
    size = path.stat().st_size
    with open(path, "rb") as handle:
        head = handle.read(8)
        if len(head) < 8:
            return f"{path} is truncated ({size} bytes, not even a safetensors header)"
        (header_len,) = struct.unpack("<Q", head)
        if header_len > size - 8:
            return f"{path} is truncated ({size} bytes; its header alone needs {header_len + 8})"
        try:
            header = json.loads(handle.read(header_len))
        except ValueError:
            return f"{path} is not a safetensors file (its header is not JSON)"
    ends = [entry["data_offsets"][1] for key, entry in header.items() if key != "__metadata__"]
    expected = 8 + header_len + max(ends, default=0)
    if size != expected:
        return f"{path} is {size} bytes, its header describes {expected} (truncated or altered)"
    return None


def verify_checkpoint(folder: str | Path) -> None:
    """Raise :class:`CheckpointError` naming the file when checkpoint ``folder`` is damaged:
    ``state.json`` unreadable, a file missing, a size or SHA-256 that differs from the record in
    ``state.json`` (or, for checkpoints without the record, a safetensors file whose header does
    not account for its bytes). Results are cached while the files are unchanged."""
    from treesdk.safe_load import read_json_file

    folder = Path(folder)
    state_file = folder / "state.json"
    try:
        key = tuple((str(f.resolve()), f.stat().st_size, f.stat().st_mtime_ns) for f in sorted(folder.iterdir()) if f.is_file())
        if key in _VERIFIED:
            return
        state = read_json_file(state_file, "checkpoint state")
    except (OSError, ValueError) as exc:
        raise CheckpointError(f"checkpoint {folder} is damaged: {exc}") from None
    if not isinstance(state, dict) or not isinstance(state.get("iteration"), int):
        raise CheckpointError(f"checkpoint {folder} is damaged: {state_file} has no integer 'iteration'")
    records = state.get("files")
    names = sorted(records) if isinstance(records, dict) else ["trainable.safetensors"] + (
        ["optimizer.safetensors"] if (folder / "optimizer.safetensors").exists() else [])
    for name in names:
        file = folder / name
        if not file.is_file():
            raise CheckpointError(f"checkpoint {folder} is damaged: {file} is missing")
        if isinstance(records, dict):
            record = records[name] if isinstance(records[name], dict) else {}
            size = file.stat().st_size
            if size != record.get("bytes"):
                raise CheckpointError(f"checkpoint {folder} is damaged: {file} is {size} bytes, state.json records "
                                      f"{record.get('bytes')} (truncated or altered)")
            if _sha256(file) != record.get("sha256"):
                raise CheckpointError(f"checkpoint {folder} is damaged: the SHA-256 of {file} differs from the one "
                                      "in state.json (altered after it was written)")
        else:
            problem = _check_safetensors_structure(file)
            if problem:
                raise CheckpointError(f"checkpoint {folder} is damaged: {problem}")
    if not isinstance(records, dict):
        from treesdk.training.legacy import warn_unverified

        warn_unverified(folder)  # a first-release checkpoint: complete, contents unverifiable
    _VERIFIED.add(key)


def check_finite(tensors: Mapping[str, torch.Tensor], where: str | Path) -> None:
    """Raise :class:`NonFiniteWeightsError` when a floating tensor holds NaN or infinity, naming
    ``where`` (a file), the first bad tensor and how many bad tensors there are."""
    bad = [name for name, t in tensors.items() if t.is_floating_point() and not bool(torch.isfinite(t).all())]
    if bad:
        raise NonFiniteWeightsError(
            f"{where} holds non-finite weights (NaN or inf) in {len(bad)} of {len(tensors)} tensors, first {bad[0]!r}: "
            "the run diverged or the file was damaged; use an earlier checkpoint (RUN/checkpoints/iter_NNNNNN)"
        )


def load_trainable(folder: str | Path) -> dict[str, torch.Tensor]:
    """The trainable weights of checkpoint ``folder`` (a run folder: its newest intact checkpoint),
    verified (:func:`verify_checkpoint`) and finite (:func:`check_finite`)."""
    folder = latest_checkpoint(folder)
    file = folder / "trainable.safetensors"
    trainable = load_file(str(file))
    check_finite(trainable, file)
    return trainable


def read_state(folder: str | Path) -> dict[str, Any]:
    """``state.json`` of checkpoint ``folder`` (verified as :func:`latest_checkpoint` does)."""
    from treesdk.safe_load import read_json_file

    return read_json_file(latest_checkpoint(folder) / "state.json", "checkpoint state")


def _optimizer_tensors(optimizer: torch.optim.Optimizer | Mapping[str, Any]) -> tuple[dict[str, torch.Tensor], list[dict[str, Any]]]:
    state = optimizer if isinstance(optimizer, Mapping) else optimizer.state_dict()
    tensors: dict[str, torch.Tensor] = {}
    for param_id, entries in state["state"].items():
        for name, value in entries.items():
            tensor = value if isinstance(value, torch.Tensor) else torch.tensor(value)
            tensors[f"state.{param_id}.{name}"] = tensor
    return tensors, state["param_groups"]


def rng_state_tensors() -> dict[str, torch.Tensor]:
    """The global torch RNG states (CPU and every CUDA device) as uint8 tensors ``rng.*``.

    treesdk's own randomness (prompt order, windows, tree noise) is a pure function of
    ``(seed, iteration, slot)`` and needs no state; these cover backends that draw from the global
    generators (dropout, say), so a resumed run continues their streams too.
    """
    out = {"rng.cpu": torch.get_rng_state()}
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        for i, st in enumerate(torch.cuda.get_rng_state_all()):
            out[f"rng.cuda.{i}"] = st
    return out


def restore_rng_state(tensors: dict[str, torch.Tensor]) -> None:
    """Inverse of :func:`rng_state_tensors` (CUDA states only where those devices exist)."""
    if "rng.cpu" in tensors:
        torch.set_rng_state(tensors["rng.cpu"])
    if torch.cuda.is_available():
        for i in range(torch.cuda.device_count()):
            if f"rng.cuda.{i}" in tensors:
                torch.cuda.set_rng_state(tensors[f"rng.cuda.{i}"], i)


def _fsync_tree(folder: Path) -> None:
    for path in folder.iterdir():
        with open(path, "rb") as handle:
            os.fsync(handle.fileno())


def _full(exc: OSError, tmp: Path, final: Path, trainable: Mapping[str, torch.Tensor],
          optimizer: torch.optim.Optimizer | Mapping[str, Any], extra: Mapping[str, torch.Tensor] | None) -> Exception:
    """The disk-full error of a checkpoint write: the file, the bytes of its tensors, what is free,
    and the newest checkpoint that is still intact (the failed one was removed)."""
    from treesdk.diskspace import disk_full_error

    tensors = [*trainable.values(), *_optimizer_tensors(optimizer)[0].values(), *(extra or {}).values()]
    needed = sum(t.numel() * t.element_size() for t in tensors)
    where = final / Path(exc.filename).name if exc.filename else final  # the name it would have had
    kept = list_checkpoints(final.parent.parent)
    after = (f"the previous checkpoint {kept[-1].name} is intact (--resume continues from it)" if kept
             else "no checkpoint was written")
    return disk_full_error(exc, where, needed, f"checkpoint {final.name} was not written, {after}")


def save_checkpoint(
    run_dir: str | Path,
    iteration: int,
    trainable: dict[str, torch.Tensor],
    optimizer: torch.optim.Optimizer | Mapping[str, Any],
    state: dict[str, Any],
    keep: int = 3,
    extra: Mapping[str, torch.Tensor] | None = None,
) -> Path:
    """Write checkpoint ``iteration`` atomically and keep only the newest ``keep``.

    ``optimizer`` is the optimiser or its (full, unsharded) ``state_dict()``, e.g. one gathered
    under FSDP by :meth:`treesdk.training.parallel.distributed.FullyShardedTraining.full_optimizer_state`. ``extra``
    tensors (e.g. the EMA's ``ema.*``) are stored beside the optimiser state and come back in
    ``state["extra"]`` from :func:`load_checkpoint`."""
    final = checkpoint_dir(run_dir, iteration)
    final.parent.mkdir(parents=True, exist_ok=True)
    for stale in final.parent.glob(".tmp-iter_*"):  # left by a writer killed mid-checkpoint
        shutil.rmtree(stale, ignore_errors=True)
    tmp = final.parent / f".tmp-{final.name}-{os.getpid()}"
    tmp.mkdir()
    try:
        atomic_save_safetensors(trainable, tmp / "trainable.safetensors", {"iteration": str(iteration)})
        tensors, groups = _optimizer_tensors(optimizer)
        tensors.update(rng_state_tensors())
        tensors.update({k: v.detach().cpu().contiguous() for k, v in (extra or {}).items()})
        atomic_save_safetensors(tensors, tmp / "optimizer.safetensors", {"iteration": str(iteration)})
        files = {name: file_record(tmp / name) for name in ("trainable.safetensors", "optimizer.safetensors")}
        atomic_write_json({**state, "iteration": iteration, "param_groups": groups, "files": files}, tmp / "state.json")
        _fsync_tree(tmp)
        if final.exists():
            shutil.rmtree(final)
        os.replace(tmp, final)
    except OSError as exc:
        shutil.rmtree(tmp, ignore_errors=True)
        if not is_disk_full(exc):
            raise
        raise _full(exc, tmp, final, trainable, optimizer, extra) from exc
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    for old in list_checkpoints(run_dir)[:-keep] if keep > 0 else []:
        shutil.rmtree(old, ignore_errors=True)
    return final


def load_checkpoint(path: str | Path) -> tuple[dict[str, torch.Tensor], dict[str, Any], dict[str, Any]]:
    """``(trainable weights, optimizer state_dict, state.json)`` of a checkpoint or run folder."""
    folder = latest_checkpoint(path)
    trainable = load_trainable(folder)
    state = read_state(folder)
    state.pop("files", None)
    optim_state: dict[str, Any] = {"state": {}, "param_groups": state.get("param_groups", [])}
    optim_file = folder / "optimizer.safetensors"
    if optim_file.is_file():
        for key, value in load_file(str(optim_file)).items():
            if key.startswith("rng."):
                state.setdefault("rng", {})[key] = value
                continue
            if not key.startswith("state."):
                state.setdefault("extra", {})[key] = value
                continue
            _, param_id, name = key.split(".", 2)
            optim_state["state"].setdefault(int(param_id), {})[name] = value
    return trainable, optim_state, state
