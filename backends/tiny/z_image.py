"""Tiny Z-Image (``ZImagePipeline``): Qwen3 text encoder (chat template, second-to-last layer,
unpadded per-prompt features), a single-stream transformer with refiners, ``AutoencoderKL``."""

from __future__ import annotations

import os
from pathlib import Path

from ._common import seeded, tiny_vae
from ._tokenizers import train_qwen_tokenizer


def build_tiny_z_image(path: str | os.PathLike, seed: int = 0) -> Path:
    """Write a tiny random ``ZImagePipeline`` (Z-Image-Turbo layout) to ``path``.

    Architecture: ``Qwen3Model`` (width 16, 2 layers), ``ZImageTransformer2DModel`` of width 32
    (2 layers, 1 noise and 1 context refiner, 2 heads, patch 2, rope axes 8/4/4),
    ``AutoencoderKL`` with 4 latent channels (factor 2) and Z-Image's scaling/shift factors.
    Scheduler as Z-Image-Turbo's (static shift 3.0).
    """
    import torch
    from diffusers import FlowMatchEulerDiscreteScheduler, ZImagePipeline, ZImageTransformer2DModel
    from transformers import Qwen3Config, Qwen3Model

    root = Path(path)
    root.mkdir(parents=True, exist_ok=True)
    with seeded(seed):
        tokenizer = train_qwen_tokenizer(root / "tokenizer")
        config = Qwen3Config(
            vocab_size=len(tokenizer),
            hidden_size=16,
            intermediate_size=16,
            num_hidden_layers=2,
            num_attention_heads=2,
            num_key_value_heads=1,
            head_dim=8,
            max_position_embeddings=1024,
            pad_token_id=tokenizer.pad_token_id,
        )
        text_encoder = Qwen3Model(config).eval()
        transformer = ZImageTransformer2DModel(
            all_patch_size=(2,),
            all_f_patch_size=(1,),
            in_channels=4,
            dim=32,
            n_layers=2,
            n_refiner_layers=1,
            n_heads=2,
            n_kv_heads=2,
            norm_eps=1e-5,
            qk_norm=True,
            cap_feat_dim=16,
            rope_theta=256.0,
            t_scale=1000.0,
            axes_dims=[8, 4, 4],
            axes_lens=[1024, 512, 512],
        )
        with torch.no_grad():  # created with torch.empty: give them seeded values
            transformer.x_pad_token.normal_(0.0, 0.02)
            transformer.cap_pad_token.normal_(0.0, 0.02)
        vae = tiny_vae(latent_channels=4, shift_factor=0.1159, scaling_factor=0.3611)
        scheduler = FlowMatchEulerDiscreteScheduler(num_train_timesteps=1000, shift=3.0, use_dynamic_shifting=False)
        ZImagePipeline(
            scheduler=scheduler, vae=vae, text_encoder=text_encoder, tokenizer=tokenizer, transformer=transformer
        ).save_pretrained(root)
    return root
