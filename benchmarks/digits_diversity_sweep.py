"""What holds diversity on digits? The default run (treegrpo, 60 iterations, batch 8) under variants,
and a recheck of Dynamic-TreeRPO's lambda and clip range on digits (``dtr-*``).

Each variant trains from the shipped base model with the digit-classifier reward and is evaluated on
the fixed 100-image set (10 prompts x 10 seeds): held-out ``digit-evaluator`` gain and diversity kept
(per-prompt mean pairwise distance of the evaluator's features, after / before).

    python benchmarks/digits_diversity_sweep.py --out benchmarks/results/digits-diversity-sweep.json
    python benchmarks/digits_diversity_sweep.py --only default kl-0.1 --iters 60
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path
from typing import Any

import treesdk

KL = {"kind": "kl", "form": "flow-grpo"}
CLIP = {"kind": "clipped-surrogate", "clip": "fixed", "eps": 1e-4}

#: name -> (algorithm, dotted overrides on top of the digits backend's recipe_defaults)
VARIANTS: dict[str, tuple[str, dict[str, Any]]] = {
    "default": ("treegrpo", {}),
    "lr-5e-5": ("treegrpo", {"optim.lr": 5e-5}),
    "lr-3e-5": ("treegrpo", {"optim.lr": 3e-5}),
    "kl-0.01": ("treegrpo", {"losses": [CLIP, {**KL, "weight": 0.01}]}),
    "kl-0.1": ("treegrpo", {"losses": [CLIP, {**KL, "weight": 0.1}]}),
    "kl-1": ("treegrpo", {"losses": [CLIP, {**KL, "weight": 1.0}]}),
    "kl-10": ("treegrpo", {"losses": [CLIP, {**KL, "weight": 10.0}]}),
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
    "tree-sft-0.02": ("treegrpo", {"losses": [CLIP, {"kind": "layertuning-sft", "weight": 0.02}]}),
    "tree-sft-0.05": ("treegrpo", {"losses": [CLIP, {"kind": "layertuning-sft", "weight": 0.05}]}),
    "tree-sft-0.02-lr-2e-4": ("treegrpo", {"losses": [CLIP, {"kind": "layertuning-sft", "weight": 0.02}], "optim.lr": 2e-4}),
    "tree-sft-0.02-lr-4e-4": ("treegrpo", {"losses": [CLIP, {"kind": "layertuning-sft", "weight": 0.02}], "optim.lr": 4e-4}),
    "tree-sft-0.01-lr-2e-4": ("treegrpo", {"losses": [CLIP, {"kind": "layertuning-sft", "weight": 0.01}], "optim.lr": 2e-4}),
    "tree-sft-0.02-passes-2": ("treegrpo", {"losses": [CLIP, {"kind": "layertuning-sft", "weight": 0.02}], "optim.passes": 2}),
}


def run_variant(name: str, iters: int, batch: int, seed: int) -> dict[str, Any]:
    algo, overrides = VARIANTS[name]
    backend = treesdk.load_backend("digits")
    recipe = treesdk.load_algorithm(algo, **{**backend.recipe_defaults(), **overrides})
    heldout = {"digit-evaluator": treesdk.load_reward("digit-evaluator")}
    rewards = {"digit-classifier": treesdk.load_reward("digit-classifier")}
    prompts, seeds = backend.eval_set()
    start = time.perf_counter()
    run = treesdk.train(recipe, backend, rewards, backend.default_prompts(), iters=iters, batch=batch, seed=seed,
                        eval_prompts=prompts, eval_seeds=seeds, eval_rewards=heldout)
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
    rows = []
    for name in args.only or list(VARIANTS):
        rows.append(run_variant(name, args.iters, args.batch, args.seed))
        print(json.dumps(rows[-1]), flush=True)
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps({"iters": args.iters, "batch": args.batch, "seed": args.seed, "rows": rows}, indent=2) + "\n")


if __name__ == "__main__":
    main()
