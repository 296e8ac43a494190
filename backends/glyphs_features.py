"""Position- and shade-free features of text images, for the glyphs backend's precision, recall and
diversity (:meth:`treesdk.interfaces.VelocityModel.fidelity_features`).

A word may sit anywhere on the sign, at any size, in any ink and paper shade; what fidelity asks is
whether its letter shapes look like a real render of the word. :func:`ink_box_features` removes
the rest:

1. grey level = mean over the colour channels, ink = ``1 - grey``;
2. ink rescaled per image to ``[0, 1]`` (min to max), so ink and paper shades do not count;
3. the image is cropped to the bounding box of the pixels whose rescaled ink exceeds
   :data:`INK_THRESHOLD` (the whole image when none does), padded with paper to the
   :data:`FEATURE_SHAPE` aspect ratio (centred), and resized to :data:`FEATURE_SHAPE` by area
   averaging;
4. flattened and standardised per image (zero mean, unit Euclidean norm): float32
   ``[B, FEATURE_SHAPE[0] * FEATURE_SHAPE[1]]``. The Euclidean distance of two rows is then
   ``sqrt(2 - 2 rho)`` with ``rho`` the correlation of their ink boxes, in ``[0, 2]``.

Two renders of a word in one font at different offsets, sizes (up to resampling) and shades
therefore map to nearly the same vector. Standardising matters for what fidelity must catch: an
unstandardised noise or blob image averages to a flat grey box, which lies near the middle of every
render (closer to each than they are to one another), while standardised its residual points in a
random direction, uncorrelated with any render.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

__all__ = ["FEATURE_SHAPE", "INK_THRESHOLD", "ink_box_features"]

#: (height, width) of the resized ink box; 1:3 like the 32x96 images
FEATURE_SHAPE: tuple[int, int] = (12, 36)
#: rescaled ink level above which a pixel counts for the bounding box
INK_THRESHOLD = 0.5


def _box(mask: Tensor) -> tuple[int, int, int, int]:
    """``(top, bottom, left, right)`` (exclusive ends) of the True pixels of ``mask [H, W]``; the whole
    image when there are none."""
    rows, cols = mask.any(dim=1).nonzero().flatten(), mask.any(dim=0).nonzero().flatten()
    if rows.numel() == 0:
        return 0, mask.shape[0], 0, mask.shape[1]
    return int(rows[0]), int(rows[-1]) + 1, int(cols[0]), int(cols[-1]) + 1


def _pad_to_aspect(ink: Tensor, aspect: float) -> Tensor:
    """Pad ``ink [h, w]`` with zeros (paper), centred, until ``w / h == aspect`` (to the nearest pixel)."""
    h, w = ink.shape
    if w < aspect * h:
        extra = round(aspect * h) - w
        return F.pad(ink, (extra // 2, extra - extra // 2, 0, 0))
    extra = round(w / aspect) - h
    return F.pad(ink, (0, 0, extra // 2, extra - extra // 2))


def ink_box_features(images: Tensor) -> Tensor:
    """Features of images ``[B, C, H, W]`` in ``[0, 1]`` (dark text on light paper): float32
    ``[B, FEATURE_SHAPE[0] * FEATURE_SHAPE[1]]``, each row zero-mean with unit norm (steps in the
    module docstring; a flat image gives a zero row)."""
    if images.ndim != 4:
        raise ValueError(f"expected images [B, C, H, W], got shape {tuple(images.shape)}")
    ink = 1.0 - images.detach().float().cpu().mean(dim=1)
    low = ink.flatten(1).amin(dim=1).view(-1, 1, 1)
    high = ink.flatten(1).amax(dim=1).view(-1, 1, 1)
    ink = (ink - low) / (high - low).clamp_min(1e-6)
    aspect = FEATURE_SHAPE[1] / FEATURE_SHAPE[0]
    rows = []
    for one in ink:
        top, bottom, left, right = _box(one > INK_THRESHOLD)
        crop = _pad_to_aspect(one[top:bottom, left:right], aspect)
        rows.append(F.interpolate(crop[None, None], size=FEATURE_SHAPE, mode="area").flatten())
    boxes = torch.stack(rows)
    centred = boxes - boxes.mean(dim=1, keepdim=True)
    return centred / centred.norm(dim=1, keepdim=True).clamp_min(1e-6)
