"""The papers' comparison on one backend: reward versus cost (wall-clock, CPU, NFE) and diversity.

Every algorithm starts from the same base weights, sees the same prompts in the same order, uses the
same sampling steps ``T`` and is evaluated on the same fixed prompt/seed set (deterministic ODE
samples, :func:`treesdk.evaluation.evaluate`: every reward's mean and the per-prompt diversity).

The algorithms run **interleaved**, round-robin by iteration: one iteration of each in turn (each in
its own thread, exactly one thread running at a time), so a machine whose load changes during the
bench slows them all alike. Three clocks count training only (evaluations pause them): wall-clock
seconds of the iterations, process CPU seconds spent in them, and velocity evaluations (sampling,
training and reference calls).

Thresholds are on the **score** the bench compares: the held-out reward when there is one (an engine
or evaluator the algorithms never trained on), else the training reward. Two thresholds default to
the base score plus 50% and 90% of the best final gain any algorithm reached; pass them explicitly to
compare across runs. A crossing counts only at **matched fidelity**: at an evaluation whose precision
against the backend's reference images is at least the base model's minus ``precision_tolerance``
(a run that reaches the threshold by leaving the data has not reached it). Each crossing records the
four clocks (interpolated from the previous evaluation) and the fidelity and hacking figures of the
evaluation that crossed. Sample grids of the base model and of every algorithm's end are written
beside ``bench.json`` (``samples/``).
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from treesdk import train
from treesdk.evaluation import evaluate
from treesdk.interfaces import RewardModel, VelocityModel
from treesdk.recipes import Recipe, load_recipe

DEFAULT_ALGORITHMS = ("grpo", "mixgrpo", "treegrpo", "dynamic-treerpo")
#: fractions of the best final gain that define the default thresholds
THRESHOLD_FRACTIONS = (0.5, 0.9)
#: digits tasks: ``default`` (the classifier's probability of the prompted digit) and ``strict``
#: (the same classifier at softmax temperature 3: a digit counts only with a large logit margin,
#: base 0.29, so no algorithm saturates within the default budget)
TASKS: dict[str, dict[str, dict[str, Any]]] = {
    "default": {},
    "strict": {"digit-classifier": {"temperature": 3.0}},
}
_CLOCKS = ("seconds", "cpu_seconds", "nfe", "iteration")
#: evaluation figures copied into each threshold crossing: fidelity and the reward-hacking audit
CROSSING_FIGURES = ("reward", "heldout", "precision", "recall", "diversity", "dark_fraction", "edge_density",
                    "intensity_entropy", "heldout_std_per_prompt", "heldout_zero_std_fraction")
#: images of each evaluation saved as a sample grid (the first ones of the fixed set)
GRID_IMAGES = 32


@dataclass
class AlgorithmResult:
    """Measurements of one algorithm's run; ``curve`` points carry the four clocks and the evaluation."""

    name: str
    curve: list[dict[str, Any]] = field(default_factory=list)
    seconds_per_iter: float = 0.0
    nfe_sampling_per_iter: float = 0.0
    nfe_training_per_iter: float = 0.0
    iterations: int = 0
    error: str | None = None
    lr: float | None = None  # the recipe's learning rate (papers' or backend's)


class _TimeBudget(Exception):
    """Raised from the iteration callback to end an algorithm's run at its budget."""


class _Turns:
    """Round-robin turnstile: ``wait(name)`` blocks until it is ``name``'s turn; ``pass_on`` hands it on."""

    def __init__(self, names: Sequence[str]) -> None:
        self.order = list(names)
        self.active = set(names)
        self.current: str | None = self.order[0] if self.order else None
        self.cond = threading.Condition()

    def wait(self, name: str) -> None:
        with self.cond:
            self.cond.wait_for(lambda: self.current == name)

    def pass_on(self, name: str, finished: bool = False) -> None:
        with self.cond:
            if finished:
                self.active.discard(name)
            start = self.order.index(name)
            nxt = [self.order[(start + j) % len(self.order)] for j in range(1, len(self.order) + 1)]
            self.current = next((n for n in nxt if n in self.active), None)
            self.cond.notify_all()


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
    nfe: float = float("inf"),
    max_iters: int = 10_000,
    eval_every: int = 5,
    eval_every_nfe: int | None = None,
    batch: int = 8,
    steps: int = 10,
    seed: int = 0,
    thresholds: Sequence[float] | None = None,
    threshold_on: str | None = None,
    precision_tolerance: float = 0.02,
    backend_defaults: bool = True,
    interleave: bool = True,
    task: str = "default",
    out_dir: str | Path | None = None,
    on_progress: Callable[[str, float, float], None] | None = None,
) -> dict[str, Any]:
    """Train each algorithm for ``seconds`` of training wall-clock or ``nfe`` velocity evaluations,
    whichever comes first (or ``max_iters``), and compare.

    ``nfe`` counts every forward (sampling, training, reference); an NFE budget gives each algorithm the
    same compute whatever else the machine runs. ``eval_every_nfe``: evaluate whenever that many more
    velocity evaluations have run since the last evaluation (instead of every ``eval_every``
    iterations), so an algorithm with costly iterations is not judged on fewer points.
    The base model is evaluated once and its figures shared: every algorithm starts from the same
    weights and the evaluation (deterministic ODE samples of a fixed set) does not depend on the recipe.

    ``overrides`` (dotted keys) apply to every recipe after the backend's ``recipe_defaults`` (unless
    ``backend_defaults`` is False: the presets at the papers' values) and ``steps``; the training reward is the weighted sum of ``rewards``; ``heldout`` rewards are only
    evaluated. ``threshold_on``: ``"heldout"`` (the default when ``heldout`` is given) or ``"reward"``;
    ``precision_tolerance``: how far below the base model's precision a crossing may be (module docstring).
    Returns the ``bench.json`` dictionary (and writes it with ``bench.png`` and ``samples/`` into ``out_dir``).
    """
    heldout = dict(heldout or {})
    threshold_on = threshold_on or ("heldout" if heldout else "reward")
    if threshold_on not in ("heldout", "reward"):
        raise ValueError(f"threshold_on must be 'heldout' or 'reward', got {threshold_on!r}")
    if threshold_on == "heldout" and not heldout:
        raise ValueError("threshold_on='heldout' needs a held-out reward (none was given)")
    grids: dict[str, Any] = {}
    eval_models = {**rewards, **heldout}
    names = list(dict.fromkeys(algorithms))
    results = {name: AlgorithmResult(name=name) for name in names}
    turns = _Turns(names)
    shared_base: dict[str, Any] = {}

    def score(backend: VelocityModel, recipe: Recipe, grid_name: str | None = None) -> dict[str, Any]:
        means, _, images = evaluate(backend, eval_models, eval_prompts, eval_seeds, recipe.steps, recipe.chunk)
        if grid_name is not None:
            grids[grid_name] = images[:GRID_IMAGES]
        return {
            "reward": sum(float(weights.get(n, 1.0)) * means[f"{n}_mean"] for n in rewards),
            "heldout": means[f"{next(iter(heldout))}_mean"] if heldout else None,
            "diversity": means["diversity"],
            "diversity_pixels": means["diversity_pixels"],
            "precision": means["precision"],
            "recall": means["recall"],
            # the reward-hacking audit (treesdk.audit) and the held-out reward's within-prompt spread
            **{key: means[key] for key in ("dark_fraction", "edge_density", "intensity_entropy")},
            "heldout_std_per_prompt": means[f"{next(iter(heldout))}_std_per_prompt"] if heldout else None,
            "heldout_zero_std_fraction": means[f"{next(iter(heldout))}_zero_std_fraction"] if heldout else None,
        }

    def worker(name: str) -> None:
        result = results[name]
        turns.wait(name)
        clock = {"seconds": 0.0, "cpu_seconds": 0.0, "nfe": 0, "iteration": 0, "turn_cpu": time.process_time()}
        sums = {"nfe_s": 0.0, "nfe_t": 0.0}
        backend = recipe = None
        try:
            backend = make_backend()
            scale = backend.recipe_defaults() if backend_defaults else {}
            recipe = load_recipe(name, **{**scale, "steps": steps, **dict(overrides or {})})
            result.name, result.lr = recipe.name, recipe.optim.lr
            if not shared_base:
                shared_base.update(score(backend, recipe, grid_name="base"))
            result.curve.append({**{k: clock[k] for k in _CLOCKS}, **shared_base})
            clock["turn_cpu"] = time.process_time()
            evaluated_at = {"nfe": 0}

            def on_iteration(row: dict[str, Any]) -> None:
                clock["cpu_seconds"] += time.process_time() - clock["turn_cpu"]
                clock["seconds"] += row["seconds"]
                clock["nfe"] += row["nfe_sampling"] + row["nfe_training"] + row.get("nfe_reference", 0)
                clock["iteration"] = row["iteration"]
                sums["nfe_s"] += row["nfe_sampling"]
                sums["nfe_t"] += row["nfe_training"]
                done = clock["seconds"] >= seconds or clock["nfe"] >= nfe
                due = (clock["nfe"] - evaluated_at["nfe"] >= eval_every_nfe if eval_every_nfe
                       else row["iteration"] % eval_every == 0)
                if due or done:
                    result.curve.append({**{k: clock[k] for k in _CLOCKS}, **score(backend, recipe, grid_name=name)})
                    evaluated_at["nfe"] = clock["nfe"]
                if on_progress is not None:
                    on_progress(name, _progress(clock, seconds, nfe), 1.0)
                if done:
                    raise _TimeBudget
                if interleave:
                    turns.pass_on(name)
                    turns.wait(name)
                clock["turn_cpu"] = time.process_time()

            train(recipe, backend, rewards, prompts, weights=weights, iters=max_iters, batch=batch, seed=seed,
                  on_iteration=on_iteration)
        except _TimeBudget:
            pass
        except Exception as exc:  # noqa: BLE001 - reported in the table, the other algorithms go on
            result.error = f"{type(exc).__name__}: {exc}"
        finally:
            if backend is not None and recipe is not None and result.curve and result.curve[-1]["iteration"] != clock["iteration"]:
                result.curve.append({**{k: clock[k] for k in _CLOCKS}, **score(backend, recipe, grid_name=name)})
            n = max(1, int(clock["iteration"]))
            result.iterations = int(clock["iteration"])
            result.seconds_per_iter = clock["seconds"] / n
            result.nfe_sampling_per_iter = sums["nfe_s"] / n
            result.nfe_training_per_iter = sums["nfe_t"] / n
            turns.pass_on(name, finished=True)

    threads = [threading.Thread(target=worker, args=(name,), name=f"bench-{name}") for name in names]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()

    measured = [r for r in results.values() if r.curve]
    if not measured:
        raise RuntimeError("no algorithm could be evaluated: " + "; ".join(f"{r.name}: {r.error}" for r in results.values()))
    base = dict(measured[0].curve[0])
    if thresholds is None:
        thresholds = default_thresholds(measured, base, threshold_on)
    min_precision = base["precision"] - precision_tolerance if base.get("precision") is not None else None
    report = _report(results, list(thresholds), base, threshold_on=threshold_on, min_precision=min_precision,
                     precision_tolerance=precision_tolerance, steps=steps, batch=batch, seconds=seconds,
                     nfe_budget=nfe if nfe != float("inf") else None, eval_every_nfe=eval_every_nfe,
                     interleave=interleave, task=task, backend_defaults=backend_defaults)
    if out_dir is not None:
        from treesdk.io import atomic_write_json

        out = Path(out_dir)
        out.mkdir(parents=True, exist_ok=True)
        report["sample_grids"] = save_sample_grids(grids, out / "samples")
        atomic_write_json(report, out / "bench.json")  # strict JSON: a non-finite value (--seconds inf) is null
        plot_curves(report, out / "bench.png")
    return report


def default_thresholds(measured: Sequence[AlgorithmResult], base: Mapping[str, Any], key: str) -> list[float]:
    """Base score plus :data:`THRESHOLD_FRACTIONS` of the best final gain among ``measured``."""
    best = max(r.curve[-1][key] for r in measured)
    return [base[key] + f * (best - base[key]) for f in THRESHOLD_FRACTIONS]


#: settings two bench reports must share to be merged into one race
MERGE_KEYS = ("steps", "batch", "seconds", "nfe_budget", "eval_every_nfe", "task", "backend_defaults",
              "threshold_on", "precision_tolerance")


def merge_reports(reports: Sequence[Mapping[str, Any]], thresholds: Sequence[float] | None = None,
                  threshold_on: str | None = None) -> dict[str, Any]:
    """One race from several ``bench.json`` reports of the same bed and settings (a preset added
    later, without rerunning the others): the base evaluations and :data:`MERGE_KEYS` must agree;
    thresholds (default: from the best final gain over all algorithms), crossings and speed-ups are
    recomputed from the curves. ``threshold_on`` (``"reward"`` or ``"heldout"``; default: the
    reports') re-scores the race on the other score, whose curve every report keeps. An algorithm
    named in two reports is an error."""
    if not reports:
        raise ValueError("nothing to merge")
    if threshold_on not in (None, "reward", "heldout"):
        raise ValueError(f"threshold_on must be 'reward' or 'heldout', got {threshold_on!r}")
    first = reports[0]
    key = threshold_on or first.get("threshold_on", "reward")
    results: dict[str, AlgorithmResult] = {}
    for report in reports:
        differ = [k for k in MERGE_KEYS if report.get(k) != first.get(k)]
        if differ:
            raise ValueError("the reports were run with different settings: "
                             + ", ".join(f"{k} {first.get(k)!r} vs {report.get(k)!r}" for k in differ))
        for k in (key, "precision", "recall", "diversity"):
            if report["base"].get(k) != first["base"].get(k):
                raise ValueError(f"the reports' base models differ ({k}: {first['base'].get(k)} vs {report['base'].get(k)}): "
                                 "not the same bed, evaluation set or weights")
        for name, data in report["algorithms"].items():
            if name in results:
                raise ValueError(f"algorithm {name!r} is in two reports")
            results[name] = AlgorithmResult(
                name=name, curve=list(data["curve"]), seconds_per_iter=data["seconds_per_iter"],
                nfe_sampling_per_iter=data["nfe_sampling_per_iter"], nfe_training_per_iter=data["nfe_training_per_iter"],
                iterations=data["iterations"], error=data["error"], lr=data.get("lr"))
    base = dict(first["base"])
    measured = [r for r in results.values() if r.curve]
    if any(point.get(key) is None for r in measured for point in r.curve) or base.get(key) is None:
        raise ValueError(f"the reports' curves carry no {key!r} score (a race without a held-out reward?)")
    chosen = list(thresholds) if thresholds is not None else default_thresholds(measured, base, key)
    facts = {k: first.get(k) for k in (*MERGE_KEYS, "interleave") if k not in ("threshold_on",)}
    return _report(results, chosen, base, threshold_on=key, min_precision=first.get("min_precision"), **facts)


def _progress(clock: Mapping[str, Any], seconds: float, nfe: float) -> float:
    """Fraction of the budget spent: the larger of the wall-clock and the NFE fractions, at most 1."""
    return min(1.0, max(clock["seconds"] / seconds, clock["nfe"] / nfe))


def save_sample_grids(grids: Mapping[str, Any], folder: Path) -> dict[str, str]:
    """One PNG per entry of ``grids`` (``{"base": images, algorithm: its last evaluation's images}``)
    in ``folder``; returns ``{name: path relative to the bench folder}``."""
    from treesdk.images import save_grid

    folder.mkdir(parents=True, exist_ok=True)
    written = {}
    for name, images in grids.items():
        safe = "".join(c if c.isalnum() or c in "-_." else "_" for c in name)
        save_grid(images, folder / f"{safe}.png")
        written[name] = f"{folder.name}/{safe}.png"
    return written


def first_crossing(
    curve: Sequence[Mapping[str, Any]], threshold: float, key: str = "reward", min_precision: float | None = None
) -> dict[str, Any] | None:
    """The four clocks at which the evaluated ``key`` first reaches ``threshold`` at an evaluation
    whose precision is at least ``min_precision`` (None: no fidelity guard; an evaluation without a
    precision passes), linearly interpolated from the previous evaluation, plus that evaluation's
    :data:`CROSSING_FIGURES`; None if never."""
    previous = None
    for point in curve:
        faithful = min_precision is None or point.get("precision") is None or point["precision"] >= min_precision
        if point[key] is not None and point[key] >= threshold and faithful:
            figures = {name: point.get(name) for name in CROSSING_FIGURES}
            if previous is None or previous[key] is None or point[key] == previous[key] or previous[key] >= threshold:
                return {**{k: float(point[k]) for k in _CLOCKS}, **figures}
            frac = (threshold - previous[key]) / (point[key] - previous[key])
            return {**{k: float(previous[k] + frac * (point[k] - previous[k])) for k in _CLOCKS}, **figures}
        previous = point
    return None


def _kept(last: Mapping[str, Any], base: Mapping[str, Any], key: str) -> float | None:
    """``last[key] / base[key]``, or None when either is missing or the base is 0."""
    return last[key] / base[key] if last.get(key) is not None and base.get(key) else None


def _report(results: Mapping[str, AlgorithmResult], thresholds: list[float], base: dict[str, Any], *, threshold_on: str = "reward",
            min_precision: float | None = None, **facts: Any) -> dict[str, Any]:
    algorithms: dict[str, Any] = {}
    for name, r in results.items():
        last = r.curve[-1] if r.curve else {}
        kept, kept_pixels = (_kept(last, base, key) for key in ("diversity", "diversity_pixels"))
        algorithms[name] = {
            "to_threshold": [first_crossing(r.curve, t, threshold_on, min_precision) for t in thresholds],
            "seconds_per_iter": r.seconds_per_iter,
            "nfe_sampling_per_iter": r.nfe_sampling_per_iter,
            "nfe_training_per_iter": r.nfe_training_per_iter,
            "iterations": r.iterations,
            "lr": r.lr,
            "final_reward": last.get("reward"),
            "final_heldout": last.get("heldout"),
            "final_diversity": last.get("diversity"),
            "diversity_kept": kept,
            "diversity_pixels_kept": kept_pixels,
            "final_precision": last.get("precision"),
            "final_recall": last.get("recall"),
            "final_audit": {key: last.get(key) for key in ("dark_fraction", "edge_density", "intensity_entropy",
                                                           "heldout_std_per_prompt", "heldout_zero_std_fraction")},
            "error": r.error,
            "curve": r.curve,
        }
    ref = algorithms.get("grpo")

    def speedup(data: Mapping[str, Any], i: int, clock: str) -> float | None:
        ours, theirs = data["to_threshold"][i], ref["to_threshold"][i] if ref is not None else None
        return theirs[clock] / ours[clock] if ours and theirs and ours[clock] > 0 else None

    speedups = {name: [speedup(data, i, "seconds") for i in range(len(thresholds))] for name, data in algorithms.items()}
    speedups_nfe = {name: [speedup(data, i, "nfe") for i in range(len(thresholds))] for name, data in algorithms.items()}
    return {"algorithms": algorithms, "thresholds": thresholds, "threshold_on": threshold_on, "min_precision": min_precision,
            "base": base, "speedup_vs_grpo": speedups, "speedup_vs_grpo_nfe": speedups_nfe, **facts}


def plot_curves(report: Mapping[str, Any], path: str | Path) -> Path:
    """PNG: the compared score (``report["threshold_on"]``: held-out or training reward) versus training
    wall-clock (left), versus velocity evaluations (middle) and versus diversity kept (right)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    key = report.get("threshold_on", "reward")
    label = "held-out score" if key == "heldout" else "evaluation reward"
    fig, (left, middle, right) = plt.subplots(1, 3, figsize=(17, 4.5), dpi=120)
    base_div = report["base"].get("diversity") or float("nan")
    # matplotlib's default cycle has 10 colours: a larger race takes tab20's, so no two share one
    palette = plt.get_cmap("tab10" if len(report["algorithms"]) <= 10 else "tab20").colors
    for i, (name, data) in enumerate(report["algorithms"].items()):
        curve = [p for p in data["curve"] if p.get(key) is not None]
        if not curve:
            continue
        score, color = [p[key] for p in curve], palette[i % len(palette)]
        left.plot([p["seconds"] for p in curve], score, marker="o", markersize=3, color=color, label=name)
        middle.plot([p["nfe"] / 1000 for p in curve], score, marker="o", markersize=3, color=color, label=name)
        kept = [100.0 * (p["diversity"] if p["diversity"] is not None else float("nan")) / base_div for p in curve]
        right.plot(kept, score, color=color, alpha=0.5, linewidth=1)
        right.scatter(kept[-1:], score[-1:], color=color, s=40, label=name, zorder=3)
    for threshold in report["thresholds"]:
        for ax in (left, middle, right):
            ax.axhline(threshold, color="grey", linestyle="--", linewidth=1)
    left.set_xlabel("training wall-clock (s)")
    left.set_title(f"{label} vs wall-clock (dashed: thresholds)")
    middle.set_xlabel("velocity evaluations (thousands)")
    middle.set_title(f"{label} vs NFE")
    right.set_xlabel("diversity kept (% of the base model's)")
    right.set_title(f"{label} vs diversity (dot: end of run)")
    right.invert_xaxis()
    for ax in (left, middle, right):
        ax.set_ylabel(label)
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)
    return Path(path)
