"""``treesdk nodes``: every node type with its fields; ``--schema``: JSON Schema of a recipe file.

    treesdk nodes                      all nodes (recipe parts, runtime nodes, rewards, backends)
    treesdk nodes tree tree-backup     only these node types
    treesdk nodes --schema > recipe.schema.json
    treesdk nodes --check my_hybrid.yaml   validate a recipe graph and print the resolved recipe
"""

from __future__ import annotations

import json
from pathlib import Path

import typer

from .common import clean_errors


def _fmt(value: object) -> str:
    if value is None:
        return "None"
    if isinstance(value, tuple):
        value = list(value)
    return json.dumps(value) if not isinstance(value, str) else repr(value)


def _num(value: float) -> str:
    return str(int(value)) if float(value).is_integer() else f"{value:g}"


def _range(field) -> str:  # noqa: ANN001 - treesdk.nodes.InputField
    if field.choices:
        return " | ".join(str(c) for c in field.choices)
    lo = "" if field.minimum is None else f"{'(' if field.exclusive_minimum else '['}{_num(field.minimum)}"
    hi = "" if field.maximum is None else f"{_num(field.maximum)}{')' if field.exclusive_maximum else ']'}"
    return f"{lo or '(-inf'}, {hi or 'inf)'}" if lo or hi else ""


def nodes(
    types: list[str] | None = typer.Argument(None, help="Node types to show (default: all)."),  # noqa: UP007
    schema: bool = typer.Option(False, "--schema", help="Print the JSON Schema of a recipe graph file and exit."),
    as_json: bool = typer.Option(False, "--json", help="Print the node specs as JSON instead of a table."),
    check: Path | None = typer.Option(None, "--check", help="Validate a recipe file and print the resolved recipe."),  # noqa: UP007
    plugins: bool = typer.Option(True, "--plugins/--no-plugins", help="Include rewards, backends and recipe parts from the entry-point registry."),
) -> None:
    """List every node type (recipe parts, SDE steps, estimators, losses, rewards, backends) with its fields."""
    from treesdk import nodes as registry
    from treesdk.nodes.schema import graph_json_schema
    from treesdk.recipes import load_recipe

    if schema:
        typer.echo(json.dumps(graph_json_schema(plugins=plugins), indent=2))
        return
    if check is not None:
        with clean_errors():
            recipe = load_recipe(str(check))
        typer.echo(json.dumps(recipe.model_dump(mode="json"), indent=2))
        return
    specs = registry.all_nodes(plugins=plugins)
    if types:
        unknown = [t for t in types if t not in specs]
        if unknown:
            typer.echo(f"error: unknown node type(s) {', '.join(unknown)}; known: {', '.join(specs)}", err=True)
            raise typer.Exit(2)
        specs = {t: specs[t] for t in types}
    if as_json:
        out = []
        for spec in specs.values():
            out.append(
                {
                    "type": spec.type,
                    "outputs": [{"name": n, "type": t} for n, t in spec.outputs],
                    "category": spec.category,
                    "source": spec.source,
                    "description": spec.description,
                    "connections": [
                        {"name": c.name, "type": c.type, "required": c.required, "many": c.many} for c in spec.connections
                    ],
                    "inputs": spec.json_schema(),
                }
            )
        typer.echo(json.dumps(out, indent=2))
        return

    from rich.console import Console
    from rich.markup import escape
    from rich.table import Table

    table = Table(title="treesdk nodes", show_lines=False, expand=False)
    for column in ("node", "gives", "input", "type", "default", "range", "description"):
        table.add_column(column, overflow="fold")
    for spec in specs.values():
        rows = [
            (f"<- {c.name}", c.type + ("[]" if c.many else ""), "required" if c.required else "optional", "", c.description)
            for c in spec.connections
        ]
        rows += [
            (f.name, f.annotation, "(required)" if f.required else _fmt(f.default), _range(f), f.description)
            for f in spec.fields()
        ]
        rows = [tuple(escape(str(cell)) for cell in row) for row in rows]
        rows = [("", "", "", "", f"[dim]{escape(spec.description)}[/dim]"), *rows]
        gives = ", ".join(t for _, t in spec.outputs)
        for i, row in enumerate(rows):
            first = i == 0
            table.add_row(
                f"[bold]{spec.type}[/bold]" if first else "",
                gives if first else "",
                *row,
                end_section=i == len(rows) - 1,
            )
    console = Console()
    console.print(table)
    for name, error in (registry.plugin_errors().items() if plugins else []):
        console.print(f"[yellow]not listed: {name} failed to import: {error}[/yellow]")


def register(app: typer.Typer) -> None:
    """Add the ``nodes`` command to ``app``."""
    app.command("nodes")(nodes)
