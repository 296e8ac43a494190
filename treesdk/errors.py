"""Errors a user's input or environment causes, as opposed to bugs in treesdk.

The command line prints these as one line and exits 1 (``treesdk --debug`` or ``TREESDK_DEBUG=1``
shows the traceback instead); any other exception is a programming error and keeps its traceback.
Each class also derives from the built-in type callers caught before it existed (``ValueError``,
``KeyError``, ``FileNotFoundError``), so ``except ValueError`` code keeps working.
"""

from __future__ import annotations

import os
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from pydantic import ValidationError


class UserError(ValueError):
    """Bad input (flag, file, field or value): the message names it, the value seen and what is right."""


class StateDictMismatchError(UserError, KeyError):
    """Weights whose names do not match the model they are loaded into (missing / unexpected keys)."""

    __str__ = BaseException.__str__  # KeyError would quote the message


class CheckpointError(UserError):
    """A checkpoint that cannot be used: truncated, corrupt, altered, or holding non-finite weights."""


class NonFiniteWeightsError(UserError):
    """Weights holding NaN or infinity (a diverged run): exporting or sampling them is refused."""


class RecipeError(UserError):
    """An invalid recipe; the message lists every bad field with its location (``errors``: pydantic's list)."""

    def __init__(self, source: str, error: ValidationError) -> None:
        from treesdk.validation import validation_message

        super().__init__(validation_message(f"invalid recipe {source!r}:", error, whole="(recipe)"))
        self.errors = error.errors()


class DistributedError(RuntimeError):
    """A collective failed: another rank died, hung, or the process group could not be formed."""


class NonFiniteLossError(RuntimeError):
    """A loss term produced NaN/inf; no optimiser step was taken."""


def debug_enabled() -> bool:
    """True when ``TREESDK_DEBUG`` is set to a true value (``treesdk --debug`` sets it)."""
    return os.environ.get("TREESDK_DEBUG", "").strip().lower() not in ("", "0", "false", "no", "off")
