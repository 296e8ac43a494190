"""Reading exported files of the diffusers families back (``treesdk export --check``):
:class:`DiffusersTransformerLayout`, the :class:`treesdk.export_files.Layout` the diffusers backends
declare. The key maps themselves are :mod:`treesdk_backends.keymaps` (FLUX/SD3 original layouts)
and :mod:`treesdk_backends.single_file` (the rename-only single-file layouts).
"""

from __future__ import annotations

import torch

from .keymaps import ORIGINAL_LAYOUT, _strip_prefix, detect_family, diffusers_shapes, is_original_layout, original_shapes
from .single_file import RENAME_LAYOUTS, from_single_file

__all__ = ["COMFYUI_LORA_PREFIXES", "DiffusersTransformerLayout"]

_LORA_SUFFIXES = (
    (".lora_A.weight", "A"),
    (".lora_B.weight", "B"),
    (".lora_down.weight", "A"),
    (".lora_up.weight", "B"),
    (".alpha", "alpha"),
)
#: prefixes ComfyUI's LoRA loader (``comfy/lora.py`` ``model_lora_keys_unet``) maps for FLUX/SD3:
#: diffusers module names behind ``transformer.`` / ``lora_transformer_`` / ``lora_unet_`` (the
#: last two with ``.`` -> ``_``), original names behind ``diffusion_model.`` / ``lora_unet_``.
COMFYUI_LORA_PREFIXES = ("transformer.", "diffusion_model.", "lora_unet_", "lora_transformer_")


def _split_lora_key(key: str) -> tuple[str, str] | None:
    for suffix, kind in _LORA_SUFFIXES:
        if key.endswith(suffix):
            return key[: -len(suffix)], kind
    return None


class DiffusersTransformerLayout:
    """:class:`treesdk.export_files.Layout` for files of the diffusers families (FLUX and SD3 in
    both layouts; the other families, named by the file's ``treesdk.family`` metadata): diffusers LoRA
    (``transformer.<module>.lora_A/B.weight``), ComfyUI-style LoRA (``diffusion_model.<original
    module>`` or ``lora_unet_``/``lora_transformer_`` underscore names), the original BFL/SAI single
    file, and a plain diffusers transformer state dict.

    Base shapes may come in diffusers or original names; they are brought to both with meta
    tensors. A LoRA pair must satisfy ``A: [r, in]``, ``B: [out, r]`` with ``[out, in]`` the
    target weight (for a diffusers module inside a fused original weight, its slice).
    """

    def inspect(self, shapes, metadata, base_shapes):  # noqa: ANN001 - see treesdk.export_files.Layout
        keys = list(shapes)
        lora = any(_split_lora_key(k) for k in keys)
        family = metadata.get("treesdk.family") or None
        if family is not None and family not in ORIGINAL_LAYOUT:
            return self._inspect_diffusers_only(shapes, family, base_shapes, lora, metadata.get("treesdk.format"))
        if family not in ORIGINAL_LAYOUT and base_shapes is not None:
            family = detect_family(list(base_shapes))
        if family not in ORIGINAL_LAYOUT:
            family = detect_family([self._module_of(k) for k in keys] if lora else keys)
        if family is None:
            return None
        from treesdk.export_files import Inspection

        base_diff = base_orig = None
        problems: list[str] = []
        if base_shapes is not None:
            try:
                if is_original_layout(base_shapes):
                    base_orig = {_strip_prefix(k): tuple(v) for k, v in base_shapes.items()}
                    base_diff = diffusers_shapes(base_orig, family)
                else:
                    base_diff = {_strip_prefix(k): tuple(v) for k, v in base_shapes.items()}
                    base_orig = original_shapes(base_diff, family)
            except ValueError as exc:
                problems.append(f"base model does not fit the {family} layout: {exc}")
                base_diff = base_orig = None
        if lora:
            return self._inspect_lora(shapes, family, base_diff, base_orig, problems, Inspection)
        if is_original_layout(keys):
            fmt = ORIGINAL_LAYOUT[family]
            names = {_strip_prefix(k): v for k, v in shapes.items()}
            try:
                diffusers_shapes(names, family)  # fused tensors must split, no stray keys
            except ValueError as exc:
                problems.append(str(exc))
            if base_orig is not None:
                problems += _compare(names, base_orig)
            modules = sorted({k.rsplit(".", 1)[0] for k in names})
            return Inspection(fmt, family, modules, None, problems)
        names = {_strip_prefix(k): v for k, v in shapes.items()}
        if base_diff is not None:
            problems += _compare(names, base_diff)
        modules = sorted({k.rsplit(".", 1)[0] for k in names})
        return Inspection("diffusers-transformer", family, modules, None, problems)

    def _inspect_diffusers_only(self, shapes, family, base_shapes, lora, fmt=None):  # noqa: ANN001
        """A file written by treesdk for a family other than FLUX/SD3 (its ``treesdk.family``
        metadata says which): diffusers names, or a rename-only single-file layout
        (:mod:`treesdk_backends.single_file`, named by ``treesdk.format``), checked against a base
        in diffusers names."""
        from treesdk.export_files import Inspection

        problems: list[str] = []
        base_diff = None
        if base_shapes is not None:
            if is_original_layout(base_shapes):
                problems.append(f"the {family} family has no original layout here: give the base in diffusers names")
            else:
                base_diff = {_strip_prefix(k): tuple(v) for k, v in base_shapes.items()}
        if lora:
            return self._inspect_lora(shapes, family, base_diff, None, problems, Inspection)
        names = {_strip_prefix(k): v for k, v in shapes.items()}
        layout = RENAME_LAYOUTS.get(fmt or "") or {v: k for k, v in ORIGINAL_LAYOUT.items()}.get(fmt or "")
        if layout is not None:  # shapes through meta tensors: fused tensors split like real ones
            meta = {k: torch.empty(tuple(v), device="meta") for k, v in names.items()}
            names = {k: tuple(t.shape) for k, t in from_single_file(meta, layout).items()}
        if base_diff is not None:
            problems += _compare(names, base_diff)
        modules = sorted({k.rsplit(".", 1)[0] for k in names})
        return Inspection(fmt if layout else "diffusers-transformer", family, modules, None, problems)

    @staticmethod
    def _module_of(key: str) -> str:
        parts = _split_lora_key(key)
        return parts[0] if parts else key

    def _inspect_lora(self, shapes, family, base_diff, base_orig, problems, Inspection):  # noqa: ANN001, N803
        pairs: dict[str, dict[str, tuple[int, ...]]] = {}
        fmt = "lora-diffusers"
        for key, shape in shapes.items():
            parts = _split_lora_key(key)
            if parts is None:
                problems.append(f"{key}: not a LoRA tensor (expected .lora_A.weight / .lora_B.weight)")
                continue
            module, kind = parts
            if kind == "alpha":
                problems.append(f"{key}: .alpha key (treesdk folds alpha/r into lora_B; loaders differ on .alpha)")
                continue
            if module.startswith("base_model.model."):
                problems.append(f"{key}: peft 'base_model.model.' prefix, which ComfyUI does not read for FLUX")
                continue
            if not module.startswith(COMFYUI_LORA_PREFIXES):
                problems.append(f"{key}: prefix not read by diffusers/ComfyUI (expected one of {', '.join(COMFYUI_LORA_PREFIXES)})")
                continue
            if not module.startswith("transformer."):
                fmt = "lora-comfyui"
            pairs.setdefault(module, {})[kind] = tuple(shape)
        targets = self._lora_targets(family, base_diff, base_orig)
        ranks: set[int] = set()
        modules: list[str] = []
        for module, pair in sorted(pairs.items()):
            if set(pair) != {"A", "B"}:
                problems.append(f"{module}: has only {sorted(pair)} of the lora_A/lora_B pair")
                continue
            a, b = pair["A"], pair["B"]
            name = _strip_prefix(module)
            modules.append(name)
            if len(a) != 2 or len(b) != 2 or a[0] != b[1]:
                problems.append(f"{module}: lora_A {list(a)} and lora_B {list(b)} are not [r, in] and [out, r]")
                continue
            ranks.add(a[0])
            if targets is None:
                continue
            target = targets.get(module) or targets.get(name)
            if target is None:
                problems.append(f"{module}: no such layer in the base {family} transformer")
            elif (b[0], a[1]) != target:
                problems.append(f"{module}: LoRA delta is [{b[0]}, {a[1]}], the base layer's weight is {list(target)}")
        rank = max(ranks) if ranks else None
        return Inspection(fmt, family, modules, rank, problems)

    @staticmethod
    def _lora_targets(family, base_diff, base_orig):  # noqa: ANN001
        """``{lora module name (every accepted spelling): [out, in]}`` of the base model's 2-D weights."""
        if base_diff is None:
            return None
        targets: dict[str, tuple[int, int]] = {}
        for key, shape in base_diff.items():
            if key.endswith(".weight") and len(shape) == 2:
                module = key[: -len(".weight")]
                targets[f"transformer.{module}"] = shape
                targets[f"lora_transformer_{module.replace('.', '_')}"] = shape
                targets.setdefault(f"lora_unet_{module.replace('.', '_')}", shape)
        for key, shape in (base_orig or {}).items():
            if key.endswith(".weight") and len(shape) == 2:
                module = key[: -len(".weight")]
                targets[f"diffusion_model.{module}"] = shape
                targets[f"lora_unet_{module.replace('.', '_')}"] = shape
        return targets


def _compare(shapes, expected) -> list[str]:  # noqa: ANN001
    from treesdk.state_dicts import compare_shapes

    return compare_shapes(shapes, expected)
