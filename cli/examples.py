"""``treesdk examples``: where the shipped examples are, and ``--copy DIR`` to get an editable copy."""

from __future__ import annotations

import shutil
from pathlib import Path
from typing import Annotated, Optional

import typer


def examples(
    copy: Annotated[Optional[Path], typer.Option("--copy", help="copy every example into this folder (created)")] = None,
    force: Annotated[bool, typer.Option(help="overwrite files that already exist in --copy DIR")] = False,
) -> None:
    """List the examples shipped with treesdk (run and recipe files, scripts, a reward plugin)."""
    import treesdk_examples

    root = treesdk_examples.folder()
    names = treesdk_examples.files()
    if copy is None:
        typer.echo(f"examples in {root}:")
        for name in names:
            typer.echo(f"  {name}")
        typer.echo("copy them with: treesdk examples --copy DIR")
        return
    if copy.exists() and not copy.is_dir():
        typer.echo(f"error: --copy {copy}: a file of that name exists; name a folder", err=True)
        raise typer.Exit(1)
    clashes = [n for n in names if (copy / n).exists()]
    if clashes and not force:
        typer.echo(f"error: --copy {copy}: {len(clashes)} file(s) exist already (e.g. {clashes[0]}); add --force to "
                   "overwrite them", err=True)
        raise typer.Exit(1)
    for name in names:
        (copy / name).parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(root / name, copy / name)
    typer.echo(f"copied {len(names)} files into {copy}")


def register(app: typer.Typer) -> None:
    app.command("examples")(examples)
