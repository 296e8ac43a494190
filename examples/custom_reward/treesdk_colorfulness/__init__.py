"""An example third-party reward for treesdk: image colourfulness.

Hasler & Suesstrunk (2003), "Measuring colourfulness in natural images": with ``rg = R - G`` and
``yb = (R + G) / 2 - B`` over the pixels (here on [0, 1] images, so the metric is the paper's / 255),

    M = sqrt(std(rg)^2 + std(yb)^2) + 0.3 * sqrt(mean(rg)^2 + mean(yb)^2)

Installed, it is found by ``treesdk plugins`` and ``treesdk.load_reward("colorfulness")`` through the
``treesdk.rewards`` entry point declared in this folder's ``pyproject.toml``.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor

from treesdk.interfaces import RewardModel

__all__ = ["ColorfulnessReward", "colorfulness"]


def colorfulness(images: Tensor) -> Tensor:
    """float32 ``[B]`` colourfulness of ``[B, 3, H, W]`` images in [0, 1] (population std)."""
    r, g, b = images.float().flatten(2).unbind(1)
    rg, yb = r - g, 0.5 * (r + g) - b
    spread = (rg.var(-1, unbiased=False) + yb.var(-1, unbiased=False)).sqrt()
    offset = (rg.mean(-1) ** 2 + yb.mean(-1) ** 2).sqrt()
    return spread + 0.3 * offset


class ColorfulnessReward(RewardModel):
    """Higher for more colourful images; the prompt is ignored."""

    name = "colorfulness"

    def __init__(self, batch_size: int = 64, device: str | None = None, dtype: str | None = None) -> None:
        self.batch_size = int(batch_size)

    def score(self, images: Tensor, prompts: Sequence[str]) -> Tensor:
        if images.ndim != 4 or images.shape[1] != 3 or len(prompts) != images.shape[0]:
            raise ValueError(f"expected images [B, 3, H, W] and B prompts, got {tuple(images.shape)} and {len(prompts)}")
        with torch.no_grad():
            return torch.cat([colorfulness(chunk).cpu() for chunk in images.split(self.batch_size)])
