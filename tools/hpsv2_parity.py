"""Score identity of treesdk's ``hpsv2`` plugin with the official HPSv2 code (``hpsv2`` 1.2.0).

The ``hpsv2`` package is not installed (it pins pytest==7.2.0 and protobuf<4); this script only needs
its wheel, unpacked (``pip download hpsv2==1.2.0 --no-deps``), and imports its bundled open_clip fork
from there. The fork misses ``bpe_simple_vocab_16e6.txt.gz`` (upstream issue #30); the identical
file of ``open_clip_torch`` is copied into the unpacked tree. ``hpsv2/__init__.py`` (which imports the
downloader and benchmark code) is skipped.

What runs on the official side is ``img_score.initialize_model`` + ``img_score.score`` written out
with the fork's functions and arguments (``create_model_and_transforms(..., light_augmentation=True,
output_dict=True)``, ``model.load_state_dict(checkpoint['state_dict'])``, ``preprocess_val`` on PIL
images, ``diag(image_features @ text_features.T)``) on a small random model config (``--full-size``:
the real ViT-H-14, about 4 GB of RAM), and the checkpoint is the fork model's own state dict saved as
``{'state_dict': ...}``, i.e. the format of ``HPS_v2*_compressed.pt``.

Usage::

    python tools/hpsv2_parity.py [--wheel-dir DIR] [--full-size]
"""

from __future__ import annotations

import argparse
import json
import shutil
import subprocess
import sys
import tempfile
import types
import zipfile
from pathlib import Path

PROMPTS = ["a photo of a cat on a red sofa", "an astronaut riding a horse", "a bowl of soup", "a wide landscape, 4k"]
TINY = {
    "embed_dim": 64,
    "vision_cfg": {"image_size": 224, "layers": 2, "width": 128, "patch_size": 14, "head_width": 64},
    "text_cfg": {"context_length": 77, "vocab_size": 49408, "width": 64, "heads": 2, "layers": 2},
}


def unpack_hpsv2(wheel_dir: Path, dest: Path) -> Path:
    wheels = sorted(wheel_dir.glob("hpsv2-*.whl"))
    if not wheels:
        subprocess.run([sys.executable, "-m", "pip", "download", "hpsv2==1.2.0", "--no-deps", "-d", str(wheel_dir)], check=True)
        wheels = sorted(wheel_dir.glob("hpsv2-*.whl"))
    with zipfile.ZipFile(wheels[-1]) as archive:
        archive.extractall(dest)
    import open_clip

    bpe = Path(open_clip.__file__).parent / "bpe_simple_vocab_16e6.txt.gz"
    shutil.copy(bpe, dest / "hpsv2" / "src" / "open_clip" / bpe.name)
    return dest / "hpsv2"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--wheel-dir", default=None, help="folder holding (or to download) the hpsv2 wheel")
    parser.add_argument("--full-size", action="store_true", help="the real ViT-H-14 (slow, ~4 GB RAM)")
    args = parser.parse_args()

    import numpy as np
    import torch
    from PIL import Image

    import treesdk

    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        root = unpack_hpsv2(Path(args.wheel_dir) if args.wheel_dir else tmp, tmp / "unpacked")
        for name, path in (("hpsv2", root), ("hpsv2.src", root / "src")):
            package = types.ModuleType(name)
            package.__path__ = [str(path)]
            sys.modules[name] = package
        from hpsv2.src.open_clip import factory

        name = "ViT-H-14"
        config = None
        if not args.full_size:
            config = tmp / "tiny-hps.json"
            config.write_text(json.dumps(TINY))
            factory.add_model_config(config)
            name = "tiny-hps"
        torch.manual_seed(0)
        # img_score.initialize_model, minus the LAION download (pretrained=None) and amp
        model, _, preprocess_val = factory.create_model_and_transforms(
            name, None, precision="fp32", device="cpu", jit=False, force_quick_gelu=False, force_custom_text=False,
            force_patch_dropout=False, force_image_size=None, pretrained_image=False, image_mean=None, image_std=None,
            light_augmentation=True, aug_cfg={}, output_dict=True, with_score_predictor=False, with_region_predictor=False,
        )
        checkpoint = tmp / "HPS_v2.1_compressed.pt"
        torch.save({"state_dict": model.state_dict()}, checkpoint)
        model.load_state_dict(torch.load(checkpoint, map_location="cpu")["state_dict"])
        model.eval()
        tokenizer = factory.get_tokenizer(name)

        rng = np.random.default_rng(0)
        shapes = [(224, 224), (512, 512), (300, 420), (420, 300)]
        arrays = [(rng.random((h, w, 3)) * 255).astype("uint8") for h, w in shapes]
        official = []
        with torch.no_grad():
            for array, prompt in zip(arrays, PROMPTS):
                image = preprocess_val(Image.fromarray(array)).unsqueeze(0)
                outputs = model(image, tokenizer([prompt]))
                logits = outputs["image_features"] @ outputs["text_features"].T
                official.append(float(torch.diagonal(logits)[0]))

        reward = treesdk.load_reward(
            "hpsv2.1", checkpoint=str(checkpoint), model_config=str(config) if config else "ViT-H-14", device="cpu"
        )
        ours = [
            float(reward.score(torch.from_numpy(a).permute(2, 0, 1)[None].float() / 255, [p])[0])
            for a, p in zip(arrays, PROMPTS)
        ]
    diff = max(abs(a - b) for a, b in zip(ours, official))
    print("image sizes:    ", shapes)
    print("official scores:", [round(x, 7) for x in official])
    print("treesdk scores: ", [round(x, 7) for x in ours])
    print(f"max |diff| = {diff:.3e}")
    ok = diff < 1e-4
    print("PARITY OK" if ok else "PARITY FAILED")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
