"""BranchGRPO's pruning: which sampled edges the update trains (sampling and rewards are unchanged).

Depths are BranchGRPO's node depths: a node reached after ``n`` steps is at depth ``n``, so the edges
of sampling step ``i`` lead to depth ``i + 1``. Three rules, applied in this order
(Fredreic1849/BranchGRPO ``train_branchgrpo_flux.py``, ``train_one_step_tree``):

* **depth pruning**: the edges into ``depths`` are not trained. With a slide every ``every``
  iterations the set moves ``shift = n // every`` depths shallower (``n`` the 1-based iteration),
  the shift capped so that its shallowest depth does not go below ``stop`` (BranchGRPO's
  ``depth_pruning_stop_depth``, default the last split step);
* **width pruning** acts on the edges after the last split step (one chain of non-branching steps
  per leaf): mode 1 keeps, per chain, the ``max(1, int(g * ratio))`` edges of highest advantage among
  its ``g`` edges left by depth pruning; mode 2 keeps, per prompt, the ``max(2, int(M * ratio))``
  edges of its ``M`` such edges with the highest and the lowest advantages (half each, the extra one
  among the lowest). BranchGRPO ranks mode 2 over a rank's whole sampling batch; per prompt here,
  so what is kept does not depend on which prompts share a rank;
* **until**: pruning applies while ``n <= int(iters * until)`` (BranchGRPO's ``pruning_step_ratio``).

A mask is ``[N]`` bool per layer (True: the parent's edges are trained), the layout of
:class:`treesdk.interfaces.EdgeAdvantages` ``trained``. Ties in advantage keep the earlier edge.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor

from .interfaces import EdgeAdvantages, Forest

__all__ = ["active_depths", "pruning_on", "prune_masks", "kept_rows"]


def pruning_on(iteration: int, iters: int, until: float) -> bool:
    """Whether pruning applies at 1-based ``iteration`` of a run of ``iters``."""
    return iteration <= int(iters * until)


def active_depths(depths: Sequence[int], iteration: int, every: int, stop: int) -> set[int]:
    """The depths pruned at 1-based ``iteration``: ``depths`` moved ``min(n // every, min(depths) - stop)``
    shallower when ``every > 0`` (never a negative shift)."""
    base = sorted(int(d) for d in depths)
    if not base:
        return set()
    shift = 0
    if every > 0:
        shift = min(iteration // every, max(0, base[0] - stop))
    return {d - shift for d in base}


def _width_keep(values: Tensor, keep: int, mode: int) -> Tensor:
    """Indices into ``values`` kept by width mode 1 (the ``keep`` highest) or 2 (highest and lowest)."""
    order = torch.sort(values, descending=True, stable=True).indices
    if mode == 1:
        return order[:keep]
    best = keep // 2
    return torch.cat([order[:best], order[len(order) - (keep - best):]])


def prune_masks(forest: Forest, targets: EdgeAdvantages, *, depths: set[int], width: int = 0, ratio: float = 0.5,
                last_split: int | None = None) -> list[Tensor]:
    """Per layer ``[N]`` bool masks of the trained parents (module docstring); ``depths`` the active
    pruned depths, ``last_split`` the last branching step (width pruning needs it)."""
    masks = [torch.full((layer.num_parents,), layer.step + 1 not in depths, dtype=torch.bool) for layer in forest.layers]
    if width == 0 or last_split is None:
        return masks
    tail = [i for i, layer in enumerate(forest.layers) if layer.step > last_split and layer.k == 1]
    if not tail:
        return masks
    leaves = forest.leaves.shape[0]
    # after the last split every parent row n of a tail layer is on leaf n's chain
    live = [i for i in tail if forest.layers[i].num_parents == leaves and bool(masks[i].any())]
    if not live:
        return masks
    values = torch.stack([targets.advantages[i].float().mean(dim=(1, 2)).cpu() for i in live], dim=1)  # [leaves, g]
    kept = torch.zeros_like(values, dtype=torch.bool)
    if width == 1:
        keep = max(1, int(len(live) * ratio))
        for leaf in range(leaves):
            kept[leaf, _width_keep(values[leaf], keep, 1)] = True
    else:
        per_prompt = forest.leaves_per_prompt
        for p in range(forest.num_prompts):
            block = values[p * per_prompt:(p + 1) * per_prompt].flatten()  # leaf-major, then layer order
            keep = min(block.numel(), max(2, int(block.numel() * ratio)))
            index = _width_keep(block, keep, 2)
            flat = torch.zeros(block.numel(), dtype=torch.bool)
            flat[index] = True
            kept[p * per_prompt:(p + 1) * per_prompt] = flat.view(per_prompt, len(live))
    for column, i in enumerate(live):
        masks[i] = masks[i] & kept[:, column]
    return masks


def kept_rows(rows: Sequence[int], steps: Sequence[int], *, depths: set[int], width: int = 0, ratio: float = 0.5,
              last_split: int | None = None, prompts: int = 1, leaves_per_prompt: int = 1) -> list[int]:
    """Trained rows per stored layer (``rows[l]`` parents at step ``steps[l]``) under the same rules, for
    the planner: exact in total; under width pruning each tail layer gets an even share (the real
    split between layers follows the advantages)."""
    out = [0 if s + 1 in depths else int(r) for r, s in zip(rows, steps)]
    if width == 0 or last_split is None:
        return out
    leaves = prompts * leaves_per_prompt
    live = [i for i, (r, s) in enumerate(zip(rows, steps)) if s > last_split and r == leaves and out[i]]
    if not live:
        return out
    g = len(live)
    if width == 1:
        total = leaves * max(1, int(g * ratio))
    else:
        m = leaves_per_prompt * g
        total = prompts * min(m, max(2, int(m * ratio)))
    share, extra = divmod(total, g)
    for j, i in enumerate(live):
        out[i] = share + (1 if j < extra else 0)
    return out
