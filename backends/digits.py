"""``digits``: a small class-conditional flow-matching model of scikit-learn's 8x8 handwritten digits.

It makes every treesdk command work on a fresh CPU-only machine with no download: the weights
(``weights/digits_flow.safetensors``, about 1.6 MB) ship inside the package and were made by
``examples/pretrain_digits.py`` (deterministic, CPU only). The model is
deliberately imperfect at following prompts (it was trained with label noise): with the defaults
(``T = DEFAULT_NUM_STEPS`` Euler ODE steps, guidance ``DEFAULT_GUIDANCE_SCALE``) it draws clean
digits, but the held-out ``digit-evaluator`` reads the *prompted* digit in most, not all, samples
(``weights/digits_flow.json`` records the measured rate), so RL has something to fix.

Conventions (as everywhere in treesdk):

* latent = image scaled to ``[-1, 1]``, shape ``[B, 1, 8, 8]`` (no autoencoder; background is -1);
* ``x_sigma = (1 - sigma) * x0 + sigma * noise``, sigma in ``[0, 1]`` (1 = pure noise); the network
  predicts ``v = noise - x0``;
* prompts name one digit (:func:`treesdk_backends.digits_prompts.parse_digit_prompt`); the
  conditioning is ``{"label": int64 [B]}``; label 10 is the *null* class the network saw with
  probability ``label_dropout`` in training, used for classifier-free guidance.

Trainable = the whole network (full fine-tune). Because it is tiny, :meth:`DigitsBackend.reference`
keeps a frozen copy of the base weights instead of needing a LoRA adapter to switch off.
"""

from __future__ import annotations

import contextlib
import copy
import json
import math
import os
from collections.abc import Callable, Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from safetensors import safe_open
from safetensors.torch import load_file
from torch import Tensor, nn

from treesdk.errors import StateDictMismatchError
from treesdk.dtypes import parse_dtype
from treesdk.state_dicts import diff_state_dicts
from treesdk.export_files import Inspection, compare_shapes
from treesdk.interfaces import Cond, VelocityModel
from treesdk.io import atomic_save_safetensors
from treesdk.sde import ode_step, sigma_grid

from .digits_prompts import DIGIT_WORDS, digit_prompt, parse_digit_prompt

__all__ = [
    "DEFAULT_GUIDANCE_SCALE",
    "DEFAULT_NUM_STEPS",
    "NULL_LABEL",
    "WEIGHTS_DIR",
    "DigitsBackend",
    "DigitsFlowNet",
    "default_weights_path",
    "evaluate_samples",
    "parse_digit_prompt",
    "sample_digits",
]

#: Euler ODE steps the shipped model is evaluated with (``sigmas(DEFAULT_NUM_STEPS)``).
DEFAULT_NUM_STEPS = 10
#: classifier-free guidance scale used by default (1.0 = plain conditional velocity, one forward).
DEFAULT_GUIDANCE_SCALE = 1.0
#: learning rate suggested to recipes (see DigitsBackend.recipe_defaults)
RECIPE_LR = 1e-4
#: label index of the unconditional ("null") class used for classifier-free guidance.
NULL_LABEL = 10
#: folder of the shipped weights
WEIGHTS_DIR = Path(__file__).resolve().parent / "weights"
#: safetensors metadata key that marks a digits flow checkpoint, and its value
FORMAT_KEY, FORMAT_VALUE = "treesdk_format", "digits-flow-v1"
_CONFIG_KEY = "digits_config"


def default_weights_path() -> Path:
    """Path of the shipped weights, ``<package>/weights/digits_flow.safetensors``."""
    return WEIGHTS_DIR / "digits_flow.safetensors"


# ---------------------------------------------------------------------------------------------
# the network


def sigma_embedding(sigma: Tensor, dim: int) -> Tensor:
    """Sinusoidal features of ``1000 * sigma``: ``[B] -> [B, dim]`` (as DDPM's timestep embedding)."""
    half = dim // 2
    freqs = torch.exp(-math.log(10000.0) * torch.arange(half, dtype=torch.float32, device=sigma.device) / half)
    angles = 1000.0 * sigma.float()[:, None] * freqs[None, :]
    return torch.cat([torch.cos(angles), torch.sin(angles)], dim=1)


class _ResBlock(nn.Module):
    """GroupNorm-SiLU-conv residual block with FiLM (scale, shift) from the embedding.

    GroupNorm (never BatchNorm) keeps every sample independent of the rest of the batch.
    """

    def __init__(self, cin: int, cout: int, emb_dim: int, groups: int = 8) -> None:
        super().__init__()
        self.norm1 = nn.GroupNorm(groups, cin)
        self.conv1 = nn.Conv2d(cin, cout, 3, padding=1)
        self.film = nn.Linear(emb_dim, 2 * cout)
        self.norm2 = nn.GroupNorm(groups, cout)
        self.conv2 = nn.Conv2d(cout, cout, 3, padding=1)
        self.skip = nn.Conv2d(cin, cout, 1) if cin != cout else nn.Identity()

    def forward(self, x: Tensor, emb: Tensor) -> Tensor:
        h = self.conv1(F.silu(self.norm1(x)))
        scale, shift = self.film(F.silu(emb))[:, :, None, None].chunk(2, dim=1)
        h = self.norm2(h) * (1.0 + scale) + shift
        h = self.conv2(F.silu(h))
        return h + self.skip(x)


class DigitsFlowNet(nn.Module):
    """A two-level conv U-Net on ``[B, 1, 8, 8]`` with sigma and class embeddings.

    8x8 (``channels``) -> 4x4 (``2 * channels``) -> mid -> back up with skip connections. The class
    embedding has ``num_classes + 1`` rows; the last one is the null class for guidance.

    ``forward(x [B,1,8,8], sigma [B] in [0,1], label [B] int64) -> v [B,1,8,8]``.
    """

    def __init__(self, channels: int = 32, emb_dim: int = 128, num_classes: int = 10) -> None:
        super().__init__()
        self.config = {"channels": channels, "emb_dim": emb_dim, "num_classes": num_classes}
        c = channels
        self.emb_dim = emb_dim
        self.sigma_mlp = nn.Sequential(nn.Linear(emb_dim, emb_dim), nn.SiLU(), nn.Linear(emb_dim, emb_dim))
        self.label_emb = nn.Embedding(num_classes + 1, emb_dim)
        self.inp = nn.Conv2d(1, c, 3, padding=1)
        self.down1 = _ResBlock(c, c, emb_dim)
        self.down2 = _ResBlock(c, 2 * c, emb_dim)
        self.mid = _ResBlock(2 * c, 2 * c, emb_dim)
        self.up2 = _ResBlock(4 * c, 2 * c, emb_dim)
        self.up1 = _ResBlock(3 * c, c, emb_dim)
        self.out_norm = nn.GroupNorm(8, c)
        self.out = nn.Conv2d(c, 1, 3, padding=1)
        nn.init.zeros_(self.out.weight)
        nn.init.zeros_(self.out.bias)

    def forward(self, x: Tensor, sigma: Tensor, label: Tensor) -> Tensor:
        emb = self.sigma_mlp(sigma_embedding(sigma, self.emb_dim).to(x.dtype)) + self.label_emb(label)
        h0 = self.inp(x)
        h1 = self.down1(h0, emb)  # 8x8, c
        h2 = self.down2(F.avg_pool2d(h1, 2), emb)  # 4x4, 2c
        h = self.mid(h2, emb)
        h = self.up2(torch.cat([h, h2], dim=1), emb)  # 4x4, 2c
        h = F.interpolate(h, scale_factor=2.0, mode="nearest")
        h = self.up1(torch.cat([h, h1], dim=1), emb)  # 8x8, c
        return self.out(F.silu(self.out_norm(h)))


# ---------------------------------------------------------------------------------------------
# checkpoints


def _read_checkpoint(path: Path) -> tuple[dict[str, Tensor], dict[str, Any], dict[str, str]]:
    """``(state_dict, network config, all metadata)`` of a digits flow safetensors file."""
    if not path.is_file():
        raise FileNotFoundError(
            f"digits backend weights not found at {path}. Create them with "
            f"`python examples/pretrain_digits.py` (writes {default_weights_path()}), export a trained "
            "model with format 'digits', or pass model=None for the weights shipped with treesdk."
        )
    try:
        with safe_open(str(path), framework="pt") as handle:
            metadata = dict(handle.metadata() or {})
        state = load_file(str(path))
    except Exception as exc:
        raise ValueError(f"{path} is not a readable safetensors file: {type(exc).__name__}: {exc}") from exc
    if metadata.get(FORMAT_KEY) != FORMAT_VALUE or _CONFIG_KEY not in metadata:
        raise ValueError(
            f"{path} is not a digits flow checkpoint: its safetensors metadata must have "
            f"{FORMAT_KEY}={FORMAT_VALUE!r} and {_CONFIG_KEY!r} (the network config as JSON); found "
            f"metadata keys {sorted(metadata)}. Such files are written by examples/pretrain_digits.py "
            "and DigitsBackend.export('digits', ...)."
        )
    return state, json.loads(metadata[_CONFIG_KEY]), metadata


def _check_state_keys(expected: Mapping[str, Tensor], state: Mapping[str, Tensor], where: str) -> None:
    diff = diff_state_dicts(expected, state)
    missing, unexpected = diff.missing, diff.unexpected
    if missing or unexpected:
        raise StateDictMismatchError(
            f"{where}: state dict does not match the digits network: missing keys {missing[:8]}"
            f"{' ...' if len(missing) > 8 else ''} ({len(missing)} in all), unexpected keys "
            f"{unexpected[:8]}{' ...' if len(unexpected) > 8 else ''} ({len(unexpected)} in all)"
        )
    if diff.wrong_shape:
        key = diff.wrong_shape[0]
        raise ValueError(
            f"{where}: tensor {key!r} has shape {tuple(state[key].shape)}, the network expects {tuple(expected[key].shape)}"
        )


class DigitsFileLayout:
    """Reads the digits backend's native export (``treesdk_format = digits-flow-v1`` in the
    metadata; keys = the network's state dict) for ``treesdk export --check``, checked key by key
    against the base digits file."""

    def inspect(self, shapes: Mapping[str, tuple[int, ...]], metadata: Mapping[str, str],
                base_shapes: Mapping[str, tuple[int, ...]] | None) -> Inspection | None:
        if metadata.get("treesdk_format") != "digits-flow-v1":
            return None
        modules = sorted({k.rsplit(".", 1)[0] for k in shapes})
        problems = compare_shapes(shapes, base_shapes) if base_shapes is not None else []
        return Inspection("digits", "digits", modules, None, problems)


# ---------------------------------------------------------------------------------------------
# the backend


class DigitsBackend(VelocityModel):
    """:class:`treesdk.interfaces.VelocityModel` of the built-in digits flow model.

    Args:
        model: path of a digits flow safetensors file (from ``examples/pretrain_digits.py`` or
            :meth:`export`), or a folder holding ``digits_flow.safetensors``; ``None`` loads the
            weights shipped with the package.
        resolution: ``None`` or 8 (pixels); the model only knows 8x8.
        device: torch device for the network.
        dtype: ``"float32"`` (recommended, the tested setting), ``"float64"``, ``"bfloat16"`` or
            ``"float16"``, or a ``torch.dtype``.
        guidance_scale: classifier-free guidance ``w``: ``v = v_null + w * (v_label - v_null)``;
            1.0 (the default) means the plain conditional velocity with one forward pass.
        shift: static time shift of the sigma grid (:func:`treesdk.sde.sigma_grid`).
    """

    name = "digits"
    #: the DiffusionNFT objective on the leaves of a TreeGRPO-style tree (``treesdk.recipes.frontier.tree_nft``):
    #: in 18 iterations it gains +0.29 held-out on 1000 fresh samples while keeping precision above
    #: the base model's and recall of the real digits above 0.6 (``benchmarks/digits_default_run.py``);
    #: ``--algo treegrpo`` runs the paper's TreeGRPO, ``--algo treegrpo-kl`` the previous default
    default_recipe = "tree-nft"
    default_iters = 18
    export_formats = ("digits",)
    export_layouts = (DigitsFileLayout(),)

    def __init__(
        self,
        model: str | os.PathLike[str] | None = None,
        resolution: int | None = None,
        device: str | torch.device = "cpu",
        dtype: str | torch.dtype = "float32",
        guidance_scale: float = DEFAULT_GUIDANCE_SCALE,
        shift: float = 1.0,
    ) -> None:
        if resolution is not None and int(resolution) != 8:
            raise ValueError(f"the digits backend generates 8x8 images; resolution must be None or 8, got {resolution}")
        if isinstance(dtype, str):
            dtype = parse_dtype(dtype, "dtype for the digits backend")
        if float(shift) <= 0:
            raise ValueError(f"shift must be > 0, got {shift}")
        self.model_path = Path(model).expanduser() if model is not None else default_weights_path()
        if self.model_path.is_dir():  # an export folder
            self.model_path = self.model_path / "digits_flow.safetensors"
        state, config, metadata = _read_checkpoint(self.model_path)
        self._config = dict(config)
        self._source_metadata = metadata
        self.net = DigitsFlowNet(**config)
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
        return (1, 8, 8)

    @property
    def device(self) -> torch.device:
        return self._device

    @property
    def num_classes(self) -> int:
        return int(self._config["num_classes"])

    def describe(self) -> dict[str, Any]:
        return {
            "backend": self.name,
            "model": str(self.model_path),
            "network": dict(self._config),
            "parameters": sum(p.numel() for p in self.net.parameters()),
            "latent_shape": list(self.latent_shape),
            "resolution": 8,
            "guidance_scale": self.guidance_scale,
            "shift": self.shift,
            "default_num_steps": DEFAULT_NUM_STEPS,
            "dtype": str(self._dtype).replace("torch.", ""),
            "device": str(self._device),
        }

    # -- defaults the CLI and the trainer use -----------------------------------------------------

    def default_prompts(self) -> list[str]:
        """Training prompts: every digit, as a numeral and as a word ("the digit seven")."""
        return [digit_prompt(d) for d in range(10)] + [f"the digit {DIGIT_WORDS[d]}" for d in range(10)]

    def default_rewards(self) -> dict[str, float]:
        """Train on the digit classifier (probability of the prompted digit)."""
        return {"digit-classifier": 1.0}

    def heldout_rewards(self) -> list[str]:
        """The evaluator was trained on the other half of the data: it shows reward hacking."""
        return ["digit-evaluator"]

    def eval_set(self) -> tuple[list[str], list[int]]:
        """10 seeds for each digit (100 images), seeds 1000..1009, fixed for every run."""
        prompts = [digit_prompt(d) for d in range(10) for _ in range(10)]
        seeds = [1000 + s for _ in range(10) for s in range(10)]
        return prompts, seeds

    def reference_images(self, prompts: Sequence[str]) -> dict[str, Tensor]:
        """The real digits of each prompt's class (scikit-learn's 1797, the data the model was
        trained on; about 180 per digit), as images ``[M, 3, 8, 8]`` in ``[0, 1]``."""
        from .digits_data import load_digit_images

        images, labels = load_digit_images("all")
        out: dict[str, Tensor] = {}
        for prompt in dict.fromkeys(prompts):
            try:
                digit = parse_digit_prompt(prompt)
            except ValueError:
                continue  # a prompt naming no single digit has no references
            out[prompt] = images[labels == digit].repeat(1, 3, 1, 1)
        return out

    def recipe_defaults(self) -> dict[str, Any]:
        """Scale-dependent values for a 0.4M-parameter full fine-tune (the papers' lr 1e-5 is for
        multi-billion-parameter transformers): lr RECIPE_LR, T = 10."""
        return {"optim.lr": RECIPE_LR, "steps": DEFAULT_NUM_STEPS}

    # -- sampling ------------------------------------------------------------------------------

    def encode(self, prompts: Sequence[str]) -> Cond:
        """``{"label": int64 [B]}`` on :attr:`device`; ``ValueError`` for a prompt naming no single digit."""
        if isinstance(prompts, str):
            raise TypeError("encode takes a sequence of prompts, got a single string; wrap it in a list")
        labels = [parse_digit_prompt(p) for p in prompts]
        return {"label": torch.tensor(labels, dtype=torch.int64, device=self._device)}

    def velocity(self, x: Tensor, sigma: Tensor, cond: Cond) -> Tensor:
        """``v = noise - x0`` for latents ``x [B, 1, 8, 8]`` at noise levels ``sigma`` (scalar or ``[B]``).

        With ``guidance_scale != 1`` the network runs on ``[x; x]`` with ``[label; null]`` and returns
        ``v_null + w * (v_label - v_null)``. Returns ``x``'s dtype; differentiable w.r.t.
        :meth:`trainable_parameters` when gradients are enabled (inside :meth:`reference` it uses
        the frozen base copy instead).
        """
        if x.ndim != 4 or tuple(x.shape[1:]) != self.latent_shape:
            raise ValueError(f"digits latents must be [B, 1, 8, 8], got shape {tuple(x.shape)}")
        if "label" not in cond:
            raise KeyError(f"digits conditioning needs key 'label' (from encode); got keys {sorted(cond)}")
        batch = x.shape[0]
        label = cond["label"].to(self._device, torch.int64)
        if label.shape != (batch,):
            raise ValueError(f"cond['label'] has shape {tuple(label.shape)}, expected [{batch}]")
        sigma = torch.as_tensor(sigma, dtype=torch.float32, device=self._device)
        sigma = sigma.expand(batch) if sigma.ndim == 0 else sigma.reshape(batch)
        net = self._base if self._use_base else self.net
        xin = x.to(self._device, self._dtype)
        if self.guidance_scale == 1.0:
            v = net(xin, sigma, label)
        else:
            null = torch.full_like(label, NULL_LABEL)
            both = net(torch.cat([xin, xin]), torch.cat([sigma, sigma]), torch.cat([label, null]))
            v_cond, v_null = both[:batch], both[batch:]
            v = v_null + self.guidance_scale * (v_cond - v_null)
        return v.to(x.dtype)

    def decode(self, x: Tensor) -> Tensor:
        """``[B, 1, 8, 8]`` latents in ``[-1, 1]`` -> float32 images ``[B, 3, 8, 8]`` in ``[0, 1]`` (clipped)."""
        if x.ndim != 4 or tuple(x.shape[1:]) != self.latent_shape:
            raise ValueError(f"digits latents must be [B, 1, 8, 8], got shape {tuple(x.shape)}")
        return ((x.float() + 1.0) * 0.5).clamp(0.0, 1.0).repeat(1, 3, 1, 1)

    def sigmas(self, num_steps: int) -> Tensor:
        return sigma_grid(num_steps, self.shift)

    # -- training ------------------------------------------------------------------------------

    def trainable_parameters(self) -> list[torch.nn.Parameter]:
        return list(self.net.parameters())

    def trainable_state_dict(self) -> dict[str, Tensor]:
        """Every network tensor by its module path (e.g. ``down1.conv1.weight``), detached clones."""
        return {k: v.detach().clone() for k, v in self.net.state_dict().items()}

    def fsdp_modules(self) -> list[torch.nn.Module]:
        """FSDP units for ``--fsdp``: the five residual blocks, then the whole network (the root
        holds the embeddings and the in/out convolutions). The frozen reference copy is not sharded."""
        return [m for m in self.net.modules() if isinstance(m, _ResBlock)] + [self.net]

    def load_trainable_state_dict(self, state: Mapping[str, Tensor]) -> None:
        """Strict inverse of :meth:`trainable_state_dict`: ``KeyError`` listing missing/unexpected keys."""
        _check_state_keys(self.net.state_dict(), state, "load_trainable_state_dict")
        self.net.load_state_dict({k: v.to(self._device, self._dtype) for k, v in state.items()}, strict=True)

    @contextlib.contextmanager
    def reference(self) -> Iterator[None]:
        """Inside, :meth:`velocity` uses the frozen copy of the weights loaded at construction.

        The network is about 0.4 M parameters, so a second copy (about 1.6 MB) is cheaper than
        anything clever; it never receives gradients.
        """
        previous, self._use_base = self._use_base, True
        try:
            yield
        finally:
            self._use_base = previous

    def train_mode(self, enabled: bool = True) -> None:
        self.net.train(enabled)

    def export(self, fmt: str, path: str, metadata: Mapping[str, str]) -> list[str]:
        """Write the current weights as a digits flow safetensors file; returns ``[file]``.

        ``path`` is either a ``.safetensors`` file name or a folder (created if needed) that receives
        ``digits_flow.safetensors``. ``metadata`` (strings) is stored in the file next to the format
        marker and network config; ``DigitsBackend(model=file)`` loads it back.
        """
        if fmt not in self.export_formats:
            return super().export(fmt, path, metadata)
        target = Path(path)
        if target.suffix != ".safetensors":
            target.mkdir(parents=True, exist_ok=True)
            target = target / "digits_flow.safetensors"
        meta = {str(k): str(v) for k, v in metadata.items()}
        meta.update({FORMAT_KEY: FORMAT_VALUE, _CONFIG_KEY: json.dumps(self._config, sort_keys=True)})
        state = {k: v.to(torch.float32) for k, v in self.trainable_state_dict().items()}
        return [str(atomic_save_safetensors(state, target, meta))]


def save_digits_checkpoint(net: DigitsFlowNet, path: str | os.PathLike[str], metadata: Mapping[str, str]) -> str:
    """Write ``net`` as a digits flow checkpoint (what :class:`DigitsBackend` loads); returns the path."""
    meta = {str(k): str(v) for k, v in metadata.items()}
    meta.update({FORMAT_KEY: FORMAT_VALUE, _CONFIG_KEY: json.dumps(net.config, sort_keys=True)})
    state = {k: v.detach().to(torch.float32) for k, v in net.state_dict().items()}
    return str(atomic_save_safetensors(state, path, meta))


# ---------------------------------------------------------------------------------------------
# sampling and evaluation helpers (pretraining script and tests share them)


@torch.no_grad()
def sample_digits(
    backend: VelocityModel, prompts: Sequence[str], num_steps: int = DEFAULT_NUM_STEPS, seed: int = 0
) -> Tensor:
    """Euler ODE samples over ``backend.sigmas(num_steps)``: images float32 ``[B, 3, 8, 8]`` in ``[0, 1]``.

    The initial noise is ``torch.randn`` from a CPU generator seeded with ``seed`` (so the result
    does not depend on the device), then moved to the backend's device.
    """
    generator = torch.Generator().manual_seed(seed)
    x = torch.randn((len(prompts), *backend.latent_shape), generator=generator).to(backend.device)
    cond = backend.encode(prompts)
    sigmas = backend.sigmas(num_steps)
    for i in range(num_steps):
        s, s_next = float(sigmas[i]), float(sigmas[i + 1])
        v = backend.velocity(x, torch.full((x.shape[0],), s, device=x.device), cond)
        x = ode_step(x, v, s, s_next)
    return backend.decode(x)


def evaluate_samples(
    backend: VelocityModel,
    predict: Callable[[Tensor], Tensor],
    per_digit: int = 100,
    num_steps: int = DEFAULT_NUM_STEPS,
    seed: int = 0,
) -> dict[str, Any]:
    """Sample ``per_digit`` images of every digit (prompts ``"a handwritten digit d"``, digit-major)
    with :func:`sample_digits` and classify them with ``predict(images [B,3,8,8]) -> int64 [B]``.

    Returns ``{"accuracy": float, "per_digit": [10 floats], "samples": 10 * per_digit,
    "num_steps": ..., "seed": ...}``.
    """
    labels = torch.arange(10).repeat_interleave(per_digit)
    images = sample_digits(backend, [digit_prompt(int(d)) for d in labels], num_steps=num_steps, seed=seed)
    correct = (predict(images).cpu() == labels).float()
    return {
        "accuracy": float(correct.mean()),
        "per_digit": [round(float(c), 4) for c in correct.view(10, per_digit).mean(1)],
        "samples": int(labels.numel()),
        "num_steps": num_steps,
        "seed": seed,
    }
