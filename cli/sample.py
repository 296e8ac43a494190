"""``treesdk sample`` and shared loading of a base or trained policy."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any, Optional

import typer

from .common import backend_options, clean_errors, console, prompt_seed_pairs


def load_policy(run: str | None, backend: str, model: str | None, resolution: int | None, device: str | None,
                backend_opt: list[str] | None) -> Any:
    """A trained policy from a run/checkpoint folder, else the base model of ``backend``."""
    import treesdk
    from treesdk.training.runs import load_trained_backend

    if run is not None:
        overrides = backend_options(model, resolution, device, backend_opt)
        policy, _, state = load_trained_backend(run, **overrides)
        console.print(f"loaded {policy.name} from {run} (iteration {state.get('iteration')})")
        return policy
    return treesdk.load_backend(backend, **backend_options(model, resolution, device, backend_opt))


def sample_command(
    run: Annotated[Optional[str], typer.Option(help="run or checkpoint folder of a trained policy")] = None,
    backend: Annotated[str, typer.Option(help="backend of the base model (when no --run)")] = "digits",
    model: Annotated[Optional[str], typer.Option(help="checkpoint path or local HF cache id")] = None,
    prompt: Annotated[Optional[list[str]], typer.Option(help="prompt; repeatable (default: the backend's eval prompts)")] = None,
    seeds: Annotated[int, typer.Option(help="images per prompt (seeds 0..N-1)")] = 4,
    steps: Annotated[int, typer.Option(help="ODE sampling steps")] = 10,
    resolution: Annotated[Optional[int], typer.Option(help="image resolution in pixels")] = None,
    device: Annotated[Optional[str], typer.Option(help="torch device")] = None,
    backend_opt: Annotated[Optional[list[str]], typer.Option(help="backend option KEY=VALUE")] = None,
    out: Annotated[Path, typer.Option(help="PNG grid to write")] = Path("samples.png"),
) -> None:
    """Generate images (deterministic ODE sampling) from a base or trained policy into a PNG grid."""
    from treesdk.training.evaluate import decode_chunked
    from treesdk.images import save_grid
    from treesdk.sampler import sample_ode

    with clean_errors():
        policy = load_policy(run, backend, model, resolution, device, backend_opt)
        prompts = list(prompt) if prompt else policy.eval_set()[0]
        all_prompts, all_seeds = prompt_seed_pairs(prompts, seeds)
        latents = sample_ode(policy, all_prompts, all_seeds, steps)
        images = decode_chunked(policy, latents)
        save_grid(images, out, nrow=seeds)
        console.print(f"wrote {len(all_prompts)} images to {out}")


def register(app: typer.Typer) -> None:
    app.command("sample")(sample_command)
