"""``treesdk plugins``: every registered backend, reward and algorithm, where it comes from, whether
it imports and, for rewards, whether their weights are on disk.

Reads the entry-point groups through :func:`treesdk.registry.plugin_status`; a plugin that fails to
import is listed with its error and never hides the others. ``--json`` prints a list of objects
``{kind, name, value, distribution, version, ok, error}`` for scripts (strict JSON alone on stdout: what a plugin prints while it imports goes to stderr); reward objects also carry
``weights: {status, found, looked, detail}``.

"ok" only means the module imports. The ``weights`` column says whether a reward's default weights
are found (``found`` / ``missing``), not needed (``n/a``, e.g. the JPEG rewards), or not reported
(``unknown``: the reward class has no ``weights_status()``). It comes from the reward class's optional
``weights_status()`` (classmethod or staticmethod returning an object with ``found: bool | None``,
``looked: list[str]``, ``detail: str``, e.g. ``treesdk_plugins.common.WeightsStatus``), which runs the
reward's own default lookup (local path, local Hugging Face cache, ``$TREESDK_WEIGHTS``) as presence
checks only: no model is loaded, nothing is downloaded. ``--reward-opt`` values are not applied.

``--verbose`` also shows each entry point, the places each reward's weights were looked for and, for
every backend and reward that imports, its constructor options (name, default, description): what
``--backend-opt KEY=VALUE`` / ``--reward-opt NAME:KEY=VALUE`` and a run file's ``options`` accept
(JSON: an ``options`` object).
"""

from __future__ import annotations

import contextlib
import json
import math
import sys
from typing import Annotated

import typer

from treesdk.registry import GROUPS, plugin_status


def plugins(
    kind: Annotated[
        list[str] | None,
        typer.Option("--kind", "-k", help=f"only these kinds ({', '.join(GROUPS)}); repeatable"),
    ] = None,
    as_json: Annotated[bool, typer.Option("--json", help="print JSON instead of a table")] = False,
    verbose: Annotated[bool, typer.Option("--verbose", "-v", help="also show each entry point and every backend's and reward's options")] = False,
) -> None:
    """List backends, rewards and algorithms with their distribution, version and load status."""
    kinds = tuple(kind) if kind else tuple(GROUPS)
    unknown = [k for k in kinds if k not in GROUPS]
    if unknown:
        raise typer.BadParameter(f"unknown kind(s) {unknown}; expected one of {list(GROUPS)}", param_hint="--kind")
    if as_json:
        # stdout carries the JSON alone: what plugins print while they import (or while their
        # weights and options are looked up) goes to stderr
        with contextlib.redirect_stdout(sys.stderr):
            payload = json_payload(kinds, verbose)
        typer.echo(json.dumps(json_safe(payload), indent=2, allow_nan=False))
        return
    rows = plugin_status(kinds)


    from rich.console import Console
    from rich.table import Table

    table = Table(title="treesdk plugins", show_lines=False)
    table.add_column("kind", no_wrap=True)
    table.add_column("name", no_wrap=True)
    if verbose:
        table.add_column("entry point", overflow="fold")
    table.add_column("distribution", overflow="fold")
    table.add_column("version", no_wrap=True)
    table.add_column("status", overflow="fold", min_width=6)
    show_weights = any(r.kind == "reward" for r in rows)
    if show_weights:
        table.add_column("weights", no_wrap=True, min_width=7)
    weights = {r.name: weights_info(r.name, r.ok) for r in rows if r.kind == "reward"}
    for r in rows:
        status = "[green]ok[/green]" if r.ok else f"[red]error[/red]: {r.error}"
        cells = [r.kind, r.name] + ([r.value] if verbose else []) + [r.distribution or "?", r.version or "?", status]
        if show_weights:
            cells.append(WEIGHT_STYLES[weights[r.name]["status"]] if r.kind == "reward" else "")
        table.add_row(*cells)
    console = Console()
    if verbose and console.width < 160:  # entry points are long; folding them makes them unreadable
        console = Console(width=160)
    console.print(table)
    if verbose and weights:
        console.print(weights_table(weights))
    if verbose:
        for r in rows:
            if r.ok and r.kind in OPTION_KINDS:
                console.print(options_table(r.kind, r.name))
    failed = sum(not r.ok for r in rows)
    if failed:
        console.print(f"[yellow]{failed} plugin(s) failed to import; the others are usable.[/yellow]")


def json_payload(kinds: tuple[str, ...], verbose: bool) -> list[dict[str, object]]:
    """The ``--json`` list: one object per entry point (see the module docstring)."""
    return [
        {
            "kind": r.kind,
            "name": r.name,
            "value": r.value,
            "distribution": r.distribution,
            "version": r.version,
            "ok": r.ok,
            "error": r.error,
            **({"weights": weights_info(r.name, r.ok)} if r.kind == "reward" else {}),
            **({"options": plugin_options(r.kind, r.name)} if verbose and r.ok and r.kind in OPTION_KINDS else {}),
        }
        for r in plugin_status(kinds)
    ]


def json_safe(value: object) -> object:
    """``value`` as strict JSON can hold it: a non-finite float (an option defaulting to ``inf``)
    becomes its name (``"inf"``), anything that is not a JSON type its ``str`` (a ``Path`` default)."""
    if isinstance(value, float) and not math.isfinite(value):
        return str(value)
    if isinstance(value, dict):
        return {str(k): json_safe(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [json_safe(v) for v in value]
    return value if value is None or isinstance(value, (str, int, float, bool)) else str(value)


#: the ``weights`` column's cell for each status
WEIGHT_STYLES = {"found": "[green]found[/green]", "missing": "[red]missing[/red]", "n/a": "n/a", "unknown": "[yellow]unknown[/yellow]"}


def weights_info(name: str, imported: bool = True) -> dict[str, object]:
    """``{"status", "found", "looked", "detail"}`` of reward ``name``'s weights from its class's optional
    ``weights_status()``; ``status`` is ``found`` / ``missing`` / ``n/a`` (``found`` None: needs no
    weights) / ``unknown`` (no such method, the plugin does not import, or the check itself failed)."""
    if not imported:
        return {"status": "unknown", "found": None, "looked": [], "detail": "the plugin does not import"}
    from treesdk import registry

    check = getattr(registry.load("reward", name), "weights_status", None)
    if check is None:
        return {"status": "unknown", "found": None, "looked": [], "detail": "the reward does not report its weights (no weights_status())"}
    try:
        result = check()
        found, looked, detail = result.found, [str(p) for p in result.looked], str(getattr(result, "detail", ""))
    except Exception as exc:  # noqa: BLE001 - a third-party check must not break the listing
        return {"status": "unknown", "found": None, "looked": [], "detail": f"weights_status() failed: {type(exc).__name__}: {exc}"}
    status = "n/a" if found is None else ("found" if found else "missing")
    return {"status": status, "found": None if found is None else bool(found), "looked": looked, "detail": detail}


def weights_table(weights: dict[str, dict[str, object]]) -> object:
    """A rich table of every reward's weights status and the places looked at (``--verbose``)."""
    from rich.table import Table

    table = Table(title="reward weights (default lookup; nothing loaded)", title_justify="left")
    table.add_column("reward", no_wrap=True)
    table.add_column("weights", no_wrap=True)
    table.add_column("looked at", overflow="fold")
    table.add_column("detail", overflow="fold")
    for name, info in weights.items():
        looked = "\n".join(info["looked"]) or "-"  # type: ignore[arg-type]
        table.add_row(name, WEIGHT_STYLES[str(info["status"])], looked, str(info["detail"]))
    return table


#: plugin kinds whose constructor options are listed by ``--verbose``
OPTION_KINDS = ("backend", "reward")


def plugin_options(kind: str, name: str) -> dict[str, dict[str, object]]:
    """``{option: {"default": ..., "required": bool, "description": ...}}`` of a plugin's constructor
    (:func:`treesdk.nodes.options.options_model`: its ``Options`` model or its ``__init__`` signature
    and docstring)."""
    from treesdk import registry
    from treesdk.nodes.options import options_model

    factory = registry.load(kind, name)
    fields = dict(options_model(factory).model_fields)
    adapter = getattr(factory, "adapter_class", None)  # a diffusers family backend: its family's options too
    if adapter is not None:
        fields.update(options_model(adapter).model_fields)
    from treesdk.nodes.options import _param_docs

    docs: dict[str, str] = {}  # descriptions a subclass leaves to its bases' "Args:" sections
    for cls in [*getattr(factory, "__mro__", ()), *getattr(adapter, "__mro__", ())]:
        for text in (cls.__doc__, getattr(cls.__init__, "__doc__", None)):
            docs = {**_param_docs(text), **docs}
    out: dict[str, dict[str, object]] = {}
    for option, field in fields.items():
        required = field.is_required()
        family = f"option of the {getattr(adapter, 'family', '')} family ({getattr(adapter, '__name__', '')})"
        out[option] = {"default": None if required else field.default, "required": required,
                       "description": field.description or docs.get(option)
                       or (family if adapter is not None and option in options_model(adapter).model_fields else "")}
    return out


def options_table(kind: str, name: str) -> object:
    """A rich table of :func:`plugin_options`."""
    from rich.table import Table

    flag = "--backend-opt KEY=VALUE" if kind == "backend" else f"--reward-opt {name}:KEY=VALUE"
    table = Table(title=f"{kind} {name}: options ({flag})", title_justify="left")
    table.add_column("option", no_wrap=True)
    table.add_column("default", overflow="fold")
    table.add_column("description", overflow="fold")
    for option, info in plugin_options(kind, name).items():
        default = "(required)" if info["required"] else repr(info["default"])
        table.add_row(option, default, " ".join(str(info["description"]).split()))
    return table


def register(app: typer.Typer) -> None:
    """Add the ``plugins`` command to ``app``."""
    app.command(name="plugins")(plugins)
