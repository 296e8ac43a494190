"""SD3 / SD3.5 (``StableDiffusion3Pipeline``): classifier-free guidance, unpacked VAE latents, static shift.

Latents are the VAE's ``[B, C, H/8, W/8]`` (the transformer patchifies itself). CFG runs the
negative and positive halves as one batch of ``2B`` (``guidance_scale <= 1``: no negative half).
The grid is the scheduler's own ``set_timesteps(T)`` (no ``sigmas=``): SD3 spaces the T timesteps
between ``sigma_max`` and the shifted ``sigma_min`` and shifts again (static shift 3.0 for SD3.5).
"""

from __future__ import annotations

from typing import Any

from torch import Tensor

from treesdk.model_facts import ModelFacts

from ..adapter import FamilyAdapter
from ..sizes import SD3_ACTIVATIONS, SD3_MODELS, block_kinds, known_facts

__all__ = ["SD3Adapter", "SD3_COMPONENTS", "SD3_LORA_TARGETS"]

#: sub-folders of a StableDiffusion3Pipeline checkpoint (besides model_index.json)
SD3_COMPONENTS = ("scheduler", "text_encoder", "text_encoder_2", "text_encoder_3",
                  "tokenizer", "tokenizer_2", "tokenizer_3", "transformer", "vae")

#: the joint attention projections of both streams (Flow-GRPO, ``train_dreambooth_lora_sd3.py``)
SD3_LORA_TARGETS = ("attn.to_q", "attn.to_k", "attn.to_v", "attn.to_out.0",
                    "attn.add_q_proj", "attn.add_k_proj", "attn.add_v_proj", "attn.to_add_out")


class SD3Adapter(FamilyAdapter):
    """SD3 / SD3.5. Options: ``guidance_scale`` (CFG, 4.5 as Flow-GRPO for SD3.5-Medium; ``<= 1``
    disables it), ``negative_prompt`` (``""``), ``max_sequence_length`` (T5 tokens, 256), ``shift``
    (the grid's static shift; None = the scheduler config's; the pipeline itself keeps its own)."""

    family = "sd3"
    pipeline_classes = ("StableDiffusion3Pipeline",)
    default_repo = "stabilityai/stable-diffusion-3.5-medium"
    components = SD3_COMPONENTS
    lora_targets = SD3_LORA_TARGETS
    single_file_layout = "sd3"
    activation_table = SD3_ACTIVATIONS
    planner_buffers = ("pos_embed.pos_embed",)
    known_models = SD3_MODELS
    default_known_model = "SD3.5-medium"

    @classmethod
    def planner_sizes(cls, config: Any, vae_config: Any, index: Any, adapter: FamilyAdapter) -> dict[str, Any]:
        """The generic geometry; the text stream is 77 CLIP tokens plus the T5 length, SD3's block kinds."""
        sizes = super().planner_sizes(config, vae_config, index, adapter)
        return {**sizes, "text_tokens": 77 + sizes["text_tokens"], "blocks": block_kinds("sd3", config)}

    @classmethod
    def known_model_facts(cls, name: str, adapter: FamilyAdapter, source: str) -> ModelFacts:
        return known_facts("sd3", name, cls.known_models[name], adapter.max_sequence_length, float(adapter.guidance_scale) > 1,
                           cls.lora_targets, source)

    def __init__(self, guidance_scale: float = 4.5, negative_prompt: str = "", max_sequence_length: int = 256,
                 shift: float | None = None) -> None:
        super().__init__(max_sequence_length)
        self.guidance_scale = float(guidance_scale)
        self.negative_prompt = str(negative_prompt)
        self._shift = None if shift is None else float(shift)

    def scheduler_overrides(self) -> dict[str, Any]:
        return {} if self._shift is None else {"shift": self._shift}

    def base_sigmas(self, num_steps: int) -> None:
        return None

    @property
    def shift(self) -> float:
        """The static time shift: the ``shift`` option, else the scheduler's (3.0 for SD3/SD3.5)."""
        return float(self.pipe.scheduler.config.shift if self._shift is None else self._shift)

    def encode_prompts(self, prompts: list[str]) -> dict[str, Tensor]:
        embeds, _, pooled, _ = self.pipe.encode_prompt(
            prompt=prompts, prompt_2=None, prompt_3=None, device=self.device,
            do_classifier_free_guidance=False, max_sequence_length=self.max_sequence_length,
        )
        return {"prompt_embeds": embeds, "pooled_prompt_embeds": pooled}

    def forward(self, hidden: Tensor, timestep: Tensor, cond: dict[str, Tensor]) -> Tensor:
        return self.transformer(
            hidden_states=hidden, timestep=timestep, encoder_hidden_states=cond["prompt_embeds"],
            pooled_projections=cond["pooled_prompt_embeds"], return_dict=False,
        )[0]

    def pipeline_kwargs(self) -> dict[str, Any]:
        return {**super().pipeline_kwargs(), "guidance_scale": self.guidance_scale,
                "negative_prompt": self.negative_prompt}

    def describe(self) -> dict[str, Any]:
        return {**super().describe(), "guidance_scale": self.guidance_scale,
                "negative_prompt": self.negative_prompt, "shift": self.shift}
