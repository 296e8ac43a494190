"""``glyphs``: a small flow-matching text-to-image model that draws the quoted word of a prompt.

``a sign that says "OPEN"`` -> a 32x96 grayscale image of the word OPEN. The model was trained by
``examples/pretrain_glyphs.py`` on synthetic renders of :data:`~treesdk_backends.glyphs_data.TRAIN_WORDS`
(17 fonts that ship with matplotlib, random size, position, slant, stroke and shading); its weights
(``weights/glyphs_flow.safetensors``) ship in the package. Held-out words
(:data:`~treesdk_backends.glyphs_data.HELDOUT_WORDS`) were never rendered in training, so the
evaluation set measures whether the model (and RL) generalise to unseen letter combinations. The
conditioning is character level (a letter embedding plus a position embedding per letter), so an
unseen word is a new combination of parts the model knows. ``docs/glyphs.md`` explains the choices.

Conventions (as everywhere in treesdk):

* latent = image scaled to ``[-1, 1]``, shape ``[B, 1, 32, 96]`` (no autoencoder; paper is near +1,
  ink near -1);
* ``x_sigma = (1 - sigma) * x0 + sigma * noise``, sigma in ``[0, 1]`` (1 = pure noise); the network
  predicts ``v = noise - x0``;
* the conditioning is ``{"tokens": int64 [B, MAX_LEN]}`` (0 = padding, 1..26 = A..Z);
  ``NULL_TOKEN`` everywhere is the null prompt (seen with probability 0.1 in training), used for
  classifier-free guidance.

Trainable = the whole network (full fine-tune, about 0.5 M parameters); :meth:`GlyphsBackend.reference`
keeps a frozen copy of the base weights.
"""

from __future__ import annotations

import contextlib
import copy
import json
import os
from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any

import torch
from safetensors import safe_open
from safetensors.torch import load_file
from torch import Tensor

from treesdk.errors import StateDictMismatchError
from treesdk.dtypes import parse_dtype
from treesdk.state_dicts import diff_state_dicts
from treesdk.export_files import Inspection, compare_shapes
from treesdk.interfaces import Cond, VelocityModel
from treesdk.io import atomic_save_safetensors
from treesdk.sde import ode_step, sigma_grid

from .glyphs_features import ink_box_features
from .glyphs_data import FONT_FILES, HELDOUT_WORDS, IMAGE_SHAPE, MAX_LEN, TRAIN_WORDS, clean_render
from .glyphs_net import NULL_TOKEN, GlyphsFlowNet, _ResBlock, encode_word
from .glyphs_prompts import glyphs_prompt, parse_word_prompt

__all__ = [
    "DEFAULT_GUIDANCE_SCALE", "DEFAULT_NUM_STEPS", "WEIGHTS_DIR", "GlyphsBackend", "default_weights_path",
    "sample_glyphs",
]  # fmt: skip

#: Euler ODE steps the shipped model is evaluated with
DEFAULT_NUM_STEPS = 8
#: classifier-free guidance scale used by default (1.0 = plain conditional velocity, one forward)
DEFAULT_GUIDANCE_SCALE = 1.0
#: learning rate suggested to recipes (a 0.5M-parameter full fine-tune)
RECIPE_LR = 1e-4
WEIGHTS_DIR = Path(__file__).resolve().parent / "weights"
FORMAT_KEY, FORMAT_VALUE = "treesdk_format", "glyphs-flow-v1"
_CONFIG_KEY = "glyphs_config"
#: fonts of the reference images (indices into FONT_FILES): upright sans, serif and mono, regular and bold
REFERENCE_FONTS = (0, 1, 4, 5, 8, 9, 11, 12, 14, 15)
#: images per held-out word in :meth:`GlyphsBackend.eval_set` (more than the k = 3 of precision/recall)
EVAL_SEEDS_PER_WORD = 4


def default_weights_path() -> Path:
    """Path of the shipped weights, ``<package>/weights/glyphs_flow.safetensors``."""
    return WEIGHTS_DIR / "glyphs_flow.safetensors"


# ---------------------------------------------------------------------------------------------
# checkpoints


def _read_checkpoint(path: Path) -> tuple[dict[str, Tensor], dict[str, Any], dict[str, str]]:
    """``(state_dict, network config, all metadata)`` of a glyphs flow safetensors file."""
    if not path.is_file():
        raise FileNotFoundError(
            f"glyphs backend weights not found at {path}. Create them with "
            f"`python examples/pretrain_glyphs.py` (writes {default_weights_path()}), export a trained "
            "model with format 'glyphs', or pass model=None for the weights shipped with treesdk."
        )
    try:
        with safe_open(str(path), framework="pt") as handle:
            metadata = dict(handle.metadata() or {})
        state = load_file(str(path))
    except Exception as exc:
        raise ValueError(f"{path} is not a readable safetensors file: {type(exc).__name__}: {exc}") from exc
    if metadata.get(FORMAT_KEY) != FORMAT_VALUE or _CONFIG_KEY not in metadata:
        raise ValueError(
            f"{path} is not a glyphs flow checkpoint: its safetensors metadata must have "
            f"{FORMAT_KEY}={FORMAT_VALUE!r} and {_CONFIG_KEY!r} (the network config as JSON); found "
            f"metadata keys {sorted(metadata)}. Such files are written by examples/pretrain_glyphs.py "
            "and GlyphsBackend.export('glyphs', ...)."
        )
    return state, json.loads(metadata[_CONFIG_KEY]), metadata


def _check_state_keys(expected: Mapping[str, Tensor], state: Mapping[str, Tensor], where: str) -> None:
    diff = diff_state_dicts(expected, state)
    missing, unexpected = diff.missing, diff.unexpected
    if missing or unexpected:
        raise StateDictMismatchError(
            f"{where}: state dict does not match the glyphs network: missing keys {missing[:8]}"
            f"{' ...' if len(missing) > 8 else ''} ({len(missing)} in all), unexpected keys "
            f"{unexpected[:8]}{' ...' if len(unexpected) > 8 else ''} ({len(unexpected)} in all)"
        )
    if diff.wrong_shape:
        key = diff.wrong_shape[0]
        raise ValueError(
            f"{where}: tensor {key!r} has shape {tuple(state[key].shape)}, the network expects {tuple(expected[key].shape)}"
        )


class GlyphsFileLayout:
    """Reads the glyphs backend's native export (``treesdk_format = glyphs-flow-v1`` in the
    metadata; keys = the network's state dict) for ``treesdk export --check``, checked key by key
    against the base glyphs file."""

    def inspect(self, shapes: Mapping[str, tuple[int, ...]], metadata: Mapping[str, str],
                base_shapes: Mapping[str, tuple[int, ...]] | None) -> Inspection | None:
        if metadata.get("treesdk_format") != "glyphs-flow-v1":
            return None
        modules = sorted({k.rsplit(".", 1)[0] for k in shapes})
        problems = compare_shapes(shapes, base_shapes) if base_shapes is not None else []
        return Inspection("glyphs", "glyphs", modules, None, problems)


# ---------------------------------------------------------------------------------------------
# the backend


class GlyphsBackend(VelocityModel):
    """:class:`treesdk.interfaces.VelocityModel` of the built-in text-rendering flow model.

    Args:
        model: path of a glyphs flow safetensors file (from ``examples/pretrain_glyphs.py`` or
            :meth:`export`), or a folder holding ``glyphs_flow.safetensors``; ``None`` loads the
            weights shipped with the package.
        resolution: ``None`` or 32 (the image height in pixels; images are 32x96).
        device: torch device for the network.
        dtype: ``"float32"`` (the tested setting), ``"float64"``, ``"bfloat16"`` or ``"float16"``.
        guidance_scale: classifier-free guidance ``w``: ``v = v_null + w * (v_word - v_null)``;
            1.0 (the default) is the plain conditional velocity, one forward pass.
        shift: static time shift of the sigma grid (:func:`treesdk.sde.sigma_grid`).
    """

    name = "glyphs"
    #: a default run of a few minutes on 2 CPU cores: each iteration samples and OCR-scores 128 leaves
    default_iters = 12
    export_formats = ("glyphs",)
    export_layouts = (GlyphsFileLayout(),)

    def __init__(
        self,
        model: str | os.PathLike[str] | None = None,
        resolution: int | None = None,
        device: str | torch.device = "cpu",
        dtype: str | torch.dtype = "float32",
        guidance_scale: float = DEFAULT_GUIDANCE_SCALE,
        shift: float = 1.0,
    ) -> None:
        if resolution is not None and int(resolution) != IMAGE_SHAPE[0]:
            raise ValueError(
                f"the glyphs backend generates {IMAGE_SHAPE[0]}x{IMAGE_SHAPE[1]} images; resolution must be "
                f"None or {IMAGE_SHAPE[0]}, got {resolution}"
            )
        if isinstance(dtype, str):
            dtype = parse_dtype(dtype, "dtype for the glyphs backend")
        if float(shift) <= 0:
            raise ValueError(f"shift must be > 0, got {shift}")
        self.model_path = Path(model).expanduser() if model is not None else default_weights_path()
        if self.model_path.is_dir():
            self.model_path = self.model_path / "glyphs_flow.safetensors"
        state, config, metadata = _read_checkpoint(self.model_path)
        self._config = dict(config)
        self._source_metadata = metadata
        self.net = GlyphsFlowNet(**config)
        _check_state_keys(self.net.state_dict(), state, str(self.model_path))
        self.net.load_state_dict(state, strict=True)
        self._device = torch.device(device)
        self._dtype = dtype
        self.net.to(device=self._device, dtype=self._dtype).eval()
        self._base = copy.deepcopy(self.net).requires_grad_(False).eval()
        self._use_base = False
        self.guidance_scale = float(guidance_scale)
        self.shift = float(shift)

    # -- facts ---------------------------------------------------------------------------------

    @property
    def latent_shape(self) -> tuple[int, ...]:
        return (1, *IMAGE_SHAPE)

    @property
    def device(self) -> torch.device:
        return self._device

    def describe(self) -> dict[str, Any]:
        return {
            "backend": self.name,
            "model": str(self.model_path),
            "network": dict(self._config),
            "parameters": sum(p.numel() for p in self.net.parameters()),
            "latent_shape": list(self.latent_shape),
            "resolution": IMAGE_SHAPE[0],
            "image_size": list(IMAGE_SHAPE),
            "guidance_scale": self.guidance_scale,
            "shift": self.shift,
            "default_num_steps": DEFAULT_NUM_STEPS,
            "train_words": len(TRAIN_WORDS),
            "heldout_words": len(HELDOUT_WORDS),
            "dtype": str(self._dtype).replace("torch.", ""),
            "device": str(self._device),
        }

    # -- defaults the CLI and the trainer use -----------------------------------------------------

    def default_prompts(self) -> list[str]:
        """Training prompts: every training word, ``a sign that says "WORD"``."""
        return [glyphs_prompt(w) for w in TRAIN_WORDS]

    def default_rewards(self) -> dict[str, float]:
        """Train on PP-OCR's reading of the word (``ocr``)."""
        return {"ocr": 1.0}

    def heldout_rewards(self) -> list[str]:
        """Judge with an independent engine (Tesseract), never trained on."""
        return ["tesseract-ocr"]

    def eval_set(self) -> tuple[list[str], list[int]]:
        """Every other held-out word (31 of 62), four seeds each (1000-1003), fixed for every run:
        four images per word let precision and recall (k = 3 nearest neighbours) be measured per
        word at the cost of two images for each of the 62."""
        words = HELDOUT_WORDS[::2]
        prompts = [glyphs_prompt(w) for w in words for _ in range(EVAL_SEEDS_PER_WORD)]
        seeds = [1000 + s for _ in words for s in range(EVAL_SEEDS_PER_WORD)]
        return prompts, seeds

    def reference_images(self, prompts: Sequence[str]) -> dict[str, Tensor]:
        """Clean renders of each prompt's word in the upright reference fonts
        (:data:`REFERENCE_FONTS`), black on white, ``[M, 3, 32, 96]`` in ``[0, 1]``; prompts naming
        no word are left out."""
        out: dict[str, Tensor] = {}
        for prompt in dict.fromkeys(prompts):
            try:
                word = parse_word_prompt(prompt)
            except ValueError:
                continue
            out[prompt] = torch.stack([clean_render(word, f) for f in REFERENCE_FONTS]).repeat(1, 3, 1, 1)
        return out

    def fidelity_features(self, images: Tensor) -> Tensor:
        """Position- and shade-free letter-shape features (:func:`~treesdk_backends.glyphs_features.ink_box_features`)."""
        return ink_box_features(images)

    def recipe_defaults(self) -> dict[str, Any]:
        """Scale-dependent values for a 0.5M-parameter full fine-tune: lr RECIPE_LR, T = DEFAULT_NUM_STEPS."""
        return {"optim.lr": RECIPE_LR, "steps": DEFAULT_NUM_STEPS}

    # -- sampling ------------------------------------------------------------------------------

    def encode(self, prompts: Sequence[str]) -> Cond:
        """``{"tokens": int64 [B, MAX_LEN]}`` on :attr:`device`; ``ValueError`` for a prompt naming no word."""
        if isinstance(prompts, str):
            raise TypeError("encode takes a sequence of prompts, got a single string; wrap it in a list")
        tokens = [encode_word(parse_word_prompt(p), MAX_LEN) for p in prompts]
        return {"tokens": torch.tensor(tokens, dtype=torch.int64, device=self._device).reshape(len(tokens), MAX_LEN)}

    def velocity(self, x: Tensor, sigma: Tensor, cond: Cond) -> Tensor:
        """``v = noise - x0`` for latents ``x [B, 1, 32, 96]`` at noise levels ``sigma`` (scalar or ``[B]``).

        With ``guidance_scale != 1`` the network runs on ``[x; x]`` with ``[tokens; null]``.
        Returns ``x``'s dtype; differentiable w.r.t. :meth:`trainable_parameters` (inside
        :meth:`reference` it uses the frozen base copy).
        """
        if x.ndim != 4 or tuple(x.shape[1:]) != self.latent_shape:
            raise ValueError(f"glyphs latents must be [B, {', '.join(map(str, self.latent_shape))}], got shape {tuple(x.shape)}")
        if "tokens" not in cond:
            raise KeyError(f"glyphs conditioning needs key 'tokens' (from encode); got keys {sorted(cond)}")
        batch = x.shape[0]
        tokens = cond["tokens"].to(self._device, torch.int64)
        if tokens.shape != (batch, MAX_LEN):
            raise ValueError(f"cond['tokens'] has shape {tuple(tokens.shape)}, expected [{batch}, {MAX_LEN}]")
        sigma = torch.as_tensor(sigma, dtype=torch.float32, device=self._device)
        sigma = sigma.expand(batch) if sigma.ndim == 0 else sigma.reshape(batch)
        net = self._base if self._use_base else self.net
        xin = x.to(self._device, self._dtype)
        if self.guidance_scale == 1.0:
            v = net(xin, sigma, tokens)
        else:
            null = torch.full_like(tokens, NULL_TOKEN)
            both = net(torch.cat([xin, xin]), torch.cat([sigma, sigma]), torch.cat([tokens, null]))
            v = both[batch:] + self.guidance_scale * (both[:batch] - both[batch:])
        return v.to(x.dtype)

    def decode(self, x: Tensor) -> Tensor:
        """``[B, 1, 32, 96]`` latents in ``[-1, 1]`` -> float32 images ``[B, 3, 32, 96]`` in ``[0, 1]`` (clipped)."""
        if x.ndim != 4 or tuple(x.shape[1:]) != self.latent_shape:
            raise ValueError(f"glyphs latents must be [B, {', '.join(map(str, self.latent_shape))}], got shape {tuple(x.shape)}")
        return ((x.float() + 1.0) * 0.5).clamp(0.0, 1.0).repeat(1, 3, 1, 1)

    def sigmas(self, num_steps: int) -> Tensor:
        return sigma_grid(num_steps, self.shift)

    # -- training ------------------------------------------------------------------------------

    def trainable_parameters(self) -> list[torch.nn.Parameter]:
        return list(self.net.parameters())

    def trainable_state_dict(self) -> dict[str, Tensor]:
        """Every network tensor by its module path, detached clones."""
        return {k: v.detach().clone() for k, v in self.net.state_dict().items()}

    def fsdp_modules(self) -> list[torch.nn.Module]:
        """FSDP units: the residual blocks, then the whole network."""
        return [m for m in self.net.modules() if isinstance(m, _ResBlock)] + [self.net]

    def load_trainable_state_dict(self, state: Mapping[str, Tensor]) -> None:
        """Strict inverse of :meth:`trainable_state_dict`."""
        _check_state_keys(self.net.state_dict(), state, "load_trainable_state_dict")
        self.net.load_state_dict({k: v.to(self._device, self._dtype) for k, v in state.items()}, strict=True)

    @contextlib.contextmanager
    def reference(self) -> Iterator[None]:
        """Inside, :meth:`velocity` uses the frozen copy of the weights loaded at construction."""
        previous, self._use_base = self._use_base, True
        try:
            yield
        finally:
            self._use_base = previous

    def train_mode(self, enabled: bool = True) -> None:
        self.net.train(enabled)

    def export(self, fmt: str, path: str, metadata: Mapping[str, str]) -> list[str]:
        """Write the current weights as a glyphs flow safetensors file (a ``.safetensors`` name, or a
        folder that receives ``glyphs_flow.safetensors``); returns ``[file]``."""
        if fmt not in self.export_formats:
            return super().export(fmt, path, metadata)
        target = Path(path)
        if target.suffix != ".safetensors":
            target.mkdir(parents=True, exist_ok=True)
            target = target / "glyphs_flow.safetensors"
        meta = {str(k): str(v) for k, v in metadata.items()}
        meta.update({FORMAT_KEY: FORMAT_VALUE, _CONFIG_KEY: json.dumps(self._config, sort_keys=True)})
        state = {k: v.to(torch.float32) for k, v in self.trainable_state_dict().items()}
        return [str(atomic_save_safetensors(state, target, meta))]


@torch.no_grad()
def sample_glyphs(backend: VelocityModel, prompts: Sequence[str], num_steps: int = DEFAULT_NUM_STEPS, seed: int = 0) -> Tensor:
    """Euler ODE samples over ``backend.sigmas(num_steps)``: images float32 ``[B, 3, 32, 96]`` in ``[0, 1]``
    (initial noise from a CPU generator seeded with ``seed``)."""
    generator = torch.Generator().manual_seed(seed)
    x = torch.randn((len(prompts), *backend.latent_shape), generator=generator).to(backend.device)
    cond = backend.encode(prompts)
    sigmas = backend.sigmas(num_steps)
    for i in range(num_steps):
        s, s_next = float(sigmas[i]), float(sigmas[i + 1])
        x = ode_step(x, backend.velocity(x, torch.full((x.shape[0],), s, device=x.device), cond), s, s_next)
    return backend.decode(x)
