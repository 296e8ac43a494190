"""The diffusers <-> BFL FLUX / SAI SD3 key maps, and the export writers on in-process tiny models."""

from __future__ import annotations

import types

import pytest
import torch
from diffusers import FluxTransformer2DModel, SD3Transformer2DModel
from peft import LoraConfig
from safetensors.torch import load_file

from treesdk import io as tio
from treesdk_backends import diffusers_export, keymaps


def tiny_flux(guidance=True, layers=2, single=2):
    torch.manual_seed(0)
    return FluxTransformer2DModel(
        patch_size=1, in_channels=8, num_layers=layers, num_single_layers=single, attention_head_dim=8,
        num_attention_heads=2, joint_attention_dim=16, pooled_projection_dim=12, guidance_embeds=guidance,
        axes_dims_rope=(2, 2, 4),
    )


def tiny_sd3(sd35=True, layers=3):
    torch.manual_seed(0)
    extra = {"qk_norm": "rms_norm", "dual_attention_layers": (0, 1)} if sd35 else {}
    return SD3Transformer2DModel(
        sample_size=8, patch_size=2, in_channels=4, num_layers=layers, attention_head_dim=8, num_attention_heads=2,
        joint_attention_dim=16, caption_projection_dim=16, pooled_projection_dim=12, out_channels=4,
        pos_embed_max_size=16, **extra,
    )


def randomised(model):
    with torch.no_grad():
        for p in model.parameters():
            p.normal_()
    return model


@pytest.mark.parametrize("guidance", [True, False])
def test_flux_round_trip_is_exact_and_fused_in_bfl_order(guidance):
    sd = randomised(tiny_flux(guidance)).state_dict()
    bfl = keymaps.diffusers_to_original(sd, "flux")
    d, mlp = 16, 64
    assert ("guidance_in.in_layer.weight" in bfl) == guidance
    assert bfl["double_blocks.1.img_attn.qkv.weight"].shape == (3 * d, d)
    torch.testing.assert_close(
        bfl["double_blocks.1.txt_attn.qkv.bias"],
        torch.cat([sd[f"transformer_blocks.1.attn.add_{c}_proj.bias"] for c in "qkv"]),
    )
    lin1 = bfl["single_blocks.1.linear1.weight"]
    assert lin1.shape == (3 * d + mlp, d)
    torch.testing.assert_close(lin1[d : 2 * d], sd["single_transformer_blocks.1.attn.to_k.weight"])
    torch.testing.assert_close(lin1[3 * d :], sd["single_transformer_blocks.1.proj_mlp.weight"])
    assert torch.equal(bfl["double_blocks.0.img_attn.norm.key_norm.scale"], sd["transformer_blocks.0.attn.norm_k.weight"])
    final = bfl["final_layer.adaLN_modulation.1.bias"]
    torch.testing.assert_close(final[:d], sd["norm_out.linear.bias"][d:])  # BFL shift first
    back = keymaps.original_to_diffusers(bfl, "flux")
    assert set(back) == set(sd) and all(torch.equal(back[k], sd[k]) for k in sd)
    # ComfyUI's checkpoint prefix is accepted on the way back
    again = keymaps.original_to_diffusers({f"model.diffusion_model.{k}": v for k, v in bfl.items()}, "flux")
    assert set(again) == set(sd)


@pytest.mark.parametrize("sd35", [True, False])
def test_sd3_matches_diffusers_single_file_loader(sd35):
    from diffusers.loaders.single_file_utils import convert_sd3_transformer_checkpoint_to_diffusers

    sd = randomised(tiny_sd3(sd35)).state_dict()
    sai = keymaps.diffusers_to_original(sd, "sd3")
    assert "joint_blocks.2.context_block.attn.proj.weight" not in sai  # last block is context-pre-only
    assert ("joint_blocks.0.x_block.attn2.qkv.weight" in sai) == sd35
    theirs = convert_sd3_transformer_checkpoint_to_diffusers(dict(sai))
    assert set(theirs) == set(sd) and all(torch.equal(theirs[k], sd[k]) for k in sd)
    ours = keymaps.original_to_diffusers(sai, "sd3")
    assert all(torch.equal(ours[k], sd[k]) for k in sd)


def test_maps_refuse_what_they_cannot_place():
    sd = tiny_flux().state_dict()
    with pytest.raises(ValueError, match="no place in the flux layout.*stray.weight"):
        keymaps.diffusers_to_original({**sd, "stray.weight": torch.zeros(1)}, "flux")
    partial = {k: v for k, v in sd.items() if k != "transformer_blocks.0.attn.to_k.weight"}
    with pytest.raises(ValueError, match=r"double_blocks.0.img_attn.qkv.weight needs \['transformer_blocks.0.attn.to_k.weight'\]"):
        keymaps.diffusers_to_original(partial, "flux")
    bfl = keymaps.diffusers_to_original(sd, "flux")
    bfl["double_blocks.0.img_attn.qkv.weight"] = bfl["double_blocks.0.img_attn.qkv.weight"][:-1]
    with pytest.raises(ValueError, match="not divisible into q, k, v"):
        keymaps.original_to_diffusers(bfl, "flux")


def test_family_detection_and_lora_slices():
    flux, sd3 = tiny_flux().state_dict(), tiny_sd3().state_dict()
    assert keymaps.detect_family(flux) == "flux" and keymaps.detect_family(sd3) == "sd3"
    assert keymaps.detect_family(keymaps.diffusers_to_original(sd3, "sd3")) == "sd3"
    shapes = {k: tuple(v.shape) for k, v in flux.items()}
    assert keymaps.lora_target_in_original("single_transformer_blocks.0.proj_mlp", "flux", shapes) == (
        "single_blocks.0.linear1.weight", 48, 64)
    assert keymaps.lora_target_in_original("transformer_blocks.1.attn.add_v_proj", "flux", shapes) == (
        "double_blocks.1.txt_attn.qkv.weight", 32, 16)


# ---------------------------------------------------------------------------------------------
# writers on an in-process model (no pipeline): scale folding, non-destructive merge, atomicity


def lora_backend(family="flux"):
    model = tiny_flux() if family == "flux" else tiny_sd3()
    config = LoraConfig(r=4, lora_alpha=12, init_lora_weights="gaussian", target_modules=["to_q", "to_v", "proj_mlp", "ff.net.2"])
    model.add_adapter(config)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "lora_B" in name:
                p.normal_(0, 0.1)
    return types.SimpleNamespace(transformer=model, family=family, lora_config=config)


def test_lora_scale_is_folded_and_merge_matches_peft():
    backend = lora_backend()
    lora = diffusers_export.lora_state_dict(backend.transformer)
    layer = backend.transformer.transformer_blocks[0].attn.to_q
    torch.testing.assert_close(lora["transformer.transformer_blocks.0.attn.to_q.lora_B.weight"], layer.lora_B["default"].weight * 3.0)
    merged = diffusers_export.merged_state_dict(backend.transformer)
    expected = layer.base_layer.weight + 3.0 * layer.lora_B["default"].weight @ layer.lora_A["default"].weight
    torch.testing.assert_close(merged["transformer_blocks.0.attn.to_q.weight"], expected)
    assert not any("lora" in k or "base_layer" in k for k in merged)
    assert set(merged) == set(tiny_flux().state_dict())


def test_lora_export_refuses_a_full_finetune(tmp_path):
    backend = types.SimpleNamespace(transformer=tiny_flux(), family="flux", lora_config=None)
    with pytest.raises(ValueError, match="no trainable LoRA adapter"):
        diffusers_export.export_transformer(backend, "lora", tmp_path / "x.safetensors", {})
    with pytest.raises(ValueError, match="cannot export format 'onnx'"):
        diffusers_export.export_transformer(backend, "onnx", tmp_path / "x.safetensors", {})
    assert list(tmp_path.iterdir()) == []


def test_interrupted_file_write_keeps_the_old_file(tmp_path, monkeypatch):
    backend = lora_backend("sd3")
    target = tmp_path / "model.safetensors"
    target.write_bytes(b"previous export")

    def crash(fd):
        raise OSError("disk full")

    monkeypatch.setattr(tio.os, "fsync", crash)  # fails after the bytes went to the temp file
    with pytest.raises(OSError, match="disk full"):
        diffusers_export.export_transformer(backend, "comfyui", target, {})
    assert target.read_bytes() == b"previous export"
    assert [p.name for p in tmp_path.iterdir()] == ["model.safetensors"]


def test_interrupted_folder_write_keeps_the_old_folder(tmp_path, monkeypatch):
    backend = lora_backend()
    target = tmp_path / "transformer"
    diffusers_export.export_transformer(backend, "diffusers", target, {"treesdk.iterations": "1"})
    before = {p.name: p.read_bytes() for p in target.iterdir()}
    real = diffusers_export.atomic_save_safetensors

    def half_then_crash(tensors, path, metadata=None):
        real(dict(list(tensors.items())[:3]), path, metadata)
        raise KeyboardInterrupt

    monkeypatch.setattr(diffusers_export, "atomic_save_safetensors", half_then_crash)
    with torch.no_grad():
        backend.transformer.proj_out.weight.add_(1.0)
    with pytest.raises(KeyboardInterrupt):
        diffusers_export.export_transformer(backend, "diffusers", target, {"treesdk.iterations": "2"})
    assert {p.name: p.read_bytes() for p in target.iterdir()} == before
    assert [p.name for p in tmp_path.iterdir()] == ["transformer"]
    monkeypatch.setattr(diffusers_export, "atomic_save_safetensors", real)
    diffusers_export.export_transformer(backend, "diffusers", target, {"treesdk.iterations": "2"})
    new = load_file(str(target / "diffusion_pytorch_model.safetensors"))
    torch.testing.assert_close(new["proj_out.weight"], backend.transformer.proj_out.weight)
    assert [p.name for p in tmp_path.iterdir()] == ["transformer"]


def test_unwritable_target_is_one_clear_error(tmp_path):
    backend = lora_backend()
    blocker = tmp_path / "a_file"
    blocker.write_text("x")
    with pytest.raises(OSError, match="a_file"):
        diffusers_export.export_transformer(backend, "lora", blocker / "lora.safetensors", {})
    with pytest.raises(OSError, match="a_file"):
        diffusers_export.export_transformer(backend, "diffusers", blocker / "folder", {})
    assert blocker.read_text() == "x"


def test_check_reads_comfyui_style_lora_names(tmp_path):
    """``diffusion_model.<BFL module>`` and ``lora_unet_<module with _>`` LoRAs (kohya / ComfyUI
    style) map onto the fused original weights; ``.alpha`` and peft's ``base_model.model.`` are flagged."""
    from safetensors.torch import save_file

    import treesdk.export_files as texport

    model = tiny_flux()
    save_file({k: v.contiguous() for k, v in model.state_dict().items()}, tmp_path / "base.safetensors")
    r, d = 2, 16
    good = {
        "diffusion_model.double_blocks.0.img_attn.qkv.lora_A.weight": torch.zeros(r, d),
        "diffusion_model.double_blocks.0.img_attn.qkv.lora_B.weight": torch.zeros(3 * d, r),
        "lora_unet_single_blocks_1_linear1.lora_down.weight": torch.zeros(r, d),
        "lora_unet_single_blocks_1_linear1.lora_up.weight": torch.zeros(3 * d + 64, r),
    }
    save_file(good, tmp_path / "comfy.safetensors")
    report = texport.check_file(tmp_path / "comfy.safetensors", base=tmp_path / "base.safetensors")
    assert report.format == "lora-comfyui" and report.family == "flux" and report.rank == r and report.ok, report.summary()
    bad = {
        **good,
        "diffusion_model.double_blocks.0.img_attn.qkv.alpha": torch.tensor(2.0),
        "base_model.model.transformer_blocks.0.attn.to_q.lora_A.weight": torch.zeros(r, d),
        "lora_unet_single_blocks_1_linear1.lora_up.weight": torch.zeros(3 * d, r),
    }
    save_file(bad, tmp_path / "bad.safetensors")
    problems = "\n".join(texport.check_file(tmp_path / "bad.safetensors", base=tmp_path / "base.safetensors").problems)
    assert ".alpha key" in problems and "base_model.model." in problems
    assert "lora_unet_single_blocks_1_linear1: LoRA delta is [48, 16], the base layer's weight is [112, 16]" in problems
