"""Variable-length prompt features kept at a fixed length: rows padded to ``length`` with a mask.

Several pipelines hand their transformer prompt features of the batch's own length (Qwen-Image
pads to the longest prompt, Z-Image passes a list of unpadded tensors). The backend caches one row
per prompt and batches the negative prompt beside the positive ones, so rows must have one fixed
length: :func:`pad_rows` pads every row to ``length`` (zeros) and returns the mask; the adapter's
``forward`` trims the batch back to its longest valid row (:func:`trim`), so the transformer sees
what the pipeline gives it and the padding costs memory, not compute.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor

__all__ = ["pad_rows", "trim"]


def pad_rows(rows: Sequence[Tensor], length: int) -> tuple[Tensor, Tensor]:
    """``rows`` (each ``[L_i, D]``, ``L_i <= length``) -> ``([n, length, D]``, bool mask ``[n, length])``."""
    first = rows[0]
    out = first.new_zeros(len(rows), length, first.shape[-1])
    mask = torch.zeros(len(rows), length, dtype=torch.bool, device=first.device)
    for i, row in enumerate(rows):
        n = min(int(row.shape[0]), length)
        out[i, :n] = row[:n]
        mask[i, :n] = True
    return out, mask


def trim(embeds: Tensor, mask: Tensor) -> tuple[Tensor, Tensor]:
    """Drop the padding columns no row of the batch uses (``[B, L, D]``, ``[B, L]`` -> ``L' <= L``)."""
    length = max(int(mask.sum(dim=1).max()), 1)
    return embeds[:, :length], mask[:, :length]
