"""``treesdk tiny``: build a tiny random pipeline of any supported model family, offline.

``treesdk tiny --list`` prints the family names, one per line; ``treesdk tiny --family NAME --out
DIR`` writes that family's tiny pipeline to DIR in the Hugging Face hub layout (seeded random
weights, tokenizers trained on the fly; nothing is downloaded), ready for
``treesdk train --backend diffusers --model DIR``. The builders are
:mod:`treesdk_backends.tiny`; they need the ``diffusers`` extra.

The pipeline is built in a temporary folder beside DIR and renamed to DIR when complete: Ctrl-C,
SIGTERM or SIGHUP while it builds remove the partial folder, print ``interrupted (SIG...)`` and exit
130 / 143 / 129; DIR never holds half a pipeline.
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from treesdk.errors import UserError

from treesdk.io import check_writable_folder

from .common import clean_errors, console
from .stopping import stoppable


def _families() -> dict:
    try:
        from treesdk_backends.tiny import FAMILIES
    except ImportError as exc:  # diffusers / transformers missing
        raise UserError(f"treesdk tiny needs the diffusers extra ({exc}); install it with: pip install 'treesdk[diffusers]'") from None
    return FAMILIES


def tiny(
    list_families: Annotated[bool, typer.Option("--list", help="print the family names, one per line")] = False,
    family: Annotated[str | None, typer.Option("--family", "-f", help="the family to build (see --list)")] = None,
    out: Annotated[Path | None, typer.Option("--out", "-o", help="folder to write the pipeline to (new or empty)")] = None,
    seed: Annotated[int, typer.Option("--seed", min=0, max=2**63 - 1, help="seed of the random weights")] = 0,
) -> None:
    """Build a tiny offline pipeline of a model family (for trying every command without a GPU or a download)."""
    with clean_errors():
        families = _families()
        if list_families:
            if family is not None or out is not None:
                raise ValueError("--list takes no --family/--out; run `treesdk tiny --family NAME --out DIR` to build one")
            for name in families:
                typer.echo(name)
            return
        if family is None or out is None:
            raise ValueError("give --list, or both --family NAME and --out DIR (e.g. `treesdk tiny --family flux --out tiny-flux`)")
        if family not in families:
            raise ValueError(f"--family: unknown model family {family!r}; known: {', '.join(families)}")
        if out.exists() and (not out.is_dir() or any(out.iterdir())):
            raise ValueError(f"--out: {out} exists and is not an empty folder; give a new or empty folder")
        check_writable_folder(out.parent if str(out.parent) else Path("."), "--out")
        spec = families[family]
        with stoppable(f"no pipeline was written to {out} (the partial one was removed)"):
            path = spec(out, seed=seed)
        console.print(f"wrote a tiny {spec.pipeline} ({spec.description}) to {path}", highlight=False)
        console.print(f"try: {train_command(spec, path)}", highlight=False, soft_wrap=True)


def train_command(spec, path: Path) -> str:  # noqa: ANN001 - a TinyFamily
    """A ``treesdk train`` line for the tiny pipeline at ``path``: its size, text length and frames
    are the folder's defaults (``treesdk_defaults.json``); a reward that needs no weights."""
    return (f"treesdk train --backend diffusers --model {path} --algo treegrpo --k 2 --d 2 --steps 4 "
            f"--iters 2 --batch 1 --reward jpeg-compressibility")


def register(app: typer.Typer) -> None:
    """Add the ``tiny`` command to ``app``."""
    app.command(name="tiny")(tiny)
