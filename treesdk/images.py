"""Image grids for people to look at: PNG (or JPEG/WebP by suffix), nearest-neighbour upscaling so 8x8 digits stay visible."""

from __future__ import annotations

import io
import math
import os
from pathlib import Path

import torch
from torch import Tensor

from .io import atomic_write_bytes


def make_grid(images: Tensor, nrow: int, scale: int = 1, padding: int = 1) -> Tensor:
    """Tile ``images`` into one uint8 image ``[H', W', 3]``.

    Args:
        images: float ``[B, C, H, W]`` in ``[0, 1]`` (values outside are clipped), ``C`` 1 or 3.
        nrow: images per row of the grid.
        scale: integer nearest-neighbour upscaling factor applied to every pixel.
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


#: image formats a grid is written in, by file suffix
IMAGE_FORMATS = {".png": "PNG", ".jpg": "JPEG", ".jpeg": "JPEG", ".webp": "WEBP"}


def image_format(path: str | os.PathLike[str]) -> str:
    """The PIL format named by ``path``'s suffix; ``UserError`` for another suffix (checked before
    any work, so ``--out grid.gif`` fails at once instead of after sampling)."""
    from .errors import UserError

    suffix = Path(path).suffix.lower()
    if suffix not in IMAGE_FORMATS:
        raise UserError(f"cannot write an image grid to {path}: unknown suffix {suffix or '(none)'!r}; "
                        f"use one of {', '.join(IMAGE_FORMATS)}")
    return IMAGE_FORMATS[suffix]


def save_grid(
    images: Tensor,
    path: str | os.PathLike[str],
    nrow: int | None = None,
    scale: int | None = None,
    min_size: int = 64,
) -> Path:
    """Write ``images`` (float ``[B, C, H, W]`` in ``[0, 1]``) as one image grid at ``path``, atomically,
    in the format its suffix names (:data:`IMAGE_FORMATS`: PNG, JPEG at quality 95, WebP).

    ``nrow`` defaults to a square-ish grid; ``scale`` (nearest upscaling) defaults to the smallest
    integer that makes a tile at least ``min_size`` pixels. Tiles are separated by a white border.
    """
    from PIL import Image

    fmt = image_format(path)
    if images.ndim != 4:
        raise ValueError(f"images must be [B, 1 or 3, H, W], got shape {tuple(images.shape)}")
    nrow = nrow or math.ceil(math.sqrt(images.shape[0]))
    scale = scale or max(1, math.ceil(min_size / max(images.shape[2], images.shape[3])))
    grid = make_grid(images, nrow=nrow, scale=scale)
    buffer = io.BytesIO()
    Image.fromarray(grid.numpy(), mode="RGB").save(buffer, format=fmt, **({"quality": 95} if fmt == "JPEG" else {}))
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    return atomic_write_bytes(path, buffer.getvalue())
