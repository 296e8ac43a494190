"""Lumina-Image 2.0 (``Lumina2Pipeline``): Gemma2 prompt features behind a system prompt, a
single-stream transformer, time running from 0 = noise to 1 = data, output ``x0 - noise``, CFG
renormalised to the conditional norm.

* Latents: the VAE's ``[B, C, h, w]`` (the pipeline assumes a VAE factor of 8), no packing.
* Timestep: ``1 - t / 1000 = 1 - sigma``; the output is negated into ``noise - x0``.
* Grid: ``linspace(1, 1/T, T)`` through the scheduler; the pipeline computes ``mu`` from
  ``latents.shape[1]`` (the channel count), kept here so dynamic-shift configs give its grid.
* Prompts: ``"<system prompt> <Prompt Start> <prompt>"``, second-to-last Gemma2 layer, padded to
  ``max_sequence_length`` with the tokenizer's mask; the *negative* prompt has no system prompt (as
  in the pipeline), so a training prompt equal to the negative prompt is encoded as the negative.
* CFG (``guidance_scale > 1``): ``u + g (c - u)``, rescaled to ``|c|`` along the last axis when
  ``cfg_normalization`` (the pipeline default). ``cfg_trunc_ratio`` is not supported (1.0).
"""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor

from ..adapter import FamilyAdapter
from ..backend import DiffusersFlowBackend

__all__ = ["Lumina2Adapter", "Lumina2Backend", "LUMINA2_LORA_TARGETS"]

#: attention projections of every block (main layers and both refiners)
LUMINA2_LORA_TARGETS = ("attn.to_q", "attn.to_k", "attn.to_v", "attn.to_out.0")


class Lumina2Adapter(FamilyAdapter):
    """Lumina-Image 2.0. Options: ``guidance_scale`` (CFG, 4.0 as the pipeline), ``negative_prompt``
    (``""``), ``cfg_normalization`` (True), ``system_prompt`` (None: the pipeline's),
    ``max_sequence_length`` (Gemma tokens including the system prompt, 256)."""

    family = "lumina2"
    pipeline_classes = ("Lumina2Pipeline", "Lumina2Text2ImgPipeline")  # the second: older model_index.json files
    default_repo = "Alpha-VLLM/Lumina-Image-2.0"
    text_encoder_names = ("text_encoder",)
    lora_targets = LUMINA2_LORA_TARGETS
    single_file_layout = "lumina2"  # the original layout, what ComfyUI's Lumina2 (NextDiT) model loads
    parity_atol = 2e-5

    def __init__(self, guidance_scale: float = 4.0, negative_prompt: str = "", cfg_normalization: bool = True,
                 system_prompt: str | None = None, max_sequence_length: int = 256) -> None:
        super().__init__(max_sequence_length)
        self.guidance_scale = float(guidance_scale)
        self.negative_prompt = str(negative_prompt)
        self.cfg_normalization = bool(cfg_normalization)
        self.system_prompt = system_prompt

    def image_seq_len(self) -> int:
        return int(self.transformer.config.in_channels)  # the pipeline's latents.shape[1]

    def encode_prompts(self, prompts: list[str]) -> dict[str, Tensor]:
        negative = float(self.guidance_scale) > 1.0
        embeds, masks = [], []
        for prompt in prompts:  # one at a time: the negative prompt is encoded without the system prompt
            if negative and prompt == self.negative_prompt:
                e, m = self.pipe._get_gemma_prompt_embeds([prompt], self.device, self.max_sequence_length)
            else:
                e, m, _, _ = self.pipe.encode_prompt(prompt=[prompt], do_classifier_free_guidance=False,
                                                     device=self.device, system_prompt=self.system_prompt,
                                                     max_sequence_length=self.max_sequence_length)
            embeds.append(e)
            masks.append(m)
        return {"prompt_embeds": torch.cat(embeds), "prompt_mask": torch.cat(masks)}

    def timestep(self, sigma: Tensor) -> Tensor:
        return 1 - (sigma * 1000.0) / 1000.0

    def forward(self, hidden: Tensor, timestep: Tensor, cond: dict[str, Tensor]) -> Tensor:
        return -self.transformer(hidden_states=hidden, timestep=timestep, encoder_hidden_states=cond["prompt_embeds"],
                                 encoder_attention_mask=cond["prompt_mask"], return_dict=False)[0]

    def combine_cfg(self, uncond: Tensor, cond: Tensor) -> Tensor:
        guided = uncond + self.guidance_scale * (cond - uncond)
        if not self.cfg_normalization:
            return guided
        return guided * (torch.norm(cond, dim=-1, keepdim=True) / torch.norm(guided, dim=-1, keepdim=True))

    def pipeline_kwargs(self) -> dict[str, Any]:
        return {**super().pipeline_kwargs(), "guidance_scale": self.guidance_scale,
                "negative_prompt": self.negative_prompt, "cfg_normalization": self.cfg_normalization,
                "cfg_trunc_ratio": 1.0, "system_prompt": self.system_prompt}

    def describe(self) -> dict[str, Any]:
        return {**super().describe(), "guidance_scale": self.guidance_scale, "negative_prompt": self.negative_prompt,
                "cfg_normalization": self.cfg_normalization, "system_prompt": self.system_prompt}


#: ``--backend lumina2``: the generic backend bound to this family
Lumina2Backend = DiffusersFlowBackend.for_family(Lumina2Adapter)
