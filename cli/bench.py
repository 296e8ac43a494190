"""``treesdk bench``: the papers' comparison (grpo, mixgrpo, treegrpo, dynamic-treerpo) on one backend."""

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
    seconds: Annotated[float, typer.Option(min=0.001, help="training wall-clock budget per algorithm (evaluation excluded)")] = 210.0,
    iters: Annotated[int, typer.Option(min=1, help="iteration cap per algorithm")] = 10_000,
    eval_every: Annotated[int, typer.Option(min=1, help="iterations between evaluations on the fixed set")] = 5,
    batch: Annotated[int, typer.Option(min=1, help="prompts (trees) per iteration")] = 8,
    steps: Annotated[int, typer.Option(min=1, help="sampling steps T, the same for every algorithm")] = 10,
    reward: Annotated[Optional[list[str]], typer.Option(help="training reward NAME[=WEIGHT]; repeatable")] = None,
    eval_reward: Annotated[Optional[list[str]], typer.Option(help="held-out reward; repeatable")] = None,
    reward_opt: Annotated[Optional[list[str]], typer.Option(help="reward option NAME:KEY=VALUE, e.g. hpsv2.1:checkpoint=/p/HPS_v2.1_compressed.pt")] = None,
    threshold: Annotated[Optional[float], typer.Option(help="reward threshold (default: halfway to the best final gain)")] = None,
    prompts: Annotated[Optional[str], typer.Option(help="file with one training prompt per line")] = None,
    set_: Annotated[Optional[list[str]], typer.Option("--set", help="override for every recipe, DOTTED.KEY=VALUE")] = None,
    resolution: Annotated[Optional[int], typer.Option(min=1, help="image resolution in pixels")] = None,
    device: Annotated[Optional[str], typer.Option(help="torch device")] = None,
    seed: Annotated[int, typer.Option(min=0, help="seed shared by every algorithm")] = 0,
) -> None:
    """Compare algorithms at equal steps, seeds and evaluation set; reward versus training wall-clock."""
    import treesdk
    from treesdk.bench import DEFAULT_ALGORITHMS, run_bench
    from treesdk.io import check_writable_folder

    with clean_errors():
        # everything that can be checked is checked before a model loads or a folder is made
        check_writable_folder(out, "--out")
        overrides = parse_overrides(set_)
        early_prompts = read_prompts(prompts)
        parse_rewards(reward)
        reward_options = parse_reward_options(reward_opt)
        for name in algo or []:
            check_algorithm(name)
        options = backend_options(model, resolution, device, None)
        probe = treesdk.load_backend(backend, **options)
        weights = parse_rewards(reward) or probe.default_rewards()
        if not weights:
            raise ValueError(f"backend {backend!r} has no default reward: name one with --reward")
        heldout_names = list(eval_reward) if eval_reward is not None else [r for r in probe.heldout_rewards() if r not in weights]
        eval_prompts, eval_seeds = probe.eval_set()
        train_prompts = early_prompts or probe.default_prompts()
        names = list(algo) if algo else list(DEFAULT_ALGORITHMS)
        check_reward_options(reward_options, [*weights, *heldout_names])
        console.print(f"[bold]treesdk bench[/] {backend}: {', '.join(names)}; {seconds:.0f} s each, T={steps}, batch={batch}")
        with Progress(TextColumn("{task.description}"), BarColumn(), TextColumn("{task.completed:.0f}/{task.total:.0f} s"),
                      TimeElapsedColumn(), console=console) as progress:
            tasks = {name: progress.add_task(name, total=seconds) for name in names}
            report = run_bench(
                lambda: treesdk.load_backend(backend, **options),
                load_rewards(list(weights), device, reward_options), weights, train_prompts, eval_prompts, eval_seeds,
                heldout=load_rewards(heldout_names, device, reward_options), algorithms=names, overrides=overrides,
                seconds=seconds, max_iters=iters, eval_every=eval_every, batch=batch, steps=steps, seed=seed,
                threshold=threshold, out_dir=out,
                on_progress=lambda name, done, total: progress.update(tasks[name], completed=done),
            )
        print_report(report)
        console.print(f"wrote {out / 'bench.json'} and {out / 'bench.png'}")


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
    table = Table(box=box.SIMPLE_HEAD, title=f"reward threshold {report['threshold']:.4f} (base {report['base']['reward']:.4f})")
    for col in ("algorithm", "s/iter", "NFE\nsamp+trn", "iters", "final\nreward", "held-\nout",
                "s to\nthresh.", "vs\ngrpo"):
        if col == "algorithm":
            table.add_column(col, no_wrap=True, min_width=15)
        else:
            table.add_column(col, justify="right")
    for name, r in report["algorithms"].items():
        speed = report["speedup_vs_grpo"].get(name)
        table.add_row(
            name, f"{r['seconds_per_iter']:.2f}", f"{r['nfe_sampling_per_iter']:.0f}+{r['nfe_training_per_iter']:.0f}",
            str(r["iterations"]), f"{r['final_reward']:.3f}",
            f"{r['final_heldout']:.3f}" if r["final_heldout"] is not None else "-",
            f"{r['seconds_to_threshold']:.1f}" if r["seconds_to_threshold"] is not None else "never",
            f"{speed:.1f}x" if speed is not None else "-",
        )
    console.print(table)


def register(app: typer.Typer) -> None:
    app.command("bench")(bench_command)
