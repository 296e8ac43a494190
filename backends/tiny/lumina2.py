"""Tiny Lumina-Image 2.0 (``Lumina2Pipeline``): Gemma2 text encoder (second-to-last layer, masked),
a unified single-stream transformer with refiners, time running from 0 = noise to 1 = data, CFG."""

from __future__ import annotations

import os
from pathlib import Path

from ._common import seeded, tiny_vae
from ._tokenizers import train_gemma_tokenizer

#: image side of the tiny Lumina2 (its pipeline assumes a VAE factor of 8)
LUMINA2_RESOLUTION = 64


def build_tiny_lumina2(path: str | os.PathLike, seed: int = 0) -> Path:
    """Write a tiny random ``Lumina2Pipeline`` to ``path``.

    Architecture: ``Gemma2Model`` (width 16, 2 layers), ``Lumina2Transformer2DModel`` of width 32
    (2 layers, 2 heads, 1 kv head, patch 2, rope axes 8/4/4), ``AutoencoderKL`` with 4 latent
    channels and factor 8 (``Lumina2Pipeline`` hard-codes 8; at 64 px latents are
    ``[4, 8, 8]``). Scheduler as Lumina-Image-2.0's (static shift 6.0).
    """
    from diffusers import FlowMatchEulerDiscreteScheduler, Lumina2Pipeline, Lumina2Transformer2DModel
    from transformers import Gemma2Config, Gemma2Model

    root = Path(path)
    root.mkdir(parents=True, exist_ok=True)
    with seeded(seed):
        tokenizer = train_gemma_tokenizer(root / "tokenizer")
        config = Gemma2Config(
            vocab_size=len(tokenizer),
            hidden_size=16,
            intermediate_size=32,
            num_hidden_layers=2,
            num_attention_heads=2,
            num_key_value_heads=1,
            head_dim=8,
            max_position_embeddings=1024,
            pad_token_id=tokenizer.pad_token_id,
            bos_token_id=tokenizer.bos_token_id,
            eos_token_id=tokenizer.eos_token_id,
        )
        text_encoder = Gemma2Model(config).eval()
        transformer = Lumina2Transformer2DModel(
            sample_size=16,
            patch_size=2,
            in_channels=4,
            hidden_size=32,
            num_layers=2,
            num_refiner_layers=1,
            num_attention_heads=2,
            num_kv_heads=1,
            multiple_of=16,
            ffn_dim_multiplier=None,
            norm_eps=1e-5,
            scaling_factor=1.0,
            axes_dim_rope=(8, 4, 4),
            cap_feat_dim=16,
        )
        vae = tiny_vae(latent_channels=4, shift_factor=0.0609, levels=4)  # the pipeline assumes factor 8
        scheduler = FlowMatchEulerDiscreteScheduler(num_train_timesteps=1000, shift=6.0, use_dynamic_shifting=False)
        Lumina2Pipeline(
            transformer=transformer, scheduler=scheduler, vae=vae, text_encoder=text_encoder, tokenizer=tokenizer
        ).save_pretrained(root)
    return root
