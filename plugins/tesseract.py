"""OCR reward on an engine independent of PP-OCR: Tesseract (LSTM recogniser) via ``pytesseract``.

The ``tesseract-ocr`` reward reads each image with ``tesseract`` (the Debian package
``tesseract-ocr``, English model) as one text line (page segmentation mode 7) and scores it
against the prompt's quoted text exactly as the ``ocr`` reward does (see
:mod:`treesdk_plugins.ocr`): ``metric="edit"`` (default) gives ``1 - min(lev, n) / n`` on
lower-cased, whitespace-free strings, ``metric="exact"`` gives 1 for an exact reading else 0. It is
the ``glyphs`` backend's held-out evaluator: never trained on, a different model from PP-OCR, so a
policy that games one engine shows up as a gap to the other.

Images ``[B, 3, H, W]`` in [0, 1] are quantised to 8-bit grayscale and upscaled ``upscale`` times
(Tesseract is tuned for text about 30 px high) with a white border of ``border`` px. It runs on
the CPU, one ``tesseract`` process per image.
"""

from __future__ import annotations

import shutil
from collections.abc import Sequence

import numpy as np
import torch
from torch import Tensor

from treesdk.errors import UserError
from treesdk.interfaces import RewardModel

from .common import WeightsStatus, check_inputs, require
from .ocr import normalise, quoted_text, text_similarity


class TesseractOCRReward(RewardModel):
    """Similarity between the prompt's quoted text and Tesseract's reading; float32 ``[B]`` in [0, 1]."""

    name = "tesseract-ocr"

    @staticmethod
    def weights_status() -> WeightsStatus:
        """Found when the ``tesseract`` binary is on PATH (its models come with the Debian package)."""
        binary = shutil.which("tesseract")
        if binary is None:
            return WeightsStatus(False, ["the tesseract binary"], "install it: apt-get install tesseract-ocr")
        return WeightsStatus(True, [binary], "models ship in the tesseract-ocr Debian package")

    def __init__(self, batch_size: int = 16, device: str | None = None, dtype: str | None = None,
                 metric: str = "edit", upscale: int = 2, border: int = 8, lang: str = "eng") -> None:
        if metric not in ("edit", "exact"):
            raise ValueError(f'reward "tesseract-ocr": metric must be "edit" or "exact", got {metric!r}')
        self.pytesseract = require("pytesseract", "tesseract", self.name)
        if shutil.which("tesseract") is None:
            raise UserError(
                'reward "tesseract-ocr" needs the tesseract binary, which is not on PATH; install the Debian '
                "package tesseract-ocr (apt-get install tesseract-ocr)"
            )
        self.batch_size, self.metric, self.upscale, self.border, self.lang = int(batch_size), metric, int(upscale), int(border), lang

    def read(self, image: Tensor) -> str:
        """Tesseract's reading of one ``[3, H, W]`` image in [0, 1] as a single text line."""
        from PIL import Image, ImageOps

        gray = (image.detach().float().clamp(0, 1).mean(0) * 255).round().to(torch.uint8).cpu().numpy()
        pil = Image.fromarray(np.ascontiguousarray(gray))
        if self.upscale > 1:
            pil = pil.resize((pil.width * self.upscale, pil.height * self.upscale), Image.BICUBIC)
        pil = ImageOps.expand(pil, border=self.border, fill=255)
        return self.pytesseract.image_to_string(pil, lang=self.lang, config="--psm 7").strip()

    def score(self, images: Tensor, prompts: Sequence[str]) -> Tensor:
        check_inputs(images, prompts, self.name)
        targets = [quoted_text(p) for p in prompts]
        values = []
        for img, target in zip(images, targets):
            read = self.read(img)
            values.append(float(normalise(target) == normalise(read)) if self.metric == "exact" else text_similarity(target, read))
        return torch.tensor(values, dtype=torch.float32)
