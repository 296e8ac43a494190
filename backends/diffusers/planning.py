"""A diffusers family's size facts for the dry-run planner (:class:`treesdk.model_facts.ModelFacts`).

:func:`family_facts` is what :meth:`FamilyAdapter.planner_facts` runs. With a pipeline folder it
reads only headers and configs, the same for every family: the transformer's parameters and linear
layers from its safetensors headers (less the keys the family names persistent buffers), the text
encoders and the VAE by element count, the geometry from ``transformer/config.json`` and
``vae/config.json`` (:func:`generic_sizes`; a family overrides
:meth:`FamilyAdapter.planner_sizes` where its pipeline differs). Text length, CFG and the default
resolution come from the family's options as the backend would apply them (``max_sequence_length``,
``guidance_scale``; the folder's ``treesdk_defaults.json`` fills what the caller did not give).
Without a folder, a family sizes the models of its ``known_models`` table from their configs
(FLUX.1-dev, SD3.5: :mod:`treesdk_backends.diffusers.sizes`).

No torch model is built and no weight is loaded.
"""

from __future__ import annotations

import inspect
import math
from collections.abc import Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any

from treesdk.model_facts import ModelFacts, linears_from_shapes, read_json
from treesdk.state_dicts import read_header, safetensors_elements

from .folder_defaults import read_folder_defaults

if TYPE_CHECKING:
    from .adapter import FamilyAdapter

__all__ = ["family_facts", "generic_sizes", "planner_adapter"]


def planner_adapter(cls: type[FamilyAdapter], options: Mapping[str, Any]) -> FamilyAdapter:
    """The family adapter built with the run's family options (unknown ones are the backend's own)."""
    params = inspect.signature(cls.__init__).parameters
    return cls(**{k: v for k, v in options.items() if k in params and k != "self"})


def _patch(config: Mapping[str, Any]) -> int:
    """Spatial patch side of a transformer config (``patch_size`` int or ``[t, h, w]``, or Z-Image's
    ``all_patch_size``)."""
    patch = config.get("patch_size", (config.get("all_patch_size") or [1])[0])
    return int(patch[-1] if isinstance(patch, (list, tuple)) else patch or 1)


def generic_sizes(config: Mapping[str, Any], vae: Mapping[str, Any], adapter: FamilyAdapter,
                  cfg: bool | None = None) -> dict[str, Any]:
    """Geometry of a flow transformer from the config keys diffusers' models share.

    hidden width: ``num_attention_heads * attention_head_dim``, else ``hidden_size`` or ``dim``;
    text width: ``joint_attention_dim``, ``cap_feat_dim``, ``text_dim`` or ``caption_channels``;
    VAE factor: ``scale_factor_spatial``, ``2 ** len(temperal_downsample)`` or
    ``2 ** (len(block_out_channels) - 1)``; latent channels ``latent_channels`` or ``z_dim``. A
    transformer taking more input channels than the VAE gives packs ``n x n`` latent pixels per
    token (FLUX, Qwen-Image), else it patches ``patch_size`` pixels: pixels per token is the VAE
    factor times that side. CFG: ``cfg``, else the adapter's ``guidance_scale`` above 1.
    """
    if config.get("num_attention_heads") and config.get("attention_head_dim"):
        hidden = int(config["num_attention_heads"]) * int(config["attention_head_dim"])
    else:
        hidden = int(config.get("hidden_size") or config.get("dim") or 0)
    text_dim = next((int(config[k]) for k in ("joint_attention_dim", "cap_feat_dim", "text_dim", "caption_channels")
                     if config.get(k)), 0)
    if vae.get("scale_factor_spatial"):
        vae_factor = int(vae["scale_factor_spatial"])
    elif vae.get("temperal_downsample") is not None:
        vae_factor = 2 ** len(vae["temperal_downsample"])
    else:
        vae_factor = 2 ** (len(vae.get("block_out_channels") or [0, 0, 0, 0]) - 1)
    in_channels = int(config.get("in_channels") or 0)
    latent_channels = int(vae.get("latent_channels") or vae.get("z_dim") or in_channels)
    packed = in_channels // latent_channels if latent_channels and in_channels > latent_channels else 1
    side = math.isqrt(packed) if packed > 1 else _patch(config)
    return {
        "hidden": hidden, "text_dim": text_dim, "pooled_dim": int(config.get("pooled_projection_dim") or 0),
        "latent_channels": latent_channels, "vae_factor": vae_factor, "px_per_token": vae_factor * side,
        "text_tokens": int(adapter.max_sequence_length or 0), "double_blocks": int(config.get("num_layers") or 0),
        "single_blocks": int(config.get("num_single_layers") or 0), "blocks": [], "frames": 1, "cfg": _cfg(adapter) if cfg is None else cfg,
    }


def _cfg(adapter: FamilyAdapter) -> bool:
    return float(adapter.guidance_scale) > 1.0  # the pipelines' rule, as DiffusersFlowBackend.do_cfg


def family_facts(cls: type[FamilyAdapter], model: str | Path | None, text_tokens: int | None,
                 options: Mapping[str, Any]) -> ModelFacts:
    """Size facts of ``model`` (a pipeline folder, a name in ``cls.known_models``, or None: the
    family's ``default_known_model``) for the family ``cls``; ``ValueError`` naming what is missing."""
    folder = Path(model).expanduser() if model is not None else None
    defaults = read_folder_defaults(folder) if folder is not None and folder.is_dir() else {}
    options = {**{k: v for k, v in defaults.items() if k != "resolution"}, **options}  # as the backend applies them
    adapter = planner_adapter(cls, {**options, **({"max_sequence_length": text_tokens} if text_tokens else {})})
    if folder is None or not folder.is_dir():
        name = str(model) if model is not None and str(model) in cls.known_models else cls.default_known_model
        if name is None or name not in cls.known_models:
            what = f"no folder {model}" if model is not None else "no --model PATH"
            raise ValueError(f"the {cls.family} family has no size table for {what} (known models: "
                             f"{', '.join(cls.known_models) or 'none'}); give --model PATH, a pipeline folder")
        source = "table" if model is None or name == str(model) else f"table (no folder {model})"
        return cls.known_model_facts(name, adapter, source)
    config = read_json(folder / "transformer" / "config.json")
    shapes, _ = read_header(folder / "transformer") if any((folder / "transformer").glob("*.safetensors")) else ({}, {})
    if not shapes:
        raise ValueError(f"{folder / 'transformer'}: no safetensors weights to size the transformer "
                         f"({config.get('_class_name')!r}) from; the {cls.family} family reads their headers")
    vae = read_json(folder / "vae" / "config.json") if (folder / "vae" / "config.json").is_file() else {}
    buffers = sum(math.prod(shape) for key, shape in shapes.items() if key in cls.planner_buffers)
    stored = {k: v for k, v in shapes.items() if k not in cls.planner_buffers}
    index = read_json(folder / "model_index.json") if (folder / "model_index.json").is_file() else {}
    sizes = cls.planner_sizes(config, vae, index, adapter)
    return ModelFacts(
        name=folder.name, family=cls.family, activations=cls.activation_table, config=dict(config),
        transformer_parameters=sum(math.prod(shape) for shape in stored.values()), transformer_buffers=buffers,
        linears=linears_from_shapes(stored), lora_targets=tuple(cls.lora_targets),
        text_encoder_parameters=sum(safetensors_elements(folder / n) for n in cls.text_encoder_names if (folder / n).is_dir()),
        vae_parameters=safetensors_elements(folder / "vae") if (folder / "vae").is_dir() else 0,
        source=str(folder), **sizes, **({"default_resolution": int(defaults["resolution"])}
                                        if isinstance(defaults.get("resolution"), int) else {}),
    )
