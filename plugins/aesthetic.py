"""LAION aesthetic predictor v2 (``christophschuhmann/improved-aesthetic-predictor``).

``score = MLP(e / ||e||)`` with ``e`` the CLIP ViT-L/14 image embedding and the MLP
``768 -> 1024 -> 128 -> 64 -> 16 -> 1`` (dropouts between, no activations) whose weights are the
official ``sac+logos+ava1-l14-linearMSE.pth`` (a plain state dict, keys ``layers.{0,2,4,6,7}.*``).
Scores are on the AVA scale (roughly 1-10). The prompt is ignored.

Weights: ``checkpoint`` = path to the ``.pth`` (or a folder holding it; default: looked up in
``$TREESDK_WEIGHTS``); ``clip`` = a transformers CLIP ViT-L/14 folder or a repo id in the local HF
cache (default ``openai/clip-vit-large-patch14``; the reference uses OpenAI's ``clip`` package with
the same weights). Nothing is downloaded. Images are preprocessed on tensors as CLIP's processor
does (shortest side 224 bicubic, center crop 224, CLIP mean/std).
"""

from __future__ import annotations

import os
from collections.abc import Sequence

import torch
from torch import Tensor

from treesdk.interfaces import RewardModel

from .common import (
    batched_features,
    HFClip,
    RewardMLP,
    batched_score,
    check_inputs,
    load_state_dict_strict,
    load_torch_checkpoint,
    resolve_device,
    resolve_dtype,
    WeightsStatus,
    combine_status,
    file_status,
    pretrained_dir_status,
    resolve_file,
)

FILENAME = "sac+logos+ava1-l14-linearMSE.pth"
DEFAULT_CLIP = "openai/clip-vit-large-patch14"
_FORMAT = f"the LAION aesthetic MLP state dict ({FILENAME}: layers.0/2/4/6/7 weights, input size 768)"


class AestheticReward(RewardModel):
    """LAION aesthetic score of each image (prompt ignored); float32 ``[B]``, higher is better."""

    name = "aesthetic"

    @staticmethod
    def weights_status() -> WeightsStatus:
        """Whether the MLP checkpoint (``$TREESDK_WEIGHTS``) and the CLIP ViT-L/14 folder are on disk; loads nothing."""
        return combine_status(file_status(FILENAME, None), pretrained_dir_status(DEFAULT_CLIP, "a CLIP ViT-L/14 CLIPModel folder"))

    def __init__(
        self,
        checkpoint: str | os.PathLike[str] | None = None,
        clip: str | os.PathLike[str] = DEFAULT_CLIP,
        device: str | torch.device | None = None,
        dtype: str | torch.dtype | None = None,
        batch_size: int = 32,
    ) -> None:
        self.device = resolve_device(device)
        self.batch_size = int(batch_size)
        dtype_ = resolve_dtype(dtype, self.device)
        path = resolve_file(checkpoint, filename=FILENAME, repo_id=None, what=_FORMAT, option="checkpoint")
        state = load_torch_checkpoint(path, _FORMAT)
        self.clip = HFClip(clip, None, self.device, dtype_, self.name, "a CLIP ViT-L/14 CLIPModel folder")
        dim = int(self.clip.model.config.projection_dim)
        self.mlp = RewardMLP(dim)
        load_state_dict_strict(self.mlp, state, path, _FORMAT.replace("768", str(dim)))
        self.mlp.to(self.device).eval()

    def to(self, device: torch.device | str) -> AestheticReward:
        self.device = torch.device(device)
        self.clip.to(self.device)
        self.mlp.to(self.device)
        return self

    def _score(self, images: Tensor, prompts: list[str]) -> Tensor:
        return self.mlp(self.clip.image_embeds(images)).squeeze(-1)

    def features(self, images: Tensor) -> Tensor:
        """L2-normalised CLIP image embeddings float32 ``[B, D]`` on the CPU (for :mod:`treesdk.diversity`)."""
        return batched_features(images, self.batch_size, self.clip.image_embeds)

    def score(self, images: Tensor, prompts: Sequence[str]) -> Tensor:
        check_inputs(images, prompts, self.name)
        return batched_score(images, prompts, self.batch_size, self._score)
