"""Score identity of treesdk's ``imagereward`` plugin with the official ``image-reward`` package.

The official package cannot run beside transformers 5, so this script runs in two environments:

1. ``--official`` (run by the old-stack interpreter, see ``tools/imagereward_oldstack.sh``): builds the
   official ``ImageReward.ImageReward`` model with random weights (the official classes; by default a
   small ViT and a 2-layer text encoder so it runs in seconds on a CPU, ``--full-size`` for the
   released ViT-L/16 + BERT-base sizes), saves its ``state_dict`` as ``ImageReward.pt`` next to a
   matching ``med_config.json`` and a tiny BERT ``vocab.txt``, and scores test images with the
   official ``ImageReward.score(prompt, pil_image)``.
2. default (run by treesdk's environment): runs step 1 through ``--old-python``, loads the files
   with ``treesdk.load_reward("imagereward", ...)``, scores the same images as tensors and compares.

Images whose size is the model's 224 px input go through no resampling, so both sides see the same
pixels and must agree to float precision (tolerance 1e-4). Non-square images are resized by PIL on
uint8 in the official code and by torchvision on float tensors in treesdk; their difference is
reported, not asserted.

Only two things of the official code path are replaced, both for running offline: the package
``__init__`` (it imports the ReFL trainer, diffusers, datasets and the ``clip`` package, none of
which scoring uses) is skipped by importing ``ImageReward.ImageReward`` directly, and
``init_tokenizer`` loads the BERT tokenizer from the local tiny vocabulary instead of downloading
``bert-base-uncased`` (same class, same added ``[DEC]``/``[ENC]`` tokens).

Usage::

    bash tools/imagereward_oldstack.sh /tmp/irvenv      # once
    python tools/imagereward_parity.py --old-python /tmp/irvenv/bin/python [--full-size]
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import types
from pathlib import Path

PROMPTS = [
    "a photo of a cat on a red sofa",
    "an astronaut riding a horse",
    "a bowl of soup",
    "a sign that says hello",
    "a painting of the sea at night",
    "a cat",
]
WORDS = "a photo of cat on red sofa an astronaut riding horse bowl soup sign that says hello painting the sea at night".split()


def write_vocab(folder: Path) -> None:
    letters = [chr(c) for c in range(ord("a"), ord("z") + 1)]
    tokens = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"] + sorted(set(WORDS)) + letters + ["##" + c for c in letters]
    tokens += [".", ",", "!", "?", "'", '"']
    (folder / "vocab.txt").write_text("\n".join(tokens) + "\n")


def make_images(seed: int = 0):
    import numpy as np

    rng = np.random.default_rng(seed)
    images = []
    for i in range(len(PROMPTS)):
        shape = (224, 224, 3) if i < 4 else (256 + 16 * i, 300, 3)
        smooth = rng.random((8, 8, 3))
        base = np.kron(smooth, np.ones((shape[0] // 8 + 1, shape[1] // 8 + 1, 1)))[: shape[0], : shape[1]]
        noise = rng.random(shape) * 0.3
        images.append(((base * 0.7 + noise) * 255).round().clip(0, 255).astype("uint8"))
    return images


def official(workdir: Path, full_size: bool) -> None:
    """Run inside the old-stack environment: build, save and score with the official code."""
    import importlib.util

    import torch
    from PIL import Image

    spec = importlib.util.find_spec("ImageReward")
    if spec is None:
        raise SystemExit("the official package `image-reward` is not installed in this interpreter")
    root = Path(spec.submodule_search_locations[0])
    # skip ImageReward/__init__.py and ImageReward/models/__init__.py (ReFL trainer, clip, diffusers)
    for name, path in (("ImageReward", root), ("ImageReward.models", root / "models")):
        package = types.ModuleType(name)
        package.__path__ = [str(path)]
        sys.modules[name] = package
    from ImageReward.models.BLIP import blip, blip_pretrain, vit

    import ImageReward.ImageReward as official_module

    def init_tokenizer():  # blip.init_tokenizer with the local vocabulary instead of a download
        tokenizer = blip.BertTokenizer.from_pretrained(str(workdir))
        tokenizer.add_special_tokens({"bos_token": "[DEC]"})
        tokenizer.add_special_tokens({"additional_special_tokens": ["[ENC]"]})
        tokenizer.enc_token_id = tokenizer.additional_special_tokens_ids[0]
        return tokenizer

    blip_pretrain.init_tokenizer = init_tokenizer
    if not full_size:
        def create_vit(vit_name, image_size, use_grad_checkpointing=False, ckpt_layer=0, drop_path_rate=0):
            return vit.VisionTransformer(img_size=image_size, patch_size=16, embed_dim=128, depth=2, num_heads=2), 128

        blip_pretrain.create_vit = create_vit
    write_vocab(workdir)
    vocab = len(init_tokenizer())
    med = {
        "architectures": ["BertModel"], "attention_probs_dropout_prob": 0.1, "hidden_act": "gelu",
        "hidden_dropout_prob": 0.1, "hidden_size": 768, "initializer_range": 0.02,
        "intermediate_size": 3072 if full_size else 256, "layer_norm_eps": 1e-12, "max_position_embeddings": 512,
        "model_type": "bert", "num_attention_heads": 12, "num_hidden_layers": 12 if full_size else 2,
        "pad_token_id": 0, "type_vocab_size": 2, "vocab_size": 30524 if full_size else vocab,
        "encoder_width": 768, "add_cross_attention": True,
    }
    (workdir / "med_config.json").write_text(json.dumps(med, indent=2))
    torch.manual_seed(0)
    model = official_module.ImageReward(med_config=str(workdir / "med_config.json"), device="cpu")
    with torch.no_grad():  # random weights large enough that scores differ between inputs
        for name, param in model.named_parameters():
            if "LayerNorm" in name or "norm" in name.split(".")[-2]:
                param.copy_(1 + 0.1 * torch.randn_like(param) if name.endswith("weight") else 0.1 * torch.randn_like(param))
            elif name.startswith("mlp."):  # the head has no activations: keep its output O(1)
                param.normal_(0, 2.0 / max(1, param.shape[-1]) ** 0.5)
            else:
                param.normal_(0, 0.5 / max(1, param.shape[-1]) ** 0.5)
    model.eval()
    torch.save(model.state_dict(), workdir / "ImageReward.pt")
    images = make_images()
    with torch.no_grad():
        scores = [float(model.score(p, Image.fromarray(a))) for p, a in zip(PROMPTS, images)]
    (workdir / "official.json").write_text(json.dumps({"scores": scores, "vision_width": 1024 if full_size else 128}))
    print("official scores:", scores)


def compare(workdir: Path, old_python: str, full_size: bool) -> int:
    cmd = [old_python, __file__, "--official", "--workdir", str(workdir)] + (["--full-size"] if full_size else [])
    subprocess.run(cmd, check=True)
    import torch

    import treesdk

    result = json.loads((workdir / "official.json").read_text())
    reward = treesdk.load_reward(
        "imagereward",
        checkpoint=str(workdir / "ImageReward.pt"),
        med_config=str(workdir / "med_config.json"),
        tokenizer=str(workdir),
        vision_heads=16 if full_size else 2,
        device="cpu",
        batch_size=3,
    )
    official_scores = torch.tensor(result["scores"])
    ours = []
    for image, prompt in zip(make_images(), PROMPTS):
        ours.append(reward.score(torch.from_numpy(image).permute(2, 0, 1)[None].float() / 255, [prompt]))
    ours = torch.cat(ours)
    same_size = torch.arange(len(PROMPTS)) < 4
    diff = (ours - official_scores).abs()
    print("treesdk scores: ", [round(x, 6) for x in ours.tolist()])
    print("official scores:", [round(x, 6) for x in official_scores.tolist()])
    print(f"224x224 images (no resampling): max |diff| = {diff[same_size].max():.3e}")
    print(f"resized images (PIL uint8 vs torchvision float): max |diff| = {diff[~same_size].max():.3e}")
    ok = bool(diff[same_size].max() < 1e-4)
    print("PARITY OK" if ok else "PARITY FAILED")
    return 0 if ok else 1


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--official", action="store_true", help="(internal) run the official side")
    parser.add_argument("--old-python", default="/tmp/irvenv/bin/python", help="interpreter with image-reward 1.5 installed")
    parser.add_argument("--workdir", default=None)
    parser.add_argument("--full-size", action="store_true", help="released sizes (ViT-L/16, BERT-base): slow, ~2 GB")
    args = parser.parse_args()
    if args.official:
        official(Path(args.workdir), args.full_size)
        return 0
    with tempfile.TemporaryDirectory() as tmp:
        workdir = Path(args.workdir or tmp)
        workdir.mkdir(parents=True, exist_ok=True)
        return compare(workdir, args.old_python, args.full_size)


if __name__ == "__main__":
    sys.exit(main())
