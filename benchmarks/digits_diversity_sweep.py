"""What holds diversity on digits? TreeGRPO with the digits defaults (60 iterations, batch 8) under variants,
and a recheck of Dynamic-TreeRPO's lambda and clip range on digits (``dtr-*``).

Each variant trains from the shipped base model with the digit-classifier reward and is evaluated on
the fixed 100-image set (10 prompts x 10 seeds): held-out ``digit-evaluator`` gain and diversity kept
(per-prompt mean pairwise distance of the evaluator's features, after / before).

    python benchmarks/digits_diversity_sweep.py --out benchmarks/results/digits-diversity-sweep.json
    python benchmarks/digits_diversity_sweep.py --only treegrpo kl-0.1 --iters 60
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path
from collections.abc import Mapping
from typing import Any

import treesdk
from treesdk_backends.digits import DigitsBackend

KL = {"kind": "kl", "form": "flow-grpo"}
CLIP = {"kind": "clipped-surrogate", "clip": "fixed", "eps": 1e-4}

SFT = {"kind": "layertuning-sft"}


def tree_sft(weight: float, **overrides: Any) -> tuple[str, dict[str, Any]]:
    """TreeGRPO with the LayerTuning SFT term at ``weight`` beside its clipped surrogate."""
    return ("treegrpo", {"losses": [CLIP, {**SFT, "weight": weight}], **overrides})


def layertuning(**overrides: Any) -> tuple[str, dict[str, Any]]:
    """The ``treegrpo-layertuning`` hybrid (SFT 0.02, lr 2e-4; the digits default run until this round) with ``overrides``."""
    return tree_sft(0.02, **{"optim.lr": 2e-4, **overrides})


#: name -> (algorithm, dotted overrides on top of the digits backend's recipe_defaults[, extra]);
#: extra: {"bonus": W} adds the group-diversity reward (digit-classifier features) at weight W,
#: {"iters": N} trains N iterations instead of --iters, {"batch": B} B prompts per iteration instead of
#: --batch, {"ema": D} evaluates the EMA of the weights at decay D
VARIANTS: dict[str, tuple[Any, ...]] = {
    "treegrpo": ("treegrpo", {}),  # plain TreeGRPO: `treesdk train`'s default run before this round
    "default-run": (DigitsBackend.default_recipe, {}),  # what `treesdk train` runs on digits today
    # the default run until this round: treegrpo + LayerTuning SFT 0.02 at lr 2e-4 (its images leave the data:
    # digits_quality.py), and that hybrid at other SDE noise levels (the default's a is 0.7) and a later window
    "treegrpo-layertuning": layertuning(),
    "layertuning-noise-0.4": layertuning(**{"noise.level": 0.4}),
    "layertuning-noise-1.0": layertuning(**{"noise.level": 1.0}),
    "layertuning-noise-1.0-120it": (*layertuning(**{"noise.level": 1.0}), {"iters": 120}),
    "layertuning-noise-1.3": layertuning(**{"noise.level": 1.3}),
    "layertuning-noise-1.3-lr-4e-4": layertuning(**{"noise.level": 1.3, "optim.lr": 4e-4}),
    "layertuning-window-min-start-2": layertuning(**{"window.min_start": 2}),
    "treegrpo-30it": ("treegrpo", {}, {"iters": 30}),  # plain TreeGRPO stopped early
    "treegrpo-40it": ("treegrpo", {}, {"iters": 40}),
    "lr-5e-5": ("treegrpo", {"optim.lr": 5e-5}),
    "lr-3e-5": ("treegrpo", {"optim.lr": 3e-5}),
    "kl-0.01": ("treegrpo", {"losses": [CLIP, {**KL, "weight": 0.01}]}),
    "kl-0.1": ("treegrpo", {"losses": [CLIP, {**KL, "weight": 0.1}]}),
    "kl-1": ("treegrpo", {"losses": [CLIP, {**KL, "weight": 1.0}]}),
    "kl-10": ("treegrpo", {"losses": [CLIP, {**KL, "weight": 10.0}]}),
    "kl-2": ("treegrpo", {"losses": [CLIP, {**KL, "weight": 2.0}]}),
    "kl-3": ("treegrpo", {"losses": [CLIP, {**KL, "weight": 3.0}]}),
    "kl-1-lr-7e-5": ("treegrpo", {"losses": [CLIP, {**KL, "weight": 1.0}], "optim.lr": 7e-5}),
    "lr-7e-5": ("treegrpo", {"optim.lr": 7e-5}),
    "kl-1-bonus-0.5": ("treegrpo", {"losses": [CLIP, {**KL, "weight": 1.0}]}, {"bonus": 0.5}),
    "lr-5e-5-bonus-0.5": ("treegrpo", {"optim.lr": 5e-5}, {"bonus": 0.5}),
    "kl-100": ("treegrpo", {"losses": [CLIP, {**KL, "weight": 100.0}]}),
    "kl-transition-1": ("treegrpo", {"losses": [CLIP, {**KL, "weight": 1.0, "form": "transition"}]}),
    "kl-transition-10": ("treegrpo", {"losses": [CLIP, {**KL, "weight": 10.0, "form": "transition"}]}),
    "noise-1.0": ("treegrpo", {"noise.level": 1.0}),
    "noise-0.4": ("treegrpo", {"noise.level": 0.4}),
    "depthwise": ("treegrpo", {"advantage": {"kind": "depthwise"}}),
    "global-std": ("treegrpo", {"advantage.global_std": True}),
    "adv-eps-0.03": ("treegrpo", {"advantage.eps": 0.03}),
    "adv-eps-0.1": ("treegrpo", {"advantage.eps": 0.1}),
    # Dynamic-TreeRPO: the paper's lambda and eps range against smaller values (digits recheck)
    "dtr-paper": ("dynamic-treerpo", {}),
    "dtr-lambda-0.001": ("dynamic-treerpo", {"losses.1.weight": 0.001}),
    "dtr-lambda-0": ("dynamic-treerpo", {"losses.1.weight": 0.0}),
    "dtr-eps-high-2e-4": ("dynamic-treerpo", {"losses.0.eps_high": 2e-4}),
    "dtr-paper-lr-2e-4": ("dynamic-treerpo", {"optim.lr": 2e-4}),
    "dtr-paper-lr-3e-4": ("dynamic-treerpo", {"optim.lr": 3e-4}),
    # TreeGRPO with the LayerTuning SFT term as a regulariser
    "tree-sft-0.02": tree_sft(0.02),
    "tree-sft-0.05": tree_sft(0.05),
    "tree-sft-0.02-lr-2e-4": tree_sft(0.02, **{"optim.lr": 2e-4}),
    "tree-sft-0.02-lr-4e-4": tree_sft(0.02, **{"optim.lr": 4e-4}),
    "tree-sft-0.01-lr-2e-4": tree_sft(0.01, **{"optim.lr": 2e-4}),
    "tree-sft-0.02-passes-2": tree_sft(0.02, **{"optim.passes": 2}),
    "tree-sft-0.02-lr-2e-4-100it": (*tree_sft(0.02, **{"optim.lr": 2e-4}), {"iters": 100}),
    "tree-sft-0.015-lr-2e-4-70it": (*tree_sft(0.015, **{"optim.lr": 2e-4}), {"iters": 70}),
    "tree-sft-0.02-lr-1e-4-150it": (*tree_sft(0.02), {"iters": 150}),
    # where the window sits: later windows leave the early (layout) steps untrained
    "window-min-start-2": ("treegrpo", {"window.min_start": 2}),
    "window-min-start-4": ("treegrpo", {"window.min_start": 4}),
    # the group-diversity bonus (intra-group mean distance in the training classifier's features)
    "bonus-0.3": ("treegrpo", {}, {"bonus": 0.3}),
    "bonus-0.5": ("treegrpo", {}, {"bonus": 0.5}),
    "bonus-1.0": ("treegrpo", {}, {"bonus": 1.0}),
    "bonus-1.0-120it": ("treegrpo", {}, {"bonus": 1.0, "iters": 120}),
    "sft-0.01-bonus-0.3": (*tree_sft(0.01, **{"optim.lr": 2e-4}), {"bonus": 0.3}),
    "sft-0.01-bonus-0.5": (*tree_sft(0.01, **{"optim.lr": 2e-4}), {"bonus": 0.5}),
    # the bonus among 2 roots per prompt (4 prompts x 2 roots: the same 8 trees per iteration, but
    # the group-diversity reward now compares images of different initial noises, not only the
    # siblings of one tree), SFT 0.01, lr 3e-4, EMA 0.9 of the weights for evaluation
    "roots-2-bonus-0.3-sft-0.01-ema": (*tree_sft(0.01, **{"optim.lr": 3e-4, "tree.roots": 2}),
                                       {"bonus": 0.3, "batch": 4, "iters": 140, "ema": 0.9}),
    "roots-2-bonus-0.2-sft-0.01-ema": (*tree_sft(0.01, **{"optim.lr": 3e-4, "tree.roots": 2}),
                                       {"bonus": 0.2, "batch": 4, "iters": 140, "ema": 0.9}),
    "roots-2-bonus-0.3-sft-0.01-ema-lr-4e-4": (*tree_sft(0.01, **{"optim.lr": 4e-4, "tree.roots": 2}),
                                               {"bonus": 0.3, "batch": 4, "iters": 140, "ema": 0.9}),
    "roots-2-bonus-0.5-sft-0.01": (*tree_sft(0.01, **{"optim.lr": 2e-4, "tree.roots": 2}),
                                   {"bonus": 0.5, "batch": 4, "iters": 90}),
}


def train_variant(name: str, iters: int, batch: int, seed: int, eval_every: int = 0) -> tuple[Any, Any, int, int]:
    """Train variant ``name`` from the shipped base model: ``(backend holding the trained live weights
    (not the EMA's, which only the run's evaluations use), run, iterations, batch)``; ``eval_every``
    N > 0 also evaluates every N iterations (``run.evaluations``)."""
    algo, overrides, *extra = VARIANTS[name]
    extra = extra[0] if extra else {}
    iters = int(extra.get("iters", iters))
    batch = int(extra.get("batch", batch))
    backend = treesdk.load_backend("digits")
    scale = {} if isinstance(algo, Mapping) else backend.recipe_defaults()  # a full recipe mapping is taken as is
    recipe = treesdk.load_algorithm(algo, **{**scale, **overrides})
    heldout = {"digit-evaluator": treesdk.load_reward("digit-evaluator")}
    rewards = {"digit-classifier": treesdk.load_reward("digit-classifier")}
    weights = {"digit-classifier": 1.0}
    if extra.get("bonus"):
        rewards["group-diversity"] = treesdk.load_reward("group-diversity", features_of="digit-classifier")
        weights["group-diversity"] = float(extra["bonus"])
    prompts, seeds = backend.eval_set()
    ema = {"decay": float(extra["ema"])} if extra.get("ema") else None
    run = treesdk.train(recipe, backend, rewards, backend.default_prompts(), iters=iters, batch=batch, seed=seed, weights=weights,
                        eval_prompts=prompts, eval_seeds=seeds, eval_rewards=heldout, ema=ema, tensorboard=False,
                        eval_every=eval_every)
    return backend, run, iters, batch


def run_variant(name: str, iters: int, batch: int, seed: int) -> dict[str, Any]:
    start = time.perf_counter()
    _, run, iters, batch = train_variant(name, iters, batch, seed)
    before, after = run.eval_before, run.eval_after
    return {
        "variant": name,
        "reward_before": before["digit-classifier_mean"],
        "reward_after": after["digit-classifier_mean"],
        "heldout_before": before["digit-evaluator_mean"],
        "heldout_after": after["digit-evaluator_mean"],
        "heldout_gain": after["digit-evaluator_mean"] - before["digit-evaluator_mean"],
        "diversity_before": before["diversity"],
        "diversity_after": after["diversity"],
        "diversity_kept": after["diversity"] / before["diversity"],
        "diversity_pixels_before": before["diversity_pixels"],
        "diversity_pixels_after": after["diversity_pixels"],
        "diversity_pixels_kept": after["diversity_pixels"] / before["diversity_pixels"],
        "precision_before": before["precision"],
        "precision_after": after["precision"],
        "recall_before": before["recall"],
        "recall_after": after["recall"],
        "iters": iters,
        "batch": batch,
        "seconds": time.perf_counter() - start,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--only", nargs="+", choices=sorted(VARIANTS), default=None)
    parser.add_argument("--iters", type=int, default=60)
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", type=Path, default=None)
    args = parser.parse_args()
    rows: dict[str, Any] = {}
    if args.out and args.out.is_file():  # rows of earlier invocations stay; a variant run again is replaced
        rows = {row["variant"]: row for row in json.loads(args.out.read_text())["rows"]}
    for name in args.only or list(VARIANTS):
        rows[name] = run_variant(name, args.iters, args.batch, args.seed)
        print(json.dumps(rows[name]), flush=True)
        if args.out:  # after every variant, so an interrupted sweep keeps what it measured
            args.out.parent.mkdir(parents=True, exist_ok=True)
            table = {"iters": args.iters, "batch": args.batch, "seed": args.seed, "rows": list(rows.values())}
            args.out.write_text(json.dumps(table, indent=2) + "\n")


if __name__ == "__main__":
    main()
