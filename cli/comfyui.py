"""``treesdk comfyui export DIR``: write a ComfyUI custom-node pack generated from the node specs.

    treesdk comfyui export ComfyUI/custom_nodes/treesdk [--force] [--no-plugins]
"""

from __future__ import annotations

from pathlib import Path

import typer

from .common import clean_errors

comfyui_app = typer.Typer(help="ComfyUI integration: a custom-node pack generated from treesdk's node specs.", no_args_is_help=True)


@comfyui_app.command("export")
def export(
    directory: Path = typer.Argument(..., help="Folder to write the pack into (e.g. ComfyUI/custom_nodes/treesdk)."),
    force: bool = typer.Option(False, "--force", help="Write into a non-empty folder that holds no treesdk pack."),
    plugins: bool = typer.Option(True, "--plugins/--no-plugins", help="Include reward and backend nodes from the registry."),
) -> None:
    """Write the ComfyUI node pack (V1: NODE_CLASS_MAPPINGS, INPUT_TYPES, RETURN_TYPES, FUNCTION, CATEGORY)."""
    from treesdk import nodes
    from treesdk.nodes.comfyui_pack import export_pack

    specs = list(nodes.all_nodes(plugins=plugins).values())
    with clean_errors():
        files = export_pack(directory, specs, force=force)
    for file in files:
        typer.echo(str(file))
    typer.echo(f"{len(specs)} nodes; copy the folder into ComfyUI/custom_nodes/ with treesdk installed in ComfyUI's Python")
    for name, error in (nodes.plugin_errors().items() if plugins else []):
        typer.echo(f"warning: {name} left out, it failed to import: {error}", err=True)


def register(app: typer.Typer) -> None:
    """Add the ``comfyui`` command group to ``app``."""
    app.add_typer(comfyui_app, name="comfyui")
