"""Offline OCR reward with ``rapidocr-onnxruntime`` (its detection/recognition ONNX models ship in
the wheel, so nothing is downloaded).

The target is the quoted text of the prompt: every span in straight double quotes ``"..."`` or
curly quotes ``“...”``, joined by a space (a prompt without quoted text is an error: this reward
has nothing to compare with). The read text is every line RapidOCR finds, in reading order (top to
bottom, then left to right), joined by a space. Both are lower-cased and all whitespace is removed
(as Flow-GRPO's OCR reward does: OCR engines do not report word spacing reliably, RapidOCR reads
"HELLO WORLD" as "HELLOWORLD" at some scales). The reward follows Flow-GRPO's OCR reward, without
its substring shortcut (text beyond the target costs edits here)::

    reward = 1 - min(levenshtein(target, read), len(target)) / len(target)      in [0, 1]

(1 = the requested text read exactly; 0 = nothing of it). Levenshtein distance is the standard
unit-cost edit distance (insertions, deletions, substitutions).

Images are quantised to uint8 RGB before OCR. Extra keyword options go to ``RapidOCR(**options)``
(e.g. ``det_limit_side_len=…``: the detector resizes the short side to 736 px by default, slow on
small images). The ONNX models run on the CPU whatever ``device`` says, one image at a time
(``batch_size`` is accepted for a uniform interface).

Options for small one-line images (the ``glyphs`` backend's): ``line=True`` skips detection and
reads the whole image as one text line (recognition only, far faster; ``line=None``, the default,
does so when the image is at most 64 px high and at least twice as wide); ``metric="exact"``
scores 1 when the normalised read text equals the target and 0 otherwise (``"edit"``, the default,
is the formula above); ``confidence=True`` multiplies the score by the recogniser's mean
confidence in [0, 1].
"""

from __future__ import annotations

import re
from collections.abc import Sequence

import numpy as np
import torch
from torch import Tensor

from treesdk.interfaces import RewardModel

from .common import WeightsStatus, check_inputs, require

_QUOTED = re.compile(r'"([^"]+)"|“([^”]+)”')


def quoted_text(prompt: str) -> str:
    """The text a prompt asks to render: its quoted spans joined by a space.

    Raises ``ValueError`` when the prompt has no ``"..."`` or ``“...”`` span.
    """
    spans = [a or b for a, b in _QUOTED.findall(prompt)]
    if not spans:
        raise ValueError(
            f'reward "ocr": prompt {prompt!r} has no quoted text; the OCR reward needs the text to render '
            'in double quotes, e.g. \'a sign that says "OPEN"\''
        )
    return " ".join(spans)


def normalise(text: str) -> str:
    """Lower-case with all whitespace removed."""
    return "".join(text.lower().split())


def levenshtein(a: str, b: str) -> int:
    """Unit-cost edit distance between ``a`` and ``b`` (Wagner-Fischer, two rows)."""
    if len(a) < len(b):
        a, b = b, a
    previous = list(range(len(b) + 1))
    for i, ca in enumerate(a, 1):
        current = [i]
        for j, cb in enumerate(b, 1):
            current.append(min(previous[j] + 1, current[j - 1] + 1, previous[j - 1] + (ca != cb)))
        previous = current
    return previous[-1]


def text_similarity(target: str, read: str) -> float:
    """``1 - min(lev, len(target)) / len(target)`` on normalised strings."""
    target, read = normalise(target), normalise(read)
    if not target:
        raise ValueError("OCR target text is empty once whitespace is removed")
    return 1.0 - min(levenshtein(target, read), len(target)) / len(target)


class OCRReward(RewardModel):
    """Similarity between the prompt's quoted text and the text RapidOCR reads; float32 ``[B]`` in [0, 1]."""

    name = "ocr"

    @staticmethod
    def weights_status() -> WeightsStatus:
        """RapidOCR's ONNX models ship inside ``rapidocr-onnxruntime``: found when the package is
        installed (located with ``importlib.util.find_spec``, not imported)."""
        import importlib.util

        spec = importlib.util.find_spec("rapidocr_onnxruntime")
        where = [str(loc) for loc in (spec.submodule_search_locations or [])] if spec is not None else []
        if spec is None:
            return WeightsStatus(False, ["the Python package rapidocr_onnxruntime"],
                                 "rapidocr-onnxruntime is not installed: pip install 'treesdk[ocr]'")
        return WeightsStatus(True, where, "models ship in the rapidocr-onnxruntime package")

    def __init__(self, batch_size: int = 16, device: str | None = None, dtype: str | None = None,
                 line: bool | None = None, metric: str = "edit", confidence: bool = False, **engine_options) -> None:
        if metric not in ("edit", "exact"):
            raise ValueError(f'reward "ocr": metric must be "edit" or "exact", got {metric!r}')
        rapidocr = require("rapidocr_onnxruntime", "ocr", self.name)
        self.batch_size = int(batch_size)
        self.line, self.metric, self.confidence = line, metric, bool(confidence)
        self.engine = rapidocr.RapidOCR(**engine_options)

    def _is_line(self, image: Tensor) -> bool:
        if self.line is not None:
            return bool(self.line)
        height, width = image.shape[-2:]
        return height <= 64 and width >= 2 * height

    def read_with_confidence(self, image: Tensor) -> tuple[str, float]:
        """``(text, mean confidence in [0, 1])`` of one ``[3, H, W]`` image in [0, 1]."""
        array = (image.detach().float().clamp(0, 1) * 255).round().to(torch.uint8).permute(1, 2, 0).cpu().numpy()
        array = np.ascontiguousarray(array)
        if self._is_line(image):
            result, _ = self.engine(array, use_det=False, use_cls=False)
            lines = [("", text, conf) for text, conf in (result or [])]
        else:
            result, _ = self.engine(array)
            lines = sorted(result or [], key=lambda line: (min(p[1] for p in line[0]), min(p[0] for p in line[0])))
        if not lines:
            return "", 0.0
        return " ".join(str(line[1]) for line in lines), float(np.mean([float(line[2]) for line in lines]))

    def score_text(self, target: str, read: str, confidence: float) -> float:
        """The reward of one reading under this reward's options."""
        if self.metric == "exact":
            value = float(normalise(target) == normalise(read))
        else:
            value = text_similarity(target, read)
        return value * confidence if self.confidence else value

    def read(self, image: Tensor) -> str:
        """Text found in one ``[3, H, W]`` image in [0, 1], lines in reading order joined by spaces."""
        return self.read_with_confidence(image)[0]

    def score(self, images: Tensor, prompts: Sequence[str]) -> Tensor:
        check_inputs(images, prompts, self.name)
        targets = [quoted_text(p) for p in prompts]  # fail before any OCR work
        with torch.no_grad():
            return torch.tensor(
                [self.score_text(t, *self.read_with_confidence(img)) for img, t in zip(images, targets)],
                dtype=torch.float32,
            )
