"""Shared parts of the tiny pipelines: seeding, a tiny ``AutoencoderKL``, CLIP/T5 configs.

Sizes are chosen so that one transformer call on a 32 px image takes a few milliseconds on one
CPU thread; the architectures (block types, attention layouts, normalisations) are the real ones.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

import torch

#: image side (pixels) every tiny image pipeline is built for
TINY_RESOLUTION = 32
#: text-encoder token length tests pass as ``max_sequence_length`` (keeps the text side small)
TINY_MAX_SEQUENCE_LENGTH = 16
CLIP_MAX_LENGTH = 77
#: FLUX.1-dev's ``scheduler/scheduler_config.json``: resolution-dependent ("dynamic") shift. Chroma
#: ships the same; FLUX.2 adds ``time_shift_type="exponential"``.
FLUX1_SCHEDULER_CONFIG = dict(
    num_train_timesteps=1000,
    shift=3.0,
    use_dynamic_shifting=True,
    base_shift=0.5,
    max_shift=1.15,
    base_image_seq_len=256,
    max_image_seq_len=4096,
)


@contextlib.contextmanager
def seeded(seed: int) -> Iterator[None]:
    """Seed torch's global CPU generator for the block and restore its state afterwards."""
    state = torch.random.get_rng_state()
    torch.manual_seed(seed)
    try:
        yield
    finally:
        torch.random.set_rng_state(state)


def tiny_vae(latent_channels: int, shift_factor: float | None, scaling_factor: float = 1.5035, levels: int = 2):
    """An ``AutoencoderKL`` with ``levels`` resolution levels (``vae_scale_factor`` ``2 ** (levels - 1)``)."""
    from diffusers import AutoencoderKL

    return AutoencoderKL(
        in_channels=3,
        out_channels=3,
        down_block_types=("DownEncoderBlock2D",) * levels,
        up_block_types=("UpDecoderBlock2D",) * levels,
        block_out_channels=(8,) * (levels - 1) + (16,),
        layers_per_block=1,
        latent_channels=latent_channels,
        norm_num_groups=4,
        sample_size=TINY_RESOLUTION,
        scaling_factor=scaling_factor,
        shift_factor=shift_factor,
        use_quant_conv=False,
        use_post_quant_conv=False,
    )


def clip_config(vocab_size: int, eos_id: int):
    """A 2-layer CLIP text config (hidden 32, projection 32)."""
    from transformers import CLIPTextConfig

    return CLIPTextConfig(
        vocab_size=vocab_size,
        hidden_size=32,
        intermediate_size=37,
        num_hidden_layers=2,
        num_attention_heads=4,
        max_position_embeddings=CLIP_MAX_LENGTH,
        projection_dim=32,
        hidden_act="gelu",
        layer_norm_eps=1e-5,
        bos_token_id=0,
        eos_token_id=eos_id,
        pad_token_id=eos_id,
    )


def t5_config(vocab_size: int, d_model: int):
    """A 2-layer T5 encoder config (gated-gelu as T5 v1.1 / UMT5)."""
    from transformers import T5Config

    return T5Config(
        vocab_size=vocab_size,
        d_model=d_model,
        d_ff=37,
        d_kv=8,
        num_layers=2,
        num_heads=4,
        relative_attention_num_buckets=8,
        relative_attention_max_distance=32,
        dropout_rate=0.0,
        feed_forward_proj="gated-gelu",
        is_encoder_decoder=False,
        pad_token_id=0,
        eos_token_id=1,
    )


def t5_encoder(vocab_size: int, d_model: int):
    """A tiny ``T5EncoderModel`` (FLUX.1, SD3, Chroma)."""
    from transformers import T5EncoderModel

    return T5EncoderModel(t5_config(vocab_size, d_model)).eval()
