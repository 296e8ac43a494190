"""The tree sampler: one readable function over a velocity model, the forest as plain data.

Per prompt the forest has ``roots`` independent roots. At every step of the window
``[window_start, window_start + d)`` each frontier node gets ``k`` children, each an SDE step with
its own noise; outside the window every node takes an ODE step, or a non-branching SDE step when
``sde_outside_window`` (GRPO). The velocity of a node is computed **once** per step for all its
children, and the frontier of all prompts is batched together (chunked by ``chunk``).

Randomness belongs to prompts, not to batches or ranks: each prompt has its own
``torch.Generator`` seeded by the caller, which draws the root noise and, at every stochastic step,
the noise of that prompt's new children. A tree is therefore the same whichever other prompts
share its batch.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import torch
from torch import Tensor

from .interfaces import Cond, Forest, TreeLayer, VelocityModel, iter_chunks, select_cond
from .sde import SDE_FAMILIES, SDEFamily, ode_step


def nfe_split_tree(steps: int, split_steps: Sequence[int], k: int) -> int:
    """Velocity evaluations of one tree that branches ``k`` ways at each step of ``split_steps``
    (branch points anywhere in ``[0, T)``): ``sum_i k^(number of split steps before i)``."""
    splits = sorted(set(int(s) for s in split_steps))
    return sum(k ** sum(1 for s in splits if s < i) for i in range(steps))


def nfe_per_tree(steps: int, start: int, depth: int, k: int) -> int:
    """Velocity evaluations the sampler makes for one tree of ``steps`` steps whose branching window
    starts at ``start`` and is ``depth`` steps deep with ``k`` children per node:
    ``s + (1 + k + ... + k^(d-1)) + k^d (T - s - d)``."""
    internal = depth if k == 1 else (k**depth - 1) // (k - 1)
    return start + internal + k**depth * (steps - start - depth)


def batched_velocity(
    model: VelocityModel, x: Tensor, sigma: float, cond: Cond, node_prompt: Tensor, chunk: int
) -> Tensor:
    """Velocity of every row of ``x`` (``[N, ...]``) at scalar ``sigma``, in chunks of ``chunk`` rows.

    ``cond`` has one row per prompt; ``node_prompt[n]`` says which prompt row ``n`` belongs to.
    Returns float32 ``[N, ...]``. Exactly ``N`` velocity evaluations.
    """
    outputs = []
    for part in iter_chunks(x.shape[0], chunk):
        rows = x[part]
        sig = torch.full((rows.shape[0],), float(sigma), device=rows.device, dtype=torch.float32)
        outputs.append(model.velocity(rows, sig, select_cond(cond, node_prompt[part])).float())
    return torch.cat(outputs, dim=0)


def prompt_generators(seeds: Sequence[int]) -> list[torch.Generator]:
    """One CPU generator per prompt (CPU so that noise is identical on every device)."""
    return [torch.Generator(device="cpu").manual_seed(int(seed)) for seed in seeds]


def _draw(generators: list[torch.Generator], counts: Sequence[int], shape: tuple[int, ...], device: torch.device) -> Tensor:
    """Standard normal noise, ``counts[p]`` rows from prompt ``p``'s generator, prompt-major.

    Drawn on the CPU; copied to a CUDA device from pinned memory without blocking, so the host
    does not wait for the previous velocity call to finish (a pageable copy would synchronise).
    """
    parts = [torch.randn((n, *shape), generator=g, dtype=torch.float32) for g, n in zip(generators, counts)]
    noise = torch.cat(parts, dim=0)
    if device.type == "cuda":
        return noise.pin_memory().to(device, non_blocking=True)
    return noise.to(device)


@torch.no_grad()
def sample_forest(
    model: VelocityModel,
    prompts: Sequence[str],
    seeds: Sequence[int],
    *,
    steps: int,
    k: int = 1,
    depth: int = 0,
    roots: int = 1,
    window_start: int = 0,
    noise_level: Callable[[int], float] | float = 0.7,
    sde_outside_window: bool = False,
    outside_noise_level: Callable[[int], float] | float | None = None,
    chunk: int = 64,
    cond: Cond | None = None,
    progress: Callable[[int, int], None] | None = None,
    mean_std: SDEFamily = SDE_FAMILIES["flow-sde"],
    split_steps: Sequence[int] | None = None,
    sde_steps: Sequence[int] | None = None,
) -> Forest:
    """Sample the forest of all ``prompts`` and return it with every trainable edge.

    Args:
        model: the behaviour policy (called without gradients).
        prompts: ``P`` prompts; ``seeds``: one integer seed per prompt.
        steps: ``T``; the grid is ``model.sigmas(T)``.
        k, depth, roots: branching factor, window length ``d``, independent roots per prompt.
        window_start: first window step ``s``; requires ``s + d <= T``.
        noise_level: ``a`` of the SDE, or a function ``depth -> a`` (depth 0 = first window step).
        sde_outside_window: take non-branching SDE steps (trained edges) outside the window.
        outside_noise_level: their ``a``, or a function ``step -> a`` (default: ``noise_level`` at depth 0).
        chunk: max nodes per velocity call.
        cond: pre-encoded conditioning for ``prompts`` (else ``model.encode(prompts)``).
        progress: called as ``progress(step, T)`` after each step.
        mean_std: the SDE family (:class:`treesdk.sde.SDEFamily`, called as its transition; default:
            the Flow-GRPO step); stored on the forest.
        split_steps: branch points (Flow-GRPO-Fast, BranchGRPO): the nodes branch ``k`` ways at exactly
            these steps (depth = position in the list) instead of at the ``depth`` consecutive steps
            from ``window_start``; needs ``depth == len(split_steps)``; ``window_start`` is ignored
            (the forest records the first split step).
        sde_steps: with ``sde_outside_window``, only these non-branching steps take SDE steps (the
            others ODE; BranchGRPO's mixed ODE/SDE tree); None: every one.

    Returns:
        :class:`Forest` with ``nfe`` = number of velocity evaluations (rows), which equals
        ``P * roots * (s + (1 + k + ... + k^(d-1)) + k^d (T - s - d))``.
    """
    if k < 1 or depth < 0 or roots < 1:
        raise ValueError(f"need k >= 1, depth >= 0, roots >= 1; got k={k}, depth={depth}, roots={roots}")
    splits = sorted(set(int(s) for s in split_steps)) if split_steps is not None else None
    if splits is not None:
        if len(splits) != depth or (splits and (splits[0] < 0 or splits[-1] >= steps)):
            raise ValueError(f"split_steps {list(split_steps or [])} must be {depth} distinct steps in [0, {steps})")
        window_start = splits[0] if splits else 0
    elif window_start < 0 or window_start + depth > steps:
        raise ValueError(f"window [{window_start}, {window_start + depth}) does not fit in {steps} steps")
    if len(seeds) != len(prompts):
        raise ValueError(f"need one seed per prompt: {len(prompts)} prompts, {len(seeds)} seeds")
    level_at = noise_level if callable(noise_level) else (lambda _depth, a=float(noise_level): a)
    if callable(outside_noise_level):
        outside_at = outside_noise_level
    else:
        outside_at = lambda _step, a=float(outside_noise_level if outside_noise_level is not None else level_at(0)): a  # noqa: E731
    if not isinstance(mean_std, SDEFamily):
        raise TypeError(f"mean_std must be a treesdk.sde.SDEFamily, got {mean_std!r}; wrap a transition function "
                        "as SDEFamily(name, mean_std)")
    logp_of = mean_std.log_prob
    sde_at = set(int(s) for s in sde_steps) if sde_steps is not None else None

    num_prompts = len(prompts)
    cond = model.encode(list(prompts)) if cond is None else cond
    sigmas = model.sigmas(steps).float()
    device = model.device
    shape = tuple(model.latent_shape)
    generators = prompt_generators(seeds)

    nodes_per_prompt = roots
    x = _draw(generators, [nodes_per_prompt] * num_prompts, shape, device)
    node_prompt = torch.arange(num_prompts, device=device).repeat_interleave(nodes_per_prompt)
    layers: list[TreeLayer] = []
    nfe = 0
    for i in range(steps):
        sigma, sigma_next = float(sigmas[i]), float(sigmas[i + 1])
        v = batched_velocity(model, x, sigma, cond, node_prompt, chunk)
        nfe += x.shape[0]
        in_window = (i in splits) if splits is not None else window_start <= i < window_start + depth
        at_depth = splits.index(i) if splits is not None and in_window else i - window_start
        if not in_window and not (sde_outside_window and (sde_at is None or i in sde_at)):
            x = ode_step(x, v, sigma, sigma_next)
        else:
            branch = k if in_window else 1
            level = level_at(at_depth) if in_window else float(outside_at(i))
            parents = x
            mean, std = mean_std(parents, v, sigma, sigma_next, level)
            noise = _draw(generators, [nodes_per_prompt * branch] * num_prompts, shape, device)
            children = mean.repeat_interleave(branch, dim=0) + std[:1] * noise
            logp = logp_of(children, mean.repeat_interleave(branch, dim=0), std[:1])
            layers.append(
                TreeLayer(
                    step=i,
                    depth=at_depth if in_window else -1,
                    sigma=sigma,
                    sigma_next=sigma_next,
                    noise_scale=level,
                    k=branch,
                    parents=parents,
                    children=children.view(parents.shape[0], branch, *shape),
                    log_probs=logp.view(parents.shape[0], branch),
                    velocity=v,
                    parent_prompt=node_prompt,
                )
            )
            x = children
            node_prompt = node_prompt.repeat_interleave(branch)
            nodes_per_prompt *= branch
        if progress is not None:
            progress(i + 1, steps)

    below = 1
    for layer in reversed(layers):
        layer.leaves_below = below
        below *= layer.k
    return Forest(
        prompts=list(prompts),
        cond=cond,
        sigmas=sigmas,
        layers=layers,
        leaves=x,
        leaves_per_prompt=nodes_per_prompt,
        window_start=window_start,
        nfe=nfe,
        mean_std=mean_std,
    )


def sample_forest_for_recipe(
    model: VelocityModel,
    recipe,  # noqa: ANN001 - a treesdk.recipes.Recipe (the kernel imports nothing above it)
    prompts: Sequence[str],
    seeds: Sequence[int],
    window_start: int,
    cond: Cond | None = None,
    progress: Callable[[int, int], None] | None = None,
    mean_std: SDEFamily = SDE_FAMILIES["flow-sde"],
) -> Forest:
    """:func:`sample_forest` with the tree shape, noise schedule, SDE family (``mean_std``, built from
    ``recipe.sde`` by the caller; default Flow-GRPO) and chunk size of ``recipe``."""
    tree = recipe.tree
    splits = recipe.branch_steps  # tree.split_steps, or tree.split_fractions at recipe.steps
    return sample_forest(
        model,
        prompts,
        seeds,
        steps=recipe.steps,
        k=tree.k,
        depth=tree.d,
        roots=tree.roots,
        window_start=window_start,
        noise_level=lambda depth: recipe.noise.at(splits[depth] if splits else window_start + depth, depth, tree.d),
        sde_outside_window=tree.sde_outside_window,
        outside_noise_level=(
            tree.outside_noise_level if tree.outside_noise_level is not None else (lambda step: recipe.noise.at(step, -1, tree.d))
        ),
        chunk=recipe.chunk,
        cond=cond,
        progress=progress,
        mean_std=mean_std,
        split_steps=splits,
        sde_steps=getattr(tree, "sde_steps", None),
    )


@torch.no_grad()
def sample_ode(
    model: VelocityModel, prompts: Sequence[str], seeds: Sequence[int], steps: int, chunk: int = 64
) -> Tensor:
    """Deterministic ODE samples (one per prompt, root noise from its seed): ``[P, *latent]``."""
    return sample_forest(model, prompts, seeds, steps=steps, chunk=chunk).leaves
