"""``treesdk train``: the same flags for every backend; a thin layer over :func:`treesdk.train`."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Annotated, Any, Optional

import typer
from treesdk.errors import UserError

from .common import backend_options, clean_errors, console, parse_overrides, parse_reward_options, parse_rewards
from .flags import apply_first_class, check_option_keys


def build_config(config_file: str | None, flags: dict[str, Any]) -> Any:
    """The :class:`treesdk.RunConfig` of ``treesdk train``: a run file given with ``--config`` (or a
    plain recipe file, told apart by its keys), then every flag given on the command line on top."""
    from treesdk.training.config import is_run_file_data, read_config_file, run_config_from_data

    data: dict[str, Any] = {}
    if config_file is not None:
        raw = read_config_file(config_file)
        data = raw if is_run_file_data(raw) else {"recipe": config_file}
    f = flags
    backend = dict(data.get("backend") or {})
    if f["backend"] is not None:
        backend["name"] = f["backend"]
    extra = backend_options(f["model"], f["resolution"], None, f["backend_opt"])
    name = backend.get("name") or "digits"
    valid = option_names("backend", name)
    check_option_keys("--backend-opt", f"backend {name!r}", extra, valid)
    extra = apply_first_class(extra, valid, name, **{key: f[key] for key in FIRST_CLASS_FLAGS})
    if extra:
        backend["options"] = {**(backend.get("options") or {}), **extra}
    check_option_keys("backend.options:", f"backend {name!r}", backend.get("options") or {}, valid)
    if backend:
        data["backend"] = backend
    if f["algo"] is not None and not (config_file is not None and "recipe" in data and data["recipe"] == config_file):
        data["recipe"] = f["algo"]
    overrides = {key: value for key, value in (("tree.k", f["k"]), ("tree.d", f["d"]), ("steps", f["steps"]), ("optim.lr", f["lr"]))
                 if value is not None}
    overrides.update(parse_overrides(f["set_"]))
    if overrides:
        data["overrides"] = {**(data.get("overrides") or {}), **overrides}
    if f["reward"]:
        data["rewards"] = parse_rewards(f["reward"])
    if f["eval_reward"] is not None:
        data["eval_rewards"] = list(f["eval_reward"])
    if f["reward_opt"]:
        data["reward_options"] = {**(data.get("reward_options") or {}), **parse_reward_options(f["reward_opt"])}
    if f["prompts"] is not None:
        data["prompts"] = {"file": f["prompts"]}
    for key in ("column", "split"):
        if f[f"prompt_{key}"] is not None:
            data["prompts"] = {**(data.get("prompts") or {}), key: f[f"prompt_{key}"]}
    overrides = {f"optim.{key}": f[key] for key in ("optimizer", "lr_schedule", "lr_warmup") if f[key] is not None}
    if overrides:
        data["overrides"] = {**(data.get("overrides") or {}), **overrides}
    for key in ("iters", "batch", "seed", "device", "dtype", "precision"):
        if f[key] is not None:
            data[key] = f[key]
    for section, key, flag in (("checkpoint", "every", "checkpoint_every"), ("checkpoint", "keep", "keep_checkpoints"),
                               ("export", "format", "export_format"), ("launch", "nproc_per_node", "nproc_per_node"),
                               ("launch", "nnodes", "nnodes"), ("launch", "node_rank", "node_rank"),
                               ("launch", "rdzv_endpoint", "rdzv_endpoint"), ("launch", "max_restarts", "max_restarts"),
                               ("launch", "fsdp", "fsdp"), ("ema", "decay", "ema_decay"), ("ema", "every", "ema_every"),
                               ("ema", "use", "ema_use"), ("logging", "report_to", "report_to"),
                               ("logging", "eval_every", "eval_every"), ("logging", "profile", "profile")):
        if f[flag] is not None:
            data[section] = {**(data.get(section) or {}), key: f[flag]}
    if "precision" not in data:
        from treesdk.training.precision import default_precision

        data["precision"] = default_precision()  # accelerate launch --mixed_precision bf16
    for reward, given_options in {**(data.get("reward_options") or {}),
                                  **{n: r.get("options") or {} for n, r in _reward_sections(data).items()}}.items():
        check_option_keys("--reward-opt", f"reward {reward!r}", given_options, option_names("reward", reward))
    given = {field: flag for field, (flag, var) in FLAG_OF_FIELD.items() if f.get(var) is not None}
    given.update({f"rewards.{name}.weight": f"--reward {name}" for name in data.get("rewards", {}) if f["reward"]})
    return run_config_from_data(data, config_file or "<command line>", given)


#: RunConfig field -> (flag, train_command parameter), to name the flag in validation errors
FLAG_OF_FIELD = {
    "iters": ("--iters", "iters"), "batch": ("--batch", "batch"), "seed": ("--seed", "seed"),
    "checkpoint.every": ("--checkpoint-every", "checkpoint_every"), "checkpoint.keep": ("--keep-checkpoints", "keep_checkpoints"),
    "export.format": ("--export-format", "export_format"), "device": ("--device", "device"),
    "precision": ("--precision", "precision"), "ema.decay": ("--ema-decay", "ema_decay"),
    "ema.every": ("--ema-every", "ema_every"), "ema.use": ("--ema-use", "ema_use"),
    "logging.report_to": ("--report-to", "report_to"), "logging.eval_every": ("--eval-every", "eval_every"),
    "logging.profile": ("--profile", "profile"),
}


#: flags that become backend options (``treesdk_cli.flags.FIRST_CLASS``; --dtype is RunConfig.dtype)
FIRST_CLASS_FLAGS = ("lora_rank", "lora_alpha", "lora_targets", "gradient_checkpointing", "guidance", "max_sequence_length")


def _reward_sections(data: dict[str, Any]) -> dict[str, dict[str, Any]]:
    """``rewards``/``eval_rewards`` of run-file data that carry options (``{name: {options: ...}}``)."""
    out: dict[str, dict[str, Any]] = {}
    for key in ("rewards", "eval_rewards"):
        section = data.get(key)
        if isinstance(section, dict):
            out.update({n: v for n, v in section.items() if isinstance(v, dict)})
    return out


def option_names(kind: str, name: str) -> set[str] | None:
    """Keyword options the registered ``kind`` plugin ``name`` takes (None: any, or an unknown name,
    which fails later with the registry's own message)."""
    from treesdk import registry
    from treesdk.training.runs import accepted_options

    try:
        factory = registry.load(kind, name)
    except Exception:  # noqa: BLE001 - unknown or broken plugin: reported where it is loaded
        return None
    accepted = accepted_options(factory)
    adapter = getattr(factory, "adapter_class", None)  # a diffusers family backend: **family_options
    if accepted is None and adapter is not None:
        import inspect

        named = {n for n, p in inspect.signature(factory).parameters.items() if p.kind is not p.VAR_KEYWORD}
        family = accepted_options(adapter)
        accepted = None if family is None else named | family
    return None if accepted is None else accepted - {"self"}


def train_command(
    backend: Annotated[Optional[str], typer.Option(help="velocity-model backend (entry point in treesdk.backends) [default: digits]")] = None,
    model: Annotated[Optional[str], typer.Option(help="checkpoint path or local HF cache id; default: the backend's")] = None,
    algo: Annotated[Optional[str], typer.Option(help="preset: grpo, mixgrpo, treegrpo, dynamic-treerpo (or a recipe file) [default: the backend's default recipe; digits: treegrpo-kl, others: treegrpo]")] = None,
    k: Annotated[Optional[int], typer.Option(help="branching factor of the tree (overrides the recipe)")] = None,
    d: Annotated[Optional[int], typer.Option(help="tree depth = SDE window length in steps")] = None,
    steps: Annotated[Optional[int], typer.Option(help="sampling steps T")] = None,
    iters: Annotated[Optional[int], typer.Option(help="total iterations of the run [default: 60]")] = None,
    batch: Annotated[Optional[int], typer.Option(help="prompts (trees) per iteration, over all ranks [default: 8]")] = None,
    reward: Annotated[Optional[list[str]], typer.Option(help="training reward NAME or NAME=WEIGHT; repeatable")] = None,
    eval_reward: Annotated[Optional[list[str]], typer.Option(help="held-out reward scored only at evaluation; repeatable")] = None,
    reward_opt: Annotated[Optional[list[str]], typer.Option(help="reward option NAME:KEY=VALUE, e.g. hpsv2.1:checkpoint=/p/HPS_v2.1_compressed.pt")] = None,
    resolution: Annotated[Optional[int], typer.Option(help="image resolution in pixels (backend default if unset)")] = None,
    config: Annotated[Optional[str], typer.Option(help="run file (YAML/JSON, e.g. a run's config.json; flags override it) or a recipe file (replaces --algo)")] = None,
    out: Annotated[Optional[Path], typer.Option(help="run folder (default runs/<algo>-<time>)")] = None,
    seed: Annotated[Optional[int], typer.Option(help="seed of prompts order, windows and tree noise [default: 0]")] = None,
    device: Annotated[Optional[str], typer.Option(help="torch device (cpu, cuda, cuda:1); backend default if unset")] = None,
    lr: Annotated[Optional[float], typer.Option(help="learning rate (overrides the recipe)")] = None,
    prompts: Annotated[Optional[str], typer.Option(help="prompts: text file (one per line), CSV/TSV, JSONL, JSON, parquet or a datasets folder", rich_help_panel="Data")] = None,
    set_: Annotated[Optional[list[str]], typer.Option("--set", help="recipe override DOTTED.KEY=VALUE, e.g. noise.level=0.8")] = None,
    backend_opt: Annotated[Optional[list[str]], typer.Option(help="backend option KEY=VALUE, e.g. lora_rank=32")] = None,
    checkpoint_every: Annotated[Optional[int], typer.Option(help="iterations between checkpoints (0 = at the end) [default: 0]")] = None,
    resume: Annotated[bool, typer.Option(help="continue the run in --out from its last checkpoint, with its config.json "
                                               "(flags given here override it; only harmless ones may change)")] = False,
    allow_config_change: Annotated[bool, typer.Option(help="with --resume: accept flags that change how the run trains "
                                                            "(config.json is rewritten, the old one kept beside it)")] = False,
    export_format: Annotated[Optional[str], typer.Option(help="format exported at the end (backend default)")] = None,
    nproc_per_node: Annotated[Optional[int], typer.Option(help="processes (GPUs) per node; >1 launches through torchrun [default: 1]")] = None,
    nnodes: Annotated[Optional[int], typer.Option(help="number of nodes (run the same command on each) [default: 1]")] = None,
    node_rank: Annotated[Optional[int], typer.Option(help="this node's rank 0..nnodes-1 (static rendezvous; default: c10d assigns)")] = None,
    rdzv_endpoint: Annotated[Optional[str], typer.Option(help="HOST:PORT of the rendezvous (first node), for --nnodes > 1")] = None,
    max_restarts: Annotated[Optional[int], typer.Option(help="torchrun restarts after a worker failure; each resumes from the last checkpoint [default: 0]")] = None,
    keep_checkpoints: Annotated[Optional[int], typer.Option(help="newest checkpoints kept in the run folder [default: 3]")] = None,
    fsdp: Annotated[Optional[bool], typer.Option("--fsdp/--no-fsdp", help="shard a full fine-tune over the ranks with FSDP2 fully_shard (not for LoRA)")] = None,
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
    lr_warmup: Annotated[Optional[int], typer.Option(help="iterations of linear lr warm-up (recipe optim.lr_warmup)", rich_help_panel="Optimisation")] = None,
    ema_decay: Annotated[Optional[float], typer.Option(help="EMA of the trainable weights with this decay, e.g. 0.999 [default: 0 = off]", rich_help_panel="Optimisation")] = None,
    ema_every: Annotated[Optional[int], typer.Option(help="optimiser steps between EMA updates [default: 1]", rich_help_panel="Optimisation")] = None,
    ema_use: Annotated[Optional[str], typer.Option(help="where EMA weights are used: eval+export, eval, export, none [default: eval+export]", rich_help_panel="Optimisation")] = None,
    report_to: Annotated[Optional[str], typer.Option(help="loggers: jsonl,tensorboard,wandb or none [default: jsonl,tensorboard]", rich_help_panel="Logging")] = None,
    eval_every: Annotated[Optional[int], typer.Option(help="evaluate every N iterations: samples/iter_N.png and logger images [default: 0 = start and end]", rich_help_panel="Logging")] = None,
    profile: Annotated[Optional[bool], typer.Option("--profile/--no-profile", help="seconds and peak memory per phase of every iteration: metrics.jsonl \"profile\" and a table at the end", rich_help_panel="Logging")] = None,
    dry_run: Annotated[bool, typer.Option("--dry-run", help="print the plan (calls, leaves, memory per rank) and exit; loads no model")] = False,
    json_: Annotated[bool, typer.Option("--json", help="with --dry-run: the plan as one JSON object")] = False,
    gpu_memory: Annotated[Optional[float], typer.Option(help="with --dry-run: GiB per GPU; the plan says whether the run fits")] = None,
) -> None:
    """Post-train a model with a tree (or baseline) RL algorithm; writes a run folder."""
    from treesdk.training import distributed, launch

    flags = {key: value for key, value in locals().items() if key not in ("dry_run", "json_", "gpu_memory")}
    with clean_errors():
        if resume and out is None:
            raise UserError("--resume needs --out RUN_DIR (the run folder to continue)")
        stored = None
        if resume and config is None and (out / "config.json").is_file():
            stored = str(out / "config.json")  # the run's own configuration, flags on top
        run_config = build_config(config or stored, flags)
        if dry_run or json_ or gpu_memory is not None:
            from .dry_run import dry_run as print_plan

            print_plan(run_config, dry_run, json_, gpu_memory)
            return
        lc = run_config.launch
        launch.torchrun_argv([], nproc_per_node=lc.nproc_per_node, nnodes=lc.nnodes, node_rank=lc.node_rank,
                             rdzv_endpoint=lc.rdzv_endpoint, max_restarts=lc.max_restarts)  # checks, one process too
    if launch.needs_launch(lc.nproc_per_node, lc.nnodes, lc.max_restarts):
        with clean_errors():
            if resume and out is None:
                raise ValueError("--resume needs --out RUN_DIR")
            launch.torchrun_argv([], nproc_per_node=lc.nproc_per_node, nnodes=lc.nnodes, node_rank=lc.node_rank,
                                 rdzv_endpoint=lc.rdzv_endpoint, max_restarts=lc.max_restarts, run_dir=out or "runs")  # checks
            argv = sys.argv[1:]
            if "train" not in argv:
                raise ValueError("--nproc-per-node/--nnodes/--max-restarts need the command line (sys.argv) of `treesdk train`")
            worker = launch.strip_launch_flags(argv[argv.index("train"):])
            run_dir = out
            if run_dir is None:  # one folder for every rank, node and restart
                from treesdk.training.run_folders import default_run_dir

                name = getattr(run_config.recipe, "name", None) or str(run_config.recipe or "default")
                run_dir = default_run_dir(Path(name).stem)
                worker += ["--out", str(run_dir)]
            else:
                from treesdk.training.run_folders import check_out_dir

                check_out_dir(run_dir, resume)
            args = launch.torchrun_argv(
                worker, nproc_per_node=lc.nproc_per_node, nnodes=lc.nnodes, node_rank=lc.node_rank,
                rdzv_endpoint=lc.rdzv_endpoint, max_restarts=lc.max_restarts, run_dir=run_dir,
            )
        code = launch.launch(args)
        if code:
            raise typer.Exit(code=code)
        return

    ctx = None
    completed = False
    exit_code = 0
    try:
        with clean_errors():
            ctx = distributed.init_distributed()
            exit_code = _train(ctx, run_config, out, resume, allow_config_change)
            completed = True
    finally:
        distributed.shutdown(ctx, completed=completed)
    if exit_code:  # stopped by SIGINT/SIGTERM after its checkpoint (130/143): not a finished run
        raise typer.Exit(code=exit_code)


def _train(ctx: Any, config: Any, out: Path | None, resume: bool, allow_config_change: bool = False) -> int:
    """The body of ``treesdk train`` in one process (rank ``ctx.rank`` of ``ctx.world_size``);
    returns the exit code (0, or 130/143 for a run stopped by SIGINT/SIGTERM).

    Everything that can be checked without the model is checked first (the run folder, prompts,
    reward options, the recipe's overrides), so a bad input fails at once and writes nothing."""
    from treesdk.training import distributed
    from treesdk.training.config import read_run_config
    from treesdk.training.optimization import accumulation_summary
    from treesdk.training.precision import cpu_defaults
    from treesdk.training.progress import TrainProgress
    from treesdk.training.run_folders import check_out_dir, claim_run_dir, refuse_changed_config
    from treesdk.training.runs import build_run_parts, precheck_run_config
    from treesdk.training.trainer import Trainer

    if out is not None and ctx.is_main:
        check_out_dir(out, resume, restarted=distributed.restart_count() > 0)
    precheck_run_config(config)
    show = console.print if ctx.is_main else (lambda *a, **kw: None)
    given = {"dtype": config.dtype} if config.dtype is not None else dict(
        {"dtype": config.backend.options["dtype"]} if "dtype" in config.backend.options else {})
    note = cpu_defaults(config.device or config.backend.options.get("device"), given,
                        option_names("backend", config.backend.name), ctx.local_world_size)
    if note:
        show(f"[dim]{note}[/]")
        if config.dtype is None and "dtype" not in config.backend.options and "dtype" in given:
            config = config.model_copy(update={"dtype": given["dtype"]})
    if ctx.world_size > 1 and ctx.device.type == "cuda" and config.device in (None, "cuda"):
        config = config.model_copy(update={"device": str(ctx.device)})  # one GPU per rank: cuda:LOCAL_RANK
    if ctx.world_size > 1:  # a torchrun worker: its argv lost the launcher flags; record what it runs on
        launched = {"nproc_per_node": ctx.local_world_size, "nnodes": ctx.world_size // max(ctx.local_world_size, 1)}
        config = config.model_copy(update={"launch": config.launch.model_copy(update=launched)})
    parts = build_run_parts(config)
    vm, recipe, fsdp = parts.backend, parts.config.recipe, config.launch.fsdp
    if fsdp and vm.fsdp_modules() is None:  # checked on one process too (raises for LoRA runs)
        raise ValueError(f"backend {vm.name!r} does not support --fsdp (its fsdp_modules() returns None); drop --fsdp")
    if resume and ctx.is_main:
        stored = read_run_config(out)
        if allow_config_change:
            keep_previous_config(out, stored, parts.config)
        else:
            from treesdk.safe_load import read_json_file
            from treesdk.training.legacy import resume_harmless_fields

            unrecorded = resume_harmless_fields(read_json_file(out / "config.json", "run configuration"))
            refuse_changed_config(out, stored.model_dump(mode="json"), parts.config.model_dump(mode="json"), unrecorded)
    if out is None and ctx.is_main:
        out = claim_run_dir(recipe.name)  # runs/<safe name>-<time>[-N], never shared with another run
    run_dir = ctx.broadcast_object(out)  # rank 0 names (and creates) the folder
    ctx.broadcast_parameters(vm.trainable_parameters())  # every rank starts from rank 0's weights
    resume = distributed.resume_decision(ctx, run_dir, resume)  # torchrun restarts resume by themselves
    weights = {n: r.weight for n, r in parts.config.rewards.items()}

    show(
        f"[bold]treesdk train[/] backend={vm.name} algo={recipe.name} T={recipe.steps} k={recipe.tree.k} "
        f"d={recipe.tree.d} roots={recipe.tree.roots} batch={config.batch} iters={config.iters} rewards={weights} -> {run_dir}"
        + (f" ranks={ctx.world_size} ({ctx.backend})" if ctx.world_size > 1 else "")
        + (" fsdp" if fsdp and ctx.world_size > 1 else "")
        + (" (resuming)" if resume else "")
        + (f" precision={config.precision}" if config.precision != "fp32" else "")
    )
    o, ema = recipe.optim, config.ema
    show(f"[dim]optimiser {o.optimizer} lr {o.lr:g} ({o.lr_schedule}, warm-up {o.lr_warmup})"
         + (f", EMA decay {ema.decay:g} every {ema.every} step(s) for {ema.use}" if ema.enabled else "")
         + f"; {accumulation_summary(o, config.batch, ctx.world_size, recipe.training_chunk)}[/]")
    with TrainProgress(config.iters, console=console, enabled=ctx.is_main) as progress:  # only rank 0 shows it
        trainer = Trainer.from_parts(parts, run_dir, collective=ctx.with_fsdp(fsdp), callbacks=[progress.on_iteration],
                                     on_step=progress.on_step)
        run = trainer.fit(resume)
    if ctx.is_main:
        print_summary(run)
        if trainer.profiler.enabled:
            print_profile(trainer.profiler.summary())
    return run.exit_code


def keep_previous_config(run_dir: Path, stored: Any, new: Any) -> None:
    """``--allow-config-change``: the run's config.json becomes ``new``; the one it replaces is kept
    as ``config.before-<time>.json`` (what trained the iterations so far)."""
    import time

    from treesdk.io import atomic_write_bytes
    from treesdk.training.run_folders import config_changes

    if not config_changes(stored.model_dump(mode="json"), new.model_dump(mode="json")):
        return
    kept = run_dir / f"config.before-{time.strftime('%Y%m%d-%H%M%S')}.json"
    atomic_write_bytes(kept, stored.to_json().encode())
    atomic_write_bytes(run_dir / "config.json", new.to_json().encode())
    console.print(f"[yellow]configuration changed on --resume (--allow-config-change); the previous one is {kept}[/]")


def print_summary(run: Any) -> None:
    """Reward before/after on the evaluation set, per reward (:func:`treesdk.training.progress.print_summary`)."""
    from treesdk.training.progress import print_summary as show_summary

    show_summary(run, console)


def print_profile(rows: list[tuple[str, float, float, float]]) -> None:
    """``--profile``: one row per phase (mean seconds per iteration, share of the profiled time, peak GiB)."""
    from rich.table import Table

    table = Table(title="profile: per phase, mean over the iterations (metrics.jsonl \"profile\" per iteration)")
    for column in ("phase", "mean s", "share %", "peak GiB"):
        table.add_column(column, justify="left" if column == "phase" else "right")
    for phase, seconds, share, peak in rows:
        table.add_row(phase, f"{seconds:.3f}", f"{share:.1f}", f"{peak:.2f}")
    console.print(table)


def register(app: typer.Typer) -> None:
    app.command("train")(train_command)
