"""Checks of torch device strings (``cpu``, ``cuda``, ``cuda:1``, ``mps``) before anything runs."""

from __future__ import annotations

from treesdk.errors import UserError

__all__ = ["check_device_name"]

COMMON = "cpu, cuda, cuda:N, mps, xpu"


def check_device_name(value: str, what: str | None = "--device") -> str:
    """``value`` if torch can parse it as a device, else a :class:`UserError` naming ``what``, the
    value seen and the usual spellings. Availability (is there a CUDA device?) is not checked here:
    a run folder trained on a GPU is still readable on a CPU-only machine."""
    import torch

    try:
        torch.device(value)
    except (RuntimeError, TypeError, ValueError):
        prefix = f"{what}: " if what else ""
        raise UserError(f"{prefix}{value!r} is not a torch device; use one of {COMMON}") from None
    return value
