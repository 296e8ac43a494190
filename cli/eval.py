"""``treesdk eval``: score a base or trained policy on a prompt set with any rewards."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated, Optional

import typer
from rich.table import Table

from .stopping import stoppable
from .common import prompt_seed_pairs, clean_errors, console, check_reward_options, load_rewards, parse_reward_options, read_prompts
from .sample import load_policy


def eval_command(
    run: Annotated[Optional[str], typer.Argument(help="run or checkpoint folder (omit for the base model)")] = None,
    backend: Annotated[str, typer.Option(help="backend of the base model (when no RUN)")] = "digits",
    model: Annotated[Optional[str], typer.Option(help="checkpoint path or local HF cache id")] = None,
    reward: Annotated[Optional[list[str]], typer.Option(help="reward to score with; repeatable (default: backend's)")] = None,
    reward_opt: Annotated[Optional[list[str]], typer.Option(help="reward option NAME:KEY=VALUE, e.g. hpsv2.1:checkpoint=/p/HPS_v2.1_compressed.pt")] = None,
    prompts: Annotated[Optional[str], typer.Option(help="file with one prompt per line (default: backend's eval set)")] = None,
    seeds: Annotated[int, typer.Option(min=1, help="images per prompt (seeds 0..N-1)")] = 1,
    steps: Annotated[int, typer.Option(min=1, help="ODE sampling steps")] = 10,
    resolution: Annotated[Optional[int], typer.Option(help="image resolution in pixels")] = None,
    device: Annotated[Optional[str], typer.Option(help="torch device")] = None,
    backend_opt: Annotated[Optional[list[str]], typer.Option(help="backend option KEY=VALUE")] = None,
    json_out: Annotated[Optional[Path], typer.Option("--json", help="also write the results as JSON here")] = None,
) -> None:
    """Mean reward of deterministic samples on a fixed prompt/seed set, as a table and JSON."""
    from treesdk.evaluation import diversity_source, evaluate

    with clean_errors(), stoppable("no result file was written (it is written whole, under a temporary name, then renamed)"):
        if json_out is not None:
            from treesdk.io import check_writable

            check_writable(json_out, "--json")  # before loading a model
        plist_early = read_prompts(prompts)  # a bad prompt file fails before loading a model
        policy = load_policy(run, backend, model, resolution, device, backend_opt)
        names = list(reward) if reward else [*policy.default_rewards(), *policy.heldout_rewards()]
        if not names:
            raise ValueError("no reward to evaluate with: pass --reward NAME")
        reward_options = parse_reward_options(reward_opt)
        check_reward_options(reward_options, names)
        rewards = load_rewards(names, device, reward_options)
        base_prompts, base_seeds = policy.eval_set()
        if prompts is not None or seeds != 1:
            plist = plist_early or list(dict.fromkeys(base_prompts))
            all_prompts, all_seeds = prompt_seed_pairs(plist, seeds)
        else:
            all_prompts, all_seeds = base_prompts, base_seeds
        means, scores, _ = evaluate(policy, rewards, all_prompts, all_seeds, steps)
        table = Table(title=f"{len(all_prompts)} images, {steps} steps")
        table.add_column("reward")
        table.add_column("mean", justify="right")
        table.add_column("std", justify="right")
        for name, values in scores.items():
            table.add_row(name, f"{float(values.mean()):.4f}", f"{float(values.std(unbiased=False)):.4f}")
        source = diversity_source(policy, rewards)
        diversity = means["diversity"]
        table.add_row(f"diversity ({source})", f"{diversity:.4f}" if diversity is not None else "- (one image per prompt)", "")
        if source != "pixels" and means["diversity_pixels"] is not None:
            table.add_row("diversity (pixels)", f"{means['diversity_pixels']:.4f}", "")
        for key in ("precision", "recall"):  # against the backend's reference images, when it has them
            if means.get(key) is not None:
                table.add_row(f"{key} (vs reference images)", f"{means[key]:.4f}", "")
        for key in ("dark_fraction", "edge_density", "intensity_entropy"):  # the reward-hacking audit
            table.add_row(key.replace("_", " "), f"{means[key]:.4f}", "")
        for name in scores:
            table.add_row(f"{name} spread per prompt", f"{means[f'{name}_std_per_prompt']:.4f}",
                          f"zero in {means[f'{name}_zero_std_fraction']:.0%}")
        console.print(table)
        result = {"run": run, "images": len(all_prompts), "steps": steps, **means, "diversity_features": source}
        if json_out is not None:
            from treesdk.io import atomic_write_bytes

            atomic_write_bytes(json_out, (json.dumps(result, indent=2, allow_nan=False) + "\n").encode())
        console.print_json(json.dumps(result))


def register(app: typer.Typer) -> None:
    app.command("eval")(eval_command)
