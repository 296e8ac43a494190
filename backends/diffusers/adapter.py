"""What one diffusers model family must say about itself: :class:`FamilyAdapter`.

The generic backend (:class:`treesdk_backends.diffusers.DiffusersFlowBackend`) does everything
that is the same for every flow-matching pipeline: finding and loading the checkpoint, freezing,
LoRA through peft, the prompt cache, the sigma grid through the pipeline's own scheduler, CFG
batching, decoding through the VAE, trainable state dicts, export. A family adapter says only what
really differs between pipelines, each as a small method that mirrors the pipeline's ``__call__``:

==========================  =================================================================
``encode_prompts``          prompts -> batch-first tensors (the pipeline's ``encode_prompt``)
``latent_shape``            the noise tensor the pipeline's ``prepare_latents`` draws, per sample
``pack`` / ``unpack``       that tensor <-> the transformer's ``hidden_states`` (patches, frames)
``timestep``                sigma ``[B]`` -> the transformer's ``timestep`` input
``forward``                 one transformer call -> velocity ``noise - x0`` in packed form
``base_sigmas`` / ``mu``    the grid the pipeline passes to ``scheduler.set_timesteps``
``guidance_scale``          CFG (two halves in one batch) or none (guidance embedding / distilled)
``decode_latents``          VAE decode (default: ``x / scaling_factor + shift_factor``)
``pipeline_kwargs``         how to call the pipeline for the same sample (conformance parity)
==========================  =================================================================

Conventions (the same as :mod:`treesdk.interfaces`): sigma in ``[0, 1]``, 1 = pure noise; the
velocity is ``v = noise - x0`` (a family whose transformer predicts ``x0 - noise``, e.g. Z-Image
and Lumina2, negates in :meth:`FamilyAdapter.forward`); latents the backend sees are *unpacked*
and exactly what the pipeline draws with ``randn_tensor(shape, generator)``, so the same seed gives
the pipeline's trajectory.

A family is registered under the entry-point group ``treesdk.diffusers_families`` (name -> adapter
class); ``--backend diffusers --model PATH`` picks the adapter whose :attr:`pipeline_classes`
contains ``model_index.json``'s ``_class_name``.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any, ClassVar

import numpy as np
import torch
from torch import Tensor

from treesdk.model_facts import ActivationTable, ModelFacts

__all__ = ["FamilyAdapter", "calculate_shift"]


def calculate_shift(image_seq_len: int, config: Any) -> float:
    """The resolution-dependent shift ``mu`` of diffusers' flow pipelines (``calculate_shift``):
    linear in ``image_seq_len`` through ``(base_image_seq_len, base_shift)`` and
    ``(max_image_seq_len, max_shift)`` of the scheduler ``config`` (defaults 256/0.5, 4096/1.15)."""
    base_seq, max_seq = config.get("base_image_seq_len", 256), config.get("max_image_seq_len", 4096)
    base_shift, max_shift = config.get("base_shift", 0.5), config.get("max_shift", 1.15)
    slope = (max_shift - base_shift) / (max_seq - base_seq)
    return float(image_seq_len * slope + base_shift - slope * base_seq)


class FamilyAdapter:
    """The family-specific part of a diffusers flow-matching backend (see the module docstring).

    Subclasses set the class attributes and override the methods whose default does not match
    their pipeline's ``__call__``. Family options (``guidance``, ``guidance_scale``,
    ``negative_prompt``, ``max_sequence_length``, ...) are keyword arguments of ``__init__``; the
    backend passes every option it does not know itself, so an unknown option is a ``TypeError``
    naming it.

    The backend sets, before any other call: :attr:`pipe` (the loaded pipeline), :attr:`device`,
    :attr:`dtype` (the model dtype), :attr:`resolution` (``(height, width)`` in pixels) and
    :attr:`backend` (the owning backend; :attr:`transformer` is its transformer).
    """

    #: family name, e.g. ``"flux"`` (the key in ``treesdk.diffusers_families``)
    family: ClassVar[str] = ""
    #: diffusers pipeline class names this family serves (``model_index.json``'s ``_class_name``);
    #: the first one is the class used to load a checkpoint
    pipeline_classes: ClassVar[tuple[str, ...]] = ()
    #: the hub repository named in "how to provide the weights" messages (and loaded from the local
    #: HF cache when ``model`` is None)
    default_repo: ClassVar[str] = ""
    #: sub-folders a checkpoint must have (besides ``model_index.json``)
    components: ClassVar[tuple[str, ...]] = ("scheduler", "text_encoder", "tokenizer", "transformer", "vae")
    #: pipeline attributes holding text encoders (frozen; offloaded with ``offload_text_encoders``)
    text_encoder_names: ClassVar[tuple[str, ...]] = ("text_encoder", "text_encoder_2", "text_encoder_3")
    #: peft ``target_modules`` used when the user gives none
    lora_targets: ClassVar[tuple[str, ...]] = ("to_q", "to_k", "to_v", "to_out.0")
    #: key layout of the merged single-file export (``comfyui`` format) in
    #: :mod:`treesdk_backends.single_file`: ``"flux"``, ``"sd3"``, ``"wan"`` (original layouts),
    #: ``"diffusers-names"`` (ComfyUI's model uses diffusers' key names), or None: no single file
    single_file_layout: ClassVar[str | None] = None

    #: tolerances (max abs difference, fp32 on CPU) the conformance suite holds this family to:
    #: ODE sampling through treesdk vs the pipeline, and a velocity row in a batch vs alone
    parity_atol: ClassVar[float] = 1e-5
    batch_atol: ClassVar[float] = 1e-5

    #: dry-run planner (:mod:`treesdk_backends.diffusers.planning`): the family's measured
    #: activation memory per block kind (None: activations are not estimated)
    activation_table: ClassVar[ActivationTable | None] = None
    #: keys of the transformer's files that are persistent buffers, not parameters
    planner_buffers: ClassVar[tuple[str, ...]] = ()
    #: models the planner sizes without a folder: name -> (transformer config, text encoder
    #: parameters, VAE parameters), and the one planned when no ``--model`` is given
    known_models: ClassVar[Mapping[str, tuple[dict[str, Any], int, int]]] = {}
    default_known_model: ClassVar[str | None] = None

    pipe: Any
    device: torch.device
    dtype: torch.dtype
    resolution: tuple[int, int]

    def __init__(self, max_sequence_length: int | None = None) -> None:
        #: text tokens for the pipeline's ``max_sequence_length`` (None: the pipeline default)
        self.max_sequence_length = None if max_sequence_length is None else int(max_sequence_length)

    @classmethod
    def accepts(cls, model_index: dict[str, Any], folder: Any) -> bool:
        """Whether this family serves the checkpoint at ``folder`` (a ``Path``, or None for an
        in-memory pipeline), asked only when several families list the same pipeline class (e.g.
        FLUX.1-dev and FLUX.1-schnell: read ``transformer/config.json``'s ``guidance_embeds``)."""
        return True

    # -- the dry-run planner's facts -------------------------------------------------------------

    @classmethod
    def planner_facts(cls, model: Any, text_tokens: int | None = None, options: Mapping[str, Any] | None = None) -> ModelFacts:
        """Size facts of ``model`` (a pipeline folder, a :attr:`known_models` name, or None: the
        default known model) with the family options ``options``, loading no weight
        (:func:`treesdk_backends.diffusers.planning.family_facts`)."""
        from .planning import family_facts

        return family_facts(cls, model, text_tokens, options or {})

    @classmethod
    def planner_sizes(cls, config: Mapping[str, Any], vae_config: Mapping[str, Any], index: Mapping[str, Any],
                      adapter: FamilyAdapter) -> dict[str, Any]:
        """Geometry of the model for the planner from the transformer and VAE configs and
        ``model_index.json`` (hidden width, text tokens and width, latent channels, pixels per token,
        frames, block kinds, CFG); the default
        reads the keys diffusers' models share (:func:`~treesdk_backends.diffusers.planning.generic_sizes`)."""
        from .planning import generic_sizes

        return generic_sizes(config, vae_config, adapter)

    @classmethod
    def known_model_facts(cls, name: str, adapter: FamilyAdapter, source: str) -> ModelFacts:
        """Facts of :attr:`known_models` entry ``name`` (families with a size table override this)."""
        raise ValueError(f"the {cls.family} family cannot size {name!r} without its pipeline folder; give --model PATH")

    # -- geometry ----------------------------------------------------------------------------

    @property
    def transformer(self) -> torch.nn.Module:
        """The backend's transformer (``pipe.transformer`` unless the backend swapped it)."""
        backend = getattr(self, "backend", None)
        return backend.transformer if backend is not None else self.pipe.transformer

    @property
    def vae_scale_factor(self) -> int:
        return int(self.pipe.vae_scale_factor)

    def resolution_multiple(self) -> int:
        """Image sides must be multiples of this (VAE factor x patch size)."""
        return self.vae_scale_factor * int(getattr(self.transformer.config, "patch_size", 1) or 1)

    def default_resolution(self) -> int:
        """Square side used when the user gives none (the pipeline default)."""
        return int(self.pipe.default_sample_size * self.vae_scale_factor)

    def latent_shape(self) -> tuple[int, ...]:
        """Per-sample shape of the noise the pipeline's ``prepare_latents`` draws at
        :attr:`resolution` (before any packing). Default: ``(in_channels, H / f, W / f)``."""
        height, width = self.resolution
        f = self.vae_scale_factor
        return (int(self.transformer.config.in_channels), height // f, width // f)

    def pack(self, x: Tensor) -> Tensor:
        """Unpacked latents ``[B, *latent_shape]`` -> the transformer's ``hidden_states``."""
        return x

    def unpack(self, hidden: Tensor, batch: int) -> Tensor:
        """Inverse of :meth:`pack` for the transformer's output: -> ``[batch, *latent_shape]``."""
        return hidden

    # -- sigma grid ----------------------------------------------------------------------------

    def image_seq_len(self) -> int:
        """Image tokens the transformer sees (sets the dynamic shift ``mu``); default: the
        latent's spatial positions divided by ``patch_size ** 2``."""
        shape = self.latent_shape()
        patch = int(getattr(self.transformer.config, "patch_size", 1) or 1)
        return int(np.prod(shape[-2:])) // (patch * patch)

    def base_sigmas(self, num_steps: int) -> np.ndarray | None:
        """The ``sigmas=`` the pipeline passes to ``scheduler.set_timesteps`` (FLUX-style
        ``linspace(1, 1/T, T)``), or None when it passes only ``num_inference_steps``."""
        return np.linspace(1.0, 1.0 / num_steps, num_steps)

    def scheduler_overrides(self) -> dict[str, Any]:
        """Scheduler config values the family's options replace in the backend's private scheduler
        (e.g. ``{"shift": 3.0}``); default none."""
        return {}

    def mu(self) -> float | None:
        """The ``mu=`` passed to ``set_timesteps`` (dynamic shifting), or None without it."""
        if not self.pipe.scheduler.config.get("use_dynamic_shifting", False):
            return None
        return calculate_shift(self.image_seq_len(), self.pipe.scheduler.config)

    # -- prompts -------------------------------------------------------------------------------

    def encode_prompts(self, prompts: list[str]) -> dict[str, Tensor]:
        """Encode ``prompts`` (called under ``no_grad`` with the text encoders on :attr:`device`):
        ``{name: [len(prompts), ...]}``. The backend caches rows per prompt, so a row must not
        depend on its batch mates (pad to a fixed length, or override :meth:`collate`)."""
        raise NotImplementedError(f"{type(self).__name__} must implement encode_prompts")

    def collate(self, name: str, rows: Sequence[Tensor]) -> Tensor:
        """Stack cached per-prompt rows of tensor ``name`` into a batch (default ``torch.stack``)."""
        return torch.stack(list(rows))

    #: classifier-free guidance scale; ``<= 1`` (the default): no CFG, one forward per latent
    guidance_scale: float = 1.0
    #: the unconditional prompt encoded for CFG (its tensors get the prefix ``negative_``)
    negative_prompt: str = ""

    # -- the model -----------------------------------------------------------------------------

    def timestep(self, sigma: Tensor) -> Tensor:
        """Sigma ``[B]`` (float32) -> the transformer's ``timestep`` (default ``sigma * 1000``, the
        scheduler's timesteps, float32)."""
        return sigma * 1000.0

    def forward(self, hidden: Tensor, timestep: Tensor, cond: dict[str, Tensor]) -> Tensor:
        """One transformer call on packed ``hidden`` ``[N, ...]`` (model dtype, on device),
        ``timestep`` from :meth:`timestep` and ``cond`` (model dtype, leading dim ``N``; under CFG
        the negative half comes first with its tensors renamed to the positive names). Returns the
        velocity ``noise - x0`` in packed form (negate here if the model predicts ``x0 - noise``)."""
        raise NotImplementedError(f"{type(self).__name__} must implement forward")

    def combine_cfg(self, uncond: Tensor, cond: Tensor) -> Tensor:
        """Guided velocity from the two halves: ``uncond + g * (cond - uncond)``."""
        return uncond + self.guidance_scale * (cond - uncond)

    # -- decoding ------------------------------------------------------------------------------

    def decode_latents(self, x: Tensor) -> Tensor:
        """Unpacked latents at sigma 0 -> float images ``[B, 3, H, W]`` in ``[-1, 1]`` (the backend
        maps to ``[0, 1]``). Default: ``vae.decode(x / scaling_factor + shift_factor)``."""
        vae = self.pipe.vae
        shift = getattr(vae.config, "shift_factor", None) or 0.0
        latents = x.to(self.device, vae.dtype) / vae.config.scaling_factor + shift
        return vae.decode(latents, return_dict=False)[0]

    # -- the family's own pipeline (conformance parity) ----------------------------------------

    def pipeline_kwargs(self) -> dict[str, Any]:
        """Keyword arguments that make ``pipe(prompts, num_inference_steps=T, generator=g,
        output_type="latent", **pipeline_kwargs())`` sample what the backend samples (height,
        width, guidance, sequence length)."""
        height, width = self.resolution
        kwargs: dict[str, Any] = {"height": height, "width": width}
        if self.max_sequence_length is not None:
            kwargs["max_sequence_length"] = self.max_sequence_length
        return kwargs

    def pipeline_latents(self, output: Tensor) -> Tensor:
        """The pipeline's ``output_type="latent"`` result -> unpacked latents ``[B, *latent_shape]``."""
        return output

    def describe(self) -> dict[str, Any]:
        """JSON-serialisable family options for run configs."""
        return {"max_sequence_length": self.max_sequence_length}
