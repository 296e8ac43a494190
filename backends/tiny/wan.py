"""Tiny Wan2.1 text-to-video (``WanPipeline``): UMT5 text encoder, causal 3-D VAE, 5-D latents
``[B, C, frames, h, w]``, a 3-D patch transformer, CFG."""

from __future__ import annotations

import os
from pathlib import Path

from ._common import seeded
from ._tokenizers import train_t5_tokenizer

#: frames the tiny video pipeline is built for: ``(frames - 1)`` divisible by the temporal factor 2
TINY_NUM_FRAMES = 5


def build_tiny_wan(path: str | os.PathLike, seed: int = 0) -> Path:
    """Write a tiny random ``WanPipeline`` (Wan2.1 T2V layout, no ``transformer_2``) to ``path``.

    Architecture: ``UMT5EncoderModel`` (d_model 32), ``WanTransformer3DModel`` (2 layers, 2 heads
    of 16, patch (1, 2, 2), text_dim 32), ``AutoencoderKLWan`` with 4 latent channels, spatial
    factor 4 and temporal factor 2 (5 frames at 32 px -> latents ``[4, 3, 8, 8]``), non-trivial
    ``latents_mean``/``latents_std``. Scheduler: ``FlowMatchEulerDiscreteScheduler`` with Wan's
    flow shift 3.0 (the hub's Wan2.1 folders ship ``UniPCMultistepScheduler`` with
    ``flow_shift=3.0``; both give the same shifted sigma grid).
    """
    from diffusers import AutoencoderKLWan, FlowMatchEulerDiscreteScheduler, WanPipeline, WanTransformer3DModel
    from transformers import T5TokenizerFast, UMT5Config, UMT5EncoderModel

    from ._common import t5_config

    root = Path(path)
    root.mkdir(parents=True, exist_ok=True)
    with seeded(seed):
        train_t5_tokenizer(root / "tokenizer")
        tokenizer = T5TokenizerFast.from_pretrained(root / "tokenizer")
        config = UMT5Config(**{k: v for k, v in t5_config(len(tokenizer), d_model=32).to_dict().items() if k != "model_type"})
        text_encoder = UMT5EncoderModel(config).eval()
        transformer = WanTransformer3DModel(
            patch_size=(1, 2, 2),
            num_attention_heads=2,
            attention_head_dim=16,
            in_channels=4,
            out_channels=4,
            text_dim=32,
            freq_dim=256,
            ffn_dim=32,
            num_layers=2,
            cross_attn_norm=True,
            qk_norm="rms_norm_across_heads",
            rope_max_seq_len=32,
        )
        vae = AutoencoderKLWan(
            base_dim=8,
            z_dim=4,
            dim_mult=[1, 1, 1],
            num_res_blocks=1,
            temperal_downsample=[False, True],  # spatial 2 ** 2 = 4, temporal 2 ** 1 = 2
            latents_mean=[0.1, -0.2, 0.05, 0.3],
            latents_std=[1.5, 0.8, 1.2, 2.0],
            scale_factor_temporal=2,
            scale_factor_spatial=4,
        )
        scheduler = FlowMatchEulerDiscreteScheduler(num_train_timesteps=1000, shift=3.0)
        WanPipeline(
            tokenizer=tokenizer, text_encoder=text_encoder, vae=vae, scheduler=scheduler, transformer=transformer, transformer_2=None
        ).save_pretrained(root)
    return root
