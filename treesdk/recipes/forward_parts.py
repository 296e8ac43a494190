"""Recipe parts of the forward-process path: loss terms over clean leaves (DiffusionNFT, AWM, the
velocity KL), declared in the same registry as the other loss terms (slot ``loss``).

Each term is its own part (:class:`treesdk.forward_losses.NFTLoss` is both the ``nft`` entry of a
recipe and the callable the trainer runs), marked ``consumes = "clean-leaves"``; a recipe whose losses
are all such terms is trained by :mod:`treesdk.training.loop.forward_update` on the leaves' clean
latents, whatever sampled them. The formulas, in the library's conventions (sigma 1 = noise,
``v = noise - x0``, means over elements), are in :mod:`treesdk.forward_losses` and
``docs/forward_process.md``.
"""

from __future__ import annotations

from treesdk.forward_losses import AWMLoss, NFTLoss, VelocityKL
from treesdk.recipes.parts import PartDecl, declare

#: the spec names of earlier releases: each spec is now the loss term itself
NFTSpec, AWMSpec, VelocityKLSpec = NFTLoss, AWMLoss, VelocityKL

for _term in (NFTLoss, AWMLoss, VelocityKL):
    declare(PartDecl("loss", _term))

__all__ = ["AWMSpec", "NFTSpec", "VelocityKLSpec"]
