"""The ``treesdk`` console script: imports the command line under a Ctrl-C guard.

Importing the commands (and torch) takes seconds; a Ctrl-C in that time would print a
``KeyboardInterrupt`` traceback from the import machinery. Here it is ``interrupted`` and exit
130, as it is once a command runs (:func:`treesdk_cli.common.clean_errors`).
"""

from __future__ import annotations

import os
import sys


def _interrupted() -> None:
    sys.stderr.write("interrupted\n")
    raise SystemExit(130)


def main() -> None:
    """Run ``treesdk``; a Ctrl-C while it starts ends with exit 130 and no traceback."""
    try:
        from treesdk_cli.main import app
    except KeyboardInterrupt:
        if os.environ.get("TREESDK_DEBUG") or "--debug" in sys.argv[1:2]:
            raise
        _interrupted()
    try:
        app(prog_name="treesdk")
    except KeyboardInterrupt:  # outside a command's clean_errors (option parsing, the callback)
        if os.environ.get("TREESDK_DEBUG"):
            raise
        _interrupted()


if __name__ == "__main__":  # pragma: no cover
    main()
