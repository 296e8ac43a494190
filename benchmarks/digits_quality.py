"""Fidelity and coverage on digits: does a recipe keep its digits real, or buy diversity with noise?

A per-prompt mean pairwise distance (``diversity``) grows when images leave the data for speckled,
off-manifold ones. This script trains variants of ``digits_diversity_sweep.py`` (seed 0, 60
iterations of 8 prompts unless the variant says otherwise) and draws ``--per-digit`` fresh ODE
samples of every digit (seeds disjoint from the evaluation set's), measuring against the 1797 real
digits of scikit-learn (about 180 per class; the data the base model was trained on):

* ``precision`` / ``recall``: improved precision and recall (Kynkäänniemi et al., 2019, k = 3,
  ``treesdk.diversity.precision_recall``) per digit, in the held-out evaluator's features
  (``*_pixels``: in pixels), averaged over digits: precision = share of samples inside the real
  digits' manifold (fidelity), recall = share of real digits inside the samples' manifold
  (coverage: the diversity that noise does not buy);
* ``nearest_real``: mean pixel distance of a sample to the nearest real digit of its class;
* ``roughness``: mean absolute difference of neighbouring pixels (real digits 0.479);
* ``heldout``: the held-out evaluator's mean on these samples.

    python benchmarks/digits_quality.py --only base treegrpo default-run --out benchmarks/results/digits-quality.json \
        --grids benchmarks/results/digits-quality
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path
from typing import Any

import torch

import treesdk
from treesdk.diversity import precision_recall
from treesdk.images import save_grid
from treesdk_backends.digits import digit_prompt, sample_digits
from treesdk_backends.digits_data import load_digit_images

from digits_diversity_sweep import VARIANTS, train_variant

#: first sampling seed; digit d uses SEED + d (the evaluation set uses 1000..1009)
SEED = 5


def roughness(gray: torch.Tensor) -> torch.Tensor:
    """Mean absolute difference of horizontally and vertically neighbouring pixels, per image ``[N]``."""
    return (gray[..., 1:, :] - gray[..., :-1, :]).abs().mean((1, 2, 3)) + (gray[..., :, 1:] - gray[..., :, :-1]).abs().mean((1, 2, 3))


def quality(backend: Any, evaluator: Any, per_digit: int, grid: Path | None = None) -> dict[str, float]:
    """The measures above for ``backend``'s samples, averaged over the ten digits; ``grid``: also
    save the first 10 samples of every digit there (one row per digit)."""
    real, labels = load_digit_images("all")
    sums: dict[str, float] = {}
    firsts = []
    for d in range(10):
        prompts = [digit_prompt(d)] * per_digit
        images = sample_digits(backend, prompts, seed=SEED + d)
        firsts.append(images[:10])
        gray, ref = images.mean(1, keepdim=True), real[labels == d]
        with torch.no_grad():
            p_feat, r_feat = precision_recall(evaluator.features(images), evaluator.features(ref.repeat(1, 3, 1, 1)))
        p_pix, r_pix = precision_recall(gray.flatten(1), ref.flatten(1))
        row = {
            "precision": p_feat, "recall": r_feat, "precision_pixels": p_pix, "recall_pixels": r_pix,
            "nearest_real": float(torch.cdist(gray.flatten(1), ref.flatten(1)).min(1).values.mean()),
            "roughness": float(roughness(gray).mean()),
            "heldout": float(evaluator.score(images, prompts).mean()),
        }
        for key, value in row.items():
            sums[key] = sums.get(key, 0.0) + value / 10
    if grid is not None:
        save_grid(torch.cat(firsts), grid, nrow=10)
    return sums


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--only", nargs="+", choices=["base", *sorted(VARIANTS)], default=["base", "treegrpo", "default-run"])
    parser.add_argument("--per-digit", type=int, default=100)
    parser.add_argument("--iters", type=int, default=60)
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--seed", type=int, default=0, help="training seed")
    parser.add_argument("--out", type=Path, default=None)
    parser.add_argument("--grids", type=Path, default=None, help="folder for one sample grid per variant (<variant>.png)")
    args = parser.parse_args()
    torch.set_num_threads(1)
    evaluator = treesdk.load_reward("digit-evaluator")
    real, _ = load_digit_images("all")
    rows: dict[str, Any] = {}
    if args.out and args.out.is_file():  # rows of earlier invocations stay; a variant run again is replaced
        rows = {row["variant"]: row for row in json.loads(args.out.read_text())["rows"]}
    for name in args.only:
        start = time.perf_counter()
        if name == "base":
            backend, iters = treesdk.load_backend("digits"), 0
        else:
            backend, _, iters, _ = train_variant(name, args.iters, args.batch, args.seed)
        grid = args.grids / f"{name}.png" if args.grids else None
        rows[name] = {"variant": name, "iters": iters, **quality(backend, evaluator, args.per_digit, grid),
                      "seconds": time.perf_counter() - start}
        print(json.dumps(rows[name]), flush=True)
        if args.out:  # after every variant, so an interrupted run keeps what it measured
            args.out.parent.mkdir(parents=True, exist_ok=True)
            table = {"per_digit": args.per_digit, "seed": args.seed, "real_roughness": float(roughness(real).mean()),
                     "rows": list(rows.values())}
            args.out.write_text(json.dumps(table, indent=2) + "\n")


if __name__ == "__main__":
    main()
