"""ImageReward (Xu et al. 2023, ``THUDM/ImageReward``), rebuilt on transformers' BLIP modules.

Why a rebuild and not the official package: ``image-reward`` 1.5 cannot be imported beside
transformers 5 / diffusers 0.42 (``ImageReward/models/BLIP/med.py`` imports helpers transformers
removed, the package ``__init__`` pulls in its ReFL trainer with old diffusers/datasets/hub pins, and
the ``clip`` package from git). Of the two ways out (rebuild, or a worker process running the
official package in an old environment) we rebuild: a reward is called every training iteration
on GPU batches, and a worker would need a second full torch/CUDA stack, copy every image batch
through a pipe and score one image at a time as the official ``score`` does. The rebuild is small
because the official model *is* BLIP, which transformers ships:

* ``blip.visual_encoder`` (BLIP's timm-style ViT, LayerNorm eps 1e-6, exact GELU) is
  ``BlipVisionModel``: same attention (fused ``qkv`` with bias, scale ``head_dim ** -0.5``), same
  pre-norm blocks, final norm = ``post_layernorm``; only parameter names differ (mapped below).
* ``blip.text_encoder`` (BLIP's ``med.py`` BertModel with cross-attention, no pooler) is
  ``BlipTextModel(add_pooling_layer=False)`` with ``is_decoder=True`` in its config (that is what
  makes transformers create the cross-attention layers) called with ``is_decoder=False``
  (bidirectional self-attention, as the official ``mode='multimodal'`` call); identical names.
* ``mlp`` is the official 768 -> 1024 -> 128 -> 64 -> 16 -> 1 head (dropouts, no activations).

Score, as ``ImageReward.score``: the prompt is tokenised by BERT's uncased WordPiece tokenizer
(``bert-base-uncased`` plus the ``[DEC]`` and ``[ENC]`` special tokens BLIP adds), padded to
``max_length=35`` and truncated; the image goes through ``Resize(224, bicubic)``,
``CenterCrop(224)``, CLIP mean/std; ``reward = (mlp(text_encoder(ids, mask, image_embeds)
.last_hidden_state[:, 0]) - 0.16717362830052426) / 1.0333394966054072``. Here on float tensors
(no uint8 round trip) and in batches (the official code scores one image at a time; with fixed
padding to 35 tokens batching changes nothing).

Loading is strict: every tensor of the rebuilt model must come from ``ImageReward.pt`` with the
right shape; the only checkpoint entries allowed to be unused are the ones the official model holds
but never uses for scoring (``blip.vision_proj``, ``blip.text_proj``) and the ``position_ids``
buffer (checked to be ``arange``). Anything else is an error naming the file.

Score identity with the official package on random weights is checked by
``tools/imagereward_parity.py`` (runs the official code in a separate old-stack environment built by
``tools/imagereward_oldstack.sh``).

Options: ``checkpoint`` (``ImageReward.pt`` or a folder with it; default the file from
``THUDM/ImageReward`` in the local HF cache, else ``$TREESDK_WEIGHTS``), ``med_config`` (its
``med_config.json``; default next to the checkpoint, else the HF cache), ``tokenizer`` (a
``bert-base-uncased`` tokenizer folder or repo id in the local cache), ``vision_heads`` (attention
heads of the ViT; default width // 64, i.e. 16 for the official ViT-L), ``device``, ``dtype``,
``batch_size``. Nothing is downloaded.
"""

from __future__ import annotations

import json
import math
import os
import re
from collections.abc import Sequence
from pathlib import Path

import torch
from torch import Tensor, nn

from treesdk.interfaces import RewardModel

from .common import (
    CLIP_MEAN,
    CLIP_STD,
    RewardMLP,
    batched_score,
    check_inputs,
    clip_preprocess,
    load_state_dict_strict,
    load_torch_checkpoint,
    require,
    resolve_device,
    resolve_dtype,
    WeightsStatus,
    combine_status,
    file_status,
    pretrained_dir_status,
    resolve_file,
    resolve_pretrained_dir,
)

REPO_ID = "THUDM/ImageReward"
CHECKPOINT = "ImageReward.pt"
MED_CONFIG = "med_config.json"
DEFAULT_TOKENIZER = "bert-base-uncased"
#: normalisation of the official scorer (ImageReward.ImageReward.__init__)
MEAN = 0.16717362830052426
STD = 1.0333394966054072
MAX_LENGTH = 35
_FORMAT = (
    f"an ImageReward checkpoint ({CHECKPOINT}: the state dict of ImageReward.ImageReward, keys blip.visual_encoder.*, "
    "blip.text_encoder.*, mlp.layers.*)"
)
#: checkpoint entries the official model holds but does not use for scoring
_UNUSED = re.compile(r"^blip\.(vision_proj|text_proj)\.(weight|bias)$")

_VIT_RENAMES = [
    (r"^cls_token$", "embeddings.class_embedding"),
    (r"^pos_embed$", "embeddings.position_embedding"),
    (r"^patch_embed\.proj\.", "embeddings.patch_embedding."),
    (r"^blocks\.(\d+)\.norm1\.", r"encoder.layers.\1.layer_norm1."),
    (r"^blocks\.(\d+)\.norm2\.", r"encoder.layers.\1.layer_norm2."),
    (r"^blocks\.(\d+)\.attn\.qkv\.", r"encoder.layers.\1.self_attn.qkv."),
    (r"^blocks\.(\d+)\.attn\.proj\.", r"encoder.layers.\1.self_attn.projection."),
    (r"^blocks\.(\d+)\.mlp\.fc([12])\.", r"encoder.layers.\1.mlp.fc\2."),
    (r"^norm\.", "post_layernorm."),
]


def map_official_state_dict(state: dict[str, Tensor], path: Path) -> dict[str, Tensor]:
    """Official ImageReward keys -> the rebuilt model's keys (``visual_encoder``, ``text_encoder``, ``mlp``)."""
    out: dict[str, Tensor] = {}
    unknown: list[str] = []
    for key, value in state.items():
        if _UNUSED.match(key):
            continue
        if key.startswith("blip.visual_encoder."):
            sub = key.removeprefix("blip.visual_encoder.")
            for pattern, repl in _VIT_RENAMES:
                new, n = re.subn(pattern, repl, sub)
                if n:
                    out["visual_encoder." + new] = value
                    break
            else:
                unknown.append(key)
        elif key.startswith("blip.text_encoder."):
            sub = key.removeprefix("blip.text_encoder.")
            if sub == "embeddings.position_ids":
                if not torch.equal(value.flatten().long(), torch.arange(value.numel())):
                    raise ValueError(f"{str(path)!r}: {key} is not 0..N-1; expected {_FORMAT}")
                continue  # a non-persistent buffer in transformers
            out["text_encoder." + sub] = value
        elif key.startswith("mlp."):
            out[key] = value
        else:
            unknown.append(key)
    if unknown:
        raise ValueError(f"{str(path)!r} holds {len(unknown)} entries ImageReward does not have (e.g. {unknown[:3]}); expected {_FORMAT}")
    return out


def _vision_config(transformers, state: dict[str, Tensor], heads: int | None, path: Path):
    """``BlipVisionConfig`` inferred from the official ViT's tensor shapes (ViT-L/16 at 224 for the release)."""
    try:
        pos = state["blip.visual_encoder.pos_embed"]
        patch = state["blip.visual_encoder.patch_embed.proj.weight"]
        fc1 = state["blip.visual_encoder.blocks.0.mlp.fc1.weight"]
    except KeyError as exc:
        raise ValueError(f"{str(path)!r} has no {exc.args[0]}; expected {_FORMAT}") from None
    width, patch_size = int(patch.shape[0]), int(patch.shape[-1])
    grid = math.isqrt(int(pos.shape[1]) - 1)
    if grid * grid != pos.shape[1] - 1:
        raise ValueError(f"{str(path)!r}: pos_embed {tuple(pos.shape)} is not a square grid plus a class token")
    depth = 1 + max(int(m.group(1)) for k in state if (m := re.match(r"blip\.visual_encoder\.blocks\.(\d+)\.", k)))
    heads = heads or max(1, width // 64)
    return transformers.BlipVisionConfig(
        hidden_size=width,
        intermediate_size=int(fc1.shape[0]),
        num_hidden_layers=depth,
        num_attention_heads=heads,
        image_size=grid * patch_size,
        patch_size=patch_size,
        hidden_act="gelu",
        layer_norm_eps=1e-6,
        attention_dropout=0.0,
    )


def _text_config(transformers, med_config: Path, vision_width: int):
    """``BlipTextConfig`` from the official ``med_config.json`` (a BertConfig with cross-attention)."""
    try:
        med = json.loads(med_config.read_text())
    except Exception as exc:  # noqa: BLE001
        raise ValueError(f"{str(med_config)!r} is not a JSON file ({type(exc).__name__}: {exc}); expected ImageReward's {MED_CONFIG}") from exc
    required = ("vocab_size", "hidden_size", "num_hidden_layers", "num_attention_heads", "intermediate_size")
    missing = [k for k in required if k not in med]
    if missing:
        raise ValueError(f"{str(med_config)!r} lacks {missing}; expected ImageReward's {MED_CONFIG} (a BERT config)")
    if med.get("add_cross_attention") is False:
        raise ValueError(f"{str(med_config)!r} sets add_cross_attention=false; ImageReward's text encoder attends to the image")
    return transformers.BlipTextConfig(
        vocab_size=med["vocab_size"],
        hidden_size=med["hidden_size"],
        encoder_hidden_size=vision_width,  # BLIP_Pretrain overrides encoder_width with the ViT width
        intermediate_size=med["intermediate_size"],
        num_hidden_layers=med["num_hidden_layers"],
        num_attention_heads=med["num_attention_heads"],
        max_position_embeddings=med.get("max_position_embeddings", 512),
        hidden_act=med.get("hidden_act", "gelu"),
        layer_norm_eps=med.get("layer_norm_eps", 1e-12),
        pad_token_id=med.get("pad_token_id", 0),
        # generation-only ids; BlipTextConfig's defaults assume the full BERT vocabulary
        bos_token_id=med.get("bos_token_id"),
        eos_token_id=med.get("eos_token_id"),
        sep_token_id=med.get("sep_token_id"),
        hidden_dropout_prob=med.get("hidden_dropout_prob", 0.0),
        attention_probs_dropout_prob=med.get("attention_probs_dropout_prob", 0.0),
        is_decoder=True,  # creates the cross-attention layers; forward uses is_decoder=False
    )


class ImageRewardNet(nn.Module):
    """BLIP ViT + BLIP text encoder with cross-attention + reward head. ``forward`` -> raw head output ``[B]``."""

    def __init__(self, transformers, vision_config, text_config) -> None:
        super().__init__()
        self.visual_encoder = transformers.BlipVisionModel(vision_config)
        self.text_encoder = transformers.BlipTextModel(text_config, add_pooling_layer=False)
        self.mlp = RewardMLP(text_config.hidden_size)

    def forward(self, pixels: Tensor, input_ids: Tensor, attention_mask: Tensor) -> Tensor:
        image_embeds = self.visual_encoder(pixel_values=pixels).last_hidden_state
        image_atts = torch.ones(image_embeds.shape[:-1], dtype=torch.long, device=image_embeds.device)
        text = self.text_encoder(
            input_ids=input_ids,
            attention_mask=attention_mask,
            encoder_hidden_states=image_embeds,
            encoder_attention_mask=image_atts,
            is_decoder=False,
        )
        return self.mlp(text.last_hidden_state[:, 0, :].float()).squeeze(-1)


class ImageRewardReward(RewardModel):
    """ImageReward v1.0 score, normalised as the official scorer; float32 ``[B]``, higher is better."""

    name = "imagereward"

    @classmethod
    def weights_status(cls) -> WeightsStatus:
        """Whether the default checkpoint, ``med_config.json`` and tokenizer are on disk; loads nothing."""
        return combine_status(
            file_status(CHECKPOINT, REPO_ID), file_status(MED_CONFIG, REPO_ID),
            pretrained_dir_status(DEFAULT_TOKENIZER, "a BERT tokenizer folder", resolve_pretrained_dir_or_vocab),
        )

    def __init__(
        self,
        checkpoint: str | os.PathLike[str] | None = None,
        med_config: str | os.PathLike[str] | None = None,
        tokenizer: str | os.PathLike[str] = DEFAULT_TOKENIZER,
        vision_heads: int | None = None,
        device: str | torch.device | None = None,
        dtype: str | torch.dtype | None = None,
        batch_size: int = 16,
    ) -> None:
        transformers = require("transformers", "clip", self.name)
        require("torchvision", "clip", self.name)
        self.device = resolve_device(device)
        self.dtype = resolve_dtype(dtype, self.device)
        self.batch_size = int(batch_size)

        path = resolve_file(checkpoint, filename=CHECKPOINT, repo_id=REPO_ID, what=_FORMAT, option="checkpoint")
        if med_config is None and (path.parent / MED_CONFIG).is_file():
            med_config = path.parent / MED_CONFIG
        med_path = resolve_file(
            med_config, filename=MED_CONFIG, repo_id=REPO_ID, what=f"ImageReward's {MED_CONFIG} (a BERT config)", option="med_config"
        )
        state = load_torch_checkpoint(path, _FORMAT)
        if not isinstance(state, dict) or not state:
            raise ValueError(f"{str(path)!r} is not a state dict; expected {_FORMAT}")
        if "state_dict" in state and isinstance(state["state_dict"], dict):
            state = state["state_dict"]
        vision_config = _vision_config(transformers, state, vision_heads, path)
        text_config = _text_config(transformers, med_path, vision_config.hidden_size)
        self.model = ImageRewardNet(transformers, vision_config, text_config)
        load_state_dict_strict(self.model, map_official_state_dict(state, path), path, _FORMAT + f" with {med_path.name}")
        self.model.to(device=self.device, dtype=self.dtype).eval()
        self.model.mlp.float()  # the official head runs on .float() features
        self.image_size = vision_config.image_size

        tok_dir = resolve_pretrained_dir_or_vocab(tokenizer)
        try:
            self.tokenizer = transformers.BertTokenizer.from_pretrained(tok_dir, local_files_only=True)
        except Exception as exc:  # noqa: BLE001
            raise FileNotFoundError(
                f"tokenizer={str(tokenizer)!r}: no BERT tokenizer in {str(tok_dir)!r} ({type(exc).__name__}: {exc}); "
                "expected the bert-base-uncased tokenizer (vocab.txt)"
            ) from exc
        # as BLIP's init_tokenizer: bos [DEC], additional special [ENC] (ids 30522, 30523 for bert-base-uncased)
        self.tokenizer.add_special_tokens({"bos_token": "[DEC]"})
        self.tokenizer.add_special_tokens({"additional_special_tokens": ["[ENC]"]})
        if len(self.tokenizer) > text_config.vocab_size:
            raise ValueError(
                f"tokenizer {str(tokenizer)!r} has {len(self.tokenizer)} tokens but {med_path} sets vocab_size "
                f"{text_config.vocab_size}; expected bert-base-uncased with ImageReward's med_config.json"
            )

    def to(self, device: torch.device | str) -> ImageRewardReward:
        self.device = torch.device(device)
        self.model.to(self.device)
        return self

    def _score(self, images: Tensor, prompts: list[str]) -> Tensor:
        pixels = clip_preprocess(images.to(self.device, torch.float32), self.image_size, None, CLIP_MEAN, CLIP_STD)
        tokens = self.tokenizer(prompts, padding="max_length", truncation=True, max_length=MAX_LENGTH, return_tensors="pt")
        raw = self.model(pixels.to(self.dtype), tokens["input_ids"].to(self.device), tokens["attention_mask"].to(self.device))
        return (raw.float() - MEAN) / STD

    def score(self, images: Tensor, prompts: Sequence[str]) -> Tensor:
        check_inputs(images, prompts, self.name)
        return batched_score(images, prompts, self.batch_size, self._score)


def resolve_pretrained_dir_or_vocab(name_or_path: str | os.PathLike[str]) -> Path:
    """A tokenizer folder (needs no ``config.json``) or a repo id in the local HF cache."""
    path = Path(os.path.expanduser(str(name_or_path)))
    if path.is_dir():
        return path
    return resolve_pretrained_dir(name_or_path, "a BERT tokenizer folder (bert-base-uncased)", "tokenizer")
