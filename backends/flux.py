"""FLUX.1 through diffusers' ``FluxPipeline``: the ``flux`` backend.

The generic :class:`~treesdk_backends.diffusers.DiffusersFlowBackend` bound to the FLUX family
(:mod:`treesdk_backends.diffusers.families.flux`: guidance embedding, no CFG, 2x2-packed latents,
resolution-dependent shift ``mu``). The backend's latents are *unpacked* ``[B, C, h, w]``
(``C = in_channels // 4``, ``h = w = 2 * (resolution // (2 * vae_scale_factor))``), the tensor
``FluxPipeline.prepare_latents`` draws before packing, so noise drawn like the pipeline draws it
gives the pipeline's trajectory. Options beyond the generic ones: ``guidance`` (3.5),
``max_sequence_length`` (512).
"""

from __future__ import annotations

from .diffusers import DiffusersFlowBackend
from .diffusers.families.flux import (
    FLUX_COMPONENTS,
    FLUX_LORA_TARGETS,
    FluxAdapter,
    image_ids,
    pack_latents,
    unpack_latents,
)

__all__ = ["FluxBackend", "FLUX_LORA_TARGETS", "FLUX_COMPONENTS", "pack_latents", "unpack_latents", "image_ids"]

DEFAULT_REPO = FluxAdapter.default_repo


class FluxBackend(DiffusersFlowBackend):
    """FLUX.1-dev (or any ``FluxPipeline`` checkpoint); see :class:`DiffusersFlowBackend` for the
    arguments and :class:`~treesdk_backends.diffusers.families.flux.FluxAdapter` for ``guidance``
    and ``max_sequence_length``."""

    name = "flux"
    adapter_class = FluxAdapter
    adapter: FluxAdapter

    @property
    def guidance(self) -> float:
        """The distilled guidance scale fed to the guidance embedding."""
        return self.adapter.guidance

    @guidance.setter
    def guidance(self, value: float) -> None:
        self.adapter.guidance = float(value)

    @property
    def max_sequence_length(self) -> int | None:
        return self.adapter.max_sequence_length

    @property
    def image_seq_len(self) -> int:
        """Packed image tokens ``(h/2) * (w/2)``; sets the grid's shift ``mu``."""
        return self.adapter.image_seq_len()

    @property
    def mu(self) -> float:
        """The resolution-dependent shift as ``FluxPipeline`` computes it (``calculate_shift``, the
        same line as :func:`treesdk.sde.flux_mu`); schedulers without dynamic shifting ignore it."""
        from .diffusers.adapter import calculate_shift

        return calculate_shift(self.image_seq_len, self._scheduler.config)
