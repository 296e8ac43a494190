"""Does the README's first command learn by more than the run-to-run noise?

Runs the default ``treesdk train`` configuration (digits, treegrpo, digit-classifier reward, 60
iterations, batch 8) with several training seeds and reports the held-out ``digit-evaluator`` mean
on the fixed evaluation set (100 images) before and after. Two noise figures:

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
from treesdk.training.evaluate import evaluate


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--iters", type=int, default=60)
    parser.add_argument("--batch", type=int, default=8)
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
        recipe = treesdk.load_algorithm("treegrpo", **backend.recipe_defaults())
        start = time.perf_counter()
        run = treesdk.train(recipe, backend, train_reward, backend.default_prompts(), iters=args.iters,
                            batch=args.batch, seed=seed, eval_prompts=prompts, eval_seeds=seeds, eval_rewards=heldout)
        runs.append({"seed": seed, "before": run.eval_before["digit-evaluator_mean"],
                     "after": run.eval_after["digit-evaluator_mean"], "seconds": time.perf_counter() - start})
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
    print(json.dumps(report, indent=2))
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps(report, indent=2) + "\n")


if __name__ == "__main__":
    main()
