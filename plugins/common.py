"""Helpers shared by the reward plugins: lazy imports, checkpoint resolution, devices, batching and
tensor preprocessing that reproduces the official (PIL-based) processors on float tensors.

Nothing here downloads: a checkpoint is a local path or an entry already in the local Hugging Face
cache (:mod:`treesdk.hub_cache`). A missing one raises :class:`FileNotFoundError`
naming what was looked for and how to provide it. :class:`WeightsStatus` (``file_status``,
``pretrained_dir_status``) runs the same lookups as presence checks, for ``treesdk plugins``.
"""

from __future__ import annotations

import importlib
import json
import os
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from types import ModuleType
from typing import Any

import torch
from torch import Tensor

from treesdk.dtypes import parse_dtype
from treesdk.hub_cache import hub_cache_root, hub_file, hub_repo_folder, hub_snapshot, is_repo_id
from treesdk.state_dicts import diff_state_dicts

#: OpenAI CLIP normalisation, used by CLIP, open_clip, BLIP (ImageReward), HPS, PickScore.
CLIP_MEAN = (0.48145466, 0.4578275, 0.40821073)
CLIP_STD = (0.26862954, 0.26130258, 0.27577711)

class MissingExtraError(ImportError):
    """An optional dependency of a plugin is not installed."""


def require(module: str, extra: str, plugin: str) -> ModuleType:
    """Import ``module`` or raise :class:`MissingExtraError` naming the extra that installs it.

    Plugins call this inside ``__init__`` so that listing or importing a plugin never needs its
    heavy dependencies.
    """
    try:
        return importlib.import_module(module)
    except ImportError as exc:
        raise MissingExtraError(
            f"reward {plugin!r} needs the Python package {module.split('.')[0]!r}, which could not be "
            f"imported ({type(exc).__name__}: {exc}); install it with: pip install 'treesdk[{extra}]'"
        ) from exc


def resolve_device(device: str | torch.device | None) -> torch.device:
    """``None`` -> ``cuda`` when available, else ``cpu``."""
    if device is None:
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(device)


def resolve_dtype(dtype: str | torch.dtype | None, device: torch.device) -> torch.dtype:
    """``None`` -> float32 (rewards are cheap next to sampling; exact scores matter more)."""
    if dtype is None:
        return torch.float32
    if isinstance(dtype, torch.dtype):
        return dtype
    return parse_dtype(dtype)


def _hf_offline_hint(repo_id: str) -> str:
    return (
        f"download it once on a machine with network access with `hf download {repo_id}` "
        f"(it lands in the Hugging Face cache, {hub_cache_root()}) or pass a local path"
    )


def hf_cache_folder(repo_id: str) -> str:
    """The local Hugging Face cache folder of model ``repo_id`` (where offline lookups read; may not exist)."""
    return str(hub_repo_folder(repo_id))


def resolve_pretrained_dir(name_or_path: str | os.PathLike[str], what: str, option: str) -> Path:
    """A ``save_pretrained`` folder: a local directory, or a repo id found in the local HF cache.

    Never downloads (:func:`treesdk.hub_cache.hub_snapshot`). ``what`` describes the expected content for the
    error message, ``option`` is the constructor keyword the user sets to change it.
    """
    path = Path(os.path.expanduser(str(name_or_path)))
    if path.is_dir():
        if not (path / "config.json").is_file():
            raise FileNotFoundError(
                f"{option}={str(name_or_path)!r} is a directory without config.json; expected {what} "
                "(a folder written by save_pretrained)"
            )
        return path
    if path.exists():
        raise FileNotFoundError(f"{option}={str(name_or_path)!r} is a file; expected {what} (a save_pretrained folder)")
    repo_id = str(name_or_path)
    if not is_repo_id(repo_id):
        raise FileNotFoundError(f"{option}={repo_id!r}: no such directory; expected {what} (a save_pretrained folder or a Hugging Face repo id in the local cache)")
    candidates = (repo_id, *REPO_ALIASES.get(repo_id, ()))  # the hub's old and new names cache apart
    for candidate in candidates:
        found = hub_snapshot(candidate)
        if found is not None:
            return found
    names = " or ".join(repr(c) for c in candidates)
    raise FileNotFoundError(
        f"{option}={repo_id!r}: not a local directory and not in the local Hugging Face cache as {names} "
        f"({' or '.join(hf_cache_folder(c) for c in candidates)}); expected {what}; {_hf_offline_hint(repo_id)}"
    )


#: repo ids the hub renamed: a cache filled under either name is found (``bert-base-uncased`` is
#: ImageReward's tokenizer; downloads today land under ``google-bert/bert-base-uncased``)
REPO_ALIASES: dict[str, tuple[str, ...]] = {
    "bert-base-uncased": ("google-bert/bert-base-uncased",),
    "google-bert/bert-base-uncased": ("bert-base-uncased",),
}


def locate_file(
    path_or_name: str | os.PathLike[str] | None, *, filename: str, repo_id: str | None
) -> tuple[Path | None, list[str]]:
    """The lookup of :func:`resolve_file` without raising: ``(path or None, places looked at)``.

    Order: ``path_or_name`` if given (a file, or a folder holding ``filename``); else ``filename``
    of ``repo_id`` in the local HF cache (:func:`treesdk.hub_cache.hub_file`); else ``$TREESDK_WEIGHTS/filename``.
    Only checks presence: nothing is read or loaded.
    """
    if path_or_name is not None:
        path = Path(os.path.expanduser(str(path_or_name)))
        if path.is_dir():
            path = path / filename
        return (path if path.is_file() else None), [str(path)]
    looked: list[str] = []
    if repo_id is not None:
        cached = hub_file(repo_id, filename)
        if cached is not None:
            return cached, looked
        looked.append(f"{filename} of {repo_id} in the local Hugging Face cache {hf_cache_folder(repo_id)}")
    weights_dir = os.environ.get("TREESDK_WEIGHTS")
    if weights_dir:
        candidate = Path(weights_dir) / filename
        if candidate.is_file():
            return candidate, looked
        looked.append(str(candidate))
    else:
        looked.append(f"$TREESDK_WEIGHTS/{filename} ($TREESDK_WEIGHTS is not set)")
    return None, looked


def resolve_file(
    path_or_name: str | os.PathLike[str] | None,
    *,
    filename: str,
    repo_id: str | None,
    what: str,
    option: str,
) -> Path:
    """A single checkpoint file: ``path_or_name`` if given (a file, or a folder holding ``filename``),
    else ``filename`` from ``repo_id`` in the local HF cache, else the folder ``$TREESDK_WEIGHTS``
    (:func:`locate_file`); a missing file is a :class:`FileNotFoundError` naming where it looked.
    """
    path, looked = locate_file(path_or_name, filename=filename, repo_id=repo_id)
    if path is not None:
        return path
    if path_or_name is not None:
        raise FileNotFoundError(f"{option}={str(path_or_name)!r}: file {looked[0]!r} not found; expected {what}")
    hint = f"; {_hf_offline_hint(repo_id)}" if repo_id else ""
    raise FileNotFoundError(
        f"could not find {what}: looked for {', '.join(looked) or filename!r}; pass {option}=<path to {filename}> "
        f"or put it in $TREESDK_WEIGHTS{hint}"
    )


@dataclass(frozen=True)
class WeightsStatus:
    """Whether a reward's default weights are on disk, as ``treesdk plugins`` shows it.

    ``found``: True / False, or None for a reward that needs no weights. ``looked``: the places
    checked (paths, cache folders). ``detail``: one line for humans. Computed by presence checks
    only: no model is loaded, nothing is downloaded.
    """

    found: bool | None
    looked: list[str] = field(default_factory=list)
    detail: str = ""

    @property
    def label(self) -> str:
        """``found`` / ``missing`` / ``n/a``."""
        return "n/a" if self.found is None else ("found" if self.found else "missing")


def file_status(filename: str, repo_id: str | None) -> WeightsStatus:
    """:class:`WeightsStatus` of the default lookup of :func:`resolve_file` (no explicit path)."""
    path, looked = locate_file(None, filename=filename, repo_id=repo_id)
    if path is not None:
        return WeightsStatus(True, [*looked, str(path)], f"{filename}: {path}")
    return WeightsStatus(False, looked, f"{filename} not found")


def pretrained_dir_status(
    name_or_path: str | os.PathLike[str], what: str, resolve: Callable[..., Path] | None = None
) -> WeightsStatus:
    """:class:`WeightsStatus` of ``resolve(name_or_path)`` (default :func:`resolve_pretrained_dir`: a
    folder, or a repo id in the local HF cache) on a reward's default; reads no weights."""
    path = Path(os.path.expanduser(str(name_or_path)))
    as_repo = not path.exists() and is_repo_id(str(name_or_path))
    where = hf_cache_folder(str(name_or_path)) if as_repo else f"{path.absolute()} (a local folder)"
    try:
        found = resolve(name_or_path) if resolve is not None else resolve_pretrained_dir(name_or_path, what, "model")
    except FileNotFoundError:
        return WeightsStatus(False, [where], f"{name_or_path} not found")
    return WeightsStatus(True, [where], f"{name_or_path}: {found}")


def combine_status(*parts: WeightsStatus) -> WeightsStatus:
    """All of several weight files: found only when every part is found; every place looked at."""
    return WeightsStatus(
        all(p.found for p in parts),
        [place for p in parts for place in p.looked],
        "; ".join(p.detail for p in parts if p.detail),
    )


def load_torch_checkpoint(path: Path, what: str) -> Any:
    """``torch.load`` on CPU with ``weights_only=True``; an unreadable file is a clear error."""
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # noqa: BLE001
        raise ValueError(f"{str(path)!r} is not a readable torch checkpoint ({type(exc).__name__}: {exc}); expected {what}") from exc


def load_state_dict_strict(module: torch.nn.Module, state_dict: dict[str, Tensor], path: Path, what: str) -> None:
    """``load_state_dict(strict=True)`` with an error that names the file and the expected format."""
    if not isinstance(state_dict, dict) or not all(isinstance(v, Tensor) for v in state_dict.values()):
        raise ValueError(f"{str(path)!r} does not hold a state dict of tensors; expected {what}")
    own = module.state_dict()
    diff = diff_state_dicts(own, state_dict)
    missing, unexpected, wrong = diff.missing, diff.unexpected, sorted(diff.wrong_shape)
    if diff:
        parts = []
        if missing:
            parts.append(f"{len(missing)} missing keys (e.g. {missing[:3]})")
        if unexpected:
            parts.append(f"{len(unexpected)} unexpected keys (e.g. {unexpected[:3]})")
        if wrong:
            k = wrong[0]
            parts.append(f"{len(wrong)} shape mismatches (e.g. {k}: file {tuple(state_dict[k].shape)} vs model {tuple(own[k].shape)})")
        raise ValueError(f"{str(path)!r} does not match {what}: " + "; ".join(parts))
    module.load_state_dict(state_dict, strict=True)


def check_inputs(images: Tensor, prompts: Sequence[str], name: str) -> None:
    """Validate the :meth:`RewardModel.score` contract: float ``[B, 3, H, W]`` and B prompts."""
    if not isinstance(images, Tensor) or images.ndim != 4 or images.shape[1] != 3:
        shape = tuple(images.shape) if isinstance(images, Tensor) else type(images).__name__
        raise ValueError(f"reward {name!r}: images must be a float tensor [B, 3, H, W] in [0, 1], got {shape}")
    if not images.is_floating_point():
        raise ValueError(f"reward {name!r}: images must be floating point in [0, 1], got dtype {images.dtype}")
    if isinstance(prompts, str) or len(prompts) != images.shape[0]:
        got = "a single string" if isinstance(prompts, str) else f"{len(prompts)} prompts"
        raise ValueError(f"reward {name!r}: expected {images.shape[0]} prompts (one per image), got {got}")


def batched_features(images: Tensor, batch_size: int, fn: Callable[[Tensor], Tensor]) -> Tensor:
    """Apply ``fn`` (images -> ``[b, D]``) to chunks of at most ``batch_size`` images; float32 ``[B, D]`` on the CPU."""
    with torch.no_grad():
        out = [fn(images[i : i + max(1, int(batch_size))]).detach().float().cpu() for i in range(0, images.shape[0], max(1, int(batch_size)))]
    return torch.cat(out) if out else torch.zeros(0, 0)


def batched_score(
    images: Tensor,
    prompts: Sequence[str],
    batch_size: int,
    fn: Callable[[Tensor, list[str]], Tensor],
) -> Tensor:
    """Apply ``fn`` to chunks of at most ``batch_size`` images; float32 ``[B]`` on the CPU."""
    out = []
    prompts = list(prompts)
    with torch.no_grad():
        for start in range(0, images.shape[0], max(1, int(batch_size))):
            stop = start + max(1, int(batch_size))
            out.append(fn(images[start:stop], prompts[start:stop]).detach().float().reshape(-1).cpu())
    if not out:
        return torch.zeros(0, dtype=torch.float32)
    return torch.cat(out)


def clip_preprocess(
    images: Tensor,
    size: int,
    crop: int | None = None,
    mean: Sequence[float] = CLIP_MEAN,
    std: Sequence[float] = CLIP_STD,
) -> Tensor:
    """CLIP image preprocessing on float tensors in [0, 1]: resize the shortest side to ``size``
    (bicubic with antialiasing, as PIL resizes), center-crop ``crop`` (default ``size``), normalise.

    This is what ``CLIPImageProcessor`` / open_clip's ``preprocess_val`` / BLIP's transform do on
    PIL images, without the round trip through uint8 (generated images are scored as they are).
    Returns ``[B, 3, crop, crop]`` in the input dtype.
    """
    from torchvision.transforms.v2 import functional as TF  # torchvision ships with the `clip` extra

    crop = size if crop is None else crop
    images = images.clamp(0, 1)
    images = TF.resize(images, [size], interpolation=TF.InterpolationMode.BICUBIC, antialias=True)
    images = TF.center_crop(images, [crop, crop])
    mean_t = torch.tensor(mean, dtype=images.dtype, device=images.device).view(1, -1, 1, 1)
    std_t = torch.tensor(std, dtype=images.dtype, device=images.device).view(1, -1, 1, 1)
    return (images - mean_t) / std_t


class HFClip:
    """A transformers ``CLIPModel`` with its tokenizer and image-processor settings, loaded offline.

    ``model`` is a ``save_pretrained`` folder or a repo id in the local HF cache; ``processor`` the
    same for the tokenizer/preprocessor files (defaults to ``model``). Embeddings come back
    L2-normalised, float32, on the model's device.
    """

    def __init__(
        self,
        model: str | os.PathLike[str],
        processor: str | os.PathLike[str] | None,
        device: torch.device,
        dtype: torch.dtype,
        plugin: str,
        what: str = "a transformers CLIPModel",
    ) -> None:
        transformers = require("transformers", "clip", plugin)
        require("torchvision", "clip", plugin)
        model_dir = resolve_pretrained_dir(model, what, "model")
        proc_dir = model_dir if processor is None else resolve_pretrained_dir(processor, "a CLIP processor/tokenizer folder", "processor")
        try:
            self.model = transformers.CLIPModel.from_pretrained(model_dir, local_files_only=True).to(dtype)
        except Exception as exc:  # noqa: BLE001
            raise ValueError(f"{str(model_dir)!r} could not be loaded as {what} ({type(exc).__name__}: {exc})") from exc
        self.model.to(device).eval()
        try:
            self.tokenizer = transformers.AutoTokenizer.from_pretrained(proc_dir, local_files_only=True)
        except Exception as exc:  # noqa: BLE001
            raise FileNotFoundError(
                f"no CLIP tokenizer in {str(proc_dir)!r} ({type(exc).__name__}: {exc}); expected vocab.json/merges.txt "
                "or tokenizer.json (pass processor=<folder or repo id with the tokenizer>)"
            ) from exc
        self.size, self.crop, self.mean, self.std = 224, 224, CLIP_MEAN, CLIP_STD
        config_file = proc_dir / "preprocessor_config.json"
        if config_file.is_file():
            # read the JSON rather than CLIPImageProcessor's attributes, whose types change across versions
            cfg = json.loads(config_file.read_text())
            size = cfg.get("size", 224)
            size = size if isinstance(size, dict) else {"shortest_edge": size}
            self.size = int(size.get("shortest_edge", size.get("height", 224)))
            crop = cfg.get("crop_size", self.size)
            crop = crop if isinstance(crop, dict) else {"height": crop}
            self.crop = int(crop.get("height", self.size)) if cfg.get("do_center_crop", True) else self.size
            self.mean, self.std = tuple(cfg.get("image_mean", CLIP_MEAN)), tuple(cfg.get("image_std", CLIP_STD))
        self.device, self.dtype = device, dtype
        self.max_length = min(int(getattr(self.model.config.text_config, "max_position_embeddings", 77)), 77)

    def to(self, device: torch.device | str) -> None:
        self.device = torch.device(device)
        self.model.to(self.device)

    @staticmethod
    def _features(out: Any) -> Tensor:
        # transformers 4 returns the projected tensor, transformers 5 an output whose pooler_output is it
        return out if isinstance(out, Tensor) else out.pooler_output

    def image_embeds(self, images: Tensor) -> Tensor:
        pixels = clip_preprocess(images.to(self.device, torch.float32), self.size, self.crop, self.mean, self.std)
        feats = self._features(self.model.get_image_features(pixel_values=pixels.to(self.dtype))).float()
        return feats / feats.norm(dim=-1, keepdim=True)

    def text_embeds(self, prompts: Sequence[str]) -> Tensor:
        tokens = self.tokenizer(
            list(prompts), padding=True, truncation=True, max_length=self.max_length, return_tensors="pt"
        ).to(self.device)
        feats = self._features(
            self.model.get_text_features(input_ids=tokens["input_ids"], attention_mask=tokens["attention_mask"])
        ).float()
        return feats / feats.norm(dim=-1, keepdim=True)


class RewardMLP(torch.nn.Module):
    """The 768 -> 1024 -> 128 -> 64 -> 16 -> 1 MLP (with dropouts) of the LAION aesthetic predictor,
    which ImageReward reuses as its reward head. Module indices match both official checkpoints
    (``layers.{0,2,4,6,7}``), so their state dicts load strictly."""

    def __init__(self, input_size: int = 768) -> None:
        super().__init__()
        self.input_size = input_size
        self.layers = torch.nn.Sequential(
            torch.nn.Linear(input_size, 1024),
            torch.nn.Dropout(0.2),
            torch.nn.Linear(1024, 128),
            torch.nn.Dropout(0.2),
            torch.nn.Linear(128, 64),
            torch.nn.Dropout(0.1),
            torch.nn.Linear(64, 16),
            torch.nn.Linear(16, 1),
        )

    def forward(self, x: Tensor) -> Tensor:
        return self.layers(x)
