"""Human Preference Score v2 / v2.1 (Wu et al. 2023, ``tgxs002/HPSv2``).

The official checkpoints ``HPS_v2_compressed.pt`` and ``HPS_v2.1_compressed.pt`` are
``{'state_dict': ...}`` over an open_clip ViT-H-14. We build that model with ``open_clip_torch``
(``open_clip.create_model("ViT-H-14")``, no pretrained tag) and load the state dict strictly.
The score is what ``hpsv2/img_score.py`` computes::

    outputs = model(image, text)            # open_clip normalises both embeddings
    score = diag(image_features @ text_features.T)

i.e. the cosine of the L2-normalised image and text embeddings (no ``logit_scale``; typical values
0.2-0.3). Tokenizer: open_clip's ``get_tokenizer("ViT-H-14")`` (the bundled CLIP BPE, context 77).
Images are preprocessed on tensors exactly as HPS's ``preprocess_val``, which ``img_score`` builds
with ``light_augmentation=True``, i.e. ``ResizeMaxSize(224)`` of HPS's open_clip fork: the *longest*
side is resized to 224 (bicubic, antialiased, on the float tensor after ``ToTensor``), the rest is
zero-padded symmetrically (black, before normalisation), then OpenAI CLIP mean/std. Not open_clip's
own shortest-side resize + center crop: for non-square images that would score a different crop.

Why not the ``hpsv2`` package: it pins ``pytest==7.2.0`` and ``protobuf<4`` (conflicting with the
rest of the stack), its wheel misses the BPE vocabulary file its tokenizer needs (upstream issue
#30), ``initialize_model`` first downloads the 3.9 GB LAION ViT-H-14 weights that the HPS
checkpoint then overwrites, and ``score`` handles one image at a time. open_clip builds the same
architecture from the same config, so loading the HPS state dict into it gives the same network.

Options: ``checkpoint`` (path to the ``.pt`` or a folder with it; default: the file from the
``xswu/HPSv2`` repo in the local HF cache, else ``$TREESDK_WEIGHTS``), ``model_config`` (an open_clip
model name, default ``ViT-H-14``, or the path of an open_clip model-config JSON; tests use a tiny
one), ``device``, ``dtype``, ``batch_size``. Nothing is downloaded.
"""

from __future__ import annotations

import contextlib
import logging
import os
from collections.abc import Sequence
from pathlib import Path

import torch
from torch import Tensor

from treesdk.interfaces import RewardModel

from .common import (
    batched_features,
    CLIP_MEAN,
    CLIP_STD,
    batched_score,
    check_inputs,
    WeightsStatus,
    file_status,
    load_state_dict_strict,
    load_torch_checkpoint,
    require,
    resolve_device,
    resolve_dtype,
    resolve_file,
)

REPO_ID = "xswu/HPSv2"


def hps_preprocess(images: Tensor, size: int, mean=CLIP_MEAN, std=CLIP_STD) -> Tensor:
    """HPS's ``ResizeMaxSize(size)`` + normalisation on ``[B, 3, H, W]`` floats in [0, 1] -> ``[B, 3, size, size]``.

    Longest side to ``size`` (``round(dim * scale)``, bicubic, antialiased), zero padding split
    ``(pad // 2, pad - pad // 2)`` left/right and top/bottom, then ``(x - mean) / std``.
    """
    from torchvision.transforms.v2 import functional as TF

    images = images.clamp(0, 1)
    height, width = images.shape[-2:]
    scale = size / float(max(height, width))
    if scale != 1.0:
        new_h, new_w = round(height * scale), round(width * scale)
        images = TF.resize(images, [new_h, new_w], interpolation=TF.InterpolationMode.BICUBIC, antialias=True)
        pad_h, pad_w = size - new_h, size - new_w
        images = torch.nn.functional.pad(images, (pad_w // 2, pad_w - pad_w // 2, pad_h // 2, pad_h - pad_h // 2), value=0.0)
    mean_t = torch.tensor(mean, dtype=images.dtype, device=images.device).view(1, -1, 1, 1)
    std_t = torch.tensor(std, dtype=images.dtype, device=images.device).view(1, -1, 1, 1)
    return (images - mean_t) / std_t


def _model_name(open_clip, model_config: str | os.PathLike[str]) -> str:
    """An open_clip model name; a JSON path is registered with ``open_clip.add_model_config``."""
    path = Path(os.path.expanduser(str(model_config)))
    if str(model_config).endswith(".json") or path.is_file():
        if not path.is_file():
            raise FileNotFoundError(f"model_config={str(model_config)!r}: no such open_clip model-config JSON file")
        open_clip.add_model_config(path)
        return path.stem
    if str(model_config) not in open_clip.list_models():
        raise ValueError(f"model_config={str(model_config)!r} is neither an open_clip model name nor a JSON file")
    return str(model_config)


@contextlib.contextmanager
def _quiet_root_logger():
    logger = logging.getLogger()
    previous = logger.level
    logger.setLevel(logging.ERROR)
    try:
        yield
    finally:
        logger.setLevel(previous)


class HPSv2Reward(RewardModel):
    """HPS v2: cosine between open_clip ViT-H-14 image and text embeddings; float32 ``[B]``."""

    name = "hpsv2"
    filename = "HPS_v2_compressed.pt"

    @classmethod
    def weights_status(cls) -> WeightsStatus:
        """Whether the default checkpoint is on disk (HF cache of xswu/HPSv2, then ``$TREESDK_WEIGHTS``); loads nothing."""
        return file_status(cls.filename, REPO_ID)

    def __init__(
        self,
        checkpoint: str | os.PathLike[str] | None = None,
        model_config: str | os.PathLike[str] = "ViT-H-14",
        device: str | torch.device | None = None,
        dtype: str | torch.dtype | None = None,
        batch_size: int = 16,
    ) -> None:
        open_clip = require("open_clip", "clip", self.name)
        require("torchvision", "clip", self.name)
        self.device = resolve_device(device)
        self.dtype = resolve_dtype(dtype, self.device)
        self.batch_size = int(batch_size)
        fmt = f"an HPS checkpoint ({self.filename}: a torch file holding {{'state_dict': ...}} of an open_clip {model_config})"
        path = resolve_file(checkpoint, filename=self.filename, repo_id=REPO_ID, what=fmt, option="checkpoint")
        blob = load_torch_checkpoint(path, fmt)
        if not isinstance(blob, dict) or "state_dict" not in blob:
            keys = list(blob)[:5] if isinstance(blob, dict) else type(blob).__name__
            raise ValueError(f"{str(path)!r} has no 'state_dict' entry (found {keys}); expected {fmt}")
        state = {k.removeprefix("module."): v for k, v in blob["state_dict"].items()}

        name = _model_name(open_clip, model_config)
        with _quiet_root_logger():  # open_clip warns "no pretrained weights loaded": we load them next
            self.model = open_clip.create_model(name, pretrained=None, precision="fp32", device="cpu")
        load_state_dict_strict(self.model, state, path, fmt)
        self.model.to(device=self.device, dtype=self.dtype).eval()
        self.tokenizer = open_clip.get_tokenizer(name)
        size = self.model.visual.image_size
        self.image_size = int(size[0] if isinstance(size, (tuple, list)) else size)
        cfg = getattr(self.model.visual, "preprocess_cfg", {}) or {}
        self.mean = tuple(cfg.get("mean", CLIP_MEAN))
        self.std = tuple(cfg.get("std", CLIP_STD))

    def to(self, device: torch.device | str) -> HPSv2Reward:
        self.device = torch.device(device)
        self.model.to(self.device)
        return self

    def _image_embeds(self, images: Tensor) -> Tensor:
        pixels = hps_preprocess(images.to(self.device, torch.float32), self.image_size, self.mean, self.std)
        return self.model.encode_image(pixels.to(self.dtype), normalize=True).float()

    def features(self, images: Tensor) -> Tensor:
        """L2-normalised image embeddings float32 ``[B, D]`` on the CPU (for :mod:`treesdk.diversity`)."""
        return batched_features(images, self.batch_size, self._image_embeds)

    def _score(self, images: Tensor, prompts: list[str]) -> Tensor:
        img = self._image_embeds(images)
        txt = self.model.encode_text(self.tokenizer(prompts).to(self.device), normalize=True).float()
        return (img * txt).sum(-1)

    def score(self, images: Tensor, prompts: Sequence[str]) -> Tensor:
        check_inputs(images, prompts, self.name)
        return batched_score(images, prompts, self.batch_size, self._score)


class HPSv21Reward(HPSv2Reward):
    """HPS v2.1: same model and score as :class:`HPSv2Reward`, the ``HPS_v2.1_compressed.pt`` weights."""

    name = "hpsv2.1"
    filename = "HPS_v2.1_compressed.pt"
