"""Helpers shared by the CLI commands: loading parts by name, clean one-line errors."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator, Sequence
from typing import Any

import typer
from rich.console import Console

console = Console(stderr=False)
err_console = Console(stderr=True)


@contextlib.contextmanager
def clean_errors() -> Iterator[None]:
    """Turn the errors a user can cause into one red line and exit code 1 (no traceback)."""
    from treesdk.recipes import RecipeError
    from treesdk.registry import PluginError

    try:
        yield
    except (RecipeError, PluginError, FileNotFoundError, ValueError, KeyError, OSError, RuntimeError) as exc:
        message = str(exc) if not isinstance(exc, KeyError) else str(exc.args[0] if exc.args else exc)
        err_console.print(f"[bold red]error:[/] {message}", markup=True, highlight=False)
        raise typer.Exit(code=1) from None


def parse_rewards(options: Sequence[str] | None) -> dict[str, float]:
    """``["a", "b=0.2"]`` -> ``{"a": 1.0, "b": 0.2}``."""
    from treesdk.rewards import parse_reward_option

    return dict(parse_reward_option(o) for o in options or [])


def parse_reward_options(items: Sequence[str] | None) -> dict[str, dict[str, Any]]:
    """``["hpsv2.1:checkpoint=/p/HPS_v2.1_compressed.pt"]`` -> ``{"hpsv2.1": {"checkpoint": "/p/..."}}``
    (values parsed as YAML)."""
    import yaml

    out: dict[str, dict[str, Any]] = {}
    for item in items or []:
        name, colon, rest = item.partition(":")
        key, eq, value = rest.partition("=")
        if not colon or not eq or not name.strip() or not key.strip():
            raise ValueError(f"--reward-opt {item!r}: expected NAME:KEY=VALUE, e.g. hpsv2.1:checkpoint=/path/file.pt")
        out.setdefault(name.strip(), {})[key.strip()] = yaml.safe_load(value)
    return out


def check_reward_options(options: dict[str, dict[str, Any]], names: Sequence[str]) -> None:
    """Every ``--reward-opt`` must name a reward that is used."""
    unknown = sorted(set(options) - set(names))
    if unknown:
        raise ValueError(f"--reward-opt names {unknown}, which are not among the rewards used: {list(names)}")


def load_rewards(names: Sequence[str], device: str | None, options: dict[str, dict[str, Any]] | None = None) -> dict[str, Any]:
    """Reward models by registry name with their ``--reward-opt`` options, on ``device``."""
    import treesdk

    options = options or {}
    models = {}
    for name in names:
        model = treesdk.load_reward(name, **options.get(name, {}))
        models[name] = model.to(device) if device else model
    return models


def backend_options(model: str | None, resolution: int | None, device: str | None, extra: Sequence[str] | None) -> dict[str, Any]:
    """Backend keyword options from the shared flags and ``--backend-opt KEY=VALUE`` (YAML values)."""
    import yaml

    options: dict[str, Any] = {}
    if model is not None:
        options["model"] = model
    if resolution is not None:
        options["resolution"] = resolution
    if device is not None:
        options["device"] = device
    for item in extra or []:
        key, sep, value = item.partition("=")
        if not sep:
            raise ValueError(f"--backend-opt {item!r}: expected KEY=VALUE")
        options[key.strip()] = yaml.safe_load(value)
    return options


def parse_overrides(items: Sequence[str] | None) -> dict[str, Any]:
    """``--set tree.k=3`` style recipe overrides (values parsed as YAML)."""
    import yaml

    out: dict[str, Any] = {}
    for item in items or []:
        key, sep, value = item.partition("=")
        if not sep:
            raise ValueError(f"--set {item!r}: expected DOTTED.KEY=VALUE, e.g. --set noise.level=0.8")
        out[key.strip()] = yaml.safe_load(value)
    return out


def read_prompts(path: str | None) -> list[str] | None:
    """One prompt per non-empty line of ``path`` (None: no file)."""
    if path is None:
        return None
    from pathlib import Path

    lines = [line.strip() for line in Path(path).read_text().splitlines()]
    prompts = [line for line in lines if line and not line.startswith("#")]
    if not prompts:
        raise ValueError(f"prompt file {path} holds no prompts")
    return prompts


def prompt_seed_pairs(prompts: Sequence[str], seeds: int) -> tuple[list[str], list[int]]:
    """Every prompt with seeds ``0..seeds-1``: ``(prompts repeated, seeds)``, prompt-major."""
    return [p for p in prompts for _ in range(seeds)], [s for _ in prompts for s in range(seeds)]
