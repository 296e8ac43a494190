"""FLUX.1-schnell (``FluxPipeline`` without a guidance embedding): timestep-distilled, no CFG, no
guidance input, static shift 1 (its scheduler has no dynamic shifting), a few steps.

Everything else (CLIP + T5 prompts, 2x2-packed latents, position ids, ``timestep / 1000``) is
FLUX.1's, so the adapter is :class:`~.flux.FluxAdapter` minus the guidance option; the two share
the pipeline class and are told apart by ``transformer/config.json``'s ``guidance_embeds``.
"""

from __future__ import annotations

from typing import Any

from ..backend import DiffusersFlowBackend
from .flux import FluxAdapter, has_guidance_embedding

__all__ = ["FluxSchnellAdapter", "FluxSchnellBackend", "has_guidance_embedding"]


class FluxSchnellAdapter(FluxAdapter):
    """FLUX.1-schnell and any ``FluxPipeline`` checkpoint without a guidance embedding. Options:
    ``max_sequence_length`` (T5 tokens; 256 as schnell's pipeline examples)."""

    family = "flux-schnell"
    default_repo = "black-forest-labs/FLUX.1-schnell"
    known_models = {}  # FLUX.1-dev's table has the guidance embedding: size schnell from its folder
    default_known_model = None

    def __init__(self, max_sequence_length: int = 256) -> None:
        super().__init__(guidance=0.0, max_sequence_length=max_sequence_length)

    @classmethod
    def accepts(cls, model_index: dict[str, Any], folder: Any) -> bool:
        return has_guidance_embedding(folder) is False

    def latent_shape(self) -> tuple[int, ...]:
        if self.transformer.config.guidance_embeds:
            raise ValueError("flux-schnell: this FluxPipeline has a guidance embedding (FLUX.1-dev); "
                             "use --backend flux (or --backend diffusers, which reads it from the checkpoint)")
        return super().latent_shape()

    def pipeline_kwargs(self) -> dict[str, Any]:
        return {**super().pipeline_kwargs(), "guidance_scale": 0.0}

    def describe(self) -> dict[str, Any]:
        return {"max_sequence_length": self.max_sequence_length}


#: ``--backend flux-schnell``: the generic backend bound to this family
FluxSchnellBackend = DiffusersFlowBackend.for_family(FluxSchnellAdapter)
