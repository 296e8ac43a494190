"""Image grids for looking at samples: ``save_image_grid`` writes an upscaled PNG."""

from __future__ import annotations

import io
import math
import os

import torch
from torch import Tensor

__all__ = ["make_image_grid", "save_image_grid"]


def make_image_grid(images: Tensor, nrow: int, scale: int = 8, padding: int = 1) -> Tensor:
    """Tile ``images`` into one uint8 image ``[H', W', 3]``.

    Args:
        images: float ``[B, C, H, W]`` in ``[0, 1]`` (values outside are clipped), ``C`` 1 or 3.
        nrow: images per row of the grid.
        scale: integer nearest-neighbour upscaling factor applied to every pixel (8x8 digits are
            unreadable at their native size).
        padding: pixels (before upscaling) of white border between tiles.
    """
    if images.ndim != 4 or images.shape[1] not in (1, 3):
        raise ValueError(f"images must be [B, 1 or 3, H, W], got shape {tuple(images.shape)}")
    if nrow < 1 or scale < 1 or padding < 0:
        raise ValueError(f"need nrow >= 1, scale >= 1, padding >= 0; got {nrow}, {scale}, {padding}")
    images = images.detach().float().cpu().clamp(0.0, 1.0)
    if images.shape[1] == 1:
        images = images.expand(-1, 3, -1, -1)
    count, _, height, width = images.shape
    rows = max(1, math.ceil(count / nrow))
    cell_h, cell_w = height + padding, width + padding
    grid = torch.ones(3, rows * cell_h + padding, nrow * cell_w + padding)
    for i in range(count):
        r, c = divmod(i, nrow)
        top, left = padding + r * cell_h, padding + c * cell_w
        grid[:, top : top + height, left : left + width] = images[i]
    grid = grid.repeat_interleave(scale, dim=1).repeat_interleave(scale, dim=2)
    return (grid * 255.0).round().to(torch.uint8).permute(1, 2, 0).contiguous()


def save_image_grid(images: Tensor, path: str | os.PathLike[str], nrow: int = 8, scale: int = 8) -> str:
    """Write ``images`` (float ``[B, C, H, W]`` in ``[0, 1]``) as a PNG grid at ``path``, atomically.

    Each pixel becomes a ``scale x scale`` block (nearest upscaling); tiles are separated by a white
    border. Returns the path written.
    """
    from PIL import Image

    from treesdk.io import atomic_write_bytes

    grid = make_image_grid(images, nrow=nrow, scale=scale)
    buffer = io.BytesIO()
    Image.fromarray(grid.numpy(), mode="RGB").save(buffer, format="PNG")
    return str(atomic_write_bytes(path, buffer.getvalue()))
