"""``treesdk train``: the same flags for every backend; a thin layer over :func:`treesdk.train`."""

from __future__ import annotations

import sys
import time
from pathlib import Path
from typing import Annotated, Any, Optional

import typer
from treesdk.progress import TrainProgress

from .common import backend_options, clean_errors, console, check_reward_options, load_rewards, parse_reward_options, parse_overrides, parse_rewards
from .flags import apply_first_class, check_option_keys


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
    lora_rank: Annotated[Optional[int], typer.Option(help="LoRA rank (0: train the whole transformer)", rich_help_panel="Model")] = None,
    lora_alpha: Annotated[Optional[float], typer.Option(help="LoRA alpha (default: the rank, scale 1)", rich_help_panel="Model")] = None,
    lora_targets: Annotated[Optional[str], typer.Option(help="comma-separated peft target modules, e.g. attn.to_q,attn.to_v", rich_help_panel="Model")] = None,
    dtype: Annotated[Optional[str], typer.Option(help="weights dtype: float32, bfloat16, float16 (CPU default float32)", rich_help_panel="Model")] = None,
    precision: Annotated[Optional[str], typer.Option(help="compute precision: fp32, or bf16/fp16 autocast around the model (weights keep --dtype)", rich_help_panel="Model")] = None,
    gradient_checkpointing: Annotated[Optional[bool], typer.Option("--gradient-checkpointing/--no-gradient-checkpointing", help="recompute activations in the backward pass (less memory)", rich_help_panel="Model")] = None,
    guidance: Annotated[Optional[float], typer.Option("--guidance", "--cfg", help="guidance scale (FLUX distilled guidance, SD3/digits CFG)", rich_help_panel="Model")] = None,
    max_sequence_length: Annotated[Optional[int], typer.Option(help="text-encoder tokens (T5) per prompt", rich_help_panel="Model")] = None,
    prompt_column: Annotated[Optional[str], typer.Option(help="column/field of --prompts (CSV, JSONL, JSON, parquet, datasets)", rich_help_panel="Data")] = None,
    prompt_split: Annotated[Optional[str], typer.Option(help="split of a datasets folder given to --prompts (default train)", rich_help_panel="Data")] = None,
    optimizer: Annotated[Optional[str], typer.Option(help="adamw, adamw-8bit, adafactor, sgd (recipe optim.optimizer)", rich_help_panel="Optimisation")] = None,
    lr_schedule: Annotated[Optional[str], typer.Option(help="constant, linear or cosine, per iteration (recipe optim.lr_schedule)", rich_help_panel="Optimisation")] = None,
    lr_warmup: Annotated[Optional[int], typer.Option(help="iterations of linear lr warm-up", rich_help_panel="Optimisation")] = None,
    ema_decay: Annotated[float, typer.Option(help="EMA of the trainable weights with this decay (0: off), e.g. 0.999", rich_help_panel="Optimisation")] = 0.0,
    ema_every: Annotated[int, typer.Option(help="optimiser steps between EMA updates", rich_help_panel="Optimisation")] = 1,
    ema_use: Annotated[str, typer.Option(help="where EMA weights are used: eval+export, eval, export, none", rich_help_panel="Optimisation")] = "eval+export",
    report_to: Annotated[Optional[str], typer.Option(help="loggers: jsonl,tensorboard,wandb (default jsonl,tensorboard; 'none')", rich_help_panel="Logging")] = None,
    eval_every: Annotated[int, typer.Option(help="evaluate every N iterations: samples/iter_N.png and logger images (0: start and end only)", rich_help_panel="Logging")] = 0,
) -> None:
    """Post-train a model with a tree (or baseline) RL algorithm; writes a run folder."""
    from treesdk import distributed, launch

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
            flags = {"lora_rank": lora_rank, "lora_alpha": lora_alpha, "lora_targets": lora_targets, "dtype": dtype,
                     "gradient_checkpointing": gradient_checkpointing, "guidance": guidance,
                     "max_sequence_length": max_sequence_length}
            recipe_flags = {"optim.optimizer": optimizer, "optim.lr_schedule": lr_schedule, "optim.lr_warmup": lr_warmup}
            extras = {"flags": flags, "recipe_flags": recipe_flags, "precision": precision, "prompt_column": prompt_column,
                      "prompt_split": prompt_split, "ema": {"decay": ema_decay, "every": ema_every, "use": ema_use},
                      "report_to": report_to, "eval_every": eval_every}
            _train(ctx, backend, model, algo, k, d, steps, iters, batch, reward, eval_reward, resolution, config, out,
                   seed, device, lr, prompts, set_, backend_opt, checkpoint_every, resume, export_format, keep_checkpoints,
                   reward_opt=reward_opt, fsdp=fsdp, extras=extras)
            completed = True
    finally:
        distributed.shutdown(ctx, completed=completed)


def _train(ctx: Any, backend: str, model: str | None, algo: str, k: int | None, d: int | None, steps: int | None,
           iters: int, batch: int, reward: list[str] | None, eval_reward: list[str] | None, resolution: int | None,
           config: str | None, out: Path | None, seed: int, device: str | None, lr: float | None, prompts: str | None,
           set_: list[str] | None, backend_opt: list[str] | None, checkpoint_every: int, resume: bool,
           export_format: str | None, keep_checkpoints: int, reward_opt: list[str] | None = None,
           fsdp: bool = False, extras: dict[str, Any] | None = None) -> None:
    """The body of ``treesdk train`` in one process (rank ``ctx.rank`` of ``ctx.world_size``)."""
    import treesdk
    from treesdk import distributed

    if resume and out is None:
        raise ValueError("--resume needs --out RUN_DIR")
    if ctx.world_size > 1 and ctx.device.type == "cuda" and device in (None, "cuda"):
        device = str(ctx.device)  # one GPU per rank: cuda:LOCAL_RANK
    from treesdk.loggers import parse_report_to
    from treesdk.optimization import EMAConfig, accumulation_summary
    from treesdk.precision import cpu_defaults, default_precision, with_precision
    from treesdk.prompts import load_prompts

    extras = extras or {}
    show = console.print if ctx.is_main else (lambda *a, **kw: None)
    parse_report_to(extras.get("report_to"))  # a typo fails before any model is loaded
    ema = EMAConfig(**extras.get("ema", {}))
    options = backend_options(model, resolution, device, backend_opt)
    valid = option_names("backend", backend)
    check_option_keys("--backend-opt", f"backend {backend!r}", options, valid)
    apply_first_class(options, valid, backend, **extras.get("flags", {}))
    for name, given in parse_reward_options(reward_opt).items():
        check_option_keys("--reward-opt", f"reward {name!r}", given, option_names("reward", name))
    note = cpu_defaults(options.get("device", device), options, valid, ctx.local_world_size)
    if note:
        show(f"[dim]{note}[/]")
    precision = extras.get("precision") or default_precision()
    vm = with_precision(treesdk.load_backend(backend, **options), precision)
    recipe = build_recipe(algo, config, k, d, steps, lr, [*(set_ or []), *(f"{key}={value}" for key, value in
                          extras.get("recipe_flags", {}).items() if value is not None)], vm)
    weights = parse_rewards(reward) or vm.default_rewards()
    if not weights:
        raise ValueError(f"backend {backend!r} has no default reward: name one with --reward NAME[=WEIGHT]")
    heldout = list(eval_reward) if eval_reward is not None else [r for r in vm.heldout_rewards() if r not in weights]
    reward_options = parse_reward_options(reward_opt)
    check_reward_options(reward_options, [*weights, *heldout])
    rewards = load_rewards(list(weights), device, reward_options)
    heldout_models = load_rewards(heldout, device, reward_options)
    train_prompts = (load_prompts(prompts, extras.get("prompt_column"), extras.get("prompt_split"))
                     if prompts else vm.default_prompts())
    eval_prompts, eval_seeds = vm.eval_set()
    run_dir = out or Path("runs") / f"{recipe.name}-{time.strftime('%Y%m%d-%H%M%S')}"
    run_dir = ctx.broadcast_object(run_dir)  # rank 0's clock names the folder
    fmt = export_format or vm.default_export_format()
    if fsdp and vm.fsdp_modules() is None:  # checked on one process too (raises for LoRA runs)
        raise ValueError(f"backend {backend!r} does not support --fsdp (its fsdp_modules() returns None); drop --fsdp")
    ctx.broadcast_parameters(vm.trainable_parameters())  # every rank starts from rank 0's weights
    resume = distributed.resume_decision(ctx, run_dir, resume)  # torchrun restarts resume by themselves

    show(
        f"[bold]treesdk train[/] backend={backend} algo={recipe.name} T={recipe.steps} k={recipe.tree.k} "
        f"d={recipe.tree.d} roots={recipe.tree.roots} batch={batch} iters={iters} rewards={weights} -> {run_dir}"
        + (f" ranks={ctx.world_size} ({ctx.backend})" if ctx.world_size > 1 else "")
        + (" fsdp" if fsdp and ctx.world_size > 1 else "")
        + (" (resuming)" if resume else "")
        + (f" precision={precision}" if precision != "fp32" else "")
    )
    o = recipe.optim
    show(f"[dim]optimiser {o.optimizer} lr {o.lr:g} ({o.lr_schedule}, warm-up {o.lr_warmup})"
         + (f", EMA decay {ema.decay:g} every {ema.every} step(s) for {ema.use}" if ema.enabled else "")
         + f"; {accumulation_summary(o, batch, ctx.world_size, recipe.chunk)}[/]")
    with TrainProgress(iters, console=console, enabled=ctx.is_main) as progress:  # only rank 0 prints progress
        run = treesdk.train(
            recipe, vm, rewards, train_prompts, weights=weights, iters=iters, batch=batch, seed=seed,
            out_dir=run_dir, eval_prompts=eval_prompts, eval_seeds=eval_seeds, eval_rewards=heldout_models,
            checkpoint_every=checkpoint_every, keep_checkpoints=keep_checkpoints, resume=resume, export_format=fmt,
            config={"cli": {"algo": algo, "config": config, "precision": precision, "prompts": prompts,
                            "prompt_column": extras.get("prompt_column"), "prompt_split": extras.get("prompt_split")}},
            backend_options=options, on_iteration=progress.on_iteration, on_step=progress.on_step, ema=ema,
            report_to=extras.get("report_to"), eval_every=int(extras.get("eval_every") or 0),
            **ctx.train_kwargs(fsdp=fsdp),
        )
    if ctx.is_main:
        print_summary(run)


def print_summary(run: Any) -> None:
    """Reward before/after on the evaluation set, per reward (:func:`treesdk.progress.print_summary`)."""
    from treesdk.progress import print_summary as show_summary

    show_summary(run, console)


def option_names(kind: str, name: str) -> set[str] | None:
    """Keyword options the registered ``kind`` plugin ``name`` takes (None: any, or not inspectable)."""
    import inspect

    from treesdk import registry

    try:
        factory = registry.load(kind, name)
        params = inspect.signature(factory).parameters
    except Exception:  # noqa: BLE001 - an unknown name fails later with the registry's own message
        return None
    if any(p.kind is inspect.Parameter.VAR_KEYWORD for p in params.values()):
        return None
    return {n for n, p in params.items() if p.kind in (p.POSITIONAL_OR_KEYWORD, p.KEYWORD_ONLY) and n != "self"}


def register(app: typer.Typer) -> None:
    app.command("train")(train_command)
