"""Tiny Qwen-Image (``QwenImagePipeline``): Qwen2.5-VL text encoder behind a fixed system prompt,
a causal 3-D VAE used on single frames, 2x2 packed latents, true CFG."""

from __future__ import annotations

import os
from pathlib import Path

from ._common import seeded
from ._tokenizers import train_qwen_tokenizer


def build_tiny_qwen_image(path: str | os.PathLike, seed: int = 0) -> Path:
    """Write a tiny random ``QwenImagePipeline`` to ``path``.

    Architecture: ``Qwen2_5_VLForConditionalGeneration`` (text width 16, 2 layers, M-RoPE, a
    2-layer vision tower that text prompts never use), ``QwenImageTransformer2DModel`` with 2
    blocks, 2 heads of 16, patch 2 (``in_channels`` 16 = 4 latent channels x 2 x 2);
    ``AutoencoderKLQwenImage`` with 4 latent channels, spatial factor 4, non-trivial
    ``latents_mean``/``latents_std``. Scheduler as Qwen-Image's (exponential dynamic shift,
    shift terminal 0.02). The tokenizer splits the pipeline's system prompt into the same 34
    leading tokens as Qwen2.5's (the pipeline drops them by position).
    """
    from diffusers import AutoencoderKLQwenImage, FlowMatchEulerDiscreteScheduler, QwenImagePipeline, QwenImageTransformer2DModel
    from transformers import Qwen2_5_VLConfig, Qwen2_5_VLForConditionalGeneration

    root = Path(path)
    root.mkdir(parents=True, exist_ok=True)
    with seeded(seed):
        tokenizer = train_qwen_tokenizer(root / "tokenizer")
        ids = tokenizer.convert_tokens_to_ids
        config = Qwen2_5_VLConfig(
            text_config={
                "vocab_size": len(tokenizer),
                "hidden_size": 16,
                "intermediate_size": 16,
                "num_hidden_layers": 2,
                "num_attention_heads": 2,
                "num_key_value_heads": 2,
                "rope_scaling": {"mrope_section": [1, 1, 2], "rope_type": "default", "type": "default"},
                "rope_theta": 1000000.0,
                "bos_token_id": ids("<|endoftext|>"),
                "eos_token_id": ids("<|im_end|>"),
                "pad_token_id": tokenizer.pad_token_id,
            },
            vision_config={"depth": 2, "hidden_size": 16, "intermediate_size": 16, "num_heads": 2, "out_hidden_size": 16},
            vocab_size=len(tokenizer),
            hidden_size=16,
            bos_token_id=ids("<|endoftext|>"),
            eos_token_id=ids("<|im_end|>"),
            image_token_id=ids("<|image_pad|>"),
            video_token_id=ids("<|video_pad|>"),
            vision_start_token_id=ids("<|vision_start|>"),
            vision_end_token_id=ids("<|vision_end|>"),
        )
        text_encoder = Qwen2_5_VLForConditionalGeneration(config).eval()
        transformer = QwenImageTransformer2DModel(
            patch_size=2,
            in_channels=16,
            out_channels=4,
            num_layers=2,
            attention_head_dim=16,
            num_attention_heads=2,
            joint_attention_dim=16,
            guidance_embeds=False,
            axes_dims_rope=(8, 4, 4),
        )
        vae = AutoencoderKLQwenImage(
            base_dim=8,
            z_dim=4,
            dim_mult=[1, 2, 2],
            num_res_blocks=1,
            temperal_downsample=[False, True],  # spatial factor 2 ** 2 = 4
            latents_mean=[0.1, -0.2, 0.05, 0.3],
            latents_std=[1.5, 0.8, 1.2, 2.0],
        )
        scheduler = FlowMatchEulerDiscreteScheduler(
            num_train_timesteps=1000,
            shift=1.0,
            use_dynamic_shifting=True,
            base_shift=0.5,
            max_shift=0.9,
            base_image_seq_len=256,
            max_image_seq_len=8192,
            shift_terminal=0.02,
            time_shift_type="exponential",
        )
        QwenImagePipeline(
            scheduler=scheduler, vae=vae, text_encoder=text_encoder, tokenizer=tokenizer, transformer=transformer
        ).save_pretrained(root)
    return root
