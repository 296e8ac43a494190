"""The training loop as steps: sample -> decode -> reward -> advantages -> update.

:class:`Trainer` holds a run's parts (backend, recipe, rewards, prompts, optimiser) and exposes the
loop in pieces a user can drive from Python: :meth:`Trainer.step` (one iteration, the loop a
newcomer reads in five minutes), :meth:`Trainer.checkpoint`, :meth:`Trainer.evaluate` and
:meth:`Trainer.finish` (evaluate, export). :meth:`Trainer.fit` runs them all with stop handling;
:func:`treesdk.train` (:mod:`treesdk.training.loop.session`) is the one-call form around it.

Every part comes from the recipe through the registry of parts (estimator, loss terms, SDE family);
there is no ``if algo == ...`` here. Randomness is a pure function of ``(seed, iteration, slot)``:
the prompts of an iteration, the window start and each tree's noise, so a resumed run, or one
split over ranks, samples exactly what an uninterrupted single-process run samples.

Run folder::

    config.json        the resolved RunConfig (a valid run file)
    metrics.jsonl      one JSON line per iteration (and per evaluation, with "eval": true)
    tb/, wandb/        TensorBoard events (scalars, grids, reward histograms), wandb files (--report-to)
    samples/           start.png / iter_N.png (--eval-every) / end.png grids of the evaluation set
    checkpoints/       iter_NNNNNN/ (see treesdk.training.run_folder.checkpoint)
    export/            the exported policy
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

from treesdk.advantages import whole_batch
from treesdk.interfaces import RewardModel, VelocityModel
from treesdk.recipes import Recipe, prune_edges
from treesdk.recipes import parts as parts_registry
from treesdk.reward_scoring import sample_and_score
from treesdk.training.run_folder.checkpoint import load_checkpoint, restore_rng_state, save_checkpoint
from treesdk.training.parallel.collective import Collective
from treesdk.training.config import RunConfig
from treesdk.training.parallel.distributed import restart_count
from treesdk.evaluation import evaluate
from treesdk.training.exporting.export import default_export_name, export_run
from treesdk.training.exporting.metadata import export_metadata
from treesdk.training.loop.forward_update import behaviour_policy, old_policy_tensors, restore_old_policy, sampling_weights
from treesdk.training.run_folder.loggers import Loggers, build_loggers, parse_report_to
from treesdk.training.loop.batches import iteration_prompts, slot_seed
from treesdk.training.loop.run_result import Run
from treesdk.training.loop.stop_request import StopRequest
from treesdk.training.exporting.model_card import write_model_card
from treesdk.training.optimisation.optimization import Optimization, StepCalls
from treesdk.training.run_folder.profiling import PhaseProfiler
from treesdk.training.run_folder.run_folders import RunLock, check_out_dir
from treesdk.training.loop.runs import RunParts, build_run_parts
from treesdk.training.loop.update import policy_update
from treesdk.images import make_grid, save_grid

_log = logging.getLogger("treesdk")

#: a callback receives each iteration's metrics row; returning True requests a stop
Callback = Callable[[dict[str, Any]], Any]


class Trainer:
    """One training run, in steps. Build it from a :class:`RunConfig` (:meth:`from_config`) or from
    parts already built (the constructor, ``Trainer(parts)``), then :meth:`fit`, or drive :meth:`start`,
    :meth:`step`, :meth:`checkpoint` and :meth:`finish` yourself.

    Args:
        parts: the run's parts (:class:`~treesdk.training.loop.runs.RunParts`: backend, rewards, prompts,
            evaluation set, export format) and its resolved :class:`RunConfig` (``parts.config``),
            which holds every setting: ``batch`` prompts (trees) per iteration over all ranks, rank
            ``r`` owning slots ``r, r + world_size, ...``; ``iters`` in all (a resumed run continues
            up to this number); checkpoints, EMA, loggers, evaluations, profiling.
        out_dir: run folder (None: nothing is written).
        collective: the distributed calls (default: a single process); its ``fsdp`` shards the
            backend's ``fsdp_modules()`` before the optimiser is built.
        callbacks: called with each iteration's metrics row; one returning True stops the run after the
            iteration (checkpoint written), as SIGINT/SIGTERM do.
        on_step: ``on_step(phase, done, total)`` for progress displays (:mod:`treesdk.training.run_folder.progress`).
    Optimiser, lr schedule and accumulation: the recipe's ``optim`` (:mod:`treesdk.training.optimisation.optimization`).
    """

    def __init__(
        self,
        parts: RunParts,
        out_dir: str | Path | None = None,
        *,
        collective: Collective | None = None,
        callbacks: Sequence[Callback] = (),
        on_step: Callable[[str, int, int], None] | None = None,
    ) -> None:
        self.parts = parts
        self.config = config = parts.config
        if not isinstance(config.recipe, Recipe):
            raise ValueError("Trainer needs the resolved recipe in parts.config (build the parts with build_run_parts)")
        self.recipe: Recipe = config.recipe
        self.backend, self.rewards, self.prompts = parts.backend, dict(parts.rewards), list(parts.prompts)
        self.weights = {name: float(r.weight) for name, r in config.rewards.items() if name in self.rewards}
        self.iters, self.batch, self.seed = config.iters, config.batch, config.seed
        self.collective = collective or Collective()
        world = self.collective.world_size
        if not self.prompts:
            raise ValueError("no training prompts")
        if self.batch < world:
            raise ValueError(f"--batch {self.batch} is smaller than the number of ranks {world}: every rank needs a tree")
        if self.collective.fsdp is not None and self.batch % world:
            raise ValueError(f"--fsdp needs --batch divisible by the number of ranks ({self.batch} % {world} != 0): "
                             "every FSDP forward is a collective, so every rank must sample the same number of trees")
        self.out = Path(out_dir) if out_dir is not None else None
        self.eval_prompts, self.eval_seeds = list(parts.eval_prompts), list(parts.eval_seeds)
        self.eval_rewards = {**self.rewards, **parts.eval_reward_models}
        self.export_format = parts.export_format
        self.callbacks, self.on_step = list(callbacks), on_step
        logging_ = config.logging
        self.report_to = [n for n in logging_.report_to if logging_.tensorboard or n != "tensorboard"]
        self.ema_config = config.ema
        if self.ema_config.enabled and self.collective.fsdp is not None:
            raise ValueError("--ema-decay with --fsdp is not supported yet (the average would be sharded); drop one of them")

        # the parts, built from the recipe through the registry
        if self.collective.fsdp is not None:
            self.collective.fsdp.shard(self.backend)
        self.estimator = parts_registry.build("advantage", self.recipe.advantage)
        self.loss_terms = [(parts_registry.build("loss", spec), float(spec.weight)) for spec in self.recipe.losses]
        self.mean_std = parts_registry.build("sde", self.recipe.sde)
        self.params = self.backend.trainable_parameters()
        if not self.params:
            raise ValueError(f"backend {self.backend.name!r} has no trainable parameters")
        self.optimization = Optimization(self.params, self.recipe.optim, self.iters, self.ema_config)
        self.old_policy = behaviour_policy(self.loss_terms, self.params)  # forward-process recipes: v_old, sampling
        if self.old_policy is not None and self.collective.fsdp is not None:  # shards overwritten in place
            self.old_policy.on_swap = self.collective.fsdp.reshard  # (EMA with FSDP is refused)
        self.optimizer = self.optimization.optimizer
        self.profiler = PhaseProfiler(self.backend.device, enabled=logging_.profile)  # seconds, peak memory per phase
        # optimiser steps taken, and the count when the running update began: are the weights the last iteration's?
        self._optimizer_steps = 0
        self._update_began_at: int | None = None
        self._last_checkpoint = 0

        self.iteration = 0
        self.run = Run(out_dir=self.out, iterations=0)
        self.log: Loggers = Loggers()
        self._stop_requested = False

    @classmethod
    def from_config(
        cls,
        config: RunConfig,
        out_dir: str | Path | None = None,
        *,
        collective: Collective | None = None,
        callbacks: Sequence[Callback] = (),
        on_step: Callable[[str, int, int], None] | None = None,
    ) -> Trainer:
        """Build every part a :class:`RunConfig` names: the backend, the recipe (resolved with the
        backend's scale defaults), rewards, prompts and the evaluation set."""
        return cls(build_run_parts(config), out_dir, collective=collective, callbacks=callbacks, on_step=on_step)

    # -- the run, step by step -------------------------------------------------------------------

    def start(self, resume: bool = False, *, check_folder: bool = True) -> None:
        """Prepare the run folder: resume from its newest checkpoint, or write ``config.json`` and
        score the evaluation set before training. ``check_folder=False``: the caller checked it
        (:func:`~treesdk.training.run_folder.run_folders.check_out_dir`), as :func:`treesdk.train` does."""
        out, main = self.out, self.collective.is_main
        if out is not None and main:
            if check_folder:
                check_out_dir(out, resume, restarted=restart_count() > 0)  # a folder holds one run
            for sub in ("samples", "checkpoints", "export"):
                (out / sub).mkdir(parents=True, exist_ok=True)
        if resume:
            if out is None:
                raise ValueError("resume needs the run folder (out_dir)")
            self._resume(out)
        elif out is not None and main:
            (out / "config.json").write_text(self.config.to_json())
        self.optimization.start(self.iteration)
        self.log = build_loggers(self.report_to, out if main else None, config=self.config.model_dump(mode="json"),
                                 resume_from=self.iteration if resume else None)
        if self.eval_prompts and not resume:
            self.run.eval_before = self.evaluate("start")

    def step(self) -> dict[str, Any]:
        """One iteration on this rank's slots of the batch; returns its metrics row."""
        c, recipe, p = self.collective, self.recipe, self.profiler.run
        t0 = time.perf_counter()
        slots = list(range(c.rank, self.batch, c.world_size))
        batch_prompts = iteration_prompts(self.prompts, self.batch, self.seed, self.iteration)
        prompts = [batch_prompts[s] for s in slots]
        seeds = [slot_seed(self.seed, self.iteration, s) for s in slots]
        start = recipe.window_start(self.iteration, self.seed)

        # 1. sample the forest with the frozen behaviour policy, 2. decode the leaves and score them (NaN/inf
        # stops here, before any update; I/O-bound rewards score each group of trees while the next is sampled)
        progress = (lambda i, n: self.on_step("sampling", i, n)) if self.on_step else None
        cond = p("encode", self.backend.encode, prompts)
        with sampling_weights(self.old_policy):  # the old policy's weights where the recipe samples with them
            forest, scores, t1 = sample_and_score(self.backend, recipe, prompts, seeds, start, cond, self.rewards,
                                                  mean_std=self.mean_std, progress=progress, phase=self._phase, run=p)
        t2 = time.perf_counter()

        # 3. advantages on the edges, then 4. the policy update: its optimiser steps are
        # self.optimizer_step (the step and its companions, in order)
        with whole_batch(c.gather_leaf_values):  # global_std sees every rank's leaves (one process: its own)
            advantages = p("advantages", self.estimator, forest, scores, self.weights)
        targets = prune_edges(recipe, forest, advantages, self.iteration, self.iters)
        o = recipe.optim
        self._update_began_at = self._optimizer_steps
        self._phase("optimizer", 0, self.optimization.steps_per_iteration)
        stats = p(
            "training", policy_update, self.backend, forest, targets, self.loss_terms, StepCalls(self.optimizer, self.optimizer_step),
            self.params, passes=o.passes, minibatches=o.minibatches, chunk=recipe.training_chunk, grad_clip=o.grad_clip,
            reduce_gradients=c.reduce_gradients if c.world_size > 1 else None, seeds=seeds)
        t3 = time.perf_counter()
        self.iteration += 1
        lr_used = self.optimization.end_iteration()  # 5. the lr schedule, stepped once per iteration
        self._update_began_at = None

        raw = targets.leaf_rewards
        row: dict[str, Any] = {
            "iteration": self.iteration,
            "window_start": start,
            "trees": len(prompts),
            "leaves": int(forest.leaves.shape[0]),
            "nfe_sampling": forest.nfe, "nfe_training": stats.nfe_training, "nfe_reference": stats.nfe_reference,
            "reward_mean": float(raw.mean()), "reward_std": float(raw.std(unbiased=False)), "reward_max": float(raw.max()),
            "loss": sum(v for k, v in stats.metrics.items() if k.startswith("loss_")),
            "clip_fraction": stats.metrics.get("clip_fraction", 0.0),
            "grad_norm": stats.grad_norm,
            "seconds_sampling": t1 - t0, "seconds_reward": t2 - t1, "seconds_training": t3 - t2, "seconds": t3 - t0,
            **{f"{name}_mean": float(v.mean()) for name, v in scores.items()},
            **stats.metrics,
            **lr_used,
            **({"profile": self.profiler.take()} if self.profiler.enabled else {}),
        }
        if c.world_size > 1:
            row = {**row, **c.reduce_metrics({k: v for k, v in row.items() if isinstance(v, (int, float))})}
        self.run.history.append(row)
        if c.is_main:
            self.log.log_metrics(row, self.iteration)
            self.log.log_reward_histograms(raw, scores, self.iteration)
        for callback in self.callbacks:
            if callback(row) is True:
                self._stop_requested = True
        return row

    def optimizer_step(self) -> None:
        """One optimiser step and its companions, in this order: the step (timed as the
        ``optimizer`` phase under ``--profile``), the EMA update (every ``ema.every``-th step), the
        step count (the live weights are no longer the last iteration's), the progress display."""
        self.profiler.run("optimizer", self.optimizer.step)
        if self.optimization.ema is not None:
            self.optimization.ema.step()
        self._optimizer_steps += 1
        self._phase("optimizer", self._optimizer_steps - (self._update_began_at or 0), self.optimization.steps_per_iteration)

    def checkpoint(self) -> None:
        """Write a checkpoint of the current iteration (rank 0 writes; under FSDP every rank gathers)."""
        if self.out is None:
            return
        fsdp, main = self.collective.fsdp, self.collective.is_main
        if not main and fsdp is None:
            return
        trainable: Any = self.backend.trainable_state_dict()
        optim: Any = self.optimizer
        old = old_policy_tensors(self.old_policy, fsdp)  # forward-process recipes' old policy, "old.*"
        if fsdp is not None:
            trainable = fsdp.full_tensors(trainable)
            optim = fsdp.full_optimizer_state(self.optimizer)
        if main:
            state = {"recipe": self.recipe.model_dump(mode="json"), "eval_before": self.run.eval_before, "backend": self.backend.name}
            save_checkpoint(self.out, self.iteration, trainable, optim, state, keep=self.config.checkpoint.keep,
                            extra={**self.optimization.checkpoint_tensors(), **old})
        self._last_checkpoint = self.iteration

    def evaluate(self, tag: str = "eval") -> dict[str, float]:
        """Score deterministic ODE samples of the evaluation set with every reward (with the EMA
        weights when asked); the grid goes to ``samples/<tag>.png`` and to the loggers, the means
        to the loggers (``"eval": true``)."""
        if not self.eval_prompts:
            return {}
        self._phase("evaluation", 0, 1)
        with self.optimization.weights_for("eval") as averaged:
            means, _, images = evaluate(self.backend, self.eval_rewards, self.eval_prompts, self.eval_seeds, self.recipe.steps,
                                         self.recipe.chunk, self.recipe.decoding_chunk)
        self.run.evaluations.append({"iteration": self.iteration, "tag": tag, **means})
        if self.out is not None and self.collective.is_main:
            nrow = min(10, len(self.eval_prompts))
            save_grid(images, self.out / "samples" / f"{tag}.png", nrow=nrow)
            self.log.log_metrics({"eval": True, "iteration": self.iteration, "tag": tag, "ema": averaged, **means}, self.iteration)
            self.log.log_images("samples", make_grid(images, nrow=nrow).permute(2, 0, 1).float() / 255.0, self.iteration)
        self._phase("evaluation", 1, 1)
        return means

    def finish(self) -> Run:
        """Evaluate after training and export the policy; returns the :class:`Run`."""
        self.run.iterations = self.iteration
        if self.run.interrupted:
            return self.run
        if self.eval_prompts:
            self.run.eval_after = self.evaluate("end")
        out, fmt = self.out, self.export_format
        if out is not None and self.collective.is_main and fmt:
            target = out / "export" / default_export_name(fmt)
            if self.collective.fsdp is not None:  # the live weights are shards: export the final (full) checkpoint
                self.run.exported = export_run(out, fmt, target, device="cpu")
            else:
                meta = export_metadata(self.backend.name, self.backend.describe(), self.recipe, self.iteration)
                with self.optimization.weights_for("export") as averaged:
                    self.run.exported = self.backend.export(fmt, str(target), {**meta, "treesdk.ema": str(averaged)})
                write_model_card(self.run.exported, fmt, meta, rewards=self.weights)
        return self.run

    def request_stop(self) -> None:
        """Stop after the current iteration (with a checkpoint), as SIGINT/SIGTERM do."""
        self._stop_requested = True

    def fit(self, resume: bool = False, *, check_folder: bool = True) -> Run:
        """Start (or resume), step until ``iters`` or a stop request, checkpoint, finish."""
        lock = RunLock(self.out) if self.out is not None and self.collective.is_main else None
        try:
            if lock is not None:
                lock.acquire()  # one live run per folder
            self.start(resume, check_folder=check_folder)
            with StopRequest() as signals:
                stopping = self.collective.any_rank(signals.requested or self._stop_requested)
                while self.iteration < self.iters and not stopping:
                    self.step()
                    every = self.config.logging.eval_every
                    if every and self.iteration % every == 0 and self.iteration < self.iters:
                        self.evaluate(f"iter_{self.iteration}")
                    stopping = self.collective.any_rank(signals.requested or self._stop_requested)
                    due = self.config.checkpoint.every and self.iteration % self.config.checkpoint.every == 0
                    if due or stopping or self.iteration == self.iters:
                        with signals.deferred():  # a second signal waits for the checkpoint
                            self.profiler.run("checkpoint", self.checkpoint)
                self.run.interrupted = stopping and self.iteration < self.iters
                self.run.stop_signal = signals.signum if self.run.interrupted else None
            return self.finish()
        except (Exception, KeyboardInterrupt):  # a second SIGINT too: the finished iterations are kept
            self._checkpoint_on_failure()
            raise
        finally:
            self.log.close()
            if lock is not None:
                lock.release()

    def _checkpoint_on_failure(self) -> None:
        """After an error (NaN reward, full disk, dead rank, bug), checkpoint the last completed
        iteration if the live weights are still its own (no optimiser step of a failed update);
        rank 0 alone, so not under FSDP. A failure here is reported, never raised over the error."""
        consistent = self._update_began_at is None or self._update_began_at == self._optimizer_steps
        if self.out is None or not self.collective.is_main or self.collective.fsdp is not None or not consistent \
                or self.iteration <= self._last_checkpoint:
            return
        try:
            self.checkpoint()
        except Exception as exc:  # noqa: BLE001 - the original error is the one to raise
            _log.warning("warning: could not write a checkpoint of iteration %d after the error: %s", self.iteration, exc)
            return
        _log.warning("warning: checkpoint of iteration %d written before stopping on the error below; continue with "
                     "--resume once it is fixed", self.iteration)

    # -- helpers ---------------------------------------------------------------------------------

    def _phase(self, phase: str, done: int, total: int) -> None:
        if self.on_step is not None:
            self.on_step(phase, done, total)

    def _resume(self, out: Path) -> None:
        c = self.collective
        loaded = load_checkpoint(out) if c.is_main or c.world_size == 1 else None
        trainable, optim_state, state = c.broadcast_object(loaded)
        if c.fsdp is not None:  # full tensors from the checkpoint -> this rank's shards
            trainable = c.fsdp.shard_like(trainable, self.backend.trainable_state_dict())
            optim_state = c.fsdp.shard_optimizer_state(optim_state, self.optimizer)
        self.backend.load_trainable_state_dict(trainable)
        self.optimizer.load_state_dict(optim_state)
        restore_rng_state(state.pop("rng", {}))
        self.optimization.load_checkpoint_tensors(extra := state.pop("extra", {}))
        restore_old_policy(self.old_policy, extra, c.fsdp)
        self.iteration = int(state["iteration"])
        self._last_checkpoint = self.iteration
        self.run.eval_before = state.get("eval_before", {})


__all__ = ["Callback", "Run", "Trainer", "iteration_prompts", "slot_seed"]
