"""Tiny Chroma (``ChromaPipeline``): FLUX.1-schnell-derived, T5 only, modulations from a small
approximator network instead of per-block timestep MLPs, attention mask on T5 padding, CFG."""

from __future__ import annotations

import os
from pathlib import Path

from ._common import FLUX1_SCHEDULER_CONFIG, seeded, t5_encoder, tiny_vae
from ._tokenizers import train_t5_tokenizer


def build_tiny_chroma(path: str | os.PathLike, seed: int = 0) -> Path:
    """Write a tiny random ``ChromaPipeline`` (Chroma1-HD layout, no IP-adapter parts) to ``path``.

    Architecture: T5 encoder (d_model 32), ``ChromaTransformer2DModel`` with 1 double + 1 single
    block, 2 heads of 16, a 1-layer approximator (16 channels, hidden 32), latent channels 4
    packed 2x2 to 16; FLUX-like dynamic-shift scheduler.
    """
    from diffusers import ChromaPipeline, ChromaTransformer2DModel, FlowMatchEulerDiscreteScheduler
    from transformers import T5TokenizerFast

    root = Path(path)
    root.mkdir(parents=True, exist_ok=True)
    with seeded(seed):
        train_t5_tokenizer(root / "tokenizer")
        tokenizer = T5TokenizerFast.from_pretrained(root / "tokenizer")
        text_encoder = t5_encoder(len(tokenizer), d_model=32)
        transformer = ChromaTransformer2DModel(
            patch_size=1,
            in_channels=16,
            num_layers=1,
            num_single_layers=1,
            attention_head_dim=16,
            num_attention_heads=2,
            joint_attention_dim=32,
            axes_dims_rope=(4, 4, 8),
            approximator_hidden_dim=32,
            approximator_layers=1,
            approximator_num_channels=16,
        )
        vae = tiny_vae(latent_channels=4, shift_factor=0.0609)
        scheduler = FlowMatchEulerDiscreteScheduler(**FLUX1_SCHEDULER_CONFIG)
        ChromaPipeline(
            scheduler=scheduler,
            vae=vae,
            text_encoder=text_encoder,
            tokenizer=tokenizer,
            transformer=transformer,
            image_encoder=None,
            feature_extractor=None,
        ).save_pretrained(root)
    return root
