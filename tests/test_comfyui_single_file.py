"""Merged single files of the families beyond FLUX/SD3 in the layout ComfyUI's native loader reads:
Wan2.1 in its original layout (the exact inverse of diffusers' own single-file converter),
Qwen-Image in diffusers' key names. With a ComfyUI checkout (``COMFYUI_PATH``) both are loaded
strictly into ComfyUI's own model classes and give the backend's velocity; that the files load back
into diffusers is ``tests/test_conformance.py::test_merged_exports_give_the_trained_velocity``."""

from __future__ import annotations

import os
import sys

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import pytest
import torch

pytest.importorskip("diffusers")
pytest.importorskip("peft")

from diffusers_fixtures import single_thread
from test_conformance import backend_options

import treesdk
from treesdk.export_files import check_file
from treesdk.testing import perturbed
from treesdk_backends.diffusers_export import merged_state_dict
from treesdk_backends.tiny import FAMILIES

needs_comfyui = pytest.mark.skipif(not os.environ.get("COMFYUI_PATH"), reason="set COMFYUI_PATH to a ComfyUI checkout")


@pytest.fixture(autouse=True, scope="module")
def _one_thread():
    with single_thread():
        yield


def _comfy():
    sys.path.insert(0, os.environ["COMFYUI_PATH"])
    import comfy.cli_args

    comfy.cli_args.args.cpu = True
    import comfy.ops

    return comfy.ops.disable_weight_init


def _backend(family, tmp_path, **options):
    path = FAMILIES[family](tmp_path / "model")
    return treesdk.load_backend("diffusers", model=str(path), **{**backend_options(family), **options})


def test_wan_single_file_is_what_diffusers_single_file_converter_inverts(tmp_path):
    from diffusers.loaders.single_file_utils import convert_wan_transformer_to_diffusers
    from safetensors.torch import load_file

    backend = _backend("wan", tmp_path)
    with perturbed(backend, seed=1):
        (file,) = backend.export("comfyui", str(tmp_path / "wan.safetensors"), {})
        merged = merged_state_dict(backend.transformer)
    single = load_file(file)
    assert "blocks.0.self_attn.q.weight" in single and "head.head.weight" in single and "blocks.0.norm3.weight" in single
    back = convert_wan_transformer_to_diffusers(dict(single))
    assert set(back) == set(merged) and all(torch.equal(back[k], merged[k]) for k in merged)
    report = check_file(file, base=str(backend.model_path / "transformer"))
    assert report.ok and report.format == "wan-original" and report.family == "wan", report.problems


@needs_comfyui
def test_wan_single_file_runs_in_comfyuis_wan_model(tmp_path):
    from safetensors.torch import load_file

    operations = _comfy()
    from comfy.ldm.wan.model import WanModel

    backend = _backend("wan", tmp_path, guidance_scale=1.0)
    c = backend.transformer.config
    with perturbed(backend, seed=1):
        (file,) = backend.export("comfyui", str(tmp_path / "wan.safetensors"), {})
        theirs = WanModel(model_type="t2v", patch_size=tuple(c.patch_size), in_dim=c.in_channels,
                          dim=c.num_attention_heads * c.attention_head_dim, ffn_dim=c.ffn_dim, freq_dim=c.freq_dim,
                          text_dim=c.text_dim, out_dim=c.out_channels, num_heads=c.num_attention_heads,
                          num_layers=c.num_layers, qk_norm=True, cross_attn_norm=c.cross_attn_norm, eps=c.eps,
                          operations=operations, dtype=torch.float32, device="cpu")
        theirs.load_state_dict(load_file(file), strict=True)
        x = torch.randn((1, *backend.latent_shape), generator=torch.Generator().manual_seed(0))
        cond = backend.encode(["a photo of a cat"])
        with torch.no_grad():
            ours = backend.velocity(x, torch.tensor([0.6]), cond)
            out = theirs(x, torch.tensor([600.0]), cond["prompt_embeds"])  # ComfyUI feeds sigma * 1000
    torch.testing.assert_close(out, ours, atol=1e-5, rtol=1e-5)


@needs_comfyui
def test_qwen_image_single_file_runs_in_comfyuis_model(tmp_path):
    from safetensors.torch import load_file

    operations = _comfy()
    from comfy.ldm.qwen_image.model import QwenImageTransformer2DModel

    backend = _backend("qwen-image", tmp_path, true_cfg_scale=1.0)
    c = backend.transformer.config
    with perturbed(backend, seed=1):
        (file,) = backend.export("comfyui", str(tmp_path / "qwen.safetensors"), {})
        theirs = QwenImageTransformer2DModel(
            patch_size=c.patch_size, in_channels=c.in_channels, out_channels=c.out_channels, num_layers=c.num_layers,
            attention_head_dim=c.attention_head_dim, num_attention_heads=c.num_attention_heads,
            joint_attention_dim=c.joint_attention_dim, axes_dims_rope=tuple(c.axes_dims_rope),
            operations=operations, dtype=torch.float32, device="cpu",
        )
        theirs.load_state_dict(load_file(file), strict=True)
        x = torch.randn((1, *backend.latent_shape), generator=torch.Generator().manual_seed(0))
        cond = backend.encode(["a photo of a cat"])
        with torch.no_grad():
            ours = backend.velocity(x, torch.tensor([0.6]), cond)
            length = int(cond["prompt_mask"].sum(1).max())
            mask, embeds = cond["prompt_mask"][:, :length], cond["prompt_embeds"][:, :length]
            out = theirs(x.unsqueeze(2), torch.tensor([0.6]), embeds, attention_mask=None if bool(mask.all()) else mask)
    torch.testing.assert_close(out.reshape(ours.shape), ours, atol=1e-5, rtol=1e-5)


def test_chroma_single_file_has_comfyuis_chroma_keys(tmp_path):
    from safetensors.torch import load_file

    backend = _backend("chroma", tmp_path)
    (file,) = backend.export("comfyui", str(tmp_path / "chroma.safetensors"), {})
    keys = set(load_file(file))
    # ComfyUI's model_detection: FLUX-style double blocks + the approximator's norms = Chroma
    assert {"double_blocks.0.img_attn.norm.key_norm.scale", "distilled_guidance_layer.norms.0.scale",
            "single_blocks.0.linear1.weight", "final_layer.linear.weight"} <= keys
    assert not any(".img_mod." in k or "modulation" in k or k.startswith(("time_in.", "guidance_in.")) for k in keys)
    report = check_file(file, base=str(backend.model_path / "transformer"))
    assert report.ok and report.format == "bfl-chroma" and report.family == "chroma", report.problems


@needs_comfyui
def test_chroma_single_file_loads_strictly_in_comfyuis_chroma_model(tmp_path):
    from safetensors.torch import load_file

    operations = _comfy()
    from comfy.ldm.chroma.model import Chroma

    backend = _backend("chroma", tmp_path)
    c = backend.transformer.config
    (file,) = backend.export("comfyui", str(tmp_path / "chroma.safetensors"), {})
    state = load_file(file)
    hidden = c.num_attention_heads * c.attention_head_dim
    # ComfyUI's Chroma forward hard-codes the released model's approximator sizes, so the tiny
    # model is checked by a strict load (every key and shape), not by a forward
    theirs = Chroma(in_channels=c.in_channels, out_channels=c.in_channels, context_in_dim=c.joint_attention_dim,
                    hidden_size=hidden, mlp_ratio=4.0, num_heads=c.num_attention_heads, depth=c.num_layers,
                    depth_single_blocks=c.num_single_layers, axes_dim=list(c.axes_dims_rope), theta=10000, patch_size=1,
                    qkv_bias=True, in_dim=state["distilled_guidance_layer.in_proj.weight"].shape[1], out_dim=hidden,
                    hidden_dim=c.approximator_hidden_dim, n_layers=c.approximator_layers, txt_ids_dims=[], vec_in_dim=0,
                    operations=operations, dtype=torch.float32, device="cpu")
    theirs.load_state_dict(state, strict=True)


def test_z_image_single_file_is_what_diffusers_single_file_converter_inverts(tmp_path):
    from diffusers.loaders.single_file_utils import convert_z_image_transformer_checkpoint_to_diffusers
    from safetensors.torch import load_file

    backend = _backend("z-image", tmp_path)
    with perturbed(backend, seed=1):
        (file,) = backend.export("comfyui", str(tmp_path / "z.safetensors"), {})
        merged = merged_state_dict(backend.transformer)
    single = load_file(file)
    assert "layers.0.attention.qkv.weight" in single and "final_layer.linear.weight" in single
    back = convert_z_image_transformer_checkpoint_to_diffusers(dict(single))
    assert set(back) == set(merged) and all(torch.equal(back[k], merged[k]) for k in merged)
    report = check_file(file, base=str(backend.model_path / "transformer"))
    assert report.ok and report.format == "z-image-original" and report.family == "z-image", report.problems


@needs_comfyui
def test_z_image_single_file_has_the_keys_of_comfyuis_z_image_model(tmp_path):
    from safetensors.torch import load_file

    operations = _comfy()
    from comfy.ldm.lumina.model import NextDiT

    backend = _backend("z-image", tmp_path)
    c = backend.transformer.config
    (file,) = backend.export("comfyui", str(tmp_path / "z.safetensors"), {})
    state = load_file(file)
    # ComfyUI's model_detection settings for Z-Image (ffn multiplier 8/3, pad tokens, z-image modulation)
    theirs = NextDiT(patch_size=2, in_channels=c.in_channels, dim=c.dim, n_layers=c.n_layers,
                     n_refiner_layers=c.n_refiner_layers, n_heads=c.n_heads, n_kv_heads=c.n_kv_heads, multiple_of=1,
                     ffn_dim_multiplier=8.0 / 3.0, norm_eps=c.norm_eps, qk_norm=c.qk_norm, cap_feat_dim=c.cap_feat_dim,
                     axes_dims=list(c.axes_dims), axes_lens=list(c.axes_lens), rope_theta=c.rope_theta,
                     z_image_modulation=True, time_scale=1000.0, pad_tokens_multiple=32,
                     operations=operations, dtype=torch.float32, device="cpu").state_dict()
    assert set(state) == set(theirs)
    # ComfyUI sizes the timestep MLP min(dim, 1024) -> 256, diffusers 1024 -> min(dim, 256): equal for
    # the released model (dim 3840), not for the tiny one; every other tensor has the same shape
    wrong = [k for k in state if tuple(state[k].shape) != tuple(theirs[k].shape) and not k.startswith("t_embedder.")]
    assert not wrong


def test_lumina2_single_file_roundtrips_and_is_read_by_export_check(tmp_path):
    from safetensors.torch import load_file

    from treesdk_backends.single_file import from_single_file

    backend = _backend("lumina2", tmp_path)
    with perturbed(backend, seed=1):
        (file,) = backend.export("comfyui", str(tmp_path / "lumina2.safetensors"), {})
        merged = merged_state_dict(backend.transformer)
    single = load_file(file)
    # the original names (grouped-query q, k, v fused)
    assert {"layers.0.attention.qkv.weight", "layers.0.attention_norm1.weight", "layers.0.adaLN_modulation.1.weight",
            "context_refiner.0.attention_norm1.weight", "cap_embedder.1.weight", "final_layer.linear.weight"} <= set(single)
    back = from_single_file(dict(single), "lumina2")
    assert set(back) == set(merged) and all(torch.equal(back[k], merged[k]) for k in merged)
    report = check_file(file, base=str(backend.model_path / "transformer"))
    assert report.ok and report.format == "lumina2-original" and report.family == "lumina2", report.problems


@needs_comfyui
def test_lumina2_single_file_loads_strictly_in_comfyuis_lumina2_model(tmp_path):
    from safetensors.torch import load_file

    operations = _comfy()
    from comfy.ldm.lumina.model import NextDiT

    backend = _backend("lumina2", tmp_path)
    c = backend.transformer.config
    (file,) = backend.export("comfyui", str(tmp_path / "lumina2.safetensors"), {})
    # ComfyUI's model_detection settings for Lumina2 (ffn multiplier 4): every key and shape must fit
    theirs = NextDiT(patch_size=2, in_channels=c.in_channels, dim=c.hidden_size, n_layers=c.num_layers,
                     n_refiner_layers=c.num_refiner_layers, n_heads=c.num_attention_heads, n_kv_heads=c.num_kv_heads,
                     multiple_of=c.multiple_of, ffn_dim_multiplier=4.0, norm_eps=c.norm_eps, qk_norm=True,
                     cap_feat_dim=c.cap_feat_dim, axes_dims=list(c.axes_dim_rope), axes_lens=list(c.axes_lens),
                     rope_theta=10000.0, operations=operations, dtype=torch.float32, device="cpu")
    theirs.load_state_dict(load_file(file), strict=True)


@pytest.mark.parametrize("family", ["flux2-klein", "flux2"])
def test_flux2_single_file_is_what_diffusers_single_file_converter_inverts(family, tmp_path):
    from diffusers.loaders.single_file_utils import convert_flux2_transformer_checkpoint_to_diffusers
    from safetensors.torch import load_file

    backend = _backend(family, tmp_path)
    with perturbed(backend, seed=1):
        (file,) = backend.export("comfyui", str(tmp_path / "flux2.safetensors"), {})
        merged = merged_state_dict(backend.transformer)
    single = load_file(file)
    assert {"double_blocks.0.img_attn.qkv.weight", "double_stream_modulation_img.lin.weight",
            "single_blocks.0.linear1.weight", "final_layer.adaLN_modulation.1.weight"} <= set(single)
    back = convert_flux2_transformer_checkpoint_to_diffusers(dict(single))
    assert set(back) == set(merged) and all(torch.equal(back[k], merged[k]) for k in merged)
    report = check_file(file, base=str(backend.model_path / "transformer"))
    assert report.ok and report.format == "bfl-flux2" and report.family == family, report.problems


@needs_comfyui
@pytest.mark.parametrize("family", ["flux2-klein", "flux2"])
def test_flux2_single_file_loads_strictly_in_comfyuis_flux2_model(family, tmp_path):
    from safetensors.torch import load_file

    operations = _comfy()
    from comfy.ldm.flux.model import Flux

    backend = _backend(family, tmp_path)
    c = backend.transformer.config
    (file,) = backend.export("comfyui", str(tmp_path / "flux2.safetensors"), {})
    state = load_file(file)
    # ComfyUI's model_detection settings for FLUX.2, sizes read from the file as it does
    theirs = Flux(image_model="flux2", axes_dim=list(c.axes_dims_rope), num_heads=c.num_attention_heads,
                  mlp_ratio=c.mlp_ratio, theta=c.rope_theta, out_channels=c.out_channels or c.in_channels,
                  global_modulation=True, mlp_silu_act=True, qkv_bias=False, ops_bias=False, txt_ids_dims=[3],
                  patch_size=1, in_channels=state["img_in.weight"].shape[1], hidden_size=state["img_in.weight"].shape[0],
                  context_in_dim=state["txt_in.weight"].shape[1], vec_in_dim=None, depth=c.num_layers,
                  depth_single_blocks=c.num_single_layers, guidance_embed="guidance_in.in_layer.weight" in state,
                  operations=operations, dtype=torch.float32, device="cpu")
    theirs.load_state_dict(state, strict=True)
