"""Conformance checks specific to diffusers families (beside :mod:`treesdk.testing`).

* :func:`reference_sampler`: the family's own pipeline with ``output_type="latent"`` as the
  reference of :func:`treesdk.testing.check_ode_parity`.
* :func:`check_lora_export`: ``export("lora")`` loads with ``pipe.load_lora_weights`` into a freshly
  loaded pipeline with no unmatched key (every tensor in the file lands in a LoRA layer, every LoRA
  layer created is in the file, same values) and gives the trained velocity, which differs from
  the base's.
* :func:`check_merged_export`: the merged ``diffusers`` folder (``from_pretrained``) and, where the
  family has a single-file layout, the ``comfyui`` file (mapped back through
  :mod:`treesdk_backends.keymaps` and loaded strictly) both give the trained velocity.
* :func:`diffusers_checks`: all of them as ``extra`` checks for :func:`treesdk.testing.check_backend`.
"""

from __future__ import annotations

import contextlib
import tempfile
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from treesdk.testing import ConformanceError, perturbed

from .backend import DiffusersFlowBackend

__all__ = ["reference_sampler", "check_lora_export", "check_merged_export", "diffusers_checks"]

PROMPTS = ["a photo of a cat sitting on a red chair", "an astronaut riding a horse"]


def reference_sampler(backend: DiffusersFlowBackend) -> Callable[[list[str], int, int], Tensor]:
    """``(prompts, steps, seed) -> latents``: the family's pipeline, ``output_type="latent"``."""
    return backend.pipeline_latents


@contextlib.contextmanager
def _using(backend: DiffusersFlowBackend, transformer: torch.nn.Module) -> Iterator[None]:
    """``backend.velocity`` computed with another transformer (same inputs, same code path)."""
    saved = backend.transformer
    backend.transformer = transformer
    try:
        yield
    finally:
        backend.transformer = saved


def _probe(backend: DiffusersFlowBackend) -> Tensor:
    gen = torch.Generator().manual_seed(11)
    x = torch.randn((2, *backend.latent_shape), generator=gen).to(backend.device)
    cond = backend.encode(PROMPTS)
    with torch.no_grad():
        return backend.velocity(x, torch.tensor([0.8, 0.3], device=backend.device), cond).float().cpu()


def _fresh_pipeline(backend: DiffusersFlowBackend) -> Any:
    import diffusers

    if not isinstance(backend.model_path, Path):
        raise ConformanceError("export checks need a backend loaded from a folder (model=PATH)")
    cls = getattr(diffusers, backend.adapter.pipeline_classes[0])
    from ..diffusers_common import dtype_kwargs

    return cls.from_pretrained(backend.model_path, local_files_only=True, **dtype_kwargs(backend.dtype))


def check_lora_export(backend: DiffusersFlowBackend, atol: float = 1e-5) -> dict[str, Any]:
    """The LoRA export loads in diffusers with no unmatched key and reproduces the trained velocity."""
    from peft.utils import get_peft_model_state_dict
    from safetensors.torch import load_file

    if backend.lora_config is None:
        raise NotImplementedError("a full fine-tune has no LoRA to export")
    with perturbed(backend, seed=21), tempfile.TemporaryDirectory() as tmp:
        trained = _probe(backend)
        files = backend.export("lora", str(Path(tmp) / "lora.safetensors"), {"treesdk.check": "conformance"})
        written = load_file(files[0])
        pipe = _fresh_pipeline(backend)
        transformer = pipe.transformer.to(backend.device)
        with _using(backend, transformer):
            base = _probe(backend)
        pipe.load_lora_weights(files[0], adapter_name="exported")
        loaded = get_peft_model_state_dict(pipe.transformer, adapter_name="exported")
        with _using(backend, pipe.transformer.to(backend.device)):
            after = _probe(backend)
    in_file = {k.removeprefix("transformer."): v for k, v in written.items()}
    not_loaded = sorted(set(in_file) - set(loaded))
    not_in_file = sorted(set(loaded) - set(in_file))
    if not_loaded or not_in_file or any(k.startswith("transformer.") is False for k in written):
        raise ConformanceError(f"LoRA keys do not match after load_lora_weights: in the file but not loaded "
                               f"{not_loaded[:5]}, loaded but not in the file {not_in_file[:5]}")
    wrong = [k for k in in_file if not torch.equal(in_file[k].cpu(), loaded[k].detach().cpu().to(in_file[k].dtype))]
    if wrong:
        raise ConformanceError(f"load_lora_weights changed the values of {wrong[:5]}")
    changed = float((after - base).abs().max())
    diff = float((after - trained).abs().max())
    if changed <= 0:
        raise ConformanceError("loading the exported LoRA did not change the pipeline's velocity")
    if diff > atol:
        raise ConformanceError(f"velocity with the loaded LoRA differs from the trained one by {diff:.3g} > {atol:g}")
    return {"tensors": len(written), "max_abs_diff": diff, "lora_vs_base": changed}


def check_merged_export(backend: DiffusersFlowBackend, atol: float = 1e-5) -> dict[str, Any]:
    """The merged ``diffusers`` folder and (where the family has one) the single file give the
    trained velocity when loaded back strictly."""
    from safetensors.torch import load_file

    from ..single_file import from_single_file

    result: dict[str, Any] = {}
    with perturbed(backend, seed=22), tempfile.TemporaryDirectory() as tmp:
        trained = _probe(backend)
        folder = Path(tmp) / "merged"
        backend.export("diffusers", str(folder), {})
        cls = type(backend.transformer)
        if (folder / "transformer" / "config.json").is_file():  # a full pipeline folder around it
            folder = folder / "transformer"
        merged = cls.from_pretrained(folder, torch_dtype=backend.dtype).to(backend.device)
        with _using(backend, merged):
            result["diffusers_max_abs_diff"] = float((_probe(backend) - trained).abs().max())
        layout = backend.adapter.single_file_layout
        if layout is not None:
            files = backend.export("comfyui", str(Path(tmp) / "single.safetensors"), {})
            state = from_single_file(load_file(files[0]), layout)
            model = cls.from_config(backend.transformer.config).to(backend.dtype)
            model.load_state_dict(state, strict=True)
            with _using(backend, model.to(backend.device)):
                result["single_file_max_abs_diff"] = float((_probe(backend) - trained).abs().max())
    bad = {k: v for k, v in result.items() if v > atol}
    if bad:
        raise ConformanceError(f"merged exports do not give the trained velocity (atol {atol:g}): {bad}")
    return result


def diffusers_checks(atol: float = 1e-5) -> dict[str, Callable[[Any], dict[str, Any]]]:
    """The export checks as ``extra`` for :func:`treesdk.testing.check_backend`."""
    return {"lora_export": lambda b: check_lora_export(b, atol), "merged_export": lambda b: check_merged_export(b, atol)}
