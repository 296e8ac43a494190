"""Loss terms composed by recipes (a recipe is a list of ``(term, weight)``).

Each term returns its **mean over the elements of one chunk** (parents of one layer) and metrics;
the trainer averages over each layer's chunks and then over layers (Flow-GRPO's convention of a
per-timestep mean accumulated over timesteps), so every layer weighs the same.
"""

from __future__ import annotations

import torch
from torch import Tensor

from .interfaces import EdgeBatch, LossTerm


class ClippedSurrogate(LossTerm):
    """PPO clipped surrogate ``-min(rho A, clip(rho, 1 - e_lo, 1 + e_hi) A)``, ``rho = exp(logp_new - logp_old)``.

    Modes: ``fixed`` (``e_lo = e_hi = eps``), ``asymmetric`` (``eps_low``, ``eps_high``),
    ``reward-adaptive`` (Dynamic-TreeRPO): ``e = eps_low + (eps_high - eps_low) * exp(-eta * R)`` on
    both sides, ``R`` the raw reward carried by each term (``EdgeBatch.clip_rewards``), so
    high-reward paths are held closer to the behaviour policy.

    Log-probs are averaged over latent elements, hence the small default ranges (Flow-GRPO: 1e-4).
    Elements: every ``(edge, path)`` term of the chunk, ``[N, k, M]``.
    """

    name = "surrogate"

    def __init__(
        self, clip: str = "fixed", eps: float = 1e-4, eps_low: float = 1e-4, eps_high: float = 1e-4, eta: float = 1.0
    ) -> None:
        if clip not in ("fixed", "asymmetric", "reward-adaptive"):
            raise ValueError(f"clip must be fixed, asymmetric or reward-adaptive; got {clip!r}")
        self.clip, self.eps, self.eps_low, self.eps_high, self.eta = clip, eps, eps_low, eps_high, eta

    def bounds(self, clip_rewards: Tensor) -> tuple[Tensor, Tensor]:
        """Lower and upper clip ranges, broadcastable to ``clip_rewards`` ``[N, k, M]``."""
        if self.clip == "fixed":
            e = torch.full_like(clip_rewards, self.eps)
            return e, e
        if self.clip == "asymmetric":
            return torch.full_like(clip_rewards, self.eps_low), torch.full_like(clip_rewards, self.eps_high)
        e = self.eps_low + (self.eps_high - self.eps_low) * torch.exp(-self.eta * clip_rewards.float())
        return e, e

    def __call__(self, batch: EdgeBatch) -> tuple[Tensor, dict[str, float]]:
        log_ratio = (batch.new_log_probs - batch.old_log_probs).unsqueeze(-1)  # [N, k, 1]
        ratio = torch.exp(log_ratio)
        adv = batch.advantages.float()
        e_lo, e_hi = self.bounds(batch.clip_rewards)
        clipped_ratio = torch.minimum(torch.maximum(ratio, 1.0 - e_lo), 1.0 + e_hi)
        loss = torch.maximum(-adv * ratio, -adv * clipped_ratio).mean()
        with torch.no_grad():
            outside = ((ratio < 1.0 - e_lo) | (ratio > 1.0 + e_hi)).expand_as(adv).float().mean()
            metrics = {
                "clip_fraction": float(outside),
                "ratio_mean": float(ratio.mean()),
                "ratio_max": float(ratio.max()),
                "ratio_min": float(ratio.min()),
                "approx_kl": float(0.5 * (log_ratio**2).mean()),
                "advantage_abs_mean": float(adv.abs().mean()),
            }
        return loss, metrics


class LayerTuningSFT(LossTerm):
    """LayerTuning-RL SFT (Dynamic-TreeRPO): ``mean ||v_theta(node) - v*||^2`` over the chunk's
    parents and latent elements; ``v*`` the detached velocity of the node on the best leaf's path at
    the same layer (``EdgeBatch.sft_target``)."""

    name = "sft"
    needs_sft_target = True

    def __call__(self, batch: EdgeBatch) -> tuple[Tensor, dict[str, float]]:
        if batch.sft_target is None:
            raise ValueError("LayerTuningSFT needs EdgeBatch.sft_target")
        loss = ((batch.new_velocity.float() - batch.sft_target.float()) ** 2).mean()
        return loss, {"sft_mse": float(loss.detach())}


class KLToReference(LossTerm):
    """KL between the current and the reference SDE transition (Flow-GRPO's form):
    ``||mean_theta - mean_ref||^2 / (2 std^2)`` averaged over latent elements and parents."""

    name = "kl"
    needs_reference = True

    def __call__(self, batch: EdgeBatch) -> tuple[Tensor, dict[str, float]]:
        if batch.new_mean is None or batch.ref_mean is None:
            raise ValueError("KLToReference needs EdgeBatch.new_mean and EdgeBatch.ref_mean")
        kl = ((batch.new_mean.float() - batch.ref_mean.float()) ** 2).mean() / (2.0 * batch.std.float() ** 2)
        return kl, {"kl": float(kl.detach())}
