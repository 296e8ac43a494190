"""Size and activation tables of the FLUX.1 and SD3 transformers, for the dry-run planner.

The linear layers (for LoRA sizes) and parameter counts of diffusers' ``FluxTransformer2DModel`` and
``SD3Transformer2DModel`` computed from a transformer config, the block kinds that decide their
activation memory, and the configs of the known checkpoints (FLUX.1-dev, SD3.5 medium and large);
the tests check every count against the models diffusers builds. With a folder, the planner reads
the folder instead (:mod:`treesdk_backends.diffusers.planning`). The activation tables
(:data:`FLUX_ACTIVATIONS`, :data:`SD3_ACTIVATIONS`) are what the two families declare
(``FamilyAdapter.activation_table``) for the planner's memory estimate.
"""

from __future__ import annotations

from typing import Any

from treesdk.model_facts import ActivationTable, Linear, ModelFacts

__all__ = ["FLUX_ACTIVATIONS", "FLUX_MODELS", "SD3_ACTIVATIONS", "SD3_MODELS", "block_kinds", "known_facts",
           "transformer_linears"]


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

#: known models by short name: (transformer config, text encoder parameters, VAE parameters)
FLUX_MODELS: dict[str, tuple[dict[str, Any], int, int]] = {"FLUX.1-dev": (_FLUX_DEV, _CLIP_L + _T5_XXL, _VAE16)}
SD3_MODELS: dict[str, tuple[dict[str, Any], int, int]] = {
    "SD3.5-medium": (_SD35_MEDIUM, _CLIP_L_PROJ + _CLIP_G_PROJ + _T5_XXL, _VAE16),
    "SD3.5-large": (_SD35_LARGE, _CLIP_L_PROJ + _CLIP_G_PROJ + _T5_XXL, _VAE16),
}


# activation tables (bytes per token per hidden unit; keys: block kind of :func:`block_kinds`, "lora"/"full",
# element bytes). ``saved``: measured with autograd's saved-tensor hooks, each saved storage counted
# once for the block that saved it (``python benchmarks/realwidth.py saved``: diffusers 0.42, default
# LoRA targets, CPU, the block in the interior of a stack; the same per hidden unit at SD3.5-medium
# and -large width). ``first_block``: the first block under LoRA saves less (its inputs come from
# frozen embedders and need no gradient; SD3.5's second attention has no LoRA target and saves
# nothing in block 0). ``outside``: the embedders, final norm and projection. ``backward_workspace``:
# transient while the last block back-propagates (activation gradients; on a CPU also the attention
# backward), float32, fitted on the real-width bed (docs/performance.md: measured training increment
# minus saved activations and gradients): FLUX single from the k=2, d=3 run (checked: k=3, d=3 and
# the checkpointing run); SD3 (one value for every block kind) from an earlier SD3.5-medium bed,
# checked on the SD3.5-medium and -large beds; FLUX double is not reached by any bed run (the single
# block decides both maxima), an upper bound.
FLUX_ACTIVATIONS = ActivationTable(
    saved={("double", "lora", 4): 72.31, ("double", "lora", 2): 64.26,
           ("single", "lora", 4): 48.18, ("single", "lora", 2): 38.17,
           ("double", "full", 4): 96.19, ("double", "full", 2): 56.14,
           ("single", "full", 4): 84.12, ("single", "full", 2): 50.11},
    first_block={("double", 4): 68.63, ("double", 2): 62.59, ("single", 4): 28.51, ("single", 2): 28.50},
    outside={("lora", 4): 4.01, ("lora", 2): 2.00, ("full", 4): 10.29, ("full", 2): 5.15},
    backward_workspace={"double": 20.0, "single": 52.0},
)
SD3_ACTIVATIONS = ActivationTable(
    saved={("joint", "lora", 4): 56.41, ("joint", "lora", 2): 48.35,
           ("joint_dual", "lora", 4): 67.01, ("joint_dual", "lora", 2): 57.20,
           ("joint_last", "lora", 4): 45.04, ("joint_last", "lora", 2): 40.40,
           ("joint", "full", 4): 100.32, ("joint", "full", 2): 58.25,
           ("joint_dual", "full", 4): 117.81, ("joint_dual", "full", 2): 70.52,
           ("joint_last", "full", 4): 70.87, ("joint_last", "full", 2): 43.53},
    first_block={("joint", 4): 52.39, ("joint", 2): 46.34, ("joint_dual", 4): 52.47, ("joint_dual", 2): 46.41,
                 ("joint_last", 4): 41.02, ("joint_last", 2): 38.39},
    outside={("lora", 4): 1.75, ("lora", 2): 0.87, ("full", 4): 11.37, ("full", 2): 5.69},
    backward_workspace={"joint": 35.0, "joint_dual": 35.0, "joint_last": 35.0},
)
_ACTIVATIONS = {"flux": FLUX_ACTIVATIONS, "sd3": SD3_ACTIVATIONS}


def known_facts(family: str, name: str, table: tuple[dict[str, Any], int, int], text_tokens: int | None, cfg: bool,
                lora_targets: tuple[str, ...], source: str = "table") -> ModelFacts:
    """Facts of a known ``flux`` or ``sd3`` checkpoint ``name`` from its ``table`` entry (transformer
    config, text encoder and VAE parameters); ``text_tokens`` is the T5 length (FLUX default 512,
    SD3 256; SD3 attends over 77 CLIP tokens too), the VAE factor 8."""
    config, text_params, vae_params = table
    linears, norms = transformer_linears(family, config)
    heads, dim_head = int(config["num_attention_heads"]), int(config["attention_head_dim"])
    buffers = int(config["pos_embed_max_size"]) ** 2 * heads * dim_head if family == "sd3" and config.get("pos_embed_max_size") else 0
    if family == "flux":
        double, single = int(config.get("num_layers", 19)), int(config.get("num_single_layers", 38))
        channels, tokens, pooled, px = int(config.get("in_channels", 64)) // 4, text_tokens or 512, int(config.get("pooled_projection_dim", 768)), 16
    else:
        double, single = int(config.get("num_layers", 18)), 0
        channels, tokens, pooled = int(config.get("in_channels", 16)), 77 + (text_tokens or 256), int(config.get("pooled_projection_dim", 2048))
        px = 8 * int(config.get("patch_size", 2))
    return ModelFacts(
        name=name, family=family, config=dict(config), linears=linears,
        transformer_parameters=sum(lin.parameters for lin in linears) + norms, transformer_buffers=buffers,
        hidden=heads * dim_head, double_blocks=double, single_blocks=single, blocks=block_kinds(family, config),
        text_tokens=tokens, text_dim=int(config.get("joint_attention_dim", 4096)), pooled_dim=pooled,
        latent_channels=channels, px_per_token=px, vae_factor=8, default_resolution=1024, cfg=cfg,
        lora_targets=tuple(lora_targets), text_encoder_parameters=text_params, vae_parameters=vae_params, source=source,
        activations=_ACTIVATIONS[family],
    )
