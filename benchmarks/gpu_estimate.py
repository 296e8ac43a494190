"""Seconds per iteration on GPUs, *estimated* (not measured): rows from the dry-run plan times FLOPs.

Per velocity row: ``2 * P_blocks * tokens`` for the linear layers (P_blocks = transformer parameters)
plus ``4 * tokens^2 * hidden * blocks`` for attention; a training row (LoRA) costs 2x a forward
(activation gradients only; frozen weights get none), 3x with gradient checkpointing (one more
forward). Throughput = ``peak bf16 TFLOPS * MFU`` (defaults: H100 989 TFLOPS, A100 312, MFU 0.5 --
an assumption, stated in docs/performance.md). Decode, reward and optimiser are added as a fixed
``--other`` seconds per leaf. Ranks own whole trees, so the 8-GPU time is the busiest rank's.

    python benchmarks/gpu_estimate.py --model FLUX.1-dev --algo dynamic-treerpo --steps 25 --k 2 --d 3 \\
        --batch 16 --ranks 8 --resolution 1024 --gpu H100
    python benchmarks/gpu_estimate.py --memory-table    # docs/performance.md's peak-memory estimates
"""

from __future__ import annotations

import argparse
import json

from treesdk.model_facts import model_facts
from treesdk.training.loop.plan import GIB, iteration_calls, plan_memory
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
    facts = model_facts("sd3" if model.upper().startswith("SD3") else "flux", model)
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


#: (model, px, k, d, gradient checkpointing, train_chunk) rows of docs/performance.md's memory table
MEMORY_ROWS = [
    *[("FLUX.1-dev", px, k, 3, ck, 4 if ck else 1) for px in (512, 1024) for k in (2, 3) for ck in (False, True)],
    *[("SD3.5-medium", px, 2, 3, ck, 4 if ck else 1) for px in (512, 1024) for ck in (False, True)],
    *[("SD3.5-large", 1024, 2, 3, ck, 4 if ck else 1) for ck in (False, True)],
]


def memory_table(decode_chunk: int = 4, trees: int = 2, lora_rank: int = 16) -> str:
    """Peak memory per GPU (GiB, :func:`treesdk.training.loop.plan.plan_memory`) of :data:`MEMORY_ROWS` as a
    markdown table: bf16, LoRA, text encoders offloaded, ``trees`` trees per rank, T = 10."""
    lines = ["| model | px | k, d | checkpointing | train_chunk | decode_chunk | weights (transformer) | "
             "activations (training call) | peak training | peak decode | peak |", "|---" * 11 + "|"]
    for model, px, k, d, ck, train_chunk in MEMORY_ROWS:
        recipe = load_recipe("treegrpo", steps=10, train_chunk=train_chunk, decode_chunk=decode_chunk,
                             **{"tree.k": k, "tree.d": d})
        m = plan_memory(recipe, model_facts("sd3" if model.upper().startswith("SD3") else "flux", model), resolution=px, dtype="bfloat16", lora_rank=lora_rank,
                        prompts=trees, gradient_checkpointing=ck, offload_text_encoders=True)
        cells = [m.weights_transformer, m.activations_training, m.peak_training, m.peak_decode, m.peak]
        lines.append(f"| {model} | {px} | {k}, {d} | {'yes' if ck else 'no'} | {train_chunk} | {decode_chunk} | "
                     + " | ".join(f"{v / GIB:.1f}" for v in cells) + " |")
    return "\n".join(lines)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--model", default="FLUX.1-dev", help="a model name the flux or sd3 backend knows (FLUX.1-dev, SD3.5-large, ...)")
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
    p.add_argument("--memory-table", action="store_true", help="print the peak-memory table of docs/performance.md")
    a = p.parse_args()
    if a.memory_table:
        print(memory_table())
        return
    print(json.dumps(estimate(a.model, a.algo, a.steps, a.k, a.d, a.batch, a.ranks, a.resolution, a.gpu, a.mfu,
                              a.gradient_checkpointing, a.other), indent=2))


if __name__ == "__main__":
    main()
