"""Key maps between diffusers transformer state dicts and the original BFL (FLUX) / SAI (SD3) layouts.

The original layouts are what ComfyUI's "Load Diffusion Model" detects natively and what the model
authors published (``flux1-dev.safetensors``, ``sd3.5_medium.safetensors``). The rules below were
written in this project from the documented layouts; diffusers'
``loaders/single_file_utils.py`` (``convert_flux_transformer_checkpoint_to_diffusers``,
``convert_sd3_transformer_checkpoint_to_diffusers``) and ComfyUI's ``comfy/utils.py``
(``flux_to_diffusers``, ``mmdit_to_diffusers``) describe the same correspondence in the
original->diffusers direction. Here both directions come from one table, so they are inverse by
construction:

* FLUX double block ``i``: ``double_blocks.i.img_attn.qkv = cat(to_q, to_k, to_v)`` (``[3D, D]``),
  ``txt_attn.qkv = cat(add_q_proj, add_k_proj, add_v_proj)``, ``img_mod.lin = norm1.linear``,
  ``txt_mod.lin = norm1_context.linear``, ``img_mlp.{0,2} = ff.net.{0.proj,2}``,
  ``txt_mlp.{0,2} = ff_context.net.{0.proj,2}``, ``img_attn.proj = attn.to_out.0``,
  ``txt_attn.proj = attn.to_add_out``, ``*.norm.{query,key}_norm.scale = attn.norm_{q,k}`` /
  ``norm_added_{q,k}``.
* FLUX single block ``i``: ``single_blocks.i.linear1 = cat(to_q, to_k, to_v, proj_mlp)``
  (``[3D + mlp, D]``), ``linear2 = proj_out``, ``modulation.lin = norm.linear``.
* FLUX embedders: ``img_in = x_embedder``, ``txt_in = context_embedder``,
  ``time_in/vector_in/guidance_in.{in,out}_layer = time_text_embed.{timestep,text,guidance}_embedder.linear_{1,2}``.
* SD3 joint block ``i``: ``joint_blocks.i.x_block.attn.qkv = cat(to_q, to_k, to_v)``,
  ``context_block.attn.qkv = cat(add_q_proj, add_k_proj, add_v_proj)``, ``attn.proj``,
  ``attn.ln_{q,k}``, ``attn2.*`` (SD3.5 dual attention), ``mlp.fc{1,2} = ff.net.{0.proj,2}``,
  ``adaLN_modulation.1 = norm1.linear``; the last block is "context pre only" (no context proj,
  no context MLP, and its context adaLN is ``AdaLayerNormContinuous``: order swapped).
* SD3 embedders: ``pos_embed = pos_embed.pos_embed``, ``x_embedder.proj = pos_embed.proj``,
  ``t_embedder.mlp.{0,2}``, ``y_embedder.mlp.{0,2}``, ``context_embedder``.
* Both: ``final_layer.linear = proj_out`` and ``final_layer.adaLN_modulation.1`` is
  ``norm_out.linear`` with its two halves swapped: the original modulation emits ``[shift, scale]``,
  diffusers' ``AdaLayerNormContinuous`` emits ``[scale, shift]``.

Functions take and return plain ``{name: tensor}`` dicts, no prefix. They also work on
``device="meta"`` tensors, which is how shapes are mapped without reading weights.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass

import torch
from torch import Tensor

#: the original layout name of each family, as ``check_file`` reports it
ORIGINAL_LAYOUT = {"flux": "bfl-flux", "sd3": "sai-sd3", "chroma": "bfl-chroma", "flux2": "bfl-flux2"}


@dataclass(frozen=True)
class _Entry:
    """One original tensor and the diffusers tensors it is made of.

    ``op``: ``"copy"`` (one diffusers tensor), ``"cat"`` (diffusers tensors concatenated on dim 0;
    ``split`` says how to cut the original back: ``"thirds"`` or ``"qkv_mlp"`` = D, D, D, rest with
    D = in_features of the matching weight) or ``"swap"`` (halves on dim 0 exchanged).
    """

    original: str
    diffusers: tuple[str, ...]
    op: str = "copy"
    split: str = ""


def _linear(entries: list[_Entry], original: str, diffusers: str | tuple[str, ...], op: str = "copy", split: str = "") -> None:
    """Weight and bias entries of one linear (or conv) layer."""
    names = (diffusers,) if isinstance(diffusers, str) else diffusers
    for param in ("weight", "bias"):
        entries.append(_Entry(f"{original}.{param}", tuple(f"{n}.{param}" for n in names), op, split))


def _indices(keys: list[str], pattern: str) -> list[int]:
    found = {int(m.group(1)) for k in keys if (m := re.match(pattern, k))}
    return sorted(found)


# ---------------------------------------------------------------------------------------------
# FLUX


def _flux_entries(double: list[int], single: list[int]) -> list[_Entry]:
    e: list[_Entry] = []
    _linear(e, "time_in.in_layer", "time_text_embed.timestep_embedder.linear_1")
    _linear(e, "time_in.out_layer", "time_text_embed.timestep_embedder.linear_2")
    _linear(e, "vector_in.in_layer", "time_text_embed.text_embedder.linear_1")
    _linear(e, "vector_in.out_layer", "time_text_embed.text_embedder.linear_2")
    _linear(e, "guidance_in.in_layer", "time_text_embed.guidance_embedder.linear_1")
    _linear(e, "guidance_in.out_layer", "time_text_embed.guidance_embedder.linear_2")
    _linear(e, "txt_in", "context_embedder")
    _linear(e, "img_in", "x_embedder")
    for i in double:
        o, d = f"double_blocks.{i}", f"transformer_blocks.{i}"
        _linear(e, f"{o}.img_mod.lin", f"{d}.norm1.linear")
        _linear(e, f"{o}.txt_mod.lin", f"{d}.norm1_context.linear")
        _linear(e, f"{o}.img_attn.qkv", (f"{d}.attn.to_q", f"{d}.attn.to_k", f"{d}.attn.to_v"), "cat", "thirds")
        _linear(
            e, f"{o}.txt_attn.qkv", (f"{d}.attn.add_q_proj", f"{d}.attn.add_k_proj", f"{d}.attn.add_v_proj"), "cat", "thirds"
        )
        e.append(_Entry(f"{o}.img_attn.norm.query_norm.scale", (f"{d}.attn.norm_q.weight",)))
        e.append(_Entry(f"{o}.img_attn.norm.key_norm.scale", (f"{d}.attn.norm_k.weight",)))
        e.append(_Entry(f"{o}.txt_attn.norm.query_norm.scale", (f"{d}.attn.norm_added_q.weight",)))
        e.append(_Entry(f"{o}.txt_attn.norm.key_norm.scale", (f"{d}.attn.norm_added_k.weight",)))
        _linear(e, f"{o}.img_mlp.0", f"{d}.ff.net.0.proj")
        _linear(e, f"{o}.img_mlp.2", f"{d}.ff.net.2")
        _linear(e, f"{o}.txt_mlp.0", f"{d}.ff_context.net.0.proj")
        _linear(e, f"{o}.txt_mlp.2", f"{d}.ff_context.net.2")
        _linear(e, f"{o}.img_attn.proj", f"{d}.attn.to_out.0")
        _linear(e, f"{o}.txt_attn.proj", f"{d}.attn.to_add_out")
    for i in single:
        o, d = f"single_blocks.{i}", f"single_transformer_blocks.{i}"
        _linear(e, f"{o}.modulation.lin", f"{d}.norm.linear")
        _linear(
            e, f"{o}.linear1", (f"{d}.attn.to_q", f"{d}.attn.to_k", f"{d}.attn.to_v", f"{d}.proj_mlp"), "cat", "qkv_mlp"
        )
        e.append(_Entry(f"{o}.norm.query_norm.scale", (f"{d}.attn.norm_q.weight",)))
        e.append(_Entry(f"{o}.norm.key_norm.scale", (f"{d}.attn.norm_k.weight",)))
        _linear(e, f"{o}.linear2", f"{d}.proj_out")
    _linear(e, "final_layer.linear", "proj_out")
    _linear(e, "final_layer.adaLN_modulation.1", "norm_out.linear", "swap")
    return e


# ---------------------------------------------------------------------------------------------
# SD3 / SD3.5


def _sd3_entries(blocks: list[int]) -> list[_Entry]:
    e: list[_Entry] = [_Entry("pos_embed", ("pos_embed.pos_embed",))]
    _linear(e, "x_embedder.proj", "pos_embed.proj")
    _linear(e, "t_embedder.mlp.0", "time_text_embed.timestep_embedder.linear_1")
    _linear(e, "t_embedder.mlp.2", "time_text_embed.timestep_embedder.linear_2")
    _linear(e, "y_embedder.mlp.0", "time_text_embed.text_embedder.linear_1")
    _linear(e, "y_embedder.mlp.2", "time_text_embed.text_embedder.linear_2")
    _linear(e, "context_embedder", "context_embedder")
    last = blocks[-1] if blocks else -1
    for i in blocks:
        x, c, d = f"joint_blocks.{i}.x_block", f"joint_blocks.{i}.context_block", f"transformer_blocks.{i}"
        _linear(e, f"{x}.attn.qkv", (f"{d}.attn.to_q", f"{d}.attn.to_k", f"{d}.attn.to_v"), "cat", "thirds")
        _linear(e, f"{c}.attn.qkv", (f"{d}.attn.add_q_proj", f"{d}.attn.add_k_proj", f"{d}.attn.add_v_proj"), "cat", "thirds")
        e.append(_Entry(f"{x}.attn.ln_q.weight", (f"{d}.attn.norm_q.weight",)))
        e.append(_Entry(f"{x}.attn.ln_k.weight", (f"{d}.attn.norm_k.weight",)))
        e.append(_Entry(f"{c}.attn.ln_q.weight", (f"{d}.attn.norm_added_q.weight",)))
        e.append(_Entry(f"{c}.attn.ln_k.weight", (f"{d}.attn.norm_added_k.weight",)))
        _linear(e, f"{x}.attn.proj", f"{d}.attn.to_out.0")
        _linear(e, f"{x}.attn2.qkv", (f"{d}.attn2.to_q", f"{d}.attn2.to_k", f"{d}.attn2.to_v"), "cat", "thirds")
        e.append(_Entry(f"{x}.attn2.ln_q.weight", (f"{d}.attn2.norm_q.weight",)))
        e.append(_Entry(f"{x}.attn2.ln_k.weight", (f"{d}.attn2.norm_k.weight",)))
        _linear(e, f"{x}.attn2.proj", f"{d}.attn2.to_out.0")
        _linear(e, f"{x}.adaLN_modulation.1", f"{d}.norm1.linear")
        _linear(e, f"{x}.mlp.fc1", f"{d}.ff.net.0.proj")
        _linear(e, f"{x}.mlp.fc2", f"{d}.ff.net.2")
        if i == last:  # context_pre_only: AdaLayerNormContinuous ([scale, shift] in diffusers)
            _linear(e, f"{c}.adaLN_modulation.1", f"{d}.norm1_context.linear", "swap")
        else:
            _linear(e, f"{c}.adaLN_modulation.1", f"{d}.norm1_context.linear")
            _linear(e, f"{c}.attn.proj", f"{d}.attn.to_add_out")
            _linear(e, f"{c}.mlp.fc1", f"{d}.ff_context.net.0.proj")
            _linear(e, f"{c}.mlp.fc2", f"{d}.ff_context.net.2")
    _linear(e, "final_layer.linear", "proj_out")
    _linear(e, "final_layer.adaLN_modulation.1", "norm_out.linear", "swap")
    return e


# ---------------------------------------------------------------------------------------------
# family detection and the table for a given key set


def detect_family(keys) -> str | None:
    """``"flux"``, ``"flux2"``, ``"chroma"`` or ``"sd3"`` from a set of keys in either layout (diffusers or original), else None.

    Prefixes ``transformer.`` / ``diffusion_model.`` / ``model.diffusion_model.`` are ignored.
    """
    names = [_strip_prefix(k) for k in keys]
    if any(n.startswith("distilled_guidance_layer.") for n in names):
        return "chroma"
    if any(n.startswith(("double_stream_modulation_img.", "single_stream_modulation.")) for n in names):
        return "flux2"
    if any(n.startswith(("double_blocks.", "single_blocks.", "img_in.")) for n in names):
        return "flux"
    if any(n.startswith(("joint_blocks.", "x_embedder.proj.")) or n == "pos_embed" for n in names):
        return "sd3"
    if any(n.startswith("single_transformer_blocks.") for n in names) or any(n.startswith("x_embedder.") for n in names):
        return "flux"
    if any(n.startswith(("pos_embed.", "transformer_blocks.")) for n in names):
        return "sd3"
    return None


def is_original_layout(keys) -> bool:
    """True when the keys use the BFL/SAI names (``double_blocks``, ``joint_blocks``, ``final_layer``, ...)."""
    names = [_strip_prefix(k) for k in keys]
    return any(n.startswith(("double_blocks.", "single_blocks.", "joint_blocks.", "final_layer.")) for n in names)


def _strip_prefix(key: str) -> str:
    for prefix in ("model.diffusion_model.", "diffusion_model.", "transformer."):
        if key.startswith(prefix):
            return key[len(prefix) :]
    return key


def _chroma_entries(double: list[int], single: list[int], guidance: list[int]) -> list[_Entry]:
    """Chroma: FLUX's blocks (no modulation linears: absent entries are skipped) and its
    approximator ``distilled_guidance_layer`` (``layers.i.{in,out}_layer``, ``norms.i.scale``)."""
    e = _flux_entries(double, single)
    g = "distilled_guidance_layer"
    _linear(e, f"{g}.in_proj", f"{g}.in_proj")
    _linear(e, f"{g}.out_proj", f"{g}.out_proj")
    for i in guidance:
        _linear(e, f"{g}.layers.{i}.in_layer", f"{g}.layers.{i}.linear_1")
        _linear(e, f"{g}.layers.{i}.out_layer", f"{g}.layers.{i}.linear_2")
        e.append(_Entry(f"{g}.norms.{i}.scale", (f"{g}.norms.{i}.weight",)))
    return e


def _flux2_entries(double: list[int], single: list[int]) -> list[_Entry]:
    """FLUX.2 (dev and klein): BFL names, fused q, k, v in the double blocks, shared modulations,
    ``final_layer.adaLN_modulation.1`` with its halves swapped (diffusers' converter in reverse)."""
    e: list[_Entry] = []
    _linear(e, "img_in", "x_embedder")
    _linear(e, "txt_in", "context_embedder")
    for orig, diff in (("time_in", "timestep_embedder"), ("guidance_in", "guidance_embedder")):
        _linear(e, f"{orig}.in_layer", f"time_guidance_embed.{diff}.linear_1")
        _linear(e, f"{orig}.out_layer", f"time_guidance_embed.{diff}.linear_2")
    for name in ("double_stream_modulation_img", "double_stream_modulation_txt", "single_stream_modulation"):
        _linear(e, f"{name}.lin", f"{name}.linear")
    for i in double:
        o, d = f"double_blocks.{i}", f"transformer_blocks.{i}"
        _linear(e, f"{o}.img_attn.qkv", (f"{d}.attn.to_q", f"{d}.attn.to_k", f"{d}.attn.to_v"), "cat", "thirds")
        _linear(e, f"{o}.txt_attn.qkv", (f"{d}.attn.add_q_proj", f"{d}.attn.add_k_proj", f"{d}.attn.add_v_proj"),
                "cat", "thirds")
        for orig, diff in (("img_attn.norm.query_norm", "attn.norm_q"), ("img_attn.norm.key_norm", "attn.norm_k"),
                           ("txt_attn.norm.query_norm", "attn.norm_added_q"),
                           ("txt_attn.norm.key_norm", "attn.norm_added_k")):
            e.append(_Entry(f"{o}.{orig}.scale", (f"{d}.{diff}.weight",)))
        for orig, diff in (("img_attn.proj", "attn.to_out.0"), ("txt_attn.proj", "attn.to_add_out"),
                           ("img_mlp.0", "ff.linear_in"), ("img_mlp.2", "ff.linear_out"),
                           ("txt_mlp.0", "ff_context.linear_in"), ("txt_mlp.2", "ff_context.linear_out")):
            _linear(e, f"{o}.{orig}", f"{d}.{diff}")
    for i in single:
        o, d = f"single_blocks.{i}", f"single_transformer_blocks.{i}"
        _linear(e, f"{o}.linear1", f"{d}.attn.to_qkv_mlp_proj")
        _linear(e, f"{o}.linear2", f"{d}.attn.to_out")
        e.append(_Entry(f"{o}.norm.query_norm.scale", (f"{d}.attn.norm_q.weight",)))
        e.append(_Entry(f"{o}.norm.key_norm.scale", (f"{d}.attn.norm_k.weight",)))
    _linear(e, "final_layer.linear", "proj_out")
    _linear(e, "final_layer.adaLN_modulation.1", "norm_out.linear", "swap")
    return e


def _entries_from_diffusers(family: str, keys: list[str]) -> list[_Entry]:
    if family == "flux2":
        return _flux2_entries(_indices(keys, r"transformer_blocks\.(\d+)\."),
                              _indices(keys, r"single_transformer_blocks\.(\d+)\."))
    if family == "flux":
        return _flux_entries(
            _indices(keys, r"transformer_blocks\.(\d+)\."), _indices(keys, r"single_transformer_blocks\.(\d+)\.")
        )
    if family == "chroma":
        return _chroma_entries(_indices(keys, r"transformer_blocks\.(\d+)\."),
                               _indices(keys, r"single_transformer_blocks\.(\d+)\."),
                               _indices(keys, r"distilled_guidance_layer\.norms\.(\d+)\."))
    if family == "sd3":
        return _sd3_entries(_indices(keys, r"transformer_blocks\.(\d+)\."))
    raise ValueError(f"unknown model family {family!r}; expected one of {sorted(ORIGINAL_LAYOUT)}")


def _entries_from_original(family: str, keys: list[str]) -> list[_Entry]:
    if family == "flux2":
        return _flux2_entries(_indices(keys, r"double_blocks\.(\d+)\."), _indices(keys, r"single_blocks\.(\d+)\."))
    if family == "flux":
        return _flux_entries(_indices(keys, r"double_blocks\.(\d+)\."), _indices(keys, r"single_blocks\.(\d+)\."))
    if family == "chroma":
        return _chroma_entries(_indices(keys, r"double_blocks\.(\d+)\."), _indices(keys, r"single_blocks\.(\d+)\."),
                               _indices(keys, r"distilled_guidance_layer\.norms\.(\d+)\."))
    if family == "sd3":
        return _sd3_entries(_indices(keys, r"joint_blocks\.(\d+)\."))
    raise ValueError(f"unknown model family {family!r}; expected one of {sorted(ORIGINAL_LAYOUT)}")


def _swap_halves(t: Tensor) -> Tensor:
    if t.shape[0] % 2:
        raise ValueError(f"adaLN modulation tensor has odd leading size {tuple(t.shape)}; expected 2 * D")
    a, b = t.chunk(2, dim=0)
    return torch.cat([b, a], dim=0)


def _leftover_error(direction: str, family: str, leftover: list[str]) -> ValueError:
    shown = ", ".join(sorted(leftover)[:8])
    return ValueError(
        f"{direction} ({family}): {len(leftover)} tensors have no place in the {family} layout, e.g. {shown}; "
        "is this the right model family and an unprefixed transformer state dict?"
    )


def diffusers_to_original(state: Mapping[str, Tensor], family: str) -> dict[str, Tensor]:
    """Diffusers transformer state dict (no prefix) -> BFL FLUX / SAI SD3 state dict (no prefix).

    Fused tensors are concatenated on dim 0 in the order the original layout prescribes (q, k, v,
    then the MLP input for FLUX single blocks); ``final_layer.adaLN_modulation.1`` (and SD3's last
    context adaLN) get their halves swapped. Raises ``ValueError`` naming tensors left unmapped or
    fused groups that are incomplete.
    """
    keys = list(state)
    out: dict[str, Tensor] = {}
    used: set[str] = set()
    for entry in _entries_from_diffusers(family, keys):
        present = [k for k in entry.diffusers if k in state]
        if not present:
            continue
        if len(present) != len(entry.diffusers):
            missing = sorted(set(entry.diffusers) - set(present))
            raise ValueError(f"diffusers->{ORIGINAL_LAYOUT[family]}: {entry.original} needs {missing} as well")
        parts = [state[k] for k in entry.diffusers]
        if entry.op == "cat":
            tensor = torch.cat(parts, dim=0)
        elif entry.op == "swap":
            tensor = _swap_halves(parts[0])
        else:
            tensor = parts[0]
        out[entry.original] = tensor
        used.update(entry.diffusers)
    leftover = [k for k in keys if k not in used]
    if leftover:
        raise _leftover_error(f"diffusers->{ORIGINAL_LAYOUT[family]}", family, leftover)
    return out


def original_to_diffusers(state: Mapping[str, Tensor], family: str) -> dict[str, Tensor]:
    """BFL FLUX / SAI SD3 state dict -> diffusers transformer state dict; the exact inverse of
    :func:`diffusers_to_original`. A ``model.diffusion_model.`` / ``diffusion_model.`` prefix is
    stripped. Raises ``ValueError`` on tensors it cannot place or fused tensors that do not split.
    """
    state = {_strip_prefix(k): v for k, v in state.items()}
    keys = list(state)
    out: dict[str, Tensor] = {}
    used: set[str] = set()
    for entry in _entries_from_original(family, keys):
        if entry.original not in state:
            continue
        tensor = state[entry.original]
        if entry.op == "cat":
            sizes = _split_sizes(entry, tensor, state)
            for name, part in zip(entry.diffusers, torch.split(tensor, sizes, dim=0)):
                out[name] = part.clone()
        elif entry.op == "swap":
            out[entry.diffusers[0]] = _swap_halves(tensor)
        else:
            out[entry.diffusers[0]] = tensor
        used.add(entry.original)
    leftover = [k for k in keys if k not in used]
    if leftover:
        raise _leftover_error(f"{ORIGINAL_LAYOUT[family]}->diffusers", family, leftover)
    return out


def _split_sizes(entry: _Entry, tensor: Tensor, state: Mapping[str, Tensor]) -> list[int]:
    n = tensor.shape[0]
    if entry.split == "thirds":
        if n % 3:
            raise ValueError(f"{entry.original} has leading size {n}, not divisible into q, k, v (3 * D)")
        return [n // 3] * 3
    # qkv_mlp: D is the in_features of linear1 (its weight is [3 * D + mlp, D])
    weight_key = entry.original.rsplit(".", 1)[0] + ".weight"
    if weight_key not in state or state[weight_key].dim() != 2:
        raise ValueError(f"cannot split {entry.original}: {weight_key} (shape [3 * D + mlp, D]) is missing")
    d = int(state[weight_key].shape[1])
    if n <= 3 * d:
        raise ValueError(f"{entry.original} has leading size {n}; expected 3 * D + mlp > 3 * {d}")
    return [d, d, d, n - 3 * d]


def original_shapes(diffusers_shapes: Mapping[str, tuple[int, ...]], family: str) -> dict[str, tuple[int, ...]]:
    """Shapes the original layout has for a diffusers model with ``diffusers_shapes`` (meta tensors)."""
    meta = {k: torch.empty(tuple(s), device="meta") for k, s in diffusers_shapes.items()}
    return {k: tuple(v.shape) for k, v in diffusers_to_original(meta, family).items()}


def diffusers_shapes(original: Mapping[str, tuple[int, ...]], family: str) -> dict[str, tuple[int, ...]]:
    """Shapes in diffusers naming of an original-layout model with shapes ``original`` (meta tensors)."""
    meta = {k: torch.empty(tuple(s), device="meta") for k, s in original.items()}
    return {k: tuple(v.shape) for k, v in original_to_diffusers(meta, family).items()}


def lora_target_in_original(module: str, family: str, diffusers_module_shapes: Mapping[str, tuple[int, ...]]) -> tuple[str, int, int] | None:
    """Where a diffusers module's weight lands in the original layout: ``(original weight key,
    row offset, rows)``, or None when the module has no original counterpart.

    ``diffusers_module_shapes`` are the base model's diffusers shapes (to know the fused sizes).
    ComfyUI applies a diffusers-named LoRA to a fused original weight at exactly this slice.
    """
    weight = f"{module}.weight"
    keys = list(diffusers_module_shapes)
    for entry in _entries_from_diffusers(family, keys):
        if weight in entry.diffusers:
            offset = 0
            for name in entry.diffusers:
                rows = diffusers_module_shapes[name][0]
                if name == weight:
                    return entry.original, offset, rows
                offset += rows
    return None
