"""PickScore, CLIPScore and the LAION aesthetic predictor on a tiny random CLIP saved with
``save_pretrained`` (plus a BPE tokenizer trained on the fly in CLIP's vocab.json/merges.txt
layout), loaded offline through the plugins' real paths and checked against the official formulas
computed with transformers' own ``CLIPImageProcessor`` and ``CLIPModel.forward``."""

from __future__ import annotations

import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import pytest
import torch
import torch.nn.functional as F

transformers = pytest.importorskip("transformers")

import treesdk.registry as registry
from treesdk_plugins import common
from treesdk_plugins.aesthetic import FILENAME, AestheticReward
from treesdk_plugins.clipscore import CLIPScoreReward
from treesdk_plugins.pickscore import PickScoreReward

PROMPTS = ["a photo of a cat", "a red dog on a sofa", "the quick brown fox", "a handwritten digit seven", "a cat"]


def build_clip_tokenizer(folder) -> None:
    """Train a tiny byte-level BPE and save it as CLIP's vocab.json + merges.txt (with ``</w>`` ends)."""
    from tokenizers import Tokenizer, models, pre_tokenizers, trainers

    tok = Tokenizer(models.BPE(end_of_word_suffix="</w>", unk_token="<|endoftext|>"))
    tok.pre_tokenizer = pre_tokenizers.Sequence(
        [pre_tokenizers.WhitespaceSplit(), pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False)]
    )
    trainer = trainers.BpeTrainer(
        vocab_size=320,
        special_tokens=["<|startoftext|>", "<|endoftext|>"],
        end_of_word_suffix="</w>",
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
    )
    corpus = PROMPTS + ["a photo depicts a sign that says hello", "the lazy dog jumps over a brown fox"]
    tok.train_from_iterator(corpus * 20, trainer)
    tok.model.save(str(folder))


@pytest.fixture(scope="module")
def clip_dir(tmp_path_factory):
    folder = tmp_path_factory.mktemp("tiny_clip")
    build_clip_tokenizer(folder)
    tokenizer = transformers.CLIPTokenizer.from_pretrained(folder)
    tokenizer.save_pretrained(folder)
    torch.manual_seed(0)
    config = transformers.CLIPConfig(
        text_config=dict(
            vocab_size=len(tokenizer), hidden_size=32, intermediate_size=48, num_hidden_layers=2,
            num_attention_heads=2, max_position_embeddings=77, bos_token_id=tokenizer.bos_token_id,
            eos_token_id=tokenizer.eos_token_id, pad_token_id=tokenizer.pad_token_id,
        ),
        vision_config=dict(hidden_size=32, intermediate_size=48, num_hidden_layers=2, num_attention_heads=2, image_size=32, patch_size=8),
        projection_dim=16,
        logit_scale_init_value=2.6592,
    )
    model = transformers.CLIPModel(config).eval()
    with torch.no_grad():
        model.logit_scale.fill_(3.1)  # not the init value, so a missing exp() or scale shows
    model.save_pretrained(folder)
    transformers.CLIPImageProcessor(size={"shortest_edge": 32}, crop_size={"height": 32, "width": 32}).save_pretrained(folder)
    return folder


@pytest.fixture(scope="module")
def images():
    g = torch.Generator().manual_seed(1)
    return torch.rand(len(PROMPTS), 3, 40, 48, generator=g)


def official_logits(folder, images, prompts):
    """``logits_per_image`` diagonal and image embeds from transformers' processor + forward."""
    model = transformers.CLIPModel.from_pretrained(folder).eval()
    processor = transformers.CLIPImageProcessor.from_pretrained(folder)
    tokenizer = transformers.CLIPTokenizer.from_pretrained(folder)
    pixels = processor(images=list(images), do_rescale=False, return_tensors="pt")["pixel_values"]
    text = tokenizer(prompts, padding=True, return_tensors="pt")
    with torch.no_grad():
        out = model(input_ids=text["input_ids"], attention_mask=text["attention_mask"], pixel_values=pixels)
    return out.logits_per_image.diagonal(), out.image_embeds, model.logit_scale.exp()


def test_pickscore_equals_logit_scale_times_cosine(clip_dir, images):
    reward = PickScoreReward(model=str(clip_dir), processor=None, device="cpu")
    expected, _, _ = official_logits(clip_dir, images, PROMPTS)
    got = reward.score(images, PROMPTS)
    assert got.dtype == torch.float32 and got.shape == (len(PROMPTS),) and got.device.type == "cpu"
    torch.testing.assert_close(got, expected, atol=2e-4, rtol=1e-4)


def test_pickscore_batch_equals_one_by_one(clip_dir, images):
    reward = PickScoreReward(model=str(clip_dir), processor=str(clip_dir), device="cpu", batch_size=2)
    single = torch.cat([reward.score(images[i : i + 1], PROMPTS[i : i + 1]) for i in range(len(PROMPTS))])
    torch.testing.assert_close(reward.score(images, PROMPTS), single, atol=1e-5, rtol=1e-5)


def test_clipscore_is_w_times_clamped_cosine_with_prefix(clip_dir, images):
    reward = CLIPScoreReward(model=str(clip_dir), device="cpu", batch_size=3)
    logits, _, scale = official_logits(clip_dir, images, ["A photo depicts " + p for p in PROMPTS])
    expected = 2.5 * (logits / scale).clamp(min=0)
    torch.testing.assert_close(reward.score(images, PROMPTS), expected, atol=1e-5, rtol=1e-4)
    raw = CLIPScoreReward(model=str(clip_dir), device="cpu", w=1.0, prefix="")
    logits_raw, _, _ = official_logits(clip_dir, images, PROMPTS)
    torch.testing.assert_close(raw.score(images, PROMPTS), (logits_raw / scale).clamp(min=0), atol=1e-5, rtol=1e-4)


@pytest.fixture(scope="module")
def aesthetic_file(tmp_path_factory):
    torch.manual_seed(2)
    dims = [16, 1024, 128, 64, 16, 1]
    state = {}
    for index, (i, o) in zip([0, 2, 4, 6, 7], zip(dims[:-1], dims[1:])):
        state[f"layers.{index}.weight"] = torch.randn(o, i) / i**0.5
        state[f"layers.{index}.bias"] = torch.randn(o) * 0.1
    path = tmp_path_factory.mktemp("aesthetic") / FILENAME
    torch.save(state, path)
    return path, state


def test_aesthetic_is_mlp_of_normalised_image_embeds(clip_dir, images, aesthetic_file):
    path, state = aesthetic_file
    reward = AestheticReward(checkpoint=str(path), clip=str(clip_dir), device="cpu", batch_size=2)
    _, embeds, _ = official_logits(clip_dir, images, PROMPTS)
    x = embeds / embeds.norm(dim=-1, keepdim=True)
    for index in (0, 2, 4, 6, 7):
        x = F.linear(x, state[f"layers.{index}.weight"], state[f"layers.{index}.bias"])
    torch.testing.assert_close(reward.score(images, PROMPTS), x.squeeze(-1), atol=1e-4, rtol=1e-4)
    # folder form of `checkpoint`, and the prompt does not matter
    by_dir = AestheticReward(checkpoint=str(path.parent), clip=str(clip_dir), device="cpu")
    torch.testing.assert_close(by_dir.score(images, ["x"] * len(PROMPTS)), reward.score(images, PROMPTS))


def test_aesthetic_wrong_checkpoint_names_file_and_format(clip_dir, aesthetic_file, tmp_path):
    path, state = aesthetic_file
    bad = tmp_path / "wrong.pth"
    torch.save({k.replace("layers", "net"): v for k, v in state.items()}, bad)
    with pytest.raises(ValueError, match=r"wrong\.pth.*aesthetic MLP state dict.*missing keys"):
        AestheticReward(checkpoint=str(bad), clip=str(clip_dir), device="cpu")
    garbage = tmp_path / "garbage.pth"
    garbage.write_bytes(b"not a checkpoint")
    with pytest.raises(ValueError, match=r"garbage\.pth.*not a readable torch checkpoint"):
        AestheticReward(checkpoint=str(garbage), clip=str(clip_dir), device="cpu")
    with pytest.raises(FileNotFoundError, match=r"nowhere\.pth.*sac\+logos\+ava1-l14-linearMSE\.pth"):
        AestheticReward(checkpoint=str(tmp_path / "nowhere.pth"), clip=str(clip_dir), device="cpu")


def test_missing_clip_folder_or_cache_entry_is_clear(tmp_path, monkeypatch):
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "empty-cache"))
    with pytest.raises(FileNotFoundError, match=r"someone/not-cached.*local Hugging Face cache.*hf download someone/not-cached"):
        PickScoreReward(model="someone/not-cached", processor=None, device="cpu")
    (tmp_path / "empty").mkdir()
    with pytest.raises(FileNotFoundError, match=r"without config\.json"):
        CLIPScoreReward(model=str(tmp_path / "empty"), device="cpu")


def test_missing_transformers_names_the_extra(monkeypatch, clip_dir):
    real = common.importlib.import_module

    def fake(name, *args):
        if name == "transformers":
            raise ImportError("No module named 'transformers'")
        return real(name, *args)

    monkeypatch.setattr(common.importlib, "import_module", fake)
    with pytest.raises(common.MissingExtraError, match=r"pip install 'treesdk\[clip\]'"):
        CLIPScoreReward(model=str(clip_dir), device="cpu")


def test_registered_under_entry_points():
    for name, cls in [("pickscore", PickScoreReward), ("clipscore", CLIPScoreReward), ("aesthetic", AestheticReward)]:
        assert name in registry.available("reward")
        assert registry.load("reward", name) is cls


def test_dtype_option_runs_in_bfloat16(clip_dir, images):
    full = PickScoreReward(model=str(clip_dir), processor=None, device="cpu")
    half = PickScoreReward(model=str(clip_dir), processor=None, device="cpu", dtype="bfloat16")
    assert next(half.clip.model.parameters()).dtype == torch.bfloat16
    got = half.score(images, PROMPTS)
    assert got.dtype == torch.float32
    torch.testing.assert_close(got, full.score(images, PROMPTS), atol=0.5, rtol=0.05)
    with pytest.raises(ValueError, match=r"unknown dtype 'float8'"):
        PickScoreReward(model=str(clip_dir), processor=None, device="cpu", dtype="float8")


def test_clip_rewards_offer_normalised_image_embeddings_as_features(clip_dir, images):
    """features() = the official CLIPModel's image_embeds, L2-normalised: what diversity and
    group-diversity measure distances in for real models."""
    from treesdk_plugins.diversity import GroupDiversityReward

    _, official, _ = official_logits(clip_dir, images, PROMPTS)
    expected = official / official.norm(dim=-1, keepdim=True)
    for cls in (CLIPScoreReward, PickScoreReward):
        feats = cls(model=str(clip_dir), processor=None, device="cpu", batch_size=2).features(images)
        assert feats.shape == expected.shape and feats.device.type == "cpu"
        torch.testing.assert_close(feats, expected, atol=2e-5, rtol=1e-4)
    bonus = GroupDiversityReward(features_of="pickscore", metric="cosine", features_options={"model": str(clip_dir), "processor": None})
    scores = bonus.score(images, ["one prompt"] * len(PROMPTS))
    cos = expected @ expected.T
    torch.testing.assert_close(scores, ((1 - cos).sum(1) / (len(PROMPTS) - 1)).float(), atol=1e-5, rtol=1e-4)
