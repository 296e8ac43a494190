"""``treesdk.training.loop.plan``: the dry-run plan's call counts equal the calls a real run makes (digits, tiny
FLUX), its parameter counts equal diffusers' models, its memory estimate moves the right way."""

from __future__ import annotations

import contextlib
import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import pytest
import torch

import treesdk
from diffusers_fixtures import TINY_MAX_SEQUENCE_LENGTH, TINY_RESOLUTION, single_thread, tiny_flux_path  # noqa: F401
from treesdk.model_facts import lora_parameters, model_facts
from treesdk.training.loop.plan import plan_memory, plan_run
from treesdk.recipes import load_recipe
from treesdk import train


@pytest.fixture(autouse=True, scope="module")
def _one_thread():
    with single_thread():
        yield


class CallCounter:
    """Wraps ``backend.velocity``; per iteration: (calls, rows) with and without gradients."""

    def __init__(self, backend) -> None:
        self.inner = backend.velocity
        backend.velocity = self
        self.inner_reference = backend.reference
        backend.reference = self.reference
        self.in_reference = False
        self.rows: list[dict[str, int]] = [self._empty()]

    @staticmethod
    def _empty() -> dict[str, int]:
        return {"calls_sampling": 0, "nfe_sampling": 0, "calls_training": 0, "nfe_training": 0, "nfe_reference": 0}

    @contextlib.contextmanager
    def reference(self):
        """Calls under the base policy (the KL term's no-grad forward) are counted apart."""
        with self.inner_reference():
            self.in_reference = True
            try:
                yield
            finally:
                self.in_reference = False

    def __call__(self, x, sigma, cond):
        if self.in_reference:
            self.rows[-1]["nfe_reference"] += int(x.shape[0])
            return self.inner(x, sigma, cond)
        phase = "training" if torch.is_grad_enabled() else "sampling"
        self.rows[-1][f"calls_{phase}"] += 1
        self.rows[-1][f"nfe_{phase}"] += int(x.shape[0])
        return self.inner(x, sigma, cond)

    def next_iteration(self, _row) -> None:
        self.rows.append(self._empty())


KEYS = ("window_start", "nfe_sampling", "calls_sampling", "nfe_training", "calls_training")


def check_plan_against_run(backend, recipe, rewards, prompts, batch, iters, seed):
    counter = CallCounter(backend)
    run = train(recipe, backend, rewards, prompts, iters=iters, batch=batch, seed=seed,
                on_iteration=counter.next_iteration)
    plan = plan_run(recipe, None, batch=batch, iters=iters, seed=seed)
    assert len(plan["iterations"]) == iters
    for planned, counted, row in zip(plan["iterations"], counter.rows, run.history):
        assert {k: planned[k] for k in (*KEYS[1:], "nfe_reference")} == counted
        assert planned["window_start"] == row["window_start"]
        assert planned["nfe_sampling"] == row["nfe_sampling"] and planned["nfe_training"] == row["nfe_training"]
        assert planned["leaves"] == row["leaves"]
    return plan


@pytest.mark.parametrize("algo, overrides", [
    ("treegrpo", {"tree.k": 3, "tree.d": 2, "chunk": 4}),                         # random window, chunked calls
    ("dynamic-treerpo", {"tree.d": 3, "chunk": 5, "optim.passes": 2}),            # sliding window, 2 passes
    ("grpo", {"tree.roots": 3, "chunk": 4, "optim.minibatches": 2}),              # SDE everywhere, 2 minibatches
    ("treegrpo", {"tree.d": 3, "chunk": 5, "train_chunk": 2, "decode_chunk": 3}),  # training/decode chunks apart
])
def test_plan_counts_equal_the_calls_of_a_digits_run(algo, overrides):
    backend = treesdk.load_backend("digits", device="cpu")
    rewards = {"digit-classifier": treesdk.load_reward("digit-classifier", device="cpu")}
    recipe = load_recipe(algo, steps=5, **overrides)
    prompts = [f"a handwritten digit {d}" for d in range(10)]
    decoded = []
    decode = backend.decode
    backend.decode = lambda latents: decoded.append(latents.shape[0]) or decode(latents)
    plan = check_plan_against_run(backend, recipe, rewards, prompts, batch=3, iters=3, seed=1)
    assert plan["leaves_per_prompt"] == recipe.tree.leaves_per_prompt
    leaves = plan["leaves"]  # every iteration decodes its leaves in chunks of decode_chunk
    chunk = recipe.decoding_chunk
    assert decoded == [min(chunk, leaves - i) for i in range(0, leaves, chunk)] * 3
    assert (plan["chunk"], plan["train_chunk"], plan["decode_chunk"]) == (
        recipe.chunk, overrides.get("train_chunk", recipe.chunk), overrides.get("decode_chunk", recipe.chunk))


def test_plan_counts_equal_the_calls_of_a_tiny_flux_run(tiny_flux_path):
    backend = treesdk.load_backend("flux", model=str(tiny_flux_path), resolution=TINY_RESOLUTION, dtype="float32",
                                   device="cpu", max_sequence_length=TINY_MAX_SEQUENCE_LENGTH, lora_rank=2)
    transformer_rows = []
    backend.transformer.register_forward_pre_hook(
        lambda _m, _a, kw: transformer_rows.append(kw["hidden_states"].shape[0]), with_kwargs=True)
    rewards = {"jpeg-compressibility": treesdk.load_reward("jpeg-compressibility")}
    recipe = load_recipe("treegrpo", steps=3, **{"tree.k": 2, "tree.d": 2, "chunk": 3, "train_chunk": 2})
    plan = check_plan_against_run(backend, recipe, rewards, ["a photo of a cat", "a red apple"], batch=2, iters=2, seed=0)
    facts = model_facts("flux", tiny_flux_path, text_tokens=TINY_MAX_SEQUENCE_LENGTH)
    assert sum(transformer_rows) == sum(r["nfe_sampling"] + r["nfe_training"] for r in plan["iterations"])  # no CFG
    assert facts.transformer_parameters == sum(p.numel() for p in backend.transformer.parameters()
                                               if not p.requires_grad)
    assert lora_parameters(facts.linears, 2, facts.lora_targets) == sum(
        p.numel() for p in backend.trainable_parameters())
    assert facts.vae_parameters == sum(p.numel() for p in backend.pipe.vae.parameters())
    assert facts.latent_elements(TINY_RESOLUTION) == int(torch.Size(backend.latent_shape).numel())
    assert facts.image_tokens(TINY_RESOLUTION) == backend.image_seq_len


def _known_models() -> dict[str, tuple[str, dict]]:
    from treesdk_backends.diffusers.sizes import FLUX_MODELS, SD3_MODELS

    return {**{n: ("flux", e[0]) for n, e in FLUX_MODELS.items()}, **{n: ("sd3", e[0]) for n, e in SD3_MODELS.items()}}


@pytest.mark.parametrize("name", ["FLUX.1-dev", "SD3.5-large", "SD3.5-medium"])
def test_parameter_counts_of_known_models_equal_diffusers(name):
    from diffusers import FluxTransformer2DModel, SD3Transformer2DModel

    family, config = _known_models()[name]
    cls = FluxTransformer2DModel if family == "flux" else SD3Transformer2DModel
    with torch.device("meta"):  # the real architecture, no memory
        model = cls(**{key: tuple(v) if isinstance(v, list) else v for key, v in config.items()})
    facts = model_facts(family, name)
    assert facts.transformer_parameters == sum(p.numel() for p in model.parameters())
    assert facts.transformer_buffers == sum(b.numel() for b in model.buffers())
    linears = {n for n, m in model.named_modules() if isinstance(m, (torch.nn.Linear, torch.nn.Conv2d))}
    assert {lin.name for lin in facts.linears} == linears


def test_memory_estimate_moves_the_right_way():
    facts = model_facts("flux")

    def peak(**kw):
        args = dict(resolution=512, dtype="bfloat16", lora_rank=16, prompts=2)
        recipe_kw = {key: kw.pop(key) for key in ("tree.k", "tree.d") if key in kw}
        args.update(kw)
        return plan_memory(load_recipe("treegrpo", steps=10, chunk=4, **recipe_kw), facts, **args)

    base = peak()
    assert peak(lora_rank=64).peak > base.peak > peak(lora_rank=4).peak
    assert peak(**{"tree.k": 3}).tree_states > base.tree_states
    assert peak(**{"tree.d": 5}).tree_states > base.tree_states
    assert peak(resolution=1024).peak > base.peak and peak(resolution=1024).activations_training > base.activations_training
    assert peak(prompts=4).tree_states > base.tree_states
    assert peak(gradient_checkpointing=True).activations_training < base.activations_training / 5
    assert peak(offload_text_encoders=True).peak < base.peak
    assert peak(dtype="float32").weights_transformer == 2 * base.weights_transformer
    full = peak(lora_rank=0)
    assert full.optimizer_state > 100 * base.optimizer_state and full.trainable_parameters == 0


def test_plan_fits_and_json_keys():
    recipe = load_recipe("dynamic-treerpo")
    plan = plan_run(recipe, model_facts("flux"), batch=16, world_size=8, iters=4, resolution=512,
                    gradient_checkpointing=True, gpu_memory_gib=80)
    for key in ("nfe_sampling", "nfe_training", "calls_sampling", "calls_training", "leaves_per_prompt", "memory", "fits"):
        assert key in plan
    assert plan["trees_per_rank"] == 2 and plan["leaves_per_prompt"] == recipe.tree.leaves_per_prompt
    assert plan["fits"] is (plan["memory"]["peak"] <= 80)
    assert plan_run(recipe, model_facts("flux"), batch=16, world_size=8, gpu_memory_gib=1)["fits"] is False
    tight = plan_run(recipe, model_facts("flux"), batch=16, world_size=8, resolution=1024, gradient_checkpointing=True,
                     gpu_memory_gib=40)
    best = tight["largest_chunk_that_fits"]
    assert tight["fits"] is False and set(best) == {"chunk", "train_chunk", "decode_chunk"}
    assert 1 <= best["chunk"] < recipe.chunk
    small_decode = recipe.model_copy(update={"decode_chunk": 1})  # then the training call alone decides
    best_train = plan_run(small_decode, model_facts("flux"), batch=16, world_size=8, resolution=1024,
                          gradient_checkpointing=True, gpu_memory_gib=40)["largest_chunk_that_fits"]["train_chunk"]
    assert 1 <= best_train < recipe.chunk
    for base, name, value in ((recipe, "chunk", best["chunk"]), (small_decode, "train_chunk", best_train)):
        for n, fits in ((value, True), (value + 1, False)):  # the largest: one more does not fit
            assert plan_run(base.model_copy(update={name: n}), model_facts("flux"), batch=16, world_size=8,
                            resolution=1024, gradient_checkpointing=True, gpu_memory_gib=40)["fits"] is fits
    with pytest.raises(ValueError, match="ranks"):
        plan_run(recipe, None, batch=2, world_size=4)


def test_model_facts_errors_name_the_problem(tmp_path):
    with pytest.raises(ValueError, match="digits"):
        model_facts("digits")
    (tmp_path / "transformer").mkdir()
    (tmp_path / "transformer" / "config.json").write_text('{"_class_name": "UNet2DConditionModel"}')
    with pytest.raises(ValueError, match="UNet2DConditionModel"):
        model_facts("flux", tmp_path)


def test_train_and_decode_chunks_move_their_own_estimates_and_are_validated():
    from treesdk.recipes import RecipeError

    facts = model_facts("flux")
    args = dict(resolution=1024, dtype="bfloat16", lora_rank=16, prompts=2, gradient_checkpointing=True)
    base = plan_memory(load_recipe("treegrpo", steps=10, chunk=8), facts, **args)
    train = plan_memory(load_recipe("treegrpo", steps=10, chunk=8, train_chunk=2), facts, **args)
    decode = plan_memory(load_recipe("treegrpo", steps=10, chunk=8, decode_chunk=2), facts, **args)
    assert train.activations_training < base.activations_training and train.decode == base.decode
    assert decode.decode < base.decode and decode.activations_training == base.activations_training
    assert train.activations_sampling == base.activations_sampling == decode.activations_sampling
    for name in ("train_chunk", "decode_chunk"):
        with pytest.raises(RecipeError, match=name):
            load_recipe("treegrpo", **{name: 0})
