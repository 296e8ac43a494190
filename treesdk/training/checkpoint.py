"""Checkpoints: trainable weights and optimiser state as safetensors, the rest as JSON.

Layout of ``RUN/checkpoints/iter_000012/``::

    trainable.safetensors   backend.trainable_state_dict()
    optimizer.safetensors   every tensor of optimizer.state_dict()["state"] as "state.<param>.<name>"
    state.json              {"iteration": 12, "param_groups": [...], "recipe": {...}, ...}

A checkpoint folder is written under a temporary name, fsynced, then renamed: a run killed while
writing leaves the previous checkpoint intact and no half-written folder under a final name.
"""

from __future__ import annotations

import json
import os
import re
import shutil
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file

from treesdk.io import atomic_save_safetensors, atomic_write_json

_NAME = re.compile(r"^iter_(\d{6,})$")


@dataclass(frozen=True)
class StateDictDiff:
    """How a state dict differs from the one a module expects (empty = loads strictly)."""

    missing: list[str]  # expected keys absent from the state, sorted
    unexpected: list[str]  # state keys the module does not have, sorted
    wrong_shape: list[str]  # shared keys whose shapes differ, in the expected dict's order

    def __bool__(self) -> bool:
        return bool(self.missing or self.unexpected or self.wrong_shape)


def diff_state_dicts(expected: Mapping[str, torch.Tensor], state: Mapping[str, torch.Tensor]) -> StateDictDiff:
    """Compare ``state`` with ``expected`` by keys and shapes; callers word the error for their format."""
    return StateDictDiff(
        missing=sorted(set(expected) - set(state)),
        unexpected=sorted(set(state) - set(expected)),
        wrong_shape=[k for k, v in expected.items() if k in state and tuple(state[k].shape) != tuple(v.shape)],
    )


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
    """The checkpoint folder itself, or the newest complete checkpoint of a run folder."""
    path = Path(run_or_checkpoint)
    if (path / "state.json").is_file() and (path / "trainable.safetensors").is_file():
        return path
    found = list_checkpoints(path)
    if not found:
        raise FileNotFoundError(
            f"no checkpoint in {path}: expected {path}/checkpoints/iter_NNNNNN/ with trainable.safetensors and state.json"
        )
    return found[-1]


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


def save_checkpoint(
    run_dir: str | Path,
    iteration: int,
    trainable: dict[str, torch.Tensor],
    optimizer: torch.optim.Optimizer | Mapping[str, Any],
    state: dict[str, Any],
    keep: int = 3,
) -> Path:
    """Write checkpoint ``iteration`` atomically and keep only the newest ``keep``.

    ``optimizer`` is the optimiser or its (full, unsharded) ``state_dict()``, e.g. one gathered
    under FSDP by :meth:`treesdk.training.distributed.FullyShardedTraining.full_optimizer_state`."""
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
        atomic_save_safetensors(tensors, tmp / "optimizer.safetensors", {"iteration": str(iteration)})
        atomic_write_json({**state, "iteration": iteration, "param_groups": groups}, tmp / "state.json")
        _fsync_tree(tmp)
        if final.exists():
            shutil.rmtree(final)
        os.replace(tmp, final)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    for old in list_checkpoints(run_dir)[:-keep] if keep > 0 else []:
        shutil.rmtree(old, ignore_errors=True)
    return final


def load_checkpoint(path: str | Path) -> tuple[dict[str, torch.Tensor], dict[str, Any], dict[str, Any]]:
    """``(trainable weights, optimizer state_dict, state.json)`` of a checkpoint or run folder."""
    folder = latest_checkpoint(path)
    trainable = load_file(str(folder / "trainable.safetensors"))
    state = json.loads((folder / "state.json").read_text())
    optim_state: dict[str, Any] = {"state": {}, "param_groups": state.get("param_groups", [])}
    optim_file = folder / "optimizer.safetensors"
    if optim_file.is_file():
        for key, value in load_file(str(optim_file)).items():
            if key.startswith("rng."):
                state.setdefault("rng", {})[key] = value
                continue
            _, param_id, name = key.split(".", 2)
            optim_state["state"].setdefault(int(param_id), {})[name] = value
    return trainable, optim_state, state
