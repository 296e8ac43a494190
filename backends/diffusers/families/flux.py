"""FLUX.1 (``FluxPipeline``): guidance embedding instead of CFG, 2x2-packed latents, dynamic shift.

The backend sees *unpacked* latents ``[B, C, h, w]`` with ``C = in_channels // 4`` and
``h = 2 * (H // (2 * vae_scale_factor))`` — the tensor ``FluxPipeline.prepare_latents`` draws
before packing — and packs them into ``[B, (h/2)(w/2), 4C]`` tokens for the transformer.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from treesdk.model_facts import ModelFacts

from ..adapter import FamilyAdapter
from ..sizes import FLUX_ACTIVATIONS, FLUX_MODELS, block_kinds, known_facts

__all__ = ["FluxAdapter", "FLUX_COMPONENTS", "FLUX_LORA_TARGETS", "has_guidance_embedding", "pack_latents", "unpack_latents", "image_ids"]

#: sub-folders of a FluxPipeline checkpoint (besides model_index.json)
FLUX_COMPONENTS = ("scheduler", "text_encoder", "text_encoder_2", "tokenizer", "tokenizer_2", "transformer", "vae")

#: attention (both streams) and both feed-forwards of the double blocks, the attention of the
#: single blocks: diffusers' ``train_dreambooth_lora_flux.py`` list
FLUX_LORA_TARGETS = (
    "attn.to_q", "attn.to_k", "attn.to_v", "attn.to_out.0",
    "attn.add_q_proj", "attn.add_k_proj", "attn.add_v_proj", "attn.to_add_out",
    "ff.net.0.proj", "ff.net.2", "ff_context.net.0.proj", "ff_context.net.2",
)


def pack_latents(latents: Tensor) -> Tensor:
    """``[B, C, h, w]`` -> ``[B, (h/2)(w/2), 4C]`` 2x2 patches, as ``FluxPipeline._pack_latents``."""
    b, c, h, w = latents.shape
    x = latents.view(b, c, h // 2, 2, w // 2, 2).permute(0, 2, 4, 1, 3, 5)
    return x.reshape(b, (h // 2) * (w // 2), c * 4)


def unpack_latents(packed: Tensor, h: int, w: int) -> Tensor:
    """Inverse of :func:`pack_latents` (``FluxPipeline._unpack_latents`` with the latent size given)."""
    b, _, c4 = packed.shape
    x = packed.view(b, h // 2, w // 2, c4 // 4, 2, 2).permute(0, 3, 1, 4, 2, 5)
    return x.reshape(b, c4 // 4, h, w)


def image_ids(h: int, w: int, device: torch.device, dtype: torch.dtype) -> Tensor:
    """``[(h/2)(w/2), 3]`` position ids (0, row, column) (``FluxPipeline._prepare_latent_image_ids``)."""
    ids = torch.zeros(h // 2, w // 2, 3)
    ids[..., 1] = ids[..., 1] + torch.arange(h // 2)[:, None]
    ids[..., 2] = ids[..., 2] + torch.arange(w // 2)[None, :]
    return ids.reshape(-1, 3).to(device=device, dtype=dtype)


def has_guidance_embedding(folder: Path | None) -> bool | None:
    """``guidance_embeds`` of ``folder/transformer/config.json`` (None: no folder or no config)."""
    if folder is None:
        return None
    try:
        return bool(json.loads((Path(folder) / "transformer" / "config.json").read_text()).get("guidance_embeds"))
    except (OSError, ValueError):
        return None


class FluxAdapter(FamilyAdapter):
    """FLUX.1-dev and any FluxPipeline checkpoint. Options: ``guidance`` (the distilled guidance
    scale fed to the guidance embedding, ignored by checkpoints without one), ``max_sequence_length``
    (T5 tokens, 512)."""

    family = "flux"
    pipeline_classes = ("FluxPipeline",)
    default_repo = "black-forest-labs/FLUX.1-dev"
    components = FLUX_COMPONENTS
    text_encoder_names = ("text_encoder", "text_encoder_2")
    lora_targets = FLUX_LORA_TARGETS
    single_file_layout = "flux"
    activation_table = FLUX_ACTIVATIONS
    known_models = FLUX_MODELS
    default_known_model = "FLUX.1-dev"

    @classmethod
    def planner_sizes(cls, config: Any, vae_config: Any, index: Any, adapter: FamilyAdapter) -> dict[str, Any]:
        """The generic geometry with FLUX.1's double/single block kinds (its activation tables)."""
        return {**super().planner_sizes(config, vae_config, index, adapter), "blocks": block_kinds("flux", config)}

    @classmethod
    def known_model_facts(cls, name: str, adapter: FamilyAdapter, source: str) -> ModelFacts:
        return known_facts("flux", name, cls.known_models[name], adapter.max_sequence_length, float(adapter.guidance_scale) > 1,
                           cls.lora_targets, source)

    def __init__(self, guidance: float = 3.5, max_sequence_length: int = 512) -> None:
        super().__init__(max_sequence_length)
        self.guidance = float(guidance)
        self._img_ids: Tensor | None = None

    @classmethod
    def accepts(cls, model_index: dict[str, Any], folder: Any) -> bool:
        """Checkpoints with a guidance embedding (FLUX.1-dev); FLUX.1-schnell is ``flux-schnell``."""
        return has_guidance_embedding(folder) is not False

    def resolution_multiple(self) -> int:
        return 2 * self.vae_scale_factor

    def latent_shape(self) -> tuple[int, ...]:
        side = 2 * (self.resolution[0] // (2 * self.vae_scale_factor))
        width = 2 * (self.resolution[1] // (2 * self.vae_scale_factor))
        return (int(self.transformer.config.in_channels) // 4, side, width)

    def image_seq_len(self) -> int:
        _, h, w = self.latent_shape()
        return (h // 2) * (w // 2)

    def base_sigmas(self, num_steps: int):  # noqa: ANN201 - np.ndarray | None
        return None if self.pipe.scheduler.config.get("use_flow_sigmas", False) else super().base_sigmas(num_steps)

    def pack(self, x: Tensor) -> Tensor:
        return pack_latents(x)

    def unpack(self, hidden: Tensor, batch: int) -> Tensor:
        _, h, w = self.latent_shape()
        return unpack_latents(hidden, h, w)

    def encode_prompts(self, prompts: list[str]) -> dict[str, Tensor]:
        if self.pipe.text_encoder is None or self.pipe.text_encoder_2 is None:
            raise ValueError(f"cannot encode {prompts[0]!r}: this FluxPipeline has no text encoders")
        embeds, pooled, _ = self.pipe.encode_prompt(
            prompt=prompts, prompt_2=None, device=self.device, max_sequence_length=self.max_sequence_length
        )
        return {"prompt_embeds": embeds, "pooled_prompt_embeds": pooled}

    def timestep(self, sigma: Tensor) -> Tensor:
        """``(sigma * 1000 in the model dtype) / 1000``, as FluxPipeline feeds its timesteps."""
        return (sigma * 1000.0).to(self.dtype) / 1000

    def forward(self, hidden: Tensor, timestep: Tensor, cond: dict[str, Tensor]) -> Tensor:
        if self._img_ids is None:
            _, h, w = self.latent_shape()
            self._img_ids = image_ids(h, w, self.device, self.dtype)
        embeds = cond["prompt_embeds"]
        guidance = None
        if self.transformer.config.guidance_embeds:
            guidance = torch.full((hidden.shape[0],), self.guidance, device=self.device, dtype=torch.float32)
        return self.transformer(
            hidden_states=hidden, timestep=timestep, guidance=guidance,
            pooled_projections=cond["pooled_prompt_embeds"], encoder_hidden_states=embeds,
            txt_ids=torch.zeros(embeds.shape[1], 3, device=self.device, dtype=self.dtype),
            img_ids=self._img_ids, return_dict=False,
        )[0]

    def pipeline_kwargs(self) -> dict[str, Any]:
        return {**super().pipeline_kwargs(), "guidance_scale": self.guidance}

    def pipeline_latents(self, output: Tensor) -> Tensor:
        _, h, w = self.latent_shape()
        return unpack_latents(output, h, w)

    def describe(self) -> dict[str, Any]:
        return {**super().describe(), "guidance": self.guidance}
