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
  hidden unit per block were measured with autograd's saved-tensor hooks on diffusers' FLUX and SD3.5
  blocks at real width (``python benchmarks/realwidth.py saved``; see ``docs/performance.md``) and are
  checked there against measured peaks.

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

#: saved activation bytes per token per hidden unit of one block in a training forward, by (family,
#: block kind, "lora"/"full", element bytes); the kinds are :func:`treesdk_backends.diffusers.sizes.block_kinds`.
#: Measured with autograd's saved-tensor hooks, each saved storage counted once for the block that saved
#: it (``python benchmarks/realwidth.py saved``: diffusers 0.42, default LoRA targets, CPU, the block in
#: the interior of a stack; the same per hidden unit at SD3.5-medium and -large width)
ACTIVATION_BYTES = {
    ("flux", "double", "lora", 4): 72.31, ("flux", "double", "lora", 2): 64.26,
    ("flux", "single", "lora", 4): 48.18, ("flux", "single", "lora", 2): 38.17,
    ("flux", "double", "full", 4): 96.19, ("flux", "double", "full", 2): 56.14,
    ("flux", "single", "full", 4): 84.12, ("flux", "single", "full", 2): 50.11,
    ("sd3", "joint", "lora", 4): 56.41, ("sd3", "joint", "lora", 2): 48.35,
    ("sd3", "joint_dual", "lora", 4): 67.01, ("sd3", "joint_dual", "lora", 2): 57.20,
    ("sd3", "joint_last", "lora", 4): 45.04, ("sd3", "joint_last", "lora", 2): 40.40,
    ("sd3", "joint", "full", 4): 100.32, ("sd3", "joint", "full", 2): 58.25,
    ("sd3", "joint_dual", "full", 4): 117.81, ("sd3", "joint_dual", "full", 2): 70.52,
    ("sd3", "joint_last", "full", 4): 70.87, ("sd3", "joint_last", "full", 2): 43.53,
}
#: the first block under LoRA saves less: its inputs come from frozen embedders and need no gradient,
#: so what it computes from them alone is not kept (SD3.5's second attention has no LoRA target and
#: saves nothing in block 0). (family, kind, element bytes) -> bytes per token per hidden unit, measured
FIRST_BLOCK_BYTES = {
    ("flux", "double", 4): 68.63, ("flux", "double", 2): 62.59,
    ("flux", "single", 4): 28.51, ("flux", "single", 2): 28.50,
    ("sd3", "joint", 4): 52.39, ("sd3", "joint", 2): 46.34, ("sd3", "joint_dual", 4): 52.47,
    ("sd3", "joint_dual", 2): 46.41, ("sd3", "joint_last", 4): 41.02, ("sd3", "joint_last", 2): 38.39,
}
#: saved outside the blocks (embedders, final norm and projection), (family, mode, element bytes), measured
OUTSIDE_BYTES = {("flux", "lora", 4): 4.01, ("flux", "lora", 2): 2.00, ("flux", "full", 4): 10.29,
                 ("flux", "full", 2): 5.15, ("sd3", "lora", 4): 1.75, ("sd3", "lora", 2): 0.87,
                 ("sd3", "full", 4): 11.37, ("sd3", "full", 2): 5.69}
#: transient bytes per token per hidden unit while the last block back-propagates (activation gradients;
#: on a CPU also the attention backward), float32; half in 16-bit. Fitted on the real-width bed
#: (docs/performance.md: measured training increment minus saved activations and gradients): FLUX
#: single from the k=2, d=3 run (checked: k=3, d=3 and the checkpointing run); SD3 (one value for
#: every block kind) from an earlier SD3.5-medium bed, checked on the SD3.5-medium and -large beds;
#: FLUX double is not reached by any bed run (the single block decides both maxima), an upper bound
BACKWARD_WORKSPACE = {("flux", "double"): 20.0, ("flux", "single"): 52.0, ("sd3", "joint"): 35.0,
                      ("sd3", "joint_dual"): 35.0, ("sd3", "joint_last"): 35.0}
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


def _frontier(steps: int, start: int, depth: int, k: int, roots: int) -> list[int]:
    """Nodes per prompt at each step (before the step is taken), as the sampler's frontier."""
    sizes, nodes = [], roots
    for i in range(steps):
        sizes.append(nodes)
        if start <= i < start + depth:
            nodes *= k
    return sizes


def _trained_steps(recipe: Any, start: int) -> list[int]:
    """Steps whose transitions are stored (and trained): the window, or every step with SDE outside."""
    d = recipe.tree.d
    return [i for i in range(recipe.steps) if start <= i < start + d or recipe.tree.sde_outside_window]


def _groups(num_prompts: int, minibatches: int) -> list[int]:
    """Sizes of ``torch.arange(P).tensor_split(min(minibatches, P))`` (non-empty only)."""
    n = min(minibatches, num_prompts)
    base, extra = divmod(num_prompts, n)
    return [base + (1 if i < extra else 0) for i in range(n) if base + (1 if i < extra else 0)]


def iteration_calls(recipe: Any, prompts: int, start: int, needs_reference: bool = False, iteration: int = 0) -> CallCounts:
    """Exact calls and rows of one iteration on ``prompts`` prompts (one rank) with window ``start``."""
    t = recipe.tree
    frontier = _frontier(recipe.steps, start, t.d, t.k, t.roots)
    chunk, train_chunk = recipe.chunk, recipe.training_chunk
    nfe_s = sum(n * prompts for n in frontier)
    calls_s = sum(math.ceil(n * prompts / chunk) for n in frontier)
    trained = _trained_steps(recipe, start)
    per_pass_rows = sum(frontier[i] * prompts for i in trained)
    per_pass_calls = sum(math.ceil(frontier[i] * g / train_chunk) for g in _groups(prompts, recipe.optim.minibatches)
                         for i in trained)
    passes = recipe.optim.passes
    nfe_t = per_pass_rows * passes if trained else 0
    leaves = prompts * t.roots * t.k**t.d
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


def _tree_bytes(recipe: Any, facts: ModelFacts, resolution: int, start: int) -> int:
    """Float32 tree states of one prompt: per trained step its children, the parents' velocity and
    the log-probs; parents only where they are not the previous step's children (the sampler
    keeps one tensor for both); the leaves when an ODE tail made them new tensors."""
    t = recipe.tree
    elems = facts.latent_elements(resolution)
    frontier = _frontier(recipe.steps, start, t.d, t.k, t.roots)
    trained = set(_trained_steps(recipe, start))
    total = 0
    for i in sorted(trained):
        k = t.k if start <= i < start + t.d else 1
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

    Without checkpointing every block's activations are saved (:data:`ACTIVATION_BYTES` per kind, the
    first block's from :data:`FIRST_BLOCK_BYTES` under LoRA, plus :data:`OUTSIDE_BYTES`) and the
    backward starts in the last block (its :data:`BACKWARD_WORKSPACE`). With checkpointing only the
    blocks' inputs are kept and one block is recomputed and back-propagated at a time (the largest).
    0.0 for a family without tables.
    """
    b = dtype_bytes
    mode, key_b = ("lora" if lora else "full"), (4 if b == 4 else 2)
    kinds = facts.blocks
    saved = [ACTIVATION_BYTES.get((facts.family, kind, mode, key_b), 0.0) for kind in kinds]
    if not kinds or not all(saved):
        return 0.0
    work = {kind: BACKWARD_WORKSPACE.get((facts.family, kind), 0.0) * b / 4 for kind in kinds}
    outside = OUTSIDE_BYTES.get((facts.family, mode, key_b), 0.0)
    if gradient_checkpointing:
        return (len(kinds) + 1) * b + outside + max(s + work[kind] for s, kind in zip(saved, kinds))
    if lora:
        saved[0] = FIRST_BLOCK_BYTES.get((facts.family, kinds[0], key_b), saved[0])
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
    trees = _tree_bytes(recipe, facts, resolution, start) * prompts
    cond = _cond_bytes(facts, b) * prompts
    states = trees + cond

    tokens = facts.image_tokens(resolution) + facts.text_tokens
    per_token = activation_bytes_per_token(facts, lora=bool(lora_rank), dtype_bytes=b,
                                           gradient_checkpointing=gradient_checkpointing)
    cfg_rows = 2 if facts.cfg else 1
    frontier = _frontier(recipe.steps, start, t.d, t.k, t.roots)
    group = max(_groups(prompts, recipe.optim.minibatches))
    trained = _trained_steps(recipe, start)
    train_rows = min(recipe.training_chunk, max(frontier[i] * group for i in trained)) if trained else 0
    sample_rows = min(recipe.chunk, max(frontier) * prompts)
    act_train = int(train_rows * cfg_rows * tokens * facts.hidden * per_token)
    act_sample = int(sample_rows * cfg_rows * tokens * facts.hidden * SAMPLING_WORKING_SET * b)
    leaves = prompts * t.roots * t.k**t.d
    decode_rows = min(recipe.decoding_chunk, leaves)
    decode = decode_rows * resolution * resolution * DECODE_WORKING_SET * b

    resident = weights_t + weights_te + weights_vae + trainable_b
    peak_train = resident + grads + optim + states + act_train
    peak_sample = resident + optim + states + act_sample
    peak_decode = resident + optim + states + decode
    notes = []
    if not per_token:
        notes.append(f"no activation table for family {facts.family!r}: activations not estimated")
    if decode > act_train:
        notes.append(f"decoding {decode_rows} leaves at once is the largest transient; decode in smaller chunks "
                     "(--set decode_chunk=N)")
    return MemoryPlan(weights_t, weights_te, weights_vae, trainable_b, grads, optim, states, act_train, act_sample,
                      decode, peak_train, peak_sample, peak_decode, max(peak_train, peak_sample, peak_decode), notes)


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
        counts = [iteration_calls(recipe, n, start, needs_reference, it + 1) for n in per_rank]
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
