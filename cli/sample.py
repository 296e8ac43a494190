"""``treesdk sample`` and shared loading of a base or trained policy."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any, Optional

import typer

from .stopping import stoppable
from .common import backend_options, clean_errors, console, prompt_seed_pairs


def load_policy(run: str | None, backend: str, model: str | None, resolution: int | None, device: str | None,
                backend_opt: list[str] | None) -> Any:
    """A trained policy from a run/checkpoint folder, else the base model of ``backend``."""
    import treesdk

    if run is not None:
        overrides = backend_options(model, resolution, device, backend_opt)
        policy, _, state = treesdk.load_trained_backend(run, **overrides)
        console.print(f"loaded {policy.name} from {run} (iteration {state.get('iteration')}"
                      + (", EMA weights)" if state.get("ema") else ")"))
        return policy
    return treesdk.load_backend(backend, **backend_options(model, resolution, device, backend_opt))


def sample_command(
    run: Annotated[Optional[str], typer.Option(help="run or checkpoint folder of a trained policy")] = None,
    backend: Annotated[str, typer.Option(help="backend of the base model (when no --run)")] = "digits",
    model: Annotated[Optional[str], typer.Option(help="checkpoint path or local HF cache id")] = None,
    prompt: Annotated[Optional[list[str]], typer.Option(help="prompt; repeatable (default: the backend's eval prompts)")] = None,
    seeds: Annotated[int, typer.Option(min=1, help="images per prompt (seeds 0..N-1)")] = 4,
    steps: Annotated[int, typer.Option(min=1, help="ODE sampling steps")] = 10,
    resolution: Annotated[Optional[int], typer.Option(help="image resolution in pixels")] = None,
    device: Annotated[Optional[str], typer.Option(help="torch device")] = None,
    backend_opt: Annotated[Optional[list[str]], typer.Option(help="backend option KEY=VALUE")] = None,
    out: Annotated[Path, typer.Option(help="image grid to write (.png, .jpg/.jpeg or .webp)")] = Path("samples.png"),
) -> None:
    """Generate images (deterministic ODE sampling) from a base or trained policy into a PNG grid."""
    from treesdk.evaluation import decode_chunked
    from treesdk.images import image_format, save_grid
    from treesdk.io import check_writable
    from treesdk.sampler import sample_ode

    with clean_errors(), stoppable("no image was written (images are written whole, under a temporary name, then renamed)"):
        image_format(out)  # checked before loading a model
        check_writable(out, "--out")
        policy = load_policy(run, backend, model, resolution, device, backend_opt)
        prompts = list(prompt) if prompt else policy.eval_set()[0]
        all_prompts, all_seeds = prompt_seed_pairs(prompts, seeds)
        latents = sample_ode(policy, all_prompts, all_seeds, steps)
        check_finite_samples(latents, run or f"the {backend} base model")
        images = decode_chunked(policy, latents)
        save_grid(images, out, nrow=seeds)
        console.print(f"wrote {len(all_prompts)} images to {out}")


def check_finite_samples(latents: Any, source: str) -> None:
    """Refuse to write images from latents holding NaN/inf (they would be black), naming ``source``."""
    import torch

    from treesdk.errors import NonFiniteWeightsError

    bad = int((~torch.isfinite(latents.reshape(latents.shape[0], -1))).any(dim=1).sum())
    if bad:
        raise NonFiniteWeightsError(f"{bad} of {latents.shape[0]} samples of {source} hold NaN or inf values: "
                                    "its weights are probably non-finite (a diverged run); nothing was written")


def register(app: typer.Typer) -> None:
    app.command("sample")(sample_command)
