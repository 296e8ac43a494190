"""The optimiser of a run with its learning-rate schedule and EMA, as the trainer uses them.

:class:`Optimization` builds the optimiser named in the recipe (``optim.optimizer``, see
:mod:`treesdk.training.optimisation.optimizers`), an lr schedule stepped once per iteration (``optim.lr_schedule``,
``optim.lr_warmup``, ``optim.lr_min_factor``; :mod:`treesdk.training.optimisation.schedules`) and, when
``EMAConfig.decay > 0``, an EMA of the trainable weights updated after optimiser steps
(:mod:`treesdk.training.optimisation.ema`). Its checkpoint tensors (``ema.*``) make a resumed run continue the same
average; the schedule needs no state (it is a function of the iteration).

Gradient accumulation is explicit in the recipe: each iteration runs ``optim.passes x
optim.minibatches`` optimiser steps; the gradient of one step is accumulated over every velocity
chunk (at most ``chunk`` parent nodes per backward) of every layer of the minibatch's trees
(:func:`accumulation_summary` says it in words).
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any, Literal

import torch
from pydantic import BaseModel, ConfigDict, Field

from treesdk.training.optimisation.ema import EMA
from treesdk.training.optimisation.optimizers import build_optimizer
from treesdk.training.optimisation.schedules import build_lr_scheduler


class EMAConfig(BaseModel):
    """EMA of the trainable weights (``--ema-decay``, ``--ema-every``, ``--ema-use``)."""

    model_config = ConfigDict(extra="forbid")

    decay: float = Field(0.0, ge=0, lt=1, description="EMA of the trainable weights with this decay per update, e.g. 0.999 "
                         "(0: no EMA)", json_schema_extra={"cli": {"panel": "optimisation", "flags": ("--ema-decay",)}})
    every: int = Field(1, ge=1, description="optimiser steps between EMA updates",
                       json_schema_extra={"cli": {"panel": "optimisation", "flags": ("--ema-every",)}})
    warmup: bool = Field(True, description="decay ramp min(decay, (1 + n) / (10 + n)) as diffusers' EMAModel")
    use: Literal["eval+export", "eval", "export", "none"] = Field(
        "eval+export", description="where the averaged weights replace the live ones: eval+export, eval, export, none",
        json_schema_extra={"cli": {"panel": "optimisation", "flags": ("--ema-use",), "kind": "str"}})
    device: str | None = Field(None, description="device of the average (None: beside the weights; 'cpu' saves accelerator memory)")

    @property
    def enabled(self) -> bool:
        return self.decay > 0


class Optimization:
    """Optimiser + lr schedule + optional EMA over ``params``.

    Call :meth:`start` once the optimiser state is loaded (a resumed run) or right away (a new one),
    ``ema.step()`` after each optimiser step (the trainer's ``optimizer_step``: nothing is hooked
    onto the optimiser), :meth:`end_iteration` after each iteration's update, and use
    :meth:`weights_for` around evaluations and exports.
    """

    def __init__(self, params: Sequence[torch.nn.Parameter], optim: Any, iters: int, ema: EMAConfig | None = None) -> None:
        self.params = list(params)
        self.spec = optim
        self.iters = max(int(iters), 1)
        self.optimizer = build_optimizer(getattr(optim, "optimizer", "adamw"), self.params, lr=optim.lr,
                                         betas=tuple(optim.betas), weight_decay=optim.weight_decay, eps=optim.eps)
        self.ema_config = ema or EMAConfig()
        self.ema: EMA | None = None
        if self.ema_config.enabled:
            c = self.ema_config
            self.ema = EMA(self.params, decay=c.decay, every=c.every, warmup=c.warmup, device=c.device)
        self.scheduler: torch.optim.lr_scheduler.LambdaLR | None = None

    @property
    def steps_per_iteration(self) -> int:
        return int(self.spec.passes) * int(self.spec.minibatches)

    def start(self, iteration: int = 0) -> None:
        """Build the lr schedule positioned at ``iteration`` (0 for a new run)."""
        self.scheduler = build_lr_scheduler(
            self.optimizer, getattr(self.spec, "lr_schedule", "constant"), total=self.iters,
            warmup=int(getattr(self.spec, "lr_warmup", 0)), min_factor=float(getattr(self.spec, "lr_min_factor", 0.0)),
            last_iteration=iteration,
        )

    @property
    def lr(self) -> float:
        return float(self.optimizer.param_groups[0]["lr"])

    def end_iteration(self) -> dict[str, float]:
        """Step the schedule; returns the metrics of the iteration just done (``lr`` used)."""
        used = {"lr": self.lr}
        if self.scheduler is None:
            self.start(0)
        assert self.scheduler is not None
        self.scheduler.step()
        return used

    # -- EMA use and checkpoints --------------------------------------------------------------
    @contextlib.contextmanager
    def weights_for(self, purpose: Literal["eval", "export"]) -> Iterator[bool]:
        """Inside the block the trainable parameters hold the EMA weights when EMA is on and
        ``use`` covers ``purpose``; yields whether they do."""
        if self.ema is None or purpose not in self.ema_config.use.split("+"):
            yield False
            return
        with self.ema.swapped_in():
            yield True

    def checkpoint_tensors(self) -> dict[str, torch.Tensor]:
        """Tensors to store in a checkpoint (the EMA state, keys ``ema.*``); empty without EMA."""
        return {k: v.detach().cpu() for k, v in self.ema.state_dict().items()} if self.ema is not None else {}

    def load_checkpoint_tensors(self, tensors: Mapping[str, torch.Tensor]) -> None:
        """Restore :meth:`checkpoint_tensors`. A checkpoint without EMA state (written without
        ``--ema-decay``) restarts the average from the loaded weights."""
        if self.ema is None:
            return
        if any(k.startswith("ema.") for k in tensors):
            self.ema.load_state_dict(tensors)
        else:
            with torch.no_grad():
                for avg, p in zip(self.ema.shadow, self.params):
                    avg.copy_(p.detach().to(device=avg.device, dtype=torch.float32))


class StepCalls:
    """What an update needs of an optimiser, ``zero_grad()`` and ``step()``, with ``step`` being
    ``step_fn`` (the trainer's optimiser step with its companions)."""

    def __init__(self, optimizer: torch.optim.Optimizer, step_fn: Any) -> None:
        self.optimizer, self._step = optimizer, step_fn

    def zero_grad(self, set_to_none: bool = True) -> None:
        self.optimizer.zero_grad(set_to_none=set_to_none)

    def step(self) -> None:
        self._step()


def checkpoint_ema(checkpoint: str | Path) -> dict[str, torch.Tensor]:
    """The EMA tensors (``ema.<position>``) stored in a checkpoint folder; empty when it has none."""
    from safetensors import safe_open

    file = Path(checkpoint) / "optimizer.safetensors"
    if not file.is_file():
        return {}
    with safe_open(str(file), framework="pt") as handle:
        return {k: handle.get_tensor(k) for k in handle.keys() if k.startswith("ema.")}


def load_ema_weights(backend: Any, ema: EMAConfig, checkpoint: str | Path, purpose: Literal["eval", "export"]) -> bool:
    """Put a checkpoint's EMA weights into ``backend.trainable_parameters()`` when the run used EMA
    for ``purpose`` (``ema.use``), as the trainer does at the end of the run; returns whether it did.
    ``treesdk export`` (purpose ``export``) and ``sample``/``eval`` (``eval``) call it after loading
    the checkpoint's raw weights."""
    if not ema.enabled or purpose not in ema.use.split("+"):
        return False
    tensors = checkpoint_ema(checkpoint)
    if not tensors:
        return False
    params = backend.trainable_parameters()
    keys = sorted(tensors, key=lambda k: int(k.split(".", 1)[1]))
    if len(keys) != len(params):
        raise ValueError(f"{checkpoint}: EMA state holds {len(keys)} tensors, the model has {len(params)} trainable parameters")
    with torch.no_grad():
        for key, p in zip(keys, params):
            p.copy_(tensors[key].to(device=p.device, dtype=p.dtype))
    return True


def accumulation_summary(optim: Any, batch: int, world_size: int, chunk: int) -> str:
    """One line: optimiser steps per iteration and what each step's gradient is accumulated over."""
    trees_per_rank = -(-batch // max(world_size, 1))
    minibatches = max(1, min(int(optim.minibatches), trees_per_rank))
    trees = -(-trees_per_rank // minibatches)
    ranks = f" on each of {world_size} ranks, averaged over ranks" if world_size > 1 else ""
    return (f"{int(optim.passes) * minibatches} optimiser step(s) per iteration ({optim.passes} pass(es) x {minibatches} "
            f"minibatch(es)); each accumulates the gradient of up to {trees} tree(s){ranks}, every layer, "
            f"in velocity chunks of at most {chunk} nodes")
