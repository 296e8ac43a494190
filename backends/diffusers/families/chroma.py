"""Chroma (``ChromaPipeline``): FLUX.1-schnell-derived, T5 only, real CFG, T5 padding masked.

Latents, packing, position ids, grid (dynamic shift) and ``timestep / 1000`` are FLUX.1's
(:class:`~.flux.FluxAdapter`). What differs: no CLIP / pooled projection and no guidance embedding
(the modulations come from the transformer's approximator network); prompts are T5 states of a
fixed length with an attention mask that keeps the text tokens and the *first* padding token,
extended with ones over the image tokens as the pipeline does; CFG with a negative prompt.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor

from ..backend import DiffusersFlowBackend
from .flux import FluxAdapter, image_ids

__all__ = ["ChromaAdapter", "ChromaBackend"]


class ChromaAdapter(FluxAdapter):
    """Chroma1 (HD / base). Options: ``guidance_scale`` (CFG, 5.0 as the pipeline; ``<= 1``
    disables it), ``negative_prompt`` (``""``), ``max_sequence_length`` (T5 tokens, 512)."""

    family = "chroma"
    pipeline_classes = ("ChromaPipeline",)
    default_repo = "lodestones/Chroma1-HD"
    components = ("scheduler", "text_encoder", "tokenizer", "transformer", "vae")
    text_encoder_names = ("text_encoder",)
    single_file_layout = "chroma"  # the BFL-style layout ComfyUI's Chroma model loads
    activation_table = None  # FLUX.1's table was measured with its modulation layers, which Chroma lacks
    known_models = {}
    default_known_model = None

    def __init__(self, guidance_scale: float = 5.0, negative_prompt: str = "", max_sequence_length: int = 512) -> None:
        super().__init__(guidance=0.0, max_sequence_length=max_sequence_length)
        self.guidance_scale = float(guidance_scale)
        self.negative_prompt = str(negative_prompt)

    @classmethod
    def accepts(cls, model_index: dict[str, Any], folder: Any) -> bool:
        return True

    def encode_prompts(self, prompts: list[str]) -> dict[str, Tensor]:
        embeds, _, mask, *_ = self.pipe.encode_prompt(
            prompt=prompts, negative_prompt=None, do_classifier_free_guidance=False, device=self.device,
            max_sequence_length=self.max_sequence_length,
        )
        return {"prompt_embeds": embeds, "text_mask": mask.bool()}

    def forward(self, hidden: Tensor, timestep: Tensor, cond: dict[str, Tensor]) -> Tensor:
        if self._img_ids is None:
            _, h, w = self.latent_shape()
            self._img_ids = image_ids(h, w, self.device, self.dtype)
        embeds, text_mask = cond["prompt_embeds"], cond["text_mask"]
        image_mask = torch.ones(hidden.shape[0], hidden.shape[1], device=self.device, dtype=torch.bool)
        mask = torch.cat([text_mask, image_mask], dim=1).to(self.dtype)  # the pipeline's float mask
        return self.transformer(
            hidden_states=hidden, timestep=timestep, encoder_hidden_states=embeds,
            txt_ids=torch.zeros(embeds.shape[1], 3, device=self.device, dtype=self.dtype),
            img_ids=self._img_ids, attention_mask=mask, return_dict=False,
        )[0]

    def pipeline_kwargs(self) -> dict[str, Any]:
        height, width = self.resolution
        return {"height": height, "width": width, "max_sequence_length": self.max_sequence_length,
                "guidance_scale": self.guidance_scale, "negative_prompt": self.negative_prompt}

    def describe(self) -> dict[str, Any]:
        return {"max_sequence_length": self.max_sequence_length, "guidance_scale": self.guidance_scale,
                "negative_prompt": self.negative_prompt}


#: ``--backend chroma``: the generic backend bound to this family
ChromaBackend = DiffusersFlowBackend.for_family(ChromaAdapter)
