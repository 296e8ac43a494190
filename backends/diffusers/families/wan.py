"""Wan2.1 text-to-video (``WanPipeline``): UMT5 prompt features, 5-D latents ``[B, C, F, h, w]`` of
a causal video VAE, a 3-D patch transformer predicting ``noise - x0``, CFG, the scheduler's own
shifted grid (``set_timesteps(T)``, flow shift 3 / 5; the hub's UniPC scheduler: its flow sigmas).

Decoding for rewards: the ``num_frames`` decoded frames are tiled into one image per video, row
by row, ``ceil(sqrt(F))`` frames per row (unused cells black), so every image reward scores the
whole clip at once (a CLIP-style reward resizes the sheet to its input size, so a long clip is
seen small: lower ``num_frames`` or score frames yourself from :meth:`WanAdapter.decode_frames`).
Wan2.2 A14B (two experts, ``boundary_ratio``) and TI2V-5B (``expand_timesteps``) are refused with
a clear error: the backend has one transformer and one timestep per sample.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np
import torch
from torch import Tensor

from ..adapter import FamilyAdapter
from ..backend import DiffusersFlowBackend

__all__ = ["WanAdapter", "WanBackend", "WAN_LORA_TARGETS", "tile_frames"]

#: self- and cross-attention projections of every block (diffusers' Wan LoRA training targets)
WAN_LORA_TARGETS = ("to_q", "to_k", "to_v", "to_out.0")


def tile_frames(video: Tensor) -> Tensor:
    """``[B, 3, F, H, W]`` -> ``[B, 3, rows * H, cols * W]``, frames row by row, ``cols = ceil(sqrt(F))``,
    empty cells filled with -1 (black in ``[-1, 1]``)."""
    b, c, f, h, w = video.shape
    cols = math.ceil(math.sqrt(f))
    rows = math.ceil(f / cols)
    sheet = video.new_full((b, c, rows * cols, h, w), -1.0)
    sheet[:, :, :f] = video
    sheet = sheet.view(b, c, rows, cols, h, w).permute(0, 1, 2, 4, 3, 5)
    return sheet.reshape(b, c, rows * h, cols * w)


class WanAdapter(FamilyAdapter):
    """Wan2.1 T2V. Options: ``num_frames`` (81 as the pipeline; ``num_frames - 1`` divisible by the
    VAE's temporal factor 4), ``guidance_scale`` (CFG, 5.0), ``negative_prompt`` (``""``),
    ``max_sequence_length`` (UMT5 tokens, 512)."""

    family = "wan"
    pipeline_classes = ("WanPipeline",)
    default_repo = "Wan-AI/Wan2.1-T2V-1.3B-Diffusers"
    text_encoder_names = ("text_encoder",)
    lora_targets = WAN_LORA_TARGETS
    single_file_layout = "wan"  # the original Wan2.1 layout, what ComfyUI's WanModel loads
    parity_atol = 2e-5

    def __init__(self, num_frames: int = 81, guidance_scale: float = 5.0, negative_prompt: str = "",
                 max_sequence_length: int = 512) -> None:
        super().__init__(max_sequence_length)
        self.num_frames = int(num_frames)
        self.guidance_scale = float(guidance_scale)
        self.negative_prompt = str(negative_prompt)

    @classmethod
    def planner_sizes(cls, config: Any, vae_config: Any, index: Any, adapter: FamilyAdapter) -> dict[str, Any]:
        """The generic geometry over ``1 + (num_frames - 1) / temporal factor`` latent frames."""
        temporal = int(vae_config.get("scale_factor_temporal") or 4)
        frames = 1 + (int(getattr(adapter, "num_frames", 1)) - 1) // temporal
        return {**super().planner_sizes(config, vae_config, index, adapter), "frames": frames}

    @property
    def vae_scale_factor(self) -> int:
        return int(self.pipe.vae_scale_factor_spatial)

    def resolution_multiple(self) -> int:
        return math.lcm(16, 2 * self.vae_scale_factor)  # the pipeline checks multiples of 16

    def default_resolution(self) -> int:
        return 480

    def latent_shape(self) -> tuple[int, ...]:
        pipe, temporal = self.pipe, int(self.pipe.vae_scale_factor_temporal)
        if pipe.config.get("boundary_ratio") is not None or getattr(pipe, "transformer_2", None) is not None:
            raise ValueError("wan: two-expert checkpoints (Wan2.2 A14B: transformer_2, boundary_ratio) are not supported")
        if pipe.config.get("expand_timesteps", False):
            raise ValueError("wan: expand_timesteps checkpoints (Wan2.2 TI2V-5B) are not supported")
        if self.num_frames < 1 or (self.num_frames - 1) % temporal:
            raise ValueError(f"wan num_frames must be 1 + a multiple of {temporal} (the VAE's temporal factor), "
                             f"got {self.num_frames}")
        h, w = (side // self.vae_scale_factor for side in self.resolution)
        return (int(self.transformer.config.in_channels), (self.num_frames - 1) // temporal + 1, h, w)

    def image_seq_len(self) -> int:
        _, f, h, w = self.latent_shape()
        _, ph, pw = self.transformer.config.patch_size
        return f * (h // ph) * (w // pw)

    def base_sigmas(self, num_steps: int) -> np.ndarray | None:
        """None (``set_timesteps(T)``, as the pipeline) for a ``FlowMatchEulerDiscreteScheduler``; for
        the hub's ``UniPCMultistepScheduler`` (``use_flow_sigmas``, ``flow_shift``) the sigmas that
        scheduler walks, from a copy of it (treesdk's Euler/SDE steps then run on the same grid; the
        copy's config has no ``shift``, so the Euler scheduler does not shift them again)."""
        scheduler = self.pipe.scheduler
        if type(scheduler).__name__ == "FlowMatchEulerDiscreteScheduler":
            return None
        if not scheduler.config.get("use_flow_sigmas", False) or "shift" in scheduler.config:
            raise ValueError(f"wan: scheduler {type(scheduler).__name__} is not a flow-sigma scheduler; use "
                             "FlowMatchEulerDiscreteScheduler or UniPCMultistepScheduler(use_flow_sigmas=True)")
        copy = type(scheduler).from_config(scheduler.config)
        copy.set_timesteps(num_steps)
        return copy.sigmas[:-1].double().numpy()

    def encode_prompts(self, prompts: list[str]) -> dict[str, Tensor]:
        embeds, _ = self.pipe.encode_prompt(prompt=prompts, negative_prompt=None, do_classifier_free_guidance=False,
                                            max_sequence_length=self.max_sequence_length, device=self.device)
        return {"prompt_embeds": embeds}

    def forward(self, hidden: Tensor, timestep: Tensor, cond: dict[str, Tensor]) -> Tensor:
        return self.transformer(hidden_states=hidden, timestep=timestep, encoder_hidden_states=cond["prompt_embeds"],
                                return_dict=False)[0]

    def decode_frames(self, x: Tensor) -> Tensor:
        """Latents ``[B, C, F', h, w]`` -> video ``[B, 3, num_frames, H, W]`` in ``[-1, 1]``."""
        vae = self.pipe.vae
        shape = (1, vae.config.z_dim, 1, 1, 1)
        mean = torch.tensor(vae.config.latents_mean).view(shape).to(self.device, vae.dtype)
        std = torch.tensor(vae.config.latents_std).view(shape).to(self.device, vae.dtype)
        return vae.decode(x.to(self.device, vae.dtype) * std + mean, return_dict=False)[0]

    def decode_latents(self, x: Tensor) -> Tensor:
        return tile_frames(self.decode_frames(x))

    def pipeline_kwargs(self) -> dict[str, Any]:
        return {**super().pipeline_kwargs(), "num_frames": self.num_frames, "guidance_scale": self.guidance_scale,
                "negative_prompt": self.negative_prompt}

    def describe(self) -> dict[str, Any]:
        return {**super().describe(), "num_frames": self.num_frames, "guidance_scale": self.guidance_scale,
                "negative_prompt": self.negative_prompt}


#: ``--backend wan``: the generic backend bound to this family
WanBackend = DiffusersFlowBackend.for_family(WanAdapter)
