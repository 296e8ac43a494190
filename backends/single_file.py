"""Merged single files in the layout ComfyUI's native loader reads, per family layout name.

A family adapter names its layout in ``single_file_layout``:

* ``"flux"`` / ``"sd3"`` / ``"flux2"`` / ``"chroma"``: the original BFL / SAI layouts with fused
  tensors, and Chroma's BFL-style one (:mod:`treesdk_backends.keymaps`).
* ``"diffusers-names"``: ComfyUI's model uses diffusers' own key names (Qwen-Image): written as is.
* ``"z-image"``: the original Z-Image layout (fused ``attention.qkv``, ``q_norm``/``k_norm``,
  ``attention.out``, ``final_layer``, ``x_embedder``), inverse of ComfyUI's ``z_image_to_diffusers``
  and diffusers' ``convert_z_image_transformer_checkpoint_to_diffusers``.
* ``"lumina2"``: the original Lumina-Image 2.0 layout (fused grouped-query ``attention.qkv``,
  ``attention_norm1/2``, ``adaLN_modulation.1``, ``w1/w2/w3``, ``cap_embedder``, ``t_embedder``,
  ``final_layer``), inverse of diffusers' ``convert_lumina2_to_diffusers`` (what ComfyUI's NextDiT loads).
* ``"wan"``: the original Wan2.1 layout (``blocks.N.self_attn.q``, ``ffn.0``, ``head.head``,
  ``modulation``, ...), pure renames plus the swapped ``norm2``/``norm3`` names, inverse of diffusers'
  ``convert_wan_transformer_to_diffusers`` (what ComfyUI's ``WanModel`` loads).

:func:`to_single_file` and :func:`from_single_file` are exact inverses; both raise ``ValueError``
naming a key they cannot place.
"""

from __future__ import annotations

import re
from collections.abc import Mapping

import torch
from torch import Tensor

from . import keymaps

__all__ = ["SAME_NAMES", "LAYOUT_NAMES", "RENAME_LAYOUTS", "to_single_file", "from_single_file"]

SAME_NAMES = "diffusers-names"

#: the ``treesdk.format`` metadata of each layout's single file
LAYOUT_NAMES = {**keymaps.ORIGINAL_LAYOUT, "wan": "wan-original", "z-image": "z-image-original",
                "lumina2": "lumina2-original"}
#: format name -> layout, for the layouts :mod:`treesdk_backends.keymaps` does not handle
RENAME_LAYOUTS = {"wan-original": "wan", "z-image-original": "z-image", "lumina2-original": "lumina2"}

# diffusers -> original Wan names, applied in order (the inverse of diffusers' rename chain)
_WAN_TOP = {
    "condition_embedder.time_embedder.linear_1.": "time_embedding.0.",
    "condition_embedder.time_embedder.linear_2.": "time_embedding.2.",
    "condition_embedder.text_embedder.linear_1.": "text_embedding.0.",
    "condition_embedder.text_embedder.linear_2.": "text_embedding.2.",
    "condition_embedder.time_proj.": "time_projection.1.",
    "scale_shift_table": "head.modulation",
    "proj_out.": "head.head.",
}
_WAN_BLOCK = [
    (".attn1.", ".self_attn."), (".attn2.", ".cross_attn."), (".to_out.0.", ".o."), (".to_q.", ".q."),
    (".to_k.", ".k."), (".to_v.", ".v."), (".add_k_proj.", ".k_img."), (".add_v_proj.", ".v_img."),
    (".norm_added_k.", ".norm_k_img."), (".ffn.net.0.proj.", ".ffn.0."), (".ffn.net.2.", ".ffn.2."),
    (".norm2.", ".norm3."), (".scale_shift_table", ".modulation"),
]
_BLOCK = re.compile(r"^blocks\.\d+(\.|$)")


def _wan_original(key: str) -> str:
    if _BLOCK.match(key):
        for new, old in _WAN_BLOCK:
            key = key.replace(new, old)
        return key
    for new, old in _WAN_TOP.items():
        if key.startswith(new):
            return old + key[len(new):]
    return key  # patch_embedding.*


def _wan_diffusers(key: str) -> str:
    if _BLOCK.match(key):
        for new, old in reversed(_WAN_BLOCK):
            key = key.replace(old, new)
        return key
    for new, old in _WAN_TOP.items():
        if key.startswith(old):
            return new + key[len(old):]
    return key


# Z-Image: per-block renames (diffusers -> original) and the fused q, k, v
_Z_RENAMES = [(".attention.norm_q.", ".attention.q_norm."), (".attention.norm_k.", ".attention.k_norm."),
              (".attention.to_out.0.", ".attention.out.")]
_Z_TOP = [("all_final_layer.2-1.", "final_layer."), ("all_x_embedder.2-1.", "x_embedder.")]
_Z_QKV = re.compile(r"^(.*\.attention\.)to_q\.(weight|bias)$")


def _z_image_original(state: Mapping[str, Tensor]) -> dict[str, Tensor]:
    out: dict[str, Tensor] = {}
    for key, value in state.items():
        if ".attention.to_k." in key or ".attention.to_v." in key:
            continue  # fused with to_q below
        match = _Z_QKV.match(key)
        if match:
            base, kind = match.groups()
            parts = [state.get(f"{base}to_{x}.{kind}") for x in "qkv"]
            if any(p is None for p in parts):
                raise ValueError(f"diffusers->z-image-original: {base}qkv needs to_q, to_k and to_v {kind}")
            out[f"{base}qkv.{kind}"] = torch.cat(parts, dim=0)
            continue
        for new, old in _Z_RENAMES:
            key = key.replace(new, old)
        for new, old in _Z_TOP:
            key = old + key[len(new):] if key.startswith(new) else key
        out[key] = value
    return out


def _z_image_diffusers(state: Mapping[str, Tensor]) -> dict[str, Tensor]:
    out: dict[str, Tensor] = {}
    for key, value in state.items():
        if key == "norm_final.weight":  # unused by the model; diffusers drops it as well
            continue
        if ".attention.qkv." in key:
            if value.shape[0] % 3:
                raise ValueError(f"z-image-original->diffusers: {key} has leading size {value.shape[0]}, not 3 * D")
            for x, part in zip("qkv", value.chunk(3, dim=0)):
                out[key.replace(".attention.qkv.", f".attention.to_{x}.")] = part
            continue
        for new, old in _Z_RENAMES:
            key = key.replace(old, new)
        for new, old in _Z_TOP:
            key = new + key[len(old):] if key.startswith(old) else key
        out[key] = value
    return out


# Lumina2: renames (diffusers -> original), applied in order; q, k, v fused (grouped-query sizes)
_L_TOP = [("time_caption_embed.caption_embedder.", "cap_embedder."),
          ("time_caption_embed.timestep_embedder.linear_1.", "t_embedder.mlp.0."),
          ("time_caption_embed.timestep_embedder.linear_2.", "t_embedder.mlp.2."),
          ("norm_out.linear_1.", "final_layer.adaLN_modulation.1."), ("norm_out.linear_2.", "final_layer.linear.")]
_L_BLOCK = [(".attn.norm_q.", ".attention.q_norm."), (".attn.norm_k.", ".attention.k_norm."),
            (".attn.to_out.0.", ".attention.out."), (".feed_forward.linear_1.", ".feed_forward.w1."),
            (".feed_forward.linear_2.", ".feed_forward.w2."), (".feed_forward.linear_3.", ".feed_forward.w3."),
            (".norm1.norm.", ".attention_norm1."), (".norm1.linear.", ".adaLN_modulation.1."),
            (".norm1.", ".attention_norm1."), (".norm2.", ".attention_norm2.")]
_L_QKV = re.compile(r"^(.*)\.attn\.to_q\.(weight|bias)$")


def _lumina2_original(state: Mapping[str, Tensor]) -> dict[str, Tensor]:
    out: dict[str, Tensor] = {}
    for key, value in state.items():
        if ".attn.to_k." in key or ".attn.to_v." in key:
            continue
        match = _L_QKV.match(key)
        if match:
            base, kind = match.groups()
            parts = [state.get(f"{base}.attn.to_{x}.{kind}") for x in "qkv"]
            if any(p is None for p in parts):
                raise ValueError(f"diffusers->lumina2-original: {base}.attention.qkv needs to_q, to_k and to_v {kind}")
            out[f"{base}.attention.qkv.{kind}"] = torch.cat(parts, dim=0)
            continue
        for new, old in _L_TOP:
            key = old + key[len(new):] if key.startswith(new) else key
        for new, old in _L_BLOCK:
            key = key.replace(new, old)
        out[key] = value
    return out


def _lumina2_diffusers(state: Mapping[str, Tensor]) -> dict[str, Tensor]:
    out: dict[str, Tensor] = {}
    for key, value in state.items():
        if key == "norm_final.weight":  # unused by the model; diffusers drops it as well
            continue
        if ".attention.qkv." in key:
            q = value.shape[1] if value.dim() == 2 else state[key.replace(".bias", ".weight")].shape[1]
            kv = (value.shape[0] - q) // 2
            if q + 2 * kv != value.shape[0]:
                raise ValueError(f"lumina2-original->diffusers: cannot split {key} {tuple(value.shape)} into q {q} + 2 kv")
            for x, part in zip("qkv", value.split([q, kv, kv], dim=0)):
                out[key.replace(".attention.qkv.", f".attn.to_{x}.")] = part
            continue
        for new, old in _L_TOP:
            key = new + key[len(old):] if key.startswith(old) else key
        for new, old in reversed(_L_BLOCK):
            if new == ".norm1." and not key.startswith("context_refiner."):
                continue  # in the modulated blocks attention_norm1 is norm1.norm
            if new == ".norm1.norm." and key.startswith("context_refiner."):
                continue
            key = key.replace(old, new)
        out[key] = value
    return out


def to_single_file(state: Mapping[str, Tensor], layout: str) -> dict[str, Tensor]:
    """Merged diffusers transformer state dict (no prefix) -> the single file of ``layout``."""
    if layout == SAME_NAMES:
        return dict(state)
    if layout == "z-image":
        return _z_image_original(state)
    if layout == "lumina2":
        return _lumina2_original(state)
    if layout == "wan":
        out = {_wan_original(k): v for k, v in state.items()}
        if len(out) != len(state):
            raise ValueError("diffusers->wan-original: two diffusers tensors map onto the same original name")
        return out
    if layout in keymaps.ORIGINAL_LAYOUT:
        return keymaps.diffusers_to_original(state, layout)
    raise ValueError(f"unknown single-file layout {layout!r}; known: {SAME_NAMES}, {', '.join(sorted(LAYOUT_NAMES))}")


def from_single_file(state: Mapping[str, Tensor], layout: str) -> dict[str, Tensor]:
    """Inverse of :func:`to_single_file` (a ``model.diffusion_model.`` prefix is stripped)."""
    state = {keymaps._strip_prefix(k): v for k, v in state.items()}
    if layout == SAME_NAMES:
        return state
    if layout == "z-image":
        return _z_image_diffusers(state)
    if layout == "lumina2":
        return _lumina2_diffusers(state)
    if layout == "wan":
        return {_wan_diffusers(k): v for k, v in state.items()}
    if layout in keymaps.ORIGINAL_LAYOUT:
        return keymaps.original_to_diffusers(state, layout)
    raise ValueError(f"unknown single-file layout {layout!r}; known: {SAME_NAMES}, {', '.join(sorted(LAYOUT_NAMES))}")
