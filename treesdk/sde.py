"""Flow-matching ODE/SDE steps, transition log-probs and sigma grids.

Everything here is a function of tensors (k-diffusion style). Four step families
(:data:`SDE_FAMILIES`, a recipe's ``sde`` part) share one interface,
``mean_std(x, v, sigma, sigma_next, a) -> (mean, transition std)`` and ``log_prob``:

* ``flow-sde`` (Flow-GRPO's SDE, the default, detailed below);
* ``dance-sde`` (DanceGRPO's ``flux_step``): ``x0 = x - sigma v``,
  ``score = -(x - (1 - sigma) x0) / sigma^2``, ``mean = x + dt (v - a^2 / 2 * score)``,
  transition std ``a * sqrt(sigma - sigma_next)``;
* ``cps`` (Flow-GRPO's coefficients-preserving sampler): transition std
  ``sigma_next * sin(a * pi / 2)``, ``mean = (1 - sigma_next) x0 + sqrt(sigma_next^2 - std^2) x1`` with
  ``x0 = x - sigma v``, ``x1 = x + (1 - sigma) v``; its log-prob is Flow-GRPO's
  ``-mean((x_next - mean)^2)`` (constants and the ``1 / (2 std^2)`` factor dropped, so it stays finite
  at the last step where std = 0);
* ``ode``: the Euler step, std 0 (no log-prob).

The Flow-GRPO SDE (yifan123/flow_grpo, ``sd3_sde_with_logprob.py``):

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
from collections.abc import Callable
from dataclasses import dataclass

import torch
from torch import Tensor


__all__ = [
    "SDE_FAMILIES",
    "SDEFamily",
    "cps_mean_std",
    "dance_sde_mean_std",
    "get_sde_family",
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
# the other step families


def dance_sde_mean_std(
    x: Tensor, v: Tensor, sigma: Tensor | float, sigma_next: Tensor | float, noise_level: Tensor | float
) -> tuple[Tensor, Tensor]:
    """DanceGRPO's ``flux_step`` (``sde_solver=True``): mean and transition std ``a * sqrt(sigma - sigma_next)``.

    ``x0 = x - sigma v``; ``score = -(x - (1 - sigma) x0) / sigma^2``;
    ``mean = x + dt * v - dt * a^2 / 2 * score`` with ``dt = sigma_next - sigma < 0``. float32.
    """
    x32, v32 = x.float(), v.float()
    s, s_next = _per_sample(sigma, x32), _per_sample(sigma_next, x32)
    dt = _check_down(s, s_next)
    a = _per_sample(noise_level, x32)
    x0 = x32 - s * v32
    score = -(x32 - x0 * (1.0 - s)) / s**2
    mean = x32 + dt * v32 - 0.5 * a**2 * score * dt
    return mean, a * torch.sqrt(-dt)


def cps_mean_std(
    x: Tensor, v: Tensor, sigma: Tensor | float, sigma_next: Tensor | float, noise_level: Tensor | float
) -> tuple[Tensor, Tensor]:
    """Flow-GRPO's coefficients-preserving sampler: transition std ``sigma_next * sin(a pi / 2)`` and
    ``mean = (1 - sigma_next) x0 + sqrt(sigma_next^2 - std^2) x1`` (``x0 = x - sigma v``,
    ``x1 = x + (1 - sigma) v``); ``a`` in ``(0, 1]``. float32."""
    x32, v32 = x.float(), v.float()
    s, s_next = _per_sample(sigma, x32), _per_sample(sigma_next, x32)
    _check_down(s, s_next)
    std = s_next * torch.sin(_per_sample(noise_level, x32) * (math.pi / 2.0))
    x0 = x32 - s * v32
    x1 = x32 + (1.0 - s) * v32
    mean = x0 * (1.0 - s_next) + x1 * torch.sqrt((s_next**2 - std**2).clamp_min(0.0))
    return mean, std


def cps_log_prob(x_next: Tensor, mean: Tensor, std: Tensor | None = None) -> Tensor:  # noqa: ARG001 - same signature
    """Flow-GRPO's CPS log-prob ``-mean((x_next - mean)^2)`` over non-batch elements, float32 ``[B]``."""
    diff = x_next.detach().float() - mean.float()
    return -(diff**2).mean(dim=tuple(range(1, diff.ndim)))


def ode_mean_std(
    x: Tensor, v: Tensor, sigma: Tensor | float, sigma_next: Tensor | float, noise_level: Tensor | float = 0.0  # noqa: ARG001
) -> tuple[Tensor, Tensor]:
    """The Euler ODE step as a degenerate family: mean ``x + dt v``, std 0."""
    mean = ode_step(x, v, sigma, sigma_next)
    return mean, torch.zeros((mean.shape[0],) + (1,) * (mean.ndim - 1), dtype=torch.float32, device=mean.device)


def _ode_log_prob(x_next: Tensor, mean: Tensor, std: Tensor | None = None) -> Tensor:  # noqa: ARG001
    raise ValueError("the ode family is deterministic: its steps have no log-prob; choose sde kind "
                     "flow-sde, dance-sde or cps for trained steps")


def _check_down(s: Tensor, s_next: Tensor) -> Tensor:
    dt = s_next - s
    if bool((dt >= 0).any()):
        raise ValueError("the SDE walks sigma down: every sigma_next must be < sigma")
    return dt


def _per_sqrt_dt(std: Tensor, sigma: float, sigma_next: float) -> Tensor:
    return std / math.sqrt(sigma - sigma_next)


@dataclass(frozen=True)
class SDEFamily:
    """One step family, the one shape every SDE family has (built-in or an ``sde`` part's builder):
    ``mean_std(x, v, sigma, sigma_next, a) -> (mean, transition std)``, ``log_prob(x_next, mean,
    std) -> [B]`` (averaged over elements; default the Gaussian :func:`log_prob`), and
    ``kl_std(std, sigma, sigma_next)``: the std Flow-GRPO divides by in its KL term (default
    ``std / sqrt(-dt)``, i.e. ``std_t`` of the Euler-Maruyama families; CPS: the transition std
    itself). Calling the family calls ``mean_std``."""

    name: str
    mean_std: Callable[..., tuple[Tensor, Tensor]]
    log_prob: Callable[..., Tensor] = log_prob
    kl_std: Callable[[Tensor, float, float], Tensor] = _per_sqrt_dt
    description: str = ""

    def __call__(self, x: Tensor, v: Tensor, sigma: Tensor | float, sigma_next: Tensor | float, noise_level: Tensor | float) -> tuple[Tensor, Tensor]:
        """The family is its transition: ``family(x, v, sigma, sigma_next, a) == family.mean_std(...)``."""
        return self.mean_std(x, v, sigma, sigma_next, noise_level)


SDE_FAMILIES: dict[str, SDEFamily] = {
    "flow-sde": SDEFamily("flow-sde", sde_mean_std, log_prob, _per_sqrt_dt, "Flow-GRPO's SDE (std_t = a sqrt(s / (1 - s)))"),
    "dance-sde": SDEFamily("dance-sde", dance_sde_mean_std, log_prob, _per_sqrt_dt,
                           "DanceGRPO's flux_step (std = a sqrt(s - s_next), score-based mean)"),
    "cps": SDEFamily("cps", cps_mean_std, cps_log_prob, lambda std, s, s_next: std,
                     "Flow-GRPO's coefficients-preserving sampler (std = s_next sin(a pi / 2))"),
    "ode": SDEFamily("ode", ode_mean_std, _ode_log_prob, lambda std, s, s_next: std, "Euler ODE step (no noise)"),
}


def get_sde_family(name: str) -> SDEFamily:
    """The :class:`SDEFamily` called ``name``; ``ValueError`` naming the choices otherwise."""
    if name not in SDE_FAMILIES:
        raise ValueError(f"unknown SDE family {name!r}; expected one of {', '.join(SDE_FAMILIES)}")
    return SDE_FAMILIES[name]


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

    The unshifted grid is ``linspace(1, 1/T, T)`` followed by 0, the FLUX pipeline's base grid; with
    ``mu`` the FLUX exponential shift is applied (equal to diffusers' FLUX grid), otherwise the static
    ``shift``. This is *not* diffusers' SD3 pipeline grid, whose ``T`` values run linearly from the
    scheduler's ``sigma_max`` down to its ``sigma_min`` (about 1/1000, not 1/T) before the shift; the
    SD3 backend takes its grid from the scheduler itself. DanceGRPO's grid is ``linspace(1, 0, T + 1)`` then the static shift.
    """
    if num_steps < 1:
        raise ValueError(f"num_steps must be >= 1, got {num_steps}")
    base = torch.linspace(1.0, 1.0 / num_steps, num_steps, dtype=torch.float64)
    shifted = time_shift(base, mu) if mu is not None else shift_sigmas(base, shift)
    return torch.cat([shifted, torch.zeros(1, dtype=torch.float64)]).float()
