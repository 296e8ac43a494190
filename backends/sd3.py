"""Stable Diffusion 3 / 3.5 through diffusers' ``StableDiffusion3Pipeline``: the ``sd3`` backend.

The generic :class:`~treesdk_backends.diffusers.DiffusersFlowBackend` bound to the SD3 family
(:mod:`treesdk_backends.diffusers.families.sd3`): the VAE's latents ``[B, C, H/8, W/8]``,
classifier-free guidance inside :meth:`velocity` (negative and positive halves as one batch of
``2B``, ``v_uncond + g * (v_cond - v_uncond)``; ``guidance_scale <= 1``: no negative half at all),
and the scheduler's own grid with its static shift (3.0 for SD3.5). SD3's pipeline does *not* start
from ``linspace(1, 1/T, T)``: its scheduler spaces the T timesteps between ``sigma_max`` and the
shifted ``sigma_min``, so :func:`treesdk.sde.sigma_grid` with ``shift=3`` differs slightly; the
scheduler is the reference. Options beyond the generic ones: ``guidance_scale`` (4.5),
``negative_prompt`` (``""``), ``max_sequence_length`` (256).
"""

from __future__ import annotations

from .diffusers import DiffusersFlowBackend
from .diffusers.families.sd3 import SD3_COMPONENTS, SD3_LORA_TARGETS, SD3Adapter

__all__ = ["SD3Backend", "SD3_LORA_TARGETS", "SD3_COMPONENTS"]

DEFAULT_REPO = SD3Adapter.default_repo


class SD3Backend(DiffusersFlowBackend):
    """SD3 / SD3.5 (any ``StableDiffusion3Pipeline`` checkpoint); see :class:`DiffusersFlowBackend`
    and :class:`~treesdk_backends.diffusers.families.sd3.SD3Adapter`."""

    name = "sd3"
    adapter_class = SD3Adapter
    adapter: SD3Adapter

    @property
    def guidance_scale(self) -> float:
        """Classifier-free guidance scale; ``<= 1`` disables CFG."""
        return self.adapter.guidance_scale

    @guidance_scale.setter
    def guidance_scale(self, value: float) -> None:
        self.adapter.guidance_scale = float(value)

    @property
    def negative_prompt(self) -> str:
        return self.adapter.negative_prompt

    @property
    def max_sequence_length(self) -> int | None:
        return self.adapter.max_sequence_length

    @property
    def shift(self) -> float:
        """The scheduler's static time shift (3.0 for SD3/SD3.5)."""
        return self.adapter.shift
