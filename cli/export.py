"""``treesdk export``: write a trained policy as LoRA / merged weights, or check an exported file.

    treesdk export RUN_OR_CHECKPOINT [--format lora|diffusers|comfyui|digits] [--out PATH] [--dtype bf16]
    treesdk export --check FILE [--base PATH]

Errors (bad run folder, format the backend cannot write, no LoRA adapter, unwritable path) print
one line and exit with code 1; ``--check`` exits 1 when a tensor does not map onto the base model.
Ctrl-C, SIGTERM or SIGHUP during an export print ``interrupted (SIG...)`` and exit 130 / 143 / 129:
files are written under temporary names and renamed, so the previous export stays whole and
nothing half-written is left (:mod:`treesdk_cli.stopping`).
"""

from __future__ import annotations

from pathlib import Path
from typing import Optional

import typer

from .common import clean_errors
from .stopping import stoppable

_FORMATS = ("lora", "diffusers", "comfyui", "digits")


def _fail(message: str, code: int = 1) -> typer.Exit:
    typer.echo(f"error: {message}", err=True)
    return typer.Exit(code)


def export(
    run_or_checkpoint: Optional[Path] = typer.Argument(  # noqa: UP007 - typer needs Optional
        None, help="Run folder (its latest checkpoint) or a checkpoint folder RUN/checkpoints/<name>/."
    ),
    fmt: str = typer.Option("lora", "--format", "-f", help="lora | diffusers | comfyui | digits"),
    out: Optional[Path] = typer.Option(None, "--out", "-o", help="Target file or folder (default: RUN/export/)."),  # noqa: UP007
    check: Optional[Path] = typer.Option(None, "--check", help="Read FILE back and check it against its base model."),  # noqa: UP007
    base: Optional[str] = typer.Option(None, "--base", help="Base model for --check (default: from the file's metadata)."),  # noqa: UP007
    device: str = typer.Option("cpu", "--device", help="Device to load the model on for the export."),
    dtype: Optional[str] = typer.Option(None, "--dtype", help="fp32 | bf16 | fp16: dtype of the exported weights (default: as trained)."),  # noqa: UP007
) -> None:
    """Export a trained policy (safetensors, atomic writes, treesdk metadata), or --check a file."""
    import treesdk
    from treesdk.export_files import check_file

    if check is not None:
        if run_or_checkpoint is not None:
            raise _fail("give either RUN_OR_CHECKPOINT (to export) or --check FILE, not both", 2)
        with clean_errors():
            report = check_file(check, base=base)
        typer.echo(report.summary())
        if not report.ok:
            raise typer.Exit(1)
        return
    if run_or_checkpoint is None:
        raise _fail("missing RUN_OR_CHECKPOINT (a run folder or checkpoint folder), or use --check FILE", 2)
    if fmt not in _FORMATS:
        raise _fail(f"unknown format {fmt!r}; expected one of {', '.join(_FORMATS)}", 2)
    with clean_errors(), stoppable("no file was left half-written (each is written under a temporary name, then renamed); "
                                            "an earlier export is as it was"):
        files = treesdk.export_run(run_or_checkpoint, fmt, out, device=device, dtype=dtype)
    for file in files:
        typer.echo(file)


def register(app: typer.Typer) -> None:
    """Add the ``export`` command to ``app``."""
    app.command("export")(export)
