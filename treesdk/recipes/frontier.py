"""The field's newer algorithms as recipes (registered under ``treesdk.algorithms``), and tree hybrids.

Forward-process methods (train on clean leaves, :mod:`treesdk.forward_losses`): ``diffusionnft``,
``awm``; the tree under them: ``tree-nft``, ``tree-awm``. Reverse-SDE methods: ``grpo-guard``
(Flow-GRPO with GRPO-Guard's ratio normalisation), ``flow-grpo-fast`` (SDE on a 2-step window at
a random early position, ODE elsewhere) and ``branchgrpo`` (binary splits at fixed steps,
depth-wise normalised backup). Values come from the papers and their released configurations, cited
beside each; ``docs/forward_process.md`` tabulates them (a test compares that table with these
presets). ``treesdk bench`` overrides ``steps`` to one common ``T``; backends adjust the learning
rate through ``VelocityModel.recipe_defaults``.
"""

from __future__ import annotations

from treesdk.forward_losses import AWMLoss, NFTLoss, VelocityKL
from treesdk.recipes.presets import grpo
from treesdk.recipes.recipe import (
    ClippedSurrogateSpec,
    DanceSDESpec,
    DepthwiseSpec,
    FixedWindow,
    FlowSDESpec,
    GroupAdvantageSpec,
    NoiseSpec,
    ODESpec,
    OptimSpec,
    PruneSpec,
    RandomWindow,
    Recipe,
    TreeBackupSpec,
    TreeSpec,
)


def _nft_losses() -> list:
    return [
        # NVlabs/DiffusionNFT config/nft.py _get_config: config.beta=1.0, decay_type=1 (flat 0, uprate 0.001,
        # uphold 0.5); config/base.py: train.adv_clip_max=5, train.timestep_fraction=0.99
        # scripts/train_nft_sd3.py samples with the "old" adapter (set_adapter("old") around pipeline_with_logprob)
        NFTLoss(beta=1.0, adv_clip=5.0, fraction=0.99, old_flat=0, old_uprate=0.001, old_uphold=0.5, sample_old=True),
        VelocityKL(weight=1e-4, to="reference"),  # config/nft.py (sd3): train.beta=0.0001, ||v - v_ref||^2
    ]


def diffusionnft() -> Recipe:
    """DiffusionNFT (Zheng et al., arXiv 2509.16117; NVlabs/DiffusionNFT ``config/nft.py``, SD3.5-M):
    24 deterministic ODE samples per prompt (CFG-free) drawn with the old policy, the NFT objective on
    the clean samples at 9 of the 10 grid sigmas, old policy a lagging average of the weights (it
    samples and gives ``v_old``), velocity KL 1e-4 to the base.

    The reference samples with a second-order DPM solver (``sample.solver="dpm2"``); here the sampler
    is the backend's Euler ODE.
    """
    return Recipe(
        name="diffusionnft",
        steps=10,  # config/nft.py (sd3): sample.num_steps=10
        tree=TreeSpec(k=1, d=0, roots=24),  # sample.num_image_per_prompt=24; sample.deterministic=True (ODE)
        window=FixedWindow(start=0),
        noise=NoiseSpec(kind="constant", level=0.7),  # sample.noise_level=0.7 (unused by the ODE sampler)
        sde=ODESpec(),
        advantage=GroupAdvantageSpec(global_std=True, eps=1e-4, std="population"),  # PerPromptStatTracker(global_std=True), +1e-4
        losses=_nft_losses(),
        optim=OptimSpec(lr=3e-4, weight_decay=1e-4, grad_clip=1.0),  # base.py: learning_rate=3e-4, adam_weight_decay=1e-4, max_grad_norm=1.0
    )


def _awm_losses() -> list:
    return [
        # scxue/advantage_weighted_matching config/dgx_awm.py geneval_sd3_no_cfg_1node: weighting='ghuber',
        # ghuber_power=0.25, clip_range=1, adv_clip_max=5 (base_awm.py), advantage_max=1, train_timesteps=6,
        # timestep_fraction=0.9, time_type='discrete_wo_init'
        AWMLoss(weighting="ghuber", power=0.25, clip_range=1.0, adv_clip=5.0, advantage_max=1.0, count=6, fraction=0.9),
        VelocityKL(weight=1e-3, to="reference"),  # train.beta=0.001, kl_weight='Uniform'
        # ema_beta=1, kl_ema_weight='Uniform', kl_ema_decay=0.3, kl_ema_decay_type='linear' (min(0.3, 0.001 step))
        # train.off_policy=False: the forest is sampled with the live weights, the EMA is the KL anchor only
        VelocityKL(weight=1.0, to="old", old_flat=0, old_uprate=0.001, old_uphold=0.3, sample_old=False),
    ]


def awm() -> Recipe:
    """AWM, advantage-weighted matching (Xue et al., arXiv 2509.25050; scxue/advantage_weighted_matching
    ``config/dgx_awm.py`` ``geneval_sd3_no_cfg_1node``, SD3.5-M): 24 ODE samples per prompt
    (``sde_frac=0``), the weighted flow-matching surrogate at 6 stratified grid sigmas, velocity KL
    to the base (1e-3) and to a lagging average of the weights (1.0); sampled with the live weights
    (``train.off_policy=False``).

    The reference samples with an SA-solver (``use_sa_solver=True``); here the backend's Euler ODE.
    """
    return Recipe(
        name="awm",
        steps=14,  # sample.num_steps=14
        tree=TreeSpec(k=1, d=0, roots=24),  # sample.num_image_per_prompt=24; sample.sde_frac=0.0
        window=FixedWindow(start=0),
        noise=NoiseSpec(kind="constant", level=0.4),  # sample.noise_level=0.4 (unused: no SDE steps)
        sde=ODESpec(),
        advantage=GroupAdvantageSpec(global_std=True, eps=1e-4, std="population"),  # sample.global_std=True; std + 1e-4
        losses=_awm_losses(),
        optim=OptimSpec(lr=3e-4, weight_decay=1e-4, grad_clip=1.0),  # train.learning_rate=3e-4; base_awm.py: 1e-4, 1.0
    )


def grpo_guard() -> Recipe:
    """GRPO-Guard (Wang et al., arXiv 2510.22319) on Flow-GRPO: the ``grpo`` preset with the clipped
    surrogate's ratio normalised and re-weighted per step (``guard=True``; Flow-Factory
    ``trainers/grpo.py`` ``GRPOGuardTrainer``). Every other value is Flow-GRPO's (see ``grpo``)."""
    recipe = grpo()
    losses = [spec.model_copy(update={"guard": True}) if spec.kind == "clipped-surrogate" else spec for spec in recipe.losses]
    return recipe.model_copy(update={"name": "grpo-guard", "losses": losses})


def flow_grpo_fast() -> Recipe:
    """Flow-GRPO-Fast (yifan123/flow_grpo README, Qwen-Image configs: ``sample.sde_window_size=2``,
    ``sample.sde_window_range=(0, 5)``): 24 trajectories per prompt, SDE (trained) only on a 2-step
    window whose start is drawn uniformly in ``[0, 3]`` each iteration, ODE elsewhere; Flow-GRPO's
    noise, clip, advantages and KL. A uniform start is the truncated geometric law at ``p -> 0``.
    """
    return Recipe(
        name="flow-grpo-fast",
        steps=10,  # Flow-GRPO pickscore_sd3: sample.num_steps=10
        tree=TreeSpec(k=1, d=2, roots=24),  # sde_window_size=2; num_image_per_prompt=24
        window=RandomWindow(p=1e-6, min_start=0, max_start=3),  # sde_window_range=(0, 5): start uniform in [0, 5 - 2]
        noise=NoiseSpec(kind="constant", level=0.7),  # sample.noise_level=0.7
        sde=FlowSDESpec(),
        advantage=GroupAdvantageSpec(global_std=True, clip=5.0, eps=1e-4, std="population"),  # as grpo
        losses=[ClippedSurrogateSpec(clip="fixed", eps=1e-4)],  # train.clip_range=1e-4
        optim=OptimSpec(lr=3e-4, weight_decay=1e-4, grad_clip=1.0),  # Flow-GRPO base.py
    )


def branchgrpo() -> Recipe:
    """BranchGRPO (Li et al., arXiv 2509.06040; Fredreic1849/BranchGRPO
    ``scripts/finetune/finetune_flux_branchgrpo_8gpus.sh``, FLUX.1-dev): binary splits at steps
    0, 3, 6, 9 of 20 (16 leaves; held as fractions of T, so another ``steps`` moves them with it), DanceGRPO's SDE on every step (``MIX_ODE_SDE_TREE=false``),
    split noise 4x the base ``eta = 0.3``, depth-wise normalised mean backup, clip 1e-3.

    BranchGRPO scales the split steps' noise but keeps the unscaled std in their log-prob; here a
    split step is an SDE step at noise level ``4 * 0.3`` with its own consistent log-prob. Pruning
    (``tree.prune``) carries the script's slide settings but is off as there (``DEPTH_PRUNING=""``,
    ``WIDTH_PRUNING_MODE=0``): set ``tree.prune.depths`` (e.g. ``[15, 16, 17, 18]``) or
    ``tree.prune.width``. The mixed ODE/SDE tree (``--mix_ode_sde_tree --mix_sde_window_size 4``) is
    ``tree.sde_steps: [0, 1, 2, 3]``. ``--timestep_fraction 0.6`` is passed but unused by the tree
    trainer (``train_branchgrpo_flux.py`` trains every stored edge), so it has no counterpart.
    """
    splits = [0.0, 0.15, 0.3, 0.45]  # TREE_SPLIT_POINTS="0,3,6,9" of --sampling_steps 20, as fractions of T
    return Recipe(
        name="branchgrpo",
        steps=20,  # --sampling_steps 20
        tree=TreeSpec(
            k=2, d=4, roots=1, split_fractions=splits, sde_outside_window=True,  # 2^4 = 16 = --num_generations 16
            sde_steps=None,  # MIX_ODE_SDE_TREE="false": SDE on every step
            # DEPTH_PRUNING="" (off), DEPTH_PRUNING_SLIDE=true, DEPTH_PRUNING_SLIDE_INTERVAL=30,
            # DEPTH_PRUNING_STOP_DEPTH=9; WIDTH_PRUNING_MODE="0" (off), --width_pruning_ratio 0.5 (default);
            # --pruning_step_ratio 1.0 (default: prune all along)
            prune=PruneSpec(depths=[], slide_every=30, stop_depth=9, width=0, width_ratio=0.5, until=1.0),
        ),
        window=FixedWindow(start=0),
        noise=NoiseSpec(kind="constant", level=0.3, branch_scale=4.0),  # --eta 0.3; TREE_SPLIT_NOISE_SCALE=4.0
        sde=DanceSDESpec(),  # flux_step(..., sde_solver=True)
        advantage=DepthwiseSpec(backup="mean", clip=5.0),  # per-depth normalisation; --adv_clip_max 5.0; TREE_PROB_WEIGHTED=false
        losses=[ClippedSurrogateSpec(clip="fixed", eps=1e-3)],  # --clip_range 1e-3
        optim=OptimSpec(lr=1e-5, weight_decay=1e-4, grad_clip=1.0),  # --learning_rate 1e-5 --weight_decay 0.0001 --max_grad_norm 1
    )


def _tree(recipe: Recipe, name: str) -> Recipe:
    """The forward-process ``recipe`` with TreeGRPO's sampler: a binary tree over a 3-step SDE window
    at a geometric random start (8 leaves per root, 3 roots: 24 leaves per prompt like the
    reference's group), the leaves' advantages normalised per prompt."""
    return recipe.model_copy(update={
        "name": name,
        "tree": TreeSpec(k=2, d=3, roots=3),  # treesdk: 3 * 2^3 = 24 leaves per prompt
        "window": RandomWindow(p=0.5, min_start=0),  # TreeGRPO's truncated geometric start
        "noise": NoiseSpec(kind="constant", level=0.7),  # Flow-GRPO sample.noise_level=0.7
        "sde": FlowSDESpec(),
    })


def tree_nft() -> Recipe:
    """Hybrid: the DiffusionNFT objective (``diffusionnft``) on the leaves of a TreeGRPO-style tree;
    the digits backend's default recipe (``benchmarks/README.md``, "The default run")."""
    return _tree(diffusionnft(), "tree-nft")


def tree_awm() -> Recipe:
    """Hybrid: the AWM objective (``awm``) on the leaves of a TreeGRPO-style tree."""
    return _tree(awm(), "tree-awm")
