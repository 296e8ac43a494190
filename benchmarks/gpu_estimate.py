"""Seconds per iteration on GPUs, *estimated* (not measured): rows from the dry-run plan times FLOPs.

Per velocity row: ``2 * P_blocks * tokens`` for the linear layers (P_blocks = transformer parameters)
plus ``4 * tokens^2 * hidden * blocks`` for attention; a training row (LoRA) costs 2x a forward
(activation gradients only; frozen weights get none), 3x with gradient checkpointing (one more
forward). Throughput = ``peak bf16 TFLOPS * MFU`` (defaults: H100 989 TFLOPS, A100 312, MFU 0.5 --
an assumption, stated in docs/performance.md). Decode, reward and optimiser are added as a fixed
``--other`` seconds per leaf. Ranks own whole trees, so the 8-GPU time is the busiest rank's.

    python benchmarks/gpu_estimate.py --model FLUX.1-dev --algo dynamic-treerpo --steps 25 --k 2 --d 3 \\
        --batch 16 --ranks 8 --resolution 1024 --gpu H100
"""

from __future__ import annotations

import argparse
import json

from treesdk.training.model_facts import model_facts
from treesdk.training.plan import iteration_calls
from treesdk.recipes import load_recipe

PEAK_TFLOPS = {"H100": 989.0, "H200": 989.0, "A100": 312.0}


def forward_flops(facts, resolution: int) -> float:
    tokens = facts.image_tokens(resolution) + facts.text_tokens
    blocks = facts.double_blocks + facts.single_blocks
    linear = 2.0 * facts.transformer_parameters * tokens
    attention = 4.0 * tokens**2 * facts.hidden * blocks
    return (linear + attention) * (2 if facts.cfg else 1)


def estimate(model: str, algo: str, steps: int, k: int, d: int, batch: int, ranks: int, resolution: int, gpu: str,
             mfu: float, checkpointing: bool, other: float, iters: int = 100, seed: int = 0) -> dict:
    facts = model_facts("", model)
    recipe = load_recipe(algo, steps=steps, **{"tree.k": k, "tree.d": d})
    trees = len(range(0, batch, ranks))  # the busiest rank
    rows = [iteration_calls(recipe, trees, recipe.window_start(it, seed)) for it in range(iters)]
    sampling = sum(r.nfe_sampling for r in rows) / iters
    training = sum(r.nfe_training for r in rows) / iters
    leaves = rows[0].leaves
    throughput = PEAK_TFLOPS[gpu] * 1e12 * mfu
    fwd = forward_flops(facts, resolution) / throughput
    seconds_sampling = sampling * fwd
    seconds_training = training * fwd * (3 if checkpointing else 2)
    seconds_other = leaves * other
    return {"model": facts.name, "algo": algo, "resolution": resolution, "gpu": gpu, "ranks": ranks, "batch": batch,
            "trees_per_rank": trees, "k": k, "d": d, "steps": steps, "mfu": mfu,
            "seconds_per_forward_row": fwd, "rows_sampling_per_rank": sampling, "rows_training_per_rank": training,
            "seconds_sampling": seconds_sampling, "seconds_training": seconds_training, "seconds_other": seconds_other,
            "seconds_per_iteration": seconds_sampling + seconds_training + seconds_other}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--model", default="FLUX.1-dev", help="a treesdk.training.model_facts.KNOWN_MODELS name")
    p.add_argument("--algo", default="dynamic-treerpo")
    p.add_argument("--steps", type=int, default=25)
    p.add_argument("--k", type=int, default=2)
    p.add_argument("--d", type=int, default=3)
    p.add_argument("--batch", type=int, default=16)
    p.add_argument("--ranks", type=int, default=8)
    p.add_argument("--resolution", type=int, default=1024)
    p.add_argument("--gpu", choices=sorted(PEAK_TFLOPS), default="H100")
    p.add_argument("--mfu", type=float, default=0.5)
    p.add_argument("--gradient-checkpointing", action="store_true")
    p.add_argument("--other", type=float, default=0.15, help="decode + reward seconds per leaf")
    a = p.parse_args()
    print(json.dumps(estimate(a.model, a.algo, a.steps, a.k, a.d, a.batch, a.ranks, a.resolution, a.gpu, a.mfu,
                              a.gradient_checkpointing, a.other), indent=2))


if __name__ == "__main__":
    main()
