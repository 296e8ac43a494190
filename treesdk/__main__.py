"""``python -m treesdk ...`` (and ``torchrun -m treesdk train ...``): the ``treesdk`` command."""

from __future__ import annotations


def main() -> None:
    # the command line lives in treesdk_cli (cli/); imported here only, never by the library
    from treesdk_cli.entry import main as entry

    entry()


if __name__ == "__main__":
    main()
