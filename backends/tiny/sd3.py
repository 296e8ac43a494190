"""Tiny SD3.5 (``StableDiffusion3Pipeline``): two CLIPs with projection + T5, patch-2 transformer, CFG."""

from __future__ import annotations

import os
from pathlib import Path

from ._common import TINY_RESOLUTION, clip_config, seeded, t5_encoder, tiny_vae
from ._tokenizers import train_clip_tokenizer, train_t5_tokenizer


def build_tiny_sd3(path: str | os.PathLike, seed: int = 0) -> Path:
    """Write a tiny random ``StableDiffusion3Pipeline`` (SD3.5 architecture) to ``path``.

    Architecture: 2 joint blocks (block 0 with SD3.5's dual attention), RMS qk-norm, patch 2,
    latent channels 4, two CLIPTextModelWithProjection (hidden 32, projection 32 -> pooled 64),
    T5 d_model 64 (= joint_attention_dim; the two CLIP hidden states are concatenated to 64 and
    padded to it), scheduler with static shift 3.0 as SD3.5's.
    """
    from diffusers import FlowMatchEulerDiscreteScheduler, SD3Transformer2DModel, StableDiffusion3Pipeline
    from transformers import CLIPTextModelWithProjection, CLIPTokenizer, T5TokenizerFast

    root = Path(path)
    root.mkdir(parents=True, exist_ok=True)
    with seeded(seed):
        train_clip_tokenizer(root / "tokenizer")
        train_clip_tokenizer(root / "tokenizer_2")
        train_t5_tokenizer(root / "tokenizer_3")
        clip_tok = CLIPTokenizer.from_pretrained(root / "tokenizer")
        clip_tok_2 = CLIPTokenizer.from_pretrained(root / "tokenizer_2")
        t5_tok = T5TokenizerFast.from_pretrained(root / "tokenizer_3")
        text_encoder = CLIPTextModelWithProjection(clip_config(len(clip_tok), clip_tok.eos_token_id))
        text_encoder_2 = CLIPTextModelWithProjection(clip_config(len(clip_tok), clip_tok.eos_token_id))
        text_encoder_3 = t5_encoder(len(t5_tok), d_model=64)
        transformer = SD3Transformer2DModel(
            sample_size=TINY_RESOLUTION // 2,
            patch_size=2,
            in_channels=4,
            num_layers=2,
            attention_head_dim=8,
            num_attention_heads=4,
            joint_attention_dim=64,
            caption_projection_dim=32,
            pooled_projection_dim=64,
            out_channels=4,
            pos_embed_max_size=16,
            dual_attention_layers=(0,),
            qk_norm="rms_norm",
        )
        vae = tiny_vae(latent_channels=4, shift_factor=0.0609)
        scheduler = FlowMatchEulerDiscreteScheduler(num_train_timesteps=1000, shift=3.0)
        StableDiffusion3Pipeline(
            scheduler=scheduler,
            vae=vae,
            text_encoder=text_encoder,
            tokenizer=clip_tok,
            text_encoder_2=text_encoder_2,
            tokenizer_2=clip_tok_2,
            text_encoder_3=text_encoder_3,
            tokenizer_3=t5_tok,
            transformer=transformer,
        ).save_pretrained(root)
    return root
