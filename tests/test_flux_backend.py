"""The ``flux`` backend on a tiny random FluxPipeline saved in the hub layout (offline, CPU)."""

from __future__ import annotations

import os
import shutil

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import pytest
import torch

pytest.importorskip("diffusers")
pytest.importorskip("peft")

import treesdk
from diffusers_fixtures import (  # noqa: F401 - tiny_flux_path is a pytest fixture
    TINY_MAX_SEQUENCE_LENGTH,
    TINY_RESOLUTION,
    perturb_trainable,
    single_thread,
    tiny_flux_path,
)
from treesdk import sde
from treesdk_backends.diffusers_common import CheckpointNotFoundError
from treesdk_backends.flux import FluxBackend, image_ids, pack_latents, unpack_latents

PROMPTS = ["a photo of a cat sitting on a red chair", "an astronaut riding a horse"]


@pytest.fixture(autouse=True, scope="module")
def _one_thread():
    with single_thread():
        yield


def make(path, **options) -> FluxBackend:
    kwargs = dict(resolution=TINY_RESOLUTION, dtype="float32", device="cpu",
                  max_sequence_length=TINY_MAX_SEQUENCE_LENGTH, lora_rank=4)
    kwargs.update(options)
    return FluxBackend(path, **kwargs)


@pytest.fixture(scope="module")
def flux(tiny_flux_path) -> FluxBackend:
    """Shared fp32 LoRA backend; tests that change its weights restore them."""
    return make(tiny_flux_path)


def ode_sample(backend, noise, cond, num_steps):
    sigmas = backend.sigmas(num_steps)
    x = noise
    with torch.no_grad():
        for i in range(num_steps):
            x = sde.ode_step(x, backend.velocity(x, sigmas[i], cond), sigmas[i], sigmas[i + 1])
    return x


def test_ode_sampling_reproduces_the_pipeline(flux):
    steps = 4
    noise = torch.randn((len(PROMPTS), *flux.latent_shape), generator=torch.Generator().manual_seed(7))
    ours = ode_sample(flux, noise, flux.encode(PROMPTS), steps)
    packed = flux.pipe(
        PROMPTS, num_inference_steps=steps, height=TINY_RESOLUTION, width=TINY_RESOLUTION,
        guidance_scale=flux.guidance, max_sequence_length=TINY_MAX_SEQUENCE_LENGTH,
        generator=torch.Generator().manual_seed(7), output_type="latent",
    ).images
    theirs = flux.pipe._unpack_latents(packed, TINY_RESOLUTION, TINY_RESOLUTION, flux.pipe.vae_scale_factor)
    assert theirs.shape == ours.shape == (2, 4, 16, 16)
    assert (ours - theirs).abs().max().item() < 1e-5
    assert theirs.abs().max().item() > 0.1  # not trivially zero


def test_decode_matches_the_pipeline_images(flux):
    steps = 2
    noise = torch.randn((1, *flux.latent_shape), generator=torch.Generator().manual_seed(3))
    images = flux.decode(ode_sample(flux, noise, flux.encode(PROMPTS[:1]), steps))
    theirs = flux.pipe(
        PROMPTS[:1], num_inference_steps=steps, height=TINY_RESOLUTION, width=TINY_RESOLUTION,
        guidance_scale=flux.guidance, max_sequence_length=TINY_MAX_SEQUENCE_LENGTH,
        generator=torch.Generator().manual_seed(3), output_type="pt",
    ).images
    assert images.shape == (1, 3, TINY_RESOLUTION, TINY_RESOLUTION) and images.dtype == torch.float32
    assert 0.0 <= images.min().item() and images.max().item() <= 1.0
    assert torch.allclose(images, theirs, atol=1e-5)


def test_sigmas_are_the_pipeline_grid_and_treesdk_flux_mu(flux):
    from diffusers.pipelines.flux.pipeline_flux import calculate_shift

    config = flux.pipe.scheduler.config
    seq_len = (16 // 2) * (16 // 2)
    assert flux.image_seq_len == seq_len
    assert flux.mu == pytest.approx(calculate_shift(seq_len, config.base_image_seq_len, config.max_image_seq_len,
                                                    config.base_shift, config.max_shift))
    for steps in (1, 4, 10):
        grid = flux.sigmas(steps)
        core = sde.sigma_grid(steps, mu=sde.flux_mu(seq_len, config.base_image_seq_len, config.max_image_seq_len,
                                                    config.base_shift, config.max_shift))
        assert grid.dtype == torch.float32 and grid.shape == (steps + 1,)
        assert grid[0].item() == 1.0 and grid[-1].item() == 0.0
        assert torch.allclose(grid, core, atol=1e-6)
    # and the pipeline really walked this grid (its scheduler keeps the last one it set)
    flux.pipe(PROMPTS[:1], num_inference_steps=3, height=TINY_RESOLUTION, width=TINY_RESOLUTION,
              max_sequence_length=TINY_MAX_SEQUENCE_LENGTH, output_type="latent")
    assert torch.equal(flux.pipe.scheduler.sigmas, flux.sigmas(3))


def test_packing_matches_the_pipeline():
    from diffusers import FluxPipeline

    x = torch.randn(2, 4, 16, 16)
    packed = pack_latents(x)
    assert torch.equal(packed, FluxPipeline._pack_latents(x, 2, 4, 16, 16))
    assert torch.equal(unpack_latents(packed, 16, 16), x)
    assert torch.equal(unpack_latents(packed, 16, 16), FluxPipeline._unpack_latents(packed, 32, 32, 2))
    assert torch.equal(image_ids(16, 16, torch.device("cpu"), torch.float32),
                       FluxPipeline._prepare_latent_image_ids(2, 8, 8, "cpu", torch.float32))


def test_encode_caches_each_prompt_once(flux, tiny_flux_path):
    calls = []
    hook = flux.pipe.text_encoder_2.register_forward_hook(lambda m, i, o: calls.append(i[0].shape[0]))
    try:
        prompts = ["a red apple on a table", "a bird flying", "a red apple on a table"]
        cond = flux.encode(prompts)
        assert calls == [2]  # two distinct prompts, one batched T5 call
        again = flux.encode(["a bird flying"])
        assert calls == [2]
    finally:
        hook.remove()
    assert cond["prompt_embeds"].shape == (3, TINY_MAX_SEQUENCE_LENGTH, 32)
    assert cond["pooled_prompt_embeds"].shape == (3, 32)
    assert torch.equal(cond["prompt_embeds"][0], cond["prompt_embeds"][2])
    assert torch.equal(again["prompt_embeds"][0], cond["prompt_embeds"][1])
    embeds, pooled, _ = flux.pipe.encode_prompt("a bird flying", prompt_2=None,
                                                max_sequence_length=TINY_MAX_SEQUENCE_LENGTH)
    assert torch.allclose(embeds[0], cond["prompt_embeds"][1], atol=1e-6)
    assert torch.allclose(pooled[0], cond["pooled_prompt_embeds"][1], atol=1e-6)
    with pytest.raises(ValueError, match="single string"):
        flux.encode("a bird flying")
    with pytest.raises(ValueError, match="expected str"):
        flux.encode(["ok", 3])


def test_prompt_cache_is_a_bounded_lru_on_the_cpu(tiny_flux_path):
    backend = make(tiny_flux_path, prompt_cache_size=2)
    calls = []
    hook = backend.pipe.text_encoder_2.register_forward_hook(lambda m, i, o: calls.append(i[0].shape[0]))
    try:
        cond = backend.encode(["a bird", "a dog", "a cat"])  # more distinct prompts than the cache holds
        assert calls == [3] and cond["prompt_embeds"].shape[0] == 3
        assert list(backend._cache) == ["a dog", "a cat"]
        assert all(t.device.type == "cpu" for row in backend._cache.values() for t in row)
        backend.encode(["a dog"])  # hit: becomes most recent
        backend.encode(["a bird"])  # miss: re-encoded, evicts "a cat"
        assert calls == [3, 1] and list(backend._cache) == ["a dog", "a bird"]
    finally:
        hook.remove()
    uncached = make(tiny_flux_path, prompt_cache_size=0)
    again = uncached.encode(["a bird", "a dog", "a cat"])
    assert not uncached._cache and torch.allclose(again["prompt_embeds"], cond["prompt_embeds"], atol=1e-6)


def test_one_transformer_call_per_velocity_and_guidance_matters(flux):
    cond = flux.encode(PROMPTS)
    x = torch.randn(2, *flux.latent_shape, generator=torch.Generator().manual_seed(1))
    batches = []
    hook = flux.transformer.register_forward_pre_hook(
        lambda m, args, kwargs: batches.append(kwargs["hidden_states"].shape[0]), with_kwargs=True
    )
    try:
        with torch.no_grad():
            v = flux.velocity(x, torch.tensor([0.9, 0.4]), cond)
            flux.guidance = 1.0
            v_low = flux.velocity(x, torch.tensor([0.9, 0.4]), cond)
    finally:
        flux.guidance = 3.5
        hook.remove()
    assert batches == [2, 2]  # no CFG: one forward of B latents per velocity call
    assert v.shape == x.shape and v.dtype == x.dtype
    assert not torch.allclose(v, v_low)  # the guidance embedding is fed


def test_ratio_is_exactly_one_before_any_update(flux):
    cond = flux.encode(PROMPTS)
    sigmas = flux.sigmas(6)
    x = torch.randn(2, *flux.latent_shape, generator=torch.Generator().manual_seed(2))
    with torch.no_grad():
        v = flux.velocity(x, sigmas[2], cond)
    x_next, _, std, logp_old = sde.sde_step_with_logprob(x, v, sigmas[2], sigmas[3], 0.7,
                                                         generator=torch.Generator().manual_seed(5))
    flux.train_mode(True)
    try:
        v_new = flux.velocity(x, sigmas[2], cond)  # with gradients, as the trainer recomputes it
    finally:
        flux.train_mode(False)
    _, mean_new, std_new = sde.sde_step(x, v_new, sigmas[2], sigmas[3], 0.7, noise=torch.zeros_like(x))
    logp_new = sde.log_prob(x_next, mean_new, std_new)
    assert logp_new.requires_grad
    assert torch.equal(std, std_new)
    assert torch.equal(torch.exp(logp_new - logp_old), torch.ones(2))


def test_ratio_is_exactly_one_in_bf16_with_checkpointing(tiny_flux_path):
    # the training configuration: bf16 weights, fp32 LoRA, gradient checkpointing, fp32 SDE maths
    backend = make(tiny_flux_path, dtype="bfloat16", gradient_checkpointing=True)
    perturb_trainable(backend, seed=4)  # a LoRA that contributes, as after some updates
    cond = backend.encode(PROMPTS)
    sigmas = backend.sigmas(6)
    x = torch.randn(2, *backend.latent_shape, generator=torch.Generator().manual_seed(2))
    with torch.no_grad():
        v = backend.velocity(x, sigmas[1], cond)
    assert v.dtype == torch.float32
    x_next, _, _, logp_old = sde.sde_step_with_logprob(x, v, sigmas[1], sigmas[2], 0.7,
                                                       generator=torch.Generator().manual_seed(5))
    backend.train_mode(True)
    v_new = backend.velocity(x, sigmas[1], cond)
    _, mean_new, std_new = sde.sde_step(x, v_new, sigmas[1], sigmas[2], 0.7, noise=torch.zeros_like(x))
    logp_new = sde.log_prob(x_next, mean_new, std_new)
    assert torch.equal(torch.exp(logp_new - logp_old), torch.ones(2))
    logp_new.mean().backward()
    assert all(p.grad is not None for p in backend.trainable_parameters())


def test_offloaded_text_encoders_stay_on_the_cpu_and_give_the_same_cond(tiny_flux_path, flux):
    backend = make(tiny_flux_path, offload_text_encoders=True)
    cond = backend.encode(PROMPTS)
    assert next(backend.pipe.text_encoder_2.parameters()).device.type == "cpu"
    reference = flux.encode(PROMPTS)
    assert all(torch.allclose(cond[k], reference[k], atol=1e-6) for k in reference)


def test_custom_lora_targets_and_alpha(tiny_flux_path):
    backend = make(tiny_flux_path, lora_rank=2, lora_alpha=8, lora_targets="attn.to_q, attn.to_v")
    keys = set(backend.trainable_state_dict())
    assert keys and all(".attn.to_q.lora_" in k or ".attn.to_v.lora_" in k for k in keys)
    assert any(k.startswith("single_transformer_blocks.") for k in keys)
    assert backend.describe()["lora"] == {"rank": 2, "alpha": 8.0, "target_modules": ["attn.to_q", "attn.to_v"]}
    layer = backend.transformer.transformer_blocks[0].attn.to_q
    assert layer.scaling["default"] == 4.0  # alpha / rank


def test_reference_disables_the_lora(flux):
    cond = flux.encode(PROMPTS[:1])
    x = torch.randn(1, *flux.latent_shape, generator=torch.Generator().manual_seed(4))
    saved = flux.trainable_state_dict()
    try:
        with torch.no_grad():
            base = flux.velocity(x, torch.tensor(0.6), cond)  # fresh adapter: lora_B = 0
            perturb_trainable(flux, seed=1)
            tuned = flux.velocity(x, torch.tensor(0.6), cond)
            with flux.reference():
                ref = flux.velocity(x, torch.tensor(0.6), cond)
            after = flux.velocity(x, torch.tensor(0.6), cond)
    finally:
        flux.load_trainable_state_dict(saved)
    assert (tuned - base).abs().max().item() > 1e-3
    assert torch.allclose(ref, base, atol=1e-6)
    assert torch.equal(after, tuned)


def test_gradient_checkpointing_gives_the_same_lora_gradients(tiny_flux_path):
    plain = make(tiny_flux_path)
    ckpt = make(tiny_flux_path, gradient_checkpointing=True)
    perturb_trainable(plain, seed=3)
    ckpt.load_trainable_state_dict(plain.trainable_state_dict())
    checkpointed = []
    for module in ckpt.transformer.modules():
        if getattr(module, "gradient_checkpointing", False):
            inner = module._gradient_checkpointing_func
            module._gradient_checkpointing_func = lambda *a, _f=inner, **k: checkpointed.append(1) or _f(*a, **k)
    cond = plain.encode(PROMPTS)
    x = torch.randn(2, *plain.latent_shape, generator=torch.Generator().manual_seed(6))
    grads = []
    for backend in (plain, ckpt):
        backend.train_mode(True)
        backend.velocity(x, torch.tensor([0.8, 0.3]), cond).pow(2).mean().backward()
        grads.append({k: p.grad.clone() for k, p in backend._trainable_named().items()})
    assert checkpointed, "gradient checkpointing was not used"
    assert grads[0].keys() == grads[1].keys() and len(grads[0]) > 0
    for key in grads[0]:
        assert grads[0][key].abs().sum() > 0, key
        assert torch.allclose(grads[0][key], grads[1][key], atol=1e-6, rtol=1e-5), key


def test_optimizer_step_changes_only_the_lora_weights(tiny_flux_path):
    backend = make(tiny_flux_path)
    base_before = {k: v.clone() for k, v in backend.transformer.state_dict().items() if "lora_" not in k}
    lora_before = backend.trainable_state_dict()
    params = backend.trainable_parameters()
    assert params and all(p.dtype == torch.float32 and p.requires_grad for p in params)
    assert not any(p.requires_grad for p in backend.pipe.vae.parameters())
    assert not any(p.requires_grad for p in backend.pipe.text_encoder_2.parameters())
    opt = torch.optim.AdamW(params, lr=1e-2)
    cond = backend.encode(PROMPTS)
    x = torch.randn(2, *backend.latent_shape, generator=torch.Generator().manual_seed(8))
    backend.train_mode(True)
    loss = (backend.velocity(x, torch.tensor([0.7, 0.5]), cond) - x).pow(2).mean()
    assert torch.isfinite(loss)
    loss.backward()
    opt.step()
    lora_after = backend.trainable_state_dict()
    changed = [k for k in lora_before if not torch.equal(lora_before[k], lora_after[k])]
    assert changed and any(".lora_B." in k for k in changed)
    base_after = backend.transformer.state_dict()
    assert all(torch.equal(base_before[k], base_after[k]) for k in base_before)


def test_trainable_state_dict_uses_peft_names_and_loads_strictly(flux, tiny_flux_path):
    from peft import get_peft_model_state_dict

    state = flux.trainable_state_dict()
    assert set(state) == set(get_peft_model_state_dict(flux.transformer))
    assert "transformer_blocks.0.attn.to_q.lora_A.weight" in state
    assert any(k.startswith("single_transformer_blocks.0.attn.to_q.") for k in state)
    assert any(".ff_context.net.2." in k for k in state)
    other = make(tiny_flux_path)
    perturb_trainable(other, seed=9)
    changed = other.trainable_state_dict()
    flux_saved = flux.trainable_state_dict()
    try:
        flux.load_trainable_state_dict(changed)
        assert all(torch.equal(flux.trainable_state_dict()[k], changed[k]) for k in changed)
    finally:
        flux.load_trainable_state_dict(flux_saved)
    missing = dict(changed)
    missing.pop("transformer_blocks.0.attn.to_q.lora_A.weight")
    with pytest.raises(KeyError, match="missing"):
        flux.load_trainable_state_dict(missing)
    with pytest.raises(KeyError, match="unexpected"):
        flux.load_trainable_state_dict({**changed, "nope.weight": torch.zeros(1)})
    bad = dict(changed)
    bad["transformer_blocks.0.attn.to_q.lora_A.weight"] = torch.zeros(3, 3)
    with pytest.raises(ValueError, match="shape"):
        flux.load_trainable_state_dict(bad)


def test_full_finetune_trains_the_whole_transformer(tiny_flux_path):
    backend = make(tiny_flux_path, lora_rank=0)
    assert backend.lora_config is None
    n_params = sum(p.numel() for p in backend.transformer.parameters())
    assert sum(p.numel() for p in backend.trainable_parameters()) == n_params
    assert set(backend.trainable_state_dict()) == set(backend.transformer.state_dict())
    with pytest.raises(NotImplementedError, match="lora_rank"):
        with backend.reference():
            pass
    assert backend.describe()["full_finetune"] is True


def test_bf16_backend_returns_the_input_dtype_and_keeps_lora_in_fp32(tiny_flux_path):
    backend = make(tiny_flux_path, dtype="bfloat16")
    base = [p for n, p in backend.transformer.named_parameters() if "lora_" not in n]
    assert base and all(p.dtype == torch.bfloat16 for p in base)
    assert all(p.dtype == torch.float32 for p in backend.trainable_parameters())
    cond = backend.encode(PROMPTS[:1])
    assert cond["prompt_embeds"].dtype == torch.bfloat16
    x = torch.randn(1, *backend.latent_shape)
    with torch.no_grad():
        v = backend.velocity(x, torch.tensor(0.5), cond)
    assert v.dtype == torch.float32 and torch.isfinite(v).all()


def test_describe_and_registry(tiny_flux_path, flux):
    info = flux.describe()
    assert info["backend"] == "flux" and info["model_path"] == str(tiny_flux_path)
    assert info["resolution"] == TINY_RESOLUTION and info["latent_shape"] == [4, 16, 16]
    assert info["lora"]["rank"] == 4 and "attn.to_add_out" in info["lora"]["target_modules"]
    assert flux.family == "flux" and flux.pipe.transformer is flux.transformer
    assert flux.export_formats == ("lora", "diffusers", "comfyui")
    backend = treesdk.load_backend("flux", model=str(tiny_flux_path), resolution=TINY_RESOLUTION, dtype="float32",
                                   device="cpu", max_sequence_length=TINY_MAX_SEQUENCE_LENGTH, lora_rank=2)
    assert isinstance(backend, FluxBackend) and backend.lora_config.r == 2
    with pytest.raises(ValueError, match="multiple of 4"):
        make(tiny_flux_path, resolution=30)


def test_missing_or_partial_checkpoint_names_the_missing_part(tiny_flux_path, tmp_path):
    with pytest.raises(CheckpointNotFoundError) as err:
        make(tmp_path / "nowhere")
    text = str(err.value)
    assert "does not exist" in text and "hf download black-forest-labs/FLUX.1-dev" in text
    for part in ("model_index.json", "scheduler/", "text_encoder/", "text_encoder_2/", "tokenizer/",
                 "tokenizer_2/", "transformer/", "vae/"):
        assert part in text

    partial = tmp_path / "partial"
    shutil.copytree(tiny_flux_path, partial)
    (partial / "transformer" / "config.json").unlink()
    shutil.rmtree(partial / "tokenizer_2")
    with pytest.raises(CheckpointNotFoundError, match=r"missing tokenizer_2/, transformer/config\.json") as err:
        make(partial)
    assert "--model PATH" in str(err.value)

    no_weights = tmp_path / "no-weights"
    shutil.copytree(tiny_flux_path, no_weights)
    (no_weights / "vae" / "diffusion_pytorch_model.safetensors").unlink()
    with pytest.raises(CheckpointNotFoundError, match=r"missing vae/\*\.safetensors"):
        make(no_weights)

    with pytest.raises(CheckpointNotFoundError, match="not in the local Hugging Face cache"):
        make("no-such-org/no-such-flux-model")


def test_repo_id_resolves_from_the_local_hf_cache(tiny_flux_path, tmp_path, monkeypatch):
    import huggingface_hub.constants

    commit = "0123456789abcdef0123456789abcdef01234567"
    repo_dir = tmp_path / "hub" / "models--tiny-org--tiny-flux"
    shutil.copytree(tiny_flux_path, repo_dir / "snapshots" / commit)
    (repo_dir / "refs").mkdir()
    (repo_dir / "refs" / "main").write_text(commit)
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_CACHE", str(tmp_path / "hub"))
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "hub"))  # treesdk.hub_cache reads the environment first
    backend = make("tiny-org/tiny-flux")
    assert backend.describe()["model"] == "hf-cache:tiny-org/tiny-flux"
    assert backend.model_path == repo_dir / "snapshots" / commit
    with pytest.raises(CheckpointNotFoundError, match="black-forest-labs/FLUX.1-dev"):
        make(None)  # the default repo is not in this (empty) cache


def test_benchmark_script_runs_in_tiny_mode(tmp_path):
    import importlib.util
    import json
    from pathlib import Path

    script = Path(__file__).resolve().parents[1] / "benchmarks" / "flux_step.py"
    spec = importlib.util.spec_from_file_location("flux_step_bench", script)
    bench = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(bench)
    out = tmp_path / "bench.json"
    result = bench.main(["--tiny", "--dtype", "float32", "--device", "cpu", "--iters", "1", "--warmup", "0",
                         "--batch", "2", "--json", str(out)])
    assert json.loads(out.read_text()) == result
    assert result["latent_shape"] == [4, 16, 16] and result["image_tokens"] == 64
    assert result["trainable_parameters"] > 0 and result["seconds_per_train_step_median"] > 0
    assert result["last_loss"] == result["last_loss"]  # finite, not NaN


def test_cli_trains_treegrpo_on_the_tiny_flux(tiny_flux_path, tmp_path):
    import json

    from safetensors.torch import load_file
    from typer.testing import CliRunner

    from treesdk_cli.main import app

    out = tmp_path / "run"
    result = CliRunner().invoke(app, [
        "train", "--backend", "flux", "--model", str(tiny_flux_path), "--algo", "treegrpo", "--k", "3", "--d", "3",
        "--steps", "4", "--iters", "2", "--batch", "1", "--reward", "jpeg-compressibility",
        "--resolution", str(TINY_RESOLUTION), "--device", "cpu", "--lr", "1e-3", "--out", str(out),
        "--backend-opt", "dtype=float32", "--backend-opt", f"max_sequence_length={TINY_MAX_SEQUENCE_LENGTH}",
        "--backend-opt", "lora_rank=4",
    ])
    assert result.exit_code == 0, result.output
    lines = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    train = [line for line in lines if not line.get("eval")]
    assert len(train) == 2 and all(line["loss"] == line["loss"] for line in train)  # finite, not NaN
    assert all(line["leaves"] == 27 for line in train)  # k^d leaves per tree
    assert "jpeg-compressibility_mean" in train[0]
    (state,) = out.glob("checkpoints/*/trainable.safetensors")
    lora_b = [v for k, v in load_file(state).items() if ".lora_B." in k]
    assert lora_b and max(v.abs().max().item() for v in lora_b) > 0  # zero-initialised, now trained
