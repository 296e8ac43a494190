"""The papers' comparison on one backend: reward versus wall-clock for several algorithms.

Every algorithm starts from the same base weights, sees the same prompts in the same order, uses
the same sampling steps ``T`` and is evaluated on the same fixed prompt/seed set (deterministic ODE
samples). Only training time counts toward the clock: evaluations pause it. The threshold defaults
to the base reward plus half of the best final improvement any algorithm reached, so that the
comparison is "time to get halfway"; pass one explicitly to compare across runs.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from .training.evaluate import evaluate
from .interfaces import RewardModel, VelocityModel
from .recipes import Recipe, load_recipe
from .training.trainer import train

DEFAULT_ALGORITHMS = ("grpo", "mixgrpo", "treegrpo", "dynamic-treerpo")


@dataclass
class AlgorithmResult:
    """Measurements of one algorithm's run."""

    name: str
    curve: list[dict[str, float]] = field(default_factory=list)  # {"seconds", "iteration", "reward", "heldout"}
    seconds_per_iter: float = 0.0
    nfe_sampling_per_iter: float = 0.0
    nfe_training_per_iter: float = 0.0
    iterations: int = 0
    final_reward: float = float("nan")
    final_heldout: float | None = None
    seconds_to_threshold: float | None = None


class _TimeBudget(Exception):
    """Raised from the iteration callback to end an algorithm's run at its budget."""


def run_bench(
    make_backend: Callable[[], VelocityModel],
    rewards: Mapping[str, RewardModel],
    weights: Mapping[str, float],
    prompts: Sequence[str],
    eval_prompts: Sequence[str],
    eval_seeds: Sequence[int],
    *,
    heldout: Mapping[str, RewardModel] | None = None,
    algorithms: Sequence[str] = DEFAULT_ALGORITHMS,
    overrides: Mapping[str, Any] | None = None,
    seconds: float = 240.0,
    max_iters: int = 10_000,
    eval_every: int = 5,
    batch: int = 8,
    steps: int = 10,
    seed: int = 0,
    threshold: float | None = None,
    out_dir: str | Path | None = None,
    on_progress: Callable[[str, float, float], None] | None = None,
) -> dict[str, Any]:
    """Train each algorithm for ``seconds`` of training wall-clock (or ``max_iters``) and compare.

    ``overrides`` (dotted keys) apply to every recipe after ``steps``; the training reward is the
    weighted sum of ``rewards``; ``heldout`` rewards are only evaluated. Returns the ``bench.json``
    dictionary (and writes it with a PNG plot into ``out_dir``).
    """
    heldout = dict(heldout or {})
    primary = next(iter(rewards))
    eval_models = {**rewards, **heldout}
    results: dict[str, AlgorithmResult] = {}
    base_eval: dict[str, float] | None = None

    def score(backend: VelocityModel, recipe: Recipe) -> tuple[float, float | None]:
        means, _, _ = evaluate(backend, eval_models, eval_prompts, eval_seeds, recipe.steps, recipe.chunk)
        train_value = sum(float(weights.get(n, 1.0)) * means[f"{n}_mean"] for n in rewards)
        held = means[f"{next(iter(heldout))}_mean"] if heldout else None
        return train_value, held

    for name in algorithms:
        backend = make_backend()
        recipe = load_recipe(name, **{**backend.recipe_defaults(), "steps": steps, **dict(overrides or {})})
        result = AlgorithmResult(name=recipe.name)
        reward0, held0 = score(backend, recipe)
        if base_eval is None:
            base_eval = {"reward": reward0, "heldout": held0}
        result.curve.append({"seconds": 0.0, "iteration": 0, "reward": reward0, "heldout": held0})
        clock = {"train": 0.0, "last": time.perf_counter()}
        totals = {"nfe_s": 0.0, "nfe_t": 0.0, "sec": 0.0, "n": 0}

        def on_iteration(row: dict[str, Any], backend: VelocityModel = backend, recipe: Recipe = recipe,
                         result: AlgorithmResult = result) -> None:
            clock["train"] += row["seconds"]
            totals["nfe_s"] += row["nfe_sampling"]
            totals["nfe_t"] += row["nfe_training"]
            totals["sec"] += row["seconds"]
            totals["n"] += 1
            done = clock["train"] >= seconds
            if row["iteration"] % eval_every == 0 or done:
                value, held = score(backend, recipe)
                result.curve.append({"seconds": clock["train"], "iteration": row["iteration"], "reward": value, "heldout": held})
            if on_progress is not None:
                on_progress(result.name, min(clock["train"], seconds), seconds)
            if done:
                raise _TimeBudget

        try:
            train(recipe, backend, rewards, prompts, weights=weights, iters=max_iters, batch=batch, seed=seed,
                  on_iteration=on_iteration)
        except _TimeBudget:
            pass
        n = max(1, totals["n"])
        result.iterations = int(totals["n"])
        result.seconds_per_iter = totals["sec"] / n
        result.nfe_sampling_per_iter = totals["nfe_s"] / n
        result.nfe_training_per_iter = totals["nfe_t"] / n
        if result.curve[-1]["iteration"] != result.iterations:
            value, held = score(backend, recipe)
            result.curve.append({"seconds": clock["train"], "iteration": result.iterations, "reward": value, "heldout": held})
        result.final_reward = result.curve[-1]["reward"]
        result.final_heldout = result.curve[-1]["heldout"]
        results[name] = result

    assert base_eval is not None
    if threshold is None:
        best = max(r.final_reward for r in results.values())
        threshold = base_eval["reward"] + 0.5 * (best - base_eval["reward"])
    for result in results.values():
        result.seconds_to_threshold = _first_crossing(result.curve, threshold)
    report = _report(results, threshold, base_eval, steps=steps, batch=batch, seconds=seconds, primary=primary)
    if out_dir is not None:
        out = Path(out_dir)
        out.mkdir(parents=True, exist_ok=True)
        (out / "bench.json").write_text(json.dumps(report, indent=2) + "\n")
        plot_curves(report, out / "bench.png")
    return report


def _first_crossing(curve: list[dict[str, float]], threshold: float) -> float | None:
    """Training seconds at which the evaluated reward first reaches ``threshold``, linearly
    interpolated between evaluation points; None if never."""
    previous = None
    for point in curve:
        if point["reward"] >= threshold:
            if previous is None or point["reward"] == previous["reward"]:
                return point["seconds"]
            frac = (threshold - previous["reward"]) / (point["reward"] - previous["reward"])
            return previous["seconds"] + frac * (point["seconds"] - previous["seconds"])
        previous = point
    return None


def _report(results: Mapping[str, AlgorithmResult], threshold: float, base: dict[str, Any], **facts: Any) -> dict[str, Any]:
    algorithms = {
        name: {
            "seconds_to_threshold": r.seconds_to_threshold,
            "seconds_per_iter": r.seconds_per_iter,
            "nfe_sampling_per_iter": r.nfe_sampling_per_iter,
            "nfe_training_per_iter": r.nfe_training_per_iter,
            "iterations": r.iterations,
            "final_reward": r.final_reward,
            "final_heldout": r.final_heldout,
            "curve": r.curve,
        }
        for name, r in results.items()
    }
    speedups: dict[str, float | None] = {}
    ref = results.get("grpo")
    for name, r in results.items():
        if ref is not None and ref.seconds_to_threshold and r.seconds_to_threshold:
            speedups[name] = ref.seconds_to_threshold / r.seconds_to_threshold
        else:
            speedups[name] = None
    return {"algorithms": algorithms, "threshold": threshold, "base": base, "speedup_vs_grpo": speedups, **facts}


def plot_curves(report: Mapping[str, Any], path: str | Path) -> Path:
    """PNG of evaluated training reward versus training wall-clock seconds, one line per algorithm."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 4.5), dpi=120)
    for name, data in report["algorithms"].items():
        xs = [p["seconds"] for p in data["curve"]]
        ys = [p["reward"] for p in data["curve"]]
        ax.plot(xs, ys, marker="o", markersize=3, label=name)
    ax.axhline(report["threshold"], color="grey", linestyle="--", linewidth=1, label="threshold")
    ax.set_xlabel("training wall-clock (s)")
    ax.set_ylabel("evaluation reward")
    ax.set_title("reward vs wall-clock")
    ax.legend()
    ax.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)
    return Path(path)
