"""Tiny offline pipelines of every supported model family, for tests and for users.

Each family's builder writes a random, seeded pipeline in the real Hugging Face hub layout
(``model_index.json`` plus one folder per component, all written with ``save_pretrained``), small
enough that a transformer call on a 32 px image takes milliseconds on one CPU thread. Load one
exactly as a real checkpoint: ``<Pipeline>.from_pretrained(folder)`` or
``treesdk train --backend diffusers --model folder``. Nothing is downloaded: tokenizers are
trained on the fly from a small corpus (see :mod:`._tokenizers`).

    from treesdk_backends.tiny import FAMILIES, build_tiny
    build_tiny("qwen-image", "/tmp/tiny-qwen")        # same as FAMILIES["qwen-image"](path)

From the shell: ``treesdk tiny --list`` and ``treesdk tiny --family NAME --out DIR``.

:data:`FAMILIES` maps a family name to a :class:`TinyFamily` (callable as ``family(path, seed=0)``);
its :attr:`~TinyFamily.call_kwargs` are the arguments to pass to the pipeline's ``__call__`` to
sample at the tiny size (height, width, text length, frames), which parity tests use.
"""

from __future__ import annotations

import os
import shutil
import tempfile
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ._common import FLUX1_SCHEDULER_CONFIG, TINY_MAX_SEQUENCE_LENGTH, TINY_RESOLUTION
from .chroma import build_tiny_chroma
from .flux import build_tiny_flux, build_tiny_flux_schnell
from .flux2 import build_tiny_flux2_dev, build_tiny_flux2_klein
from .lumina2 import LUMINA2_RESOLUTION, build_tiny_lumina2
from .qwen_image import build_tiny_qwen_image
from .sd3 import build_tiny_sd3
from .wan import TINY_NUM_FRAMES, build_tiny_wan
from .z_image import build_tiny_z_image

__all__ = [
    "FAMILIES",
    "FLUX1_SCHEDULER_CONFIG",
    "TINY_MAX_SEQUENCE_LENGTH",
    "TINY_NUM_FRAMES",
    "TINY_RESOLUTION",
    "TinyFamily",
    "UnknownFamilyError",
    "build_tiny",
    "build_tiny_chroma",
    "build_tiny_flux",
    "build_tiny_flux2_dev",
    "build_tiny_flux2_klein",
    "build_tiny_flux_schnell",
    "build_tiny_lumina2",
    "build_tiny_qwen_image",
    "build_tiny_sd3",
    "build_tiny_wan",
    "build_tiny_z_image",
]


@dataclass(frozen=True)
class TinyFamily:
    """One model family's tiny pipeline.

    Attributes:
        name: the family name (``treesdk tiny --family NAME``).
        builder: ``builder(path, seed) -> Path`` writes the pipeline folder.
        pipeline: the diffusers pipeline class name written to ``model_index.json``.
        description: one line: the real model the layout follows.
        call_kwargs: keyword arguments for ``pipe(prompt, **call_kwargs)`` at the tiny size.
        video: True for text-to-video families (5-D latents ``[B, C, F, h, w]``).
    """

    name: str
    builder: Callable[..., Path]
    pipeline: str
    description: str
    call_kwargs: dict[str, Any] = field(default_factory=dict)
    video: bool = False

    @property
    def backend_defaults(self) -> dict[str, Any]:
        """The backend options of the tiny size (``resolution`` in pixels, text tokens, frames),
        written to the folder's ``treesdk_defaults.json`` so every command runs at it by default."""
        kwargs = dict(self.call_kwargs)
        height, width = kwargs.pop("height"), kwargs.pop("width", None)
        assert width in (None, height), "the diffusers backend samples square images"
        return {"resolution": height, **kwargs}

    def __call__(self, path: str | os.PathLike, seed: int = 0) -> Path:
        """Build the pipeline into ``path`` (new, or an empty folder) and return it.

        The folder is built under a temporary name beside ``path`` (``.NAME.PID.XXXX.tmp``) and
        renamed to ``path`` once complete, so an error or an interrupt never leaves half a pipeline
        there: the temporary folder is removed (one left by a killed process goes at the next build
        of the same name)."""
        from treesdk.io import folder_mode, remove_stale_temps, temp_prefix

        from ..diffusers.folder_defaults import write_folder_defaults

        target = Path(path)
        if target.exists() and (not target.is_dir() or any(target.iterdir())):
            raise FileExistsError(f"{target} exists and is not an empty folder; give a new or empty folder")
        parent = target.parent if str(target.parent) else Path(".")
        parent.mkdir(parents=True, exist_ok=True)
        remove_stale_temps(target)
        tmp = Path(tempfile.mkdtemp(prefix=temp_prefix(target), suffix=".tmp", dir=parent))
        try:
            os.chmod(tmp, folder_mode())  # mkdtemp's 0700 would hide the pipeline from other users
            folder = Path(self.builder(tmp, seed=seed))
            write_folder_defaults(folder, self.backend_defaults)
            if target.is_dir():
                target.rmdir()  # empty (checked above)
            os.rename(tmp, target)
        except BaseException:
            shutil.rmtree(tmp, ignore_errors=True)
            raise
        return target


_SIZE = {"height": TINY_RESOLUTION, "width": TINY_RESOLUTION}
_TEXT = {"max_sequence_length": TINY_MAX_SEQUENCE_LENGTH}

#: every family `treesdk tiny` can build, by name
FAMILIES: dict[str, TinyFamily] = {
    f.name: f
    for f in (
        TinyFamily("flux", build_tiny_flux, "FluxPipeline", "FLUX.1-dev: CLIP + T5, guidance embedding", {**_SIZE, **_TEXT}),
        TinyFamily(
            "flux-schnell", build_tiny_flux_schnell, "FluxPipeline", "FLUX.1-schnell: no guidance, no shift", {**_SIZE, **_TEXT}
        ),
        TinyFamily("sd3", build_tiny_sd3, "StableDiffusion3Pipeline", "SD3.5: 2 CLIP + T5, CFG, shift 3", {**_SIZE, **_TEXT}),
        TinyFamily(
            "flux2-klein", build_tiny_flux2_klein, "Flux2KleinPipeline", "FLUX.2-klein base: Qwen3, CFG", {**_SIZE, **_TEXT}
        ),
        TinyFamily(
            "flux2",
            build_tiny_flux2_dev,
            "Flux2Pipeline",
            "FLUX.2-dev: Mistral3, guidance embedding",
            # FLUX.2's system message takes ~70 of the text tokens
            {**_SIZE, "max_sequence_length": 128},
        ),
        TinyFamily(
            "qwen-image", build_tiny_qwen_image, "QwenImagePipeline", "Qwen-Image: Qwen2.5-VL, true CFG", {**_SIZE, **_TEXT}
        ),
        TinyFamily("z-image", build_tiny_z_image, "ZImagePipeline", "Z-Image-Turbo: Qwen3, shift 3", {**_SIZE, **_TEXT}),
        TinyFamily("chroma", build_tiny_chroma, "ChromaPipeline", "Chroma1-HD: T5, approximator, CFG", {**_SIZE, **_TEXT}),
        TinyFamily(
            "lumina2",
            build_tiny_lumina2,
            "Lumina2Pipeline",
            "Lumina-Image 2.0: Gemma2, CFG",
            # the pipeline's VAE factor is 8 and its system prompt takes ~30 tokens
            {"height": LUMINA2_RESOLUTION, "width": LUMINA2_RESOLUTION, "max_sequence_length": 64},
        ),
        TinyFamily(
            "wan",
            build_tiny_wan,
            "WanPipeline",
            "Wan2.1 T2V: UMT5, 3-D VAE, video",
            {**_SIZE, **_TEXT, "num_frames": TINY_NUM_FRAMES},
            video=True,
        ),
    )
}


class UnknownFamilyError(ValueError):
    """A family name that :data:`FAMILIES` does not know."""


def build_tiny(family: str, path: str | os.PathLike, seed: int = 0) -> Path:
    """Build the tiny pipeline of ``family`` into ``path``; returns the folder."""
    if family not in FAMILIES:
        raise UnknownFamilyError(f"unknown model family {family!r}; known families: {', '.join(FAMILIES)}")
    return FAMILIES[family](path, seed=seed)
