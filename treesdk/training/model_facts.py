"""Size facts of a text-to-image model, known *before* its weights are loaded.

:func:`model_facts` answers from a checkpoint folder's ``transformer/config.json`` (and the other
components' safetensors headers, read without loading a tensor) or, without a folder, from a small
table of known models (:data:`KNOWN_MODELS`). The transformer's parameter count and its linear
layers (for LoRA sizes) are computed from the config with the layer structure of diffusers'
``FluxTransformer2DModel`` and ``SD3Transformer2DModel``; the tests check both against models
diffusers builds.

No torch or diffusers import here: ``treesdk train --dry-run`` uses this module to plan a run.
"""

from __future__ import annotations

import json
import struct
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

__all__ = ["Linear", "ModelFacts", "KNOWN_MODELS", "model_facts", "transformer_linears", "lora_parameters", "block_kinds"]


@dataclass(frozen=True)
class Linear:
    """One ``nn.Linear`` (or patch conv, counted as its flattened linear) of the transformer."""

    name: str  #: module path, e.g. ``transformer_blocks.0.attn.to_q``
    fan_in: int
    fan_out: int
    bias: bool = True

    @property
    def parameters(self) -> int:
        return self.fan_in * self.fan_out + (self.fan_out if self.bias else 0)


@dataclass
class ModelFacts:
    """What the planner needs to know about a model (counts in parameters/elements, not bytes).

    ``text_tokens``: tokens of the text stream the transformer attends over (FLUX: T5 length;
    SD3: 77 CLIP + T5 length). ``image_tokens_per_side_px``: pixels per image token along a side
    (16 for FLUX and SD3: VAE factor 8 times 2x2 patches). ``cfg``: classifier-free guidance
    doubles every velocity row (SD3 with guidance_scale > 1); FLUX is guidance-distilled.
    """

    name: str
    family: str  #: "flux", "sd3", "digits" or "unknown"
    config: dict[str, Any]
    transformer_parameters: int
    transformer_buffers: int = 0  #: persistent floating buffers (SD3's positional table)
    linears: list[Linear] = field(default_factory=list)
    hidden: int = 0
    double_blocks: int = 0  #: blocks with two streams (FLUX double / SD3 joint)
    single_blocks: int = 0
    #: the block types in order, as diffusers builds them (:func:`block_kinds`)
    blocks: list[str] = field(default_factory=list)
    text_tokens: int = 0
    text_dim: int = 0
    pooled_dim: int = 0
    latent_channels: int = 0  #: channels of the VAE latent
    px_per_token: int = 16
    vae_factor: int = 8
    default_resolution: int = 1024
    cfg: bool = False
    text_encoder_parameters: int = 0
    vae_parameters: int = 0
    source: str = "table"

    def image_tokens(self, resolution: int) -> int:
        return (resolution // self.px_per_token) ** 2

    def latent_elements(self, resolution: int) -> int:
        side = resolution // self.vae_factor
        return self.latent_channels * side * side


def _flux_linears(c: dict[str, Any]) -> tuple[list[Linear], int]:
    """Linear layers of ``FluxTransformer2DModel`` and the count of all other parameters (norms)."""
    heads, dim_head = int(c.get("num_attention_heads", 24)), int(c.get("attention_head_dim", 128))
    h = heads * dim_head
    mlp = 4 * h
    inner = [Linear("x_embedder", int(c.get("in_channels", 64)), h),
             Linear("context_embedder", int(c.get("joint_attention_dim", 4096)), h),
             Linear("time_text_embed.timestep_embedder.linear_1", 256, h),
             Linear("time_text_embed.timestep_embedder.linear_2", h, h),
             Linear("time_text_embed.text_embedder.linear_1", int(c.get("pooled_projection_dim", 768)), h),
             Linear("time_text_embed.text_embedder.linear_2", h, h)]
    if c.get("guidance_embeds", False):
        inner += [Linear("time_text_embed.guidance_embedder.linear_1", 256, h),
                  Linear("time_text_embed.guidance_embedder.linear_2", h, h)]
    norms = 0
    for i in range(int(c.get("num_layers", 19))):
        p = f"transformer_blocks.{i}."
        inner += [Linear(p + "norm1.linear", h, 6 * h), Linear(p + "norm1_context.linear", h, 6 * h)]
        inner += [Linear(p + f"attn.{n}", h, h) for n in ("to_q", "to_k", "to_v", "to_out.0", "add_q_proj",
                                                           "add_k_proj", "add_v_proj", "to_add_out")]
        for ff in ("ff", "ff_context"):
            inner += [Linear(p + f"{ff}.net.0.proj", h, mlp), Linear(p + f"{ff}.net.2", mlp, h)]
        norms += 4 * dim_head  # norm_q, norm_k, norm_added_q, norm_added_k
    for i in range(int(c.get("num_single_layers", 38))):
        p = f"single_transformer_blocks.{i}."
        inner += [Linear(p + "norm.linear", h, 3 * h), Linear(p + "proj_mlp", h, mlp),
                  Linear(p + "proj_out", h + mlp, h)]
        inner += [Linear(p + f"attn.{n}", h, h) for n in ("to_q", "to_k", "to_v")]
        norms += 2 * dim_head
    patch, out = int(c.get("patch_size", 1)), c.get("out_channels") or int(c.get("in_channels", 64))
    inner += [Linear("norm_out.linear", h, 2 * h), Linear("proj_out", h, patch * patch * int(out))]
    return inner, norms


def _sd3_linears(c: dict[str, Any]) -> tuple[list[Linear], int]:
    """Linear layers of ``SD3Transformer2DModel`` (patch conv included) and the norm parameters."""
    heads, dim_head = int(c.get("num_attention_heads", 18)), int(c.get("attention_head_dim", 64))
    h = heads * dim_head
    patch, in_ch = int(c.get("patch_size", 2)), int(c.get("in_channels", 16))
    layers = int(c.get("num_layers", 18))
    dual = set(c.get("dual_attention_layers") or ())
    qk = c.get("qk_norm") == "rms_norm"
    inner = [Linear("pos_embed.proj", in_ch * patch * patch, h),
             Linear("time_text_embed.timestep_embedder.linear_1", 256, h),
             Linear("time_text_embed.timestep_embedder.linear_2", h, h),
             Linear("time_text_embed.text_embedder.linear_1", int(c.get("pooled_projection_dim", 2048)), h),
             Linear("time_text_embed.text_embedder.linear_2", h, h),
             Linear("context_embedder", int(c.get("joint_attention_dim", 4096)), int(c.get("caption_projection_dim", h)))]
    norms = 0
    for i in range(layers):
        p = f"transformer_blocks.{i}."
        last = i == layers - 1
        inner.append(Linear(p + "norm1.linear", h, (9 if i in dual else 6) * h))
        inner.append(Linear(p + "norm1_context.linear", h, (2 if last else 6) * h))
        names = ["to_q", "to_k", "to_v", "to_out.0", "add_q_proj", "add_k_proj", "add_v_proj"]
        names += [] if last else ["to_add_out"]
        inner += [Linear(p + f"attn.{n}", h, h) for n in names]
        norms += 4 * dim_head if qk else 0
        if i in dual:
            inner += [Linear(p + f"attn2.{n}", h, h) for n in ("to_q", "to_k", "to_v", "to_out.0")]
            norms += 2 * dim_head if qk else 0
        for ff in ("ff",) if last else ("ff", "ff_context"):
            inner += [Linear(p + f"{ff}.net.0.proj", h, 4 * h), Linear(p + f"{ff}.net.2", 4 * h, h)]
    out = c.get("out_channels") or in_ch
    inner += [Linear("norm_out.linear", h, 2 * h), Linear("proj_out", h, patch * patch * int(out))]
    return inner, norms


def block_kinds(family: str, config: dict[str, Any]) -> list[str]:
    """The transformer's blocks in order, by the type that decides their activation memory.

    FLUX: ``double`` then ``single``. SD3: ``joint_dual`` for ``dual_attention_layers`` (SD3.5's second
    self-attention), ``joint_last`` for the last block (diffusers builds it ``context_pre_only``: no
    context feed-forward), ``joint`` otherwise (a dual last block counts as ``joint_last``).
    """
    if family == "flux":
        return ["double"] * int(config.get("num_layers", 19)) + ["single"] * int(config.get("num_single_layers", 38))
    if family == "sd3":
        layers, dual = int(config.get("num_layers", 18)), set(config.get("dual_attention_layers") or ())
        return ["joint_last" if i == layers - 1 else "joint_dual" if i in dual else "joint" for i in range(layers)]
    raise ValueError(f"no block table for model family {family!r}; known: flux, sd3")


def transformer_linears(family: str, config: dict[str, Any]) -> tuple[list[Linear], int]:
    """``(linear layers, other parameters)`` of a ``flux`` or ``sd3`` transformer config."""
    if family == "flux":
        return _flux_linears(config)
    if family == "sd3":
        return _sd3_linears(config)
    raise ValueError(f"no layer table for model family {family!r}; known: flux, sd3")


def lora_parameters(linears: list[Linear], rank: int, targets: tuple[str, ...] | list[str]) -> int:
    """Parameters a peft LoRA of ``rank`` adds: ``rank * (fan_in + fan_out)`` per targeted linear
    (peft matches a target when the module path equals it or ends with ``"." + target``)."""
    total = 0
    for lin in linears:
        if any(lin.name == t or lin.name.endswith("." + t) for t in targets):
            total += rank * (lin.fan_in + lin.fan_out)
    return total


#: default LoRA targets per family (the backends' defaults: diffusers' dreambooth-LoRA lists)
LORA_TARGETS = {
    "flux": ("attn.to_q", "attn.to_k", "attn.to_v", "attn.to_out.0", "attn.add_q_proj", "attn.add_k_proj",
             "attn.add_v_proj", "attn.to_add_out", "ff.net.0.proj", "ff.net.2", "ff_context.net.0.proj",
             "ff_context.net.2"),
    "sd3": ("attn.to_q", "attn.to_k", "attn.to_v", "attn.to_out.0", "attn.add_q_proj", "attn.add_k_proj",
            "attn.add_v_proj", "attn.to_add_out"),
}

_FLUX_DEV = {"patch_size": 1, "in_channels": 64, "num_layers": 19, "num_single_layers": 38, "attention_head_dim": 128,
             "num_attention_heads": 24, "joint_attention_dim": 4096, "pooled_projection_dim": 768,
             "guidance_embeds": True, "axes_dims_rope": [16, 56, 56]}
_SD35_MEDIUM = {"attention_head_dim": 64, "caption_projection_dim": 1536, "dual_attention_layers": list(range(13)),
                "in_channels": 16, "joint_attention_dim": 4096, "num_attention_heads": 24, "num_layers": 24,
                "out_channels": 16, "patch_size": 2, "pooled_projection_dim": 2048, "pos_embed_max_size": 384,
                "qk_norm": "rms_norm", "sample_size": 128}
_SD35_LARGE = {"attention_head_dim": 64, "caption_projection_dim": 2432, "dual_attention_layers": [],
               "in_channels": 16, "joint_attention_dim": 4096, "num_attention_heads": 38, "num_layers": 38,
               "out_channels": 16, "patch_size": 2, "pooled_projection_dim": 2048, "pos_embed_max_size": 192,
               "qk_norm": "rms_norm", "sample_size": 128}

#: text encoders and VAE of the known checkpoints (parameters, from their safetensors):
#: CLIP-L text 123 M, CLIP-L/G with projection 124 M / 695 M, T5-XXL encoder 4 762 M, VAE 84 M
_CLIP_L, _CLIP_L_PROJ, _CLIP_G_PROJ, _T5_XXL, _VAE16 = 123_060_480, 123_650_304, 694_659_840, 4_762_310_656, 83_819_683

#: known models by short name: (family, transformer config, text encoder parameters, VAE parameters)
KNOWN_MODELS: dict[str, tuple[str, dict[str, Any], int, int]] = {
    "FLUX.1-dev": ("flux", _FLUX_DEV, _CLIP_L + _T5_XXL, _VAE16),
    "SD3.5-medium": ("sd3", _SD35_MEDIUM, _CLIP_L_PROJ + _CLIP_G_PROJ + _T5_XXL, _VAE16),
    "SD3.5-large": ("sd3", _SD35_LARGE, _CLIP_L_PROJ + _CLIP_G_PROJ + _T5_XXL, _VAE16),
}
#: the table entry a backend name falls back to when no --model folder is given
DEFAULT_FOR_BACKEND = {"flux": "FLUX.1-dev", "sd3": "SD3.5-medium"}
_CLASS_FAMILY = {"FluxTransformer2DModel": "flux", "SD3Transformer2DModel": "sd3"}


def _facts(name: str, family: str, config: dict[str, Any], text_params: int, vae_params: int,
           text_tokens: int | None, vae_factor: int, latent_channels: int | None, source: str) -> ModelFacts:
    linears, norms = transformer_linears(family, config)
    heads, dim_head = int(config["num_attention_heads"]), int(config["attention_head_dim"])
    buffers = 0
    if family == "sd3" and config.get("pos_embed_max_size"):
        buffers = int(config["pos_embed_max_size"]) ** 2 * heads * dim_head
    if family == "flux":
        double, single = int(config.get("num_layers", 19)), int(config.get("num_single_layers", 38))
        channels = latent_channels or int(config.get("in_channels", 64)) // 4
        tokens, pooled, cfg, px = text_tokens or 512, int(config.get("pooled_projection_dim", 768)), False, vae_factor * 2
    else:
        double, single = int(config.get("num_layers", 18)), 0
        channels = latent_channels or int(config.get("in_channels", 16))
        tokens, pooled, cfg = 77 + (text_tokens or 256), int(config.get("pooled_projection_dim", 2048)), True
        px = vae_factor * int(config.get("patch_size", 2))
    return ModelFacts(
        name=name, family=family, config=dict(config), linears=linears,
        transformer_parameters=sum(lin.parameters for lin in linears) + norms, transformer_buffers=buffers,
        hidden=heads * dim_head, double_blocks=double, single_blocks=single, blocks=block_kinds(family, config),
        text_tokens=tokens,
        text_dim=int(config.get("joint_attention_dim", 4096)), pooled_dim=pooled, latent_channels=channels,
        px_per_token=px, vae_factor=vae_factor, default_resolution=1024, cfg=cfg,
        text_encoder_parameters=text_params, vae_parameters=vae_params, source=source,
    )


def safetensors_elements(folder: Path) -> int:
    """Elements of every tensor in ``folder/*.safetensors``, read from the files' JSON headers only."""
    total = 0
    for path in sorted(folder.glob("*.safetensors")):
        with open(path, "rb") as handle:
            (size,) = struct.unpack("<Q", handle.read(8))
            header = json.loads(handle.read(size))
        for key, info in header.items():
            if key != "__metadata__":
                count = 1
                for dim in info["shape"]:
                    count *= int(dim)
                total += count
    return total


def _read_json(path: Path) -> dict[str, Any]:
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError) as exc:
        raise ValueError(f"cannot read {path}: {exc}") from None


def model_facts(backend: str, model: str | Path | None = None, text_tokens: int | None = None) -> ModelFacts:
    """Facts of ``model`` (a pipeline folder) or, when None, of the backend's default known model.

    ``model`` may also name a :data:`KNOWN_MODELS` entry (``"SD3.5-large"``). ``text_tokens``
    overrides the T5 length (FLUX default 512, SD3 256). Raises ``ValueError`` naming the file for
    an unreadable folder, and for a backend with no known model and no folder.
    """
    if model is not None and str(model) in KNOWN_MODELS:
        family, config, text_params, vae_params = KNOWN_MODELS[str(model)]
        return _facts(str(model), family, config, text_params, vae_params, text_tokens, 8, None, "table")
    if model is None or not Path(model).expanduser().is_dir():
        name = DEFAULT_FOR_BACKEND.get(backend)
        if name is None:
            raise ValueError(f"--dry-run knows no model for backend {backend!r} without --model PATH "
                             f"(known: {', '.join(KNOWN_MODELS)}; or a pipeline folder with transformer/config.json)")
        family, config, text_params, vae_params = KNOWN_MODELS[name]
        return _facts(name, family, config, text_params, vae_params, text_tokens, 8, None,
                      "table" if model is None else f"table (no folder {model})")
    root = Path(model).expanduser()
    config = _read_json(root / "transformer" / "config.json")
    family = _CLASS_FAMILY.get(str(config.get("_class_name")), "")
    if not family:
        raise ValueError(f"{root / 'transformer' / 'config.json'}: _class_name {config.get('_class_name')!r} has no "
                         f"size table; known: {', '.join(_CLASS_FAMILY)}")
    text_params = sum(safetensors_elements(root / name) for name in ("text_encoder", "text_encoder_2", "text_encoder_3")
                      if (root / name).is_dir())
    vae_params, vae_factor, channels = 0, 8, None
    if (root / "vae" / "config.json").is_file():
        vae_cfg = _read_json(root / "vae" / "config.json")
        vae_factor = 2 ** (len(vae_cfg.get("block_out_channels", [0, 0, 0, 0])) - 1)
        channels = vae_cfg.get("latent_channels")
        vae_params = safetensors_elements(root / "vae")
    return _facts(root.name, family, config, text_params, vae_params, text_tokens, vae_factor, channels, str(root))
