"""Z-Image (``ZImagePipeline``): Qwen3 prompt features of each prompt's own length, a single-stream
transformer on lists of samples, time running from 0 = noise to 1 = data, output ``x0 - noise``.

* Latents: the VAE's ``[B, C, h, w]`` (float32 noise, as the pipeline draws it); the transformer
  takes a list of ``[C, 1, h, w]`` (one frame) and returns one.
* Timestep: ``(1000 - t) / 1000 = 1 - sigma``; the output is negated into ``noise - x0``.
* Grid: ``torch.linspace(1, 1/T, T)`` (float32, the pipeline's ``get_default_z_image_sigmas``)
  through the scheduler (static shift 3 for Z-Image-Turbo).
* Prompts: second-to-last hidden layer of the chat-templated prompt, unpadded; kept padded to
  ``max_sequence_length`` with a mask (:mod:`.text`) and unpadded again for the transformer.
* CFG (``guidance_scale > 0``): ``c + g (c - u)`` = the backend's ``u + (1 + g)(c - u)``; the
  pipeline's ``cfg_normalization`` / ``cfg_truncation`` are not supported (off by default).
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch
from torch import Tensor

from ..adapter import FamilyAdapter
from ..backend import DiffusersFlowBackend
from .text import pad_rows

__all__ = ["ZImageAdapter", "ZImageBackend", "Z_IMAGE_LORA_TARGETS"]

#: attention projections of every block (main layers and both refiners)
Z_IMAGE_LORA_TARGETS = ("attention.to_q", "attention.to_k", "attention.to_v", "attention.to_out.0")


class ZImageAdapter(FamilyAdapter):
    """Z-Image(-Turbo). Options: ``guidance_scale`` (the pipeline's CFG scale ``g``; 0, as
    Z-Image-Turbo is sampled, disables it), ``negative_prompt`` (``""``), ``max_sequence_length``
    (prompt tokens, 512)."""

    family = "z-image"
    pipeline_classes = ("ZImagePipeline",)
    default_repo = "Tongyi-MAI/Z-Image-Turbo"
    text_encoder_names = ("text_encoder",)
    lora_targets = Z_IMAGE_LORA_TARGETS
    single_file_layout = "z-image"  # the original layout, what ComfyUI's Z-Image (NextDiT) model loads

    def __init__(self, guidance_scale: float = 0.0, negative_prompt: str = "", max_sequence_length: int = 512) -> None:
        super().__init__(max_sequence_length)
        self.cfg = float(guidance_scale)
        self.guidance_scale = 1.0 + self.cfg  # the backend's u + s (c - u) with s = 1 + g
        self.negative_prompt = str(negative_prompt)

    def resolution_multiple(self) -> int:
        return 2 * self.vae_scale_factor

    def default_resolution(self) -> int:
        return 1024

    def latent_shape(self) -> tuple[int, ...]:
        h, w = (2 * (side // (2 * self.vae_scale_factor)) for side in self.resolution)
        return (int(self.transformer.config.in_channels), h, w)

    def image_seq_len(self) -> int:
        _, h, w = self.latent_shape()
        return (h // 2) * (w // 2)

    def base_sigmas(self, num_steps: int) -> np.ndarray:
        return np.array(torch.linspace(1.0, 1.0 / num_steps, num_steps).tolist())

    def pack(self, x: Tensor) -> Tensor:
        return x.unsqueeze(2)

    def unpack(self, hidden: Tensor, batch: int) -> Tensor:
        return hidden.squeeze(2)

    def encode_prompts(self, prompts: list[str]) -> dict[str, Tensor]:
        rows, _ = self.pipe.encode_prompt(prompt=list(prompts), device=self.device, do_classifier_free_guidance=False,
                                          max_sequence_length=self.max_sequence_length)
        embeds, mask = pad_rows(rows, self.max_sequence_length)
        return {"prompt_embeds": embeds, "prompt_mask": mask}

    def timestep(self, sigma: Tensor) -> Tensor:
        return (1000.0 - sigma * 1000.0) / 1000.0

    def forward(self, hidden: Tensor, timestep: Tensor, cond: dict[str, Tensor]) -> Tensor:
        embeds, mask = cond["prompt_embeds"], cond["prompt_mask"]
        out = self.transformer(list(hidden.unbind(0)), timestep, [e[m] for e, m in zip(embeds, mask)],
                               return_dict=False)[0]
        return -torch.stack(out)

    def pipeline_kwargs(self) -> dict[str, Any]:
        return {**super().pipeline_kwargs(), "guidance_scale": self.cfg, "negative_prompt": self.negative_prompt,
                "cfg_normalization": False, "cfg_truncation": 1.0}

    def describe(self) -> dict[str, Any]:
        return {**super().describe(), "guidance_scale": self.cfg, "negative_prompt": self.negative_prompt}


#: ``--backend z-image``: the generic backend bound to this family
ZImageBackend = DiffusersFlowBackend.for_family(ZImageAdapter)
