"""FLUX.1-dev through diffusers' ``FluxPipeline``: the ``flux`` backend.

FLUX.1-dev is guidance-distilled: the guidance scale enters the transformer as an embedding
(default 3.5) and there is no classifier-free guidance, so one forward per latent.

Latent convention. The :class:`~treesdk.interfaces.VelocityModel` API sees *unpacked* latents
``[B, C, h, w]`` with ``C = transformer.in_channels // 4`` (16 for FLUX.1-dev) and
``h = w = 2 * (resolution // (2 * vae_scale_factor))`` (128 at 1024 px) — the tensor
``FluxPipeline.prepare_latents`` draws with ``randn_tensor((B, C, h, w), generator)`` *before* it
packs it. :meth:`FluxBackend.velocity` packs them into ``[B, (h/2)(w/2), 4C]`` tokens (2x2 patches),
runs the transformer with the image/text position ids and the guidance embedding, and unpacks the
output, so initial noise drawn like the pipeline draws it gives the pipeline's trajectory.

Sigma grid: ``linspace(1, 1/T, T)`` shifted with the resolution-dependent ``mu`` (linear in the
packed sequence length, from the scheduler config) through the pipeline's own scheduler class,
then 0 — exactly what ``FluxPipeline.__call__`` uses.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from typing import Any

import numpy as np
import torch
from torch import Tensor

from treesdk.interfaces import Cond

from .diffusers_common import DiffusersBackend, dtype_kwargs, parse_device, parse_dtype, resolve_checkpoint

__all__ = ["FluxBackend", "FLUX_LORA_TARGETS", "FLUX_COMPONENTS", "pack_latents", "unpack_latents"]

DEFAULT_REPO = "black-forest-labs/FLUX.1-dev"

#: sub-folders of a FluxPipeline checkpoint (besides model_index.json)
FLUX_COMPONENTS = ("scheduler", "text_encoder", "text_encoder_2", "tokenizer", "tokenizer_2", "transformer", "vae")

#: default LoRA targets: attention (image and text streams) and both feed-forwards of the double
#: blocks, the attention of the single blocks — diffusers' ``train_dreambooth_lora_flux.py`` list
FLUX_LORA_TARGETS = (
    "attn.to_q",
    "attn.to_k",
    "attn.to_v",
    "attn.to_out.0",
    "attn.add_q_proj",
    "attn.add_k_proj",
    "attn.add_v_proj",
    "attn.to_add_out",
    "ff.net.0.proj",
    "ff.net.2",
    "ff_context.net.0.proj",
    "ff_context.net.2",
)


def pack_latents(latents: Tensor) -> Tensor:
    """``[B, C, h, w]`` -> ``[B, (h/2)(w/2), 4C]`` 2x2 patches, as ``FluxPipeline._pack_latents``."""
    b, c, h, w = latents.shape
    x = latents.view(b, c, h // 2, 2, w // 2, 2).permute(0, 2, 4, 1, 3, 5)
    return x.reshape(b, (h // 2) * (w // 2), c * 4)


def unpack_latents(packed: Tensor, h: int, w: int) -> Tensor:
    """Inverse of :func:`pack_latents`: ``[B, (h/2)(w/2), 4C]`` -> ``[B, C, h, w]``
    (``FluxPipeline._unpack_latents`` with the latent size given directly)."""
    b, _, c4 = packed.shape
    x = packed.view(b, h // 2, w // 2, c4 // 4, 2, 2).permute(0, 3, 1, 4, 2, 5)
    return x.reshape(b, c4 // 4, h, w)


def image_ids(h: int, w: int, device: torch.device, dtype: torch.dtype) -> Tensor:
    """``[(h/2)(w/2), 3]`` position ids (0, row, column) of the packed tokens
    (``FluxPipeline._prepare_latent_image_ids``)."""
    ids = torch.zeros(h // 2, w // 2, 3)
    ids[..., 1] = ids[..., 1] + torch.arange(h // 2)[:, None]
    ids[..., 2] = ids[..., 2] + torch.arange(w // 2)[None, :]
    return ids.reshape(-1, 3).to(device=device, dtype=dtype)


class FluxBackend(DiffusersBackend):
    """FLUX.1-dev (or any ``FluxPipeline`` checkpoint) as a :class:`~treesdk.interfaces.VelocityModel`.

    Args:
        model: a folder in the hub layout (``model_index.json``, ``scheduler/``, ``text_encoder/``,
            ``text_encoder_2/``, ``tokenizer/``, ``tokenizer_2/``, ``transformer/``, ``vae/``), or a
            hub repo id found in the local HF cache (``local_files_only``). None:
            ``black-forest-labs/FLUX.1-dev`` from the cache. Never downloads.
        resolution: image side in pixels (square); None = the pipeline default
            (``default_sample_size * vae_scale_factor``, 1024 for FLUX.1-dev). Must be a multiple
            of ``2 * vae_scale_factor`` (16).
        device: compute device; None = cuda if available else cpu.
        dtype: ``"bfloat16"`` (default) or ``"float32"`` (or ``"float16"``) for all weights; LoRA
            weights are float32 regardless.
        guidance: the distilled guidance scale fed to the guidance embedding (ignored by checkpoints
            without one, e.g. FLUX.1-schnell).
        lora_rank: LoRA rank; 0 trains the whole transformer.
        lora_alpha: LoRA alpha; None = ``lora_rank`` (scale 1).
        lora_targets: peft target modules; None = :data:`FLUX_LORA_TARGETS`.
        gradient_checkpointing: ``transformer.enable_gradient_checkpointing()``.
        offload_text_encoders: keep CLIP and T5 on the CPU, moving them to the device only to
            encode prompts not yet in the cache.
        max_sequence_length: T5 tokens (512 as FLUX.1-dev's pipeline default).
        prompt_cache_size: prompts whose embeddings are kept (LRU, on the CPU); 0 = no cache.
        pipeline: an already built ``FluxPipeline`` to wrap instead of loading ``model`` (its text
            encoders and VAE may be None when only :meth:`velocity` is needed, as in
            ``benchmarks/flux_step.py``); ``model`` is then only a label for :meth:`describe`.

    Attributes used by :mod:`treesdk_backends.diffusers_export`: ``pipe`` (the ``FluxPipeline``),
    ``transformer`` (``pipe.transformer``, with the adapter), ``family`` (``"flux"``),
    ``lora_config`` (peft ``LoraConfig`` or None for a full fine-tune).
    """

    name = "flux"
    family = "flux"
    default_lora_targets = FLUX_LORA_TARGETS

    def __init__(
        self,
        model: str | os.PathLike | None = None,
        resolution: int | None = None,
        device: str | torch.device | None = None,
        dtype: str | torch.dtype = "bfloat16",
        guidance: float = 3.5,
        lora_rank: int = 16,
        lora_alpha: float | None = None,
        lora_targets: Sequence[str] | None = None,
        gradient_checkpointing: bool = False,
        offload_text_encoders: bool = False,
        max_sequence_length: int = 512,
        prompt_cache_size: int = 1024,
        pipeline: Any = None,
    ) -> None:
        from diffusers import FlowMatchEulerDiscreteScheduler, FluxPipeline

        self._device = parse_device(device)
        self.dtype = parse_dtype(dtype)
        if pipeline is None:
            self.model_path, self.model_source = resolve_checkpoint(model, DEFAULT_REPO, FLUX_COMPONENTS, "FLUX")
            self.pipe = FluxPipeline.from_pretrained(
                self.model_path, local_files_only=True, **dtype_kwargs(self.dtype)
            )
        else:  # an in-memory pipeline (benchmarks, notebooks); text encoders / VAE may be None
            if not isinstance(pipeline, FluxPipeline):
                raise TypeError(f"pipeline must be a diffusers FluxPipeline, got {type(pipeline).__name__}")
            self.model_path, self.model_source = "<in-memory>", str(model or "<in-memory FluxPipeline>")
            self.pipe = pipeline
            for component in self.pipe.components.values():
                if isinstance(component, torch.nn.Module) and component.dtype != self.dtype:
                    component.to(dtype=self.dtype)
        self.pipe.set_progress_bar_config(disable=True)
        self.transformer = self.pipe.transformer
        self.guidance = float(guidance)
        self.max_sequence_length = int(max_sequence_length)
        self.offload_text_encoders = bool(offload_text_encoders)

        self.vae_scale_factor = int(self.pipe.vae_scale_factor)
        multiple = 2 * self.vae_scale_factor
        self.resolution = int(resolution or self.pipe.default_sample_size * self.vae_scale_factor)
        if self.resolution <= 0 or self.resolution % multiple:
            raise ValueError(
                f"FLUX resolution must be a positive multiple of {multiple} (VAE factor x 2x2 packing), "
                f"got {resolution}"
            )
        side = 2 * (self.resolution // multiple)
        self._latent_shape = (int(self.transformer.config.in_channels) // 4, side, side)
        # a private scheduler of the pipeline's class and config: sigmas() must not disturb the
        # pipeline's own scheduler state (a pipe() call in between would otherwise be affected)
        self._scheduler = FlowMatchEulerDiscreteScheduler.from_config(self.pipe.scheduler.config)

        self._setup_training(lora_rank, lora_alpha, lora_targets, gradient_checkpointing)
        self.transformer.to(self._device)
        for name in ("vae", "text_encoder", "text_encoder_2"):
            module = getattr(self.pipe, name, None)
            if module is not None:
                module.to("cpu" if name != "vae" and self.offload_text_encoders else self._device)
        self._init_prompt_cache(prompt_cache_size)
        self._img_ids: Tensor | None = None

    # -- geometry and grid ---------------------------------------------------------------------

    @property
    def latent_shape(self) -> tuple[int, int, int]:
        """``(C, h, w)`` unpacked latent, e.g. ``(16, 128, 128)`` for FLUX.1-dev at 1024 px."""
        return self._latent_shape

    @property
    def image_seq_len(self) -> int:
        """Packed image tokens ``(h/2) * (w/2)``; sets the grid's shift ``mu``."""
        _, h, w = self._latent_shape
        return (h // 2) * (w // 2)

    @property
    def mu(self) -> float:
        """The resolution-dependent shift as ``FluxPipeline`` computes it (``calculate_shift``: linear
        in :attr:`image_seq_len` through (256, 0.5) and (4096, 1.15) with FLUX.1-dev's scheduler
        config; the same line as :func:`treesdk.sde.flux_mu`). Schedulers without dynamic shifting
        ignore it and apply their static ``shift``."""
        config = self._scheduler.config
        base_seq, max_seq = config.get("base_image_seq_len", 256), config.get("max_image_seq_len", 4096)
        base_shift, max_shift = config.get("base_shift", 0.5), config.get("max_shift", 1.15)
        slope = (max_shift - base_shift) / (max_seq - base_seq)
        return self.image_seq_len * slope + base_shift - slope * base_seq

    def sigmas(self, num_steps: int) -> Tensor:
        """float32 ``[T + 1]``: ``linspace(1, 1/T, T)`` through the pipeline scheduler's
        ``set_timesteps(sigmas=..., mu=...)``, then the trailing 0 (as ``FluxPipeline.__call__``)."""
        if num_steps < 1:
            raise ValueError(f"num_steps must be >= 1, got {num_steps}")
        if self._scheduler.config.get("use_flow_sigmas", False):
            self._scheduler.set_timesteps(num_steps, mu=self.mu, device="cpu")
        else:
            base = np.linspace(1.0, 1.0 / num_steps, num_steps)
            self._scheduler.set_timesteps(sigmas=base, mu=self.mu, device="cpu")
        return self._scheduler.sigmas.detach().to(torch.float32).clone()

    # -- prompts -------------------------------------------------------------------------------

    def encode(self, prompts: Sequence[str]) -> Cond:
        """``{"prompt_embeds": [B, L, D_t5], "pooled_prompt_embeds": [B, D_clip]}`` in the model
        dtype on the device; each distinct prompt is encoded once (``pipe.encode_prompt``, batched)
        and kept in an LRU cache of ``prompt_cache_size`` prompts on the CPU."""
        prompts = self._check_prompts(prompts)
        if not prompts:
            raise ValueError("encode() needs at least one prompt")

        def encode_batch(todo: list[str]) -> tuple[Tensor, Tensor]:
            if self.pipe.text_encoder is None or self.pipe.text_encoder_2 is None:
                raise ValueError(f"cannot encode {todo[0]!r}: this FluxPipeline has no text encoders")
            embeds, pooled, _ = self.pipe.encode_prompt(
                prompt=todo, prompt_2=None, device=self._device, max_sequence_length=self.max_sequence_length
            )
            return embeds, pooled

        rows = self._prompt_rows(prompts, encode_batch)
        return {
            "prompt_embeds": self._stack_rows(rows, prompts, 0),
            "pooled_prompt_embeds": self._stack_rows(rows, prompts, 1),
        }

    # -- the model -----------------------------------------------------------------------------

    def velocity(self, x: Tensor, sigma: Tensor, cond: Cond) -> Tensor:
        """``v = noise - x0`` for unpacked latents ``x`` ``[B, C, h, w]``; returns ``x``'s dtype.

        The timestep is passed as ``(sigma * 1000 in the model dtype) / 1000``, exactly as
        ``FluxPipeline`` turns the scheduler's timesteps into the transformer's input.
        """
        self._check_latents(x)
        b, _, h, w = x.shape
        for key in ("prompt_embeds", "pooled_prompt_embeds"):
            if key not in cond or cond[key].shape[0] != b:
                got = None if key not in cond else tuple(cond[key].shape)
                raise ValueError(f"flux cond[{key!r}] must have leading dimension {b}, got {got}")
        s = self._sigma_batch(sigma, b)
        timestep = (s * 1000.0).to(self.dtype) / 1000
        if self._img_ids is None:
            self._img_ids = image_ids(h, w, self._device, self.dtype)
        embeds = cond["prompt_embeds"].to(self._device, self.dtype)
        txt_ids = torch.zeros(embeds.shape[1], 3, device=self._device, dtype=self.dtype)
        guidance = None
        if self.transformer.config.guidance_embeds:
            guidance = torch.full((b,), self.guidance, device=self._device, dtype=torch.float32)
        out = self.transformer(
            hidden_states=pack_latents(x.to(self._device, self.dtype)),
            timestep=timestep,
            guidance=guidance,
            pooled_projections=cond["pooled_prompt_embeds"].to(self._device, self.dtype),
            encoder_hidden_states=embeds,
            txt_ids=txt_ids,
            img_ids=self._img_ids,
            return_dict=False,
        )[0]
        return unpack_latents(out, h, w).to(x.dtype)

    @torch.no_grad()
    def decode(self, x: Tensor) -> Tensor:
        """Unpacked latents ``[B, C, h, w]`` at sigma 0 -> float32 images ``[B, 3, H, W]`` in [0, 1]:
        ``vae.decode(x / scaling_factor + shift_factor)``, then ``(img / 2 + 0.5).clamp(0, 1)``."""
        self._check_latents(x)
        vae = self.pipe.vae
        if vae is None:
            raise ValueError("cannot decode: this FluxPipeline has no VAE")
        shift = vae.config.shift_factor or 0.0
        latents = x.to(self._device, vae.dtype) / vae.config.scaling_factor + shift
        images = vae.decode(latents, return_dict=False)[0]
        return (images.float() / 2 + 0.5).clamp(0, 1)

    def describe(self) -> dict[str, Any]:
        info = super().describe()
        info.update(guidance=self.guidance, max_sequence_length=self.max_sequence_length,
                    mu=float(self.mu))
        return info

