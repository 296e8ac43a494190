"""Size facts of a text-to-image model, known *before* its weights are loaded (the dry-run planner's input).

A backend declares its own facts: the object registered under ``treesdk.backends`` may have a
``planner_facts(model, text_tokens=None, options=None) -> ModelFacts`` callable (a classmethod),
and :func:`model_facts` asks it. Nothing here knows a model family: the diffusers backends answer
through their family adapter (:mod:`treesdk_backends.diffusers.adapter`), which reads a pipeline
folder with the tools below or, without a folder, its own table of known models.

Tools for a backend answering from a pipeline folder, reading headers only (no tensor loaded):
:func:`linears_from_shapes` (the transformer's linear layers, for LoRA sizes),
:func:`treesdk.state_dicts.safetensors_elements` (a component's element count), :func:`read_json`.

No torch or diffusers import here: ``treesdk train --dry-run`` plans a run with this module.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from treesdk import registry

__all__ = ["Linear", "ModelFacts", "linears_from_shapes", "lora_parameters", "model_facts", "read_json"]


@dataclass(frozen=True)
class Linear:
    """One ``nn.Linear`` (or patch conv, counted as its flattened linear) of the transformer."""

    name: str  #: module path, e.g. ``transformer_blocks.0.attn.to_q``
    fan_in: int
    fan_out: int
    bias: bool = True

    @property
    def parameters(self) -> int:
        return self.fan_in * self.fan_out + (self.fan_out if self.bias else 0)


@dataclass
class ModelFacts:
    """What the planner needs to know about a model (counts in parameters/elements, not bytes).

    ``family``: the architecture whose activation tables apply (:mod:`treesdk.training.loop.plan`;
    ``"flux"``, ``"sd3"``) or the family's own name when it has none (activations then are not
    estimated). ``text_tokens``: tokens of the text stream the transformer attends over (FLUX: T5
    length; SD3: 77 CLIP + T5 length). ``px_per_token``: pixels per image token along a side (VAE
    factor times patch size). ``frames``: latent frames of a video model (1 for images). ``cfg``:
    classifier-free guidance doubles every velocity row. ``lora_targets``: the backend's default
    peft ``target_modules``.
    """

    name: str
    family: str
    config: dict[str, Any]
    transformer_parameters: int
    transformer_buffers: int = 0  #: persistent floating buffers (SD3's positional table)
    linears: list[Linear] = field(default_factory=list)
    hidden: int = 0
    double_blocks: int = 0  #: blocks with two streams (FLUX double / SD3 joint)
    single_blocks: int = 0
    #: the block types in order, by the type that decides their activation memory
    blocks: list[str] = field(default_factory=list)
    text_tokens: int = 0
    text_dim: int = 0
    pooled_dim: int = 0
    latent_channels: int = 0  #: channels of the VAE latent
    px_per_token: int = 16
    vae_factor: int = 8
    frames: int = 1
    default_resolution: int = 1024
    cfg: bool = False
    lora_targets: tuple[str, ...] = ()
    text_encoder_parameters: int = 0
    vae_parameters: int = 0
    source: str = "table"

    def image_tokens(self, resolution: int) -> int:
        return self.frames * (resolution // self.px_per_token) ** 2

    def latent_elements(self, resolution: int) -> int:
        side = resolution // self.vae_factor
        return self.latent_channels * self.frames * side * side


def lora_parameters(linears: list[Linear], rank: int, targets: tuple[str, ...] | list[str]) -> int:
    """Parameters a peft LoRA of ``rank`` adds: ``rank * (fan_in + fan_out)`` per targeted linear
    (peft matches a target when the module path equals it or ends with ``"." + target``)."""
    total = 0
    for lin in linears:
        if any(lin.name == t or lin.name.endswith("." + t) for t in targets):
            total += rank * (lin.fan_in + lin.fan_out)
    return total


def linears_from_shapes(shapes: Mapping[str, tuple[int, ...]]) -> list[Linear]:
    """The linear layers of a state dict given by its shapes (a safetensors header): every
    ``NAME.weight`` of 2 dims ``[out, in]`` is a linear ``NAME``; one of 3 to 5 dims (a patch conv)
    counts as its flattened linear ``[out, in * kernel]``. An embedding table reads as a linear too;
    LoRA targets never name one."""
    out: list[Linear] = []
    for key, shape in shapes.items():
        if not key.endswith(".weight") or len(shape) < 2:
            continue
        name = key[: -len(".weight")]
        fan_in = 1
        for dim in shape[1:]:
            fan_in *= int(dim)
        out.append(Linear(name, fan_in, int(shape[0]), bias=f"{name}.bias" in shapes))
    return out


def read_json(path: Path) -> dict[str, Any]:
    """A JSON file as a dict; ``ValueError`` naming the file when it cannot be read."""
    try:
        return json.loads(Path(path).read_text())
    except (OSError, ValueError) as exc:
        raise ValueError(f"cannot read {path}: {exc}") from None


def model_facts(backend: str, model: str | Path | None = None, text_tokens: int | None = None,
                options: Mapping[str, Any] | None = None) -> ModelFacts:
    """Facts of ``model`` (a pipeline folder, a name the backend knows, or None: its default model),
    as the backend registered as ``backend`` declares them (its ``planner_facts``).

    ``text_tokens`` overrides the text length (``max_sequence_length``); ``options`` are the
    run's backend options (guidance, frames, ...). Raises ``ValueError`` naming the backend when it
    declares no facts, and whatever the backend raises for a model it cannot size.
    """
    factory = registry.load("backend", backend)
    declare = getattr(factory, "planner_facts", None)
    if declare is None:
        raise ValueError(f"backend {backend!r} declares no size facts (a planner_facts classmethod); "
                         "the plan counts velocity calls only")
    return declare(model, text_tokens=text_tokens, options=dict(options or {}))
