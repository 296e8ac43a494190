"""Training over several processes with ``torch.distributed``: one process (rank) per device.

How the work is split (see :func:`treesdk.training.loop.trainer.train`): ``--batch`` is global; rank ``r`` of
``W`` owns the batch slots ``r, r + W, ...`` and samples *whole trees* there, with the noise of
slot ``s`` seeded by ``(seed, iteration, s)``. Seeds therefore belong to prompts and trees, never to
ranks: no two ranks sample the same noise, and the number of ranks does not change what is sampled.
Group statistics (per-prompt advantage normalisation) need no communication because a prompt's
tree lives on one rank.

What is communicated, and how:

* **Gradients** (:meth:`DistributedContext.reduce_gradients`): after each minibatch's backward and
  before clipping, the gradients of ``backend.trainable_parameters()`` are averaged over ranks with
  one ``all_reduce`` per bucket. This is exactly what ``DistributedDataParallel`` does, written out
  by hand because a backend is not an ``nn.Module`` (a FLUX backend holds a transformer with LoRA
  adapters, a VAE and text encoders; the analytic test model holds one tensor), so wrapping it in
  DDP is not possible in general; averaging the gradients of the trainable parameters is the
  backend-agnostic equivalent. Since every rank then takes the same optimiser step from the same
  starting weights (broadcast from rank 0 at start), the weights stay identical on all ranks.
  Low-precision gradients (bf16/fp16) are summed in float32.
* **Metrics** (:meth:`DistributedContext.reduce_metrics`): each iteration's row is gathered and
  combined by :func:`reduce_metric_rows` (counts summed, rewards averaged over leaves, seconds
  maxed) so ``metrics.jsonl`` describes the whole global batch.
* **Stop requests** (:meth:`DistributedContext.any_rank`): SIGINT/SIGTERM on any rank stops every
  rank after the same iteration (otherwise one rank would wait forever in the next all-reduce).
* **Checkpoints**: only rank 0 reads and writes them; on resume it broadcasts the loaded state
  (:meth:`DistributedContext.broadcast_object`), so nodes need no shared file system.

Faults: every collective runs under the process-group timeout (``TREESDK_DIST_TIMEOUT`` seconds,
default :data:`DEFAULT_TIMEOUT_S`); a rank that dies makes the others fail that collective (at once
when the peer's connection closes, at the latest after the timeout) and exit with a
:class:`DistributedError` that says so, instead of hanging.

FSDP (``--fsdp``, :class:`~treesdk.training.parallel.fsdp.FullyShardedTraining`): for full fine-tunes that do not fit one device,
the modules a backend names in :meth:`~treesdk.interfaces.VelocityModel.fsdp_modules` are wrapped
with FSDP2 ``fully_shard`` (innermost first, the root last). Each rank then holds ``1/W`` of the
trainable parameters, gradients and AdamW state; forwards all-gather a block's weights, backwards
reduce-scatter (average) its gradients, so the all-reduce hook above is not used. Checkpoints
still hold FULL tensors in the single-process format (gathered per tensor with
``DTensor.full_tensor()``, moved to the CPU), so they load on any world size, with or without
FSDP; resume re-shards them. Without ``--fsdp`` every rank holds the full trainable parameters
and optimiser state (right for LoRA, the default of the diffusers backends). See
``docs/distributed.md``.
"""

from __future__ import annotations

import datetime
import math
import os
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

import torch
import torch.distributed as dist

from treesdk.errors import DistributedError  # noqa: F401 - raised here, re-exported for callers
from treesdk.training.run_folder.checkpoint import list_checkpoints
from treesdk.training.parallel.collective import Collective
from treesdk.training.parallel.fsdp import FullyShardedTraining

T = TypeVar("T")

#: seconds a collective may wait for the other ranks before the run fails (``TREESDK_DIST_TIMEOUT``)
DEFAULT_TIMEOUT_S = 1800.0
#: elements per gradient all-reduce bucket (float32: 100 MB)
BUCKET_ELEMENTS = 25_000_000

#: metric keys summed over ranks (besides every ``nfe_*``)
SUM_KEYS = frozenset({"trees", "leaves"})
#: metric keys that are the same on every rank; rank 0's value is kept
SAME_KEYS = frozenset({"iteration", "window_start", "grad_norm"})


def launched_by_torchrun(environ: Mapping[str, str] | None = None) -> bool:
    """True inside a worker started by ``torchrun`` (or any launcher setting ``RANK``/``WORLD_SIZE``)."""
    env = os.environ if environ is None else environ
    return "RANK" in env and "WORLD_SIZE" in env


def timeout_seconds(environ: Mapping[str, str] | None = None) -> float:
    """The collective timeout: ``TREESDK_DIST_TIMEOUT`` (seconds) or :data:`DEFAULT_TIMEOUT_S`."""
    env = os.environ if environ is None else environ
    raw = env.get("TREESDK_DIST_TIMEOUT")
    if raw is None:
        return DEFAULT_TIMEOUT_S
    try:
        value = float(raw)
    except ValueError:
        raise ValueError(f"TREESDK_DIST_TIMEOUT={raw!r} is not a number of seconds (e.g. 1800)") from None
    if not value > 0:
        raise ValueError(f"TREESDK_DIST_TIMEOUT={raw!r} must be a positive number of seconds")
    return value


def restart_count(environ: Mapping[str, str] | None = None) -> int:
    """How many times torchrun has restarted this worker group (``TORCHELASTIC_RESTART_COUNT``)."""
    env = os.environ if environ is None else environ
    return int(env.get("TORCHELASTIC_RESTART_COUNT", "0") or 0)


@dataclass
class DistributedContext(Collective):
    """This process's place in the job; the :class:`~treesdk.training.parallel.collective.Collective` the
    trainer talks to (gradients, metrics, stop flags, broadcasts, FSDP).

    ``world_size == 1`` (no process group) is a valid context whose calls do nothing.
    """

    rank: int = 0
    world_size: int = 1
    local_rank: int = 0
    local_world_size: int = 1
    device: torch.device = field(default_factory=lambda: torch.device("cpu"))
    backend: str | None = None  # "nccl" | "gloo" | None (single process)
    timeout_s: float = DEFAULT_TIMEOUT_S
    fsdp: Any = None  # a FullyShardedTraining once with_fsdp() was called on an active group
    failed: bool = False  # a collective failed: the group is broken (see :func:`shutdown`)

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def active(self) -> bool:
        """A process group with more than one rank is in use."""
        return self.world_size > 1 and dist.is_available() and dist.is_initialized()

    # -- error wrapping -------------------------------------------------------------------------
    def _run(self, what: str, fn: Callable[[], T]) -> T:
        try:
            return fn()
        except DistributedError:
            raise
        except Exception as exc:
            self.failed = True
            raise DistributedError(
                f"rank {self.rank} of {self.world_size}: {what} failed ({type(exc).__name__}: "
                f"{str(exc).strip().splitlines()[0] if str(exc).strip() else 'no message'}). Another rank most "
                f"likely died or stalled: look at its log for the first error. Collectives wait at most "
                f"{self.timeout_s:g} s (set TREESDK_DIST_TIMEOUT to change it)."
            ) from exc

    def _tensor(self, values: Sequence[float], dtype: torch.dtype) -> torch.Tensor:
        return torch.tensor(list(values), dtype=dtype, device=self.device)

    # -- the Collective calls -------------------------------------------------------------------
    def reduce_gradients(self, params: Sequence[torch.nn.Parameter]) -> None:
        """Average ``p.grad`` over ranks in place (DDP semantics); see :func:`average_gradients`.
        Under FSDP the backward pass already reduce-scattered them: nothing to do."""
        if self.active and self.fsdp is None:
            self._run("all_reduce of gradients", lambda: average_gradients(params, self.world_size))

    def reduce_metrics(self, row: dict[str, float]) -> dict[str, float]:
        """Gather every rank's metrics row and combine them with :func:`reduce_metric_rows`."""
        if not self.active:
            return dict(row)
        rows: list[Any] = [None] * self.world_size
        self._run("all_gather of metrics", lambda: dist.all_gather_object(rows, dict(row)))
        return reduce_metric_rows(rows)

    def gather_leaf_values(self, values: torch.Tensor, leaves_per_prompt: int) -> torch.Tensor:
        """Every rank's per-leaf ``values`` in batch-slot order: rank ``r`` holds slots ``r, r + W, ...``,
        each ``leaves_per_prompt`` values long (gathered as objects, so any backend and device)."""
        if not self.active:
            return values
        parts: list[Any] = [None] * self.world_size
        mine = values.detach().cpu().reshape(-1, leaves_per_prompt)
        self._run("all_gather of leaf values", lambda: dist.all_gather_object(parts, mine))
        slots = sum(p.shape[0] for p in parts)
        ordered = [parts[s % self.world_size][s // self.world_size] for s in range(slots)]
        return torch.cat(ordered).to(values.device)

    def any_rank(self, flag: bool) -> bool:
        """True on every rank when ``flag`` is true on at least one (used for stop requests)."""
        if not self.active:
            return bool(flag)
        value = self._tensor([1 if flag else 0], torch.int32)
        self._run("all_reduce of the stop flag", lambda: dist.all_reduce(value, op=dist.ReduceOp.MAX))
        return bool(value.item())

    def broadcast_object(self, obj: T) -> T:
        """Rank 0's ``obj`` on every rank (pickled; tensors come back on the device they were on)."""
        if not self.active:
            return obj
        box = [obj if self.is_main else None]
        self._run("broadcast from rank 0", lambda: dist.broadcast_object_list(box, src=0))
        return box[0]  # type: ignore[return-value]

    def broadcast_parameters(self, params: Sequence[torch.Tensor]) -> None:
        """Copy rank 0's values of ``params`` to every rank (what DDP does at construction), so a
        backend whose adapters were initialised with a different random state starts in sync."""
        if not self.active:
            return

        def run() -> None:
            with torch.no_grad():
                for p in params:
                    buffer = p.detach().to(self.device).contiguous()
                    dist.broadcast(buffer, src=0)
                    p.copy_(buffer.to(p.device))

        self._run("broadcast of the initial weights", run)

    def barrier(self) -> None:
        if self.active:
            self._run("barrier", lambda: dist.barrier())

    def with_fsdp(self, fsdp: bool = True) -> DistributedContext:
        """This context with FSDP (``--fsdp``) switched on: the trainer shards the backend's
        ``fsdp_modules()`` and gradients are reduced by FSDP itself. With one process FSDP changes
        nothing and is left off."""
        if fsdp and self.active and self.fsdp is None:
            self.fsdp = FullyShardedTraining(self)
        return self


def init_distributed(
    backend: str | None = None,
    timeout_s: float | None = None,
    environ: Mapping[str, str] | None = None,
) -> DistributedContext:
    """Join the process group described by torchrun's environment variables.

    Outside torchrun (no ``RANK``/``WORLD_SIZE``) returns a single-process context and starts
    nothing. Inside: backend ``nccl`` when CUDA is available (device ``cuda:LOCAL_RANK``, made the
    current device), else ``gloo`` on the CPU; the timeout is ``timeout_s`` or
    :func:`timeout_seconds`. ``MASTER_ADDR``/``MASTER_PORT`` (set by torchrun) locate rank 0.
    """
    env = os.environ if environ is None else environ
    timeout = float(timeout_s) if timeout_s is not None else timeout_seconds(env)
    if not launched_by_torchrun(env):
        device = torch.device("cuda") if torch.cuda.is_available() else torch.device("cpu")
        return DistributedContext(device=device, timeout_s=timeout)
    rank, world = int(env["RANK"]), int(env["WORLD_SIZE"])
    local_rank = int(env.get("LOCAL_RANK", rank))
    local_world = int(env.get("LOCAL_WORLD_SIZE", world))
    if backend is None:
        backend = "nccl" if torch.cuda.is_available() else "gloo"
    if backend == "nccl":
        count = torch.cuda.device_count()
        if local_rank >= count:
            raise DistributedError(
                f"LOCAL_RANK {local_rank} needs GPU cuda:{local_rank} but this node has {count} GPU(s); "
                f"use --nproc-per-node {count} or fewer"
            )
        torch.cuda.set_device(local_rank)
        device = torch.device("cuda", local_rank)
        # a failed NCCL collective aborts the communicator and raises instead of hanging
        os.environ.setdefault("TORCH_NCCL_ASYNC_ERROR_HANDLING", "1")
    else:
        device = torch.device("cpu")
    ctx = DistributedContext(
        rank=rank, world_size=world, local_rank=local_rank, local_world_size=local_world,
        device=device, backend=backend, timeout_s=timeout,
    )
    if world > 1 and not dist.is_initialized():
        ctx._run(
            f"joining the process group ({backend}, MASTER_ADDR={env.get('MASTER_ADDR')}, "
            f"MASTER_PORT={env.get('MASTER_PORT')})",
            lambda: _join(backend, rank, world, datetime.timedelta(seconds=timeout), restart_count(env)),
        )
    return ctx


def _join(backend: str, rank: int, world: int, timeout: datetime.timedelta, attempt: int) -> None:
    """``init_process_group`` over the ``env://`` store (torchrun's agent store, or one hosted by
    rank 0), with keys prefixed by the restart attempt: after a torchrun restart the store still
    holds the dead workers' addresses, and gloo would try to connect to them."""
    store, _, _ = next(dist.rendezvous("env://", rank, world, timeout=timeout))
    store = dist.PrefixStore(f"treesdk/attempt{attempt}", store)
    dist.init_process_group(backend=backend, store=store, rank=rank, world_size=world, timeout=timeout)


def shutdown(ctx: DistributedContext | None, completed: bool = False) -> None:
    """Leave the process group (no-op for a single process).

    After a run that ``completed`` on this rank, a barrier first waits for every other rank, so no
    rank tears its connections down while a peer still uses them (seen as a gloo abort in the
    peer at exit). After a failure there is nobody reliable to wait for: leave at once. After a
    failed collective the group is left alone: tearing down a gloo group whose peer still holds the
    connection can abort the process (``terminate called without an active exception``) instead of
    letting it exit with its error; the caller exits on that error (the CLI with ``os._exit(1)``).
    """
    if ctx is not None and ctx.failed:
        return
    if ctx is not None and ctx.world_size > 1 and dist.is_available() and dist.is_initialized():
        if completed:
            try:
                dist.barrier()
            except Exception:  # noqa: BLE001 - a peer already gone; nothing left to wait for
                pass
        dist.destroy_process_group()


def average_gradients(params: Sequence[torch.nn.Parameter], world_size: int, bucket: int = BUCKET_ELEMENTS) -> None:
    """``p.grad <- sum over ranks of p.grad / world_size`` for every parameter, in place.

    Parameters are packed into flat buckets (per device and dtype) of at most ``bucket`` elements,
    one ``all_reduce(SUM)`` each; bf16/fp16 gradients are summed in float32. A parameter without a
    gradient on this rank contributes zeros; one with no gradient on *any* rank keeps ``grad=None``
    (one presence flag per parameter travels in the bucket), so the optimiser skips it exactly as a
    single process would.
    """
    groups: dict[tuple[torch.device, torch.dtype], list[torch.nn.Parameter]] = {}
    for p in params:
        groups.setdefault((p.device, p.dtype), []).append(p)
    for (device, dtype), members in groups.items():
        reduce_dtype = torch.float32 if dtype in (torch.float16, torch.bfloat16) else dtype
        start = 0
        while start < len(members):
            chunk, size = [], 0
            while start < len(members) and (not chunk or size + members[start].numel() <= bucket):
                chunk.append(members[start])
                size += members[start].numel()
                start += 1
            pieces = [(p.grad if p.grad is not None else torch.zeros_like(p)).reshape(-1).to(reduce_dtype) for p in chunk]
            flags = torch.tensor([float(p.grad is not None) for p in chunk], dtype=reduce_dtype, device=device)
            flat = torch.cat([*pieces, flags])
            dist.all_reduce(flat, op=dist.ReduceOp.SUM)
            present = flat[size:].tolist()  # one device sync per bucket
            means = flat[:size].div_(world_size).split([p.numel() for p in chunk])
            for p, mean, seen in zip(chunk, means, present):
                if seen > 0:
                    mean = mean.view_as(p).to(dtype)
                    if p.grad is None:
                        p.grad = mean.clone()
                    else:
                        p.grad.copy_(mean)


def reduce_metric_rows(rows: Sequence[Mapping[str, float]]) -> dict[str, float]:
    """Combine one metrics row per rank into the row of the global batch.

    Rules by key: ``trees``, ``leaves`` and ``nfe_*`` are summed; ``seconds*`` and ``*_max`` take
    the maximum (the slowest rank sets the pace), ``*_min`` the minimum; ``iteration``,
    ``window_start`` and ``grad_norm`` (equal on every rank after the gradient all-reduce) keep
    rank 0's value; ``reward_std`` is the pooled population std of all leaves (from each rank's
    ``leaves``, ``reward_mean``, ``reward_std``); ``reward_mean`` and every other ``*_mean`` are
    averaged weighted by ``leaves``; anything else (losses, clip fraction, ratios) is the plain mean.
    Integers stay integers when every rank's value is an integer. Keys missing on some rank are
    combined over the ranks that have them.
    """
    if not rows:
        return {}
    keys = list(dict.fromkeys(k for row in rows for k in row))
    leaves = [float(row.get("leaves", 1.0)) or 1.0 for row in rows]
    out: dict[str, float] = {}
    for key in keys:
        have = [(row[key], w) for row, w in zip(rows, leaves) if key in row]
        values = [v for v, _ in have]
        if key in SUM_KEYS or key.startswith("nfe_"):
            value: float = sum(values)
        elif key.startswith("seconds") or key.endswith("_max"):
            value = max(values)
        elif key.endswith("_min"):
            value = min(values)
        elif key in SAME_KEYS:
            value = values[0]
        elif key == "reward_std" and all("reward_mean" in row for row in rows):
            total = sum(w for _, w in have)
            mean = sum(row["reward_mean"] * w for row, w in zip(rows, leaves)) / total
            second = sum((row["reward_std"] ** 2 + row["reward_mean"] ** 2) * w for row, w in zip(rows, leaves)) / total
            value = math.sqrt(max(second - mean**2, 0.0))
        elif key.endswith("_mean"):
            value = sum(v * w for v, w in have) / sum(w for _, w in have)
        else:
            value = sum(values) / len(values)
        if all(isinstance(v, int) and not isinstance(v, bool) for v in values) and float(value).is_integer():
            value = int(value)
        out[key] = value
    return out


def resume_decision(ctx: DistributedContext, run_dir: str | Path | None, resume: bool) -> bool:
    """Whether this worker should resume: ``resume`` as asked, or, when torchrun restarted the
    worker group (``--max-restarts``), whenever the run folder already holds a checkpoint.

    Rank 0 looks at its disk and broadcasts the answer. A restart that finds no checkpoint starts
    over, and rank 0 empties the stale ``metrics.jsonl`` of the failed attempt first.
    """
    decision = resume
    if ctx.is_main and not resume and run_dir is not None and restart_count() > 0:
        if list_checkpoints(run_dir):
            decision = True
        else:
            stale = Path(run_dir) / "metrics.jsonl"
            if stale.is_file():
                stale.unlink()
    return bool(ctx.broadcast_object(decision))
