"""PickScore (Kirstain et al. 2023): a CLIP ViT-H/14 fine-tuned on Pick-a-Pic preferences.

Score as the official example computes it (``yuvalkirstain/PickScore`` README)::

    score = model.logit_scale.exp() * cos(image_embeds, text_embeds)

i.e. about ``100 * cos`` (typical values 18-23). No further rescaling (some RL code divides by 26;
do that with a reward weight if you want it).

Weights: a transformers ``CLIPModel`` folder (``model``, default ``yuvalkirstain/PickScore_v1``) and
the processor/tokenizer of the CLIP it was fine-tuned from (``processor``, default
``laion/CLIP-ViT-H-14-laion2B-s32B-b79K``), each a local ``save_pretrained`` folder or a repo id in
the local Hugging Face cache (never downloaded). If ``processor`` is ``None`` the model folder's own
tokenizer and preprocessor files are used.

Images are preprocessed on tensors as ``CLIPImageProcessor`` does (shortest side to 224 bicubic,
center crop 224, CLIP mean/std), without the uint8 round trip.
"""

from __future__ import annotations

import os
from collections.abc import Sequence

import torch
from torch import Tensor

from treesdk.interfaces import RewardModel

from .common import batched_features, HFClip, WeightsStatus, batched_score, combine_status, pretrained_dir_status, check_inputs, resolve_device, resolve_dtype

DEFAULT_MODEL = "yuvalkirstain/PickScore_v1"
DEFAULT_PROCESSOR = "laion/CLIP-ViT-H-14-laion2B-s32B-b79K"


class PickScoreReward(RewardModel):
    """``logit_scale.exp() * cos(img, txt)`` of the PickScore CLIP; float32 ``[B]``, higher is better."""

    name = "pickscore"

    @staticmethod
    def weights_status() -> WeightsStatus:
        """Whether the default model and processor folders are on disk (local HF cache); loads nothing."""
        return combine_status(
            pretrained_dir_status(DEFAULT_MODEL, "a PickScore CLIPModel folder"),
            pretrained_dir_status(DEFAULT_PROCESSOR, "a CLIP processor/tokenizer folder"),
        )

    def __init__(
        self,
        model: str | os.PathLike[str] = DEFAULT_MODEL,
        processor: str | os.PathLike[str] | None = DEFAULT_PROCESSOR,
        device: str | torch.device | None = None,
        dtype: str | torch.dtype | None = None,
        batch_size: int = 32,
    ) -> None:
        self.device = resolve_device(device)
        self.batch_size = int(batch_size)
        self.clip = HFClip(model, processor, self.device, resolve_dtype(dtype, self.device), self.name, "a PickScore CLIPModel folder")

    def to(self, device: torch.device | str) -> PickScoreReward:
        self.device = torch.device(device)
        self.clip.to(self.device)
        return self

    def _score(self, images: Tensor, prompts: list[str]) -> Tensor:
        img = self.clip.image_embeds(images)
        txt = self.clip.text_embeds(prompts)
        return self.clip.model.logit_scale.exp().float() * (img * txt).sum(-1)

    def features(self, images: Tensor) -> Tensor:
        """L2-normalised CLIP image embeddings float32 ``[B, D]`` on the CPU (for :mod:`treesdk.diversity`)."""
        return batched_features(images, self.batch_size, self.clip.image_embeds)

    def score(self, images: Tensor, prompts: Sequence[str]) -> Tensor:
        check_inputs(images, prompts, self.name)
        return batched_score(images, prompts, self.batch_size, self._score)
