"""HPSv2 / HPSv2.1 through the plugin's real loading path: an HPS-format ``.pt``
(``{'state_dict': ...}``) over an open_clip model built from a tiny open_clip model-config JSON,
scored against hpsv2's formula (``diag(image_features @ text_features.T)`` of open_clip's forward,
after HPS's longest-side resize + zero padding)."""

from __future__ import annotations

import json
import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import pytest
import torch

open_clip = pytest.importorskip("open_clip")

import treesdk.registry as registry
from treesdk_plugins import common
from treesdk_plugins.hpsv2 import HPSv2Reward, HPSv21Reward

PROMPTS = ["a photo of a cat", "a red dog on a sofa", "an astronaut riding a horse", "a bowl of soup"]
TINY = {
    "embed_dim": 16,
    "vision_cfg": {"image_size": 32, "layers": 2, "width": 32, "patch_size": 8, "head_width": 16},
    "text_cfg": {"context_length": 77, "vocab_size": 49408, "width": 32, "heads": 2, "layers": 2},
}


@pytest.fixture(scope="module")
def hps(tmp_path_factory):
    folder = tmp_path_factory.mktemp("hps")
    config = folder / "tiny-hps-vit.json"
    config.write_text(json.dumps(TINY))
    open_clip.add_model_config(config)
    torch.manual_seed(0)
    model = open_clip.create_model("tiny-hps-vit", pretrained=None)
    with torch.no_grad():
        model.logit_scale.fill_(4.0)
    path = folder / "HPS_v2.1_compressed.pt"
    torch.save({"state_dict": model.state_dict()}, path)
    return path, config


@pytest.fixture(scope="module")
def images():
    return torch.rand(len(PROMPTS), 3, 48, 40, generator=torch.Generator().manual_seed(3))


def hps_resize_max_size(image, size):
    """HPS's open_clip fork, transform.py ResizeMaxSize.forward (fill 0), on one [3, H, W] tensor."""
    from torchvision.transforms import InterpolationMode
    from torchvision.transforms import functional as TVF

    height, width = image.shape[1:]
    scale = size / float(max(height, width))
    if scale != 1.0:
        new_size = tuple(round(dim * scale) for dim in (height, width))
        image = TVF.resize(image, new_size, InterpolationMode.BICUBIC)
        pad_h, pad_w = size - new_size[0], size - new_size[1]
        image = TVF.pad(image, padding=[pad_w // 2, pad_h // 2, pad_w - pad_w // 2, pad_h - pad_h // 2], fill=0)
    return image


def official_scores(path, images, prompts):
    """hpsv2.img_score.score's computation: preprocess_val built with light_augmentation=True
    (ToTensor, ResizeMaxSize, Normalize), then diag(image_features @ text_features.T), one image at a time."""
    from torchvision.transforms import Normalize

    model = open_clip.create_model("tiny-hps-vit", pretrained=None, output_dict=True)
    model.load_state_dict(torch.load(path, map_location="cpu")["state_dict"])
    model.eval()
    normalize = Normalize((0.48145466, 0.4578275, 0.40821073), (0.26862954, 0.26130258, 0.27577711))
    tokenizer = open_clip.get_tokenizer("tiny-hps-vit")
    scores = []
    with torch.no_grad():
        for image, prompt in zip(images, prompts):
            pixels = normalize(hps_resize_max_size(image, TINY["vision_cfg"]["image_size"]))[None]
            out = model(pixels, tokenizer([prompt]))
            scores.append(torch.diagonal(out["image_features"] @ out["text_features"].T)[0])
    return torch.stack(scores)


def test_hps_score_equals_official_formula(hps, images):
    path, config = hps
    reward = HPSv21Reward(checkpoint=str(path), model_config=str(config), device="cpu")
    got = reward.score(images, PROMPTS)
    assert got.dtype == torch.float32 and got.shape == (len(PROMPTS),)
    torch.testing.assert_close(got, official_scores(path, images, PROMPTS), atol=1e-4, rtol=1e-4)
    assert got.abs().max() <= 1.0  # a cosine, not scaled by logit_scale


def test_hps_pads_non_square_images_instead_of_cropping(hps):
    path, config = hps
    reward = HPSv21Reward(checkpoint=str(path), model_config=str(config), device="cpu")
    wide = torch.rand(2, 3, 20, 64, generator=torch.Generator().manual_seed(4))
    torch.testing.assert_close(reward.score(wide, PROMPTS[:2]), official_scores(path, wide, PROMPTS[:2]), atol=1e-4, rtol=1e-4)
    square = torch.rand(1, 3, 32, 32, generator=torch.Generator().manual_seed(5))  # already 32: no resampling
    torch.testing.assert_close(reward.score(square, PROMPTS[:1]), official_scores(path, square, PROMPTS[:1]), atol=1e-5, rtol=1e-5)


def test_hps_batch_equals_one_by_one(hps, images):
    path, config = hps
    reward = HPSv2Reward(checkpoint=str(path.parent / path.name), model_config=str(config), device="cpu", batch_size=3)
    single = torch.cat([reward.score(images[i : i + 1], PROMPTS[i : i + 1]) for i in range(len(PROMPTS))])
    torch.testing.assert_close(reward.score(images, PROMPTS), single, atol=1e-5, rtol=1e-5)


def test_hps_checkpoint_in_folder_uses_version_filename(hps):
    path, config = hps
    # hpsv2.1 finds HPS_v2.1_compressed.pt in the folder; hpsv2 looks for HPS_v2_compressed.pt
    HPSv21Reward(checkpoint=str(path.parent), model_config=str(config), device="cpu")
    with pytest.raises(FileNotFoundError, match=r"HPS_v2_compressed\.pt"):
        HPSv2Reward(checkpoint=str(path.parent), model_config=str(config), device="cpu")


def test_hps_wrong_checkpoints_are_errors(hps, tmp_path):
    path, config = hps
    state = torch.load(path, map_location="cpu")["state_dict"]
    bare = tmp_path / "bare.pt"
    torch.save(state, bare)
    with pytest.raises(ValueError, match=r"bare\.pt.*no 'state_dict' entry.*HPS checkpoint"):
        HPSv21Reward(checkpoint=str(bare), model_config=str(config), device="cpu")
    partial = tmp_path / "partial.pt"
    torch.save({"state_dict": {k: v for k, v in state.items() if not k.startswith("visual.")}}, partial)
    with pytest.raises(ValueError, match=r"partial\.pt.*missing keys.*visual\."):
        HPSv21Reward(checkpoint=str(partial), model_config=str(config), device="cpu")


def test_hps_default_lookup_is_offline_and_explains(monkeypatch, tmp_path):
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "cache"))
    monkeypatch.delenv("TREESDK_WEIGHTS", raising=False)
    with pytest.raises(FileNotFoundError, match=r"HPS_v2\.1_compressed\.pt.*xswu/HPSv2.*local Hugging Face cache"):
        HPSv21Reward(device="cpu")


def test_hps_missing_open_clip_names_the_extra(monkeypatch):
    real = common.importlib.import_module

    def fake(name, *args):
        if name == "open_clip":
            raise ImportError("No module named 'open_clip'")
        return real(name, *args)

    monkeypatch.setattr(common.importlib, "import_module", fake)
    with pytest.raises(common.MissingExtraError, match=r"'open_clip'.*pip install 'treesdk\[clip\]'"):
        HPSv2Reward(device="cpu")


def test_hps_registered():
    assert registry.load("reward", "hpsv2") is HPSv2Reward
    assert registry.load("reward", "hpsv2.1") is HPSv21Reward


def test_hps_features_are_the_normalised_image_features(hps, images):
    path, config = hps
    reward = HPSv21Reward(checkpoint=str(path), model_config=str(config), device="cpu", batch_size=2)
    feats = reward.features(images)
    assert feats.shape[0] == len(PROMPTS) and feats.dtype == torch.float32
    torch.testing.assert_close(feats.norm(dim=-1), torch.ones(len(PROMPTS)), atol=1e-5, rtol=0)
    # the score is the cosine of these features with the text features
    txt = reward.model.encode_text(reward.tokenizer(PROMPTS), normalize=True).float()
    torch.testing.assert_close((feats * txt).sum(-1), reward.score(images, PROMPTS), atol=1e-5, rtol=1e-5)
