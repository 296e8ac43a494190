"""Image grids for people to look at (PNG, nearest-neighbour upscaling for tiny images)."""

from __future__ import annotations

import math
from pathlib import Path

import torch
from torch import Tensor


def save_grid(images: Tensor, path: str | Path, nrow: int | None = None, min_size: int = 64) -> Path:
    """Save ``[B, 3, H, W]`` images in ``[0, 1]`` as one PNG grid; tiles smaller than ``min_size``
    pixels are upscaled by an integer factor (nearest) so 8x8 digits stay visible."""
    from PIL import Image

    from .io import atomic_write_bytes

    if images.ndim != 4 or images.shape[1] not in (1, 3):
        raise ValueError(f"expected images [B, 3, H, W], got {tuple(images.shape)}")
    images = images.detach().float().clamp(0, 1).cpu()
    if images.shape[1] == 1:
        images = images.repeat(1, 3, 1, 1)
    b, _, h, w = images.shape
    scale = max(1, math.ceil(min_size / max(h, w)))
    if scale > 1:
        images = torch.nn.functional.interpolate(images, scale_factor=scale, mode="nearest")
        h, w = h * scale, w * scale
    nrow = nrow or math.ceil(math.sqrt(b))
    rows = math.ceil(b / nrow)
    pad = max(2, h // 16)
    canvas = torch.ones(3, rows * (h + pad) + pad, nrow * (w + pad) + pad)
    for i in range(b):
        r, c = divmod(i, nrow)
        canvas[:, pad + r * (h + pad) : pad + r * (h + pad) + h, pad + c * (w + pad) : pad + c * (w + pad) + w] = images[i]
    array = (canvas.permute(1, 2, 0).numpy() * 255).round().astype("uint8")
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    atomic_write_bytes(path, lambda tmp: Image.fromarray(array).save(tmp, format="PNG"))
    return path
