"""The training loop, readable top to bottom: sample -> decode -> reward -> advantages -> update.

Every part comes from the recipe (tree shape, window and noise schedules, estimator, loss terms);
there is no ``if algo == ...`` here. Randomness is a pure function of ``(seed, iteration, slot)``:
the prompts of an iteration, the window start and each tree's noise, so a resumed run, or one
split over ranks, samples exactly what an uninterrupted single-process run samples.

Run folder::

    config.json        resolved configuration (backend, recipe, rewards, options)
    metrics.jsonl      one JSON line per iteration (and per evaluation, with "eval": true)
    tb/                TensorBoard events
    samples/           start.png / end.png grids of the evaluation set
    checkpoints/       iter_NNNNNN/ (see treesdk.checkpoint)
    export/            the exported policy
"""

from __future__ import annotations

import json
import signal
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from .advantages import build_estimator
from .checkpoint import load_checkpoint, restore_rng_state, save_checkpoint
from .evaluate import decode_chunked, evaluate
from .images import make_grid, save_grid
from .interfaces import RewardModel, VelocityModel
from .loggers import build_loggers
from .losses import build_loss_terms
from .optimization import EMAConfig, Optimization
from .recipe import Recipe, load_recipe
from .rewards import score_images
from .sampler import sample_forest_for_recipe
from .update import policy_update


@dataclass
class Run:
    """What :func:`train` leaves behind."""

    out_dir: Path | None
    iterations: int
    history: list[dict[str, Any]] = field(default_factory=list)
    eval_before: dict[str, float] = field(default_factory=dict)
    eval_after: dict[str, float] = field(default_factory=dict)
    exported: list[str] = field(default_factory=list)
    interrupted: bool = False


def slot_seed(seed: int, iteration: int, slot: int) -> int:
    """Seed of the tree in global batch slot ``slot`` at ``iteration`` (independent of ranks)."""
    return int(np.random.SeedSequence([seed, iteration, slot, 0x7EE]).generate_state(1)[0])


def iteration_prompts(prompts: Sequence[str], batch: int, seed: int, iteration: int) -> list[str]:
    """The ``batch`` prompts of ``iteration``: an epoch-wise shuffle of ``prompts`` (with
    repetition when ``batch`` exceeds the prompt count), a pure function of ``(seed, iteration)``."""
    n = len(prompts)
    start = iteration * batch
    out = []
    for position in range(start, start + batch):
        epoch, offset = divmod(position, n)
        order = np.random.default_rng([seed, epoch, 0xDA7A]).permutation(n)
        out.append(prompts[int(order[offset])])
    return out


class _StopRequest:
    """SIGINT/SIGTERM set a flag; the loop finishes the iteration, checkpoints and returns."""

    def __init__(self) -> None:
        self.requested = False
        self._previous: dict[int, Any] = {}

    def __enter__(self) -> _StopRequest:
        for sig in (signal.SIGINT, signal.SIGTERM):
            try:
                self._previous[sig] = signal.signal(sig, self._handle)
            except ValueError:  # not the main thread
                pass
        return self

    def _handle(self, signum: int, frame: Any) -> None:  # noqa: ARG002
        if self.requested:  # second signal: give up at once
            raise KeyboardInterrupt
        self.requested = True

    def __exit__(self, *exc: object) -> None:
        for sig, handler in self._previous.items():
            signal.signal(sig, handler)


def train(
    recipe: Recipe | str,
    backend: VelocityModel,
    rewards: Mapping[str, RewardModel],
    prompts: Sequence[str],
    *,
    weights: Mapping[str, float] | None = None,
    iters: int = 10,
    batch: int = 4,
    seed: int = 0,
    out_dir: str | Path | None = None,
    eval_prompts: Sequence[str] | None = None,
    eval_seeds: Sequence[int] | None = None,
    eval_rewards: Mapping[str, RewardModel] | None = None,
    checkpoint_every: int = 0,
    keep_checkpoints: int = 3,
    resume: bool = False,
    export_format: str | None = None,
    config: Mapping[str, Any] | None = None,
    backend_options: Mapping[str, Any] | None = None,
    rank: int = 0,
    world_size: int = 1,
    reduce_gradients: Callable[[Sequence[torch.nn.Parameter]], None] | None = None,
    reduce_metrics: Callable[[dict[str, float]], dict[str, float]] | None = None,
    any_rank: Callable[[bool], bool] | None = None,
    broadcast_object: Callable[[Any], Any] | None = None,
    fsdp: Any = None,
    on_iteration: Callable[[dict[str, Any]], None] | None = None,
    on_step: Callable[[str, int, int], None] | None = None,
    ema: EMAConfig | Mapping[str, Any] | None = None,
    report_to: str | Sequence[str] | None = None,
    eval_every: int = 0,
) -> Run:
    """Train ``backend`` with ``recipe`` on ``prompts`` scored by ``rewards``; see module doc.

    Args:
        recipe: a Recipe, a preset name or a recipe file.
        rewards: training rewards by name; ``weights`` their weights (default 1 each).
        iters: total iterations of the run (a resumed run continues up to this number).
        batch: prompts (trees) per iteration over all ranks; rank ``r`` owns slots ``r::world_size``.
        out_dir: run folder (None: nothing is written).
        eval_prompts, eval_seeds: fixed evaluation set, scored before and after training by
            ``rewards`` and ``eval_rewards`` (held-out).
        checkpoint_every: iterations between checkpoints (0: only at the end); ``keep_checkpoints`` kept.
        resume: continue from the newest checkpoint in ``out_dir``.
        export_format: export the policy into ``out_dir/export`` at the end (e.g. ``"lora"``).
        config: extra facts stored in ``config.json`` (CLI arguments).
        backend_options: the keyword options the backend was loaded with, stored in ``config.json``
            so that ``treesdk sample/eval/export`` can rebuild it (``treesdk.load_backend(name, **options)``).
        reduce_gradients / reduce_metrics: distributed hooks (average over ranks).
        any_rank: distributed hook, ``any_rank(flag)`` is true on every rank when ``flag`` is true on
            one; stop requests (SIGINT/SIGTERM) go through it so all ranks stop after the same iteration.
        broadcast_object: distributed hook returning rank 0's object on every rank; with it only
            rank 0 reads the checkpoint on resume (see :mod:`treesdk.distributed`).
        fsdp: a :class:`treesdk.distributed.FullyShardedTraining` (``--fsdp``): shards the backend's
            ``fsdp_modules()`` before the optimiser is built; checkpoints are gathered to full tensors
            on every rank (rank 0 writes) and re-sharded on resume; the export at the end is written
            by rank 0 from the final checkpoint. Pass no ``reduce_gradients`` with it.
        on_iteration: called with each metrics row; ``on_step(phase, done, total)`` for progress
            displays, phases ``sampling`` (steps), ``decoding``, ``rewards``, ``optimizer`` (steps),
            ``evaluation`` (see :class:`treesdk.progress.TrainProgress`).
        ema: EMA of the trainable weights (:class:`treesdk.optimization.EMAConfig` or its fields);
            ``decay > 0`` turns it on; its ``use`` says whether evaluations and the export see it.
        report_to: loggers (``"jsonl,tensorboard,wandb"``, see :mod:`treesdk.loggers`; None: jsonl
            and tensorboard).
        eval_every: also evaluate every ``eval_every`` iterations (0: only before and after),
            writing ``samples/iter_N.png`` and the means to the loggers.

    The optimiser, its lr schedule and the gradient accumulation are the recipe's ``optim`` part
    (:mod:`treesdk.optimization`); each metrics row holds the ``lr`` it used.
    """
    recipe = load_recipe(recipe) if not isinstance(recipe, Recipe) else recipe
    weights = {name: float((weights or {}).get(name, 1.0)) for name in rewards}
    if not prompts:
        raise ValueError("no training prompts")
    if batch < world_size:
        raise ValueError(f"--batch {batch} is smaller than the number of ranks {world_size}: every rank needs a tree")
    out = Path(out_dir) if out_dir is not None else None
    is_main = rank == 0
    if out is not None and is_main:
        for sub in ("samples", "checkpoints", "export"):
            (out / sub).mkdir(parents=True, exist_ok=True)

    if fsdp is not None:
        if batch % world_size:
            raise ValueError(f"--fsdp needs --batch divisible by the number of ranks ({batch} % {world_size} != 0): "
                             "every FSDP forward is a collective, so every rank must sample the same number of trees")
        fsdp.shard(backend)
    estimator = build_estimator(recipe.advantage)
    terms = build_loss_terms(recipe.losses)
    params = backend.trainable_parameters()
    if not params:
        raise ValueError(f"backend {backend.name!r} has no trainable parameters")
    o = recipe.optim
    ema_config = ema if isinstance(ema, EMAConfig) else EMAConfig(**dict(ema or {}))
    if ema_config.enabled and fsdp is not None:
        raise ValueError("--ema-decay with --fsdp is not supported yet (the average would be sharded); drop one of them")
    optimization = Optimization(params, o, iters, ema_config)
    optimizer = optimization.optimizer

    start_iteration = 0
    run = Run(out_dir=out, iterations=0)
    if resume:
        if out is None:
            raise ValueError("resume needs the run folder (out_dir)")
        loaded = load_checkpoint(out) if is_main or broadcast_object is None else None
        if broadcast_object is not None:
            loaded = broadcast_object(loaded)
        trainable, optim_state, state = loaded
        if fsdp is not None:  # full tensors from the checkpoint -> this rank's shards
            trainable = fsdp.shard_like(trainable, backend.trainable_state_dict())
            optim_state = fsdp.shard_optimizer_state(optim_state, optimizer)
        backend.load_trainable_state_dict(trainable)
        optimizer.load_state_dict(optim_state)
        restore_rng_state(state.pop("rng", {}))
        optimization.load_checkpoint_tensors(state.pop("extra", {}))
        start_iteration = int(state["iteration"])
        run.eval_before = state.get("eval_before", {})
    elif out is not None and is_main:
        resolved = {
            "recipe": recipe.model_dump(mode="json"),
            "backend": {"name": backend.name, "options": dict(backend_options or {}), "describe": backend.describe()},
            "rewards": weights,
            "eval_rewards": sorted(eval_rewards or {}),
            "iters": iters,
            "batch": batch,
            "seed": seed,
            "world_size": world_size,
            "ema": ema_config.model_dump(mode="json"),
            "eval_every": eval_every,
            **dict(config or {}),
        }
        (out / "config.json").write_text(json.dumps(resolved, indent=2, sort_keys=True, default=str) + "\n")
    optimization.start(start_iteration)
    log = build_loggers(report_to, out if is_main else None, config=dict(config or {}),
                        resume_from=start_iteration if resume else None)

    all_eval_rewards = {**rewards, **(eval_rewards or {})}
    eval_seeds = list(eval_seeds) if eval_seeds is not None else list(range(len(eval_prompts or [])))

    def run_eval(tag: str, iteration: int) -> dict[str, float]:
        if on_step:
            on_step("evaluation", 0, 1)
        with optimization.weights_for("eval") as averaged:
            means, _, images = evaluate(backend, all_eval_rewards, eval_prompts, eval_seeds, recipe.steps, recipe.chunk)
        if out is not None and is_main:
            nrow = min(10, len(eval_prompts))
            save_grid(images, out / "samples" / f"{tag}.png", nrow=nrow)
            grid = make_grid(images, nrow=nrow).permute(2, 0, 1).float() / 255.0
            log.log_metrics({"eval": True, "iteration": iteration, "tag": tag, "ema": averaged, **means}, iteration)
            log.log_images("samples", grid, iteration)
        if on_step:
            on_step("evaluation", 1, 1)
        return means

    if eval_prompts and not resume:
        run.eval_before = run_eval("start", 0)

    my_slots = list(range(rank, batch, world_size))
    iteration = start_iteration
    try:
        with _StopRequest() as stop:
            agree = any_rank or bool  # every rank must stop after the same iteration
            stopping = agree(stop.requested)
            while iteration < iters and not stopping:
                t0 = time.perf_counter()
                batch_prompts = iteration_prompts(prompts, batch, seed, iteration)
                my_prompts = [batch_prompts[s] for s in my_slots]
                seeds = [slot_seed(seed, iteration, s) for s in my_slots]
                start = recipe.window_start(iteration, seed)

                # 1. sample the forest with the frozen behaviour policy
                forest = sample_forest_for_recipe(
                    backend, recipe, my_prompts, seeds, start,
                    progress=(lambda i, n: on_step("sampling", i, n)) if on_step else None,
                )
                t1 = time.perf_counter()

                # 2. decode the leaves and score them (NaN/inf stops here, before any update)
                if on_step:
                    on_step("decoding", 0, 1)
                images = decode_chunked(backend, forest.leaves, recipe.chunk)
                leaf_prompts = [my_prompts[int(p)] for p in forest.leaf_prompt]
                if on_step:
                    on_step("rewards", 0, len(rewards))
                scores = score_images(rewards, images, leaf_prompts)
                t2 = time.perf_counter()
                if on_step:
                    on_step("rewards", len(rewards), len(rewards))
                    steps_hook = optimizer.register_step_post_hook(
                        lambda *_: on_step("optimizer", optimization.steps_done, optimization.steps_per_iteration))
                    on_step("optimizer", 0, optimization.steps_per_iteration)

                # 3. advantages on the edges, then 4. the policy update
                targets = estimator(forest, scores, weights)
                stats = policy_update(
                    backend, forest, targets, terms, optimizer, params,
                    passes=o.passes, minibatches=o.minibatches, chunk=recipe.chunk,
                    grad_clip=o.grad_clip, reduce_gradients=reduce_gradients,
                )
                t3 = time.perf_counter()
                if on_step:
                    steps_hook.remove()
                iteration += 1
                lr_used = optimization.end_iteration()

                raw = targets.leaf_rewards
                row: dict[str, Any] = {
                    "iteration": iteration,
                    "window_start": start,
                    "trees": len(my_prompts),
                    "leaves": int(forest.leaves.shape[0]),
                    "nfe_sampling": forest.nfe,
                    "nfe_training": stats.nfe_training,
                    "nfe_reference": stats.nfe_reference,
                    "reward_mean": float(raw.mean()),
                    "reward_std": float(raw.std(unbiased=False)),
                    "reward_max": float(raw.max()),
                    "loss": sum(v for k, v in stats.metrics.items() if k.startswith("loss_")),
                    "clip_fraction": stats.metrics.get("clip_fraction", 0.0),
                    "grad_norm": stats.grad_norm,
                    "seconds_sampling": t1 - t0,
                    "seconds_reward": t2 - t1,
                    "seconds_training": t3 - t2,
                    "seconds": t3 - t0,
                    **{f"{name}_mean": float(v.mean()) for name, v in scores.items()},
                    **{k: v for k, v in stats.metrics.items()},
                    **lr_used,
                }
                if reduce_metrics is not None:
                    row = {**row, **reduce_metrics({k: v for k, v in row.items() if isinstance(v, (int, float))})}
                run.history.append(row)
                if is_main:
                    log.log_metrics(row, iteration)
                    log.log_histogram("train/leaf_reward", raw, iteration)
                    for name, values in scores.items():
                        log.log_histogram(f"train/{name}", values, iteration)
                if on_iteration is not None:
                    on_iteration(row)
                if eval_prompts and eval_every and iteration % eval_every == 0 and iteration < iters:
                    run_eval(f"iter_{iteration}", iteration)
                stopping = agree(stop.requested)
                due = checkpoint_every and iteration % checkpoint_every == 0
                if out is not None and (is_main or fsdp is not None) and (due or stopping or iteration == iters):
                    _save(out, iteration, backend, optimizer, recipe, run, keep_checkpoints, fsdp, is_main,
                          optimization.checkpoint_tensors())
            run.interrupted = stopping and iteration < iters
        run.iterations = iteration
        if not run.interrupted:
            if eval_prompts:
                run.eval_after = run_eval("end", iteration)
            if out is not None and is_main and export_format and fsdp is not None:
                # the live weights are shards: export from the final (full) checkpoint on the CPU
                from .export import default_export_name, export_run

                target = out / "export" / default_export_name(export_format)
                run.exported = export_run(out, export_format, target, device="cpu")
            elif out is not None and is_main and export_format:
                from .export import default_export_name
                from .metadata import export_metadata

                from .model_card import write_model_card

                meta = export_metadata(backend, recipe, iteration)
                target = out / "export" / default_export_name(export_format)
                with optimization.weights_for("export") as averaged:
                    run.exported = backend.export(export_format, str(target), {**meta, "treesdk.ema": str(averaged)})
                write_model_card(run.exported, export_format, meta, rewards=weights)
    finally:
        log.close()
    return run


def _save(out: Path, iteration: int, backend: VelocityModel, optimizer: torch.optim.Optimizer, recipe: Recipe,
          run: Run, keep: int, fsdp: Any = None, is_main: bool = True, extra: dict[str, torch.Tensor] | None = None) -> None:
    """Rank 0 writes the checkpoint; under FSDP every rank first gathers the full tensors."""
    trainable = backend.trainable_state_dict()
    optim: Any = optimizer
    if fsdp is not None:
        trainable = fsdp.full_tensors(trainable)
        optim = fsdp.full_optimizer_state(optimizer)
    if not is_main:
        return
    save_checkpoint(
        out,
        iteration,
        trainable,
        optim,
        {"recipe": recipe.model_dump(mode="json"), "eval_before": run.eval_before, "backend": backend.name},
        keep=keep,
        extra=extra,
    )
