"""The old (behaviour) policy of the forward-process recipes: DiffusionNFT samples with it, AWM with
the live weights; it is part of the checkpoint, so a resumed run is the uninterrupted one bit for bit."""

import json

import pytest
import torch

import treesdk
from treesdk.sampler import sample_forest_for_recipe
from treesdk.training.loop import trainer as trainer_module
from treesdk.training.loop.batches import iteration_prompts, slot_seed
from treesdk.training.run_folder.checkpoint import latest_checkpoint, load_checkpoint, verify_checkpoint
from treesdk.training.loop.forward_update import sampling_weights
from treesdk.training.loop.runs import parts_from_objects
from treesdk.training.loop.trainer import Trainer


def make_trainer(backend, recipe, rewards, prompts, out_dir=None, **settings):
    """A Trainer over parts already built (the parts form of treesdk.train)."""
    return Trainer(parts_from_objects(backend, recipe, rewards, prompts, **settings), out_dir)

PROMPTS = ["a handwritten digit 3", "a handwritten digit 7"]


def _rewards():
    return {"digit-classifier": treesdk.load_reward("digit-classifier")}


def _recipe(name="diffusionnft", **kw):
    backend = treesdk.load_backend("digits")
    # a fast-moving old policy: decay min(0.5 n, 0.5) after n optimiser steps, so old != live from iteration 2
    fast = {"losses.0.old_uprate": 0.5, "losses.0.old_uphold": 0.5} if name == "diffusionnft" else {}
    return backend, treesdk.load_algorithm(name, **{**backend.recipe_defaults(), "steps": 4, "tree.roots": 2,
                                                     **fast, **kw})


def _forests(monkeypatch):
    drawn = []
    original = trainer_module.sample_and_score

    def recording(*args, **kwargs):
        out = original(*args, **kwargs)
        drawn.append(out[0])
        return out

    monkeypatch.setattr(trainer_module, "sample_and_score", recording)
    return drawn


def _by_hand(trainer, backend, recipe, iteration):
    prompts = iteration_prompts(trainer.prompts, trainer.batch, trainer.seed, iteration)
    seeds = [slot_seed(trainer.seed, iteration, s) for s in range(trainer.batch)]
    start = recipe.window_start(iteration, trainer.seed)
    return sample_forest_for_recipe(backend, recipe, prompts, seeds, start, cond=backend.encode(prompts),
                                    mean_std=trainer.mean_std).leaves


def test_diffusionnft_samples_iteration_two_with_the_old_weights(monkeypatch):
    torch.manual_seed(0)
    backend, recipe = _recipe()
    trainer = make_trainer(backend, recipe, _rewards(), PROMPTS, iters=2, batch=2, seed=0)
    assert trainer.old_policy is not None and trainer.old_policy.samples
    drawn = _forests(monkeypatch)
    trainer.start()
    trainer.step()
    live = [p.detach().clone() for p in trainer.params]
    assert any(not torch.equal(o.to(p.dtype), p) for o, p in zip(trainer.old_policy.shadow, live))  # decay 0.5: they differ
    with trainer.old_policy.swapped_in():
        expected = _by_hand(trainer, backend, recipe, 1)
    with_live = _by_hand(trainer, backend, recipe, 1)
    row = trainer.step()
    assert row["old_decay"] == pytest.approx(0.5)
    assert torch.equal(drawn[1].leaves, expected)
    assert not torch.allclose(drawn[1].leaves, with_live)
    assert any(not torch.equal(a, b) for a, b in zip(live, trainer.params))  # the update still trains the live ones


def test_awm_samples_with_the_live_weights(monkeypatch):
    torch.manual_seed(0)
    backend, recipe = _recipe("awm", **{"losses.2.old_uprate": 0.5})
    trainer = make_trainer(backend, recipe, _rewards(), PROMPTS, iters=2, batch=2, seed=0)
    assert trainer.old_policy is not None and not trainer.old_policy.samples
    drawn = _forests(monkeypatch)
    trainer.start()
    trainer.step()
    with sampling_weights(trainer.old_policy) as swapped:
        assert swapped is False
        expected = _by_hand(trainer, backend, recipe, 1)
    trainer.step()
    assert torch.equal(drawn[1].leaves, expected)


def test_edge_recipes_have_no_old_policy():
    backend = treesdk.load_backend("digits")
    trainer = make_trainer(backend, treesdk.load_algorithm("grpo", **backend.recipe_defaults()), _rewards(), PROMPTS)
    assert trainer.old_policy is None


def _train(out, iters, resume=False):
    torch.manual_seed(0)
    backend, recipe = _recipe()
    run = treesdk.train(recipe, backend, _rewards(), PROMPTS, iters=iters, batch=2, seed=0, out_dir=out, resume=resume)
    return backend, run


def test_diffusionnft_resumes_bit_for_bit_with_its_old_policy(tmp_path):
    straight, run = _train(tmp_path / "a", 2)
    _train(tmp_path / "b", 1)
    checkpoint = latest_checkpoint(tmp_path / "b")
    verify_checkpoint(checkpoint)  # the old policy lives in optimizer.safetensors, under state.json's checksum
    _, _, state = load_checkpoint(checkpoint)
    old_keys = [k for k in state["extra"] if k.startswith("old.")]
    assert "old.steps" in old_keys and int(state["extra"]["old.steps"][0]) == 1
    assert len(old_keys) == len(straight.trainable_parameters()) + 1
    resumed, _ = _train(tmp_path / "b", 2, resume=True)
    for a, b in zip(straight.trainable_parameters(), resumed.trainable_parameters()):
        assert torch.equal(a.detach(), b.detach())
    rows = {name: [json.loads(line) for line in (tmp_path / name / "metrics.jsonl").read_text().splitlines()
                   if not json.loads(line).get("eval")] for name in ("a", "b")}
    keys = ("reward_mean", "loss", "grad_norm", "old_decay", "nfe_sampling", "nfe_training", "nfe_reference")
    assert [[r[k] for k in keys] for r in rows["a"]] == [[r[k] for k in keys] for r in rows["b"]]


def test_a_checkpoint_without_an_old_policy_restarts_it_from_the_weights(tmp_path):
    _train(tmp_path, 1)
    backend, recipe = _recipe()
    trainer = make_trainer(backend, recipe, _rewards(), PROMPTS, iters=2, batch=2, seed=0, out_dir=tmp_path)
    assert trainer.old_policy.load_state_dict({}) is False
    assert all(torch.equal(o, p.detach().float()) for o, p in zip(trainer.old_policy.shadow, trainer.params))
    with pytest.raises(treesdk.errors.UserError, match="old policy holds 1 tensors"):
        trainer.old_policy.load_state_dict({"old.0": torch.zeros(1)})
    wrong = {f"old.{i}": torch.zeros(3, 1, 2) for i in range(len(trainer.params))}
    with pytest.raises(treesdk.errors.UserError, match="has shape"):
        trainer.old_policy.load_state_dict(wrong)


@pytest.mark.parametrize("name", ["diffusionnft", "awm"])
def test_training_draws_follow_the_run_seed_not_the_global_generator(name):
    """The clean-leaf path's noise levels and noise are pure functions of the trees' seeds: runs that
    start from different global RNG states end with the same weights, and cutting the leaves into
    smaller velocity chunks changes only the summation order."""
    def weights(global_seed, **kw):
        torch.manual_seed(global_seed)
        backend, recipe = _recipe(name, **kw)
        run = treesdk.train(recipe, backend, _rewards(), PROMPTS, iters=2, batch=2, seed=4)
        return [p.detach().clone() for p in backend.trainable_parameters()], [r["loss"] for r in run.history]

    (first, loss), (second, loss_again), (chunked, loss_chunked) = weights(0), weights(123), weights(7, train_chunk=3)
    assert all(torch.equal(a, b) for a, b in zip(first, second)) and loss == loss_again
    assert loss_chunked == pytest.approx(loss, rel=1e-5, abs=1e-8)  # the same x_sigma, summed in another order
    assert all(torch.allclose(a, c, atol=1e-5) for a, c in zip(first, chunked))
    other_seed = _recipe(name)
    torch.manual_seed(0)
    treesdk.train(other_seed[1], other_seed[0], _rewards(), PROMPTS, iters=2, batch=2, seed=5)
    assert any(not torch.equal(a, b.detach()) for a, b in zip(first, other_seed[0].trainable_parameters()))
