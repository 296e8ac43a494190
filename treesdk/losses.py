"""Loss terms composed by recipes (a recipe is a list of weighted terms).

Each term is one class: a recipe part (:class:`~treesdk.part.RuntimePart`, its fields validated
once by pydantic, ``weight`` its weight in the recipe) and the callable the trainer runs. Each returns its
**mean over the elements of one chunk** (parents of one layer) and metrics; the trainer averages
over each layer's chunks and then over layers (Flow-GRPO's convention of a per-timestep mean
accumulated over timesteps), so every layer weighs the same.
"""

from __future__ import annotations

from typing import ClassVar, Literal

import torch
from pydantic import Field
from torch import Tensor

from .interfaces import EdgeBatch, LossTerm
from .part import RuntimePart


class ClippedSurrogate(RuntimePart, LossTerm):
    """PPO clipped surrogate ``-min(rho A, clip(rho, 1 - e_lo, 1 + e_hi) A)``, ``rho = exp(logp_new - logp_old)``.

    Modes: ``fixed`` (``e_lo = e_hi = eps``), ``asymmetric`` (``eps_low``, ``eps_high``),
    ``reward-adaptive`` (Dynamic-TreeRPO): ``e = eps_low + (eps_high - eps_low) * exp(-eta * R)`` on
    both sides, ``R`` the raw reward carried by each term (``EdgeBatch.clip_rewards``), so
    high-reward paths are held closer to the behaviour policy.

    Log-probs are averaged over latent elements, hence the small default ranges (Flow-GRPO: 1e-4).
    Elements: every ``(edge, path)`` term of the chunk, ``[N, k, M]``.

    ``guard=True`` is GRPO-Guard (arXiv 2510.22319; Flow-Factory ``GRPOGuardTrainer``): the log-ratio
    is normalised and re-weighted per step, ``log rho = (logp_new - logp_old) * s + mse(mean_new -
    mean_old) / (2 s)`` with ``s`` the transition std (``std_t sqrt(-dt)``) and ``mse`` averaged over
    elements. For a Gaussian step this equals ``mean((mean_new - mean_old) * eps)``: the
    ``-||mean_new - mean_old||^2 / (2 s^2)`` drift that pushes every ratio below 1 is removed, and the
    ``1 / s`` growth of the ratio's gradient at low-noise steps is undone. ``guard=False`` (default)
    is the plain ratio, bit for bit.
    """

    name: ClassVar[str] = "surrogate"
    label: ClassVar[str] = "clipped surrogate"
    positional: ClassVar[tuple[str, ...]] = ("clip", "eps", "eps_low", "eps_high", "eta", "guard")

    kind: Literal["clipped-surrogate"] = "clipped-surrogate"
    weight: float = Field(1.0, ge=0, description="weight of this term")
    clip: Literal["fixed", "asymmetric", "reward-adaptive"] = "fixed"
    eps: float = Field(1e-4, gt=0, le=1, description="clip range (fixed)")
    eps_low: float = Field(1e-4, gt=0, le=1, description="lower clip range / adaptive minimum")
    eps_high: float = Field(1e-4, gt=0, le=1, description="upper clip range / adaptive maximum")
    eta: float = Field(1.0, ge=0, description="reward-adaptive decay rate")
    guard: bool = Field(False, description="GRPO-Guard: normalise the log-ratio by the step's std and remove its "
                                           "mean-shift drift (ratio normalisation + per-step re-weighting)")

    @property
    def needs_old_mean(self) -> bool:  # type: ignore[override] - GRPO-Guard reads the behaviour mean
        return self.guard

    def log_ratio(self, batch: EdgeBatch) -> Tensor:
        """``[N, k, 1]`` log-ratio: plain, or GRPO-Guard's normalised one (class docstring)."""
        log_ratio = batch.new_log_probs - batch.old_log_probs
        if self.guard:
            if batch.old_mean is None or batch.new_mean is None:
                raise ValueError("GRPO-Guard needs EdgeBatch.new_mean and EdgeBatch.old_mean")
            s = batch.std.float()
            diff = batch.new_mean.float() - batch.old_mean.float()
            mse = (diff**2).mean(dim=tuple(range(1, diff.ndim)))  # [N]: one per parent, shared by its children
            log_ratio = log_ratio * s + (mse / (2.0 * s)).unsqueeze(1)
        return log_ratio.unsqueeze(-1)

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
        log_ratio = self.log_ratio(batch)  # [N, k, 1]
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


class LayerTuningSFT(RuntimePart, LossTerm):
    """LayerTuning-RL SFT (Dynamic-TreeRPO): ``mean ||v_theta(node) - v*||^2`` over the chunk's
    parents and latent elements; ``v*`` the detached velocity of the node on the best leaf's path at
    the same layer (``EdgeBatch.sft_target``); times ``weight`` (lambda) in a recipe."""

    name: ClassVar[str] = "sft"
    label: ClassVar[str] = "LayerTuning SFT"
    needs_sft_target: ClassVar[bool] = True

    kind: Literal["layertuning-sft"] = "layertuning-sft"
    weight: float = Field(0.1, ge=0, description="lambda")

    def __call__(self, batch: EdgeBatch) -> tuple[Tensor, dict[str, float]]:
        if batch.sft_target is None:
            raise ValueError("LayerTuningSFT needs EdgeBatch.sft_target")
        loss = ((batch.new_velocity.float() - batch.sft_target.float()) ** 2).mean()
        return loss, {"sft_mse": float(loss.detach())}


class KLToReference(RuntimePart, LossTerm):
    """KL between the current and the reference policy's SDE transition (the reference obtained by
    disabling the adapter), times ``weight`` (beta) in a recipe; two named forms:

    * ``flow-grpo`` (default): Flow-GRPO's ``||mean_theta - mean_ref||^2 / (2 std_t^2)``, ``std_t`` the
      SDE's std *without* ``sqrt(-dt)`` (``EdgeBatch.kl_std``), so Flow-GRPO's beta values carry over;
    * ``transition``: the exact KL of the two Gaussian transitions, ``||.||^2 / (2 std^2)`` with the
      transition std ``std_t sqrt(-dt)``: the ``flow-grpo`` form divided by ``-dt`` (4-73x larger on
      a 10-25 step grid).

    Both averaged over latent elements and parents.
    """

    name: ClassVar[str] = "kl"
    label: ClassVar[str] = "KL"
    positional: ClassVar[tuple[str, ...]] = ("form",)
    needs_reference: ClassVar[bool] = True

    kind: Literal["kl"] = "kl"
    weight: float = Field(0.004, ge=0, description="beta")
    form: Literal["flow-grpo", "transition"] = Field("flow-grpo", description="flow-grpo (divide by std_t^2) or transition (by (std_t^2 (-dt)))")

    def __call__(self, batch: EdgeBatch) -> tuple[Tensor, dict[str, float]]:
        if batch.new_mean is None or batch.ref_mean is None:
            raise ValueError("KLToReference needs EdgeBatch.new_mean and EdgeBatch.ref_mean")
        std = batch.std if self.form == "transition" or batch.kl_std is None else batch.kl_std
        kl = ((batch.new_mean.float() - batch.ref_mean.float()) ** 2).mean() / (2.0 * std.float() ** 2)
        return kl, {"kl": float(kl.detach())}
