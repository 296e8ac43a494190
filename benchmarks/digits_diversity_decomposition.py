"""Where the base model's diversity comes from on digits: wrong digits or varied right ones?

The shipped ``digits`` model is trained with label noise (a prompt draws another digit about 18 % of
the time), so part of its per-prompt diversity is *between* digits: a "3" prompt that sometimes
draws a 5 has samples far apart in any feature space. RL that fixes prompt following removes that
part whatever it does to the shapes. This script splits the measure for the base model and for
trained variants of ``digits_diversity_sweep.py``, on the fixed evaluation set (10 prompts x 10
seeds, deterministic ODE samples):

* ``correct``: the fraction of samples the held-out ``digit-evaluator`` reads as the prompted digit;
* ``diversity`` / ``diversity_pixels``: the per-prompt mean pairwise distance over all samples, as
  ``treesdk eval`` reports it (evaluator features / pixels);
* ``diversity_correct`` / ``diversity_pixels_correct``: the same over the correctly drawn samples
  only (prompts with fewer than two are left out of the mean): the variety of the right digits.

    python benchmarks/digits_diversity_decomposition.py --out benchmarks/results/digits-diversity-decomposition.json
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any

import torch

import treesdk
from treesdk.diversity import per_prompt_diversity, pixel_features
from treesdk.evaluation import evaluate
from treesdk_backends.digits import DEFAULT_NUM_STEPS, parse_digit_prompt

from digits_diversity_sweep import VARIANTS, train_variant


def decompose(backend: Any, evaluator: Any) -> dict[str, float]:
    """``correct`` and the four diversities of ``backend``'s samples of the evaluation set."""
    prompts, seeds = backend.eval_set()
    means, _, images = evaluate(backend, {"digit-evaluator": evaluator}, prompts, seeds, DEFAULT_NUM_STEPS)
    labels = torch.tensor([parse_digit_prompt(p) for p in prompts])
    right = (evaluator.predict(images) == labels).nonzero().flatten().tolist()
    right_prompts = [prompts[i] for i in right]
    with torch.no_grad():
        features = evaluator.features(images[right])
    return {
        "heldout": means["digit-evaluator_mean"],
        "correct": len(right) / len(prompts),
        "diversity": means["diversity"],
        "diversity_pixels": means["diversity_pixels"],
        "diversity_correct": per_prompt_diversity(features, right_prompts),
        "diversity_pixels_correct": per_prompt_diversity(pixel_features(images[right]), right_prompts),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--only", nargs="+", choices=sorted(VARIANTS), default=["treegrpo", "treegrpo-layertuning", "tree-sft-0.01-lr-2e-4"])
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", type=Path, default=None)
    args = parser.parse_args()
    evaluator = treesdk.load_reward("digit-evaluator")
    rows = {"base": decompose(treesdk.load_backend("digits"), evaluator)}
    print(json.dumps({"model": "base", **rows["base"]}), flush=True)
    for name in args.only:
        backend, *_ = train_variant(name, 60, 8, args.seed)
        rows[name] = decompose(backend, evaluator)
        print(json.dumps({"model": name, **rows[name]}), flush=True)
    base = rows["base"]
    for row in rows.values():  # kept: after / the base's; *_correct_kept: after / the base's correct samples
        for key in ("diversity", "diversity_pixels"):
            row[f"{key}_kept"] = row[key] / base[key]
            row[f"{key}_kept_of_base_correct"] = row[key] / base[f"{key}_correct"]
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps({"seed": args.seed, "rows": rows}, indent=2) + "\n")


if __name__ == "__main__":
    main()
