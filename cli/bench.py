"""``treesdk bench``: the papers' comparison (grpo, mixgrpo, treegrpo, dynamic-treerpo) on one backend
(the runner is :mod:`treesdk_cli.bench_runner`)."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Optional

import typer
from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn
from rich import box
from rich.table import Table

from .common import backend_options, clean_errors, console, check_reward_options, load_rewards, parse_reward_options, parse_overrides, parse_rewards, read_prompts


def bench_command(
    out: Annotated[Path, typer.Option(help="folder for bench.json and bench.png")] = Path("bench"),
    backend: Annotated[str, typer.Option(help="backend to compare on")] = "digits",
    model: Annotated[Optional[str], typer.Option(help="checkpoint path or local HF cache id")] = None,
    algo: Annotated[Optional[list[str]], typer.Option(help="algorithm (preset or recipe file); repeatable")] = None,
    seconds: Annotated[Optional[float], typer.Option(min=0.001, help="training wall-clock budget per algorithm (evaluation excluded; default 210, or none with --nfe; inf: none, --iters caps it, bench.json says null)")] = None,
    nfe: Annotated[Optional[int], typer.Option(min=1, help="velocity-evaluation budget per algorithm (sampling, training and reference forwards; the same compute whatever else the machine runs)")] = None,
    iters: Annotated[int, typer.Option(min=1, help="iteration cap per algorithm")] = 10_000,
    eval_every: Annotated[int, typer.Option(min=1, help="iterations between evaluations on the fixed set")] = 5,
    eval_every_nfe: Annotated[Optional[int], typer.Option(min=1, help="evaluate whenever this many more velocity evaluations have run (instead of --eval-every)")] = None,
    batch: Annotated[int, typer.Option(min=1, help="prompts (trees) per iteration")] = 8,
    steps: Annotated[int, typer.Option(min=1, help="sampling steps T, the same for every algorithm")] = 10,
    reward: Annotated[Optional[list[str]], typer.Option(help="training reward NAME[=WEIGHT]; repeatable")] = None,
    eval_reward: Annotated[Optional[list[str]], typer.Option(help="held-out reward; repeatable")] = None,
    reward_opt: Annotated[Optional[list[str]], typer.Option(help="reward option NAME:KEY=VALUE, e.g. hpsv2.1:checkpoint=/p/HPS_v2.1_compressed.pt")] = None,
    threshold: Annotated[Optional[list[float]], typer.Option(help="score threshold; give two (default: base + 50% and 90% of the best final gain)")] = None,
    threshold_on: Annotated[Optional[str], typer.Option(help="score the thresholds are on: heldout (default when there is a held-out reward) or reward")] = None,
    precision_tolerance: Annotated[float, typer.Option(min=0.0, help="a crossing counts only at precision >= the base model's minus this")] = 0.02,
    task: Annotated[str, typer.Option(help="digits task: strict (classifier at temperature 3; does not saturate) or default")] = "strict",
    interleave: Annotated[bool, typer.Option(help="run the algorithms round-robin by iteration (else one after another)")] = True,
    backend_defaults: Annotated[bool, typer.Option(help="apply the backend's recipe_defaults (digits: lr 1e-4); --no-backend-defaults runs the presets at the papers' values (T stays common)")] = True,
    prompts: Annotated[Optional[str], typer.Option(help="file with one training prompt per line")] = None,
    set_: Annotated[Optional[list[str]], typer.Option("--set", help="override for every recipe, DOTTED.KEY=VALUE")] = None,
    resolution: Annotated[Optional[int], typer.Option(min=1, help="image resolution in pixels")] = None,
    device: Annotated[Optional[str], typer.Option(help="torch device")] = None,
    seed: Annotated[int, typer.Option(min=0, help="seed shared by every algorithm")] = 0,
) -> None:
    """Compare algorithms at equal steps, seeds and evaluation set: reward versus wall-clock, CPU
    seconds and velocity evaluations, and the diversity each keeps."""
    import treesdk
    from treesdk.io import check_writable_folder

    from treesdk.recipes import load_recipe

    from .bench_runner import DEFAULT_ALGORITHMS, TASKS, run_bench

    if seconds is None:
        seconds = float("inf") if nfe is not None else 210.0
    with clean_errors():
        # everything that can be checked is checked before a model loads or a folder is made
        check_writable_folder(out, "--out")
        overrides = parse_overrides(set_)
        early_prompts = read_prompts(prompts)
        parse_rewards(reward)
        reward_options = parse_reward_options(reward_opt)
        for name in algo or []:
            check_algorithm(name)
        if task not in TASKS:
            raise ValueError(f"--task {task!r} is not a bench task; choose one of {', '.join(TASKS)}")
        if threshold_on not in (None, "heldout", "reward"):
            raise ValueError(f"--threshold-on must be heldout or reward, got {threshold_on!r}")
        if threshold is not None and len(threshold) != 2:
            raise ValueError(f"--threshold: give it twice (two thresholds), got {len(threshold)} value(s)")
        options = backend_options(model, resolution, device, None)
        probe = treesdk.load_backend(backend, **options)
        weights = parse_rewards(reward) or probe.default_rewards()
        if not weights:
            raise ValueError(f"backend {backend!r} has no default reward: name one with --reward")
        heldout_names = list(eval_reward) if eval_reward is not None else [r for r in probe.heldout_rewards() if r not in weights]
        eval_prompts, eval_seeds = probe.eval_set()
        train_prompts = early_prompts or probe.default_prompts()
        names = list(algo) if algo else list(DEFAULT_ALGORITHMS)
        for name in names:  # each recipe as the runner builds it: a recipe error is one line before any training
            load_recipe(name, **{**(probe.recipe_defaults() if backend_defaults else {}), "steps": steps, **overrides})
        reward_options = {**{name: dict(opts) for name, opts in TASKS[task].items() if name in weights}, **reward_options}
        check_reward_options(reward_options, [*weights, *heldout_names])
        task_label = f" ({task} task)" if any(name in weights for name in TASKS[task]) else ""
        console.print(f"[bold]treesdk bench[/] {backend}{task_label}: {', '.join(names)}; {_budget(seconds, nfe)} each, T={steps}, "
                      f"batch={batch}, {'interleaved' if interleave else 'one after another'}, "
                      f"{'the backend' + chr(39) + 's recipe defaults' if backend_defaults else 'the papers' + chr(39) + ' values'}")
        with Progress(TextColumn("{task.description}"), BarColumn(), TextColumn("{task.percentage:.0f}% of the budget"),
                      TimeElapsedColumn(), console=console) as progress:
            tasks = {name: progress.add_task(name, total=1.0) for name in names}
            report = run_bench(
                lambda: treesdk.load_backend(backend, **options),
                load_rewards(list(weights), device, reward_options), weights, train_prompts, eval_prompts, eval_seeds,
                heldout=load_rewards(heldout_names, device, reward_options), algorithms=names, overrides=overrides,
                seconds=seconds, nfe=float(nfe) if nfe is not None else float("inf"), max_iters=iters, eval_every=eval_every,
                eval_every_nfe=eval_every_nfe, batch=batch, steps=steps, seed=seed,
                thresholds=threshold, threshold_on=threshold_on if threshold_on or heldout_names else "reward",
                precision_tolerance=precision_tolerance, backend_defaults=backend_defaults, interleave=interleave, task=task, out_dir=out,
                on_progress=lambda name, done, total: progress.update(tasks[name], completed=done),
            )
        print_report(report)
        console.print(f"wrote {out / 'bench.json'} and {out / 'bench.png'}")


def _budget(seconds: float, nfe: int | None) -> str:
    """The per-algorithm budget in words: ``120 s``, ``12000 NFE`` or ``120 s or 12000 NFE``."""
    parts = ([f"{seconds:.0f} s"] if seconds != float("inf") else []) + ([f"{nfe} NFE"] if nfe is not None else [])
    return " or ".join(parts) or "no time limit"


def check_algorithm(name: str) -> None:
    """``--algo NAME``: a registered preset or a recipe file that exists (read before any model loads)."""
    from pathlib import Path as _Path

    from treesdk import registry
    from treesdk.recipes.loading import read_recipe_file

    if _Path(name).suffix.lower() in {".yaml", ".yml", ".json"}:
        read_recipe_file(name)
    else:
        registry.load("algorithm", name)


def print_report(report: dict) -> None:
    """One row per algorithm; each threshold cell is ``wall s / CPU s / thousands of NFE`` to reach it."""
    t1, t2 = report["thresholds"]
    key = report.get("threshold_on", "reward")
    guard = report.get("min_precision")
    table = Table(box=box.SIMPLE_HEAD, title=f"base {'held-out score' if key == 'heldout' else 'reward'} {report['base'][key]:.3f}; "
                                               f"thresholds {t1:.3f}, {t2:.3f}"
                                               + (f" at precision >= {guard:.2f}" if guard is not None else "")
                                               + " (cells: wall s / CPU s / kNFE)")
    for col in ("algorithm", "iters", "reward", "held-\nout", "diver-\nsity", "pixel\ndiv.", "preci-\nsion", "recall", "threshold 1",
                "threshold 2"):
        table.add_column(col, no_wrap=True, min_width=15) if col == "algorithm" else table.add_column(col, justify="right")

    def cell(hit: dict | None) -> str:
        return f"{hit['seconds']:.0f}/{hit['cpu_seconds']:.0f}/{hit['nfe'] / 1000:.1f}" if hit else "never"

    for name, r in report["algorithms"].items():
        if r["error"]:
            table.add_row(name, "-", "error", r["error"][:30], "", "", "", "", "", "")
            continue
        table.add_row(
            name, str(r["iterations"]), f"{r['final_reward']:.3f}",
            f"{r['final_heldout']:.3f}" if r["final_heldout"] is not None else "-",
            f"{100 * r['diversity_kept']:.0f}%" if r["diversity_kept"] is not None else "-",
            f"{100 * r['diversity_pixels_kept']:.0f}%" if r.get("diversity_pixels_kept") is not None else "-",
            *(f"{r[key]:.2f}" if r.get(key) is not None else "-" for key in ("final_precision", "final_recall")),
            cell(r["to_threshold"][0]), cell(r["to_threshold"][1]),
        )
    console.print(table)


def register(app: typer.Typer) -> None:
    app.command("bench")(bench_command)
