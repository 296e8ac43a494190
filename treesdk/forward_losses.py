"""Forward-process loss terms: train on the leaves' clean samples, no SDE likelihood.

These terms consume *clean leaves* (``consumes = "clean-leaves"``), not tree edges: the update
takes each leaf's clean latent ``x0`` (sigma 0), its prompt and its advantage, draws a noise level
``sigma`` and a fresh noise, and trains on ``x_sigma = (1 - sigma) x0 + sigma noise`` with a flow
matching objective. Any sampler can have produced the leaves (ODE, tree, a backend's own solver).

Conventions: sigma in ``[0, 1]``, 1 = pure noise; the model predicts ``v = noise - x0``; every
per-sample quantity is a **mean over the latent's elements** (one number per sample). ``A`` is the
leaf's normalised advantage (the recipe's estimator), ``v_old`` the velocity of the old (behaviour)
policy, ``v_ref`` that of the base (reference) policy, both without gradient.

* DiffusionNFT (Zheng et al., arXiv 2509.16117; NVlabs/DiffusionNFT ``scripts/train_nft_sd3.py``):
  ``r = clamp(clamp(A, -c, c) / (2 c) + 1/2, 0, 1)``; implicit policies
  ``v+ = b v_theta + (1 - b) v_old`` and ``v- = (1 + b) v_old - b v_theta``; each predicts
  ``x0_hat = x_sigma - sigma v``; per sample ``l(v) = mean((x0_hat - x0)^2) / w`` with the adaptive
  weight ``w = max(mean|x0_hat - x0|, 1e-5)`` (detached, float64 in the reference); the loss is
  ``c * mean(r l(v+) / b + (1 - r) l(v-) / b)``.
* AWM, advantage-weighted matching (Xue et al., arXiv 2509.25050; scxue/advantage_weighted_matching
  ``scripts/train_sd3_awm.py``): the flow-matching "log-likelihood"
  ``lp = -mean((v_theta - (noise - x0))^2)``, weighted by ``sigma`` (``t``), ``sigma^2``
  (``t**2``), not at all (``uniform``) or the generalised Huber ``-((-lp + 1e-10)^p - 1e-10^p) sigma / p``
  (``ghuber``); on-policy ratio ``rho = exp(lp - sg(lp))`` (1 in value, ``grad lp`` in gradient) in the
  clipped surrogate ``mean(max(-A rho, -A clip(rho, 1 - e, 1 + e)))``, ``A = clamp(A, -c, c) / c * a_max``.
* Velocity KL (both references): ``mean((v_theta - v_anchor)^2)``, the anchor the reference policy
  (adapter off) or the old policy (AWM's EMA anchor, ``ema_beta``).

Noise levels per training forward come from :func:`grid_permutation_sigmas` (DiffusionNFT: a random
permutation of the sampling grid per sample, its first ``int(T * fraction)`` entries) or
:func:`stratified_grid_sigmas` (AWM's ``discrete_wo_init``: one grid index per stratum of
``[1, int(T * fraction)]``, shared by the batch).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar, Literal

import torch
from pydantic import Field, model_validator
from torch import Tensor

from .interfaces import Cond, LossTerm
from .part import RuntimePart

__all__ = [
    "CleanBatch",
    "ForwardTerm",
    "NFTLoss",
    "AWMLoss",
    "VelocityKL",
    "OldPolicySchedule",
    "unit_reward",
    "nft_loss",
    "awm_log_likelihood",
    "awm_loss",
    "velocity_kl",
    "grid_permutation_sigmas",
    "stratified_grid_sigmas",
]


def _per_sample_mean(x: Tensor) -> Tensor:
    return x.mean(dim=tuple(range(1, x.ndim)))


def _bcast(s: Tensor, x: Tensor) -> Tensor:
    return s.view(-1, *([1] * (x.ndim - 1))).to(x.dtype)


# ----------------------------------------------------------------------------------------------
# the math, as functions of tensors


def unit_reward(advantages: Tensor, clip: float) -> Tensor:
    """DiffusionNFT's reward in ``[0, 1]``: ``clamp(clamp(A, -c, c) / c / 2 + 1/2, 0, 1)``."""
    a = advantages.clamp(-clip, clip)
    return (a / clip / 2.0 + 0.5).clamp(0.0, 1.0)


def nft_loss(
    x0: Tensor, xt: Tensor, sigma: Tensor, v_theta: Tensor, v_old: Tensor, r: Tensor, beta: float, adv_clip: float
) -> tuple[Tensor, dict[str, float]]:
    """The DiffusionNFT objective (module docstring) on ``B`` noised samples; returns the scalar loss.

    ``x0, xt, v_theta, v_old``: ``[B, ...]``; ``sigma``, ``r``: ``[B]``. ``v_old`` is detached here.
    """
    v_old = v_old.detach()
    s = _bcast(sigma, xt)
    v_pos = beta * v_theta + (1.0 - beta) * v_old
    v_neg = (1.0 + beta) * v_old - beta * v_theta

    def weighted(v: Tensor) -> Tensor:
        x0_hat = xt - s * v
        with torch.no_grad():
            w = (x0_hat.double() - x0.double()).abs().mean(dim=tuple(range(1, x0.ndim)), keepdim=True).clamp_min(1e-5)
        return _per_sample_mean((x0_hat - x0) ** 2 / w.to(x0_hat.dtype))

    pos, neg = weighted(v_pos), weighted(v_neg)
    per_sample = r * pos / beta + (1.0 - r) * neg / beta
    loss = (per_sample * adv_clip).mean()
    with torch.no_grad():
        metrics = {
            "nft_positive": float(pos.mean()),
            "nft_negative": float(neg.mean()),
            "nft_r_mean": float(r.mean()),
            "old_deviate": float(((v_theta - v_old) ** 2).mean()),
        }
    return loss, metrics


def awm_log_likelihood(v_theta: Tensor, noise: Tensor, x0: Tensor, sigma: Tensor, weighting: str = "uniform",
                       power: float = 0.25) -> Tensor:
    """AWM's per-sample weighted flow-matching log-likelihood ``[B]`` (module docstring)."""
    lp = -_per_sample_mean((v_theta - (noise - x0)) ** 2)
    s = sigma.to(lp.dtype)
    if weighting == "uniform":
        return lp
    if weighting == "t":
        return lp * s
    if weighting == "t**2":
        return lp * s**2
    if weighting == "ghuber":
        tiny = torch.tensor(1e-10, dtype=lp.dtype, device=lp.device)
        return -(torch.pow(-lp + 1e-10, power) - torch.pow(tiny, power)) * s / power
    raise ValueError(f"AWM weighting must be uniform, t, t**2 or ghuber; got {weighting!r}")


def awm_loss(
    v_theta: Tensor, noise: Tensor, x0: Tensor, sigma: Tensor, advantages: Tensor, *, weighting: str = "ghuber",
    power: float = 0.25, clip_range: float = 1.0, adv_clip: float = 5.0, advantage_max: float | None = 1.0,
) -> tuple[Tensor, dict[str, float]]:
    """AWM's on-policy clipped surrogate over ``B`` noised samples (module docstring)."""
    lp = awm_log_likelihood(v_theta, noise, x0, sigma, weighting, power)
    a = advantages.to(lp.dtype).clamp(-adv_clip, adv_clip)
    if advantage_max is not None:
        a = a / adv_clip * advantage_max
    ratio = torch.exp(lp - lp.detach())
    loss = torch.maximum(-a * ratio, -a * ratio.clamp(1.0 - clip_range, 1.0 + clip_range)).mean()
    with torch.no_grad():
        metrics = {"awm_log_likelihood": float(lp.mean()),
                   "clip_fraction": float(((ratio - 1.0).abs() > clip_range).float().mean())}
    return loss, metrics


def velocity_kl(v_theta: Tensor, v_anchor: Tensor) -> Tensor:
    """``mean((v_theta - v_anchor)^2)`` over samples and elements (``v_anchor`` detached)."""
    return ((v_theta - v_anchor.detach()) ** 2).mean()


def grid_permutation_sigmas(grid: Tensor, batch: int, fraction: float, generator: torch.Generator | None = None) -> Tensor:
    """DiffusionNFT's training noise levels: ``[n, batch]`` with ``n = int(T * fraction)``; column ``b``
    holds the first ``n`` entries of a random permutation of the grid's ``T`` sampling sigmas
    (``grid`` is ``[T + 1]``, its final 0 excluded)."""
    steps = int(grid.shape[0]) - 1
    n = max(1, int(steps * fraction))
    order = torch.stack([torch.randperm(steps, generator=generator) for _ in range(batch)], dim=1)  # [T, B]
    return grid[:steps].float()[order[:n]]


def stratified_grid_sigmas(grid: Tensor, batch: int, count: int, fraction: float,
                           generator: torch.Generator | None = None) -> Tensor:
    """AWM's ``discrete_wo_init`` levels: ``[count, batch]``; row ``j`` is ``grid[i_j]`` for every
    sample, ``i_j`` drawn uniformly in stratum ``j`` of ``linspace(1, int(T * fraction), count + 1)``
    (lower bound inclusive, integer bounds), so the first (pure-noise) step is never trained."""
    steps = int(grid.shape[0]) - 1
    top = max(1, int(steps * fraction))
    bounds = torch.linspace(1, top, count + 1).long()
    lower, upper = bounds[:-1], bounds[1:]
    u = torch.rand(count, generator=generator)
    index = (lower + (u * (upper - lower)).long()).clamp(max=steps - 1)
    return grid.float()[index].unsqueeze(1).expand(count, batch).clone()


# ----------------------------------------------------------------------------------------------
# the data a forward term sees, and the terms


@dataclass
class CleanBatch:
    """One chunk of noised leaves at one training slot.

    Shapes: ``B`` samples. ``x0`` clean latents, ``noise`` the drawn noise, ``xt`` the noised latent
    ``(1 - sigma) x0 + sigma noise`` (all ``[B, *latent]``); ``sigma`` ``[B]`` (1 = noise);
    ``advantages`` ``[B]`` the leaves' normalised advantages; ``v_theta`` the current velocity
    (differentiable); ``v_old`` / ``v_ref`` the old and reference policies' velocities (no gradient)
    or None when no term asks for them.
    """

    x0: Tensor
    noise: Tensor
    xt: Tensor
    sigma: Tensor
    cond: Cond
    advantages: Tensor
    v_theta: Tensor
    v_old: Tensor | None = None
    v_ref: Tensor | None = None


@dataclass(frozen=True)
class OldPolicySchedule:
    """Decay of the old policy after each iteration, ``old <- d old + (1 - d) theta`` with
    ``d = 0`` for ``n < flat`` else ``min((n - flat) uprate, uphold)``, ``n`` the optimiser steps
    taken so far (DiffusionNFT ``return_decay``; AWM's ``linear`` KL anchor). ``uphold = 0``: the
    old policy is the sampling policy of the iteration (the weights before its update)."""

    flat: int = 0
    uprate: float = 0.0
    uphold: float = 0.0

    def decay(self, steps: int) -> float:
        return 0.0 if steps < self.flat else min((steps - self.flat) * self.uprate, self.uphold)


class ForwardTerm(LossTerm):
    """A loss term over clean leaves (:class:`CleanBatch`), marked ``consumes = "clean-leaves"``; the
    update runs the forward-process path for recipes made of such terms.

    ``needs_old_velocity`` / ``needs_reference``: the update computes ``v_old`` (old policy, one
    no-grad forward) / ``v_ref`` (adapter off, one no-grad forward) per sample. A term that fixes the
    training noise levels sets ``sigmas`` (``"grid-permutation"``: reads the term's ``fraction``;
    ``"stratified"``: its ``count`` and ``fraction``); ``old_schedule`` is the old policy's decay when
    it needs one; ``samples_with_old``: the forest is sampled with the old policy's weights, not the
    live ones (DiffusionNFT samples with its ``old`` adapter; AWM with the live weights,
    ``off_policy=False``).
    """

    consumes: ClassVar[str] = "clean-leaves"
    needs_old_velocity: ClassVar[bool] = False
    sigmas: ClassVar[str | None] = None

    @property
    def samples_with_old(self) -> bool:
        return False

    @property
    def old_schedule(self) -> OldPolicySchedule | None:
        return None

    def __call__(self, batch: CleanBatch) -> tuple[Tensor, dict[str, float]]:  # type: ignore[override]
        raise NotImplementedError


class _OldPolicyFields(RuntimePart):
    """The old (behaviour) policy's settings, shared by the terms that read ``v_old``."""

    old_flat: int = Field(0, ge=0, description="old policy: optimiser steps before its decay starts to grow")
    old_uprate: float = Field(0.0, ge=0, le=1, description="old policy: decay growth per optimiser step")
    old_uphold: float = Field(0.0, ge=0, lt=1, description="old policy: largest decay (0 = the last iteration's weights)")
    sample_old: bool = Field(False, description="sample the forest with the old policy's weights instead of the live ones")

    @property
    def samples_with_old(self) -> bool:
        return self.sample_old

    @property
    def old_schedule(self) -> OldPolicySchedule | None:
        """The old policy's decay schedule from the ``old_*`` fields."""
        return OldPolicySchedule(self.old_flat, self.old_uprate, self.old_uphold)


class NFTLoss(_OldPolicyFields, ForwardTerm):
    """DiffusionNFT (module docstring): ``r = clamp(A, -c, c) / (2c) + 1/2``; ``v+ = b v_theta + (1 - b)
    v_old``, ``v- = (1 + b) v_old - b v_theta``; ``c * mean(r l(v+) / b + (1 - r) l(v-) / b)`` with ``l``
    the adaptively weighted x0 error; trained at ``int(T * fraction)`` grid sigmas per leaf (a random
    permutation of the sampling grid). ``v_old`` is the old policy (``old_*`` decay schedule)."""

    name: ClassVar[str] = "nft"
    label: ClassVar[str] = "NFT loss"
    needs_old_velocity: ClassVar[bool] = True
    sigmas: ClassVar[str | None] = "grid-permutation"

    kind: Literal["nft"] = "nft"
    weight: float = Field(1.0, ge=0, description="weight of this term")
    beta: float = Field(1.0, gt=0, le=10, description="implicit-policy mix b (DiffusionNFT config.beta)")
    adv_clip: float = Field(5.0, gt=0, description="advantage clip c: maps A to r in [0, 1] and scales the loss")
    fraction: float = Field(0.99, gt=0, le=1, description="fraction of the T grid sigmas trained per leaf")
    sample_old: bool = Field(True, description="sample the forest with the old policy (DiffusionNFT's 'old' adapter)")

    def __call__(self, batch: CleanBatch) -> tuple[Tensor, dict[str, float]]:  # type: ignore[override]
        if batch.v_old is None:
            raise ValueError("the NFT loss needs CleanBatch.v_old (the old policy's velocity)")
        r = unit_reward(batch.advantages.float(), self.adv_clip)
        return nft_loss(batch.x0.float(), batch.xt.float(), batch.sigma.float(), batch.v_theta.float(),
                        batch.v_old.float(), r, self.beta, self.adv_clip)


class AWMLoss(RuntimePart, ForwardTerm):
    """Advantage-weighted matching: on-policy clipped surrogate on the weighted flow-matching
    log-likelihood ``lp = -mean((v_theta - (noise - x0))^2)`` (``weighting``: uniform, t, t**2,
    ghuber with ``power``), at ``count`` stratified grid sigmas in ``[1, int(T * fraction)]``."""

    name: ClassVar[str] = "awm"
    label: ClassVar[str] = "AWM loss"
    sigmas: ClassVar[str | None] = "stratified"

    kind: Literal["awm"] = "awm"
    weight: float = Field(1.0, ge=0, description="weight of this term")
    weighting: Literal["uniform", "t", "t**2", "ghuber"] = Field("ghuber", description="per-sigma weighting of lp")
    power: float = Field(0.25, gt=0, le=1, description="generalised Huber power (weighting=ghuber)")
    clip_range: float = Field(1.0, gt=0, description="ratio clip range e")
    adv_clip: float = Field(5.0, gt=0, description="advantage clip c")
    advantage_max: float | None = Field(1.0, gt=0, description="advantages rescaled to [-advantage_max, advantage_max] (None: not)")
    count: int = Field(6, ge=1, le=1000, description="training sigmas per leaf (strata)")
    fraction: float = Field(0.9, gt=0, le=1, description="strata cover grid steps [1, int(T * fraction)]")

    def __call__(self, batch: CleanBatch) -> tuple[Tensor, dict[str, float]]:  # type: ignore[override]
        return awm_loss(batch.v_theta.float(), batch.noise.float(), batch.x0.float(), batch.sigma.float(),
                        batch.advantages.float(), weighting=self.weighting, power=self.power,
                        clip_range=self.clip_range, adv_clip=self.adv_clip, advantage_max=self.advantage_max)


class VelocityKL(_OldPolicyFields, ForwardTerm):
    """``weight * mean((v_theta - v_anchor)^2)`` at the clean-leaf training points; ``to``: the base
    policy (``reference``, adapter off; the references' ``beta`` KL) or the old policy (``old``,
    AWM's ``ema_beta`` KL to its EMA)."""

    label: ClassVar[str] = "velocity KL"
    positional: ClassVar[tuple[str, ...]] = ("to",)

    kind: Literal["velocity-kl"] = "velocity-kl"
    weight: float = Field(1e-4, ge=0, description="beta")
    to: Literal["reference", "old"] = Field("reference", description="anchor: reference (base) or old policy")

    @model_validator(mode="after")
    def _sampling_needs_the_old_anchor(self) -> VelocityKL:
        if self.sample_old and self.to != "old":
            raise ValueError("sample_old needs the old policy as the anchor (to='old')")
        return self

    @property
    def name(self) -> str:  # type: ignore[override]
        return "velocity_kl" if self.to == "reference" else "velocity_kl_old"

    @property
    def needs_reference(self) -> bool:  # type: ignore[override]
        return self.to == "reference"

    @property
    def needs_old_velocity(self) -> bool:  # type: ignore[override]
        return self.to == "old"

    @property
    def old_schedule(self) -> OldPolicySchedule | None:
        return super().old_schedule if self.to == "old" else None

    def __call__(self, batch: CleanBatch) -> tuple[Tensor, dict[str, float]]:  # type: ignore[override]
        anchor = batch.v_ref if self.to == "reference" else batch.v_old
        if anchor is None:
            raise ValueError(f"the velocity KL to the {self.to} policy needs its velocity in the CleanBatch")
        kl = velocity_kl(batch.v_theta.float(), anchor.float())
        return kl, {self.name: float(kl.detach())}
