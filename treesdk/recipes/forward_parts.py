"""Recipe parts of the forward-process path: loss terms over clean leaves (DiffusionNFT, AWM, the
velocity KL), declared in the same registry as the other loss terms (slot ``loss``).

Their builders return :class:`treesdk.forward_losses.ForwardTerm` objects (``consumes =
"clean-leaves"``); a recipe whose losses are all such terms is trained by
:mod:`treesdk.training.loop.forward_update` on the leaves' clean latents, whatever sampled them. The
formulas, in the library's conventions (sigma 1 = noise, ``v = noise - x0``, means over elements),
are in :mod:`treesdk.forward_losses` and ``docs/forward_process.md``.
"""

from __future__ import annotations

from typing import Literal

from pydantic import Field

from treesdk.forward_losses import AWMLoss, NFTLoss, OldPolicySchedule, VelocityKL
from treesdk.recipes.parts import Part, PartDecl, declare


class _OldPolicyFields(Part):
    old_flat: int = Field(0, ge=0, description="old policy: optimiser steps before its decay starts to grow")
    old_uprate: float = Field(0.0, ge=0, le=1, description="old policy: decay growth per optimiser step")
    old_uphold: float = Field(0.0, ge=0, lt=1, description="old policy: largest decay (0 = the last iteration's weights)")
    sample_old: bool = Field(False, description="sample the forest with the old policy's weights instead of the live ones")

    def schedule(self) -> OldPolicySchedule:
        return OldPolicySchedule(self.old_flat, self.old_uprate, self.old_uphold)


class NFTSpec(_OldPolicyFields):
    """DiffusionNFT: ``r = clamp(A, -c, c) / (2c) + 1/2``; ``v+ = b v_theta + (1 - b) v_old``,
    ``v- = (1 + b) v_old - b v_theta``; ``c * mean(r l(v+) / b + (1 - r) l(v-) / b)`` with ``l`` the
    adaptively weighted x0 error; trained at ``int(T * fraction)`` grid sigmas per leaf (a random
    permutation of the sampling grid). ``v_old`` is the old policy (``old_*`` decay schedule)."""

    kind: Literal["nft"] = "nft"
    weight: float = Field(1.0, ge=0, description="weight of this term")
    beta: float = Field(1.0, gt=0, le=10, description="implicit-policy mix b (DiffusionNFT config.beta)")
    adv_clip: float = Field(5.0, gt=0, description="advantage clip c: maps A to r in [0, 1] and scales the loss")
    fraction: float = Field(0.99, gt=0, le=1, description="fraction of the T grid sigmas trained per leaf")
    sample_old: bool = Field(True, description="sample the forest with the old policy (DiffusionNFT's 'old' adapter)")


class AWMSpec(Part):
    """Advantage-weighted matching: on-policy clipped surrogate on the weighted flow-matching
    log-likelihood ``lp = -mean((v_theta - (noise - x0))^2)`` (``weighting``: uniform, t, t**2,
    ghuber with ``power``), at ``count`` stratified grid sigmas in ``[1, int(T * fraction)]``."""

    kind: Literal["awm"] = "awm"
    weight: float = Field(1.0, ge=0, description="weight of this term")
    weighting: Literal["uniform", "t", "t**2", "ghuber"] = Field("ghuber", description="per-sigma weighting of lp")
    power: float = Field(0.25, gt=0, le=1, description="generalised Huber power (weighting=ghuber)")
    clip_range: float = Field(1.0, gt=0, description="ratio clip range e")
    adv_clip: float = Field(5.0, gt=0, description="advantage clip c")
    advantage_max: float | None = Field(1.0, gt=0, description="advantages rescaled to [-advantage_max, advantage_max] (None: not)")
    count: int = Field(6, ge=1, le=1000, description="training sigmas per leaf (strata)")
    fraction: float = Field(0.9, gt=0, le=1, description="strata cover grid steps [1, int(T * fraction)]")


class VelocityKLSpec(_OldPolicyFields):
    """``weight * mean((v_theta - v_anchor)^2)`` at the clean-leaf training points; ``to``: the base
    policy (``reference``, adapter off) or the old policy (``old``, AWM's EMA anchor)."""

    kind: Literal["velocity-kl"] = "velocity-kl"
    weight: float = Field(1e-4, ge=0, description="beta")
    to: Literal["reference", "old"] = Field("reference", description="anchor: reference (base) or old policy")


for _decl in (
    PartDecl("loss", NFTSpec, build=lambda s: NFTLoss(s.beta, s.adv_clip, s.fraction, s.schedule(), s.sample_old)),
    PartDecl("loss", AWMSpec, build=lambda s: AWMLoss(s.weighting, s.power, s.clip_range, s.adv_clip, s.advantage_max,
                                                      s.count, s.fraction)),
    PartDecl("loss", VelocityKLSpec, build=lambda s: VelocityKL(s.to, s.schedule(), s.sample_old)),
):
    declare(_decl)

__all__ = ["AWMSpec", "NFTSpec", "VelocityKLSpec"]
