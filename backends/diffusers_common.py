"""The training plumbing of the generic diffusers backend (:mod:`treesdk_backends.diffusers`).

* Finding a checkpoint: a local folder in the Hugging Face hub layout, or a repo id resolved in the
  local HF cache (:mod:`treesdk.hub_cache`). Weights are never downloaded; a missing or partial
  checkpoint raises :class:`CheckpointNotFoundError` naming the missing part, the expected layout and
  how to provide it.
* LoRA through peft, as diffusers' training scripts do it (``transformer.add_adapter(LoraConfig)``,
  LoRA weights upcast to float32), or a full fine-tune; gradient checkpointing; the reference policy
  by disabling the adapter; trainable state dicts under peft's names
  (``get_peft_model_state_dict``: ``transformer_blocks.0.attn.to_q.lora_A.weight``, ...).

A model family's maths (packing, CFG, shifts) lives in its adapter
(:mod:`treesdk_backends.diffusers.families`); what is the same for every family lives here and in
:class:`treesdk_backends.diffusers.DiffusersFlowBackend`.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
from collections import OrderedDict
from collections.abc import Callable, Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from treesdk.errors import StateDictMismatchError
from treesdk.state_dicts import diff_state_dicts
from treesdk.dtypes import parse_dtype as _parse_dtype
from treesdk.hub_cache import hub_repo_folder, hub_snapshot
from treesdk.interfaces import VelocityModel

from .export_layouts import DiffusersTransformerLayout

__all__ = [
    "CheckpointNotFoundError",
    "DiffusersBackend",
    "resolve_checkpoint",
    "check_layout",
    "parse_dtype",
    "parse_device",
    "dtype_kwargs",
]

#: what the diffusers pipelines run in
_DTYPES = (torch.bfloat16, torch.float32, torch.float16)


class CheckpointNotFoundError(FileNotFoundError):
    """A checkpoint folder or local-cache entry is missing or incomplete."""


def parse_dtype(dtype: str | torch.dtype) -> torch.dtype:
    """``"bfloat16"``/``"bf16"``/``"float32"``/``"fp32"``/``"float16"``/``"fp16"`` or a torch dtype
    (:mod:`treesdk.dtypes`)."""
    return _parse_dtype(dtype, allowed=_DTYPES)


def parse_device(device: str | torch.device | None) -> torch.device:
    """``None`` -> ``cuda`` when available, else ``cpu``."""
    if device is None:
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(device)


def dtype_kwargs(dtype: torch.dtype) -> dict[str, torch.dtype]:
    """The ``from_pretrained`` keyword for ``dtype``: ``dtype=`` in diffusers that have it
    (``torch_dtype`` is deprecated there), ``torch_dtype=`` in older ones, which ignore ``dtype``."""
    try:
        from diffusers.utils.deprecation_utils import _resolve_dtype  # noqa: F401 - present with `dtype=`
    except ImportError:
        return {"torch_dtype": dtype}
    return {"dtype": dtype}


# ---------------------------------------------------------------------------------------------
# checkpoints

_TOKENIZER_FILES = ("tokenizer.json", "vocab.json", "spiece.model", "tokenizer_config.json")
_WEIGHT_SUFFIXES = (".safetensors", ".bin")


def _how_to_provide(repo_id: str) -> str:
    return (
        "treesdk never downloads weights. On a machine with network access run\n"
        f"    hf download {repo_id} --local-dir PATH\n"
        "(gated models need the licence accepted on huggingface.co and `hf auth login` first), "
        "copy PATH here and pass --model PATH (Python: model=PATH); or fill the local Hugging Face cache "
        f"with `hf download {repo_id}` and pass model={repo_id!r}."
    )


def _layout_text(components: Sequence[str]) -> str:
    lines = ["model_index.json"] + [f"{name}/" for name in components]
    return "expected the diffusers hub layout: " + ", ".join(lines)


def _component_problem(root: Path, name: str) -> str | None:
    """First missing file of component ``name`` under ``root`` (relative path), or None."""
    folder = root / name
    if not folder.is_dir():
        return f"{name}/"
    if name.startswith("scheduler"):
        return None if (folder / "scheduler_config.json").is_file() else f"{name}/scheduler_config.json"
    if name.startswith("tokenizer"):
        if any((folder / f).is_file() for f in _TOKENIZER_FILES):
            return None
        return f"{name}/tokenizer.json (or vocab.json/spiece.model)"
    if not (folder / "config.json").is_file():
        return f"{name}/config.json"
    # weights: sharded (an index naming its shards) or single files; is_file() follows the HF
    # cache's symlinks, so a snapshot whose blob never finished downloading counts as missing
    indexes = sorted(folder.glob("*.index.json"))
    for index in indexes:
        try:
            shards = set(json.loads(index.read_text())["weight_map"].values())
        except (OSError, ValueError, KeyError) as exc:
            return f"{name}/{index.name} (unreadable: {exc})"
        for shard in sorted(shards):
            if not (folder / shard).is_file():
                return f"{name}/{shard}"
    if indexes:
        return None
    if any(p.is_file() and p.name.endswith(_WEIGHT_SUFFIXES) for p in folder.iterdir()):
        return None
    return f"{name}/*.safetensors (weights)"


def check_layout(root: str | os.PathLike, components: Sequence[str], repo_id: str, what: str) -> Path:
    """Check that ``root`` holds a complete diffusers pipeline folder; return it as a Path.

    Args:
        root: the folder.
        components: sub-folders the pipeline needs (``transformer``, ``vae``, ...).
        repo_id: the hub repository the layout comes from (named in the error's instructions).
        what: model name for messages, e.g. ``"FLUX.1-dev"``.

    Raises:
        CheckpointNotFoundError: naming the first missing part (``transformer/config.json``), the
            expected layout and how to provide it.
    """
    path = Path(root).expanduser()
    if not path.exists():
        raise CheckpointNotFoundError(
            f"{what} checkpoint folder {str(path)!r} does not exist; {_layout_text(components)}.\n"
            + _how_to_provide(repo_id)
        )
    if not path.is_dir():
        raise CheckpointNotFoundError(f"{what} checkpoint {str(path)!r} is a file, expected a folder; "
                                      f"{_layout_text(components)}.\n" + _how_to_provide(repo_id))
    missing = [] if (path / "model_index.json").is_file() else ["model_index.json"]
    missing += [p for p in (_component_problem(path, name) for name in components) if p is not None]
    if missing:
        raise CheckpointNotFoundError(
            f"{what} checkpoint at {str(path)!r} is incomplete: missing {', '.join(missing)}; "
            f"{_layout_text(components)}.\n" + _how_to_provide(repo_id)
        )
    return path


_REPO_ID = re.compile(r"^[A-Za-z0-9][\w.-]*/[\w.-]+$")


def resolve_checkpoint(model: str | os.PathLike | None, default_repo: str, components: Sequence[str],
                       what: str) -> tuple[Path, str]:
    """Local folder for ``model`` and a description of where it came from.

    ``model`` is an existing folder (used as is), a hub repo id looked up in the local HF cache
    (:func:`treesdk.hub_cache.hub_snapshot`, never a download; ``None`` means ``default_repo``),
    or anything else (an error). The folder is checked with :func:`check_layout` either way.
    Returns ``(folder, source)`` with ``source`` the path or ``"hf-cache:<repo id>"``.
    """
    name = default_repo if model is None else os.fspath(model)
    path = Path(name).expanduser()
    if path.exists() or not _REPO_ID.match(name) or name.startswith((".", "/", "~")):
        return check_layout(path, components, default_repo, what), str(path)
    folder = hub_snapshot(name)
    if folder is None:
        raise CheckpointNotFoundError(
            f"{what} repo {name!r} is not in the local Hugging Face cache ({hub_repo_folder(name)}) and no "
            f"folder of that name exists; {_layout_text(components)}.\n" + _how_to_provide(name)
        )
    return check_layout(folder, components, name, what), f"hf-cache:{name}"


# ---------------------------------------------------------------------------------------------
# the shared backend part: LoRA / full fine-tune, state dicts, reference, export


class DiffusersBackend(VelocityModel):
    """Training-side plumbing of :class:`~treesdk_backends.diffusers.DiffusersFlowBackend`.

    Subclasses set, in their constructor, ``self.pipe`` (the diffusers pipeline), ``self.transformer``
    (``self.pipe.transformer``), ``self.family`` (e.g. ``"flux"``), ``self._device``,
    ``self.dtype``, then call :meth:`_setup_training`, which sets ``self.lora_config`` (a peft
    ``LoraConfig``, or None for a full fine-tune).
    """

    export_formats = ("lora", "diffusers", "comfyui")
    #: read back by ``treesdk export --check`` (treesdk.export_files.check_file)
    export_layouts = (DiffusersTransformerLayout(),)

    def default_export_format(self) -> str:
        """``lora`` for a LoRA run, the merged ``diffusers`` folder for a full fine-tune."""
        return "lora" if self.lora_config is not None else "diffusers"
    #: peft target modules used when ``lora_targets`` is None (set per backend)
    default_lora_targets: tuple[str, ...] = ()

    pipe: Any
    transformer: torch.nn.Module
    family: str
    lora_config: Any
    dtype: torch.dtype
    offload_text_encoders: bool
    _device: torch.device

    # -- construction helpers ------------------------------------------------------------------

    def _setup_training(
        self,
        lora_rank: int,
        lora_alpha: float | None,
        lora_targets: Sequence[str] | None,
        gradient_checkpointing: bool,
    ) -> None:
        """Freeze everything but the trainable part; add the LoRA adapter (rank > 0).

        LoRA: ``transformer.add_adapter(LoraConfig(r, lora_alpha, init_lora_weights="gaussian",
        target_modules))`` as diffusers' ``train_dreambooth_lora_*`` scripts do; ``lora_alpha``
        defaults to the rank (scale 1). LoRA weights are kept in float32 whatever the model dtype
        (diffusers' ``cast_training_params``), so optimiser updates are not lost to bf16 rounding.
        ``lora_rank = 0`` trains the whole transformer in the model dtype.
        """
        if lora_rank < 0:
            raise ValueError(f"lora_rank must be >= 0 (0 = full fine-tune), got {lora_rank}")
        for module in self._frozen_modules():
            module.requires_grad_(False)
            module.eval()
        self.lora_rank = int(lora_rank)
        if lora_rank == 0:
            self.lora_config = None
            self.transformer.requires_grad_(True)
        else:
            from peft import LoraConfig

            if isinstance(lora_targets, str):  # "attn.to_q,attn.to_k" from a command line
                lora_targets = [t.strip() for t in lora_targets.split(",") if t.strip()]
            targets = list(lora_targets) if lora_targets else list(self.default_lora_targets)
            self.transformer.requires_grad_(False)
            self.lora_config = LoraConfig(
                r=int(lora_rank),
                lora_alpha=float(lora_alpha if lora_alpha is not None else lora_rank),
                init_lora_weights="gaussian",
                target_modules=targets,
            )
            try:
                self.transformer.add_adapter(self.lora_config)
            except ValueError as exc:
                raise ValueError(
                    f"LoRA target modules {targets} do not match the {self.family} transformer: {exc}"
                ) from exc
            for param in self.transformer.parameters():
                if param.requires_grad:
                    param.data = param.data.float()
        self.gradient_checkpointing = bool(gradient_checkpointing)
        if gradient_checkpointing:
            self.transformer.enable_gradient_checkpointing()
        self.transformer.eval()  # no dropout in these models; train_mode() switches explicitly

    def _frozen_modules(self) -> list[torch.nn.Module]:
        """Text encoders and VAE: never trained."""
        vae = getattr(self.pipe, "vae", None)
        return self._text_encoders() + ([vae] if isinstance(vae, torch.nn.Module) else [])

    # -- VelocityModel: trainable part ---------------------------------------------------------

    @property
    def device(self) -> torch.device:
        return self._device

    def _trainable_named(self) -> dict[str, torch.nn.Parameter]:
        """Trainable parameters by their checkpoint names.

        LoRA: peft's names as ``get_peft_model_state_dict`` writes them (the adapter name dropped:
        ``...to_q.lora_A.default.weight`` -> ``...to_q.lora_A.weight``). Full: the transformer's
        own parameter names.
        """
        if self.lora_config is None:
            return dict(self.transformer.named_parameters())
        out = {}
        for name, param in self.transformer.named_parameters():
            if "lora_" in name:
                out[name.replace(".default.", ".").replace(".default", "")] = param
        return out

    def trainable_parameters(self) -> list[torch.nn.Parameter]:
        return [p for p in self._trainable_named().values() if p.requires_grad]

    def trainable_state_dict(self) -> dict[str, Tensor]:
        """LoRA: ``get_peft_model_state_dict(transformer)`` (float32); full: the transformer's
        ``state_dict()``. Tensors are detached CPU clones (safe to save while training goes on)."""
        if self.lora_config is None:
            state = self.transformer.state_dict()
        else:
            from peft import get_peft_model_state_dict

            state = get_peft_model_state_dict(self.transformer)
        from torch.distributed.tensor import DTensor

        # under FSDP the values are DTensor shards: returned as they are, the trainer gathers them
        return {k: v.detach() if isinstance(v, DTensor) else v.detach().to("cpu", copy=True).contiguous()
                for k, v in state.items()}

    def fsdp_modules(self) -> list[torch.nn.Module]:
        """FSDP units for ``--fsdp`` (full fine-tune only): every transformer block
        (``transformer_blocks``, then ``single_transformer_blocks`` where the model has them), then
        the transformer itself. LoRA runs raise: their adapters are small, DDP is right for them."""
        if self.lora_config is not None:
            raise ValueError(
                f"backend {self.name!r} trains a LoRA adapter (lora_rank={self.lora_rank}): --fsdp shards full "
                "fine-tunes only; drop --fsdp (LoRA gradients are all-reduced, DDP style) or set lora_rank=0"
            )
        blocks: list[torch.nn.Module] = []
        for attr in ("transformer_blocks", "single_transformer_blocks"):
            blocks.extend(getattr(self.transformer, attr, None) or [])
        return [*blocks, self.transformer]

    def load_trainable_state_dict(self, state: Mapping[str, Tensor]) -> None:
        """Copy ``state`` (names as :meth:`trainable_state_dict`) into the trainable weights.

        Strict: raises ``KeyError`` listing missing and unexpected names, ``ValueError`` on a shape
        mismatch; nothing is written unless every tensor fits.
        """
        if self.lora_config is None:
            targets: dict[str, Tensor] = dict(self.transformer.state_dict(keep_vars=True))
        else:
            targets = dict(self._trainable_named())
        diff = diff_state_dicts(targets, state)
        missing, unexpected = diff.missing, diff.unexpected
        if missing or unexpected:
            raise StateDictMismatchError(
                f"{self.family} trainable state does not match: missing {missing[:5]}"
                f"{' ...' if len(missing) > 5 else ''} ({len(missing)}), unexpected {unexpected[:5]}"
                f"{' ...' if len(unexpected) > 5 else ''} ({len(unexpected)})"
            )
        if diff.wrong_shape:
            key = diff.wrong_shape[0]
            raise ValueError(
                f"{self.family} trainable tensor {key!r} has shape {tuple(state[key].shape)}, "
                f"expected {tuple(targets[key].shape)}"
            )
        with torch.no_grad():
            for key, target in targets.items():
                target.copy_(state[key].to(device=target.device, dtype=target.dtype))

    @contextlib.contextmanager
    def reference(self) -> Iterator[None]:
        """The base policy: the LoRA adapter disabled for the duration (no second copy)."""
        if self.lora_config is None:
            raise NotImplementedError(
                f"backend {self.name!r} was built for a full fine-tune (lora_rank=0): it has no reference "
                "policy; use lora_rank > 0 for KL terms"
            )
        self.transformer.disable_adapters()
        try:
            yield
        finally:
            self.transformer.enable_adapters()

    def train_mode(self, enabled: bool = True) -> None:
        """Train/eval mode of the transformer. (Gradient checkpointing does not depend on it:
        diffusers checkpoints whenever ``torch.is_grad_enabled() and self.gradient_checkpointing``.)"""
        self.transformer.train(enabled)

    def describe(self) -> dict[str, Any]:
        lora = None
        if self.lora_config is not None:
            lora = {
                "rank": int(self.lora_config.r),
                "alpha": float(self.lora_config.lora_alpha),
                "target_modules": sorted(self.lora_config.target_modules),
            }
        return {
            "backend": self.name,
            "family": self.family,
            "model": self.model_source,
            "model_path": str(self.model_path),
            "resolution": self.resolution,
            "latent_shape": list(self.latent_shape),
            "dtype": str(self.dtype).replace("torch.", ""),
            "lora": lora,
            "full_finetune": self.lora_config is None,
            "gradient_checkpointing": self.gradient_checkpointing,
            "trainable_parameters": int(sum(p.numel() for p in self.trainable_parameters())),
        }

    def export(self, fmt: str, path: str, metadata: Mapping[str, str]) -> list[str]:
        """Write ``fmt`` (``lora``, ``diffusers``, ``comfyui``) under ``path`` through
        :func:`treesdk_backends.diffusers_export.export_transformer`."""
        if fmt not in self.export_formats:
            raise ValueError(
                f"backend {self.name!r} cannot export format {fmt!r}; it supports: {', '.join(self.export_formats)}"
            )
        from .diffusers_export import export_transformer

        return export_transformer(self, fmt, path, metadata)

    # -- helpers for subclasses ----------------------------------------------------------------

    def _sigma_batch(self, sigma: Tensor | float, batch: int) -> Tensor:
        """``sigma`` as float32 ``[B]`` on the device (a scalar is broadcast)."""
        s = torch.as_tensor(sigma, dtype=torch.float32, device=self._device)
        if s.ndim == 0:
            s = s.expand(batch)
        if s.ndim != 1 or s.shape[0] != batch:
            raise ValueError(f"sigma must be a scalar or a [{batch}] tensor, got shape {tuple(s.shape)}")
        return s

    def _check_latents(self, x: Tensor) -> None:
        if x.ndim != 1 + len(self.latent_shape) or tuple(x.shape[1:]) != tuple(self.latent_shape):
            raise ValueError(
                f"{self.name} latents must be [B, {', '.join(map(str, self.latent_shape))}] at resolution "
                f"{self.resolution}, got {tuple(x.shape)}"
            )

    @staticmethod
    def _check_prompts(prompts: Sequence[str]) -> list[str]:
        if isinstance(prompts, str):
            raise ValueError(f"encode() takes a list of prompts, got the single string {prompts!r}")
        out = list(prompts)
        for prompt in out:
            if not isinstance(prompt, str):
                raise ValueError(f"prompt {prompt!r} is a {type(prompt).__name__}, expected str")
        return out

    def _init_prompt_cache(self, size: int) -> None:
        if size < 0:
            raise ValueError(f"prompt_cache_size must be >= 0, got {size}")
        self.prompt_cache_size = int(size)
        self._cache: OrderedDict[str, tuple[Tensor, ...]] = OrderedDict()
        self._prompt_names: tuple[str, ...] = ()

    def _prompt_rows(self, prompts: Sequence[str], encode_batch: Callable[[list[str]], Mapping[str, Tensor]]
                     ) -> dict[str, dict[str, Tensor]]:
        """Tensors of each distinct prompt in ``prompts`` (``{prompt: {name: row}}``): from the cache,
        or from one call ``encode_batch(new_prompts)`` returning ``{name: tensor}`` with leading
        dimension ``len(new_prompts)`` (always the same names).

        The cache is an LRU of at most ``prompt_cache_size`` prompts held on the **CPU** (a tuple of
        rows per prompt, in the order of ``self._prompt_names``), floating tensors in the model dtype
        (a FLUX T5 embedding is 512 x 4096 bf16 = 4 MiB; thousands of training prompts must not pile
        up in GPU memory); masks and ids keep their dtype.
        """
        rows: dict[str, tuple[Tensor, ...]] = {}
        todo: list[str] = []
        for prompt in dict.fromkeys(prompts):
            if prompt in self._cache:
                self._cache.move_to_end(prompt)
                rows[prompt] = self._cache[prompt]
            else:
                todo.append(prompt)
        if todo:
            with torch.no_grad(), self._text_encoders_on_device(self.offload_text_encoders):
                tensors = dict(encode_batch(todo))
            self._prompt_names = tuple(tensors)
            for i, prompt in enumerate(todo):
                rows[prompt] = tuple(
                    t[i].detach().to("cpu", self.dtype if t.is_floating_point() else t.dtype, copy=True)
                    for t in tensors.values()
                )
                if self.prompt_cache_size:
                    self._cache[prompt] = rows[prompt]
            while len(self._cache) > self.prompt_cache_size:
                self._cache.popitem(last=False)
        return {prompt: dict(zip(self._prompt_names, row)) for prompt, row in rows.items()}

    def _text_encoders(self) -> list[torch.nn.Module]:
        """The pipeline's text encoders (frozen; moved by ``offload_text_encoders``)."""
        names = ("text_encoder", "text_encoder_2", "text_encoder_3")
        return [m for m in (getattr(self.pipe, n, None) for n in names) if isinstance(m, torch.nn.Module)]

    @contextlib.contextmanager
    def _text_encoders_on_device(self, offload: bool) -> Iterator[None]:
        """Text encoders on the compute device for the duration; back to the CPU after when
        ``offload`` (they are used once per new prompt, the cache does the rest)."""
        encoders = self._text_encoders()
        if offload:
            for module in encoders:
                module.to(self._device)
        try:
            yield
        finally:
            if offload:
                for module in encoders:
                    module.to("cpu")
                if self._device.type == "cuda":
                    torch.cuda.empty_cache()
