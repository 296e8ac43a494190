"""Learned rewards for the built-in ``digits`` backend: two digit classifiers trained by the project.

* ``digit-classifier`` (:class:`DigitClassifierReward`): a small CNN trained on the *even* half of
  scikit-learn's digits. Reward = softmax probability of the prompted digit. This is the reward RL
  optimises.
* ``digit-evaluator`` (:class:`DigitEvaluatorReward`): an MLP (a different architecture) trained
  on the *odd* half. Use it only for held-out evaluation, so that "RL improved the digits" is not
  just "RL fooled the reward network".

Both ship their weights (``weights/digit_classifier.safetensors``, ``weights/digit_evaluator.safetensors``,
written by ``examples/pretrain_digits.py``); ``weights/digit_rewards.json`` records how they were
made and each one's accuracy on the half it never saw.

Input handling: images float ``[B, 3, H, W]`` (or ``[B, 1, H, W]``) in ``[0, 1]`` of any size are
clipped to ``[0, 1]``, averaged over channels, resized to 8x8 (area averaging when shrinking,
bilinear otherwise) and scaled to ``[-1, 1]`` (background -1, as the digits backend's latents).
"""

from __future__ import annotations

import json
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from safetensors import safe_open
from safetensors.torch import load_file
from torch import Tensor, nn
from treesdk_backends.digits_prompts import parse_digit_prompt

from treesdk.state_dicts import diff_state_dicts
from treesdk.interfaces import RewardModel
from treesdk.io import atomic_save_safetensors

from .common import WeightsStatus

__all__ = [
    "WEIGHTS_DIR",
    "DigitClassifierNet",
    "DigitClassifierReward",
    "DigitEvaluatorNet",
    "DigitEvaluatorReward",
    "preprocess_digit_images",
    "save_classifier_checkpoint",
]

WEIGHTS_DIR = Path(__file__).resolve().parent / "weights"
FORMAT_KEY = "treesdk_format"


class DigitClassifierNet(nn.Module):
    """CNN: ``[B, 1, 8, 8]`` in ``[-1, 1]`` -> logits ``[B, 10]``.

    conv3x3(32)-SiLU-conv3x3(32)-SiLU-maxpool -> 4x4, conv3x3(64)-SiLU-maxpool -> 2x2, linear 256->64->10.
    """

    format_value = "digit-classifier-cnn-v1"

    def __init__(self) -> None:
        super().__init__()
        self.features = nn.Sequential(
            nn.Conv2d(1, 32, 3, padding=1), nn.SiLU(),
            nn.Conv2d(32, 32, 3, padding=1), nn.SiLU(),
            nn.MaxPool2d(2),
            nn.Conv2d(32, 64, 3, padding=1), nn.SiLU(),
            nn.MaxPool2d(2),
        )  # fmt: skip
        self.head = nn.Sequential(nn.Flatten(), nn.Linear(256, 64), nn.SiLU(), nn.Dropout(0.2), nn.Linear(64, 10))

    def forward(self, x: Tensor) -> Tensor:
        return self.head(self.features(x))


class DigitEvaluatorNet(nn.Module):
    """MLP on the 64 pixels: ``[B, 1, 8, 8]`` in ``[-1, 1]`` -> logits ``[B, 10]`` (64->256->128->10, GELU)."""

    format_value = "digit-evaluator-mlp-v1"

    def __init__(self) -> None:
        super().__init__()
        self.mlp = nn.Sequential(
            nn.Flatten(),
            nn.Linear(64, 256), nn.GELU(), nn.Dropout(0.2),
            nn.Linear(256, 128), nn.GELU(), nn.Dropout(0.2),
            nn.Linear(128, 10),
        )  # fmt: skip

    def forward(self, x: Tensor) -> Tensor:
        return self.mlp(x)


def preprocess_digit_images(images: Tensor) -> Tensor:
    """Images float ``[B, C, H, W]`` in ``[0, 1]`` (C = 1 or 3, any H, W) -> ``[B, 1, 8, 8]`` in ``[-1, 1]``."""
    if images.ndim != 4 or images.shape[1] not in (1, 3):
        raise ValueError(f"digit rewards take images [B, 3, H, W] (or [B, 1, H, W]); got shape {tuple(images.shape)}")
    gray = images.float().clamp(0.0, 1.0).mean(dim=1, keepdim=True)
    height, width = gray.shape[-2:]
    if (height, width) != (8, 8):
        if height >= 8 and width >= 8:
            gray = F.interpolate(gray, size=(8, 8), mode="area")
        else:
            gray = F.interpolate(gray, size=(8, 8), mode="bilinear", align_corners=False)
    return gray * 2.0 - 1.0


def save_classifier_checkpoint(net: nn.Module, path: str | os.PathLike[str], metadata: dict[str, str]) -> str:
    """Write a digit classifier/evaluator network as safetensors with its format marker."""
    meta = {str(k): str(v) for k, v in metadata.items()}
    meta[FORMAT_KEY] = net.format_value  # type: ignore[assignment]
    state = {k: v.detach().to(torch.float32) for k, v in net.state_dict().items()}
    return str(atomic_save_safetensors(state, path, meta))


class _DigitReward(RewardModel):
    """Shared loading, preprocessing and batching of the two digit rewards."""

    _net_class: type[nn.Module]
    _default_file: str

    @classmethod
    def weights_status(cls) -> WeightsStatus:
        """Whether the shipped checkpoint is on disk (presence only; the file is not read)."""
        path = WEIGHTS_DIR / cls._default_file
        return WeightsStatus(path.is_file(), [str(path)], "shipped with treesdk" if path.is_file() else "the shipped file is missing (reinstall treesdk)")

    def __init__(self, checkpoint: str | os.PathLike[str] | None = None, device: str | torch.device = "cpu", batch_size: int = 256,
                 temperature: float = 1.0) -> None:
        if int(batch_size) < 1:
            raise ValueError(f"batch_size must be >= 1, got {batch_size}")
        if not float(temperature) > 0:
            raise ValueError(f"temperature must be > 0, got {temperature}")
        self.batch_size = int(batch_size)
        #: softmax temperature of the scores: > 1 asks for larger logit margins (a stricter reward)
        self.temperature = float(temperature)
        self.checkpoint = Path(checkpoint).expanduser() if checkpoint is not None else WEIGHTS_DIR / self._default_file
        self.net = self._net_class()
        self.net.load_state_dict(self._read(self.checkpoint), strict=True)
        self.net.requires_grad_(False).eval()
        self._device = torch.device("cpu")
        self.to(device)

    def _read(self, path: Path) -> dict[str, Tensor]:
        expected = self._net_class().state_dict()
        fmt = self._net_class.format_value  # type: ignore[attr-defined]
        how = (
            f"expected a safetensors file with metadata {FORMAT_KEY}={fmt!r} and tensors "
            f"{sorted(expected)} (written by examples/pretrain_digits.py)"
        )
        if not path.is_file():
            raise FileNotFoundError(
                f"{self.name} checkpoint not found at {path}; {how}. Pass checkpoint=None for the shipped weights."
            )
        try:
            with safe_open(str(path), framework="pt") as handle:
                metadata = dict(handle.metadata() or {})
            state = load_file(str(path))
        except Exception as exc:
            raise ValueError(f"{self.name} checkpoint {path} is not readable safetensors ({exc}); {how}") from exc
        if metadata.get(FORMAT_KEY) != fmt:
            raise ValueError(f"{self.name} checkpoint {path} has {FORMAT_KEY}={metadata.get(FORMAT_KEY)!r}; {how}")
        diff = diff_state_dicts(expected, state)
        if diff.missing or diff.unexpected:
            raise ValueError(
                f"{self.name} checkpoint {path}: missing keys {diff.missing}, unexpected keys {diff.unexpected}; {how}"
            )
        if diff.wrong_shape:
            key = diff.wrong_shape[0]
            raise ValueError(
                f"{self.name} checkpoint {path}: {key!r} has shape {tuple(state[key].shape)}, "
                f"expected {tuple(expected[key].shape)}"
            )
        return state

    def to(self, device: torch.device | str) -> _DigitReward:
        self._device = torch.device(device)
        self.net.to(self._device)
        return self

    @property
    def device(self) -> torch.device:
        return self._device

    @torch.no_grad()
    def probabilities(self, images: Tensor) -> Tensor:
        """Class probabilities float32 ``[B, 10]`` on the CPU for images ``[B, 3, H, W]`` in ``[0, 1]``
        (softmax of the logits divided by :attr:`temperature`)."""
        x = preprocess_digit_images(images)
        out = [
            torch.softmax(self.net(x[i : i + self.batch_size].to(self._device)).float() / self.temperature, dim=1).cpu()
            for i in range(0, x.shape[0], self.batch_size)
        ]
        return torch.cat(out) if out else torch.zeros(0, 10)

    @torch.no_grad()
    def features(self, images: Tensor) -> Tensor:
        """Penultimate-layer activations float32 ``[B, D]`` on the CPU (the embedding ``treesdk``'s
        diversity metric measures distances in)."""
        x = preprocess_digit_images(images)
        trunk = self._trunk()
        out = [trunk(x[i : i + self.batch_size].to(self._device)).float().cpu() for i in range(0, x.shape[0], self.batch_size)]
        return torch.cat(out) if out else torch.zeros(0, 0)

    def _trunk(self) -> nn.Module:
        """The network without its last linear layer (eval mode, so dropout is off)."""
        if isinstance(self.net, DigitEvaluatorNet):
            return self.net.mlp[:-1]
        return nn.Sequential(self.net.features, *self.net.head[:-1])

    def predict(self, images: Tensor) -> Tensor:
        """Most probable digit, int64 ``[B]`` on the CPU."""
        return self.probabilities(images).argmax(dim=1)

    def score(self, images: Tensor, prompts: Sequence[str]) -> Tensor:
        """Probability of the digit each prompt names: float32 ``[B]`` in ``[0, 1]``, on the CPU."""
        if isinstance(prompts, str):
            raise TypeError("score takes a sequence of B prompts, got a single string")
        if len(prompts) != images.shape[0]:
            raise ValueError(f"{self.name}: {images.shape[0]} images but {len(prompts)} prompts")
        labels = torch.tensor([parse_digit_prompt(p) for p in prompts], dtype=torch.int64)
        probs = self.probabilities(images)
        return probs.gather(1, labels.view(-1, 1)).squeeze(1).to(torch.float32)

    def describe(self) -> dict[str, Any]:
        info: dict[str, Any] = {"reward": self.name, "checkpoint": str(self.checkpoint)}
        record = self.checkpoint.parent / "digit_rewards.json"
        if record.is_file():
            info.update(json.loads(record.read_text()).get(self.name, {}))
        return info


class DigitClassifierReward(_DigitReward):
    """``digit-classifier``: CNN trained on the even half of the digits; reward = p(prompted digit).

    Args:
        checkpoint: safetensors file of a :class:`DigitClassifierNet` (None = the shipped weights).
        device: where the network runs; scores always come back on the CPU.
        batch_size: images per forward pass.
    """

    name = "digit-classifier"
    _net_class = DigitClassifierNet
    _default_file = "digit_classifier.safetensors"


class DigitEvaluatorReward(_DigitReward):
    """``digit-evaluator``: MLP trained on the odd half; held-out evaluation only. Same options as
    :class:`DigitClassifierReward`; score = softmax probability of the prompted digit."""

    name = "digit-evaluator"
    _net_class = DigitEvaluatorNet
    _default_file = "digit_evaluator.safetensors"
