"""``treesdk train``: the same flags for every backend; a thin layer over :func:`treesdk.train`."""

from __future__ import annotations

import contextlib
import sys
import time
from pathlib import Path
from typing import Annotated, Any, Optional

import typer
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn
from rich.table import Table

from .common import backend_options, clean_errors, console, check_reward_options, load_rewards, parse_reward_options, parse_overrides, parse_rewards, read_prompts


def build_recipe(algo: str, config: str | None, k: int | None, d: int | None, steps: int | None,
                 lr: float | None, sets: list[str] | None, backend: Any) -> Any:
    """Preset or recipe file, then the backend's scale defaults (presets only: a recipe file's
    values are the user's own), then the command-line overrides."""
    from treesdk.recipe import load_recipe

    overrides: dict[str, Any] = {} if config else dict(backend.recipe_defaults())
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
    reward_opt: Annotated[Optional[list[str]], typer.Option(help="reward option NAME:KEY=VALUE, e.g. hpsv2.1:checkpoint=/p/HPS_v2.1_compressed.pt")] = None,
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
    nproc_per_node: Annotated[int, typer.Option(help="processes (GPUs) per node; >1 launches through torchrun")] = 1,
    nnodes: Annotated[int, typer.Option(help="number of nodes (run the same command on each)")] = 1,
    node_rank: Annotated[Optional[int], typer.Option(help="this node's rank 0..nnodes-1 (static rendezvous; default: c10d assigns)")] = None,
    rdzv_endpoint: Annotated[Optional[str], typer.Option(help="HOST:PORT of the rendezvous (first node), for --nnodes > 1")] = None,
    max_restarts: Annotated[int, typer.Option(help="torchrun restarts after a worker failure; each resumes from the last checkpoint")] = 0,
    keep_checkpoints: Annotated[int, typer.Option(help="newest checkpoints kept in the run folder")] = 3,
    fsdp: Annotated[bool, typer.Option(help="shard a full fine-tune over the ranks with FSDP2 fully_shard (not for LoRA)")] = False,
    dry_run: Annotated[bool, typer.Option("--dry-run", help="print the plan (calls, leaves, memory per rank) and exit; loads no model")] = False,
    json_: Annotated[bool, typer.Option("--json", help="with --dry-run: the plan as one JSON object")] = False,
    gpu_memory: Annotated[Optional[float], typer.Option(help="with --dry-run: GiB per GPU; the plan says whether the run fits")] = None,
) -> None:
    """Post-train a model with a tree (or baseline) RL algorithm; writes a run folder."""
    from treesdk import distributed, launch

    if dry_run or json_ or gpu_memory is not None:
        with clean_errors():
            _dry_run(dry_run, json_, gpu_memory, backend, model, algo, config, k, d, steps, lr, set_, resolution,
                     device, backend_opt, batch, iters, seed, nproc_per_node * nnodes)
        return

    if launch.needs_launch(nproc_per_node, nnodes, max_restarts):
        with clean_errors():
            if resume and out is None:
                raise ValueError("--resume needs --out RUN_DIR")
            launch.torchrun_argv([], nproc_per_node=nproc_per_node, nnodes=nnodes, node_rank=node_rank,
                                 rdzv_endpoint=rdzv_endpoint, max_restarts=max_restarts, run_dir=out or "runs")  # checks
            argv = sys.argv[1:]
            if "train" not in argv:
                raise ValueError("--nproc-per-node/--nnodes/--max-restarts need the command line (sys.argv) of `treesdk train`")
            worker = launch.strip_launch_flags(argv[argv.index("train"):])
            run_dir = out
            if run_dir is None:  # one folder for every rank, node and restart
                run_dir = Path("runs") / f"{algo if config is None else Path(config).stem}-{time.strftime('%Y%m%d-%H%M%S')}"
                worker += ["--out", str(run_dir)]
            args = launch.torchrun_argv(
                worker, nproc_per_node=nproc_per_node, nnodes=nnodes, node_rank=node_rank,
                rdzv_endpoint=rdzv_endpoint, max_restarts=max_restarts, run_dir=run_dir,
            )
        code = launch.launch(args)
        if code:
            raise typer.Exit(code=code)
        return

    ctx = None
    completed = False
    try:
        with clean_errors():
            ctx = distributed.init_distributed()
            _train(ctx, backend, model, algo, k, d, steps, iters, batch, reward, eval_reward, resolution, config, out,
                   seed, device, lr, prompts, set_, backend_opt, checkpoint_every, resume, export_format, keep_checkpoints,
                   reward_opt=reward_opt, fsdp=fsdp)
            completed = True
    finally:
        distributed.shutdown(ctx, completed=completed)


def _train(ctx: Any, backend: str, model: str | None, algo: str, k: int | None, d: int | None, steps: int | None,
           iters: int, batch: int, reward: list[str] | None, eval_reward: list[str] | None, resolution: int | None,
           config: str | None, out: Path | None, seed: int, device: str | None, lr: float | None, prompts: str | None,
           set_: list[str] | None, backend_opt: list[str] | None, checkpoint_every: int, resume: bool,
           export_format: str | None, keep_checkpoints: int, reward_opt: list[str] | None = None,
           fsdp: bool = False) -> None:
    """The body of ``treesdk train`` in one process (rank ``ctx.rank`` of ``ctx.world_size``)."""
    import treesdk
    from treesdk import distributed

    if resume and out is None:
        raise ValueError("--resume needs --out RUN_DIR")
    if ctx.world_size > 1 and ctx.device.type == "cuda" and device in (None, "cuda"):
        device = str(ctx.device)  # one GPU per rank: cuda:LOCAL_RANK
    options = backend_options(model, resolution, device, backend_opt)
    vm = treesdk.load_backend(backend, **options)
    recipe = build_recipe(algo, config, k, d, steps, lr, set_, vm)
    weights = parse_rewards(reward) or vm.default_rewards()
    if not weights:
        raise ValueError(f"backend {backend!r} has no default reward: name one with --reward NAME[=WEIGHT]")
    heldout = list(eval_reward) if eval_reward is not None else [r for r in vm.heldout_rewards() if r not in weights]
    reward_options = parse_reward_options(reward_opt)
    check_reward_options(reward_options, [*weights, *heldout])
    rewards = load_rewards(list(weights), device, reward_options)
    heldout_models = load_rewards(heldout, device, reward_options)
    train_prompts = read_prompts(prompts) or vm.default_prompts()
    eval_prompts, eval_seeds = vm.eval_set()
    run_dir = out or Path("runs") / f"{recipe.name}-{time.strftime('%Y%m%d-%H%M%S')}"
    run_dir = ctx.broadcast_object(run_dir)  # rank 0's clock names the folder
    fmt = export_format or vm.default_export_format()
    if fsdp and vm.fsdp_modules() is None:  # checked on one process too (raises for LoRA runs)
        raise ValueError(f"backend {backend!r} does not support --fsdp (its fsdp_modules() returns None); drop --fsdp")
    ctx.broadcast_parameters(vm.trainable_parameters())  # every rank starts from rank 0's weights
    resume = distributed.resume_decision(ctx, run_dir, resume)  # torchrun restarts resume by themselves

    show = console.print if ctx.is_main else (lambda *a, **kw: None)
    show(
        f"[bold]treesdk train[/] backend={backend} algo={recipe.name} T={recipe.steps} k={recipe.tree.k} "
        f"d={recipe.tree.d} roots={recipe.tree.roots} batch={batch} iters={iters} rewards={weights} -> {run_dir}"
        + (f" ranks={ctx.world_size} ({ctx.backend})" if ctx.world_size > 1 else "")
        + (" fsdp" if fsdp and ctx.world_size > 1 else "")
        + (" (resuming)" if resume else "")
    )
    bar = Progress(
        TextColumn("[progress.description]{task.description}"), BarColumn(), MofNCompleteColumn(),
        TextColumn("{task.fields[info]}"), TimeElapsedColumn(), console=console, transient=False,
    )
    with bar if ctx.is_main else contextlib.nullcontext(bar) as progress:  # only rank 0 prints progress
        task = progress.add_task("training", total=iters, info="")

        def on_iteration(row: dict[str, Any]) -> None:
            if not ctx.is_main:
                return
            progress.update(
                task, completed=row["iteration"],
                info=f"reward {row['reward_mean']:.3f}  nfe {row['nfe_sampling']}+{row['nfe_training']}  "
                     f"{row['seconds']:.2f} s/iter",
            )

        run = treesdk.train(
            recipe, vm, rewards, train_prompts, weights=weights, iters=iters, batch=batch, seed=seed,
            out_dir=run_dir, eval_prompts=eval_prompts, eval_seeds=eval_seeds, eval_rewards=heldout_models,
            checkpoint_every=checkpoint_every, keep_checkpoints=keep_checkpoints, resume=resume, export_format=fmt,
            config={"cli": {"algo": algo, "config": config}}, backend_options=options, on_iteration=on_iteration,
            **ctx.train_kwargs(fsdp=fsdp),
        )
    if ctx.is_main:
        print_summary(run)


def _dry_run(dry_run: bool, as_json: bool, gpu_memory: float | None, backend: str, model: str | None, algo: str,
             config: str | None, k: int | None, d: int | None, steps: int | None, lr: float | None,
             sets: list[str] | None, resolution: int | None, device: str | None, backend_opt: list[str] | None,
             batch: int, iters: int, seed: int, world_size: int) -> None:
    """``--dry-run [--json] [--gpu-memory GB]`` (see :mod:`treesdk_cli.dry_run`)."""
    from .dry_run import dry_run as print_dry_run

    if not dry_run:
        raise ValueError("--json and --gpu-memory describe the plan of --dry-run; add --dry-run")
    if gpu_memory is not None and gpu_memory <= 0:
        raise ValueError(f"--gpu-memory must be a positive number of GiB per GPU, got {gpu_memory}")
    options = backend_options(model, resolution, device, backend_opt)
    print_dry_run(backend, model, options, lambda vm: build_recipe(algo, config, k, d, steps, lr, sets, vm),
                  batch, iters, seed, world_size, gpu_memory, as_json)


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
