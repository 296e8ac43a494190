"""Export of trained FLUX / SD3 policies: LoRA, merged diffusers folder, BFL/SAI single file.

A short real training run (treesdk.train, GRPO on a brightness reward) on the tiny pipelines of
``diffusers_fixtures`` produces a run folder; everything is exported from that and read back
through the loaders users use (``pipe.load_lora_weights``, ``from_pretrained``), the inverse key
map, ``check_file`` and ``treesdk export``.
"""

from __future__ import annotations

import contextlib
import json
import os
import sys
from pathlib import Path

import pytest
import torch

os.environ.setdefault("HF_HUB_OFFLINE", "1")

from diffusers_fixtures import TINY_MAX_SEQUENCE_LENGTH, TINY_RESOLUTION, build_tiny_flux, build_tiny_sd3  # noqa: E402
from safetensors import safe_open  # noqa: E402
from safetensors.torch import load_file, save_file  # noqa: E402
from typer.testing import CliRunner  # noqa: E402

import treesdk  # noqa: E402
from treesdk.export_files import check_file  # noqa: E402
from treesdk.training.exporting.export import export_run  # noqa: E402
from treesdk.interfaces import RewardModel  # noqa: E402
from treesdk_backends import keymaps  # noqa: E402
from treesdk_backends.diffusers_export import merged_state_dict  # noqa: E402
from treesdk_cli.main import app  # noqa: E402

PROMPTS = ["a photo of a cat", "a red apple on a table"]
# every family of layer, including FLUX's single-block MLP input (fused into linear1) and the
# final adaLN (order-swapped in the original layouts)
EXTRA_TARGETS = {"flux": ["proj_mlp", "norm_out.linear"], "sd3": ["norm_out.linear", "norm1_context.linear"]}


class Brightness(RewardModel):
    name = "brightness"

    def score(self, images, prompts):
        return images.float().mean(dim=(1, 2, 3))


def _options(family: str, path: Path, rank: int) -> dict:
    from treesdk_backends.flux import FLUX_LORA_TARGETS
    from treesdk_backends.sd3 import SD3_LORA_TARGETS

    base_targets = FLUX_LORA_TARGETS if family == "flux" else SD3_LORA_TARGETS
    return {
        "model": str(path),
        "resolution": TINY_RESOLUTION,
        "device": "cpu",
        "dtype": "float32",
        "lora_rank": rank,
        "lora_alpha": 2.0 * rank if rank else None,  # alpha != r: the scale must be folded in
        "lora_targets": [*base_targets, *EXTRA_TARGETS[family]] if rank else None,
        "max_sequence_length": TINY_MAX_SEQUENCE_LENGTH,
    }


def _train(family: str, path: Path, out: Path, rank: int = 4):
    """A short real training run; the LoRA B matrices start at 0, so they are perturbed first
    (a few iterations of RL would move them little) — the run then trains on top."""
    options = _options(family, path, rank)
    backend = treesdk.load_backend(family, **options)
    torch.manual_seed(0)
    with torch.no_grad():
        for p in backend.trainable_parameters():
            p.add_(0.05 * torch.randn_like(p))
    recipe = treesdk.load_algorithm("grpo", **{"steps": 2, "tree.roots": 2, "optim.lr": 1e-3})
    treesdk.train(recipe, backend, {"brightness": Brightness()}, PROMPTS[:1], iters=1, batch=1, seed=0,
                  out_dir=out, backend_options=options)
    return backend


@contextlib.contextmanager
def _using(backend, transformer):
    """``backend.velocity`` computed with another transformer (same inputs, same code path)."""
    saved = backend.transformer
    backend.transformer = transformer
    try:
        yield
    finally:
        backend.transformer = saved


def _velocity(backend, transformer=None):
    gen = torch.Generator().manual_seed(1)
    x = torch.randn(2, *backend.latent_shape, generator=gen)
    cond = backend.encode(PROMPTS)
    with torch.no_grad(), _using(backend, transformer or backend.transformer):
        return backend.velocity(x, torch.tensor([0.8, 0.3]), cond)


class Trained:
    def __init__(self, family, path, run, backend):
        self.family, self.path, self.run, self.backend = family, path, run, backend
        self.v_trained = _velocity(backend)
        self.exports = run / "export"


@pytest.fixture(scope="module", params=["flux", "sd3"])
def trained(request, tmp_path_factory):
    family = request.param
    root = tmp_path_factory.mktemp(f"export-{family}")
    path = (build_tiny_flux if family == "flux" else build_tiny_sd3)(root / "model")
    backend = _train(family, path, root / "run")
    return Trained(family, path, root / "run", backend)


def _pipeline_class(family):
    from diffusers import FluxPipeline, StableDiffusion3Pipeline

    return FluxPipeline if family == "flux" else StableDiffusion3Pipeline


def _transformer_class(family):
    from diffusers import FluxTransformer2DModel, SD3Transformer2DModel

    return FluxTransformer2DModel if family == "flux" else SD3Transformer2DModel


# ---------------------------------------------------------------------------------------------
# (a) LoRA


def test_lora_export_loads_with_load_lora_weights_at_trained_strength(trained, tmp_path):
    files = export_run(trained.run, "lora", tmp_path / "lora.safetensors")
    assert files == [str(tmp_path / "lora.safetensors"), str(tmp_path / "README.md")]  # the model card last
    state = load_file(files[0])
    assert all(k.startswith("transformer.") and k.endswith((".lora_A.weight", ".lora_B.weight")) for k in state)
    assert not any(".alpha" in k or "base_model" in k or ".default" in k for k in state)
    pipe = _pipeline_class(trained.family).from_pretrained(trained.path, local_files_only=True)
    base_v = _velocity(trained.backend, pipe.transformer)
    pipe.load_lora_weights(files[0])
    v = _velocity(trained.backend, pipe.transformer)
    assert (base_v - trained.v_trained).abs().max() > 1e-3  # the adapter does something
    torch.testing.assert_close(v, trained.v_trained, rtol=1e-4, atol=1e-5)


def test_lora_keys_are_what_save_lora_weights_writes(trained, tmp_path):
    from peft.utils import get_peft_model_state_dict

    pipe_cls = _pipeline_class(trained.family)
    reference = tmp_path / "ref"
    pipe_cls.save_lora_weights(reference, transformer_lora_layers=get_peft_model_state_dict(trained.backend.transformer))
    ref = load_file(str(reference / "pytorch_lora_weights.safetensors"))
    ours = load_file(export_run(trained.run, "lora", tmp_path / "ours.safetensors")[0])
    assert set(ours) == set(ref)
    scale = 2.0  # lora_alpha / r
    for key, value in ref.items():
        expected = value * scale if key.endswith("lora_B.weight") else value
        torch.testing.assert_close(ours[key], expected)


# ---------------------------------------------------------------------------------------------
# (b) merged diffusers folder


def test_merged_diffusers_folder_gives_the_trained_velocity(trained, tmp_path):
    before = {k: v.clone() for k, v in trained.backend.transformer.state_dict().items()}
    files = export_run(trained.run, "diffusers", tmp_path / "pipeline")
    assert sorted(Path(f).name for f in files) == ["README.md", "config.json", "diffusion_pytorch_model.safetensors",
                                                   "model_index.json"]
    pipe = _pipeline_class(trained.family).from_pretrained(tmp_path / "pipeline")  # the full pipeline loads
    torch.testing.assert_close(_velocity(trained.backend, pipe.transformer), trained.v_trained, rtol=1e-4, atol=1e-5)
    after = trained.backend.transformer.state_dict()
    assert all(torch.equal(before[k], after[k]) for k in before)  # the training model is untouched
    assert [p.name for p in tmp_path.iterdir()] == ["pipeline"]  # no temp folders left


# ---------------------------------------------------------------------------------------------
# (c) original single file


def test_original_single_file_inverts_exactly_and_has_the_prescribed_shapes(trained, tmp_path):
    file = export_run(trained.run, "comfyui", tmp_path / "single.safetensors")[0]
    original = load_file(file)
    merged = merged_state_dict(trained.backend.transformer)
    back = keymaps.original_to_diffusers(original, trained.family)
    assert set(back) == set(merged)
    for key in merged:
        assert torch.equal(back[key], merged[key]), key
    cfg = trained.backend.transformer.config
    d = cfg.num_attention_heads * cfg.attention_head_dim
    if trained.family == "flux":
        assert not any(k.startswith(("transformer", "diffusion_model", "model.")) for k in original)
        for i in range(cfg.num_layers):
            for stream in ("img", "txt"):
                assert original[f"double_blocks.{i}.{stream}_attn.qkv.weight"].shape == (3 * d, d)
                assert original[f"double_blocks.{i}.{stream}_attn.qkv.bias"].shape == (3 * d,)
                assert original[f"double_blocks.{i}.{stream}_mod.lin.weight"].shape == (6 * d, d)
            assert original[f"double_blocks.{i}.txt_mlp.0.weight"].shape == (4 * d, d)
        for i in range(cfg.num_single_layers):
            assert original[f"single_blocks.{i}.linear1.weight"].shape == (3 * d + 4 * d, d)
            assert original[f"single_blocks.{i}.linear2.weight"].shape == (d, d + 4 * d)
            # q, k, v, mlp in this order
            torch.testing.assert_close(
                original[f"single_blocks.{i}.linear1.weight"][3 * d :],
                merged[f"single_transformer_blocks.{i}.proj_mlp.weight"],
            )
        for name in ("guidance_in.in_layer.weight", "time_in.in_layer.weight", "vector_in.in_layer.weight", "img_in.weight", "txt_in.weight"):
            assert name in original
    else:
        for i in range(cfg.num_layers):
            assert original[f"joint_blocks.{i}.x_block.attn.qkv.weight"].shape == (3 * d, d)
            assert original[f"joint_blocks.{i}.context_block.attn.qkv.weight"].shape == (3 * d, d)
        assert original["joint_blocks.0.x_block.attn2.qkv.weight"].shape == (3 * d, d)
        for name in ("pos_embed", "x_embedder.proj.weight", "t_embedder.mlp.0.weight", "y_embedder.mlp.0.weight", "context_embedder.weight"):
            assert name in original
        last = cfg.num_layers - 1
        assert f"joint_blocks.{last}.context_block.attn.proj.weight" not in original
        ctx = original[f"joint_blocks.{last}.context_block.adaLN_modulation.1.weight"]
        torch.testing.assert_close(ctx[: ctx.shape[0] // 2], merged[f"transformer_blocks.{last}.norm1_context.linear.weight"][ctx.shape[0] // 2 :])
    # adaLN order: original [shift, scale], diffusers [scale, shift]
    final = original["final_layer.adaLN_modulation.1.weight"]
    assert final.shape == (2 * d, d)
    torch.testing.assert_close(final[:d], merged["norm_out.linear.weight"][d:])
    torch.testing.assert_close(final[d:], merged["norm_out.linear.weight"][:d])
    with safe_open(file, framework="pt") as handle:
        meta = handle.metadata()
    assert meta["treesdk.backend"] == trained.family and meta["treesdk.iterations"] == "1"
    assert meta["treesdk.algorithm"] == "grpo" and json.loads(meta["treesdk.recipe"])["name"] == "grpo"
    assert meta["treesdk.base_model"] == str(trained.path)


def test_sd3_map_agrees_with_diffusers_single_file_loader(trained):
    if trained.family != "sd3":
        pytest.skip("diffusers' FLUX converter hard-codes FLUX.1's 3072 width")
    from diffusers.loaders.single_file_utils import convert_sd3_transformer_checkpoint_to_diffusers

    merged = merged_state_dict(trained.backend.transformer)
    theirs = convert_sd3_transformer_checkpoint_to_diffusers(keymaps.diffusers_to_original(merged, "sd3"))
    assert set(theirs) == set(merged)
    assert all(torch.equal(theirs[k], merged[k]) for k in merged)


# ---------------------------------------------------------------------------------------------
# (d) ComfyUI's LoRA rules, clean room (and with ComfyUI itself when COMFYUI_PATH is set)


def test_lora_follows_comfyui_key_rules(trained, tmp_path):
    state = load_file(export_run(trained.run, "lora", tmp_path / "l.safetensors")[0])
    modules = {k.rsplit(".lora_", 1)[0] for k in state}
    for key in state:
        assert key.startswith(("transformer.", "diffusion_model.", "lora_unet_"))
        assert not key.endswith(".alpha") and "base_model.model" not in key
    # ComfyUI maps "transformer.<diffusers module>" onto the base weight (or its slice of a fused
    # original weight); every module must have such a target with matching shape
    shapes = {k: tuple(v.shape) for k, v in trained.backend.pipe.transformer.state_dict().items()}
    base = {k.replace(".base_layer.", "."): s for k, s in shapes.items() if ".lora_" not in k}
    for module in modules:
        name = module[len("transformer.") :]
        out, inp = base[f"{name}.weight"]
        assert state[f"{module}.lora_A.weight"].shape[1] == inp and state[f"{module}.lora_B.weight"].shape[0] == out
        target = keymaps.lora_target_in_original(name, trained.family, base)
        assert target is not None, f"{name} has no place in the original layout"


@pytest.mark.skipif(not os.environ.get("COMFYUI_PATH"), reason="set COMFYUI_PATH to a ComfyUI checkout")
def test_comfyui_lora_loader_reads_every_key(trained, tmp_path):
    sys.path.insert(0, os.environ["COMFYUI_PATH"])
    if not torch.cuda.is_available():  # a CUDA torch build on a CPU machine: ComfyUI must not probe the driver
        import comfy.cli_args

        comfy.cli_args.args.cpu = True
    import comfy.lora
    import comfy.utils

    state = load_file(export_run(trained.run, "lora", tmp_path / "l.safetensors")[0])
    cfg = trained.backend.transformer.config
    if trained.family == "flux":
        unet_config = {"depth": cfg.num_layers, "depth_single_blocks": cfg.num_single_layers, "hidden_size": cfg.num_attention_heads * cfg.attention_head_dim}
        mapping = comfy.utils.flux_to_diffusers(unet_config, output_prefix="diffusion_model.")
    else:
        unet_config = {"depth": cfg.num_layers, "num_blocks": cfg.num_layers}
        mapping = comfy.utils.mmdit_to_diffusers(unet_config, output_prefix="diffusion_model.")
    key_map = {f"transformer.{k[: -len('.weight')]}": v for k, v in mapping.items() if k.endswith(".weight")}
    patches = comfy.lora.load_lora(state, key_map)
    assert len(patches) == len({k.rsplit(".lora_", 1)[0] for k in state})


# ---------------------------------------------------------------------------------------------
# (f) --check


def test_check_reports_every_format_and_passes(trained, tmp_path):
    lora = export_run(trained.run, "lora", tmp_path / "l.safetensors")[0]
    single = export_run(trained.run, "comfyui", tmp_path / "s.safetensors")[0]
    export_run(trained.run, "diffusers", tmp_path / "merged")
    layout = "bfl-flux" if trained.family == "flux" else "sai-sd3"
    for path, fmt in ((lora, "lora-diffusers"), (single, layout), (tmp_path / "merged", "diffusers-transformer")):
        report = check_file(path)
        assert report.format == fmt and report.family == trained.family and report.ok, report.summary()
    report = check_file(lora)
    assert report.rank == 4 and "transformer_blocks.0.attn.to_q" in report.modules
    # against a base in the original layout (the single file itself), too
    assert check_file(lora, base=single).ok
    result = CliRunner().invoke(app, ["export", "--check", lora])
    assert result.exit_code == 0, result.output
    assert "lora-diffusers" in result.output and "OK" in result.output


def test_check_fails_on_a_wrong_shape(trained, tmp_path):
    lora_file = export_run(trained.run, "lora", tmp_path / "l.safetensors")[0]
    with safe_open(lora_file, framework="pt") as handle:
        meta = handle.metadata()
    state = load_file(lora_file)
    key = next(k for k in state if k.endswith("attn.to_q.lora_A.weight"))
    state[key] = torch.zeros(state[key].shape[0], state[key].shape[1] + 1)
    save_file(state, tmp_path / "bad.safetensors", metadata=meta)
    report = check_file(tmp_path / "bad.safetensors")
    assert not report.ok and any(key.rsplit(".lora_A", 1)[0] in p for p in report.problems)
    single = load_file(export_run(trained.run, "comfyui", tmp_path / "s.safetensors")[0])
    qkv = next(k for k in single if k.endswith("attn.qkv.weight"))
    single[qkv] = single[qkv][:-3]
    save_file(single, tmp_path / "bad_single.safetensors", metadata=meta)
    result = CliRunner().invoke(app, ["export", "--check", str(tmp_path / "bad_single.safetensors")])
    assert result.exit_code == 1 and "FAILED" in result.output and qkv in result.output


# ---------------------------------------------------------------------------------------------
# the run's own export and bad input


def test_cli_export_writes_into_the_run_folder(trained):
    result = CliRunner().invoke(app, ["export", str(trained.run)])
    assert result.exit_code == 0, result.output
    # after progress bars: the files, the model card last
    assert result.output.strip().endswith(f'{trained.run / "export" / "lora.safetensors"}\n{trained.run / "export" / "README.md"}')
    assert check_file(trained.run / "export" / "lora.safetensors").ok


def test_full_finetune_run_refuses_lora_and_leaves_files(trained, tmp_path):
    if trained.family != "flux":
        pytest.skip("one family is enough for the full fine-tune path")
    options = _options("flux", trained.path, rank=0)
    backend = treesdk.load_backend("flux", **options)
    with torch.no_grad():
        backend.transformer.proj_out.weight.add_(0.01)
    from treesdk.training.run_folder.checkpoint import save_checkpoint

    run = tmp_path / "full"
    run.mkdir()
    (run / "config.json").write_text(json.dumps({"recipe": {"name": "grpo"}, "backend": {"name": "flux", "options": options, "describe": backend.describe()}}))
    optim = torch.optim.SGD(backend.trainable_parameters(), lr=0.1)
    save_checkpoint(run, 3, backend.trainable_state_dict(), optim, {})
    existing = tmp_path / "lora.safetensors"
    existing.write_bytes(b"old")
    result = CliRunner().invoke(app, ["export", str(run), "--format", "lora", "--out", str(existing)])
    assert result.exit_code == 1 and "Traceback" not in result.output
    errors = [line for line in result.output.splitlines() if line.startswith("error:")]
    assert len(errors) == 1 and "no LoRA adapter" in errors[0]
    assert existing.read_bytes() == b"old"
    export_run(run, "diffusers", tmp_path / "merged")
    model = _transformer_class("flux").from_pretrained(tmp_path / "merged" / "transformer")
    torch.testing.assert_close(model.proj_out.weight, backend.transformer.proj_out.weight)
