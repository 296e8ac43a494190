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

_BACKEND_KEYS = ("lora_rank", "dtype", "gradient_checkpointing", "offload_text_encoders", "max_sequence_length")


class _NoDefaults:
    """Stands in for a heavy backend: the diffusers backends add no recipe defaults."""

    def recipe_defaults(self) -> dict[str, Any]:
        return {}


def dry_run(backend: str, model: str | None, options: dict[str, Any], recipe_builder, batch: int, iters: int,
            seed: int, world_size: int, gpu_memory: float | None, as_json: bool) -> dict[str, Any]:
    """Print the plan (a table, or one JSON object with ``as_json``) and return it.

    ``recipe_builder(backend_or_stub)`` builds the recipe exactly as the real run would.
    """
    import treesdk
    from treesdk.model_facts import model_facts
    from treesdk.plan import plan_run

    light = backend in LIGHT_BACKENDS
    vm = treesdk.load_backend(backend, **{k: v for k, v in options.items() if k in ("model", "device")}) if light else None
    recipe = recipe_builder(vm if vm is not None else _NoDefaults())
    facts = None if light else model_facts(backend, model, text_tokens=options.get("max_sequence_length"))
    plan = plan_run(
        recipe, facts, batch=batch, world_size=world_size, iters=iters, seed=seed,
        resolution=options.get("resolution"), dtype=str(options.get("dtype", "bfloat16")),
        lora_rank=int(options.get("lora_rank", 16)), gradient_checkpointing=bool(options.get("gradient_checkpointing", False)),
        offload_text_encoders=bool(options.get("offload_text_encoders", False)), gpu_memory_gib=gpu_memory,
    )
    plan["backend"] = backend
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
        calls.add_row("reference (KL, no grad)", str(plan["nfe_reference"]), "-")
    calls.add_row("leaves", f"{plan['leaves']} ({plan['leaves_per_prompt']} per prompt)", "")
    console.print(calls)
    if plan.get("memory") is None:
        console.print("memory: no size table for this backend (calls only)")
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
        if not plan["fits"] and best:
            console.print(f"it fits with --set chunk={best} (rows per training call and leaves per decode)")
        elif not plan["fits"] and not model["gradient_checkpointing"]:
            console.print("no chunk fits: add --backend-opt gradient_checkpointing=true")


def backend_plan_options(options: dict[str, Any]) -> dict[str, Any]:
    """The backend options the planner reads (the rest are ignored)."""
    return {k: v for k, v in options.items() if k in (*_BACKEND_KEYS, "model", "resolution", "device")}
