"""The settings of a run as ``treesdk train`` flags, read from :class:`~treesdk.training.config.RunConfig`.

Each setting is declared once: a ``RunConfig`` field (name, type, default, description) whose
``json_schema_extra`` names its help panel and flag (:func:`treesdk.training.config.cli`). Walking
the model gives one :class:`Setting` per such field; :data:`ENTRIES` adds the flags that set one
key inside a mapping field (a backend option such as ``--lora-rank``, a recipe override such as
``--k``), whose help is the recipe field's own description where there is one. The command line
builds its options from :func:`run_settings` and nothing else.

A setting's ``path`` is where its value goes in the run-file data: ``"checkpoint.every"``,
``"backend.options.lora_rank"``, ``"overrides.tree.k"``.
"""

from __future__ import annotations

import types
import typing
from dataclasses import dataclass
from typing import Any, Literal

from pydantic import BaseModel

from treesdk.recipes import Recipe
from treesdk.training.config import RunConfig

#: the help panels of ``treesdk train --help``, in order
PANELS = ("model", "algorithm", "rewards", "prompts", "optimisation", "logging", "distributed", "export")


@dataclass(frozen=True)
class Setting:
    """One ``treesdk train`` flag and the field it sets.

    ``kind``: ``"value"`` (one value of ``type``), ``"flag"`` (a boolean ``--x/--no-x``),
    ``"repeat"`` (a repeatable string the command line parses into the field, e.g.
    ``--reward NAME=WEIGHT``)."""

    path: str
    flags: tuple[str, ...]
    panel: str
    help: str
    type: type
    kind: Literal["value", "flag", "repeat"] = "value"
    default: Any = None
    metavar: str | None = None

    @property
    def name(self) -> str:
        """The Python name of the flag (``--keep-checkpoints`` -> ``keep_checkpoints``; ``--set`` -> ``set_``)."""
        name = self.flags[0].removeprefix("--").replace("-", "_")
        return name + "_" if name in {"set", "json"} else name


#: flags that set one key of a mapping field: (path, flags, panel, type, kind, help or None = the
#: recipe field's description)
ENTRIES: tuple[tuple[str, tuple[str, ...], str, type, str, str | None], ...] = (
    ("backend.options.model", ("--model",), "model", str, "value", "checkpoint path or local HF cache id (default: the backend's)"),
    ("backend.options.resolution", ("--resolution",), "model", int, "value", "image resolution in pixels (default: the backend's)"),
    ("backend.options.lora_rank", ("--lora-rank",), "model", int, "value", "LoRA rank (0: train the whole transformer)"),
    ("backend.options.lora_alpha", ("--lora-alpha",), "model", float, "value", "LoRA alpha (default: the rank, scale 1)"),
    ("backend.options.lora_targets", ("--lora-targets",), "model", str, "value",
     "comma-separated peft target modules, e.g. attn.to_q,attn.to_v"),
    ("backend.options.gradient_checkpointing", ("--gradient-checkpointing",), "model", bool, "flag",
     "recompute activations in the backward pass (less memory)"),
    ("backend.options.guidance", ("--guidance", "--cfg"), "model", float, "value",
     "guidance scale (FLUX distilled guidance, SD3/digits CFG)"),
    ("backend.options.max_sequence_length", ("--max-sequence-length",), "model", int, "value",
     "text-encoder tokens (T5) per prompt"),
    ("overrides.tree.k", ("--k",), "algorithm", int, "value", None),
    ("overrides.tree.d", ("--d",), "algorithm", int, "value", None),
    ("overrides.steps", ("--steps",), "algorithm", int, "value", None),
    ("overrides.optim.lr", ("--lr",), "optimisation", float, "value", None),
    ("overrides.optim.optimizer", ("--optimizer",), "optimisation", str, "value", None),
    ("overrides.optim.lr_schedule", ("--lr-schedule",), "optimisation", str, "value", None),
    ("overrides.optim.lr_warmup", ("--lr-warmup",), "optimisation", int, "value", None),
)


def run_settings() -> tuple[Setting, ...]:
    """Every ``treesdk train`` setting: the RunConfig fields that declare a flag, then :data:`ENTRIES`."""
    found = list(_fields(RunConfig, ""))
    for path, flags, panel, kind_type, kind, text in ENTRIES:
        found.append(Setting(path, flags, panel, text or _recipe_help(path.removeprefix("overrides.")), kind_type,
                             kind))  # type: ignore[arg-type]
    return tuple(found)


def _fields(model: type[BaseModel], prefix: str):
    for name, info in model.model_fields.items():
        path = f"{prefix}{name}"
        extra = info.json_schema_extra if isinstance(info.json_schema_extra, dict) else {}
        cli = extra.get("cli")
        section = _model_of(info.annotation)
        if cli is None:
            if section is not None:
                yield from _fields(section, path + ".")
            continue
        base = _plain(info.annotation)
        kind = cli.get("kind")
        if kind == "repeat":
            yield Setting(path, tuple(cli["flags"]), cli["panel"], info.description or "", str, "repeat",
                          metavar=cli.get("metavar"))
            continue
        value_type = str if kind == "str" else base
        default = info.get_default(call_default_factory=True)
        yield Setting(path, tuple(cli["flags"]), cli["panel"], info.description or "", value_type,
                      "flag" if value_type is bool else "value", default, cli.get("metavar"))


def _plain(annotation: Any) -> type:
    """``int | None`` -> ``int``; a Literal or anything else unusual -> ``str``."""
    args = [a for a in typing.get_args(annotation) if a is not type(None)]
    if isinstance(annotation, types.UnionType) or typing.get_origin(annotation) is typing.Union:
        return _plain(args[0]) if len(args) == 1 else str
    return annotation if annotation in (int, float, str, bool) else str


def _model_of(annotation: Any) -> type[BaseModel] | None:
    return annotation if isinstance(annotation, type) and issubclass(annotation, BaseModel) else None


def _recipe_help(dotted: str) -> str:
    """The description of a recipe field (``tree.k``), with the override it sets."""
    model: Any = Recipe
    info = None
    for part in dotted.split("."):
        info = model.model_fields[part]
        model = _model_of(info.annotation) or _model_of(_first_model(info.annotation))
    return f"{(info.description if info else None) or dotted} (recipe {dotted})"


def _first_model(annotation: Any) -> Any:
    return next((a for a in typing.get_args(annotation) if _model_of(a) is not None), None)


__all__ = ["ENTRIES", "PANELS", "Setting", "run_settings"]
