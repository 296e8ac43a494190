"""Model cards: the ``README.md`` the Hugging Face Hub reads, written beside every LoRA and pipeline export.

The card has the Hub's YAML front matter (``base_model`` when the base is a Hub repo id or a local
HF-cache snapshot of one, ``library_name: diffusers``, ``pipeline_tag: text-to-image``, ``tags``)
and a body naming the base model, the algorithm, the rewards with their weights, the iterations,
the treesdk version, the files and how to load them.

The facts come from an export's ``treesdk.*`` metadata (see :func:`treesdk.metadata.export_metadata`)
plus, when known, the training rewards (a run's ``config.json`` ``"rewards"``).

Every fact is text a user chose (a recipe's ``name``, a model path, a reward's name, the recipe's
values), so each is written as data, never as markup: in table cells as a code span whose fence is
longer than any backtick run inside, with ``|`` escaped and line breaks made spaces (a cell stays
one cell of one row); in the heading with HTML and Markdown characters escaped; in the YAML front
matter as quoted scalars unless plainly safe; in fenced blocks behind a fence longer than any
backtick run of the content. A ``<script>`` in a recipe name is shown, never run or rendered.
"""

from __future__ import annotations

import json
import re
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from treesdk.hub_cache import hub_repo_id_of

#: export formats that get a card (what the Hub hosts: LoRA adapters and diffusers pipelines)
CARD_FORMATS = ("lora", "diffusers")
#: the first line of every card treesdk writes (an existing README.md without it is never overwritten)
MARKER = "<!-- written by treesdk -->"

_PIPELINES = {"flux": "FluxPipeline", "sd3": "StableDiffusion3Pipeline"}
_HUB_ID = re.compile(r"^[A-Za-z0-9][\w.-]*/[\w.-]+$")


def hub_repo_id(base: str) -> str | None:
    """``org/name`` when ``base`` is a Hub repo id or a path inside a local HF cache snapshot
    (``.../models--org--name/snapshots/<hash>``); None for other local paths."""
    cached = hub_repo_id_of(base)
    if cached:
        return cached
    if _HUB_ID.match(base) and not Path(base).exists():
        return base
    return None


_PLAIN_TAG = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._+-]*$")
_MARKDOWN_SPECIALS = re.compile(r"([\\`*_{}\[\]()#+!|~>-])")


def _one_line(text: str) -> str:
    """``text`` with every line break and other control character made a space."""
    return "".join(" " if ord(c) < 32 or ord(c) == 127 or c in "\u2028\u2029\x85" else c for c in text)


def _code(text: str) -> str:
    """``text`` as an inline code span fit for a table cell: one line, ``|`` escaped, the fence
    longer than any backtick run inside (CommonMark), padded when it starts or ends with one."""
    text = _one_line(str(text)).replace("|", "\\|")
    longest = max((len(run) for run in re.findall(r"`+", text)), default=0)
    fence = "`" * (longest + 1)
    pad = " " if text.startswith("`") or text.endswith("`") or not text.strip() else ""
    return f"{fence}{pad}{text}{pad}{fence}"


def _plain(text: str) -> str:
    """``text`` as literal Markdown text: one line, HTML (``<``, ``>``, ``&``) and Markdown characters escaped."""
    text = _one_line(str(text)).replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;")
    return _MARKDOWN_SPECIALS.sub(r"\\\1", text)


def _yaml_scalar(text: str) -> str:
    """A YAML scalar: as it is when plainly safe (``treegrpo``), else double-quoted (JSON strings are YAML)."""
    return text if _PLAIN_TAG.match(text) else json.dumps(text)


def _fenced(lang: str, lines: Sequence[str]) -> list[str]:
    """A fenced code block whose fence is longer than any backtick run in ``lines``."""
    longest = max((len(run) for line in lines for run in re.findall(r"`+", line)), default=0)
    fence = "`" * max(3, longest + 1)
    return [fence + lang, *lines, fence]


def model_card(metadata: Mapping[str, str], kind: str, files: Sequence[str] = (),
               rewards: Mapping[str, Any] | None = None) -> str:
    """The card text for an export of ``kind`` (``lora``, ``diffusers``, ``comfyui``, ...)."""
    base = str(metadata.get("treesdk.base_model", "unknown"))
    backend = str(metadata.get("treesdk.backend", "unknown"))
    family = str(metadata.get("treesdk.family", backend))
    algorithm = str(metadata.get("treesdk.algorithm", "custom"))
    iterations = str(metadata.get("treesdk.iterations", "?"))
    version = str(metadata.get("treesdk.version", "?"))
    repo = hub_repo_id(base)
    tags = ["treesdk", "text-to-image", "reinforcement-learning", algorithm]
    if kind == "lora":
        tags.append("lora")
    front = ["---"]
    if repo:
        front.append(f"base_model: {repo}")
    front += ["library_name: diffusers", "pipeline_tag: text-to-image", "tags:"]
    front += [f"- {_yaml_scalar(_one_line(tag))}" for tag in dict.fromkeys(tags)]
    front.append("---")
    reward_text = ", ".join(f"{_code(k)} (weight {_weight(v):g})" for k, v in (rewards or {}).items()) or "not recorded"
    names = [Path(f).name for f in files]
    body = [
        MARKER,
        f"# {_plain(algorithm)} post-training of {_plain(repo or Path(base).name or base)}",
        "",
        f"Trained with treesdk {_plain(version)}: reinforcement learning of a "
        "flow-matching text-to-image model with tree-structured sampling.",
        "",
        "| | |",
        "|---|---|",
        f"| base model | {_code(base)} |",
        f"| backend | {_code(backend)} |",
        f"| algorithm | {_code(algorithm)} |",
        f"| rewards | {reward_text} |",
        f"| iterations | {_plain(iterations)} |",
        f"| export format | {_code(kind)} |",
    ]
    if names:
        body.append(f"| files | {', '.join(_code(n) for n in names)} |")
    body += ["", "## How to load", "", *_fenced("python", _usage(kind, family, repo or base, names))]
    recipe = metadata.get("treesdk.recipe")
    if recipe:
        try:
            pretty = json.dumps(json.loads(recipe), indent=2, sort_keys=True)
        except ValueError:
            pretty = recipe
        body += ["", "## Recipe", "", *_fenced("json", pretty.splitlines())]
    return "\n".join(front + body) + "\n"


def _weight(value: object) -> float:
    """A reward's weight from ``1.0`` or ``{"weight": 1.0, "options": ...}`` (run files store both)."""
    return float(value.get("weight", 1.0)) if isinstance(value, Mapping) else float(value)  # type: ignore[arg-type]


def _usage(kind: str, family: str, base: str, names: Sequence[str]) -> list[str]:
    pipeline = _PIPELINES.get(family, "DiffusionPipeline")
    if kind == "lora":
        weight = next((n for n in names if n.endswith(".safetensors")), "pytorch_lora_weights.safetensors")
        return [f"from diffusers import {pipeline}", "",
                f"pipe = {pipeline}.from_pretrained({base!r})",
                f"pipe.load_lora_weights('.', weight_name={weight!r})  # this folder"]
    if kind == "diffusers":
        return [f"from diffusers import {pipeline}", "", f"pipe = {pipeline}.from_pretrained('.')  # this folder"]
    if kind == "comfyui":
        return ["# ComfyUI: put the .safetensors file in models/diffusion_models/ and load it with",
                "# the 'Load Diffusion Model' node."]
    return ["# treesdk.load_backend(...) with the exported file, see the treesdk README"]


def card_path(files: Sequence[str], kind: str) -> Path | None:
    """Where the card of an export goes: the exported folder (``diffusers``), else the folder of the
    first file. None when nothing was written."""
    if not files:
        return None
    first = Path(files[0])
    if kind == "diffusers":
        # the pipeline folder is the common parent of every file written
        parents = [Path(f).parent for f in files]
        root = parents[0]
        while any(root not in (p, *p.parents) for p in parents):
            root = root.parent
        return root / "README.md"
    return first.parent / "README.md"


def write_model_card(files: Sequence[str], kind: str, metadata: Mapping[str, str],
                     rewards: Mapping[str, Any] | None = None) -> Path | None:
    """Write the card of a ``lora`` or ``diffusers`` export (see :func:`card_path`); returns its
    path, or None for other formats and when a ``README.md`` not written by treesdk is already
    there (it is left alone)."""
    target = card_path(files, kind) if kind in CARD_FORMATS else None
    if target is None:
        return None
    if target.exists() and MARKER not in target.read_text(errors="replace"):
        return None
    from treesdk.io import atomic_write_bytes

    atomic_write_bytes(target, model_card(metadata, kind, files, rewards).encode())  # an interrupt leaves the old card
    return target
