"""The tree's pruning part (``tree.prune``): BranchGRPO's depth and width pruning of the trained edges.

:class:`PruneSpec` holds the settings; :func:`prune_edges` applies them to an iteration's
advantages (the update then skips the pruned parents, so their training forwards are not paid).
The rules are in :mod:`treesdk.pruning`.
"""

from __future__ import annotations

from typing import Any, Literal

from pydantic import Field

from treesdk.interfaces import EdgeAdvantages, Forest
from treesdk.pruning import active_depths, prune_masks, pruning_on
from treesdk.recipes.parts import Part

__all__ = ["PruneSpec", "prune_edges"]


class PruneSpec(Part):
    """BranchGRPO pruning (depth = steps taken: the edges of step ``i`` lead to depth ``i + 1``)."""

    depths: list[int] = Field(default_factory=list, description="depths whose incoming edges are not trained "
                                                                "(BranchGRPO --depth_pruning)")
    slide_every: int = Field(0, ge=0, description="move the pruned depths one shallower every N iterations (0: fixed; "
                                                  "--depth_pruning_slide_interval)")
    stop_depth: int | None = Field(None, ge=0, description="the slide stops when the shallowest pruned depth reaches it "
                                                           "(None: the last split step)")
    width: Literal[0, 1, 2] = Field(0, description="width pruning after the last split step (trees with "
                                                    "tree.split_steps): 0 off, 1 best per chain, 2 best and worst per "
                                                    "prompt (--width_pruning_mode)")
    width_ratio: float = Field(0.5, gt=0, le=1, description="fraction of those edges kept (--width_pruning_ratio)")
    until: float = Field(1.0, ge=0, le=1, description="prune during this fraction of the run's iterations "
                                                     "(--pruning_step_ratio)")

    @property
    def enabled(self) -> bool:
        return bool(self.depths) or self.width > 0

    def plan(self, recipe: Any, iteration: int, iters: int) -> tuple[set[int], int, int | None]:
        """``(active depths, width mode, last split step)`` at 1-based ``iteration``; nothing when off."""
        if not self.enabled or not pruning_on(iteration, iters, self.until):
            return set(), 0, None
        last = _last_split(recipe)
        stop = self.stop_depth if self.stop_depth is not None else (last if last is not None else 0)
        return active_depths(self.depths, iteration, self.slide_every, stop), self.width, last


def _last_split(recipe: Any) -> int | None:
    splits = recipe.branch_steps
    return max(splits) if splits else None


def prune_edges(recipe: Any, forest: Forest, targets: EdgeAdvantages, iteration: int, iters: int) -> EdgeAdvantages:
    """``targets`` with the ``trained`` masks of ``recipe.tree.prune`` at 0-based ``iteration`` (as
    the trainer counts before the iteration ends); unchanged when the recipe does not prune."""
    spec = getattr(recipe.tree, "prune", None)
    if spec is None or not spec.enabled or not forest.layers:
        return targets
    depths, width, last = spec.plan(recipe, iteration + 1, iters)
    if not depths and width == 0:
        return targets
    masks = prune_masks(forest, targets, depths=depths, width=width, ratio=spec.width_ratio, last_split=last)
    return EdgeAdvantages(targets.advantages, targets.clip_rewards, targets.leaf_advantages, targets.leaf_rewards,
                          trained=masks)
