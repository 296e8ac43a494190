"""``treesdk plugins``: every registered backend, reward and algorithm, where it comes from, and
whether it imports.

Reads the entry-point groups through :func:`treesdk.registry.plugin_status`; a plugin that fails to
import is listed with its error and never hides the others. ``--json`` prints a list of objects
``{kind, name, value, distribution, version, ok, error}`` for scripts.
"""

from __future__ import annotations

import json
from typing import Annotated

import typer

from treesdk.registry import GROUPS, plugin_status


def plugins(
    kind: Annotated[
        list[str] | None,
        typer.Option("--kind", "-k", help=f"only these kinds ({', '.join(GROUPS)}); repeatable"),
    ] = None,
    as_json: Annotated[bool, typer.Option("--json", help="print JSON instead of a table")] = False,
    verbose: Annotated[bool, typer.Option("--verbose", "-v", help="also show each entry point (module:object)")] = False,
) -> None:
    """List backends, rewards and algorithms with their distribution, version and load status."""
    kinds = tuple(kind) if kind else tuple(GROUPS)
    unknown = [k for k in kinds if k not in GROUPS]
    if unknown:
        raise typer.BadParameter(f"unknown kind(s) {unknown}; expected one of {list(GROUPS)}", param_hint="--kind")
    rows = plugin_status(kinds)
    if as_json:
        payload = [
            {
                "kind": r.kind,
                "name": r.name,
                "value": r.value,
                "distribution": r.distribution,
                "version": r.version,
                "ok": r.ok,
                "error": r.error,
            }
            for r in rows
        ]
        typer.echo(json.dumps(payload, indent=2))
        return

    from rich.console import Console
    from rich.table import Table

    table = Table(title="treesdk plugins", show_lines=False)
    table.add_column("kind", no_wrap=True)
    table.add_column("name", no_wrap=True)
    if verbose:
        table.add_column("entry point", overflow="fold")
    table.add_column("distribution", no_wrap=True)
    table.add_column("version", no_wrap=True)
    table.add_column("status", overflow="fold")
    for r in rows:
        status = "[green]ok[/green]" if r.ok else f"[red]error[/red]: {r.error}"
        cells = [r.kind, r.name] + ([r.value] if verbose else []) + [r.distribution or "?", r.version or "?", status]
        table.add_row(*cells)
    console = Console()
    if verbose and console.width < 160:  # entry points are long; folding them makes them unreadable
        console = Console(width=160)
    console.print(table)
    failed = sum(not r.ok for r in rows)
    if failed:
        console.print(f"[yellow]{failed} plugin(s) failed to import; the others are usable.[/yellow]")


def register(app: typer.Typer) -> None:
    """Add the ``plugins`` command to ``app``."""
    app.command(name="plugins")(plugins)
