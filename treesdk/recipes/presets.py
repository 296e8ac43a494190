"""The four published algorithms as recipes, and treesdk's ``treegrpo-kl`` (registered under ``treesdk.algorithms``).

Values come from the papers and their released configurations; each is cited beside it, and
``docs/algorithms.md`` tabulates them (a test compares that table with these presets). Steps ``T`` differ between papers; ``treesdk bench`` overrides them to one common ``T``
so comparisons are fair. Backends may adjust scale-dependent values (learning rate) through
``VelocityModel.recipe_defaults``; explicit user overrides always win.
"""

from __future__ import annotations

from treesdk.recipes.recipe import (
    ClippedSurrogateSpec,
    DanceSDESpec,
    FlowSDESpec,
    FixedWindow,
    GroupAdvantageSpec,
    KLSpec,
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
    """Flow-GRPO (SD3.5-M, PickScore config): G = 24 independent trajectories of the Flow-GRPO SDE,
    every step trained, advantages normalised by the batch std, KL to the base (beta 0.01).

    For DanceGRPO's variant: ``sde.kind=dance-sde``, ``advantage.std=unbiased``, ``advantage.eps=1e-8``,
    ``advantage.global_std=false``, no KL (see docs/algorithms.md).
    """
    return Recipe(
        name="grpo",
        steps=10,  # Flow-GRPO config/grpo.py pickscore_sd3: sample.num_steps=10
        tree=TreeSpec(k=1, d=0, roots=24, sde_outside_window=True),  # sample.num_image_per_prompt=24
        window=FixedWindow(start=0),
        noise=NoiseSpec(kind="constant", level=0.7),  # config/base.py: sample.noise_level=0.7
        sde=FlowSDESpec(),
        advantage=GroupAdvantageSpec(global_std=True, clip=5.0, eps=1e-4, std="population"),  # sample.global_std=True, adv_clip_max=5
        losses=[
            ClippedSurrogateSpec(clip="fixed", eps=1e-4),  # config/base.py: train.clip_range=1e-4
            KLSpec(weight=0.01, form="flow-grpo"),  # pickscore_sd3: train.beta=0.01
        ],
        optim=OptimSpec(lr=3e-4, weight_decay=1e-4, grad_clip=1.0),  # base.py: learning_rate=3e-4 (LoRA), adam_weight_decay=1e-4
    )


def mixgrpo() -> Recipe:
    """MixGRPO (FLUX.1-dev): DanceGRPO's SDE (``flux_step``) inside a 4-step sliding window, ODE
    elsewhere, 12 trajectories per prompt, DanceGRPO's advantages (unbiased std + 1e-8).

    MixGRPO starts the 12 trajectories from one shared noise (``--init_same_noise``) and samples on
    DanceGRPO's grid ``shift(linspace(1, 0, T + 1), 3)``; here each trajectory has its own root noise
    and the grid is the backend's.
    """
    return Recipe(
        name="mixgrpo",
        steps=25,  # MixGRPO finetune_flux_grpo_MixGRPO.sh: sampling_steps=25
        tree=TreeSpec(k=1, d=4, roots=12),  # group_size (window)=4, num_generations=12
        window=SlidingWindow(start=0, stride=1, every=25),  # iters_per_group=25, prog_overlap_step=1
        noise=NoiseSpec(kind="constant", level=0.7),  # eta=0.7, dance_grpo_step
        sde=DanceSDESpec(),
        advantage=GroupAdvantageSpec(clip=5.0, eps=1e-8, std="unbiased"),  # adv_clip_max=5.0; group_rewards.std() + 1e-8
        losses=[ClippedSurrogateSpec(clip="fixed", eps=1e-4)],  # clip_range=1e-4 (kl_coeff=0)
        optim=OptimSpec(lr=1e-5, weight_decay=1e-4, grad_clip=1.0),  # learning_rate=1e-5, weight_decay=0.0001
    )


def treegrpo() -> Recipe:
    """TreeGRPO (SD3.5-M): binary tree over one SDE window whose start is drawn from a truncated
    geometric law, leaf advantages backed up with softmax weights of the stored log-probs, no KL.

    From the paper: T = 10, k = 2, AdamW lr 1e-5, weight decay 0.01, no KL. The noise level, clip
    range and advantage clip are Flow-GRPO's (the code base TreeGRPO builds on); the window length
    d = 4 and the geometric ratio p = 0.5 are treesdk's choices.
    """
    return Recipe(
        name="treegrpo",
        steps=10,  # TreeGRPO sec. 4: NFE budget of 10 steps
        tree=TreeSpec(k=2, d=4, roots=1),  # k=2 (Table 3 default row); d=4 (treesdk)
        window=RandomWindow(p=0.5, min_start=0),  # truncated geometric start (paper); p (treesdk)
        noise=NoiseSpec(kind="constant", level=0.7),  # Flow-GRPO sample.noise_level=0.7
        sde=FlowSDESpec(),
        advantage=TreeBackupSpec(attribution="edge", backup="softmax", temperature=1.0, clip=5.0),  # softmax backup (paper)
        losses=[ClippedSurrogateSpec(clip="fixed", eps=1e-4)],  # Flow-GRPO clip_range=1e-4; no KL (paper)
        optim=OptimSpec(lr=1e-5, weight_decay=0.01, grad_clip=1.0),  # AdamW lr 1e-5, weight decay 0.01 (paper)
    )


def treegrpo_kl() -> Recipe:
    """TreeGRPO plus a KL term to the base model (the digits backend's default recipe before ``tree-nft``).

    Everything but the KL term is :func:`treegrpo`, the paper's values. The KL term takes
    Flow-GRPO's form (``||mean_theta - mean_ref||^2 / (2 std_t^2)``, its ``train.beta`` term); its
    weight beta = 2.0 is treesdk's choice, not a paper's: TreeGRPO trains without KL, and Flow-GRPO's
    beta (0.01 to 0.04) was set for SD3.5-M, far weaker than what keeps the small digits model from
    drawing one prototype per digit (see ``benchmarks/README.md``, "digits").
    """
    recipe = treegrpo()
    return recipe.model_copy(update={
        "name": "treegrpo-kl",
        "losses": [*recipe.losses, KLSpec(weight=2.0, form="flow-grpo")],  # beta 2.0 (treesdk); form Flow-GRPO's
    })


def dynamic_treerpo() -> Recipe:
    """Dynamic-TreeRPO (FLUX.1-dev): binary tree with 8 leaves inside a sliding SDE window, noise
    growing with depth, path attribution, reward-adaptive clipping and the LayerTuning-RL SFT term.

    From the paper: "depth 4, 8 leaves" (k = 2, d = 3 here, d counting branchings), T = 25,
    beta = 0.7, eps in [5e-5, 5e-3] with eta = 0.5, lambda = 0.02, AdamW lr 5e-6, weight decay 1e-4.
    The base noise level 0.7 (MixGRPO's eta) and the window's pace (MixGRPO's 25 iterations per
    position) are treesdk's choices.
    """
    return Recipe(
        name="dynamic-treerpo",
        steps=25,  # paper: 25 sampling steps
        tree=TreeSpec(k=2, d=3, roots=1),  # paper: binary, depth 4 counting the root = 8 leaves
        window=SlidingWindow(start=0, stride=1, every=25),  # sliding window (paper, eq. 8); pace (treesdk)
        noise=NoiseSpec(kind="linear", level=0.7, beta=0.7),  # g(k)=g(1+beta k/d), beta 0.7; eq. 5 SDE (paper)
        sde=FlowSDESpec(),
        advantage=GroupAdvantageSpec(attribution="path", clip=5.0),  # eq. 9 path attribution (paper)
        losses=[
            ClippedSurrogateSpec(clip="reward-adaptive", eps_low=5e-5, eps_high=5e-3, eta=0.5),  # paper
            LayerTuningSpec(weight=0.02),  # lambda = 0.02 (paper)
        ],
        optim=OptimSpec(lr=5e-6, weight_decay=1e-4, grad_clip=1.0),  # AdamW lr 5e-6, weight decay 1e-4 (paper)
    )
