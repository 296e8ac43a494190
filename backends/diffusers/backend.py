"""The generic diffusers flow-matching backend: one :class:`DiffusersFlowBackend` for every family.

Everything here is the same for FLUX.1, SD3, and every other pipeline built on
``FlowMatchEulerDiscreteScheduler``-style flow matching; what differs lives in a
:class:`~treesdk_backends.diffusers.adapter.FamilyAdapter` (see that module for the list).

* Loading: a local folder in the hub layout or a repo id in the local HF cache (never a download),
  checked for the family's components, loaded with the family's pipeline class.
* Family: given (``family="flux"``, or a subclass made by :meth:`DiffusersFlowBackend.for_family`,
  which is what ``--backend flux`` loads) or read from ``model_index.json``'s ``_class_name``
  (``--backend diffusers --model PATH``).
* Velocity: latents in the pipeline's unpacked convention -> :meth:`FamilyAdapter.pack` -> one
  transformer call (CFG: the negative half first, one batch of ``2B``) -> unpack.
* Sigma grid: the family's ``base_sigmas``/``mu`` through a private copy of the pipeline's
  scheduler, then 0, as the pipeline's ``__call__`` walks it.
* Training plumbing (LoRA, state dicts, reference, export) from
  :class:`~treesdk_backends.diffusers_common.DiffusersBackend`.
"""

from __future__ import annotations

import inspect
import json
import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from treesdk.hub_cache import hub_snapshot
from treesdk.interfaces import Cond
from treesdk.model_facts import ModelFacts

from ..diffusers_common import (
    CheckpointNotFoundError,
    DiffusersBackend,
    dtype_kwargs,
    parse_device,
    parse_dtype,
    resolve_checkpoint,
)
from .adapter import FamilyAdapter
from .attention import attention_kernels as parse_attention_kernels
from .attention import restricted_attention
from .families import adapter_class, detect_family
from .folder_defaults import apply_folder_defaults
from .limits import check_positional_limits

__all__ = ["DiffusersFlowBackend"]

NEGATIVE = "negative_"


class DiffusersFlowBackend(DiffusersBackend):
    """Any diffusers flow-matching pipeline as a :class:`~treesdk.interfaces.VelocityModel`.

    Args:
        model: a folder in the hub layout (``model_index.json`` plus the family's components) or a
            hub repo id found in the local HF cache. None: the family's ``default_repo`` from the
            cache (only when the family is known). Never downloads.
        family: family name (``treesdk.diffusers_families``); None = from ``model_index.json``.
        resolution: square image side in pixels; None = the pipeline default. Must be a multiple
            of the family's ``resolution_multiple()`` (VAE factor x patch size).
        device: compute device; None = cuda if available else cpu.
        dtype: ``"bfloat16"`` (default), ``"float32"`` or ``"float16"`` for every weight; LoRA
            weights are float32 regardless.
        lora_rank: LoRA rank; 0 trains the whole transformer.
        lora_alpha: LoRA alpha; None = ``lora_rank`` (scale 1).
        lora_targets: peft target modules; None = the family's ``lora_targets``.
        gradient_checkpointing: ``transformer.enable_gradient_checkpointing()``.
        offload_text_encoders: keep text encoders on the CPU, moving them to the device only to
            encode prompts not yet in the cache.
        prompt_cache_size: prompts whose embeddings are kept (LRU, on the CPU); 0 = no cache.
        pipeline: an already built pipeline to wrap instead of loading ``model`` (its text encoders
            and VAE may be None when only :meth:`velocity` is needed); ``model`` is then a label.
        attention_kernels: the SDPA kernels the transformer may use (:mod:`.attention`): ``"auto"``
            (default) leaves out cuDNN on CUDA, whose backward broke FLUX training on an H200, and
            changes nothing elsewhere; ``"all"``; or names such as ``"flash,math"``.
        **family_options: passed to the family adapter (``guidance``, ``guidance_scale``,
            ``negative_prompt``, ``max_sequence_length``, ...); unknown names raise ``TypeError``.
    """

    name = "diffusers"
    #: adapter class fixed by :meth:`for_family` (None: chosen per checkpoint)
    adapter_class: type[FamilyAdapter] | None = None
    #: ``lora`` and the merged ``diffusers`` folder always; ``comfyui`` (merged single file) where
    #: the family has a single-file layout. On the class: what some family can write (the CLI
    #: checks it before loading); on an instance: what its family writes.
    export_formats: tuple[str, ...] = ("lora", "diffusers", "comfyui")

    def __init__(
        self,
        model: str | os.PathLike | None = None,
        family: str | None = None,
        resolution: int | None = None,
        device: str | torch.device | None = None,
        dtype: str | torch.dtype = "bfloat16",
        lora_rank: int = 16,
        lora_alpha: float | None = None,
        lora_targets: Sequence[str] | None = None,
        gradient_checkpointing: bool = False,
        offload_text_encoders: bool = False,
        prompt_cache_size: int = 1024,
        pipeline: Any = None,
        attention_kernels: str | Sequence[str] | None = "auto",
        **family_options: Any,
    ) -> None:
        self._device = parse_device(device)
        self.dtype = parse_dtype(dtype)
        self.attention_kernels = parse_attention_kernels(attention_kernels, self._device)
        cls = self._choose_adapter(model, family, pipeline)
        resolution, family_options = apply_folder_defaults(model, cls, resolution, family_options)
        try:
            self.adapter = cls(**family_options)
        except TypeError as exc:
            raise TypeError(f"{cls.family} backend: {exc} (family options of {cls.__name__})") from None
        self.family = cls.family
        self.export_formats = _formats(cls)
        self.default_lora_targets = tuple(cls.lora_targets)
        if pipeline is None:
            self.pipe = self._load_pipeline(model, cls)
        else:
            self.pipe = self._wrap_pipeline(model, cls, pipeline)
        if hasattr(self.pipe, "set_progress_bar_config"):
            self.pipe.set_progress_bar_config(disable=True)
        self.transformer = self.pipe.transformer
        self.offload_text_encoders = bool(offload_text_encoders)
        self.adapter.pipe, self.adapter.device, self.adapter.dtype = self.pipe, self._device, self.dtype
        self.adapter.backend = self

        multiple = self.adapter.resolution_multiple()
        self.resolution = int(resolution or self.adapter.default_resolution())
        if self.resolution <= 0 or self.resolution % multiple:
            raise ValueError(
                f"{self.family} resolution must be a positive multiple of {multiple} (VAE factor x patch size), "
                f"got {resolution}"
            )
        self.adapter.resolution = (self.resolution, self.resolution)
        self._latent_shape = tuple(int(n) for n in self.adapter.latent_shape())
        check_positional_limits(self.family, self.transformer.config, self._latent_shape, self.resolution,
                                self.adapter.max_sequence_length, getattr(self.adapter, "num_frames", None))
        from diffusers import FlowMatchEulerDiscreteScheduler

        # a private scheduler of the pipeline's config: sigmas() must not disturb pipe.scheduler
        self._scheduler = FlowMatchEulerDiscreteScheduler.from_config(self.pipe.scheduler.config,
                                                                      **self.adapter.scheduler_overrides())

        self._setup_training(lora_rank, lora_alpha, lora_targets, gradient_checkpointing)
        self.transformer.to(self._device)
        vae = getattr(self.pipe, "vae", None)
        if isinstance(vae, torch.nn.Module):
            vae.to(self._device)
        for module in self._text_encoders():
            module.to("cpu" if self.offload_text_encoders else self._device)
        self._init_prompt_cache(prompt_cache_size)

    def __init_subclass__(cls, **kwargs: Any) -> None:
        """A family-bound subclass advertises its real options (generic ones + the adapter's), so
        callers that inspect the signature (rebuilding a run's backend) pass only those."""
        super().__init_subclass__(**kwargs)
        if cls.__dict__.get("adapter_class") is not None:
            cls.__signature__ = _signature(cls.adapter_class)

    @classmethod
    def for_family(cls, adapter: type[FamilyAdapter], name: str | None = None) -> type[DiffusersFlowBackend]:
        """A backend class bound to one family (registered as ``--backend <family>``)."""
        return type(f"{adapter.__name__.removesuffix('Adapter')}Backend", (cls,),
                    {"adapter_class": adapter, "name": name or adapter.family, "__module__": adapter.__module__,
                     "export_formats": _formats(adapter)})

    @classmethod
    def planner_facts(cls, model: Any, text_tokens: int | None = None, options: Mapping[str, Any] | None = None) -> ModelFacts:
        """Size facts for ``treesdk train --dry-run``, loading no weight: the family adapter's
        (:meth:`FamilyAdapter.planner_facts`); ``model`` a pipeline folder, a hub id in the local
        cache, a name the family's size table knows, or None (the family's default known model)."""
        options = dict(options or {})
        if model is not None and not Path(str(model)).expanduser().exists():
            model = hub_snapshot(str(model)) or model
        family = options.pop("family", None)
        known = model is not None and not Path(str(model)).expanduser().is_dir()
        if cls.adapter_class is None and family is None and known:
            raise ValueError(f"backend {cls.name!r}: {model} is not a pipeline folder; give --model PATH "
                             "or name the family (--backend flux, ...)")
        adapter = cls._choose_adapter(cls, model, family, None)  # type: ignore[arg-type] - reads class attributes only
        return adapter.planner_facts(model, text_tokens=text_tokens, options=options)

    # -- construction --------------------------------------------------------------------------

    def _choose_adapter(self, model: Any, family: str | None, pipeline: Any) -> type[FamilyAdapter]:
        if self.adapter_class is not None:
            if family is not None and family != self.adapter_class.family:
                raise ValueError(f"backend {self.name!r} is the {self.adapter_class.family} family; got family={family!r}")
            return self.adapter_class
        if family is not None:
            return adapter_class(family)
        if pipeline is not None:
            return detect_family(type(pipeline).__name__, where=f"pipeline of class {type(pipeline).__name__}")
        if model is None:
            raise ValueError(
                "the diffusers backend needs model=PATH (--model PATH): a folder in the diffusers hub layout "
                "whose model_index.json names the pipeline class, or a repo id in the local HF cache; or name "
                "the family (--backend flux, ...)"
            )
        folder, _ = resolve_checkpoint(model, os.fspath(model), (), "diffusers")
        index = _read_model_index(folder)
        return detect_family(str(index.get("_class_name")), where=f"{folder / 'model_index.json'}",
                             model_index=index, folder=folder)

    def _load_pipeline(self, model: Any, cls: type[FamilyAdapter]) -> Any:
        import diffusers

        what = cls.family.upper() if len(cls.family) <= 4 else cls.family
        if model is None and not cls.default_repo:
            raise CheckpointNotFoundError(f"the {cls.family} backend needs model=PATH (--model PATH)")
        self.model_path, self.model_source = resolve_checkpoint(model, cls.default_repo or os.fspath(model),
                                                                cls.components, what)
        pipeline_class = getattr(diffusers, cls.pipeline_classes[0])
        return pipeline_class.from_pretrained(self.model_path, local_files_only=True, **dtype_kwargs(self.dtype))

    def _wrap_pipeline(self, model: Any, cls: type[FamilyAdapter], pipeline: Any) -> Any:
        """An in-memory pipeline (benchmarks, notebooks); text encoders / VAE may be None."""
        if type(pipeline).__name__ not in cls.pipeline_classes:
            raise TypeError(
                f"pipeline must be a diffusers {' or '.join(cls.pipeline_classes)}, got {type(pipeline).__name__}"
            )
        self.model_path = "<in-memory>"
        self.model_source = str(model or f"<in-memory {type(pipeline).__name__}>")
        for component in pipeline.components.values():
            if isinstance(component, torch.nn.Module) and getattr(component, "dtype", self.dtype) != self.dtype:
                component.to(dtype=self.dtype)
        return pipeline

    def _text_encoders(self) -> list[torch.nn.Module]:
        names = self.adapter.text_encoder_names
        return [m for m in (getattr(self.pipe, n, None) for n in names) if isinstance(m, torch.nn.Module)]

    # -- geometry and grid ---------------------------------------------------------------------

    @property
    def latent_shape(self) -> tuple[int, ...]:
        """Per-sample latent as the pipeline draws its noise (unpacked), e.g. ``(16, 128, 128)``."""
        return self._latent_shape

    def sigmas(self, num_steps: int) -> Tensor:
        """float32 ``[T + 1]``: the family's ``base_sigmas(T)`` and ``mu`` through the pipeline
        scheduler's ``set_timesteps``, ending in 0, as the pipeline's ``__call__`` walks them."""
        if num_steps < 1:
            raise ValueError(f"num_steps must be >= 1, got {num_steps}")
        base, mu = self.adapter.base_sigmas(num_steps), self.adapter.mu()
        kwargs: dict[str, Any] = {"device": "cpu"}
        if mu is not None:
            kwargs["mu"] = mu
        if base is None:
            self._scheduler.set_timesteps(num_steps, **kwargs)
        else:
            self._scheduler.set_timesteps(sigmas=base, **kwargs)
        return self._scheduler.sigmas.detach().to(torch.float32).clone()

    # -- prompts -------------------------------------------------------------------------------

    @property
    def do_cfg(self) -> bool:
        """Classifier-free guidance on (``guidance_scale > 1``, the pipelines' rule)."""
        return float(self.adapter.guidance_scale) > 1.0

    def encode(self, prompts: Sequence[str]) -> Cond:
        """The family's prompt tensors (batch-first, on the device; floating ones in the model
        dtype) and, with CFG, the negative prompt's under ``negative_<name>`` repeated ``B`` times.
        Each distinct prompt is encoded once and kept in an LRU cache on the CPU."""
        prompts = self._check_prompts(prompts)
        if not prompts:
            raise ValueError("encode() needs at least one prompt")
        needed = prompts + ([self.adapter.negative_prompt] if self.do_cfg else [])
        rows = self._prompt_rows(needed, self.adapter.encode_prompts)
        cond = self._collate(rows, prompts, "")
        if self.do_cfg:
            cond.update(self._collate(rows, [self.adapter.negative_prompt] * len(prompts), NEGATIVE))
        return cond

    def _collate(self, rows: Mapping[str, dict[str, Tensor]], prompts: list[str], prefix: str) -> Cond:
        names = rows[prompts[0]].keys()
        return {prefix + name: self.adapter.collate(name, [rows[p][name] for p in prompts]).to(self._device)
                for name in names}

    # -- the model -----------------------------------------------------------------------------

    def velocity(self, x: Tensor, sigma: Tensor, cond: Cond) -> Tensor:
        """``v = noise - x0`` for unpacked latents ``[B, *latent_shape]``, CFG applied; ``x``'s dtype.

        One transformer call per velocity (CFG: one batch of ``2B``, the negative half first as the
        pipelines concatenate)."""
        self._check_latents(x)
        b = x.shape[0]
        names = [k for k in cond if not k.startswith(NEGATIVE)]
        needed = names + ([NEGATIVE + k for k in names] if self.do_cfg else [])
        for key in needed:
            if key not in cond or cond[key].shape[0] != b:
                got = None if key not in cond else tuple(cond[key].shape)
                raise ValueError(
                    f"{self.name} cond[{key!r}] must have leading dimension {b}, got {got}"
                    + (" (encode() with guidance_scale > 1 adds the negative keys)" if key.startswith(NEGATIVE) else "")
                )
        timestep = self.adapter.timestep(self._sigma_batch(sigma, b))
        hidden = self.adapter.pack(x.to(self._device, self.dtype))
        inputs = {k: self._to_model(cond[k]) for k in names}
        if self.do_cfg:
            hidden = torch.cat([hidden, hidden])
            timestep = torch.cat([timestep, timestep])
            inputs = {k: torch.cat([self._to_model(cond[NEGATIVE + k]), v]) for k, v in inputs.items()}
        with restricted_attention(self.attention_kernels):
            out = self.adapter.forward(hidden, timestep, inputs)
        if self.do_cfg:
            uncond, text = out.chunk(2)
            out = self.adapter.combine_cfg(uncond, text)
        return self.adapter.unpack(out, b).to(x.dtype)

    def _to_model(self, t: Tensor) -> Tensor:
        """A cond tensor on the device; floating tensors in the model dtype (masks keep theirs)."""
        return t.to(self._device, self.dtype) if t.is_floating_point() else t.to(self._device)

    @torch.no_grad()
    def decode(self, x: Tensor) -> Tensor:
        """Latents ``[B, *latent_shape]`` at sigma 0 -> float32 images ``[B, 3, H, W]`` in [0, 1]
        (the family's ``decode_latents``, then ``(img / 2 + 0.5).clamp(0, 1)``)."""
        self._check_latents(x)
        if getattr(self.pipe, "vae", None) is None:
            raise ValueError(f"cannot decode: this {type(self.pipe).__name__} has no VAE")
        images = self.adapter.decode_latents(x)
        return (images.float() / 2 + 0.5).clamp(0, 1)

    # -- the family's own pipeline (conformance) -----------------------------------------------

    @torch.no_grad()
    def pipeline_latents(self, prompts: Sequence[str], num_steps: int, seed: int) -> Tensor:
        """The family's own pipeline, ``output_type="latent"``, one generator seeded ``seed``, in the
        backend's latent convention ``[B, *latent_shape]`` (what ODE sampling must reproduce)."""
        out = self.pipe(prompt=list(prompts), num_inference_steps=num_steps, output_type="latent",
                        generator=torch.Generator().manual_seed(int(seed)), **self.adapter.pipeline_kwargs())
        latents = out.images if hasattr(out, "images") else out.frames if hasattr(out, "frames") else out[0]
        return self.adapter.pipeline_latents(latents)

    def describe(self) -> dict[str, Any]:
        info = super().describe()
        info.update(self.adapter.describe())
        info.update(cfg=self.do_cfg)
        mu = self.adapter.mu()
        if mu is not None:
            info["mu"] = float(mu)
        return info


def _signature(adapter: type[FamilyAdapter]) -> inspect.Signature:
    generic = [p for p in inspect.signature(DiffusersFlowBackend.__init__).parameters.values()
               if p.name not in ("self", "family") and p.kind is not inspect.Parameter.VAR_KEYWORD]
    own = [p.replace(kind=inspect.Parameter.KEYWORD_ONLY)
           for p in inspect.signature(adapter.__init__).parameters.values()
           if p.name != "self" and p.kind not in (inspect.Parameter.VAR_KEYWORD, inspect.Parameter.VAR_POSITIONAL)]
    return inspect.Signature(generic + own)


def _formats(adapter: type[FamilyAdapter]) -> tuple[str, ...]:
    return ("lora", "diffusers") + (("comfyui",) if adapter.single_file_layout else ())


def _read_model_index(folder: Path) -> dict[str, Any]:
    path = folder / "model_index.json"
    try:
        index = json.loads(path.read_text())
    except (OSError, ValueError) as exc:
        raise CheckpointNotFoundError(f"cannot read {path}: {exc}") from exc
    if not isinstance(index, dict) or "_class_name" not in index:
        raise ValueError(f"{path} has no _class_name; it must name the diffusers pipeline class (e.g. FluxPipeline)")
    return index
