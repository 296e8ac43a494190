"""Merged single files of the families whose ComfyUI model uses diffusers' key names (Qwen-Image):
loaded strictly into ComfyUI's own model class, they give the backend's velocity. Needs a ComfyUI
checkout (``COMFYUI_PATH``); the format itself is covered without ComfyUI by
``tests/test_conformance.py::test_merged_exports_give_the_trained_velocity``."""

from __future__ import annotations

import os
import sys

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import pytest
import torch

pytest.importorskip("diffusers")
pytest.importorskip("peft")

from diffusers_fixtures import single_thread

import treesdk
from treesdk.testing import perturbed


@pytest.mark.skipif(not os.environ.get("COMFYUI_PATH"), reason="set COMFYUI_PATH to a ComfyUI checkout")
def test_qwen_image_single_file_runs_in_comfyuis_model(tmp_path):
    from safetensors.torch import load_file

    from test_conformance import backend_options
    from treesdk_backends.tiny import FAMILIES

    sys.path.insert(0, os.environ["COMFYUI_PATH"])
    import comfy.cli_args

    comfy.cli_args.args.cpu = True
    import comfy.ops
    from comfy.ldm.qwen_image.model import QwenImageTransformer2DModel

    path = FAMILIES["qwen-image"](tmp_path / "model")
    backend = treesdk.load_backend("diffusers", model=str(path), **{**backend_options("qwen-image"), "true_cfg_scale": 1.0})
    config = backend.transformer.config
    with single_thread(), perturbed(backend, seed=1):
        (file,) = backend.export("comfyui", str(tmp_path / "qwen.safetensors"), {})
        theirs = QwenImageTransformer2DModel(
            patch_size=config.patch_size, in_channels=config.in_channels, out_channels=config.out_channels,
            num_layers=config.num_layers, attention_head_dim=config.attention_head_dim,
            num_attention_heads=config.num_attention_heads, joint_attention_dim=config.joint_attention_dim,
            axes_dims_rope=tuple(config.axes_dims_rope), operations=comfy.ops.disable_weight_init,
            dtype=torch.float32, device="cpu",
        )
        theirs.load_state_dict(load_file(file), strict=True)
        x = torch.randn((1, *backend.latent_shape), generator=torch.Generator().manual_seed(0))
        cond = backend.encode(["a photo of a cat"])
        with torch.no_grad():
            ours = backend.velocity(x, torch.tensor([0.6]), cond)
            mask = cond["prompt_mask"][:, : int(cond["prompt_mask"].sum(1).max())]
            embeds = cond["prompt_embeds"][:, : mask.shape[1]]
            out = theirs(x.unsqueeze(2), torch.tensor([0.6]), embeds, attention_mask=None if bool(mask.all()) else mask)
    torch.testing.assert_close(out.reshape(ours.shape), ours, atol=1e-5, rtol=1e-5)
