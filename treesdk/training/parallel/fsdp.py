"""FSDP2 (``torch.distributed.fsdp.fully_shard``) for full fine-tunes over several ranks; see
:mod:`treesdk.training.parallel.distributed` for how the work is split."""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any, Protocol, TypeVar

import torch

from treesdk.errors import UserError

T = TypeVar("T")


class ShardingContext(Protocol):
    """What FSDP needs of the distributed context that owns it
    (:class:`~treesdk.training.parallel.distributed.DistributedContext`; named here, not imported: the
    context imports this module)."""

    device: torch.device
    world_size: int

    def _run(self, what: str, fn: Callable[[], T]) -> T: ...


class FullyShardedTraining:
    """FSDP2 (``torch.distributed.fsdp.fully_shard``) for a full fine-tune; the ``fsdp`` attribute
    of a :class:`~treesdk.training.parallel.collective.Collective` (``DistributedContext.with_fsdp()``).

    * :meth:`shard` wraps ``backend.fsdp_modules()`` (innermost first, the root last) on a 1-D
      device mesh over all ranks. It must run before the optimiser is built (the trainer does
      this): afterwards ``backend.trainable_parameters()`` are ``DTensor`` shards.
    * :meth:`full_tensors` / :meth:`full_optimizer_state` gather a state dict to full CPU tensors
      (collective: every rank calls them, in the same order; rank 0 writes the result).
    * :meth:`shard_like` / :meth:`shard_optimizer_state` cut a full state dict (as loaded from a
      checkpoint, the same on every rank) into this rank's shards, without communication.

    Every FSDP forward and backward is a collective, so every rank must run the same number of
    velocity calls per iteration: the trainer requires ``batch % world_size == 0`` (equal trees
    per rank) under FSDP.
    """

    def __init__(self, ctx: ShardingContext) -> None:
        self.ctx = ctx
        self.mesh: Any = None
        self._sharded: set[int] = set()
        self.modules: list[torch.nn.Module] = []

    def shard(self, backend: Any) -> None:
        """Apply ``fully_shard`` to ``backend.fsdp_modules()`` (once per backend)."""
        if id(backend) in self._sharded:
            return
        modules = backend.fsdp_modules()
        name = getattr(backend, "name", type(backend).__name__)
        if modules is None:
            raise ValueError(
                f"backend {name!r} does not support FSDP (its fsdp_modules() returns None); "
                "train it without --fsdp (gradients are then averaged with all_reduce, DDP style)"
            )
        modules = list(modules)
        if not modules or not all(isinstance(m, torch.nn.Module) for m in modules):
            raise ValueError(f"backend {name!r}: fsdp_modules() must return a non-empty list of nn.Modules, "
                             f"innermost first and the root last; got {modules!r}")
        try:
            from torch.distributed.device_mesh import init_device_mesh
            from torch.distributed.fsdp import fully_shard
        except ImportError as exc:  # pragma: no cover - torch < 2.6
            raise UserError(f"--fsdp needs torch >= 2.6 (torch.distributed.fsdp.fully_shard); this is torch "
                               f"{torch.__version__}") from exc
        if self.mesh is None:
            self.mesh = init_device_mesh(self.ctx.device.type, (self.ctx.world_size,))
        self.ctx._run("fully_shard of the trainable modules",
                      lambda: [fully_shard(m, mesh=self.mesh) for m in modules])
        self._sharded.add(id(backend))
        self.modules.extend(modules)

    def reshard(self) -> None:
        """Free every sharded module's gathered parameters, so the next forward gathers the shards
        anew: needed after the shards were overwritten in place (the old policy swapped in or out),
        as FSDP keeps the root's parameters gathered between forwards."""
        for module in self.modules:
            module.reshard()

    def full_tensors(self, state: Mapping[str, Any]) -> dict[str, Any]:
        """``state`` with every ``DTensor`` gathered into a full CPU tensor (one collective per
        tensor, so the peak is one full tensor, not the whole model); other values are moved to
        the CPU as they are."""
        from torch.distributed.tensor import DTensor  # as fully_shard above: only where FSDP2 exists (torch >= 2.6)

        def full(value: Any) -> Any:
            if isinstance(value, DTensor):
                return value.full_tensor().cpu()
            return value.detach().cpu() if isinstance(value, torch.Tensor) else value

        return self.ctx._run("gathering the full state dict",
                             lambda: {k: full(v) for k, v in state.items()})

    def full_optimizer_state(self, optimizer: torch.optim.Optimizer) -> dict[str, Any]:
        """``optimizer.state_dict()`` with every sharded state tensor gathered (see :meth:`full_tensors`);
        the format of a single-process optimiser, so the checkpoint loads without FSDP too."""
        state = optimizer.state_dict()
        return {
            "state": {pid: self.full_tensors(entries) for pid, entries in sorted(state["state"].items())},
            "param_groups": state["param_groups"],
        }

    @staticmethod
    def _shard(full: torch.Tensor, like: Any) -> Any:
        from torch.distributed.tensor import DTensor, distribute_tensor  # torch >= 2.6, as above

        if not isinstance(like, DTensor):
            return full
        if tuple(full.shape) != tuple(like.shape):
            raise ValueError(f"full tensor of shape {tuple(full.shape)} does not fit the sharded parameter of "
                             f"global shape {tuple(like.shape)}")
        local = full.to(device=like.to_local().device, dtype=like.dtype)
        # src_data_rank=None: every rank holds the full tensor already, so each cuts its own shard
        return distribute_tensor(local, like.device_mesh, like.placements, src_data_rank=None)

    def shard_like(self, full: Mapping[str, torch.Tensor], like: Mapping[str, Any]) -> dict[str, Any]:
        """Cut each full tensor of ``full`` like the same key of ``like`` (a sharded
        ``backend.trainable_state_dict()``); keys ``like`` lacks are passed on for the backend's
        own strict key check."""
        return {k: self._shard(v, like[k]) if k in like else v for k, v in full.items()}

    def shard_optimizer_state(self, state: Mapping[str, Any], optimizer: torch.optim.Optimizer) -> dict[str, Any]:
        """A full optimiser state dict (int parameter ids in ``param_groups`` order) cut like the
        optimiser's sharded parameters; per-step scalars (``step``) stay as they are."""
        params = [p for group in optimizer.param_groups for p in group["params"]]
        out: dict[Any, Any] = {}
        for pid, entries in state["state"].items():
            param = params[int(pid)] if int(pid) < len(params) else None
            out[pid] = {
                name: self._shard(value, param)
                if param is not None and isinstance(value, torch.Tensor) and tuple(value.shape) == tuple(param.shape)
                else value
                for name, value in entries.items()
            }
        return {"state": out, "param_groups": state["param_groups"]}
