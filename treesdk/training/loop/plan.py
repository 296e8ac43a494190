"""The plan of a training run, computed before anything heavy is loaded (``treesdk train --dry-run``).

Two parts:

* **Call counts** (exact): velocity calls and rows per iteration in sampling and training, from the
  recipe alone, following :func:`treesdk.sampler.sample_forest` and :func:`treesdk.training.loop.update.policy_update`
  step by step (frontier sizes, chunking by ``recipe.chunk``, minibatch groups, passes), for every
  iteration's window start (``recipe.window_start(iteration, seed)``). A *row* is one latent through
  :meth:`VelocityModel.velocity` (what ``metrics.jsonl`` counts as ``nfe_sampling``/``nfe_training``);
  a *call* is one invocation (up to ``chunk`` rows). With classifier-free guidance each row is two
  transformer rows.
* **Memory per rank** (an estimate, in bytes): weights, trainable parameters, gradients, AdamW
  state, tree states, saved activations of the largest training call, and the VAE decode of one
  chunk. Parameter counts are exact (:mod:`treesdk.model_facts`); activation bytes per token per
  hidden unit per block come from the family's activation table (``ModelFacts.activations``: FLUX's
  and SD3.5's are in :mod:`treesdk_backends.diffusers.sizes`, measured as that module says).

Tree states (what :func:`sample_forest` keeps per trained layer, float32): parents, the ``k``
children of each, the parents' velocity and the children's log-probs, plus the leaves and the
prompts' conditioning, all on the model's device (a few hundred MiB at most for FLUX at 1024 px:
``docs/performance.md`` says why they are not offloaded).
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field
from typing import Any

from treesdk.dtypes import DTYPES
from treesdk.model_facts import ModelFacts, lora_parameters

__all__ = ["CallCounts", "MemoryPlan", "iteration_calls", "plan_memory", "plan_run", "DTYPE_BYTES",
           "activation_bytes_per_token"]

DTYPE_BYTES = {name: dtype.itemsize for name, dtype in DTYPES.items()}  # bytes per element, by name
GIB = 2**30

#: no-grad forward working set, bytes per token per hidden unit per element size (one block live)
SAMPLING_WORKING_SET = 16
#: VAE decoder working set per output pixel (bytes / element size): ~6 live maps of 128 channels
DECODE_WORKING_SET = 6 * 128


@dataclass
class CallCounts:
    """Velocity calls (invocations) and rows (latents) of one iteration, all ranks together."""

    iteration: int
    window_start: int
    nfe_sampling: int
    calls_sampling: int
    nfe_training: int
    calls_training: int
    nfe_reference: int
    leaves: int


def _branching(recipe: Any, start: int) -> set[int]:
    """Steps at which every node branches ``k`` ways: the recipe's split points when it has them
    (Flow-GRPO-Fast, BranchGRPO), else the window ``[start, start + d)``."""
    splits = recipe.branch_steps
    return set(splits) if splits is not None else set(range(start, start + recipe.tree.d))


def _frontier(steps: int, start: int, depth: int, k: int, roots: int, splits: Any = None) -> list[int]:
    """Nodes per prompt at each step (before the step is taken), as the sampler's frontier; ``splits``
    (a set of steps) replaces the window ``[start, start + depth)``."""
    branch = set(splits) if splits is not None else set(range(start, start + depth))
    sizes, nodes = [], roots
    for i in range(steps):
        sizes.append(nodes)
        if i in branch:
            nodes *= k
    return sizes


def _recipe_frontier(recipe: Any, start: int) -> list[int]:
    t = recipe.tree
    return _frontier(recipe.steps, start, t.d, t.k, t.roots, _branching(recipe, start))


def _stored_steps(recipe: Any, start: int) -> list[int]:
    """Steps whose transitions the sampler stores: the branching steps, or every step with SDE outside."""
    branch, t = _branching(recipe, start), recipe.tree
    sde = getattr(t, "sde_steps", None)
    return [i for i in range(recipe.steps) if i in branch or (t.sde_outside_window and (sde is None or i in sde))]


def _forward_path(recipe: Any) -> tuple[int, int] | None:
    """``(training slots per leaf, no-grad forwards per slot and leaf)`` when the recipe's loss terms
    train on clean leaves (:mod:`treesdk.training.loop.forward_update`: one ``v_theta`` per leaf and slot,
    plus ``v_old`` and/or ``v_ref``); None for the edge path."""
    from treesdk.recipes.parts import build

    terms = [build("loss", spec) for spec in recipe.losses]
    if not terms or any(getattr(term, "consumes", "edges") != "clean-leaves" for term in terms):
        return None
    slots = 0
    for term in terms:
        if getattr(term, "sigmas", None) == "grid-permutation":  # forward_losses.grid_permutation_sigmas
            slots = max(1, int(recipe.steps * term.fraction))
            break
        if getattr(term, "sigmas", None) == "stratified":  # forward_losses.stratified_grid_sigmas
            slots = int(term.count)
            break
    extra = int(any(getattr(t, "needs_old_velocity", False) for t in terms)) + int(any(t.needs_reference for t in terms))
    return slots, extra


def _trained_steps(recipe: Any, start: int) -> list[int]:
    """Steps whose transitions are trained: the stored ones on the edge path, none on the forward path."""
    return [] if _forward_path(recipe) is not None else _stored_steps(recipe, start)


def _groups(num_prompts: int, minibatches: int) -> list[int]:
    """Sizes of ``torch.arange(P).tensor_split(min(minibatches, P))`` (non-empty only)."""
    n = min(minibatches, num_prompts)
    base, extra = divmod(num_prompts, n)
    return [base + (1 if i < extra else 0) for i in range(n) if base + (1 if i < extra else 0)]


def _pruned(recipe: Any, rows: list[int], steps: list[int], prompts: int, iteration: int, iters: int) -> list[int]:
    """Trained rows per stored layer after ``tree.prune`` at 1-based ``iteration`` (:func:`treesdk.pruning.kept_rows`)."""
    from treesdk.pruning import kept_rows

    spec = getattr(recipe.tree, "prune", None)
    if spec is None or not spec.enabled:
        return rows
    depths, width, last = spec.plan(recipe, max(iteration, 1), iters)
    return kept_rows(rows, steps, depths=depths, width=width, ratio=spec.width_ratio, last_split=last, prompts=prompts,
                     leaves_per_prompt=recipe.tree.leaves_per_prompt)


def iteration_calls(recipe: Any, prompts: int, start: int, needs_reference: bool = False, iteration: int = 0,
                    iters: int = 1) -> CallCounts:
    """Exact calls and rows of one iteration on ``prompts`` prompts (one rank) with window ``start``.

    Edge path: the trained steps' parents (less those ``tree.prune`` drops at 1-based ``iteration`` of
    ``iters``; under width pruning the calls assume even shares per layer), ``nfe_reference`` as many
    when ``needs_reference``. Forward
    path (clean-leaf terms): every leaf at each training slot, in calls of ``train_chunk`` rows per
    minibatch group; ``nfe_reference`` its old-policy and reference forwards (``needs_reference`` unused).
    """
    t = recipe.tree
    frontier = _recipe_frontier(recipe, start)
    chunk, train_chunk = recipe.chunk, recipe.training_chunk
    nfe_s = sum(n * prompts for n in frontier)
    calls_s = sum(math.ceil(n * prompts / chunk) for n in frontier)
    passes = recipe.optim.passes
    leaves_per_prompt = t.roots * t.k**t.d
    leaves = prompts * leaves_per_prompt
    forward = _forward_path(recipe)
    if forward is not None:
        slots, no_grad = forward
        nfe_t = passes * slots * leaves
        calls_t = passes * slots * sum(math.ceil(g * leaves_per_prompt / train_chunk)
                                       for g in _groups(prompts, recipe.optim.minibatches))
        return CallCounts(iteration, start, nfe_s, calls_s, nfe_t, calls_t, nfe_t * no_grad, leaves)
    trained = _trained_steps(recipe, start)
    groups = _groups(prompts, recipe.optim.minibatches)
    kept = _pruned(recipe, [frontier[i] * prompts for i in trained], trained, prompts, iteration, iters)
    per_pass_rows = sum(kept)
    # a group of g prompts holds g / prompts of each layer's kept rows (even shares under width pruning)
    per_pass_calls = sum(-(-(r * g) // (prompts * train_chunk)) for g in groups for r in kept)
    nfe_t = per_pass_rows * passes if trained else 0
    return CallCounts(iteration, start, nfe_s, calls_s, nfe_t, per_pass_calls * passes if trained else 0,
                      nfe_t if needs_reference else 0, leaves)


@dataclass
class MemoryPlan:
    """Estimated bytes on one rank's device (the busiest rank: rank 0 owns ``ceil(batch / ranks)`` trees)."""

    weights_transformer: int
    weights_text_encoders: int
    weights_vae: int
    trainable_parameters: int
    gradients: int
    optimizer_state: int
    tree_states: int
    activations_training: int
    activations_sampling: int
    decode: int
    peak_training: int
    peak_sampling: int
    peak_decode: int
    peak: int
    notes: list[str] = field(default_factory=list)
    old_policy: int = 0  # forward-process recipes with v_old: the old policy's copy and its swap buffer


def _tree_bytes(recipe: Any, facts: ModelFacts, resolution: int, start: int) -> int:
    """Float32 tree states of one prompt: per trained step its children, the parents' velocity and
    the log-probs; parents only where they are not the previous step's children (the sampler
    keeps one tensor for both); the leaves when an ODE tail made them new tensors."""
    t = recipe.tree
    elems = facts.latent_elements(resolution)
    frontier = _recipe_frontier(recipe, start)
    trained = set(_stored_steps(recipe, start))
    branch = _branching(recipe, start)
    total = 0
    for i in sorted(trained):
        k = t.k if i in branch else 1
        parents = frontier[i]
        total += 4 * (parents * elems * (1 + k) + parents * k)  # velocity, children, log-probs
        if i - 1 not in trained:
            total += 4 * parents * elems
    if recipe.steps - 1 not in trained:
        total += 4 * t.roots * t.k**t.d * elems
    return total


def _cond_bytes(facts: ModelFacts, dtype_bytes: int) -> int:
    per_prompt = (facts.text_tokens * facts.text_dim + facts.pooled_dim) * dtype_bytes
    return per_prompt * (2 if facts.cfg else 1)


def activation_bytes_per_token(facts: ModelFacts, *, lora: bool, dtype_bytes: int,
                               gradient_checkpointing: bool = False) -> float:
    """Peak bytes per token per hidden unit of one row's training forward + backward.

    From the family's :class:`~treesdk.model_facts.ActivationTable` (``facts.activations``): without
    checkpointing every block's activations are saved (``saved`` per kind, the first block's from
    ``first_block`` under LoRA, plus ``outside``) and the backward starts in the last block (its
    ``backward_workspace``). With checkpointing only the blocks' inputs are kept and one block is
    recomputed and back-propagated at a time (the largest). 0.0 for a family without a table.
    """
    b, table = dtype_bytes, facts.activations
    mode, key_b = ("lora" if lora else "full"), (4 if b == 4 else 2)
    kinds = facts.blocks
    if table is None or not kinds:
        return 0.0
    saved = [table.saved.get((kind, mode, key_b), 0.0) for kind in kinds]
    if not all(saved):
        return 0.0
    work = {kind: table.backward_workspace.get(kind, 0.0) * b / 4 for kind in kinds}
    outside = table.outside.get((mode, key_b), 0.0)
    if gradient_checkpointing:
        return (len(kinds) + 1) * b + outside + max(s + work[kind] for s, kind in zip(saved, kinds))
    if lora:
        saved[0] = table.first_block.get((kinds[0], key_b), saved[0])
    return outside + sum(saved) + work[kinds[-1]]


def plan_memory(recipe: Any, facts: ModelFacts, *, resolution: int, dtype: str, lora_rank: int, prompts: int,
                gradient_checkpointing: bool = False, offload_text_encoders: bool = False,
                lora_targets: tuple[str, ...] | None = None) -> MemoryPlan:
    """Memory estimate of one rank that samples and trains ``prompts`` trees per iteration (rows per
    call from ``recipe.chunk`` / ``recipe.training_chunk`` / ``recipe.decoding_chunk``)."""
    b = DTYPE_BYTES[dtype]
    targets = tuple(lora_targets or facts.lora_targets)
    trainable = lora_parameters(facts.linears, lora_rank, targets) if lora_rank else facts.transformer_parameters
    train_bytes = 4 if lora_rank else b  # LoRA weights float32; a full fine-tune in the model dtype
    weights_t = (facts.transformer_parameters + facts.transformer_buffers) * b
    weights_te = 0 if offload_text_encoders else facts.text_encoder_parameters * b
    weights_vae = facts.vae_parameters * b
    trainable_b = trainable * 4 if lora_rank else 0  # a full fine-tune trains the weights in place
    grads = trainable * train_bytes
    optim = 2 * trainable * train_bytes  # AdamW exp_avg, exp_avg_sq in the parameter's dtype

    t = recipe.tree
    start = max(0, recipe.steps - t.d)  # what is stored does not depend on the start: ODE outside the window
    if recipe.branch_steps:
        start = recipe.branch_steps[0]
    trees = _tree_bytes(recipe, facts, resolution, start) * prompts
    cond = _cond_bytes(facts, b) * prompts
    states = trees + cond

    tokens = facts.image_tokens(resolution) + facts.text_tokens
    per_token = activation_bytes_per_token(facts, lora=bool(lora_rank), dtype_bytes=b,
                                           gradient_checkpointing=gradient_checkpointing)
    cfg_rows = 2 if facts.cfg else 1
    frontier = _recipe_frontier(recipe, start)
    group = max(_groups(prompts, recipe.optim.minibatches))
    trained = _trained_steps(recipe, start)
    forward = _forward_path(recipe)
    if forward is not None:  # the forward path trains on the leaves of a minibatch group, train_chunk at a time
        train_rows = min(recipe.training_chunk, group * t.roots * t.k**t.d) if forward[0] else 0
    else:
        train_rows = min(recipe.training_chunk, max(frontier[i] * group for i in trained)) if trained else 0
    sample_rows = min(recipe.chunk, max(frontier) * prompts)
    act_train = int(train_rows * cfg_rows * tokens * facts.hidden * per_token)
    act_sample = int(sample_rows * cfg_rows * tokens * facts.hidden * SAMPLING_WORKING_SET * b)
    leaves = prompts * t.roots * t.k**t.d
    decode_rows = min(recipe.decoding_chunk, leaves)
    decode = decode_rows * resolution * resolution * DECODE_WORKING_SET * b

    # the old policy (forward-process terms that use v_old): a float32 copy of the trainable weights, and
    # while it is swapped in (sampling with it, each v_old call) a copy of the live ones in their dtype
    old_policy = trainable * 4 + trainable * train_bytes if forward is not None and _uses_old(recipe) else 0
    resident = weights_t + weights_te + weights_vae + trainable_b
    peak_train = resident + grads + optim + states + act_train + old_policy
    peak_sample = resident + optim + states + act_sample + old_policy
    peak_decode = resident + optim + states + decode + old_policy
    notes = []
    if old_policy:
        notes.append(f"the old policy's copy of the trainable weights and the swap buffer: {old_policy / GIB:.2f} GiB "
                     "(counted in every peak)")
    if not per_token:
        notes.append(f"no activation table for family {facts.family!r}: activations not estimated")
    if decode > act_train:
        notes.append(f"decoding {decode_rows} leaves at once is the largest transient; decode in smaller chunks "
                     "(--set decode_chunk=N)")
    return MemoryPlan(weights_t, weights_te, weights_vae, trainable_b, grads, optim, states, act_train, act_sample,
                      decode, peak_train, peak_sample, peak_decode, max(peak_train, peak_sample, peak_decode), notes,
                      old_policy=old_policy)


def _uses_old(recipe: Any) -> bool:
    from treesdk.recipes.parts import build

    return any(getattr(build("loss", spec), "needs_old_velocity", False) for spec in recipe.losses)


def plan_run(recipe: Any, facts: ModelFacts | None, *, batch: int, world_size: int = 1, iters: int = 1, seed: int = 0,
             resolution: int | None = None, dtype: str = "bfloat16", lora_rank: int = 16,
             gradient_checkpointing: bool = False, offload_text_encoders: bool = False,
             gpu_memory_gib: float | None = None,
             needs_reference: bool | None = None, max_listed: int = 1000) -> dict[str, Any]:
    """The whole plan as one JSON-ready dict (keys documented in ``docs/performance.md``).

    ``nfe_sampling`` / ``nfe_training`` are rows per iteration summed over ranks, averaged over the
    ``iters`` iterations (exact per iteration in ``iterations``, the first ``max_listed``);
    ``facts`` None plans calls only (a backend with no size table, e.g. ``digits``).
    """
    if world_size < 1 or batch < world_size:
        raise ValueError(f"--batch {batch} must be >= the number of ranks {world_size} (every rank needs a tree)")
    if needs_reference is None:
        from treesdk.recipes.parts import build

        needs_reference = any(build("loss", spec).needs_reference for spec in recipe.losses)
    per_rank = [len(range(r, batch, world_size)) for r in range(world_size)]
    rows = []
    for it in range(iters):
        start = recipe.window_start(it, seed)
        counts = [iteration_calls(recipe, n, start, needs_reference, it + 1, iters) for n in per_rank]
        total = CallCounts(it + 1, start, *(sum(getattr(c, f) for c in counts) for f in
                                            ("nfe_sampling", "calls_sampling", "nfe_training", "calls_training",
                                             "nfe_reference", "leaves")))
        rows.append(asdict(total))
    mean = {key: sum(r[key] for r in rows) / len(rows) for key in ("nfe_sampling", "nfe_training", "nfe_reference",
                                                                    "calls_sampling", "calls_training")}
    t = recipe.tree
    plan: dict[str, Any] = {
        "recipe": recipe.name,
        "steps": recipe.steps, "k": t.k, "d": t.d, "roots": t.roots, "chunk": recipe.chunk,
        "train_chunk": recipe.training_chunk, "decode_chunk": recipe.decoding_chunk,
        "passes": recipe.optim.passes, "minibatches": recipe.optim.minibatches,
        "batch": batch, "world_size": world_size, "trees_per_rank": per_rank[0], "iters": iters,
        "leaves_per_prompt": t.roots * t.k**t.d, "leaves": batch * t.roots * t.k**t.d,
        **{key: (int(v) if float(v).is_integer() else v) for key, v in mean.items()},
        "nfe_sampling_per_rank": iteration_calls(recipe, per_rank[0], recipe.window_start(0, seed)).nfe_sampling,
        "iterations": rows[:max_listed],
    }
    if facts is None:
        plan["memory"] = None
        plan["fits"] = None
        return plan
    res = int(resolution or facts.default_resolution)
    mem = plan_memory(recipe, facts, resolution=res, dtype=dtype, lora_rank=lora_rank, prompts=per_rank[0],
                      gradient_checkpointing=gradient_checkpointing, offload_text_encoders=offload_text_encoders)
    plan["model"] = {"name": facts.name, "family": facts.family, "source": facts.source,
                     "transformer_parameters": facts.transformer_parameters,
                     "text_encoder_parameters": facts.text_encoder_parameters, "vae_parameters": facts.vae_parameters,
                     "resolution": res, "image_tokens": facts.image_tokens(res), "text_tokens": facts.text_tokens,
                     "cfg": facts.cfg, "dtype": dtype, "lora_rank": lora_rank,
                     "gradient_checkpointing": gradient_checkpointing,
                     "offload_text_encoders": offload_text_encoders}
    plan["transformer_rows_sampling"] = plan["nfe_sampling"] * (2 if facts.cfg else 1)
    plan["transformer_rows_training"] = plan["nfe_training"] * (2 if facts.cfg else 1)
    plan["memory"] = {key: (round(v / GIB, 3) if isinstance(v, int) else v) for key, v in asdict(mem).items()}
    plan["memory_unit"] = "GiB"
    plan["gpu_memory_gib"] = gpu_memory_gib
    plan["fits"] = None if gpu_memory_gib is None else bool(mem.peak / GIB <= gpu_memory_gib)
    plan["largest_chunk_that_fits"] = None
    if gpu_memory_gib is not None:
        plan["largest_chunk_that_fits"] = largest_chunks_that_fit(
            recipe, facts, gpu_memory_gib, resolution=res, dtype=dtype, lora_rank=lora_rank, prompts=per_rank[0],
            gradient_checkpointing=gradient_checkpointing, offload_text_encoders=offload_text_encoders)
    return plan


def largest_chunks_that_fit(recipe: Any, facts: ModelFacts, gpu_memory_gib: float, **memory: Any) -> dict[str, int | None]:
    """The largest value of each chunk setting whose peak fits in ``gpu_memory_gib`` (None: not even 1).

    ``chunk``: all three together (``train_chunk`` and ``decode_chunk`` unset, as ``--set chunk=N``
    alone); ``train_chunk``: rows per training call, the other two as the recipe has them;
    ``decode_chunk``: leaves per decode, likewise. Searched from the recipe's value down.
    """
    def fits(update: dict[str, Any]) -> bool:
        return plan_memory(recipe.model_copy(update=update), facts, **memory).peak / GIB <= gpu_memory_gib

    out: dict[str, int | None] = {}
    for name, start, other in (("chunk", recipe.chunk, {"train_chunk": None, "decode_chunk": None}),
                               ("train_chunk", recipe.training_chunk, {}), ("decode_chunk", recipe.decoding_chunk, {})):
        out[name] = next((n for n in range(start, 0, -1) if fits({**other, name: n})), None)
    return out
