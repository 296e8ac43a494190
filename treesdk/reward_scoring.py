"""Sampling, decoding and scoring one iteration's trees, with I/O-bound rewards scored meanwhile.

A reward whose :attr:`~treesdk.interfaces.RewardModel.io_bound` is True (an HTTP service, a VLM judge)
spends its time waiting. When any reward of a run is, :func:`sample_and_score` samples the trees of
the iteration in :data:`GROUPS` groups of consecutive prompts; each group is decoded and handed to
a worker thread, which scores it while the main thread samples the next group (one group at a
time, or up to a reward's ``in_flight`` groups at once). The forest
is then the groups' forests joined in prompt order, and the scores are concatenated in the same
order, so an overlapped iteration has the same trees, images and scores as one scored synchronously
over the same groups (``overlap=False``, or a reward whose ``overlap`` attribute is False).
Compute-bound rewards are scored in the main thread, after sampling, as before.

Without I/O-bound rewards nothing changes: the forest is sampled in one call, decoded and scored.

An exception in the worker is raised in the main thread (when the next group is handed over, or
once every group has been sampled): a :class:`treesdk.errors.UserError` (a remote reward's named
fault) as it is, anything else as a :class:`RewardScoringError` naming the reward.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Mapping, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from typing import Any

import torch
from torch import Tensor

from .errors import UserError
from .interfaces import Cond, Forest, RewardModel, TreeLayer, VelocityModel, iter_chunks, select_cond
from .rewards import checked_scores, score_images
from .sampler import sample_forest_for_recipe
from .sde import SDE_FAMILIES, SDEFamily

#: tree groups per iteration when a reward is I/O-bound (fewer when there are fewer trees)
GROUPS = 4

#: ``run(phase, fn, *args, **kwargs)``: the profiler's timed call (default: just call)
PhaseRun = Callable[..., Any]


class RewardScoringError(RuntimeError):
    """A reward failed while scoring in the background worker (the message names it)."""


def io_bound(rewards: Mapping[str, RewardModel]) -> bool:
    """True when any of ``rewards`` declares itself I/O-bound."""
    return any(bool(getattr(model, "io_bound", False)) for model in rewards.values())


def overlapped(model: RewardModel) -> bool:
    """Whether ``model`` is scored in the worker: I/O-bound and not asked otherwise (``overlap=False``)."""
    return bool(getattr(model, "io_bound", False)) and bool(getattr(model, "overlap", True))


def decode(model: VelocityModel, latents: Tensor, chunk: int) -> Tensor:
    """``model.decode`` in chunks of ``chunk`` latents: images float32 ``[B, 3, H, W]`` on the CPU."""
    with torch.no_grad():
        return torch.cat([model.decode(latents[part]).float().cpu() for part in iter_chunks(latents.shape[0], chunk)])


def _call(phase: str, fn: Callable[..., Any], *args: Any, **kwargs: Any) -> Any:
    return fn(*args, **kwargs)


class GroupScorer:
    """Scores groups of images in submission order: I/O-bound rewards (:func:`overlapped`) in a
    worker thread when ``overlap`` (``in_flight`` workers when a reward sets that attribute above 1,
    so several groups wait on a slow server at once), the others in the calling thread at :meth:`result`.

    ``submit(images, prompts)`` takes a group (float ``[b, 3, H, W]`` in [0, 1], b prompts);
    ``result()`` waits for every group and returns each reward's float32 ``[B]`` scores, groups
    concatenated in submission order, checked for count and NaN/inf like :func:`treesdk.rewards.score_images`.
    """

    def __init__(self, rewards: Mapping[str, RewardModel], overlap: bool = True) -> None:
        self.rewards = dict(rewards)
        self.background = {name for name, m in self.rewards.items() if overlap and overlapped(m)}
        # groups in flight at once: 1 unless a reward asks for more (its ``in_flight`` attribute)
        workers = max([max(1, int(getattr(self.rewards[n], "in_flight", 1))) for n in self.background] or [1])
        self._pool = ThreadPoolExecutor(max_workers=workers, thread_name_prefix="treesdk-reward") if self.background else None
        self._groups: list[tuple[Tensor, list[str], dict[str, Future[Tensor]]]] = []
        self.seconds_waiting = 0.0  # time result() spent blocked on the worker

    def submit(self, images: Tensor, prompts: Sequence[str]) -> None:
        """Queue a group; raises now the error of an earlier group the worker already failed on."""
        for _, _, earlier in self._groups:
            for name, future in earlier.items():
                if future.done():
                    _worker_result(name, future)
        prompts = list(prompts)
        futures = {name: self._pool.submit(_score, self.rewards[name], images, prompts)
                   for name in self.rewards if name in self.background and self._pool is not None}
        self._groups.append((images, prompts, futures))

    def result(self) -> dict[str, Tensor]:
        try:
            out: dict[str, list[Tensor]] = {name: [] for name in self.rewards}
            for images, prompts, futures in self._groups:
                for name, model in self.rewards.items():
                    if name in futures:
                        start = time.perf_counter()
                        values = _worker_result(name, futures[name])
                        self.seconds_waiting += time.perf_counter() - start
                    else:
                        values = _score(model, images, prompts)
                    values = torch.as_tensor(values).detach().float().cpu().reshape(-1)
                    if values.shape[0] != len(prompts):
                        raise ValueError(f"reward {name!r} returned {values.shape[0]} scores for {len(prompts)} images")
                    out[name].append(values)
            every_prompt = [p for _, prompts, _ in self._groups for p in prompts]  # NaN/inf named by leaf index
            return {name: checked_scores(name, torch.cat(parts) if parts else torch.zeros(0), every_prompt)
                    for name, parts in out.items()}
        finally:
            self.close()

    def close(self) -> None:
        """Stop the worker (pending groups are cancelled)."""
        if self._pool is not None:
            self._pool.shutdown(wait=True, cancel_futures=True)
            self._pool = None


def _score(model: RewardModel, images: Tensor, prompts: list[str]) -> Tensor:
    with torch.no_grad():
        return model.score(images, prompts)


def _worker_result(name: str, future: Future[Tensor]) -> Tensor:
    try:
        return future.result()
    except UserError:
        raise
    except Exception as exc:  # noqa: BLE001 - any failure of the reward is reported under its name
        raise RewardScoringError(f"reward {name!r} failed while scoring in the background: {type(exc).__name__}: {exc}") from exc


def join_forests(parts: Sequence[Forest], cond: Cond) -> Forest:
    """Forests of consecutive prompt groups (same recipe, window and grid) as one forest, prompt-major."""
    first = parts[0]
    offsets = [0]
    for part in parts[:-1]:
        offsets.append(offsets[-1] + part.num_prompts)
    layers = []
    for i, layer in enumerate(first.layers):
        group = [part.layers[i] for part in parts]
        layers.append(TreeLayer(
            step=layer.step, depth=layer.depth, sigma=layer.sigma, sigma_next=layer.sigma_next,
            noise_scale=layer.noise_scale, k=layer.k,
            parents=torch.cat([g.parents for g in group]), children=torch.cat([g.children for g in group]),
            log_probs=torch.cat([g.log_probs for g in group]), velocity=torch.cat([g.velocity for g in group]),
            parent_prompt=torch.cat([g.parent_prompt + o for g, o in zip(group, offsets)]),
            leaves_below=layer.leaves_below,
        ))
    return Forest(
        prompts=[p for part in parts for p in part.prompts], cond=cond, sigmas=first.sigmas, layers=layers,
        leaves=torch.cat([part.leaves for part in parts]), leaves_per_prompt=first.leaves_per_prompt,
        window_start=first.window_start, nfe=sum(part.nfe for part in parts), mean_std=first.mean_std,
    )


def preflight(model: VelocityModel, rewards: Mapping[str, RewardModel], prompts: Sequence[str], decode_chunk: int) -> None:
    """Once per reward, before its first iteration: rewards with a ``preflight(images, prompts)``
    method (a remote reward's count check) get two images decoded from zero latents with real prompts."""
    pending = [m for m in rewards.values() if callable(getattr(m, "preflight", None)) and not getattr(m, "_treesdk_preflown", False)]
    if not pending:
        return
    probe_prompts = [prompts[i % len(prompts)] for i in range(2)]
    images = decode(model, torch.zeros((2, *model.latent_shape), device=model.device), decode_chunk)
    for reward in pending:
        reward.preflight(images, probe_prompts)  # type: ignore[attr-defined]
        reward._treesdk_preflown = True  # type: ignore[attr-defined]


def sample_and_score(
    model: VelocityModel,
    recipe: Any,
    prompts: Sequence[str],
    seeds: Sequence[int],
    window_start: int,
    cond: Cond,
    rewards: Mapping[str, RewardModel],
    *,
    mean_std: SDEFamily = SDE_FAMILIES["flow-sde"],
    progress: Callable[[int, int], None] | None = None,
    phase: Callable[[str, int, int], None] | None = None,
    run: PhaseRun = _call,
    groups: int | None = None,
    overlap: bool = True,
) -> tuple[Forest, dict[str, Tensor], float]:
    """Sample the trees of ``prompts`` (one per seed) with ``recipe``, decode the leaves and score them.

    Returns ``(forest, {reward: float32 [P * L] scores, leaf order}, time.perf_counter() when sampling ended)``.
    ``groups``: tree groups (default :data:`GROUPS` when a reward is I/O-bound, else 1: one call).
    ``overlap``: score I/O-bound rewards in the worker (False: the same groups, scored inline).
    ``run(phase_name, fn, ...)`` times the phases ``sample``, ``decode``, ``reward``; ``phase(name, done,
    total)`` reports ``decoding`` and ``rewards`` for progress displays.
    """
    report = phase or (lambda *_: None)
    chunk = recipe.decoding_chunk
    count = max(1, min(len(prompts), int(groups if groups is not None else (GROUPS if io_bound(rewards) else 1))))
    if count == 1:
        forest = run("sample", sample_forest_for_recipe, model, recipe, prompts, seeds, window_start, cond=cond,
                     progress=progress, mean_std=mean_std)
        sampled = time.perf_counter()
        report("decoding", 0, 1)
        images = run("decode", decode, model, forest.leaves, chunk)
        report("rewards", 0, len(rewards))
        return forest, run("reward", score_images, rewards, images, [prompts[int(i)] for i in forest.leaf_prompt]), sampled

    run("reward", preflight, model, rewards, prompts, chunk)
    bounds = [round(i * len(prompts) / count) for i in range(count + 1)]
    scorer, parts = GroupScorer(rewards, overlap=overlap), []
    try:
        for g, (lo, hi) in enumerate(zip(bounds[:-1], bounds[1:])):
            sub_progress = (lambda i, n, g=g: progress(g * n + i, count * n)) if progress else None
            part = run("sample", sample_forest_for_recipe, model, recipe, prompts[lo:hi], seeds[lo:hi], window_start,
                       cond=select_cond(cond, torch.arange(lo, hi)), progress=sub_progress, mean_std=mean_std)
            images = run("decode", decode, model, part.leaves, chunk)
            scorer.submit(images, [part.prompts[int(i)] for i in part.leaf_prompt])
            parts.append(part)
        sampled = time.perf_counter()
        report("rewards", 0, len(rewards))
        scores = run("reward", scorer.result)
    finally:
        scorer.close()
    return join_forests(parts, cond), scores, sampled
