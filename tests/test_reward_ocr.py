"""OCR reward with the real RapidOCR models (shipped in the wheel) on text rendered by PIL."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image, ImageDraw, ImageFont

pytest.importorskip("rapidocr_onnxruntime")

import treesdk.registry as registry
from treesdk_plugins import common
from treesdk_plugins.ocr import OCRReward, levenshtein, quoted_text, text_similarity


def render(text: str) -> torch.Tensor:
    image = Image.new("RGB", (256, 96), "white")
    ImageDraw.Draw(image).text((12, 30), text, fill="black", font=ImageFont.load_default(size=28))
    return torch.from_numpy(np.array(image)).permute(2, 0, 1).float() / 255


@pytest.fixture(scope="module")
def reward():
    # the detector upscales the short side to 736 px by default; the test images are 96 px tall
    return OCRReward(det_limit_side_len=96)


def test_right_prompt_scores_higher_than_wrong(reward):
    image = render("HELLO WORLD")
    images = torch.stack([image, image, image])
    prompts = ['a sign that says "hello world"', "a poster reading “Hello  World”", 'a sign that says "quantum zebra"']
    got = reward.score(images, prompts)
    assert got.shape == (3,) and got.dtype == torch.float32
    assert got[0] > 0.9 and got[1] == got[0]  # case and whitespace do not matter; curly quotes work
    assert got[2] < got[0] - 0.5


def test_score_is_one_minus_normalised_levenshtein(reward):
    image = render("HELLO WORLD")
    read = reward.read(image)
    expected = 1 - min(levenshtein("hellothere", "".join(read.lower().split())), 10) / 10
    assert reward.score(image[None], ['"hello there"']).item() == pytest.approx(expected)


def test_text_helpers():
    assert quoted_text('a "big" sign with “two words”') == "big two words"
    assert levenshtein("kitten", "sitting") == 3
    assert text_similarity("abc", "") == 0.0
    assert text_similarity("ABC  d", "abc d") == 1.0
    assert text_similarity("Hello World", "HELLOWORLD") == 1.0
    assert text_similarity("abcd", "abxd") == 0.75


def test_prompt_without_quotes_is_an_error(reward):
    with pytest.raises(ValueError, match=r"no quoted text"):
        reward.score(torch.rand(1, 3, 32, 32), ["a sign that says hello"])


def test_missing_rapidocr_names_the_extra(monkeypatch):
    real = common.importlib.import_module

    def fake(name, *args):
        if name == "rapidocr_onnxruntime":
            raise ImportError("No module named 'rapidocr_onnxruntime'")
        return real(name, *args)

    monkeypatch.setattr(common.importlib, "import_module", fake)
    with pytest.raises(common.MissingExtraError, match=r"pip install 'treesdk\[ocr\]'"):
        OCRReward()


def test_ocr_registered():
    assert registry.load("reward", "ocr") is OCRReward
