"""State-dict tools for backends, rewards and exports: compare weights by keys and shapes, read
safetensors headers without loading tensors, find non-finite tensors.

* :func:`diff_state_dicts` compares two state dicts (tensors) by keys and shapes
  (:class:`StateDictDiff`); a backend words the error for its own format.
* :func:`compare_shapes` does the same for ``{key: shape}`` maps read from file headers.
* :func:`read_header` reads the shapes and metadata of a safetensors file or folder;
  :func:`safetensors_files` lists the files that make up a file, a model folder or a pipeline
  folder; :func:`safetensors_elements` counts the elements of a folder's files.
* :func:`nonfinite_tensors` names floating tensors holding NaN or infinity.
"""

from __future__ import annotations

import json
import os
import struct
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

import torch
from safetensors import safe_open

__all__ = ["Shapes", "StateDictDiff", "compare_shapes", "diff_state_dicts", "nonfinite_tensors", "read_header",
           "safetensors_elements", "safetensors_files"]

#: tensor shapes by key, as read from a safetensors header
Shapes = dict[str, tuple[int, ...]]


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




def safetensors_files(path: Path) -> list[Path]:
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
    files = safetensors_files(p)
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
    for file in safetensors_files(Path(path)):
        with safe_open(str(file), framework="pt") as handle:
            for key in handle.keys():
                tensor = handle.get_tensor(key)
                if tensor.is_floating_point() and not bool(torch.isfinite(tensor).all()):
                    bad.append(key)
    lines = [f"{k}: holds NaN or inf values (a diverged run or a damaged file)" for k in bad[:limit]]
    if len(bad) > limit:
        lines.append(f"... and {len(bad) - limit} more tensors with NaN or inf values")
    return lines


def safetensors_elements(folder: str | os.PathLike[str]) -> int:
    """Elements of every tensor in ``folder/*.safetensors``, read from the files' JSON headers only."""
    total = 0
    for path in sorted(Path(folder).glob("*.safetensors")):
        with open(path, "rb") as handle:
            (size,) = struct.unpack("<Q", handle.read(8))
            header = json.loads(handle.read(size))
        for key, info in header.items():
            if key != "__metadata__":
                count = 1
                for dim in info["shape"]:
                    count *= int(dim)
                total += count
    return total
