"""Tiny FLUX.1-dev and FLUX.1-schnell (``FluxPipeline``): CLIP + T5 text encoders, packed 2x2 latents."""

from __future__ import annotations

import os
from pathlib import Path

from ._common import FLUX1_SCHEDULER_CONFIG, clip_config, seeded, t5_encoder, tiny_vae
from ._tokenizers import train_clip_tokenizer, train_t5_tokenizer


def _build_flux(path: str | os.PathLike, seed: int, guidance: bool) -> Path:
    from diffusers import FlowMatchEulerDiscreteScheduler, FluxPipeline, FluxTransformer2DModel
    from transformers import CLIPTextModel, CLIPTokenizer, T5TokenizerFast

    root = Path(path)
    root.mkdir(parents=True, exist_ok=True)
    with seeded(seed):
        train_clip_tokenizer(root / "tokenizer")
        train_t5_tokenizer(root / "tokenizer_2")
        clip_tok = CLIPTokenizer.from_pretrained(root / "tokenizer")
        t5_tok = T5TokenizerFast.from_pretrained(root / "tokenizer_2")
        text_encoder = CLIPTextModel(clip_config(len(clip_tok), clip_tok.eos_token_id))
        text_encoder_2 = t5_encoder(len(t5_tok), d_model=32)
        transformer = FluxTransformer2DModel(
            patch_size=1,
            in_channels=16,
            num_layers=1,
            num_single_layers=1,
            attention_head_dim=16,
            num_attention_heads=2,
            joint_attention_dim=32,
            pooled_projection_dim=32,
            guidance_embeds=guidance,
            axes_dims_rope=(4, 6, 6),
        )
        vae = tiny_vae(latent_channels=4, shift_factor=0.0609)
        if guidance:  # FLUX.1-dev: resolution-dependent shift
            scheduler = FlowMatchEulerDiscreteScheduler(**FLUX1_SCHEDULER_CONFIG)
        else:  # FLUX.1-schnell: timestep-distilled, no shift
            scheduler = FlowMatchEulerDiscreteScheduler(num_train_timesteps=1000, shift=1.0, use_dynamic_shifting=False)
        FluxPipeline(
            scheduler=scheduler,
            vae=vae,
            text_encoder=text_encoder,
            tokenizer=clip_tok,
            text_encoder_2=text_encoder_2,
            tokenizer_2=t5_tok,
            transformer=transformer,
        ).save_pretrained(root)
    return root


def build_tiny_flux(path: str | os.PathLike, seed: int = 0) -> Path:
    """Write a tiny random ``FluxPipeline`` (FLUX.1-dev architecture) to ``path``; returns the folder.

    Architecture: 1 double + 1 single transformer block, 2 heads of 16, guidance embedding on,
    latent channels 4 (transformer ``in_channels`` 16 after 2x2 packing), T5 d_model 32, CLIP hidden
    32 (its pooler output is the pooled projection), scheduler config as FLUX.1-dev's
    (dynamic shifting, base/max shift 0.5/1.15 over 256/4096 tokens).
    """
    return _build_flux(path, seed, guidance=True)


def build_tiny_flux_schnell(path: str | os.PathLike, seed: int = 0) -> Path:
    """Write a tiny random FLUX.1-schnell ``FluxPipeline``: as :func:`build_tiny_flux` but without the
    guidance embedding and with schnell's scheduler (static shift 1.0, no dynamic shifting)."""
    return _build_flux(path, seed, guidance=False)
