"""JPEG (in)compressibility rewards, as defined by DDPO (Black et al. 2023, ``ddpo_pytorch/rewards.py``).

Each image is quantised to uint8 (``round(x * 255)``), saved by PIL as JPEG at quality 95, and the
file size is measured in kilobytes (bytes / 1000). ``jpeg-incompressibility`` returns ``+size``,
``jpeg-compressibility`` returns ``-size`` (higher is better for both). Weight-free, prompt-free.
"""

from __future__ import annotations

import io
from collections.abc import Sequence

import numpy as np
import torch
from PIL import Image
from torch import Tensor

from treesdk.interfaces import RewardModel

from .common import WeightsStatus, check_inputs

#: JPEG quality DDPO uses
QUALITY = 95


def jpeg_size_kb(images: Tensor, quality: int = QUALITY) -> Tensor:
    """float32 ``[B]``: JPEG file size in kB (1000 bytes) of each image of ``[B, 3, H, W]`` in [0, 1]."""
    arrays = (images.detach().float().clamp(0, 1) * 255).round().to(torch.uint8).cpu().numpy()
    sizes = []
    for array in arrays.transpose(0, 2, 3, 1):
        buffer = io.BytesIO()
        Image.fromarray(np.ascontiguousarray(array)).save(buffer, format="JPEG", quality=quality)
        sizes.append(buffer.tell() / 1000.0)
    return torch.tensor(sizes, dtype=torch.float32)


class JpegIncompressibilityReward(RewardModel):
    """Reward = JPEG size in kB at quality 95 (DDPO's "incompressibility"): favours detail."""

    name = "jpeg-incompressibility"

    @staticmethod
    def weights_status() -> WeightsStatus:
        """No weights: the score is a JPEG file size."""
        return WeightsStatus(None, [], "needs no weights")
    sign = 1.0

    def __init__(self, quality: int = QUALITY, batch_size: int = 64, device: str | None = None, dtype: str | None = None):
        if not 1 <= int(quality) <= 100:
            raise ValueError(f"quality must be in [1, 100], got {quality}")
        self.quality = int(quality)
        self.batch_size = int(batch_size)

    def score(self, images: Tensor, prompts: Sequence[str]) -> Tensor:
        check_inputs(images, prompts, self.name)
        with torch.no_grad():
            return self.sign * jpeg_size_kb(images, self.quality)


class JpegCompressibilityReward(JpegIncompressibilityReward):
    """Reward = minus the JPEG size in kB at quality 95 (DDPO's "compressibility"): favours flat images."""

    name = "jpeg-compressibility"
    sign = -1.0
