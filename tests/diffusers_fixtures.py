"""Tiny random FLUX and SD3 pipelines, built offline in the real Hugging Face hub layout.

Other tests import the builders (pytest's default ``prepend`` import mode puts ``tests/`` on
``sys.path``)::

    from diffusers_fixtures import build_tiny_flux, build_tiny_sd3, TINY_RESOLUTION

and may use the session-scoped fixtures :func:`tiny_flux_path` / :func:`tiny_sd3_path` by importing
them into their test module (``from diffusers_fixtures import tiny_flux_path, tiny_sd3_path``).

Stable public names (other engineers rely on them):

* :func:`build_tiny_flux(path) -> Path` writes a ``FluxPipeline`` folder: ``model_index.json``,
  ``scheduler/``, ``text_encoder/`` (CLIPTextModel), ``text_encoder_2/`` (T5EncoderModel),
  ``tokenizer/`` (CLIP BPE), ``tokenizer_2/`` (T5 sentencepiece), ``transformer/``
  (FluxTransformer2DModel with guidance embedding), ``vae/`` (AutoencoderKL).
* :func:`build_tiny_sd3(path) -> Path` writes a ``StableDiffusion3Pipeline`` folder with
  ``text_encoder``/``text_encoder_2`` (CLIPTextModelWithProjection), ``text_encoder_3`` (T5),
  three tokenizers, an SD3.5-style transformer (dual attention in block 0, RMS qk-norm) and a VAE.
* :data:`TINY_RESOLUTION` (32 px) is the image size the tiny models are built for; the VAE
  downsamples by 2, so latents are ``[4, 16, 16]`` (FLUX packs them into 64 tokens of 16 channels;
  SD3 patchifies with patch 2 into 64 tokens).
* :data:`TINY_MAX_SEQUENCE_LENGTH` (16): T5 token length to pass as ``max_sequence_length`` so the
  tests stay fast.
* :func:`perturb_trainable(backend, seed, scale)`: seeded random values in every trainable weight
  (a fresh LoRA has ``lora_B = 0`` and changes nothing).
* :func:`single_thread()`: context manager running torch on one intra-op thread (tiny models on a
  busy 2-core machine are ~100x faster that way); restores the thread count.

Model weights are seeded (``seed``); the BPE trainer of ``tokenizers`` may break frequency ties
differently between processes, so token ids (not the layout or the shapes) can differ from one
build to the next. Tests compare against the pipeline built in the same session, never against
stored numbers.

Weights are random (seeded); everything is written with ``save_pretrained`` and loaded back by the
backends through exactly the user's path (``Pipeline.from_pretrained(folder)``).

Tokenizers are trained on the fly: in transformers 5, ``CLIPTokenizer(vocab_file=...)`` and
``T5TokenizerFast(vocab_file=...)`` silently ignore their files, so we train a tiny BPE with the
``tokenizers`` library (saved as CLIP's ``vocab.json``/``merges.txt``) and a sentencepiece unigram
model for T5 (``spiece.model``), then load both with ``from_pretrained(dir)`` and save them again in
the layout the pipelines read.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import tempfile
from pathlib import Path

import pytest
import torch

TINY_RESOLUTION = 32
TINY_MAX_SEQUENCE_LENGTH = 16
_CLIP_MAX_LENGTH = 77

# A small corpus for the tokenizers; prompts used by tests are drawn from the same words.
_CORPUS = [
    "a photo of a cat sitting on a red chair",
    "a handwritten digit 7 on white paper",
    "an astronaut riding a horse on the moon",
    "a red apple and a green pear on a wooden table",
    "a painting of a small house near the blue sea",
    "two dogs playing in the snow, high quality",
    "a bowl of soup with bread, studio lighting",
    "the city at night with bright lights and rain",
    "a portrait of an old man with a hat",
    "a bird flying over the mountains at sunrise",
]
_ALPHABET = list("abcdefghijklmnopqrstuvwxyz0123456789,.!?'-")


def _train_clip_tokenizer(out_dir: Path) -> None:
    """Train a CLIP-style BPE (``</w>`` word suffix) and save it as ``vocab.json``/``merges.txt``,
    then load it with ``CLIPTokenizer.from_pretrained`` and save the full tokenizer layout."""
    from tokenizers import Tokenizer, models, normalizers, pre_tokenizers, trainers
    from transformers import CLIPTokenizer

    tok = Tokenizer(models.BPE(end_of_word_suffix="</w>", unk_token="<|endoftext|>"))
    tok.normalizer = normalizers.Lowercase()
    tok.pre_tokenizer = pre_tokenizers.Whitespace()
    trainer = trainers.BpeTrainer(
        vocab_size=160,
        special_tokens=["<|startoftext|>", "<|endoftext|>"],
        end_of_word_suffix="</w>",
        initial_alphabet=_ALPHABET,
        show_progress=False,
    )
    tok.train_from_iterator(_CORPUS * 4, trainer)
    with tempfile.TemporaryDirectory() as raw:
        tok.model.save(raw)  # vocab.json + merges.txt, CLIP's file layout
        clip_tok = CLIPTokenizer.from_pretrained(
            raw,
            model_max_length=_CLIP_MAX_LENGTH,
            bos_token="<|startoftext|>",
            eos_token="<|endoftext|>",
            unk_token="<|endoftext|>",
            pad_token="<|endoftext|>",
        )
        clip_tok.save_pretrained(out_dir)
        for name in ("vocab.json", "merges.txt"):  # the hub's FLUX/SD3 tokenizer folders ship these too
            shutil.copyfile(os.path.join(raw, name), out_dir / name)


def _train_t5_tokenizer(out_dir: Path) -> None:
    """Train a sentencepiece unigram model (T5's ``spiece.model``) and save a T5 tokenizer."""
    import sentencepiece as spm
    from transformers import T5TokenizerFast

    with tempfile.TemporaryDirectory() as raw:
        spm.SentencePieceTrainer.train(
            sentence_iterator=iter(_CORPUS * 4),
            model_prefix=os.path.join(raw, "spiece"),
            vocab_size=96,
            model_type="unigram",
            pad_id=0,
            eos_id=1,
            unk_id=2,
            bos_id=-1,
            character_coverage=1.0,
            hard_vocab_limit=False,
            minloglevel=2,
            num_threads=1,
        )
        t5_tok = T5TokenizerFast.from_pretrained(raw, extra_ids=0, model_max_length=512)
        t5_tok.save_pretrained(out_dir)
        shutil.copyfile(os.path.join(raw, "spiece.model"), out_dir / "spiece.model")


@contextlib.contextmanager
def _seeded(seed: int):
    state = torch.random.get_rng_state()
    torch.manual_seed(seed)
    try:
        yield
    finally:
        torch.random.set_rng_state(state)


def _tiny_vae(latent_channels: int, shift_factor: float | None):
    from diffusers import AutoencoderKL

    return AutoencoderKL(
        in_channels=3,
        out_channels=3,
        down_block_types=("DownEncoderBlock2D", "DownEncoderBlock2D"),
        up_block_types=("UpDecoderBlock2D", "UpDecoderBlock2D"),
        block_out_channels=(8, 16),  # vae_scale_factor = 2 ** (2 - 1) = 2
        layers_per_block=1,
        latent_channels=latent_channels,
        norm_num_groups=4,
        sample_size=TINY_RESOLUTION,
        scaling_factor=1.5035,
        shift_factor=shift_factor,
        use_quant_conv=False,
        use_post_quant_conv=False,
    )


def _clip_config(vocab_size: int, eos_id: int):
    from transformers import CLIPTextConfig

    return CLIPTextConfig(
        vocab_size=vocab_size,
        hidden_size=32,
        intermediate_size=37,
        num_hidden_layers=2,
        num_attention_heads=4,
        max_position_embeddings=_CLIP_MAX_LENGTH,
        projection_dim=32,
        hidden_act="gelu",
        layer_norm_eps=1e-5,
        bos_token_id=0,
        eos_token_id=eos_id,
        pad_token_id=eos_id,
    )


def _t5_encoder(vocab_size: int, d_model: int):
    from transformers import T5Config, T5EncoderModel

    config = T5Config(
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
    return T5EncoderModel(config)


def _tokenizers(root: Path, clip_dirs: list[str], t5_dir: str):
    from transformers import CLIPTokenizer, T5TokenizerFast

    for name in clip_dirs:
        _train_clip_tokenizer(root / name)
    _train_t5_tokenizer(root / t5_dir)
    clip_tok = CLIPTokenizer.from_pretrained(root / clip_dirs[0])
    t5_tok = T5TokenizerFast.from_pretrained(root / t5_dir)
    return clip_tok, t5_tok


def build_tiny_flux(path: str | os.PathLike, seed: int = 0) -> Path:
    """Write a tiny random ``FluxPipeline`` (FLUX.1-dev architecture) to ``path``; returns the folder.

    Architecture: 1 double + 1 single transformer block, 2 heads of 16, guidance embedding on,
    latent channels 4 (transformer ``in_channels`` 16 after 2x2 packing), T5 d_model 32, CLIP hidden
    32 (its pooler output is the pooled projection), scheduler config as FLUX.1-dev's
    (dynamic shifting, base/max shift 0.5/1.15 over 256/4096 tokens).
    """
    from diffusers import FlowMatchEulerDiscreteScheduler, FluxPipeline, FluxTransformer2DModel
    from transformers import CLIPTextModel

    root = Path(path)
    root.mkdir(parents=True, exist_ok=True)
    with _seeded(seed):
        clip_tok, t5_tok = _tokenizers(root, ["tokenizer"], "tokenizer_2")
        text_encoder = CLIPTextModel(_clip_config(len(clip_tok), clip_tok.eos_token_id))
        text_encoder_2 = _t5_encoder(len(t5_tok), d_model=32)
        transformer = FluxTransformer2DModel(
            patch_size=1,
            in_channels=16,
            num_layers=1,
            num_single_layers=1,
            attention_head_dim=16,
            num_attention_heads=2,
            joint_attention_dim=32,
            pooled_projection_dim=32,
            guidance_embeds=True,
            axes_dims_rope=(4, 6, 6),
        )
        vae = _tiny_vae(latent_channels=4, shift_factor=0.0609)
        scheduler = FlowMatchEulerDiscreteScheduler(
            num_train_timesteps=1000,
            shift=3.0,
            use_dynamic_shifting=True,
            base_shift=0.5,
            max_shift=1.15,
            base_image_seq_len=256,
            max_image_seq_len=4096,
        )
        pipe = FluxPipeline(
            scheduler=scheduler,
            vae=vae,
            text_encoder=text_encoder,
            tokenizer=clip_tok,
            text_encoder_2=text_encoder_2,
            tokenizer_2=t5_tok,
            transformer=transformer,
        )
        pipe.save_pretrained(root)
    return root


def build_tiny_sd3(path: str | os.PathLike, seed: int = 0) -> Path:
    """Write a tiny random ``StableDiffusion3Pipeline`` (SD3.5 architecture) to ``path``.

    Architecture: 2 joint blocks (block 0 with SD3.5's dual attention), RMS qk-norm, patch 2,
    latent channels 4, two CLIPTextModelWithProjection (hidden 32, projection 32 -> pooled 64),
    T5 d_model 64 (= joint_attention_dim; the two CLIP hidden states are concatenated to 64 and
    padded to it), scheduler with static shift 3.0 as SD3.5's.
    """
    from diffusers import FlowMatchEulerDiscreteScheduler, SD3Transformer2DModel, StableDiffusion3Pipeline
    from transformers import CLIPTextModelWithProjection

    root = Path(path)
    root.mkdir(parents=True, exist_ok=True)
    with _seeded(seed):
        clip_tok, t5_tok = _tokenizers(root, ["tokenizer", "tokenizer_2"], "tokenizer_3")
        from transformers import CLIPTokenizer

        clip_tok_2 = CLIPTokenizer.from_pretrained(root / "tokenizer_2")
        text_encoder = CLIPTextModelWithProjection(_clip_config(len(clip_tok), clip_tok.eos_token_id))
        text_encoder_2 = CLIPTextModelWithProjection(_clip_config(len(clip_tok), clip_tok.eos_token_id))
        text_encoder_3 = _t5_encoder(len(t5_tok), d_model=64)
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
        vae = _tiny_vae(latent_channels=4, shift_factor=0.0609)
        scheduler = FlowMatchEulerDiscreteScheduler(num_train_timesteps=1000, shift=3.0)
        pipe = StableDiffusion3Pipeline(
            scheduler=scheduler,
            vae=vae,
            text_encoder=text_encoder,
            tokenizer=clip_tok,
            text_encoder_2=text_encoder_2,
            tokenizer_2=clip_tok_2,
            text_encoder_3=text_encoder_3,
            tokenizer_3=t5_tok,
            transformer=transformer,
        )
        pipe.save_pretrained(root)
    return root


def perturb_trainable(backend, seed: int = 0, scale: float = 0.05) -> None:
    """Overwrite every trainable parameter of ``backend`` with seeded ``scale * N(0, 1)`` noise.

    A fresh LoRA adapter has ``lora_B = 0`` (the policy equals the base model and ``lora_A`` gets
    no gradient); tests that need a LoRA that *does* something call this first.
    """
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for param in backend.trainable_parameters():
            noise = torch.randn(param.shape, generator=gen, dtype=torch.float32)
            param.copy_((scale * noise).to(param.dtype))


@contextlib.contextmanager
def single_thread():
    """Run tiny models on one intra-op thread: on a busy 2-core machine OpenMP's spinning threads
    make a 32x32 matmul ~300x slower than single-threaded. Restores the thread count on exit."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(before)


@pytest.fixture(scope="session")
def tiny_flux_path(tmp_path_factory) -> Path:
    """A tiny FLUX pipeline folder built once per test session."""
    return build_tiny_flux(tmp_path_factory.mktemp("tiny-flux"))


@pytest.fixture(scope="session")
def tiny_sd3_path(tmp_path_factory) -> Path:
    """A tiny SD3.5 pipeline folder built once per test session."""
    return build_tiny_sd3(tmp_path_factory.mktemp("tiny-sd3"))
