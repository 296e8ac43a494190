"""The dry-run plan knows the forward-process path and branch-point trees: for every new preset its
call counts equal the counters of a real digits run, and its memory estimate includes the old policy."""

import pytest
import torch

import treesdk
from treesdk.model_facts import model_facts
from treesdk.sampler import nfe_split_tree
from treesdk.training.loop.plan import plan_memory, plan_run

NEW = ["diffusionnft", "awm", "grpo-guard", "flow-grpo-fast", "branchgrpo", "tree-nft", "tree-awm"]


class Rows:
    """Counts every velocity row and every call with gradient (the training calls)."""

    def __init__(self, backend):
        self.inner, self.rows, self.grad_calls = backend.velocity, 0, 0
        backend.velocity = self

    def __call__(self, x, sigma, cond):
        self.rows += int(x.shape[0])
        self.grad_calls += int(torch.is_grad_enabled())
        return self.inner(x, sigma, cond)


def _small(preset, backend):
    recipe = treesdk.load_algorithm(preset, **backend.recipe_defaults())
    small = {"tree.roots": 2} if recipe.tree.roots > 3 else {}
    return treesdk.load_algorithm(preset, **{**backend.recipe_defaults(), **small, "train_chunk": 5})


@pytest.mark.parametrize("preset", NEW)
def test_plan_counts_equal_a_real_digits_run(preset):
    torch.manual_seed(0)
    backend = treesdk.load_backend("digits", device="cpu")
    recipe = _small(preset, backend)
    counter = Rows(backend)
    run = treesdk.train(recipe, backend, {"digit-classifier": treesdk.load_reward("digit-classifier", device="cpu")},
                        [f"a handwritten digit {d}" for d in range(10)], iters=1, batch=3, seed=1)
    row = run.history[0]
    plan = plan_run(recipe, None, batch=3, iters=1, seed=1)["iterations"][0]
    for key in ("window_start", "nfe_sampling", "nfe_training", "nfe_reference", "leaves"):
        assert plan[key] == row[key], key
    assert counter.rows == plan["nfe_sampling"] + plan["nfe_training"] + plan["nfe_reference"]
    assert counter.grad_calls == plan["calls_training"]


def test_split_steps_shape_the_planned_frontier():
    recipe = treesdk.load_algorithm("branchgrpo")  # 20 steps, binary splits at 0, 3, 6, 9
    plan = plan_run(recipe, None, batch=1)
    assert plan["leaves_per_prompt"] == 16
    assert plan["nfe_sampling"] == 1 + 2 * 3 + 4 * 3 + 8 * 3 + 16 * 10 == nfe_split_tree(20, [0, 3, 6, 9], 2)
    assert plan["nfe_training"] == plan["nfe_sampling"]  # SDE everywhere: every parent is trained


def test_forward_memory_counts_the_old_policy_and_leaf_rows():
    facts = model_facts("flux")
    args = dict(resolution=512, dtype="bfloat16", lora_rank=16, prompts=2)
    nft = plan_memory(treesdk.load_algorithm("diffusionnft", **{"tree.roots": 4}), facts, **args)
    no_old = treesdk.load_algorithm("diffusionnft", **{"tree.roots": 4})
    no_old = no_old.model_copy(update={"losses": [no_old.losses[1], treesdk.load_algorithm("awm").losses[0]]})
    plain = plan_memory(no_old, facts, **args)
    assert nft.old_policy > 0 and plain.old_policy == 0
    assert nft.peak_training - plain.peak_training == nft.old_policy
    assert nft.tree_states == plain.tree_states  # the ODE forest keeps its leaves only
    wide = plan_memory(treesdk.load_algorithm("diffusionnft", **{"tree.roots": 4, "chunk": 4}), facts, **args)
    assert wide.activations_training < nft.activations_training  # 8 leaf rows per call -> 4
