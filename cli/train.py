"""``treesdk train``: the same flags for every backend; a thin layer over :func:`treesdk.train`."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Annotated, Any, Optional

import typer
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn
from rich.table import Table

from .common import backend_options, clean_errors, console, load_rewards, parse_overrides, parse_rewards, read_prompts


def build_recipe(algo: str, config: str | None, k: int | None, d: int | None, steps: int | None,
                 lr: float | None, sets: list[str] | None, backend: Any) -> Any:
    """Preset or recipe file, then the backend's scale defaults, then the user's overrides."""
    from treesdk.recipe import load_recipe

    overrides: dict[str, Any] = dict(backend.recipe_defaults())
    for key, value in (("tree.k", k), ("tree.d", d), ("steps", steps), ("optim.lr", lr)):
        if value is not None:
            overrides[key] = value
    overrides.update(parse_overrides(sets))
    return load_recipe(config if config else algo, **overrides)


def train_command(
    backend: Annotated[str, typer.Option(help="velocity-model backend (entry point in treesdk.backends)")] = "digits",
    model: Annotated[Optional[str], typer.Option(help="checkpoint path or local HF cache id; default: the backend's")] = None,
    algo: Annotated[str, typer.Option(help="preset: grpo, mixgrpo, treegrpo, dynamic-treerpo (or a recipe file)")] = "treegrpo",
    k: Annotated[Optional[int], typer.Option(help="branching factor of the tree (overrides the recipe)")] = None,
    d: Annotated[Optional[int], typer.Option(help="tree depth = SDE window length in steps")] = None,
    steps: Annotated[Optional[int], typer.Option(help="sampling steps T")] = None,
    iters: Annotated[int, typer.Option(help="total iterations of the run")] = 60,
    batch: Annotated[int, typer.Option(help="prompts (trees) per iteration, over all ranks")] = 8,
    reward: Annotated[Optional[list[str]], typer.Option(help="training reward NAME or NAME=WEIGHT; repeatable")] = None,
    eval_reward: Annotated[Optional[list[str]], typer.Option(help="held-out reward scored only at evaluation; repeatable")] = None,
    resolution: Annotated[Optional[int], typer.Option(help="image resolution in pixels (backend default if unset)")] = None,
    config: Annotated[Optional[str], typer.Option(help="recipe file (YAML/JSON); replaces --algo")] = None,
    out: Annotated[Optional[Path], typer.Option(help="run folder (default runs/<algo>-<time>)")] = None,
    seed: Annotated[int, typer.Option(help="seed of prompts order, windows and tree noise")] = 0,
    device: Annotated[Optional[str], typer.Option(help="torch device (cpu, cuda, cuda:1); backend default if unset")] = None,
    lr: Annotated[Optional[float], typer.Option(help="learning rate (overrides the recipe)")] = None,
    prompts: Annotated[Optional[str], typer.Option(help="file with one training prompt per line")] = None,
    set_: Annotated[Optional[list[str]], typer.Option("--set", help="recipe override DOTTED.KEY=VALUE, e.g. noise.level=0.8")] = None,
    backend_opt: Annotated[Optional[list[str]], typer.Option(help="backend option KEY=VALUE, e.g. lora_rank=32")] = None,
    checkpoint_every: Annotated[int, typer.Option(help="iterations between checkpoints (0 = at the end)")] = 0,
    resume: Annotated[bool, typer.Option(help="continue the run in --out from its last checkpoint")] = False,
    export_format: Annotated[Optional[str], typer.Option(help="format exported at the end (backend default)")] = None,
) -> None:
    """Post-train a model with a tree (or baseline) RL algorithm; writes a run folder."""
    import treesdk

    with clean_errors():
        if resume and out is None:
            raise ValueError("--resume needs --out RUN_DIR")
        options = backend_options(model, resolution, device, backend_opt)
        vm = treesdk.load_backend(backend, **options)
        recipe = build_recipe(algo, config, k, d, steps, lr, set_, vm)
        weights = parse_rewards(reward) or vm.default_rewards()
        if not weights:
            raise ValueError(f"backend {backend!r} has no default reward: name one with --reward NAME[=WEIGHT]")
        heldout = list(eval_reward) if eval_reward is not None else [r for r in vm.heldout_rewards() if r not in weights]
        rewards = load_rewards(list(weights), device)
        heldout_models = load_rewards(heldout, device)
        train_prompts = read_prompts(prompts) or vm.default_prompts()
        eval_prompts, eval_seeds = vm.eval_set()
        run_dir = out or Path("runs") / f"{recipe.name}-{time.strftime('%Y%m%d-%H%M%S')}"
        fmt = export_format or (vm.export_formats[0] if vm.export_formats else None)

        console.print(
            f"[bold]treesdk train[/] backend={backend} algo={recipe.name} T={recipe.steps} k={recipe.tree.k} "
            f"d={recipe.tree.d} roots={recipe.tree.roots} batch={batch} iters={iters} rewards={weights} -> {run_dir}"
        )
        with Progress(
            TextColumn("[progress.description]{task.description}"), BarColumn(), MofNCompleteColumn(),
            TextColumn("{task.fields[info]}"), TimeElapsedColumn(), console=console, transient=False,
        ) as progress:
            task = progress.add_task("training", total=iters, info="")

            def on_iteration(row: dict[str, Any]) -> None:
                progress.update(
                    task, completed=row["iteration"],
                    info=f"reward {row['reward_mean']:.3f}  nfe {row['nfe_sampling']}+{row['nfe_training']}  "
                         f"{row['seconds']:.2f} s/iter",
                )

            run = treesdk.train(
                recipe, vm, rewards, train_prompts, weights=weights, iters=iters, batch=batch, seed=seed,
                out_dir=run_dir, eval_prompts=eval_prompts, eval_seeds=eval_seeds, eval_rewards=heldout_models,
                checkpoint_every=checkpoint_every, resume=resume, export_format=fmt,
                config={"cli": {"algo": algo, "config": config}}, backend_options=options, on_iteration=on_iteration,
            )
        print_summary(run)


def print_summary(run: Any) -> None:
    """Reward before/after on the evaluation set, per reward."""
    table = Table(title=f"evaluation set: before vs after ({run.iterations} iterations)")
    table.add_column("reward")
    table.add_column("before", justify="right")
    table.add_column("after", justify="right")
    table.add_column("change", justify="right")
    for key in sorted(set(run.eval_before) | set(run.eval_after)):
        b, a = run.eval_before.get(key), run.eval_after.get(key)
        change = f"{a - b:+.4f}" if a is not None and b is not None else "-"
        table.add_row(key.removesuffix("_mean"), f"{b:.4f}" if b is not None else "-", f"{a:.4f}" if a is not None else "-", change)
    console.print(table)
    if run.interrupted:
        console.print(f"[yellow]interrupted: checkpoint written at iteration {run.iterations}; resume with --resume[/]")
    console.print(f"run folder: {run.out_dir}" + (f"; exported: {', '.join(run.exported)}" if run.exported else ""))


def register(app: typer.Typer) -> None:
    app.command("train")(train_command)
