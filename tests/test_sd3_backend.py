"""The ``sd3`` backend on a tiny random SD3.5-style pipeline saved in the hub layout (offline, CPU)."""

from __future__ import annotations

import os
import shutil

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import pytest
import torch

pytest.importorskip("diffusers")
pytest.importorskip("peft")

import treesdk
from diffusers_fixtures import (  # noqa: F401 - tiny_sd3_path is a pytest fixture
    TINY_MAX_SEQUENCE_LENGTH,
    TINY_RESOLUTION,
    perturb_trainable,
    single_thread,
    tiny_sd3_path,
)
from treesdk import sde
from treesdk_backends.diffusers_common import CheckpointNotFoundError
from treesdk_backends.sd3 import SD3Backend

PROMPTS = ["a painting of a small house near the blue sea", "two dogs playing in the snow"]


@pytest.fixture(autouse=True, scope="module")
def _one_thread():
    with single_thread():
        yield


def make(path, **options) -> SD3Backend:
    kwargs = dict(resolution=TINY_RESOLUTION, dtype="float32", device="cpu",
                  max_sequence_length=TINY_MAX_SEQUENCE_LENGTH, lora_rank=4)
    kwargs.update(options)
    return SD3Backend(path, **kwargs)


@pytest.fixture(scope="module")
def sd3(tiny_sd3_path) -> SD3Backend:
    """Shared fp32 LoRA backend with CFG 4.5; tests that change it restore it."""
    return make(tiny_sd3_path)


@pytest.fixture
def no_cfg(sd3):
    sd3.guidance_scale = 1.0
    try:
        yield sd3
    finally:
        sd3.guidance_scale = 4.5


def ode_sample(backend, noise, cond, num_steps):
    sigmas = backend.sigmas(num_steps)
    x = noise
    with torch.no_grad():
        for i in range(num_steps):
            x = sde.ode_step(x, backend.velocity(x, sigmas[i], cond), sigmas[i], sigmas[i + 1])
    return x


@pytest.mark.parametrize("guidance_scale", [4.5, 1.0], ids=["cfg", "no-cfg"])
def test_ode_sampling_reproduces_the_pipeline(sd3, guidance_scale):
    steps = 4
    sd3.guidance_scale = guidance_scale
    try:
        noise = torch.randn((len(PROMPTS), *sd3.latent_shape), generator=torch.Generator().manual_seed(11))
        ours = ode_sample(sd3, noise, sd3.encode(PROMPTS), steps)
        theirs = sd3.pipe(
            PROMPTS, num_inference_steps=steps, height=TINY_RESOLUTION, width=TINY_RESOLUTION,
            guidance_scale=guidance_scale, max_sequence_length=TINY_MAX_SEQUENCE_LENGTH,
            generator=torch.Generator().manual_seed(11), output_type="latent",
        ).images
    finally:
        sd3.guidance_scale = 4.5
    assert theirs.shape == ours.shape == (2, 4, 16, 16)
    assert (ours - theirs).abs().max().item() < 1e-5
    assert theirs.abs().max().item() > 0.1


def test_decode_matches_the_pipeline_images(sd3):
    noise = torch.randn((1, *sd3.latent_shape), generator=torch.Generator().manual_seed(3))
    images = sd3.decode(ode_sample(sd3, noise, sd3.encode(PROMPTS[:1]), 2))
    theirs = sd3.pipe(
        PROMPTS[:1], num_inference_steps=2, height=TINY_RESOLUTION, width=TINY_RESOLUTION, guidance_scale=4.5,
        max_sequence_length=TINY_MAX_SEQUENCE_LENGTH, generator=torch.Generator().manual_seed(3), output_type="pt",
    ).images
    assert images.shape == (1, 3, TINY_RESOLUTION, TINY_RESOLUTION) and images.dtype == torch.float32
    assert torch.allclose(images, theirs, atol=1e-5)


def test_sigmas_are_the_pipeline_grid_with_static_shift(sd3):
    assert sd3.shift == 3.0
    for steps in (1, 5, 12):
        grid = sd3.sigmas(steps)
        assert grid.dtype == torch.float32 and grid.shape == (steps + 1,)
        assert grid[0].item() == 1.0 and grid[-1].item() == 0.0
        assert bool((grid[1:] < grid[:-1]).all())
    sd3.pipe(PROMPTS[:1], num_inference_steps=5, height=TINY_RESOLUTION, width=TINY_RESOLUTION, guidance_scale=1.0,
             max_sequence_length=TINY_MAX_SEQUENCE_LENGTH, output_type="latent")
    assert torch.equal(sd3.pipe.scheduler.sigmas, sd3.sigmas(5))
    # the pipeline spaces its timesteps down to shift(1/1000), not to 1/T, then shifts them:
    # shift(linspace(1, shift(0.001), T))
    base = torch.linspace(1.0, sde.shift_sigmas(torch.tensor(0.001), 3.0).item(), 5, dtype=torch.float64)
    assert torch.allclose(sd3.sigmas(5)[:-1].double(), sde.shift_sigmas(base, 3.0), atol=1e-6)


def transformer_batches(backend):
    batches = []
    hook = backend.transformer.register_forward_pre_hook(
        lambda m, args, kwargs: batches.append(kwargs["hidden_states"].shape[0]), with_kwargs=True
    )
    return batches, hook


def test_cfg_is_one_batched_forward_and_off_halves_it(sd3, tiny_sd3_path):
    x = torch.randn(2, *sd3.latent_shape, generator=torch.Generator().manual_seed(1))
    cond = sd3.encode(PROMPTS)
    assert set(cond) == {"prompt_embeds", "pooled_prompt_embeds", "negative_prompt_embeds",
                         "negative_pooled_prompt_embeds"}
    assert cond["prompt_embeds"].shape == (2, 77 + TINY_MAX_SEQUENCE_LENGTH, 64)
    assert cond["negative_pooled_prompt_embeds"].shape == (2, 64)
    batches, hook = transformer_batches(sd3)
    try:
        with torch.no_grad():
            v_cfg = sd3.velocity(x, torch.tensor(0.7), cond)
    finally:
        hook.remove()
    assert batches == [4]  # uncond + cond in one forward

    # guidance 1.0: a fresh backend never encodes the negative prompt and runs B latents
    plain = make(tiny_sd3_path, guidance_scale=1.0)
    calls = []
    enc_hook = plain.pipe.text_encoder_3.register_forward_hook(lambda m, i, o: calls.append(i[0].shape[0]))
    try:
        cond_plain = plain.encode(PROMPTS)
    finally:
        enc_hook.remove()
    assert calls == [2] and "" not in plain._cache and set(cond_plain) == {"prompt_embeds", "pooled_prompt_embeds"}
    batches, hook = transformer_batches(plain)
    try:
        with torch.no_grad():
            v_cond = plain.velocity(x, torch.tensor(0.7), cond_plain)
            neg = {"prompt_embeds": cond["negative_prompt_embeds"],
                   "pooled_prompt_embeds": cond["negative_pooled_prompt_embeds"]}
            v_uncond = plain.velocity(x, torch.tensor(0.7), neg)
    finally:
        hook.remove()
    assert batches == [2, 2]
    assert torch.allclose(v_cfg, v_uncond + 4.5 * (v_cond - v_uncond), atol=1e-5)
    assert not torch.allclose(v_cfg, v_cond, atol=1e-3)
    with pytest.raises(ValueError, match="negative_prompt_embeds"):
        sd3.velocity(x, torch.tensor(0.7), cond_plain)


@pytest.mark.parametrize("guidance_scale", [4.5, 1.0], ids=["cfg", "no-cfg"])
def test_ratio_is_exactly_one_before_any_update(sd3, guidance_scale):
    sd3.guidance_scale = guidance_scale
    try:
        cond = sd3.encode(PROMPTS)
        sigmas = sd3.sigmas(6)
        x = torch.randn(2, *sd3.latent_shape, generator=torch.Generator().manual_seed(2))
        with torch.no_grad():
            v = sd3.velocity(x, sigmas[1], cond)
        x_next, _, _, logp_old = sde.sde_step_with_logprob(x, v, sigmas[1], sigmas[2], 0.7,
                                                           generator=torch.Generator().manual_seed(5))
        sd3.train_mode(True)
        v_new = sd3.velocity(x, sigmas[1], cond)
        _, mean_new, std_new = sde.sde_step(x, v_new, sigmas[1], sigmas[2], 0.7, noise=torch.zeros_like(x))
        logp_new = sde.log_prob(x_next, mean_new, std_new)
    finally:
        sd3.train_mode(False)
        sd3.guidance_scale = 4.5
    assert logp_new.requires_grad
    assert torch.equal(torch.exp(logp_new - logp_old), torch.ones(2))


def test_reference_disables_the_lora(sd3):
    cond = sd3.encode(PROMPTS[:1])
    x = torch.randn(1, *sd3.latent_shape, generator=torch.Generator().manual_seed(4))
    saved = sd3.trainable_state_dict()
    try:
        with torch.no_grad():
            base = sd3.velocity(x, torch.tensor(0.6), cond)
            perturb_trainable(sd3, seed=1)
            tuned = sd3.velocity(x, torch.tensor(0.6), cond)
            with sd3.reference():
                ref = sd3.velocity(x, torch.tensor(0.6), cond)
    finally:
        sd3.load_trainable_state_dict(saved)
    assert (tuned - base).abs().max().item() > 1e-3
    assert torch.allclose(ref, base, atol=1e-6)


def test_gradient_checkpointing_gives_the_same_lora_gradients(tiny_sd3_path):
    plain = make(tiny_sd3_path)
    ckpt = make(tiny_sd3_path, gradient_checkpointing=True)
    perturb_trainable(plain, seed=3)
    ckpt.load_trainable_state_dict(plain.trainable_state_dict())
    checkpointed = []
    inner = ckpt.transformer._gradient_checkpointing_func
    ckpt.transformer._gradient_checkpointing_func = lambda *a, **k: checkpointed.append(1) or inner(*a, **k)
    cond = plain.encode(PROMPTS)
    x = torch.randn(2, *plain.latent_shape, generator=torch.Generator().manual_seed(6))
    grads = []
    for backend in (plain, ckpt):
        backend.train_mode(True)
        backend.velocity(x, torch.tensor([0.8, 0.3]), cond).pow(2).mean().backward()
        grads.append({k: p.grad.clone() for k, p in backend._trainable_named().items()})
    assert checkpointed, "gradient checkpointing was not used"
    assert grads[0].keys() == grads[1].keys() and len(grads[0]) > 0
    # the last joint block is context_pre_only: its text-query projection gets no gradient
    assert sum(int(g.abs().sum() > 0) for g in grads[0].values()) >= len(grads[0]) - 2
    for key in grads[0]:
        assert torch.allclose(grads[0][key], grads[1][key], atol=1e-6, rtol=1e-5), key


def test_optimizer_step_changes_the_lora_weights_and_state_roundtrips(tiny_sd3_path):
    from peft import get_peft_model_state_dict

    backend = make(tiny_sd3_path)
    before = backend.trainable_state_dict()
    assert set(before) == set(get_peft_model_state_dict(backend.transformer))
    assert "transformer_blocks.0.attn.add_q_proj.lora_B.weight" in before
    assert not any(".attn2." in k or ".ff." in k for k in before)  # attention projections only
    opt = torch.optim.AdamW(backend.trainable_parameters(), lr=1e-2)
    cond = backend.encode(PROMPTS)
    x = torch.randn(2, *backend.latent_shape, generator=torch.Generator().manual_seed(8))
    backend.train_mode(True)
    loss = (backend.velocity(x, torch.tensor([0.7, 0.5]), cond) - x).pow(2).mean()
    loss.backward()
    opt.step()
    after = backend.trainable_state_dict()
    assert any(not torch.equal(before[k], after[k]) for k in before)
    backend.load_trainable_state_dict(before)
    assert all(torch.equal(before[k], v) for k, v in backend.trainable_state_dict().items())
    with pytest.raises(KeyError, match="missing"):
        backend.load_trainable_state_dict({k: v for k, v in before.items() if "lora_A" not in k})


def test_describe_registry_and_options(sd3, tiny_sd3_path):
    info = sd3.describe()
    assert info["backend"] == "sd3" and info["cfg"] is True and info["guidance_scale"] == 4.5
    assert info["shift"] == 3.0 and info["latent_shape"] == [4, 16, 16]
    assert sd3.family == "sd3" and sd3.pipe.transformer is sd3.transformer and sd3.lora_config.r == 4
    backend = treesdk.load_backend("sd3", model=str(tiny_sd3_path), resolution=TINY_RESOLUTION, dtype="float32",
                                   device="cpu", max_sequence_length=TINY_MAX_SEQUENCE_LENGTH, lora_rank=0,
                                   guidance_scale=1.0)
    assert isinstance(backend, SD3Backend) and backend.lora_config is None
    assert sum(p.numel() for p in backend.trainable_parameters()) == sum(
        p.numel() for p in backend.transformer.parameters())
    with pytest.raises(ValueError, match="multiple of 4"):
        make(tiny_sd3_path, resolution=34)
    with pytest.raises(ValueError, match="target modules"):
        make(tiny_sd3_path, lora_targets=["no_such_layer"])


def test_missing_or_partial_checkpoint_names_the_missing_part(tiny_sd3_path, tmp_path):
    partial = tmp_path / "partial"
    shutil.copytree(tiny_sd3_path, partial)
    shutil.rmtree(partial / "text_encoder_3")
    (partial / "model_index.json").unlink()
    with pytest.raises(CheckpointNotFoundError) as err:
        make(partial)
    text = str(err.value)
    assert "missing model_index.json, text_encoder_3/" in text
    assert "hf download stabilityai/stable-diffusion-3.5-medium" in text
    for part in ("text_encoder_3/", "tokenizer_3/", "transformer/", "vae/", "scheduler/"):
        assert part in text

    sharded = tmp_path / "sharded"
    shutil.copytree(tiny_sd3_path, sharded)
    index = sharded / "transformer" / "diffusion_pytorch_model.safetensors.index.json"
    index.write_text('{"metadata": {}, "weight_map": {"a": "diffusion_pytorch_model-00001-of-00002.safetensors"}}')
    with pytest.raises(CheckpointNotFoundError, match=r"transformer/diffusion_pytorch_model-00001-of-00002"):
        make(sharded)


def test_cli_trains_treegrpo_on_the_tiny_sd3(tiny_sd3_path, tmp_path):
    import json

    from safetensors.torch import load_file
    from typer.testing import CliRunner

    from treesdk_cli.main import app

    out = tmp_path / "run"
    result = CliRunner().invoke(app, [
        "train", "--backend", "sd3", "--model", str(tiny_sd3_path), "--algo", "treegrpo", "--k", "3", "--d", "3",
        "--steps", "4", "--iters", "2", "--batch", "1", "--reward", "jpeg-compressibility",
        "--resolution", str(TINY_RESOLUTION), "--device", "cpu", "--lr", "1e-3", "--out", str(out),
        "--backend-opt", "dtype=float32", "--backend-opt", f"max_sequence_length={TINY_MAX_SEQUENCE_LENGTH}",
        "--backend-opt", "lora_rank=4",
    ])
    assert result.exit_code == 0, result.output
    lines = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    train = [line for line in lines if not line.get("eval")]
    assert len(train) == 2 and all(line["loss"] == line["loss"] for line in train)
    assert all(line["leaves"] == 27 for line in train)
    (state,) = out.glob("checkpoints/*/trainable.safetensors")
    lora_b = [v for k, v in load_file(state).items() if ".lora_B." in k]
    assert lora_b and max(v.abs().max().item() for v in lora_b) > 0
