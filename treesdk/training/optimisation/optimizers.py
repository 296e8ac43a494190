"""Optimiser choice: the name in the recipe (``optim.optimizer``) or ``--optimizer`` -> a torch optimiser.

* ``adamw``: ``torch.optim.AdamW`` (the default; lr, betas, eps, weight decay from the recipe).
* ``adamw-8bit``: ``bitsandbytes.optim.AdamW8bit`` (8-bit moments, a quarter of AdamW's state
  memory; needs ``pip install bitsandbytes`` and, for its fast kernels, a GPU).
* ``adafactor``: ``transformers.optimization.Adafactor`` with a fixed lr (``relative_step=False,
  scale_parameter=False, warmup_init=False``, as the diffusers training scripts use it), so the
  recipe's lr and the lr schedule apply as with AdamW; factored second moments, the smallest
  state. Without transformers, ``torch.optim.Adafactor`` (torch >= 2.5), whose lr is relative to
  each parameter's RMS (a different scale: pick the lr again).
* ``sgd``: ``torch.optim.SGD`` with momentum ``betas[0]`` (for tests and ablations).

Every optimiser keeps fp32 state for fp32 master weights; see the README's precision section.
"""

from __future__ import annotations

import importlib.util
from collections.abc import Sequence

import torch

#: optimiser names :func:`build_optimizer` accepts
OPTIMIZERS = ("adamw", "adamw-8bit", "adafactor", "sgd")


def build_optimizer(name: str, params: Sequence[torch.nn.Parameter], *, lr: float,
                    betas: tuple[float, float] = (0.9, 0.999), weight_decay: float = 0.0,
                    eps: float = 1e-8) -> torch.optim.Optimizer:
    """The optimiser ``name`` (see module docstring) over ``params``; a one-line error for an
    unknown name or a missing package."""
    key = name.lower().replace("_", "-")
    if key in ("adamw8bit", "adam8bit", "adam-8bit"):
        key = "adamw-8bit"
    params = list(params)
    if key == "adamw":
        return torch.optim.AdamW(params, lr=lr, betas=betas, weight_decay=weight_decay, eps=eps)
    if key == "adamw-8bit":
        if importlib.util.find_spec("bitsandbytes") is None:
            raise ValueError("optimizer 'adamw-8bit' needs bitsandbytes: pip install bitsandbytes "
                             "(or use --optimizer adamw or adafactor)")
        import bitsandbytes as bnb

        return bnb.optim.AdamW8bit(params, lr=lr, betas=betas, weight_decay=weight_decay, eps=eps)
    if key == "adafactor":
        if importlib.util.find_spec("transformers") is not None:
            from transformers.optimization import Adafactor

            return Adafactor(params, lr=lr, weight_decay=weight_decay, relative_step=False, scale_parameter=False,
                             warmup_init=False)
        if not hasattr(torch.optim, "Adafactor"):
            raise ValueError("optimizer 'adafactor' needs transformers (pip install transformers) or torch >= 2.5")
        return torch.optim.Adafactor(params, lr=lr, weight_decay=weight_decay)
    if key == "sgd":
        return torch.optim.SGD(params, lr=lr, momentum=betas[0], weight_decay=weight_decay)
    raise ValueError(f"optimizer {name!r} is unknown; expected one of {', '.join(OPTIMIZERS)}")
