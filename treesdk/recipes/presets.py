"""The four published algorithms as recipes (registered under ``treesdk.algorithms``).

Values come from the papers' released configurations where those could be read; each is cited
beside it. Steps ``T`` differ between papers; ``treesdk bench`` overrides them to one common ``T``
so comparisons are fair. Backends may adjust scale-dependent values (learning rate) through
``VelocityModel.recipe_defaults``; explicit user overrides always win.
"""

from __future__ import annotations

from treesdk.recipes.recipe import (
    ClippedSurrogateSpec,
    FixedWindow,
    GroupAdvantageSpec,
    LayerTuningSpec,
    NoiseSpec,
    OptimSpec,
    RandomWindow,
    Recipe,
    SlidingWindow,
    TreeBackupSpec,
    TreeSpec,
)


def grpo() -> Recipe:
    """Flow-GRPO / DanceGRPO: G independent SDE trajectories, group-normalised trajectory advantage."""
    return Recipe(
        name="grpo",
        steps=10,  # Flow-GRPO config/grpo.py (SD3.5): num_steps=10
        tree=TreeSpec(k=1, d=0, roots=12, sde_outside_window=True),  # DanceGRPO num_generations=12
        window=FixedWindow(start=0),
        noise=NoiseSpec(kind="constant", level=0.7),  # Flow-GRPO sample.noise_level=0.7
        advantage=GroupAdvantageSpec(clip=5.0),  # Flow-GRPO / DanceGRPO adv_clip_max=5
        losses=[ClippedSurrogateSpec(clip="fixed", eps=1e-4)],  # clip_range=1e-4 (both)
        optim=OptimSpec(lr=1e-5, weight_decay=1e-4, grad_clip=1.0),  # DanceGRPO learning_rate=1e-5
    )


def mixgrpo() -> Recipe:
    """MixGRPO: SDE inside a sliding window, ODE elsewhere, no branching."""
    return Recipe(
        name="mixgrpo",
        steps=25,  # MixGRPO finetune_flux_grpo_MixGRPO.sh: sampling_steps=25
        tree=TreeSpec(k=1, d=4, roots=12),  # group_size (window)=4, num_generations=12
        window=SlidingWindow(start=0, stride=1, every=25),  # iters_per_group=25, prog_overlap_step=1
        noise=NoiseSpec(kind="constant", level=0.7),  # eta=0.7
        advantage=GroupAdvantageSpec(clip=5.0),  # adv_clip_max=5.0
        losses=[ClippedSurrogateSpec(clip="fixed", eps=1e-4)],  # clip_range=1e-4
        optim=OptimSpec(lr=1e-5, weight_decay=1e-4, grad_clip=1.0),  # learning_rate=1e-5
    )


def treegrpo() -> Recipe:
    """TreeGRPO: k-ary tree over a random SDE window, reward backup to per-edge advantages, no KL.

    The paper's released config uses k=2 over a 4-step window (16 leaves), T=10, noise 0.7,
    clip 1e-4, advantages clipped to 5, lr 1e-5; the window start is drawn from a truncated
    geometric law ``P(s) ∝ p (1 - p)^s`` on ``[0, T - d]`` (p=0.5 is treesdk's choice,
    the paper's value was not recoverable).
    """
    return Recipe(
        name="treegrpo",
        steps=10,  # TreeGRPO configs/base.yaml: sample.num_inference_steps=10
        tree=TreeSpec(k=2, d=4, roots=1),  # tree.k=2, tree.w=4
        window=RandomWindow(p=0.5, min_start=0),
        noise=NoiseSpec(kind="constant", level=0.7),  # sample.noise_level=0.7
        advantage=TreeBackupSpec(attribution="edge", temperature=1.0, clip=5.0),  # adv_clip_max=5
        losses=[ClippedSurrogateSpec(clip="fixed", eps=1e-4)],  # training.clip_range=1e-4
        optim=OptimSpec(lr=1e-5, weight_decay=1e-4, grad_clip=1.0),  # training.lr=1e-5, max_grad_norm=1
    )


def dynamic_treerpo() -> Recipe:
    """Dynamic-TreeRPO: binary tree in a sliding window, noise growing with depth, path attribution,
    reward-adaptive clipping and the LayerTuning-RL SFT term.

    The paper's numeric hyper-parameters could not be read offline; values marked (treesdk) are
    this project's choices, in the ranges the method's baselines use.
    """
    return Recipe(
        name="dynamic-treerpo",
        steps=10,  # (treesdk) same T as TreeGRPO / Flow-GRPO
        tree=TreeSpec(k=2, d=4, roots=1),  # binary tree (paper); depth 4 (treesdk)
        window=SlidingWindow(start=0, stride=1, every=25),  # sliding window (paper); MixGRPO's pace (treesdk)
        noise=NoiseSpec(kind="linear", level=0.7, beta=1.0),  # g(k)=g(1+beta k/d) (paper); g, beta (treesdk)
        advantage=GroupAdvantageSpec(attribution="path", clip=5.0),  # eq. 9 path attribution (paper)
        losses=[
            ClippedSurrogateSpec(clip="reward-adaptive", eps_low=5e-5, eps_high=2e-4, eta=1.0),  # (treesdk values)
            LayerTuningSpec(weight=0.001),  # lambda (treesdk: 0.005 and above lowered the reward on digits)
        ],
        optim=OptimSpec(lr=1e-5, weight_decay=1e-4, grad_clip=1.0),
    )


PRESETS = {"grpo": grpo, "mixgrpo": mixgrpo, "treegrpo": treegrpo, "dynamic-treerpo": dynamic_treerpo}
