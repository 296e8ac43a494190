"""One training run from its :class:`~treesdk.training.config.RunConfig`: the one path that
:func:`treesdk.train`, ``treesdk train``, torchrun and ``accelerate launch`` workers all take.

:func:`run_training` does, in order:

1. **the launcher decision**: a run asking for several processes, nodes or restarts
   (``launch.nproc_per_node``/``nnodes``/``max_restarts``) from a process that is not yet a torchrun
   worker is handed to torchrun here (:func:`treesdk.training.parallel.launch.torchrun_argv`, computed once):
   the configuration goes to a temporary run file and every worker runs
   ``python -m treesdk train --config FILE --out RUN``, which comes back to this function;
2. **the run folder**: ``--resume`` needs one; a given folder is checked (new runs need an empty one,
   :func:`~treesdk.training.run_folder.run_folders.check_out_dir`) once, by the process that starts the run;
   without one rank 0 claims ``runs/<recipe>-<time>`` (:func:`~treesdk.training.run_folder.run_folders.claim_run_dir`);
3. **the process group** (:func:`~treesdk.training.parallel.distributed.init_distributed`; a single process
   outside torchrun), left again at the end;
4. **checks before any model loads** (prompts, option keys, the recipe's overrides), then the CPU
   defaults (threads, float32 weights) and one device per rank;
5. **the parts** (:func:`~treesdk.training.loop.runs.build_run_parts`: backend, recipe resolved once,
   rewards, prompts), the FSDP check, and on resume the stored configuration compared with this one
   (refused when it changed, unless ``allow_config_change``: then the old one is kept beside it);
6. **rank 0's weights on every rank**, the resume decision of a torchrun restart, then
   :meth:`Trainer.fit <treesdk.training.loop.trainer.Trainer.fit>`.

What is shown goes to ``console`` (a rich console: the command line passes its own, with live
progress and the end table) or, when it is None (the Python API's default), to the ``treesdk``
logger at INFO level, with no progress display. Only rank 0 shows anything.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import tempfile
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from treesdk import registry
from treesdk.errors import UserError
from treesdk.training.parallel import distributed
from treesdk.training.parallel import launch
from treesdk.training.parallel.collective import Collective
from treesdk.training.config import RunConfig, read_run_config
from treesdk.training.loop.run_result import Run
from treesdk.training.run_folder.run_folders import check_out_dir, claim_run_dir, config_changes, default_run_dir, refuse_changed_config
from treesdk.training.loop.sampling_memory import check_sampling_memory
from treesdk.training.loop.runs import build_run_parts, factory_option_names, parts_from_objects, precheck_run_config
from treesdk.training.loop.trainer import Trainer

_log = logging.getLogger("treesdk")

#: set by the launching process for its torchrun workers: the run folder is already checked
LAUNCHED_ENV = "TREESDK_LAUNCHED_RUN"

Callback = Callable[[dict[str, Any]], Any]


class LaunchFailed(UserError):
    """A run handed to torchrun ended with a failed worker; its output says why."""

    def __init__(self, code: int) -> None:
        super().__init__(f"training failed on the torchrun workers (exit code {code}); their output above shows why")
        self.exit_code = code


def run_training(
    config: RunConfig,
    out: str | Path | None = None,
    *,
    resume: bool = False,
    allow_config_change: bool = False,
    collective: Collective | None = None,
    callbacks: Sequence[Callback] = (),
    on_step: Callable[[str, int, int], None] | None = None,
    console: Any = None,
) -> Run:
    """Run ``config`` to the end (or a stop request) in ``out`` (None: a new ``runs/<recipe>-<time>``);
    returns the :class:`~treesdk.training.loop.run_result.Run` (``run.exit_code``: 0, or 130/143 when a signal
    stopped it after its checkpoint).

    ``resume`` continues the run in ``out`` from its newest checkpoint (the configuration must be
    the stored one but for harmless fields, or ``allow_config_change``); ``collective`` replaces the
    process group this function would join (a caller that already holds one); ``callbacks`` and
    ``on_step`` see each iteration's row and the phases inside it; ``console`` (rich) shows the run
    (see the module docstring). Raises :class:`UserError` for bad input before anything is written.
    """
    out = Path(out) if out is not None else None
    if resume and out is None:
        raise UserError("--resume needs --out RUN_DIR (the run folder to continue)")
    lc = config.launch
    if collective is None and launch.needs_launch(lc.nproc_per_node, lc.nnodes, lc.max_restarts):
        if callbacks or on_step is not None:
            raise UserError("callbacks and on_step cannot reach the torchrun workers of a run with several processes; "
                            "read the run folder's metrics.jsonl instead")
        return _launch(config, out, resume, allow_config_change)
    launch.check_launch(lc)  # a worker, or one process: the launcher settings are still checked

    ctx = collective if collective is not None else distributed.init_distributed()
    completed = False
    try:
        run = _train(ctx, config, out, resume, allow_config_change, callbacks, on_step, console)
        completed = True
        return run
    finally:
        if collective is None:
            distributed.shutdown(ctx, completed=completed)


def _launch(config: RunConfig, out: Path | None, resume: bool, allow_config_change: bool) -> Run:
    """Hand the run to torchrun (this process becomes its agent) and read what the workers left."""
    lc = config.launch
    run_dir = out if out is not None else default_run_dir(_run_name(config))  # one folder for every rank, node, restart
    worker = ["train", "--config", "", "--out", str(run_dir), *(["--resume"] if resume else []),
              *(["--allow-config-change"] if allow_config_change else [])]
    args = launch.torchrun_argv(worker, nproc_per_node=lc.nproc_per_node, nnodes=lc.nnodes, node_rank=lc.node_rank,
                                rdzv_endpoint=lc.rdzv_endpoint, max_restarts=lc.max_restarts,
                                run_dir=out)  # checks every launcher setting
    check_out_dir(run_dir, resume)
    with tempfile.TemporaryDirectory(prefix="treesdk-launch-") as folder:
        run_file = Path(folder) / "run.json"
        run_file.write_text(config.to_json())
        args[args.index("--config") + 1] = str(run_file)
        previous = os.environ.get(LAUNCHED_ENV)
        os.environ[LAUNCHED_ENV] = "1"
        try:
            code = launch.launch(args)
        finally:
            if previous is None:
                os.environ.pop(LAUNCHED_ENV, None)
            else:
                os.environ[LAUNCHED_ENV] = previous
    if code not in (0, 130, 143):
        raise LaunchFailed(code)
    return _run_from_folder(run_dir, code)


def _run_name(config: RunConfig) -> str:
    recipe = config.recipe
    name = getattr(recipe, "name", None) or (str(recipe) if recipe is not None else "default")
    return Path(name).stem


def _run_from_folder(run_dir: Path, code: int) -> Run:
    """The :class:`Run` a launched run left in its folder (``metrics.jsonl``)."""
    rows: list[dict[str, Any]] = []
    metrics = run_dir / "metrics.jsonl"
    if metrics.is_file():
        rows = [json.loads(line) for line in metrics.read_text().splitlines() if line.strip()]
    history = [r for r in rows if not r.get("eval")]
    evaluations = [r for r in rows if r.get("eval")]

    def means(tag: str) -> dict[str, float]:
        found = [r for r in evaluations if r.get("tag") == tag]
        return {k: v for k, v in found[-1].items() if k.endswith("_mean") or k in ("diversity", "diversity_pixels", "precision",
                                                                                  "recall")} if found else {}

    exported = sorted(str(p) for p in (run_dir / "export").glob("*")) if (run_dir / "export").is_dir() else []
    return Run(out_dir=run_dir, iterations=history[-1]["iteration"] if history else 0, history=history,
               eval_before=means("start"), eval_after=means("end"), evaluations=evaluations, exported=exported,
               interrupted=code in (130, 143), stop_signal=code - 128 if code in (130, 143) else None)


def _train(ctx: Any, config: RunConfig, out: Path | None, resume: bool, allow_config_change: bool,
           callbacks: Sequence[Callback], on_step: Callable[[str, int, int], None] | None, console: Any) -> Run:
    """The run in this process (rank ``ctx.rank`` of ``ctx.world_size``). Everything that can be
    checked without the model is checked first, so a bad input fails at once and writes nothing."""
    from treesdk.training.optimisation.optimization import accumulation_summary
    from treesdk.training.loop.precision import cpu_defaults
    from treesdk.training.run_folder.progress import TrainProgress, print_profile, print_summary

    show: Callable[[str], None] = (console.print if console is not None else _log_line) if ctx.is_main else _quiet
    if out is not None and ctx.is_main and not os.environ.get(LAUNCHED_ENV):
        check_out_dir(out, resume, restarted=distributed.restart_count() > 0)
    factory = registry.load("backend", config.backend.name)  # the backend's entry point, loaded once per run
    precheck_run_config(config, factory)
    config = _placed(ctx, config, show, cpu_defaults, factory_option_names(factory))
    parts = build_run_parts(config, factory=factory)
    vm, recipe, fsdp = parts.backend, parts.config.recipe, config.launch.fsdp
    check_sampling_memory(vm, recipe, parts.config.batch, ctx.world_size)  # before the folder is claimed
    if fsdp and vm.fsdp_modules() is None:  # checked on one process too (raises for LoRA runs)
        raise ValueError(f"backend {vm.name!r} does not support --fsdp (its fsdp_modules() returns None); drop --fsdp")
    if resume and ctx.is_main:
        _compare_with_stored(out, parts.config, allow_config_change, show)  # type: ignore[arg-type]
    if out is None and ctx.is_main:
        out = claim_run_dir(recipe.name)  # runs/<safe name>-<time>[-N], never shared with another run
    run_dir = ctx.broadcast_object(out)  # rank 0 names (and creates) the folder
    if ctx.world_size > 1:
        ctx.broadcast_parameters(vm.trainable_parameters())  # every rank starts from rank 0's weights
    resume = distributed.resume_decision(ctx, run_dir, resume)  # torchrun restarts resume by themselves

    weights = {n: r.weight for n, r in parts.config.rewards.items()}
    show(f"[bold]treesdk train[/] backend={vm.name} algo={recipe.name} T={recipe.steps} k={recipe.tree.k} "
         f"d={recipe.tree.d} roots={recipe.tree.roots} batch={config.batch} iters={parts.config.iters} rewards={weights} -> {run_dir}"
         + (f" ranks={ctx.world_size} ({ctx.backend})" if ctx.world_size > 1 else "")
         + (" fsdp" if fsdp and ctx.world_size > 1 else "") + (" (resuming)" if resume else "")
         + (f" precision={config.precision}" if config.precision != "fp32" else ""))
    o, ema = recipe.optim, config.ema
    if o.lr_warmup >= parts.config.iters:
        show(f"[yellow]note: the lr warm-up ({o.lr_warmup} iterations) is not shorter than the run ({parts.config.iters} "
             f"iterations): the learning rate never reaches {o.lr:g}[/]")
    show(f"[dim]optimiser {o.optimizer} lr {o.lr:g} ({o.lr_schedule}, warm-up {o.lr_warmup})"
         + (f", EMA decay {ema.decay:g} every {ema.every} step(s) for {ema.use}" if ema.enabled else "")
         + f"; {accumulation_summary(o, config.batch, ctx.world_size, recipe.training_chunk)}[/]")

    progress = TrainProgress(parts.config.iters, console=console, enabled=ctx.is_main) if console is not None else None
    with progress if progress is not None else contextlib.nullcontext():
        steps = [f for f in (progress.on_step if progress else None, on_step) if f is not None]
        trainer = Trainer(
            parts, run_dir, collective=ctx.with_fsdp(fsdp) if hasattr(ctx, "with_fsdp") else ctx,
            callbacks=[*([progress.on_iteration] if progress else []), *callbacks],
            on_step=(lambda phase, done, total: [f(phase, done, total) for f in steps]) if steps else None)
        run = trainer.fit(resume, check_folder=False)  # checked above, once
    if console is not None and ctx.is_main:
        print_summary(run, console)
        if trainer.profiler.enabled:
            print_profile(trainer.profiler.summary(), console)
    return run


def _placed(ctx: Any, config: RunConfig, show: Callable[[str], None], cpu_defaults: Any,
            backend_options: set[str] | None) -> RunConfig:
    """``config`` on this process's device: the CPU defaults (threads; float32 weights when the
    backend takes a dtype and none is given), one GPU per rank, and the processes it runs on."""
    given = {"dtype": config.dtype} if config.dtype is not None else dict(
        {"dtype": config.backend.options["dtype"]} if "dtype" in config.backend.options else {})
    note = cpu_defaults(config.device or config.backend.options.get("device"), given,
                        backend_options, getattr(ctx, "local_world_size", 1))
    if note:
        show(f"[dim]{note}[/]")
        if config.dtype is None and "dtype" not in config.backend.options and "dtype" in given:
            config = config.model_copy(update={"dtype": given["dtype"]})
    device = getattr(ctx, "device", None)
    if ctx.world_size > 1 and device is not None and device.type == "cuda" and config.device in (None, "cuda"):
        config = config.model_copy(update={"device": str(device)})  # one GPU per rank: cuda:LOCAL_RANK
    if ctx.world_size > 1:  # a torchrun worker: record what it runs on
        local = max(getattr(ctx, "local_world_size", 1), 1)
        launched = {"nproc_per_node": local, "nnodes": ctx.world_size // local}
        config = config.model_copy(update={"launch": config.launch.model_copy(update=launched)})
    return config


def _compare_with_stored(out: Path, new: RunConfig, allow_config_change: bool, show: Callable[[str], None]) -> None:
    """``--resume``: refuse a configuration that changed how the run trains, or with
    ``allow_config_change`` write the new one and keep the old one as ``config.before-<time>.json``."""
    from treesdk.io import atomic_write_bytes
    from treesdk.safe_load import read_json_file
    from treesdk.training.legacy import resume_harmless_fields

    stored = read_run_config(out)
    if not allow_config_change:
        unrecorded = resume_harmless_fields(read_json_file(out / "config.json", "run configuration"))
        refuse_changed_config(out, stored.model_dump(mode="json"), new.model_dump(mode="json"), unrecorded)
        return
    if not config_changes(stored.model_dump(mode="json"), new.model_dump(mode="json")):
        return
    kept = out / f"config.before-{time.strftime('%Y%m%d-%H%M%S')}.json"
    atomic_write_bytes(kept, stored.to_json().encode())
    atomic_write_bytes(out / "config.json", new.to_json().encode())
    show(f"[yellow]configuration changed on --resume (--allow-config-change); the previous one is {kept}[/]")


def _log_line(text: str) -> None:
    from rich.text import Text

    _log.info("%s", Text.from_markup(text).plain)


def _quiet(text: str) -> None:  # noqa: ARG001 - ranks other than 0 show nothing
    return None


def train(config: RunConfig | Any, *args: Any, out_dir: str | Path | None = None, resume: bool = False,
          collective: Collective | None = None, callbacks: Sequence[Callback] = (),
          on_step: Callable[[str, int, int], None] | None = None, **kwargs: Any) -> Run:
    """Train a run: ``train(RunConfig(...), out_dir=..., resume=..., callbacks=[...])``.

    A :class:`RunConfig` takes the one run path (:func:`treesdk.training.loop.session.run_training`,
    which ``treesdk train`` takes too: launcher, run folder, process group, resume checks); its
    keywords are ``out_dir``, ``resume``, ``collective``, ``callbacks``, ``on_step`` and those of
    ``run_training`` (``allow_config_change``, ``console``).

    The parts form ``train(recipe, backend, rewards, prompts, **settings)`` takes parts already
    built and the settings as keywords (:func:`treesdk.training.loop.runs.parts_from_objects`), for
    scripts and tests; it runs :meth:`Trainer.fit` in this process with ``collective``.
    ``on_step`` (both forms) receives the phases inside each iteration, e.g.
    :class:`treesdk.training.run_folder.progress.TrainProgress`.
    """
    if isinstance(config, RunConfig):
        unknown = sorted(set(kwargs) - {"allow_config_change", "console"})
        if args or unknown:
            raise TypeError(f"train(RunConfig) takes out_dir, resume, collective, callbacks, on_step, allow_config_change "
                            f"and console only; got {unknown or args}")
        return run_training(config, out_dir, resume=resume, collective=collective, callbacks=callbacks, on_step=on_step,
                            **kwargs)
    on_iteration = kwargs.pop("on_iteration", None)
    callbacks = [*callbacks, *([on_iteration] if on_iteration else [])]
    backend, rewards, prompts = args
    built = parts_from_objects(backend, config, rewards, prompts, **kwargs)
    return Trainer(built, out_dir, collective=collective, callbacks=callbacks, on_step=on_step).fit(resume)


__all__ = ["LAUNCHED_ENV", "LaunchFailed", "run_training", "train"]
