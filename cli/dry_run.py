"""``treesdk train --dry-run [--json] [--gpu-memory GB]``: the plan of a run, before anything heavy loads.

Velocity calls and rows per iteration (exact, from the recipe), leaves per prompt, and a per-rank
memory estimate from the model's size facts (``--model PATH``: its ``transformer/config.json`` and
safetensors headers; else the backend's known default model). Only a light backend (``digits``) is
constructed, for its recipe defaults; the diffusers backends are never loaded.
"""

from __future__ import annotations

import json
from typing import Any

from rich.table import Table

from .common import console

#: backends cheap enough to construct for their recipe defaults (no multi-GB weights)
LIGHT_BACKENDS = ("digits",)
#: what each chunk setting of the recipe bounds
WHAT_CHUNK_BOUNDS = {"chunk": "rows per velocity call and leaves per decode", "train_chunk": "rows per training call",
                     "decode_chunk": "leaves per decode"}


def dry_run(config: Any, requested: bool, as_json: bool, gpu_memory: float | None) -> dict[str, Any]:
    """Print the plan of the run ``config`` (a :class:`treesdk.RunConfig`): a table, or one JSON
    object with ``as_json``; return it. ``--json``/``--gpu-memory`` without ``--dry-run`` is an error."""
    import treesdk
    from treesdk.model_facts import model_facts

    if not requested:
        raise ValueError("--json and --gpu-memory describe the plan of --dry-run; add --dry-run")
    if gpu_memory is not None and gpu_memory <= 0:
        raise ValueError(f"--gpu-memory must be a positive number of GiB per GPU, got {gpu_memory}")
    backend = config.backend.name
    options = config.backend_options()
    light = backend in LIGHT_BACKENDS
    defaults: dict[str, Any] = {}
    if light:  # cheap: its recipe defaults are what the run would apply
        vm = treesdk.load_backend(backend, **{k: v for k, v in options.items() if k in ("model", "device")})
        defaults = dict(vm.recipe_defaults())
    from treesdk import registry
    from treesdk.interfaces import DEFAULT_ITERS

    factory = registry.load("backend", backend)
    recipe = config.resolve_recipe(defaults, getattr(factory, "default_recipe", None))
    facts, no_sizes = None, "a light backend: calls only"
    if not light:
        try:
            facts = model_facts(backend, options.get("model"), text_tokens=options.get("max_sequence_length"), options=options)
        except ValueError as exc:  # a model the backend cannot size: the call counts still hold
            no_sizes = str(exc)
    plan = treesdk.plan_run(
        recipe, facts, batch=config.batch, world_size=config.launch.nproc_per_node * config.launch.nnodes,
        iters=max(config.iters or getattr(factory, "default_iters", DEFAULT_ITERS), 1), seed=config.seed, resolution=options.get("resolution"),
        dtype=str(options.get("dtype") or config.dtype or "bfloat16"), lora_rank=int(options.get("lora_rank", 16)),
        gradient_checkpointing=bool(options.get("gradient_checkpointing", False)),
        offload_text_encoders=bool(options.get("offload_text_encoders", False)), gpu_memory_gib=gpu_memory,
    )
    plan["backend"] = backend
    if facts is None:
        plan["memory_note"] = no_sizes
    if as_json:
        print(json.dumps(plan, sort_keys=True))
    else:
        print_plan(plan)
    return plan


def print_plan(plan: dict[str, Any]) -> None:
    """The plan as two small tables (calls, memory)."""
    calls = Table(title=f"plan: {plan['recipe']} on {plan['backend']} - T={plan['steps']} k={plan['k']} d={plan['d']} "
                        f"roots={plan['roots']}, batch {plan['batch']} over {plan['world_size']} rank(s)")
    for column in ("per iteration (all ranks)", "rows (NFE)", "calls"):
        calls.add_column(column, justify="right" if column != "per iteration (all ranks)" else "left")
    calls.add_row("sampling (no grad)", str(plan["nfe_sampling"]), str(plan["calls_sampling"]))
    calls.add_row("training (with grad)", str(plan["nfe_training"]), str(plan["calls_training"]))
    if plan["nfe_reference"]:
        calls.add_row("reference and old policy (no grad)", str(plan["nfe_reference"]), "-")
    calls.add_row("leaves", f"{plan['leaves']} ({plan['leaves_per_prompt']} per prompt)", "")
    console.print(calls)
    if plan.get("memory") is None:
        console.print(f"memory: not estimated ({plan.get('memory_note', 'no size table for this backend')})")
        return
    m, model = plan["memory"], plan["model"]
    mem = Table(title=f"memory per rank (GiB, estimate): {model['name']} {model['resolution']} px {model['dtype']} "
                      f"lora_rank={model['lora_rank']} ({plan['trees_per_rank']} trees/rank)")
    mem.add_column("part")
    mem.add_column("GiB", justify="right")
    for key in ("weights_transformer", "weights_text_encoders", "weights_vae", "trainable_parameters", "gradients",
                "optimizer_state", "tree_states", "activations_training", "activations_sampling", "decode",
                "peak_sampling", "peak_decode", "peak_training", "peak"):
        mem.add_row(key.replace("_", " "), f"{m[key]:.2f}")
    console.print(mem)
    for note in m.get("notes", []):
        console.print(f"[yellow]note:[/] {note}")
    if plan["fits"] is not None:
        verdict = "[green]fits[/]" if plan["fits"] else "[red]does not fit[/]"
        console.print(f"{verdict} in --gpu-memory {plan['gpu_memory_gib']} GiB (peak {m['peak']:.1f} GiB)")
        best = plan["largest_chunk_that_fits"]
        if not plan["fits"]:
            ways = [f"--set {name}={value} ({WHAT_CHUNK_BOUNDS[name]})" for name, value in best.items() if value]
            if ways:
                console.print(f"it fits with {'; or '.join(ways)}")
            elif not model["gradient_checkpointing"]:
                console.print("no chunk fits: add --backend-opt gradient_checkpointing=true")
