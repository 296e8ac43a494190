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


def test_ink_box_features_ignore_position_and_shade():
    from treesdk_backends.glyphs_features import FEATURE_SHAPE, ink_box_features

    word = torch.zeros(1, 3, 32, 96)  # paper shade 0.9, ink shade 0.2, a 6x12 box of ink at two places
    word[:] = 0.9
    moved = word.clone()
    word[..., 10:16, 20:32] = 0.2
    moved[..., 3:9, 70:82] = 0.0
    feats = ink_box_features(torch.cat([word, moved]))
    assert feats.shape == (2, FEATURE_SHAPE[0] * FEATURE_SHAPE[1])
    # by hand: the 6x12 box is padded to 6x18 (aspect 1:3, 3 columns of paper each side) and
    # resized to 12x36: columns 0-5 and 30-35 paper (0), the middle ink (1); then centred, unit norm
    box = torch.zeros(FEATURE_SHAPE)
    box[:, 6:30] = 1.0
    expected = (box.flatten() - box.mean()) / (box.flatten() - box.mean()).norm()
    torch.testing.assert_close(feats[0], expected)
    torch.testing.assert_close(feats[1], expected)
    torch.testing.assert_close(feats.norm(dim=1), torch.ones(2))


def test_glyphs_precision_catches_noise_and_blobs():
    import random

    from treesdk_backends.glyphs_data import render_batch

    from treesdk.diversity import precision_recall

    backend = treesdk.load_backend("glyphs", device="cpu")
    word = WORDS[0]
    refs = backend.fidelity_features(backend.reference_images([glyphs_prompt(word)])[glyphs_prompt(word)])
    renders = render_batch([word] * 8, random.Random(0)).repeat(1, 3, 1, 1)
    noise = torch.rand(8, 3, 32, 96, generator=torch.Generator().manual_seed(0))
    blob = torch.ones(8, 3, 32, 96)
    blob[..., 8:24, 20:70] = 0.0
    assert precision_recall(backend.fidelity_features(renders), refs, 3)[0] >= 0.75
    assert precision_recall(backend.fidelity_features(noise), refs, 3)[0] == 0.0
    assert precision_recall(backend.fidelity_features(blob), refs, 3)[0] == 0.0


def test_glyphs_eval_set_measures_precision_and_recall():
    from treesdk.evaluation import diversity_source, fidelity_and_coverage

    backend = treesdk.load_backend("glyphs", device="cpu")
    prompts, seeds = backend.eval_set()
    assert len(prompts) == len(seeds) and len(set(zip(prompts, seeds))) == len(prompts)
    assert all(prompts.count(p) > 3 for p in prompts)  # k = 3 neighbours need four images per word
    assert diversity_source(backend, {}) == "backend"
    words = [parse_word_prompt(p) for p in dict.fromkeys(prompts)]
    assert set(words) <= set(HELDOUT_WORDS)
    clean = torch.cat([_clean([w]).repeat(4, 1, 1, 1) for w in words])  # clean renders score as on the data
    feats = backend.fidelity_features(clean)
    precision, recall = fidelity_and_coverage(backend, backend.fidelity_features, feats, [p for p in dict.fromkeys(prompts) for _ in range(4)])
    assert precision == 1.0 and recall is not None


def test_two_glyphs_iterations_train_and_evaluate_with_both_engines(tmp_path):
    """The glyphs bed end to end: a binary tree trained on PP-OCR for two iterations, evaluated
    before and after with Tesseract held out, precision/recall and the hacking audit included."""
    backend = treesdk.load_backend("glyphs", device="cpu")
    recipe = treesdk.load_algorithm("treegrpo", **{**backend.recipe_defaults(), "tree.d": 2, "tree.k": 2})
    rewards = {"ocr": treesdk.load_reward("ocr")}
    words = list(TRAIN_WORDS[:4])
    eval_words = list(HELDOUT_WORDS[:3])
    run = treesdk.train(recipe, backend, rewards, [glyphs_prompt(w) for w in words], iters=2, batch=2, seed=0,
                        out_dir=tmp_path / "run", eval_prompts=[glyphs_prompt(w) for w in eval_words for _ in range(4)],
                        eval_seeds=[1000 + s for _ in eval_words for s in range(4)],
                        eval_rewards={"tesseract-ocr": treesdk.load_reward("tesseract-ocr")})
    assert len(run.history) == 2 and all(math.isfinite(row["reward_mean"]) for row in run.history)
    for figures in (run.eval_before, run.eval_after):
        assert 0.0 <= figures["tesseract-ocr_mean"] <= 1.0 and 0.0 <= figures["ocr_mean"] <= 1.0
        assert figures["precision"] is not None and figures["recall"] is not None
        assert 0.0 < figures["dark_fraction"] < 1.0 and figures["intensity_entropy"] > 0.0
    assert run.eval_before != run.eval_after  # the weights moved


def test_an_unset_iters_is_the_backends_default_and_a_given_one_wins():
    from treesdk.training.loop.runs import build_run_parts

    from treesdk_backends.glyphs import GlyphsBackend
    from treesdk_backends.digits import DigitsBackend

    assert GlyphsBackend.default_iters < DigitsBackend.default_iters == 18
    unset = treesdk.RunConfig.model_validate({"backend": {"name": "glyphs"}})
    assert unset.iters is None
    assert build_run_parts(unset).config.iters == GlyphsBackend.default_iters
    given = treesdk.RunConfig.model_validate({"backend": {"name": "glyphs"}, "iters": 3})
    assert build_run_parts(given).config.iters == 3
