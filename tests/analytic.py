"""A tiny analytic flow model for engine tests: the exact velocity of a two-Gaussian mixture.

Data ``x0 ~ sum_i w_i N(mu_i, s^2 I)`` in ``D`` dimensions (latent shape ``(1, 2, 2)``); the
trainable parameters are the mixture logits, so RL can move mass between the modes. With
``x = (1 - sigma) x0 + sigma eps``, component ``i`` gives ``x ~ N((1 - sigma) mu_i, c_i I)`` with
``c = (1 - sigma)^2 s^2 + sigma^2`` and

    E[x0 | x, i] = mu_i + (1 - sigma) s^2 / c * (x - (1 - sigma) mu_i)
    E[eps | x, i] = sigma / c * (x - (1 - sigma) mu_i)

so ``v = E[eps - x0 | x] = sum_i post_i(x) (E[eps|x,i] - E[x0|x,i])``.
"""

from __future__ import annotations

import contextlib
from collections.abc import Mapping, Sequence

import torch
from torch import Tensor

from treesdk.interfaces import Cond, RewardModel, VelocityModel
from treesdk.sde import sigma_grid


class MixtureFlow(VelocityModel):
    name = "mixture"

    def __init__(self, mu: float = 2.0, s: float = 0.5, logits: tuple[float, float] = (0.0, 0.0)) -> None:
        self.mu = torch.tensor([-mu, mu])
        self.s = s
        self.logits = torch.nn.Parameter(torch.tensor(logits, dtype=torch.float32))
        self.base_logits = self.logits.detach().clone()
        self.calls = 0  # velocity calls
        self.rows = 0  # velocity evaluations (rows)
        self._use_base = False

    @property
    def latent_shape(self) -> tuple[int, ...]:
        return (1, 2, 2)

    @property
    def device(self) -> torch.device:
        return torch.device("cpu")

    def encode(self, prompts: Sequence[str]) -> Cond:
        return {"ones": torch.ones(len(prompts), 1)}

    def velocity(self, x: Tensor, sigma: Tensor, cond: Cond) -> Tensor:
        self.calls += 1
        self.rows += x.shape[0]
        logits = self.base_logits if self._use_base else self.logits
        flat = x.float().flatten(1)  # [B, D]
        sig = sigma.float().view(-1, 1)
        c = (1 - sig) ** 2 * self.s**2 + sig**2  # [B, 1]
        d = flat.shape[1]
        mus = self.mu.view(1, 2, 1)  # [1, 2, 1]
        centred = flat.unsqueeze(1) - (1 - sig).unsqueeze(1) * mus  # [B, 2, D]
        log_lik = -(centred**2).sum(-1) / (2 * c) - 0.5 * d * torch.log(c)  # [B, 2]
        post = torch.softmax(log_lik + torch.log_softmax(logits, 0), dim=1)  # [B, 2]
        e_x0 = mus + ((1 - sig) * self.s**2 / c).unsqueeze(1) * centred
        e_eps = (sig / c).unsqueeze(1) * centred
        v = (post.unsqueeze(-1) * (e_eps - e_x0)).sum(1)
        return v.view_as(x).to(x.dtype)

    def decode(self, x: Tensor) -> Tensor:
        return torch.sigmoid(x.float()).repeat(1, 3, 1, 1)

    def sigmas(self, num_steps: int) -> Tensor:
        return sigma_grid(num_steps)

    def trainable_parameters(self) -> list[torch.nn.Parameter]:
        return [self.logits]

    def trainable_state_dict(self) -> dict[str, Tensor]:
        return {"logits": self.logits.detach().clone()}

    def load_trainable_state_dict(self, state: Mapping[str, Tensor]) -> None:
        if set(state) != {"logits"}:
            raise KeyError(f"expected key 'logits', got {sorted(state)}")
        with torch.no_grad():
            self.logits.copy_(state["logits"])

    @contextlib.contextmanager
    def reference(self):
        self._use_base = True
        try:
            yield
        finally:
            self._use_base = False

    def default_prompts(self) -> list[str]:
        return ["a", "b", "c", "d"]


class BrightnessReward(RewardModel):
    """Mean image brightness: prefers the positive mode of :class:`MixtureFlow`."""

    name = "brightness"

    def __init__(self, nan_at: int | None = None) -> None:
        self.nan_at = nan_at

    def score(self, images: Tensor, prompts: Sequence[str]) -> Tensor:
        values = images.float().mean(dim=(1, 2, 3))
        if self.nan_at is not None:
            values[self.nan_at] = float("nan")
        return values
