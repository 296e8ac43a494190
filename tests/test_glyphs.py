"""The glyphs backend, its two OCR rewards and the audit figures (fast, offline, CPU)."""

from __future__ import annotations

import math
import shutil

import pytest
import torch
from treesdk_backends.glyphs_data import HELDOUT_WORDS, TRAIN_WORDS, clean_render
from treesdk_backends.glyphs_prompts import glyphs_prompt, parse_word_prompt

import treesdk
from treesdk import audit, testing

WORDS = HELDOUT_WORDS[::6]  # 11 held-out words of 3-5 letters


def _clean(words):
    return torch.stack([clean_render(w) for w in words]).repeat(1, 3, 1, 1)


def test_word_lists_are_disjoint_and_prompts_parse():
    assert not set(TRAIN_WORDS) & set(HELDOUT_WORDS) and len(HELDOUT_WORDS) >= 40
    assert parse_word_prompt('a sign that says "open"') == "OPEN" and parse_word_prompt("“Cat”") == "CAT"
    with pytest.raises(ValueError, match="quoted"):
        parse_word_prompt("a sign")


def test_glyphs_passes_check_backend():
    report = testing.check_backend(lambda: treesdk.load_backend("glyphs", device="cpu"))
    assert report["nfe"]["nfe"] == report["nfe"]["formula"]


def test_reference_images_are_clean_renders_of_the_word():
    backend = treesdk.load_backend("glyphs", device="cpu")
    refs = backend.reference_images([glyphs_prompt("OPEN"), "no word here!"])
    assert list(refs) == [glyphs_prompt("OPEN")] and refs[glyphs_prompt("OPEN")].shape[1:] == (3, 32, 96)


@pytest.mark.parametrize("name", ["ocr", "tesseract-ocr"])
def test_ocr_rewards_read_clean_heldout_words_and_not_noise(name):
    if name == "tesseract-ocr" and shutil.which("tesseract") is None:
        pytest.skip("tesseract binary not installed")
    reward = treesdk.load_reward(name)
    prompts = [glyphs_prompt(w) for w in WORDS]
    assert reward.score(_clean(WORDS), prompts).tolist() == [1.0] * len(WORDS)
    noise = torch.rand((len(WORDS), 3, 32, 96), generator=torch.Generator().manual_seed(0))
    assert float(reward.score(noise, prompts).mean()) < 0.2


def test_audit_figures_match_hand_computed_values():
    # 2x2 image: luminance [[0, 1], [1, 1]]
    img = torch.tensor([[0.0, 1.0], [1.0, 1.0]]).expand(1, 3, 2, 2)
    assert audit.dark_fraction(img).tolist() == [0.25]
    # gradients: (0,0): dx=1, dy=1 -> sqrt2; (0,1): dx=0 (pad), dy=0; (1,0): dx=0, dy=0 (pad); (1,1): 0
    assert audit.edge_density(img).tolist() == [0.25]
    # histogram: one pixel in bin 0, three in bin 15: H = -(1/4 log2 1/4 + 3/4 log2 3/4)
    expected = -(0.25 * math.log2(0.25) + 0.75 * math.log2(0.75))
    assert audit.intensity_entropy(img).item() == pytest.approx(expected, abs=1e-6)
    assert audit.intensity_entropy(torch.full((1, 1, 3, 3), 0.3)).item() == 0.0
    stats = audit.group_reward_stats([1.0, 1.0, 0.0, 1.0], ["a", "a", "b", "b"])
    assert stats == {"reward_std_per_prompt": pytest.approx(0.25), "zero_std_fraction": 0.5}
