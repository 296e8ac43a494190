"""FLUX.2-klein (``Flux2KleinPipeline``) and FLUX.2-dev (``Flux2Pipeline``).

klein: Qwen3 prompt features (three hidden layers stacked), noise
drawn already 2x2-patchified and flattened to tokens, 4-axis position ids, a batch-normalised latent
space, CFG on the base models (not on the distilled ones), a step-count-dependent shift.

* Latents: ``[B, 4C, h/2, w/2]`` (what ``prepare_latents`` draws), tokens ``[B, hw/4, 4C]`` in
  row-major order; ids from the pipeline's ``_prepare_latent_ids`` / ``_prepare_text_ids``.
* Grid: ``linspace(1, 1/T, T)`` with ``mu = compute_empirical_mu(image tokens, T)`` (the only
  family whose shift depends on ``T``: :meth:`Flux2KleinAdapter.base_sigmas` records ``T``).
* Timestep ``timestep / 1000`` as FLUX.1; no guidance embedding (klein has none).
* CFG: ``guidance_scale > 1`` and ``is_distilled`` false (model_index); negative prompt ``""``.
* Decoding / pipeline latents: ``x * bn_std + bn_mean``, unpatchify, VAE (and back for parity).

dev (:class:`Flux2DevAdapter`): the same latents, ids, grid and decoding; prompt features from
Mistral3 (layers 10/20/30 behind FLUX.2's system message); a guidance embedding (``guidance``,
4.0) instead of CFG; the pipeline's ``output_type="latent"`` is the token tensor itself.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch
from torch import Tensor

from ..adapter import FamilyAdapter
from ..backend import DiffusersFlowBackend

__all__ = ["Flux2DevAdapter", "Flux2DevBackend", "Flux2KleinAdapter", "Flux2KleinBackend", "FLUX2_LORA_TARGETS"]

#: attention of both streams of the double blocks and the fused projection of the single blocks
FLUX2_LORA_TARGETS = ("attn.to_q", "attn.to_k", "attn.to_v", "attn.to_out.0", "attn.add_q_proj",
                      "attn.add_k_proj", "attn.add_v_proj", "attn.to_add_out", "attn.to_qkv_mlp_proj")


class Flux2KleinAdapter(FamilyAdapter):
    """FLUX.2-klein (base or distilled). Options: ``guidance_scale`` (CFG on the base models, 4.0 as
    the pipeline; ignored by distilled checkpoints), ``text_encoder_out_layers`` ((9, 18, 27)),
    ``max_sequence_length`` (Qwen3 tokens, 512)."""

    family = "flux2-klein"
    pipeline_classes = ("Flux2KleinPipeline",)
    default_repo = "black-forest-labs/FLUX.2-klein-base-4B"
    text_encoder_names = ("text_encoder",)
    lora_targets = FLUX2_LORA_TARGETS
    single_file_layout = "flux2"  # the BFL FLUX.2 layout, what ComfyUI's Flux2 model loads
    parity_atol = 2e-5

    def __init__(self, guidance_scale: float = 4.0, text_encoder_out_layers: tuple[int, ...] = (9, 18, 27),
                 max_sequence_length: int = 512) -> None:
        super().__init__(max_sequence_length)
        self.cfg = float(guidance_scale)
        self.text_encoder_out_layers = tuple(int(n) for n in text_encoder_out_layers)
        self._num_steps = 1
        self._ids: Tensor | None = None

    @property
    def guidance_scale(self) -> float:  # type: ignore[override]
        """The CFG scale the backend applies: none on distilled checkpoints, as the pipeline."""
        return 1.0 if self.pipe.config.get("is_distilled", False) else self.cfg

    @classmethod
    def planner_sizes(cls, config: Any, vae_config: Any, index: Any, adapter: FamilyAdapter) -> dict[str, Any]:
        """The generic geometry with CFG as :attr:`guidance_scale` decides it (none when distilled)."""
        from ..planning import generic_sizes

        return generic_sizes(config, vae_config, adapter, cfg=not index.get("is_distilled", False) and float(adapter.cfg) > 1.0)

    def resolution_multiple(self) -> int:
        return 2 * self.vae_scale_factor

    def latent_shape(self) -> tuple[int, ...]:
        h, w = (side // (2 * self.vae_scale_factor) for side in self.resolution)
        return (int(self.transformer.config.in_channels), h, w)

    def image_seq_len(self) -> int:
        _, h, w = self.latent_shape()
        return h * w

    def base_sigmas(self, num_steps: int) -> np.ndarray | None:
        self._num_steps = num_steps
        return None if self.pipe.scheduler.config.get("use_flow_sigmas", False) else super().base_sigmas(num_steps)

    def mu(self) -> float:
        from diffusers.pipelines.flux2.pipeline_flux2_klein import compute_empirical_mu

        return compute_empirical_mu(image_seq_len=self.image_seq_len(), num_steps=self._num_steps)

    def pack(self, x: Tensor) -> Tensor:
        return x.flatten(2).transpose(1, 2)

    def unpack(self, hidden: Tensor, batch: int) -> Tensor:
        return hidden.transpose(1, 2).reshape(batch, *self.latent_shape())

    def encode_prompts(self, prompts: list[str]) -> dict[str, Tensor]:
        embeds, _ = self.pipe.encode_prompt(prompt=prompts, device=self.device, max_sequence_length=self.max_sequence_length,
                                            text_encoder_out_layers=self.text_encoder_out_layers)
        return {"prompt_embeds": embeds}

    def timestep(self, sigma: Tensor) -> Tensor:
        return (sigma * 1000.0).to(self.dtype) / 1000

    def forward(self, hidden: Tensor, timestep: Tensor, cond: dict[str, Tensor]) -> Tensor:
        embeds = cond["prompt_embeds"]
        if self._ids is None:
            self._ids = self.pipe._prepare_latent_ids(torch.empty(1, *self.latent_shape()))[0].to(self.device)
        img_ids = self._ids.expand(hidden.shape[0], -1, -1)
        return self.transformer(hidden_states=hidden, timestep=timestep, guidance=self._guidance(hidden.shape[0]),
                                encoder_hidden_states=embeds,
                                txt_ids=self.pipe._prepare_text_ids(embeds).to(self.device), img_ids=img_ids,
                                return_dict=False)[0]

    def _guidance(self, batch: int) -> Tensor | None:
        """The guidance-embedding input (klein has none)."""
        return None

    def _bn(self, like: Tensor) -> tuple[Tensor, Tensor]:
        vae = self.pipe.vae
        mean = vae.bn.running_mean.view(1, -1, 1, 1).to(like.device, like.dtype)
        std = torch.sqrt(vae.bn.running_var.view(1, -1, 1, 1) + vae.config.batch_norm_eps).to(like.device, like.dtype)
        return mean, std

    def decode_latents(self, x: Tensor) -> Tensor:
        latents = x.to(self.device, self.pipe.vae.dtype)
        mean, std = self._bn(latents)
        latents = self.pipe._unpatchify_latents(latents * std + mean)
        return self.pipe.vae.decode(latents, return_dict=False)[0]

    def pipeline_kwargs(self) -> dict[str, Any]:
        return {**super().pipeline_kwargs(), "guidance_scale": self.cfg,
                "text_encoder_out_layers": self.text_encoder_out_layers}

    def pipeline_latents(self, output: Tensor) -> Tensor:
        mean, std = self._bn(output)
        return (self.pipe._patchify_latents(output) - mean) / std

    def describe(self) -> dict[str, Any]:
        return {**super().describe(), "guidance_scale": self.cfg, "text_encoder_out_layers": list(self.text_encoder_out_layers)}


class Flux2DevAdapter(Flux2KleinAdapter):
    """FLUX.2-dev. Options: ``guidance`` (the distilled guidance scale fed to the guidance embedding,
    4.0 as the pipeline), ``text_encoder_out_layers`` ((10, 20, 30)), ``max_sequence_length`` (512)."""

    family = "flux2"
    pipeline_classes = ("Flux2Pipeline",)
    default_repo = "black-forest-labs/FLUX.2-dev"

    def __init__(self, guidance: float = 4.0, text_encoder_out_layers: tuple[int, ...] = (10, 20, 30),
                 max_sequence_length: int = 512) -> None:
        super().__init__(1.0, text_encoder_out_layers, max_sequence_length)
        self.guidance = float(guidance)

    @property
    def guidance_scale(self) -> float:  # type: ignore[override]
        return 1.0  # guidance-distilled: no CFG

    def _guidance(self, batch: int) -> Tensor:
        return torch.full((batch,), self.guidance, device=self.device, dtype=torch.float32)

    def pipeline_kwargs(self) -> dict[str, Any]:
        return {**super().pipeline_kwargs(), "guidance_scale": self.guidance}

    def pipeline_latents(self, output: Tensor) -> Tensor:
        return self.unpack(output, output.shape[0])

    def describe(self) -> dict[str, Any]:
        return {"max_sequence_length": self.max_sequence_length, "guidance": self.guidance,
                "text_encoder_out_layers": list(self.text_encoder_out_layers)}


#: ``--backend flux2-klein``: the generic backend bound to this family
Flux2KleinBackend = DiffusersFlowBackend.for_family(Flux2KleinAdapter)
#: ``--backend flux2``: FLUX.2-dev
Flux2DevBackend = DiffusersFlowBackend.for_family(Flux2DevAdapter)
