"""CLIPScore (Hessel et al. 2021, reference code ``jmhessel/clipscore``).

Convention: ``score = w * max(cos(image_embeds, text_embeds), 0)`` with ``w = 2.5`` and the text
prefixed by ``"A photo depicts "`` exactly as the reference implementation does; range [0, 2.5].
Set ``w=100, prefix=""`` for the torchmetrics convention.

Weights: a transformers ``CLIPModel`` folder or a repo id in the local Hugging Face cache
(``model``, default ``openai/clip-vit-base-patch32``, the ViT-B/32 of the paper), never downloaded;
its tokenizer and preprocessor files come from the same folder unless ``processor`` is given.
Images are preprocessed on tensors as ``CLIPImageProcessor`` does (shortest side bicubic, center
crop, CLIP mean/std), without the uint8 round trip.
"""

from __future__ import annotations

import os
from collections.abc import Sequence

import torch
from torch import Tensor

from treesdk.interfaces import RewardModel

from .common import batched_features, HFClip, WeightsStatus, batched_score, pretrained_dir_status, check_inputs, resolve_device, resolve_dtype

DEFAULT_MODEL = "openai/clip-vit-base-patch32"


class CLIPScoreReward(RewardModel):
    """``w * max(cos, 0)`` between CLIP image and (prefixed) text embeddings; float32 ``[B]``."""

    name = "clipscore"

    @staticmethod
    def weights_status() -> WeightsStatus:
        """Whether the default CLIP model folder is on disk (local HF cache); loads nothing."""
        return pretrained_dir_status(DEFAULT_MODEL, "a CLIPModel folder")

    def __init__(
        self,
        model: str | os.PathLike[str] = DEFAULT_MODEL,
        processor: str | os.PathLike[str] | None = None,
        w: float = 2.5,
        prefix: str = "A photo depicts ",
        device: str | torch.device | None = None,
        dtype: str | torch.dtype | None = None,
        batch_size: int = 32,
    ) -> None:
        self.device = resolve_device(device)
        self.batch_size = int(batch_size)
        self.w = float(w)
        self.prefix = prefix
        self.clip = HFClip(model, processor, self.device, resolve_dtype(dtype, self.device), self.name, "a CLIPModel folder")

    def to(self, device: torch.device | str) -> CLIPScoreReward:
        self.device = torch.device(device)
        self.clip.to(self.device)
        return self

    def _score(self, images: Tensor, prompts: list[str]) -> Tensor:
        img = self.clip.image_embeds(images)
        txt = self.clip.text_embeds([self.prefix + p for p in prompts])
        return self.w * (img * txt).sum(-1).clamp(min=0)

    def features(self, images: Tensor) -> Tensor:
        """L2-normalised CLIP image embeddings float32 ``[B, D]`` on the CPU (for :mod:`treesdk.diversity`)."""
        return batched_features(images, self.batch_size, self.clip.image_embeds)

    def score(self, images: Tensor, prompts: Sequence[str]) -> Tensor:
        check_inputs(images, prompts, self.name)
        return batched_score(images, prompts, self.batch_size, self._score)
