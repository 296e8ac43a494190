"""Flow-matching ODE/SDE steps, transition log-probs and sigma grids.

Everything here is a function of tensors (k-diffusion style). The SDE is the Flow-GRPO form
(yifan123/flow_grpo, ``sd3_sde_with_logprob.py``):

* sigma in ``[0, 1]``, 1 = pure noise, steps go *down*: ``dt = sigma_next - sigma < 0``.
* ``std_t = a * sqrt(sigma / (1 - sigma))`` with ``sigma = 1`` replaced by ``sigma_next`` in the
  denominator (Flow-GRPO clamps to the grid's second value, which is ``sigma_next`` at sigma = 1).
* ``mean = x * (1 + std_t^2 / (2 sigma) * dt) + v * (1 + std_t^2 * (1 - sigma) / (2 sigma)) * dt``
* ``x_next = mean + std_t * sqrt(-dt) * eps``.
* The **transition std** returned by :func:`sde_step` is ``std_t * sqrt(-dt)`` (Flow-GRPO returns
  ``std_t`` alone); :func:`log_prob` takes that transition std.
* Log-probs are Gaussian log densities **averaged over all non-batch elements**: one float32 value
  per sample. Sums over ~10^5 latent elements would make PPO ratios meaningless.

All arithmetic is float32 even for bf16/fp16 inputs; results come back in float32.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor


__all__ = [
    "ode_step",
    "sde_step",
    "sde_mean_std",
    "sde_step_with_logprob",
    "log_prob",
    "sde_std",
    "sigma_grid",
    "shift_sigmas",
    "time_shift",
    "flux_mu",
]

_LOG_SQRT_2PI = 0.5 * math.log(2.0 * math.pi)


def _per_sample(value: Tensor | float, x: Tensor) -> Tensor:
    """Broadcast a scalar or ``[B]`` tensor to ``[B, 1, 1, ...]`` matching ``x`` (float32)."""
    t = torch.as_tensor(value, dtype=torch.float32, device=x.device)
    if t.ndim == 0:
        t = t.expand(x.shape[0])
    if t.ndim != 1 or t.shape[0] != x.shape[0]:
        raise ValueError(f"expected a scalar or a [{x.shape[0]}] tensor, got shape {tuple(t.shape)}")
    return t.view(-1, *([1] * (x.ndim - 1)))


def ode_step(x: Tensor, v: Tensor, sigma: Tensor | float, sigma_next: Tensor | float) -> Tensor:
    """Euler step of the probability-flow ODE: ``x + (sigma_next - sigma) * v`` (float32)."""
    x32, v32 = x.float(), v.float()
    return x32 + (_per_sample(sigma_next, x32) - _per_sample(sigma, x32)) * v32


def sde_std(sigma: Tensor, sigma_next: Tensor, noise_level: Tensor | float) -> Tensor:
    """``std_t = a * sqrt(sigma / (1 - sigma))`` with sigma = 1 clamped to ``sigma_next``."""
    denom_sigma = torch.where(sigma >= 1.0, sigma_next, sigma)
    return torch.as_tensor(noise_level, dtype=torch.float32, device=sigma.device) * torch.sqrt(
        sigma / (1.0 - denom_sigma)
    )


def sde_mean_std(
    x: Tensor, v: Tensor, sigma: Tensor | float, sigma_next: Tensor | float, noise_level: Tensor | float
) -> tuple[Tensor, Tensor]:
    """Mean ``[B, ...]`` and transition std (broadcastable, ``std_t * sqrt(-dt)``) of the SDE step.

    Differentiable in ``v``: the trainer recomputes log-probs of stored children from it.
    """
    x32, v32 = x.float(), v.float()
    s = _per_sample(sigma, x32)
    s_next = _per_sample(sigma_next, x32)
    dt = s_next - s
    if bool((dt >= 0).any()):
        raise ValueError("the SDE walks sigma down: every sigma_next must be < sigma")
    std_t = sde_std(s, s_next, _per_sample(noise_level, x32))
    mean = x32 * (1.0 + std_t**2 / (2.0 * s) * dt) + v32 * (1.0 + std_t**2 * (1.0 - s) / (2.0 * s)) * dt
    return mean, std_t * torch.sqrt(-dt)


def sde_step(
    x: Tensor,
    v: Tensor,
    sigma: Tensor | float,
    sigma_next: Tensor | float,
    noise_level: Tensor | float,
    noise: Tensor | None = None,
    generator: torch.Generator | None = None,
) -> tuple[Tensor, Tensor, Tensor]:
    """One Flow-GRPO SDE step. Returns ``(x_next, mean, std)`` in float32.

    Args:
        x, v: ``[B, ...]`` state and velocity.
        sigma, sigma_next: scalars or ``[B]``; ``sigma_next < sigma``.
        noise_level: the ``a`` of the SDE (noise level times any depth factor); scalar or ``[B]``.
        noise: standard normal ``[B, ...]``; drawn with ``generator`` when None.

    ``std`` is the transition std ``std_t * sqrt(-dt)``, broadcastable to ``x``.
    """
    x32 = x.float()
    mean, std = sde_mean_std(x, v, sigma, sigma_next, noise_level)
    if noise is None:
        noise = torch.randn(x32.shape, generator=generator, device=x32.device, dtype=torch.float32)
    elif noise.shape != x32.shape:
        raise ValueError(f"noise has shape {tuple(noise.shape)}, expected {tuple(x32.shape)}")
    x_next = mean + std * noise.float()
    return x_next, mean, std


def log_prob(x_next: Tensor, mean: Tensor, std: Tensor) -> Tensor:
    """Log density of ``x_next`` under ``N(mean, std^2 I)``, **averaged over non-batch elements**.

    ``x_next`` is treated as data (detached). Returns float32 ``[B]``.
    """
    x_next = x_next.detach().float()
    mean = mean.float()
    std = torch.as_tensor(std, dtype=torch.float32, device=mean.device)
    elementwise = -((x_next - mean) ** 2) / (2.0 * std**2) - torch.log(std) - _LOG_SQRT_2PI
    return elementwise.mean(dim=tuple(range(1, elementwise.ndim)))


def sde_step_with_logprob(
    x: Tensor,
    v: Tensor,
    sigma: Tensor | float,
    sigma_next: Tensor | float,
    noise_level: Tensor | float,
    noise: Tensor | None = None,
    generator: torch.Generator | None = None,
) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """:func:`sde_step` plus the log-prob of the sampled ``x_next``: ``(x_next, mean, std, log_prob)``.

    ``log_prob`` is ``[B]`` float32, averaged over the latent's elements.
    """
    x_next, mean, std = sde_step(x, v, sigma, sigma_next, noise_level, noise=noise, generator=generator)
    return x_next, mean, std, log_prob(x_next, mean, std)


# ---------------------------------------------------------------------------------------------
# sigma grids


def shift_sigmas(sigmas: Tensor, shift: float) -> Tensor:
    """Static time shift (SD3): ``shift * s / (1 + (shift - 1) * s)``."""
    return shift * sigmas / (1.0 + (shift - 1.0) * sigmas)


def time_shift(sigmas: Tensor, mu: float, power: float = 1.0) -> Tensor:
    """Exponential time shift (FLUX): ``e^mu / (e^mu + (1/s - 1)^power)``; ``s = 0`` stays 0."""
    out = math.exp(mu) / (math.exp(mu) + (1.0 / sigmas.clamp_min(1e-12) - 1.0) ** power)
    return torch.where(sigmas > 0, out, torch.zeros_like(out))


def flux_mu(
    image_seq_len: int,
    base_seq_len: int = 256,
    max_seq_len: int = 4096,
    base_shift: float = 0.5,
    max_shift: float = 1.15,
) -> float:
    """FLUX's resolution-dependent shift: linear in the packed image sequence length."""
    slope = (max_shift - base_shift) / (max_seq_len - base_seq_len)
    return image_seq_len * slope + base_shift - slope * base_seq_len


def sigma_grid(num_steps: int, shift: float = 1.0, mu: float | None = None) -> Tensor:
    """float32 ``[num_steps + 1]`` grid ``1 = s_0 > ... > s_T = 0``.

    The unshifted grid is ``linspace(1, 1/T, T)`` followed by 0 (as diffusers' FLUX/SD3 pipelines
    build it). With ``mu`` the FLUX exponential shift is applied, otherwise the static ``shift``.
    """
    if num_steps < 1:
        raise ValueError(f"num_steps must be >= 1, got {num_steps}")
    base = torch.linspace(1.0, 1.0 / num_steps, num_steps, dtype=torch.float64)
    shifted = time_shift(base, mu) if mu is not None else shift_sigmas(base, shift)
    return torch.cat([shifted, torch.zeros(1, dtype=torch.float64)]).float()
