"""Export of a trained diffusers transformer (any family): LoRA, merged diffusers folder, original single file.

Formats (``fmt``):

* ``lora``: the peft adapter as ``transformer.<diffusers module>.lora_A.weight`` ``[r, in]`` /
  ``.lora_B.weight`` ``[out, r]``, the names ``save_lora_weights(transformer_lora_layers=
  get_peft_model_state_dict(transformer))`` writes, with the adapter's scaling (``alpha / r``, or
  ``alpha / sqrt(r)`` for rsLoRA) folded into ``lora_B`` and no ``.alpha`` keys. A loader that
  assumes ``alpha = r`` (diffusers ``load_lora_weights`` on a file without adapter metadata,
  ComfyUI's LoraLoader without ``.alpha``) then applies ``W + B' A`` = the trained weight.
* ``diffusers``: a full pipeline folder that ``FluxPipeline`` / ``StableDiffusion3Pipeline``
  ``.from_pretrained`` loads: ``transformer/`` holds the merged transformer (``W + scaling * B A``
  for every LoRA layer, computed here; the training model is never modified) as
  ``config.json`` + ``diffusion_pytorch_model.safetensors``, and the base model's other components
  and ``model_index.json`` are hard-linked (copied across file systems) from the base folder
  (:mod:`treesdk.pipeline_folder`). Without a base pipeline folder listing a ``transformer``
  (a backend built around an in-memory pipeline) the transformer folder alone is written.
* ``comfyui``: the merged transformer as one safetensors file in the original BFL (FLUX) / SAI (SD3)
  key layout, no prefix (:mod:`treesdk_backends.keymaps`), the original Wan layout, or diffusers'
  own names where ComfyUI's model uses them (Qwen-Image); only for families with such a layout
  (the adapter's ``single_file_layout``, :mod:`treesdk_backends.single_file`).

All writes are atomic (:mod:`treesdk.io`); a folder is written beside its target and renamed.
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from treesdk.io import atomic_save_safetensors, folder_mode, remove_stale_temps, temp_prefix

from . import keymaps, single_file
from .single_file import SAME_NAMES

#: formats :func:`export_transformer` writes
FORMATS = ("lora", "diffusers", "comfyui")
#: file names used when ``path`` is a folder
LORA_FILE = "pytorch_lora_weights.safetensors"
DIFFUSERS_WEIGHTS = "diffusion_pytorch_model.safetensors"
COMFYUI_FILE = {"flux": "flux_treesdk.safetensors", "sd3": "sd3_treesdk.safetensors"}


# ---------------------------------------------------------------------------------------------
# the adapter


def _lora_layers(transformer: torch.nn.Module) -> dict[str, Any]:
    """``{module name: peft LoraLayer}`` for every LoRA-wrapped layer of ``transformer``."""
    try:
        from peft.tuners.lora import LoraLayer
    except ImportError:  # pragma: no cover - peft is in the diffusers extra
        return {}
    return {name: m for name, m in transformer.named_modules() if isinstance(m, LoraLayer)}


def _active_adapter(layers: Mapping[str, Any]) -> str:
    names: set[str] = set()
    for layer in layers.values():
        names.update(a for a in layer.active_adapters if a in layer.lora_A)
    if len(names) != 1:
        raise ValueError(
            f"expected exactly one active LoRA adapter on the transformer, found {sorted(names) or 'none'}"
        )
    return names.pop()


def lora_state_dict(transformer: torch.nn.Module) -> dict[str, Tensor]:
    """The adapter as ``{transformer.<module>.lora_A.weight: [r, in], ....lora_B.weight: [out, r]}``,
    with each layer's scaling folded into ``lora_B`` (float32 math, stored in the adapter's dtype).

    Raises ``ValueError`` when the transformer has no LoRA adapter, or uses a variant a plain
    ``A``/``B`` file cannot carry (DoRA, LoRA bias, embedding/conv LoRA).
    """
    layers = _lora_layers(transformer)
    if not layers:
        raise ValueError(
            "the model has no trainable LoRA adapter (full fine-tune); export format 'diffusers' or 'comfyui' instead of 'lora'"
        )
    adapter = _active_adapter(layers)
    from peft.utils import get_peft_model_state_dict

    state = get_peft_model_state_dict(transformer, adapter_name=adapter)
    out: dict[str, Tensor] = {}
    for key, value in state.items():
        if key.endswith(".lora_A.weight"):
            out[f"transformer.{key}"] = value.detach().clone()
            continue
        if not key.endswith(".lora_B.weight"):
            raise ValueError(
                f"LoRA tensor {key!r} cannot be written as plain lora_A/lora_B (DoRA, LoRA bias or "
                "embedding adapters are not exportable); train with a plain LoraConfig"
            )
        module = key[: -len(".lora_B.weight")]
        layer = layers.get(module)
        if layer is None:
            raise ValueError(f"LoRA tensor {key!r} does not belong to a LoRA layer of the transformer")
        if getattr(layer, "use_dora", {}).get(adapter, False):
            raise ValueError(f"LoRA layer {module!r} uses DoRA, which a plain lora_A/lora_B file cannot carry")
        scale = float(layer.scaling[adapter])
        out[f"transformer.{key}"] = (value.detach().float() * scale).to(value.dtype)
    return out


def merged_state_dict(transformer: torch.nn.Module) -> dict[str, Tensor]:
    """Plain transformer state dict (diffusers names, no prefix) with every active LoRA merged:
    ``W + scaling * B @ A`` (peft's ``get_delta_weight``), computed in float32 and cast back to
    ``W``'s dtype. The model itself is not modified. A full fine-tune returns its state dict.
    """
    layers = _lora_layers(transformer)
    deltas: dict[str, Tensor] = {}
    if layers:
        adapter = _active_adapter(layers)
        with torch.no_grad():
            for name, layer in layers.items():
                if adapter not in layer.lora_A or getattr(layer, "merged", False) or getattr(layer, "disable_adapters", False):
                    continue
                deltas[f"{name}.weight"] = layer.get_delta_weight(adapter)
    out: dict[str, Tensor] = {}
    for key, value in transformer.state_dict().items():
        if ".lora_" in key:
            continue
        name = key.replace(".base_layer.", ".")
        tensor = value.detach()
        if name in deltas:
            tensor = (tensor.float() + deltas[name].float()).to(value.dtype)
        out[name] = tensor.clone() if tensor is value else tensor
    return out


# ---------------------------------------------------------------------------------------------
# writers


def _file_target(path: str | os.PathLike[str], default_name: str) -> Path:
    """``path`` itself when it names a ``.safetensors`` file, else ``path/default_name`` (folder created)."""
    target = Path(path)
    if target.suffix == ".safetensors":
        if not target.parent.is_dir():
            raise OSError(f"cannot write {target}: folder {target.parent} does not exist")
        return target
    if target.exists() and not target.is_dir():
        raise OSError(f"cannot write into {target}: it is a file, not a folder (or name a .safetensors file)")
    target.mkdir(parents=True, exist_ok=True)
    return target / default_name


def _meta(metadata: Mapping[str, str], fmt: str, family: str, **extra: str) -> dict[str, str]:
    meta = {str(k): str(v) for k, v in metadata.items()}
    meta.update({"treesdk.format": fmt, "treesdk.family": family, "format": "pt"})
    meta.update(extra)
    return meta


def _write_folder_atomically(target: Path, fill) -> None:
    """Write a folder by calling ``fill(tmp_folder)`` on a temp folder beside ``target``, then
    rename it into place; a previous folder is kept until the new one is complete."""
    parent = target.parent
    if not parent.is_dir():
        raise OSError(f"cannot write {target}: folder {parent} does not exist")
    if target.exists() and not target.is_dir():
        raise OSError(f"cannot write folder {target}: a file of that name exists")
    remove_stale_temps(target)
    tmp = Path(tempfile.mkdtemp(prefix=temp_prefix(target), suffix=".tmp", dir=parent))
    os.chmod(tmp, folder_mode())  # mkdtemp's 0700 would hide the export from other users
    old = None
    try:
        fill(tmp)
        if target.exists():
            old = Path(tempfile.mkdtemp(prefix=temp_prefix(target), suffix=".old", dir=parent))
            old.rmdir()
            os.replace(target, old)
        os.replace(tmp, target)
    except BaseException:
        if old is not None and old.exists() and not target.exists():
            os.replace(old, target)
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    if old is not None:
        shutil.rmtree(old, ignore_errors=True)


def export_transformer(backend: Any, fmt: str, path: str | os.PathLike[str], metadata: Mapping[str, str]) -> list[str]:
    """Write ``backend.transformer`` in format ``fmt`` under ``path``; returns the files written.

    Args:
        backend: an object with ``transformer`` (a diffusers transformer, optionally with a peft
            LoRA adapter), ``family`` and optionally ``adapter`` (whose ``single_file_layout``
            names the key layout of ``comfyui``; without an adapter the family names it).
        fmt: ``"lora"``, ``"diffusers"`` or ``"comfyui"`` (module docstring).
        path: ``lora``/``comfyui``: a ``.safetensors`` file name or a folder (created) that receives
            :data:`LORA_FILE` / :data:`COMFYUI_FILE`; ``diffusers``: the folder to write.
        metadata: string metadata stored in every safetensors file (base model, algorithm, ...).

    Raises ``ValueError`` for a format this backend cannot produce or ``lora`` without an adapter;
    ``OSError`` for an unwritable path. Nothing is written in either case.
    """
    transformer = backend.transformer
    family = str(backend.family)
    adapter = getattr(backend, "adapter", None)
    layout = getattr(adapter, "single_file_layout", family) if adapter is not None else family
    if fmt == "comfyui" and layout not in single_file.LAYOUT_NAMES and layout != SAME_NAMES:
        raise ValueError(
            f"the {family} backend has no merged single-file layout (ComfyUI has no native loader for it); "
            f"export 'lora' or the merged 'diffusers' folder instead (single-file layouts: "
            f"{', '.join(sorted(keymaps.ORIGINAL_LAYOUT))})"
        )
    if fmt == "lora":
        state = lora_state_dict(transformer)
        rank = max(int(v.shape[0]) for k, v in state.items() if k.endswith(".lora_A.weight"))
        meta = _meta(metadata, "lora-diffusers", family, **{"treesdk.rank": str(rank)})
        target = _file_target(path, LORA_FILE)
        return [str(atomic_save_safetensors(state, target, meta))]
    if fmt == "comfyui":
        merged = merged_state_dict(transformer)
        original = single_file.to_single_file(merged, layout)
        meta = _meta(metadata, single_file.LAYOUT_NAMES.get(layout, f"comfyui-{family}"), family)
        target = _file_target(path, COMFYUI_FILE.get(family, f"{family}_treesdk.safetensors"))
        return [str(atomic_save_safetensors(original, target, meta))]
    if fmt == "diffusers":
        merged = merged_state_dict(transformer)
        meta = _meta(metadata, "diffusers-transformer", family)
        target = Path(path)
        config = dict(transformer.config)

        def write_transformer(folder: Path) -> list[str]:
            if hasattr(transformer, "save_config"):
                transformer.save_config(folder)
            else:  # pragma: no cover - every diffusers model has save_config
                (folder / "config.json").write_text(json.dumps(config, indent=2, default=str))
            atomic_save_safetensors(merged, folder / DIFFUSERS_WEIGHTS, meta)
            return [str(folder / "config.json"), str(folder / DIFFUSERS_WEIGHTS)]

        base = Path(str(getattr(backend, "model_path", "")))
        from treesdk.pipeline_folder import assemble_pipeline, has_component

        if has_component(base, "transformer"):  # the full pipeline: from_pretrained(target) loads it

            _write_folder_atomically(target, lambda folder: assemble_pipeline(folder, base, write_transformer))
            return [str(target / "model_index.json"), *(str(target / "transformer" / n) for n in ("config.json", DIFFUSERS_WEIGHTS))]
        _write_folder_atomically(target, write_transformer)  # no base pipeline folder to take the rest from
        return [str(target / "config.json"), str(target / DIFFUSERS_WEIGHTS)]
    raise ValueError(f"the {family} backend cannot export format {fmt!r}; it supports: {', '.join(FORMATS)}")
