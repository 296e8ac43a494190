"""Qwen-Image (``QwenImagePipeline``): Qwen2.5-VL prompt features, 2x2-packed latents of a causal
3-D VAE used on one frame, "true" CFG rescaled to the conditional norm, dynamic shift.

Latents and packing are FLUX.1's (``[B, C, h, w]`` noise, the pipeline's ``[B, 1, C, h, w]`` holds
the same numbers) and so are the grid (``linspace`` sigmas, ``mu`` from the scheduler config,
which adds Qwen-Image's exponential shift and terminal stretch) and ``timestep / 1000``. Prompt
features: the last hidden layer after the pipeline's fixed system prompt, of each prompt's own
length; kept padded to ``max_sequence_length`` with a mask (:mod:`.text`) and trimmed per batch.
CFG (``true_cfg_scale > 1``): ``u + g (c - u)`` rescaled per token to the norm of ``c``. Decoding:
``x * latents_std + latents_mean`` through the video VAE, frame 0.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor

from ..adapter import FamilyAdapter
from ..backend import DiffusersFlowBackend
from .flux import pack_latents, unpack_latents
from .text import pad_rows, trim

__all__ = ["QwenImageAdapter", "QwenImageBackend", "QWEN_IMAGE_LORA_TARGETS"]

#: attention projections of both streams of every dual-stream block
QWEN_IMAGE_LORA_TARGETS = ("attn.to_q", "attn.to_k", "attn.to_v", "attn.to_out.0",
                           "attn.add_q_proj", "attn.add_k_proj", "attn.add_v_proj", "attn.to_add_out")


class QwenImageAdapter(FamilyAdapter):
    """Qwen-Image. Options: ``true_cfg_scale`` (CFG, 4.0 as the pipeline; ``<= 1`` disables it),
    ``negative_prompt`` (``" "``, Qwen-Image's usual empty negative), ``max_sequence_length``
    (prompt tokens after the system prompt, 512)."""

    family = "qwen-image"
    pipeline_classes = ("QwenImagePipeline",)
    default_repo = "Qwen/Qwen-Image"
    text_encoder_names = ("text_encoder",)
    lora_targets = QWEN_IMAGE_LORA_TARGETS
    single_file_layout = "diffusers-names"  # ComfyUI's native Qwen-Image model uses diffusers' key names
    parity_atol = 2e-5

    def __init__(self, true_cfg_scale: float = 4.0, negative_prompt: str = " ", max_sequence_length: int = 512) -> None:
        super().__init__(max_sequence_length)
        self.guidance_scale = float(true_cfg_scale)
        self.negative_prompt = str(negative_prompt)

    def latent_shape(self) -> tuple[int, ...]:
        h, w = (2 * (side // (2 * self.vae_scale_factor)) for side in self.resolution)
        return (int(self.transformer.config.in_channels) // 4, h, w)

    def image_seq_len(self) -> int:
        _, h, w = self.latent_shape()
        return (h // 2) * (w // 2)

    def pack(self, x: Tensor) -> Tensor:
        return pack_latents(x)

    def unpack(self, hidden: Tensor, batch: int) -> Tensor:
        _, h, w = self.latent_shape()
        return unpack_latents(hidden, h, w)

    def encode_prompts(self, prompts: list[str]) -> dict[str, Tensor]:
        embeds, mask = self.pipe.encode_prompt(prompt=prompts, device=self.device,
                                               max_sequence_length=self.max_sequence_length)
        lengths = [embeds.shape[1]] * len(prompts) if mask is None else mask.sum(dim=1).tolist()
        rows = [e[: int(n)] for e, n in zip(embeds, lengths)]
        padded, mask = pad_rows(rows, self.max_sequence_length)
        return {"prompt_embeds": padded, "prompt_mask": mask}

    def timestep(self, sigma: Tensor) -> Tensor:
        return (sigma * 1000.0).to(self.dtype) / 1000

    def forward(self, hidden: Tensor, timestep: Tensor, cond: dict[str, Tensor]) -> Tensor:
        embeds, mask = trim(cond["prompt_embeds"], cond["prompt_mask"])
        _, h, w = self.latent_shape()
        return self.transformer(
            hidden_states=hidden, timestep=timestep, guidance=None,
            encoder_hidden_states_mask=None if bool(mask.all()) else mask, encoder_hidden_states=embeds,
            img_shapes=[[(1, h // 2, w // 2)]] * hidden.shape[0], return_dict=False,
        )[0]

    def combine_cfg(self, uncond: Tensor, cond: Tensor) -> Tensor:
        guided = uncond + self.guidance_scale * (cond - uncond)
        return guided * (torch.norm(cond, dim=-1, keepdim=True) / torch.norm(guided, dim=-1, keepdim=True))

    def decode_latents(self, x: Tensor) -> Tensor:
        vae = self.pipe.vae
        shape = (1, vae.config.z_dim, 1, 1, 1)
        mean = torch.tensor(vae.config.latents_mean).view(shape).to(self.device, vae.dtype)
        std = torch.tensor(vae.config.latents_std).view(shape).to(self.device, vae.dtype)
        latents = x.to(self.device, vae.dtype).unsqueeze(2) * std + mean
        return vae.decode(latents, return_dict=False)[0][:, :, 0]

    def pipeline_kwargs(self) -> dict[str, Any]:
        return {**super().pipeline_kwargs(), "true_cfg_scale": self.guidance_scale,
                "negative_prompt": self.negative_prompt if self.guidance_scale > 1 else None}

    def pipeline_latents(self, output: Tensor) -> Tensor:
        _, h, w = self.latent_shape()
        return unpack_latents(output, h, w)

    def describe(self) -> dict[str, Any]:
        return {**super().describe(), "true_cfg_scale": self.guidance_scale, "negative_prompt": self.negative_prompt}


#: ``--backend qwen-image``: the generic backend bound to this family
QwenImageBackend = DiffusersFlowBackend.for_family(QwenImageAdapter)
