"""Inputs a transformer cannot take: frames, resolution or text beyond its positional tables.

Some transformers hold fixed-size position tables: SD3's ``pos_embed_max_size`` (patches per side),
Wan's ``rope_max_seq_len`` (rotary positions per axis: latent frames, rows, columns), Z-Image's and
Lumina 2's ``axes_lens`` (rotary positions of the text and image axes). Past them diffusers fails
deep inside a forward pass (a reshape or an index error); :func:`check_positional_limits` says so
when the backend is built, before any run folder is written, naming the limit and the largest
input that fits. FLUX-like transformers compute their rotary positions on the fly: no limit.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from treesdk.errors import UserError

__all__ = ["PositionalLimitError", "check_positional_limits"]


class PositionalLimitError(UserError):
    """An input (resolution, frames, text tokens) beyond the transformer's positional tables."""


def _pair(value: Any) -> tuple[int, ...]:
    return tuple(int(v) for v in value) if isinstance(value, Sequence) else (int(value),)


def check_positional_limits(family: str, config: Any, latent_shape: Sequence[int], resolution: int,
                            max_sequence_length: int | None = None, num_frames: int | None = None) -> None:
    """Raise :class:`PositionalLimitError` when ``latent_shape`` (``[C, h, w]`` or ``[C, F, h, w]``,
    latent elements) or ``max_sequence_length`` (text tokens) exceeds a positional table of the
    transformer ``config`` (its ``config`` mapping or object). ``resolution`` is in pixels."""
    get = config.get if hasattr(config, "get") else lambda k, d=None: getattr(config, k, d)
    h, w = int(latent_shape[-2]), int(latent_shape[-1])
    px_per_latent = resolution // h if h else 1
    where = f"{family} transformer"
    if get("pos_embed_max_size") is not None:  # SD3: a learned table of patches per side
        size, patch = int(get("pos_embed_max_size")), _pair(get("patch_size", 2))[-1]
        if h // patch > size:
            raise PositionalLimitError(
                f"--resolution {resolution}: {h // patch} patches per side, but the {where}'s position table "
                f"holds {size} (pos_embed_max_size); use at most {size * patch * px_per_latent} px")
    if get("rope_max_seq_len") is not None and len(latent_shape) == 4:  # Wan: rotary table per axis
        size = int(get("rope_max_seq_len"))
        p_t, p_h, p_w = _pair(get("patch_size", (1, 2, 2)))
        frames = int(latent_shape[1]) // p_t
        if frames > size:
            temporal = max(1, ((num_frames or 1) - 1) // max(1, int(latent_shape[1]) - 1))
            raise PositionalLimitError(
                f"num_frames {num_frames}: {frames} latent frames, but the {where}'s rotary table holds {size} "
                f"per axis (rope_max_seq_len); use at most {(size * p_t - 1) * temporal + 1} frames")
        if h // p_h > size or w // p_w > size:
            raise PositionalLimitError(
                f"--resolution {resolution}: {h // p_h} patches per side, but the {where}'s rotary table holds "
                f"{size} per axis (rope_max_seq_len); use at most {size * p_h * px_per_latent} px")
    if get("axes_lens") is not None:  # Z-Image, Lumina 2: rotary tables of (text/frame, row, column)
        lens = _pair(get("axes_lens"))
        patch = _pair(get("all_patch_size", get("patch_size", 2)))[0]
        if len(lens) == 3 and (h // patch > lens[1] or w // patch > lens[2]):
            raise PositionalLimitError(
                f"--resolution {resolution}: {h // patch} patches per side, but the {where}'s rotary table holds "
                f"{lens[1]} (axes_lens); use at most {lens[1] * patch * px_per_latent} px")
        if max_sequence_length is not None and max_sequence_length >= lens[0]:
            raise PositionalLimitError(
                f"--max-sequence-length {max_sequence_length}: the {where}'s rotary table holds {lens[0]} text "
                f"positions (axes_lens[0]); use at most {lens[0] - 1} (fewer for a family with a system prompt)")
