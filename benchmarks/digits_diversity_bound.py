"""How much diversity can a held-out score near 1 keep on digits? A reference from the base model itself.

Samples ``--per-digit`` ODE images of every digit from the shipped base model and measures, for
re-weightings of those samples that raise the held-out ``digit-evaluator`` mean:

* the subsets the evaluator scores above a threshold (``filter``: rejection sampling);
* the exponentially tilted distributions ``w_i ∝ exp(score_i / beta)`` per digit (``tilt``): the
  optimum of "maximise the expected score minus beta x KL to the base", restricted to the base
  model's own samples — what KL-regularised RL converges to when it cannot invent new images.

For each: the evaluator mean, and the diversity kept (per-digit weighted mean pairwise distance,
over the base model's) in the evaluator's 128-d features and in pixels — the two measures
``treesdk eval`` reports (``diversity``, ``diversity_pixels``).

The same measures on the real handwritten digits (sklearn's 1797, ``real`` rows: all of them, the
half the evaluator was trained on, and the same filters) say what score real, varied digits get:
the evaluator was trained with label smoothing 0.05, and reads its own training digits at ~0.90.

    python benchmarks/digits_diversity_bound.py --out benchmarks/results/digits-diversity-bound.json
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any, NamedTuple

import torch

import treesdk
from treesdk.diversity import pixel_features
from treesdk_backends.digits import digit_prompt, sample_digits
from treesdk_backends.digits_data import load_digit_images


def weighted_diversity(features: torch.Tensor, weights: torch.Tensor) -> float:
    """``sum_{i != j} w_i w_j d_ij / sum_{i != j} w_i w_j`` for one prompt's rows (float64)."""
    f = features.double()
    dist = torch.cdist(f[None], f[None])[0]
    pair = weights.double()[:, None] * weights.double()[None, :]
    pair.fill_diagonal_(0.0)
    return float((pair * dist).sum() / pair.sum())


class Samples(NamedTuple):
    """Images of the ten digits as the evaluator sees them: features, pixels, score of the prompted
    digit, and the row indices of each digit."""

    features: torch.Tensor
    pixels: torch.Tensor
    score: torch.Tensor
    groups: list[torch.Tensor]


def scored(evaluator: Any, images: torch.Tensor, digits: list[int]) -> Samples:
    """``images`` ``[N, 3, 8, 8]`` of ``digits`` (one per row) scored by ``evaluator``."""
    labels = torch.tensor(digits)
    score = evaluator.score(images, [digit_prompt(d) for d in digits]).double()
    with torch.no_grad():
        features = evaluator.features(images)
    return Samples(features, pixel_features(images), score, [(labels == d).nonzero().flatten() for d in range(10)])


def measure(features: torch.Tensor, pixels: torch.Tensor, score: torch.Tensor, weights: torch.Tensor,
            groups: list[torch.Tensor]) -> dict[str, float]:
    """Evaluator mean and diversities (features, pixels) of the weighting ``weights``; ``groups``: the
    row indices of each digit. Each digit counts equally (means over the digits)."""
    out = {"heldout": 0.0, "diversity": 0.0, "diversity_pixels": 0.0, "effective_samples_per_digit": 0.0}
    for rows in groups:
        w = weights[rows] / weights[rows].sum()
        out["heldout"] += float((w * score[rows]).sum()) / len(groups)
        out["diversity"] += weighted_diversity(features[rows], w) / len(groups)
        out["diversity_pixels"] += weighted_diversity(pixels[rows], w) / len(groups)
        out["effective_samples_per_digit"] += float(1.0 / (w**2).sum()) / len(groups)
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--per-digit", type=int, default=200)
    parser.add_argument("--seed", type=int, default=7)
    parser.add_argument("--out", type=Path, default=None)
    args = parser.parse_args()

    backend = treesdk.load_backend("digits")
    evaluator = treesdk.load_reward("digit-evaluator")
    digits = [d for d in range(10) for _ in range(args.per_digit)]
    prompts = [digit_prompt(d) for d in digits]
    images = torch.cat([sample_digits(backend, prompts[i : i + 500], seed=args.seed + i) for i in range(0, len(prompts), 500)])
    model = scored(evaluator, images, digits)
    base = measure(model.features, model.pixels, model.score, torch.ones_like(model.score), model.groups)

    def row(kind: str, value: float, weights: torch.Tensor, samples: Samples = model) -> dict[str, float]:
        m = measure(samples.features, samples.pixels, samples.score, weights, samples.groups)
        return {"kind": kind, "value": value, **m, "kept": m["diversity"] / base["diversity"],
                "kept_pixels": m["diversity_pixels"] / base["diversity_pixels"]}

    def filters(kind: str, samples: Samples, thresholds: tuple[float, ...]) -> list[dict[str, float]]:
        """Rows for the subsets above each threshold (skipped when a digit keeps fewer than two)."""
        out = []
        for threshold in thresholds:
            keep = (samples.score > threshold).double()
            if all(keep[g].sum() >= 2 for g in samples.groups):
                out.append(row(kind, threshold, keep, samples))
        return out

    rows = filters("filter", model, (0.5, 0.9, 0.97, 0.99))
    for beta in (1.0, 0.3, 0.1, 0.03, 0.01, 0.005, 0.003):
        rows.append(row("tilt", beta, torch.exp((model.score - model.score.max()) / beta)))
    # the real handwritten digits: all, and the half the evaluator was trained on (odd indices);
    # above[split][d]: the fraction of real digits d the evaluator reads above 0.99
    above: dict[str, list[float]] = {}
    for split in ("all", "odd"):
        real, labels = load_digit_images(split)
        real = scored(evaluator, real.repeat(1, 3, 1, 1), labels.tolist())
        rows.append(row(f"real-{split}", 0.0, torch.ones_like(real.score), real))
        rows.extend(filters(f"real-{split}-filter", real, (0.9, 0.97, 0.99)))
        above[split] = [round(float((real.score[g] > 0.99).double().mean()), 4) for g in real.groups]
    for r in rows:
        print(f"{r['kind']:18s} {r['value']:<6g} held-out {r['heldout']:.4f}  kept {100 * r['kept']:.0f}% "
              f"(pixels {100 * r['kept_pixels']:.0f}%)  effective samples/digit {r['effective_samples_per_digit']:.0f}")
    for split, fractions in above.items():
        print(f"real-{split}: fraction the evaluator reads above 0.99, per digit: {fractions}")
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps({"per_digit": args.per_digit, "seed": args.seed, "base": base, "rows": rows,
                                        "real_fraction_above_0.99": above}, indent=2) + "\n")


if __name__ == "__main__":
    main()
