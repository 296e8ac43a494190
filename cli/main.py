"""The ``treesdk`` command: a thin Typer layer over the Python API.

Each sub-command lives in its own module of this package and exposes ``register(app)``. Commands
import treesdk (and so torch) inside their functions: ``treesdk --help`` and shell completion then
start without paying for those imports.
"""

from __future__ import annotations

import importlib
import os

import typer

app = typer.Typer(
    name="treesdk",
    help="RL post-training of flow-matching text-to-image models with tree-structured sampling.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_show_locals=False,
)



@app.callback()
def main(
    debug: bool = typer.Option(False, "--debug", help="show the full traceback of every error (same as TREESDK_DEBUG=1)"),
) -> None:
    """RL post-training of flow-matching text-to-image models with tree-structured sampling."""
    from .common import show_library_warnings

    if debug:
        os.environ["TREESDK_DEBUG"] = "1"  # read by treesdk.errors.debug_enabled, in worker processes too
    show_library_warnings()


_COMMAND_MODULES = ("train", "sample", "eval", "export", "bench", "plugins", "nodes", "comfyui", "tiny", "examples", "serve_reward")

for _module_name in _COMMAND_MODULES:
    importlib.import_module(f"{__package__}.{_module_name}").register(app)


if __name__ == "__main__":  # pragma: no cover
    app()
