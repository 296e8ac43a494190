"""Exponential moving average (EMA) of the trainable weights.

After every ``every``-th optimiser step the shadow copy moves towards the live weights::

    ema <- ema + (1 - decay_n) * (param - ema),   decay_n = min(decay, (1 + n) / (10 + n))

where ``n`` counts the updates made so far. The ``(1 + n) / (10 + n)`` ramp (``warmup=True``, the
rule of diffusers' ``EMAModel`` and Flow-GRPO's ``EMAModuleWrapper``) lets the average follow the
weights closely at the start instead of dragging the initial weights along for ``1 / (1 - decay)``
steps; ``warmup=False`` uses ``decay`` from the first update.

The shadow is kept in float32 (whatever the weights' dtype) on the parameters' device, or on
``device`` when given (e.g. ``"cpu"`` to spare accelerator memory). The trainer calls
:meth:`EMA.step` after each optimiser step (``Trainer.optimizer_step``); :meth:`EMA.attach` hooks
it onto an optimiser instead, for loops of your own; :meth:`EMA.swapped_in` puts the averaged weights into the model for evaluation or export and
restores the live weights afterwards. :meth:`EMA.state_dict` goes into checkpoints so that a
resumed run continues the same average.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator, Mapping, Sequence
from typing import Any

import torch
from torch import Tensor


class EMA:
    """Shadow float32 copy of ``params`` updated as the module docstring describes.

    Args:
        params: the trainable parameters (``backend.trainable_parameters()``), in a fixed order;
            the state dict keys are their positions in this list.
        decay: the asymptotic decay in ``[0, 1)``; the average spans about ``1 / (1 - decay)`` updates.
        every: update after every ``every``-th optimiser step (Flow-GRPO's ``update_step_interval``).
        warmup: use the ``min(decay, (1 + n) / (10 + n))`` ramp.
        device: where the shadow lives (default: beside each parameter).
    """

    def __init__(self, params: Sequence[torch.nn.Parameter], decay: float = 0.999, every: int = 1,
                 warmup: bool = True, device: str | torch.device | None = None) -> None:
        if not 0.0 <= float(decay) < 1.0:
            raise ValueError(f"EMA decay {decay!r} must be in [0, 1) (e.g. 0.999)")
        if int(every) < 1:
            raise ValueError(f"EMA update interval {every!r} must be a positive number of optimiser steps")
        self.params = list(params)
        if not self.params:
            raise ValueError("EMA needs at least one trainable parameter")
        self.decay = float(decay)
        self.every = int(every)
        self.warmup = bool(warmup)
        self.device = torch.device(device) if device is not None else None
        self.steps = 0  # optimiser steps seen
        self.updates = 0  # EMA updates made
        with torch.no_grad():
            self.shadow = [p.detach().to(device=self.device or p.device, dtype=torch.float32, copy=True)
                           for p in self.params]
        self._hook: Any = None

    # -- the average --------------------------------------------------------------------------
    def current_decay(self) -> float:
        """The decay of the next update (see module docstring)."""
        if not self.warmup:
            return self.decay
        return min(self.decay, (1.0 + self.updates) / (10.0 + self.updates))

    @torch.no_grad()
    def step(self) -> bool:
        """Count one optimiser step; update the average when it is the ``every``-th. Returns
        whether an update was made."""
        self.steps += 1
        if self.steps % self.every:
            return False
        weight = 1.0 - self.current_decay()
        for avg, p in zip(self.shadow, self.params):
            avg.lerp_(p.detach().to(device=avg.device, dtype=torch.float32), weight)
        self.updates += 1
        return True

    def attach(self, optimizer: torch.optim.Optimizer) -> EMA:
        """Call :meth:`step` after every ``optimizer.step()`` (``register_step_post_hook``)."""
        if self._hook is not None:
            self._hook.remove()
        self._hook = optimizer.register_step_post_hook(lambda *_: self.step())
        return self

    def detach(self) -> None:
        """Remove the optimiser hook set by :meth:`attach`."""
        if self._hook is not None:
            self._hook.remove()
            self._hook = None

    # -- using the averaged weights -----------------------------------------------------------
    @torch.no_grad()
    def copy_to(self, params: Sequence[torch.nn.Parameter] | None = None) -> None:
        """Write the averaged weights into ``params`` (default: the tracked parameters), cast to
        each parameter's dtype."""
        for avg, p in zip(self.shadow, self.params if params is None else params):
            p.copy_(avg.to(device=p.device, dtype=p.dtype))

    @contextlib.contextmanager
    def swapped_in(self) -> Iterator[None]:
        """Inside the block the tracked parameters hold the averaged weights; the live weights
        are restored on exit (also after an error)."""
        with torch.no_grad():
            saved = [p.detach().clone() for p in self.params]
        try:
            self.copy_to()
            yield
        finally:
            with torch.no_grad():
                for p, live in zip(self.params, saved):
                    p.copy_(live)

    # -- checkpoints --------------------------------------------------------------------------
    def state_dict(self) -> dict[str, Tensor]:
        """``{"ema.<position>": float32 tensor}`` plus the counters as 0-d int64 tensors, so the
        whole state fits one safetensors file."""
        out = {f"ema.{i}": t for i, t in enumerate(self.shadow)}
        out["ema_steps"] = torch.tensor(self.steps, dtype=torch.int64)
        out["ema_updates"] = torch.tensor(self.updates, dtype=torch.int64)
        return out

    @torch.no_grad()
    def load_state_dict(self, state: Mapping[str, Tensor]) -> None:
        """Restore :meth:`state_dict`; the tensor count and shapes must match the tracked parameters."""
        keys = sorted((k for k in state if k.startswith("ema.")), key=lambda k: int(k.split(".", 1)[1]))
        if len(keys) != len(self.shadow):
            raise ValueError(f"EMA state holds {len(keys)} tensors but the model has {len(self.shadow)} trainable "
                             "parameters: the checkpoint was written by a different model or LoRA configuration")
        for key, avg in zip(keys, self.shadow):
            value = state[key]
            if tuple(value.shape) != tuple(avg.shape):
                raise ValueError(f"EMA tensor {key} has shape {tuple(value.shape)}, the parameter {tuple(avg.shape)}")
            avg.copy_(value.to(device=avg.device, dtype=torch.float32))
        self.steps = int(state.get("ema_steps", torch.tensor(0)))
        self.updates = int(state.get("ema_updates", torch.tensor(0)))
