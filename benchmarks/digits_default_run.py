"""Does the README's first command learn by more than the run-to-run noise?

Runs the default ``treesdk train`` configuration (digits, its default recipe ``treegrpo-layertuning``,
digit-classifier reward, 60 iterations, batch 8; ``--algo treegrpo`` for plain TreeGRPO) with several training seeds and reports the held-out ``digit-evaluator`` mean
on the fixed evaluation set (100 images) before and after, and the diversity kept (per-prompt mean
pairwise distance of the evaluator's features, after / before; ``treesdk.diversity``). Two noise figures:

* training noise: the spread of the *after* value over training seeds;
* evaluation noise: the spread of the base model's value over disjoint evaluation seed sets
  (the same 10 prompts x 10 seeds, other seeds), i.e. the sampling noise of a 100-image mean.

    python benchmarks/digits_default_run.py --seeds 0 1 2 --out benchmarks/results/digits-default-run.json
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from pathlib import Path

import treesdk
from treesdk.evaluation import evaluate


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--iters", type=int, default=60)
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--algo", default=None, help="a preset instead of the backend's default recipe")
    parser.add_argument("--out", type=Path, default=None)
    args = parser.parse_args()

    heldout = {"digit-evaluator": treesdk.load_reward("digit-evaluator")}
    train_reward = {"digit-classifier": treesdk.load_reward("digit-classifier")}
    base = treesdk.load_backend("digits")
    prompts, seeds = base.eval_set()

    eval_noise = []
    for shift in range(3):  # disjoint seed sets for the base model
        means, _, _ = evaluate(base, heldout, prompts, [s + 10_000 * (shift + 1) for s in seeds], 10)
        eval_noise.append(means["digit-evaluator_mean"])

    runs = []
    for seed in args.seeds:
        backend = treesdk.load_backend("digits")
        recipe = (treesdk.load_algorithm(args.algo, **backend.recipe_defaults()) if args.algo
                  else treesdk.load_algorithm(backend.default_recipe))  # a full mapping: taken as is
        start = time.perf_counter()
        run = treesdk.train(recipe, backend, train_reward, backend.default_prompts(), iters=args.iters,
                            batch=args.batch, seed=seed, eval_prompts=prompts, eval_seeds=seeds, eval_rewards=heldout)
        runs.append({"seed": seed, "before": run.eval_before["digit-evaluator_mean"],
                     "after": run.eval_after["digit-evaluator_mean"], "seconds": time.perf_counter() - start,
                     "diversity_before": run.eval_before["diversity"], "diversity_after": run.eval_after["diversity"],
                     "diversity_kept": run.eval_after["diversity"] / run.eval_before["diversity"],
                     "diversity_pixels_kept": run.eval_after["diversity_pixels"] / run.eval_before["diversity_pixels"],
                     "precision_before": run.eval_before["precision"], "precision_after": run.eval_after["precision"],
                     "recall_before": run.eval_before["recall"], "recall_after": run.eval_after["recall"]})
        print(json.dumps(runs[-1]))

    afters = [r["after"] for r in runs]
    report = {
        "runs": runs,
        "before": runs[0]["before"],
        "after_mean": statistics.mean(afters),
        "after_std_over_training_seeds": statistics.pstdev(afters),
        "base_over_eval_seed_sets": eval_noise,
        "base_std_over_eval_seed_sets": statistics.pstdev(eval_noise),
    }
    report["gain"] = report["after_mean"] - report["before"]
    report["diversity_kept_mean"] = statistics.mean(r["diversity_kept"] for r in runs)
    report["diversity_pixels_kept_mean"] = statistics.mean(r["diversity_pixels_kept"] for r in runs)
    report["precision_after_mean"] = statistics.mean(r["precision_after"] for r in runs)
    report["recall_after_mean"] = statistics.mean(r["recall_after"] for r in runs)
    report["recipe"] = recipe.name
    print(json.dumps(report, indent=2))
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps(report, indent=2) + "\n")


if __name__ == "__main__":
    main()
