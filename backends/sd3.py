"""Stable Diffusion 3 / 3.5 through diffusers' ``StableDiffusion3Pipeline``: the ``sd3`` backend.

Latents are the VAE's ``[B, C, H/8, W/8]`` (``C = transformer.in_channels``, 16 for SD3.5), exactly
what ``StableDiffusion3Pipeline.prepare_latents`` draws with ``randn_tensor``. Classifier-free
guidance lives inside :meth:`SD3Backend.velocity`: the unconditional and conditional halves go
through the transformer as one batch of ``2B`` and are combined as
``v_uncond + g * (v_cond - v_uncond)``; with ``guidance_scale <= 1`` (the pipeline's own test) there
is no unconditional half at all — half the cost, and the negative prompt is never encoded.

Sigma grid: the pipeline scheduler's ``set_timesteps(T)`` with its static shift (3.0 for SD3.5),
then 0. Note that SD3's pipeline does *not* start from ``linspace(1, 1/T, T)``: its scheduler spaces
the T timesteps between ``sigma_max`` and the shifted ``sigma_min = shift(1/1000)`` and shifts
again, so :func:`treesdk.sde.sigma_grid` with ``shift=3`` differs slightly; the scheduler is the
reference and :meth:`SD3Backend.sigmas` uses it.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from typing import Any

import torch
from torch import Tensor

from treesdk.interfaces import Cond

from .diffusers_common import DiffusersBackend, dtype_kwargs, parse_device, parse_dtype, resolve_checkpoint

__all__ = ["SD3Backend", "SD3_LORA_TARGETS", "SD3_COMPONENTS"]

DEFAULT_REPO = "stabilityai/stable-diffusion-3.5-medium"

#: sub-folders of a StableDiffusion3Pipeline checkpoint (besides model_index.json)
SD3_COMPONENTS = (
    "scheduler",
    "text_encoder",
    "text_encoder_2",
    "text_encoder_3",
    "tokenizer",
    "tokenizer_2",
    "tokenizer_3",
    "transformer",
    "vae",
)

#: default LoRA targets: the joint attention projections of both streams, as Flow-GRPO and
#: diffusers' ``train_dreambooth_lora_sd3.py`` use for SD3.5
SD3_LORA_TARGETS = (
    "attn.to_q",
    "attn.to_k",
    "attn.to_v",
    "attn.to_out.0",
    "attn.add_q_proj",
    "attn.add_k_proj",
    "attn.add_v_proj",
    "attn.to_add_out",
)


class SD3Backend(DiffusersBackend):
    """SD3 / SD3.5 (any ``StableDiffusion3Pipeline`` checkpoint) as a
    :class:`~treesdk.interfaces.VelocityModel`.

    Args:
        model: a folder in the hub layout (``model_index.json``, ``scheduler/``, ``text_encoder/``,
            ``text_encoder_2/``, ``text_encoder_3/``, ``tokenizer/``, ``tokenizer_2/``,
            ``tokenizer_3/``, ``transformer/``, ``vae/``) or a hub repo id in the local HF cache.
            None: ``stabilityai/stable-diffusion-3.5-medium`` from the cache. Never downloads.
        resolution: image side in pixels; None = the pipeline default
            (``transformer.sample_size * vae_scale_factor``). Must be a multiple of
            ``vae_scale_factor * patch_size`` (16).
        device: compute device; None = cuda if available else cpu.
        dtype: ``"bfloat16"`` (default), ``"float32"`` or ``"float16"``; LoRA weights are float32.
        guidance_scale: classifier-free guidance scale; ``<= 1`` disables CFG (one forward per
            latent). Default 4.5, what Flow-GRPO uses for SD3.5-Medium.
        negative_prompt: the unconditional prompt (the pipeline's default is ``""``).
        lora_rank: LoRA rank; 0 trains the whole transformer.
        lora_alpha: LoRA alpha; None = ``lora_rank`` (scale 1).
        lora_targets: peft target modules; None = :data:`SD3_LORA_TARGETS`.
        gradient_checkpointing: ``transformer.enable_gradient_checkpointing()``.
        offload_text_encoders: keep the two CLIPs and T5 on the CPU between encodings.
        max_sequence_length: T5 tokens (256, the pipeline default).
        prompt_cache_size: prompts whose embeddings are kept (LRU, on the CPU); 0 = no cache.

    Attributes for :mod:`treesdk_backends.diffusers_export`: ``pipe``, ``transformer``,
    ``family`` (``"sd3"``), ``lora_config``.
    """

    name = "sd3"
    family = "sd3"
    default_lora_targets = SD3_LORA_TARGETS

    def __init__(
        self,
        model: str | os.PathLike | None = None,
        resolution: int | None = None,
        device: str | torch.device | None = None,
        dtype: str | torch.dtype = "bfloat16",
        guidance_scale: float = 4.5,
        negative_prompt: str = "",
        lora_rank: int = 16,
        lora_alpha: float | None = None,
        lora_targets: Sequence[str] | None = None,
        gradient_checkpointing: bool = False,
        offload_text_encoders: bool = False,
        max_sequence_length: int = 256,
        prompt_cache_size: int = 1024,
    ) -> None:
        from diffusers import FlowMatchEulerDiscreteScheduler, StableDiffusion3Pipeline

        self._device = parse_device(device)
        self.dtype = parse_dtype(dtype)
        self.model_path, self.model_source = resolve_checkpoint(model, DEFAULT_REPO, SD3_COMPONENTS, "SD3")
        self.pipe = StableDiffusion3Pipeline.from_pretrained(
            self.model_path, local_files_only=True, **dtype_kwargs(self.dtype)
        )
        self.pipe.set_progress_bar_config(disable=True)
        self.transformer = self.pipe.transformer
        self.guidance_scale = float(guidance_scale)
        self.negative_prompt = str(negative_prompt)
        self.max_sequence_length = int(max_sequence_length)
        self.offload_text_encoders = bool(offload_text_encoders)

        self.vae_scale_factor = int(self.pipe.vae_scale_factor)
        multiple = self.vae_scale_factor * int(self.transformer.config.patch_size)
        self.resolution = int(resolution or self.pipe.default_sample_size * self.vae_scale_factor)
        if self.resolution <= 0 or self.resolution % multiple:
            raise ValueError(
                f"SD3 resolution must be a positive multiple of {multiple} (VAE factor x patch size), got {resolution}"
            )
        side = self.resolution // self.vae_scale_factor
        self._latent_shape = (int(self.transformer.config.in_channels), side, side)
        # private copy: sigmas() must not change the pipeline's scheduler state
        self._scheduler = FlowMatchEulerDiscreteScheduler.from_config(self.pipe.scheduler.config)
        if self._scheduler.config.get("use_dynamic_shifting", False):
            raise ValueError(
                "this SD3 checkpoint's scheduler uses dynamic shifting; the sd3 backend implements the static "
                f"shift of SD3/SD3.5 (scheduler config: {dict(self._scheduler.config)})"
            )

        self._setup_training(lora_rank, lora_alpha, lora_targets, gradient_checkpointing)
        self.transformer.to(self._device)
        self.pipe.vae.to(self._device)
        for name in ("text_encoder", "text_encoder_2", "text_encoder_3"):
            module = getattr(self.pipe, name, None)
            if module is not None:
                module.to("cpu" if self.offload_text_encoders else self._device)
        self._init_prompt_cache(prompt_cache_size)

    @property
    def do_cfg(self) -> bool:
        """Classifier-free guidance on (``guidance_scale > 1``, the pipeline's rule)."""
        return self.guidance_scale > 1.0

    @property
    def latent_shape(self) -> tuple[int, int, int]:
        """``(C, H/8, W/8)``, e.g. ``(16, 64, 64)`` for SD3.5 at 512 px."""
        return self._latent_shape

    @property
    def shift(self) -> float:
        """The scheduler's static time shift (3.0 for SD3/SD3.5)."""
        return float(self._scheduler.config.shift)

    def sigmas(self, num_steps: int) -> Tensor:
        """float32 ``[T + 1]``: the pipeline scheduler's ``set_timesteps(T)`` sigmas (static shift),
        then 0, as ``StableDiffusion3Pipeline.__call__`` walks them."""
        if num_steps < 1:
            raise ValueError(f"num_steps must be >= 1, got {num_steps}")
        self._scheduler.set_timesteps(num_steps, device="cpu")
        return self._scheduler.sigmas.detach().to(torch.float32).clone()

    # -- prompts -------------------------------------------------------------------------------

    def _encode_batch(self, todo: list[str]) -> tuple[Tensor, Tensor]:
        embeds, _, pooled, _ = self.pipe.encode_prompt(
            prompt=todo,
            prompt_2=None,
            prompt_3=None,
            device=self._device,
            do_classifier_free_guidance=False,
            max_sequence_length=self.max_sequence_length,
        )
        return embeds, pooled

    def encode(self, prompts: Sequence[str]) -> Cond:
        """``prompt_embeds`` ``[B, 77 + L, D]`` (CLIP-L/G hidden states padded to T5 width, then T5)
        and ``pooled_prompt_embeds`` ``[B, D_pool]``; with CFG also ``negative_prompt_embeds`` and
        ``negative_pooled_prompt_embeds`` (the negative prompt's, repeated ``B`` times so every
        tensor is batch-first). Each distinct prompt is encoded once and kept in an LRU cache of
        ``prompt_cache_size`` prompts on the CPU; the negative prompt goes through the same encoder
        path the pipeline uses for it (``clip_skip=None``)."""
        prompts = self._check_prompts(prompts)
        if not prompts:
            raise ValueError("encode() needs at least one prompt")
        needed = prompts + ([self.negative_prompt] if self.do_cfg else [])
        rows = self._prompt_rows(needed, self._encode_batch)
        cond = {
            "prompt_embeds": self._stack_rows(rows, prompts, 0),
            "pooled_prompt_embeds": self._stack_rows(rows, prompts, 1),
        }
        if self.do_cfg:
            negatives = [self.negative_prompt] * len(prompts)
            cond["negative_prompt_embeds"] = self._stack_rows(rows, negatives, 0)
            cond["negative_pooled_prompt_embeds"] = self._stack_rows(rows, negatives, 1)
        return cond

    # -- the model -----------------------------------------------------------------------------

    def velocity(self, x: Tensor, sigma: Tensor, cond: Cond) -> Tensor:
        """``v = noise - x0`` for latents ``[B, C, h, w]``, CFG applied; returns ``x``'s dtype.

        The transformer gets ``timestep = sigma * 1000`` (float32, the scheduler's timesteps).
        With CFG one forward of batch ``2B`` (uncond first, as the pipeline concatenates).
        """
        self._check_latents(x)
        b = x.shape[0]
        keys = ["prompt_embeds", "pooled_prompt_embeds"]
        if self.do_cfg:
            keys += ["negative_prompt_embeds", "negative_pooled_prompt_embeds"]
        for key in keys:
            if key not in cond or cond[key].shape[0] != b:
                got = None if key not in cond else tuple(cond[key].shape)
                raise ValueError(
                    f"sd3 cond[{key!r}] must have leading dimension {b}, got {got}"
                    + (" (encode() with guidance_scale > 1 adds the negative keys)" if "negative" in key else "")
                )
        timestep = self._sigma_batch(sigma, b) * 1000.0
        latents = x.to(self._device, self.dtype)

        def get(key: str) -> Tensor:
            return cond[key].to(self._device, self.dtype)

        embeds, pooled = get("prompt_embeds"), get("pooled_prompt_embeds")
        if self.do_cfg:
            latents = torch.cat([latents, latents])
            timestep = torch.cat([timestep, timestep])
            embeds = torch.cat([get("negative_prompt_embeds"), embeds])
            pooled = torch.cat([get("negative_pooled_prompt_embeds"), pooled])
        out = self.transformer(
            hidden_states=latents,
            timestep=timestep,
            encoder_hidden_states=embeds,
            pooled_projections=pooled,
            return_dict=False,
        )[0]
        if self.do_cfg:
            uncond, text = out.chunk(2)
            out = uncond + self.guidance_scale * (text - uncond)
        return out.to(x.dtype)

    @torch.no_grad()
    def decode(self, x: Tensor) -> Tensor:
        """Latents ``[B, C, h, w]`` at sigma 0 -> float32 images ``[B, 3, H, W]`` in [0, 1]:
        ``vae.decode(x / scaling_factor + shift_factor)``, then ``(img / 2 + 0.5).clamp(0, 1)``."""
        self._check_latents(x)
        vae = self.pipe.vae
        shift = vae.config.shift_factor or 0.0
        latents = x.to(self._device, vae.dtype) / vae.config.scaling_factor + shift
        images = vae.decode(latents, return_dict=False)[0]
        return (images.float() / 2 + 0.5).clamp(0, 1)

    def describe(self) -> dict[str, Any]:
        info = super().describe()
        info.update(guidance_scale=self.guidance_scale, cfg=self.do_cfg, negative_prompt=self.negative_prompt,
                    shift=self.shift, max_sequence_length=self.max_sequence_length)
        return info
