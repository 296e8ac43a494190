"""Tiny FLUX.2: klein (``Flux2KleinPipeline``, Qwen3 text encoder, CFG) and dev (``Flux2Pipeline``,
Mistral3 text encoder behind a Pixtral processor, guidance embedding). Both stack three hidden
layers of the text encoder, use 4-axis position ids and a batch-normalised patchified latent space."""

from __future__ import annotations

import os
from pathlib import Path

import torch

from ._common import FLUX1_SCHEDULER_CONFIG, seeded
from ._tokenizers import train_pixtral_processor, train_qwen_tokenizer

#: the pipeline stacks the hidden states of these Qwen3 layers (its default ``text_encoder_out_layers``)
_OUT_LAYERS = (9, 18, 27)


def build_tiny_flux2_klein(path: str | os.PathLike, seed: int = 0) -> Path:
    """Write a tiny random ``Flux2KleinPipeline`` (FLUX.2-klein base architecture) to ``path``.

    Architecture: Qwen3ForCausalLM with 27 layers of width 16 (so the pipeline's default layers
    9/18/27 exist; prompt features are 3 x 16 = 48 = ``joint_attention_dim``), a
    ``Flux2Transformer2DModel`` with 1 double + 1 single block, 2 heads of 16, no guidance
    embedding, 4 rope axes of 4; ``AutoencoderKLFlux2`` with 4 latent channels, 2x2 patchified
    to 16 (= transformer ``in_channels``) and batch-normalised. ``is_distilled=False``: CFG with
    ``guidance_scale > 1`` as the klein base models.
    """
    from diffusers import Flux2KleinPipeline
    from transformers import Qwen3Config, Qwen3ForCausalLM

    root = Path(path)
    root.mkdir(parents=True, exist_ok=True)
    with seeded(seed):
        tokenizer = train_qwen_tokenizer(root / "tokenizer")
        config = Qwen3Config(
            vocab_size=len(tokenizer),
            hidden_size=16,
            intermediate_size=16,
            num_hidden_layers=max(_OUT_LAYERS),
            num_attention_heads=2,
            num_key_value_heads=1,
            head_dim=8,
            max_position_embeddings=1024,
            pad_token_id=tokenizer.pad_token_id,
            eos_token_id=tokenizer.convert_tokens_to_ids("<|im_end|>"),
        )
        text_encoder = Qwen3ForCausalLM(config).eval()
        transformer = _transformer(joint_attention_dim=16 * len(_OUT_LAYERS), guidance_embeds=False)
        Flux2KleinPipeline(
            scheduler=_scheduler(), vae=_vae(), text_encoder=text_encoder, tokenizer=tokenizer, transformer=transformer,
            is_distilled=False,
        ).save_pretrained(root)
    return root


def _transformer(joint_attention_dim: int, guidance_embeds: bool):
    from diffusers import Flux2Transformer2DModel

    return Flux2Transformer2DModel(
        patch_size=1,
        in_channels=16,
        num_layers=1,
        num_single_layers=1,
        attention_head_dim=16,
        num_attention_heads=2,
        joint_attention_dim=joint_attention_dim,
        timestep_guidance_channels=256,
        axes_dims_rope=(4, 4, 4, 4),
        guidance_embeds=guidance_embeds,
    )


def _vae():
    from diffusers import AutoencoderKLFlux2

    vae = AutoencoderKLFlux2(
        in_channels=3,
        out_channels=3,
        down_block_types=("DownEncoderBlock2D", "DownEncoderBlock2D"),
        up_block_types=("UpDecoderBlock2D", "UpDecoderBlock2D"),
        block_out_channels=(8, 16),  # vae_scale_factor 2
        layers_per_block=1,
        latent_channels=4,
        norm_num_groups=4,
        sample_size=32,
        use_quant_conv=False,
        use_post_quant_conv=False,
    )
    with torch.no_grad():  # non-trivial latent statistics, as a trained VAE has
        vae.bn.running_mean.normal_(0.0, 0.1)
        vae.bn.running_var.uniform_(0.5, 2.0)
    return vae


def _scheduler():
    from diffusers import FlowMatchEulerDiscreteScheduler

    return FlowMatchEulerDiscreteScheduler(**FLUX1_SCHEDULER_CONFIG, time_shift_type="exponential")


#: FLUX.2-dev's pipeline stacks these Mistral3 layers (its default ``text_encoder_out_layers``)
_DEV_OUT_LAYERS = (10, 20, 30)


def build_tiny_flux2_dev(path: str | os.PathLike, seed: int = 0) -> Path:
    """Write a tiny random ``Flux2Pipeline`` (FLUX.2-dev architecture) to ``path``.

    Architecture: ``Mistral3ForConditionalGeneration`` (a 30-layer Mistral of width 16, so the
    pipeline's default layers 10/20/30 exist; a 1-layer Pixtral vision tower text prompts never
    use) behind a ``PixtralProcessor`` whose chat template puts FLUX.2's system message first;
    the transformer and VAE of :func:`build_tiny_flux2_klein` with the guidance embedding on.
    """
    from diffusers import Flux2Pipeline
    from diffusers.pipelines.flux2.system_messages import SYSTEM_MESSAGE
    from transformers import Mistral3Config, Mistral3ForConditionalGeneration

    root = Path(path)
    root.mkdir(parents=True, exist_ok=True)
    with seeded(seed):
        processor = train_pixtral_processor(root / "tokenizer", SYSTEM_MESSAGE)
        tokenizer = processor.tokenizer
        config = Mistral3Config(
            text_config={
                "model_type": "mistral",
                "vocab_size": len(tokenizer),
                "hidden_size": 16,
                "intermediate_size": 16,
                "num_hidden_layers": max(_DEV_OUT_LAYERS),
                "num_attention_heads": 2,
                "num_key_value_heads": 1,
                "head_dim": 8,
                "max_position_embeddings": 2048,
                "pad_token_id": tokenizer.pad_token_id,
                "bos_token_id": tokenizer.bos_token_id,
                "eos_token_id": tokenizer.eos_token_id,
            },
            vision_config={"model_type": "pixtral", "hidden_size": 16, "intermediate_size": 16, "num_hidden_layers": 1,
                           "num_attention_heads": 2, "head_dim": 8, "patch_size": 16, "image_size": 64},
            image_token_index=tokenizer.convert_tokens_to_ids("[IMG]"),
            spatial_merge_size=2,
        )
        text_encoder = Mistral3ForConditionalGeneration(config).eval()
        transformer = _transformer(joint_attention_dim=16 * len(_DEV_OUT_LAYERS), guidance_embeds=True)
        Flux2Pipeline(
            scheduler=_scheduler(), vae=_vae(), text_encoder=text_encoder, tokenizer=processor, transformer=transformer
        ).save_pretrained(root)
    return root
