"""Tokenizers trained on the fly for the tiny pipelines, saved in the layout the hub ships.

transformers 5 traps: ``CLIPTokenizer(vocab_file=...)`` and ``T5TokenizerFast(vocab_file=...)``
silently ignore their files, so each tokenizer is trained here with the ``tokenizers`` library
(or sentencepiece for T5) with the *same* normaliser and pre-tokeniser as the transformers class
that loads it, then handed to that class (``from_pretrained(raw_dir)`` or ``vocab=``/``merges=``)
and saved with ``save_pretrained``. The pipelines load them back with ``from_pretrained(folder)``.

The BPE trainer may break frequency ties differently between processes, so token ids (never the
layout or the shapes) can differ from one build to the next.
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from pathlib import Path

from ._common import CLIP_MAX_LENGTH

# A small corpus; prompts used by tests and the default prompt sets are drawn from these words.
CORPUS = [
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

#: Lumina-Image 2.0's system prompt (prepended to every prompt by ``Lumina2Pipeline``)
LUMINA2_SYSTEM = (
    "You are an assistant designed to generate superior images with the superior degree of "
    "image-text alignment based on textual prompts or user prompts. <Prompt Start>"
)

#: Qwen-Image's system prompt: in the corpus so that each of its words is one token, as with the
#: real Qwen2.5 tokenizer (the pipeline drops the template's first 34 tokens by position)
QWEN_IMAGE_SYSTEM = (
    "Describe the image by detailing the color, shape, size, texture, quantity, text, spatial "
    "relationships of the objects and background:"
)
QWEN_SPECIAL_TOKENS = [
    "<|endoftext|>",
    "<|im_start|>",
    "<|im_end|>",
    "<|vision_start|>",
    "<|vision_end|>",
    "<|image_pad|>",
    "<|video_pad|>",
    "<think>",
    "</think>",
]
#: Qwen3's chat template reduced to what the pipelines use (``enable_thinking=False`` appends an
#: empty think block to the generation prompt, as Qwen3's does)
QWEN_CHAT_TEMPLATE = (
    "{%- for message in messages %}"
    "{{- '<|im_start|>' + message['role'] + '\\n' + message['content'] + '<|im_end|>\\n' }}"
    "{%- endfor %}"
    "{%- if add_generation_prompt %}{{- '<|im_start|>assistant\\n' }}"
    "{%- if enable_thinking is defined and enable_thinking is false %}"
    "{{- '<think>\\n\\n</think>\\n\\n' }}{%- endif %}{%- endif %}"
)


def train_clip_tokenizer(out_dir: Path) -> None:
    """A CLIP-style BPE (``</w>`` word suffix), saved as CLIPTokenizer plus ``vocab.json``/``merges.txt``."""
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
    tok.train_from_iterator(CORPUS * 4, trainer)
    with tempfile.TemporaryDirectory() as raw:
        tok.model.save(raw)  # vocab.json + merges.txt, CLIP's file layout
        clip_tok = CLIPTokenizer.from_pretrained(
            raw,
            model_max_length=CLIP_MAX_LENGTH,
            bos_token="<|startoftext|>",
            eos_token="<|endoftext|>",
            unk_token="<|endoftext|>",
            pad_token="<|endoftext|>",
        )
        clip_tok.save_pretrained(out_dir)
        for name in ("vocab.json", "merges.txt"):  # the hub's FLUX/SD3 tokenizer folders ship these too
            shutil.copyfile(os.path.join(raw, name), Path(out_dir) / name)


def train_t5_tokenizer(out_dir: Path) -> None:
    """A sentencepiece unigram model (T5's ``spiece.model``) saved as T5TokenizerFast (T5, UMT5)."""
    import sentencepiece as spm
    from transformers import T5TokenizerFast

    with tempfile.TemporaryDirectory() as raw:
        spm.SentencePieceTrainer.train(
            sentence_iterator=iter(CORPUS * 4),
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
        shutil.copyfile(os.path.join(raw, "spiece.model"), Path(out_dir) / "spiece.model")


def _bpe_vocab_and_merges(tok) -> tuple[dict[str, int], list[tuple[str, str]]]:
    model = json.loads(tok.to_str())["model"]
    merges = [tuple(m.split(" ", 1)) if isinstance(m, str) else tuple(m) for m in model["merges"]]
    return dict(model["vocab"]), merges


def train_qwen_tokenizer(out_dir: Path, vocab_size: int = 600):
    """A byte-level BPE with Qwen2's pre-tokeniser, special tokens and a Qwen3-style chat template,
    saved as ``Qwen2Tokenizer`` (Qwen-Image, Z-Image, FLUX.2-klein). Returns the tokenizer."""
    from tokenizers import Regex, Tokenizer, models, normalizers, pre_tokenizers, trainers
    from transformers import Qwen2Tokenizer
    from transformers.models.qwen2.tokenization_qwen2 import PRETOKENIZE_REGEX

    tok = Tokenizer(models.BPE())
    tok.normalizer = normalizers.NFC()
    tok.pre_tokenizer = pre_tokenizers.Sequence(
        [
            pre_tokenizers.Split(Regex(PRETOKENIZE_REGEX), behavior="isolated", invert=False),
            pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False),
        ]
    )
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=QWEN_SPECIAL_TOKENS,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tok.train_from_iterator((CORPUS + [QWEN_IMAGE_SYSTEM, "system", "user", "assistant"]) * 8, trainer)
    vocab, merges = _bpe_vocab_and_merges(tok)
    qwen_tok = Qwen2Tokenizer(
        vocab=vocab,
        merges=merges,
        additional_special_tokens=QWEN_SPECIAL_TOKENS[1:],
        model_max_length=32768,
        chat_template=QWEN_CHAT_TEMPLATE,
    )
    qwen_tok.save_pretrained(out_dir)
    return Qwen2Tokenizer.from_pretrained(out_dir)


def train_gemma_tokenizer(out_dir: Path, vocab_size: int = 300):
    """A BPE with Gemma's normaliser (spaces as ``▁``) and special tokens, saved as
    ``GemmaTokenizer`` (Lumina2's Gemma2 text encoder). Returns the tokenizer."""
    from tokenizers import Tokenizer, models, normalizers, pre_tokenizers, trainers
    from transformers import GemmaTokenizer

    specials = ["<pad>", "<eos>", "<bos>", "<unk>", "<mask>"]
    tok = Tokenizer(models.BPE(unk_token="<unk>", fuse_unk=True, byte_fallback=True))
    tok.normalizer = normalizers.Replace(" ", "▁")
    tok.pre_tokenizer = pre_tokenizers.Split(pattern="▁", behavior="merged_with_next", invert=False)
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=specials,
        initial_alphabet=["▁", "<", ">"] + _ALPHABET + [c.upper() for c in _ALPHABET if c.isalpha()],
        show_progress=False,
    )
    tok.train_from_iterator((CORPUS + [LUMINA2_SYSTEM]) * 8, trainer)
    vocab, merges = _bpe_vocab_and_merges(tok)
    gemma_tok = GemmaTokenizer(vocab=vocab, merges=merges, add_bos_token=True, model_max_length=8192)
    gemma_tok.save_pretrained(out_dir)
    return GemmaTokenizer.from_pretrained(out_dir)


MISTRAL_SPECIAL_TOKENS = ["<unk>", "<s>", "</s>", "<pad>", "[INST]", "[/INST]", "[SYSTEM_PROMPT]", "[/SYSTEM_PROMPT]",
                          "[IMG]", "[IMG_BREAK]", "[IMG_END]"]
#: Mistral-Small-3's chat template reduced to text turns (content as a string or a list of parts)
MISTRAL_CHAT_TEMPLATE = (
    "{{- bos_token }}{%- for message in messages %}"
    "{%- if message['content'] is string %}{%- set text = message['content'] %}"
    "{%- else %}{%- set text = message['content'] | selectattr('type', 'equalto', 'text') | map(attribute='text') "
    "| join('') %}{%- endif %}"
    "{%- if message['role'] == 'system' %}{{- '[SYSTEM_PROMPT]' + text + '[/SYSTEM_PROMPT]' }}"
    "{%- elif message['role'] == 'user' %}{{- '[INST]' + text + '[/INST]' }}"
    "{%- else %}{{- text + eos_token }}{%- endif %}{%- endfor %}"
)


def train_pixtral_processor(out_dir: Path, system_message: str, vocab_size: int = 700):
    """A byte-level BPE with Mistral's special tokens and a Mistral-Small-3-style chat template,
    inside a ``PixtralProcessor`` (FLUX.2-dev's ``tokenizer`` component). Returns the processor."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import AutoProcessor, PixtralImageProcessor, PixtralProcessor
    from transformers.tokenization_utils_tokenizers import TokenizersBackend

    tok = Tokenizer(models.BPE(unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=MISTRAL_SPECIAL_TOKENS,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tok.train_from_iterator((CORPUS + [system_message]) * 8, trainer)
    fast = TokenizersBackend(tokenizer_object=tok, bos_token="<s>", eos_token="</s>", unk_token="<unk>",
                             pad_token="<pad>", model_max_length=131072)
    processor = PixtralProcessor(image_processor=PixtralImageProcessor(patch_size=16), tokenizer=fast, patch_size=16,
                                 spatial_merge_size=2, chat_template=MISTRAL_CHAT_TEMPLATE)
    processor.save_pretrained(out_dir)
    return AutoProcessor.from_pretrained(out_dir)
