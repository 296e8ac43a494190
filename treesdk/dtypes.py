"""The one table of floating-point dtype names treesdk accepts (flags, backend and reward options,
export ``--dtype``), and how to read one.

Names are case-insensitive: ``float32``/``fp32``, ``bfloat16``/``bf16``, ``float16``/``fp16``/``half``,
``float64``/``fp64``. A caller that supports fewer dtypes passes them as ``allowed``.
"""

from __future__ import annotations

from collections.abc import Collection

import torch

__all__ = ["DTYPES", "PRECISIONS", "dtype_bytes", "dtype_names", "parse_dtype", "parse_precision"]

DTYPES: dict[str, torch.dtype] = {
    "float32": torch.float32, "fp32": torch.float32,
    "bfloat16": torch.bfloat16, "bf16": torch.bfloat16,
    "float16": torch.float16, "fp16": torch.float16, "half": torch.float16,
    "float64": torch.float64, "fp64": torch.float64,
}


def dtype_names(allowed: Collection[torch.dtype] | None = None) -> list[str]:
    """The accepted names (of the ``allowed`` dtypes only, when given), sorted."""
    return sorted(name for name, dtype in DTYPES.items() if allowed is None or dtype in allowed)


def parse_dtype(dtype: str | torch.dtype, what: str = "dtype", allowed: Collection[torch.dtype] | None = None) -> torch.dtype:
    """A torch dtype from a name of :data:`DTYPES` (or a torch dtype, passed through).

    ``ValueError`` naming ``what`` (e.g. ``"--dtype"``), the value seen and the accepted names when
    the name is unknown or its dtype is not among ``allowed``.
    """
    found = dtype if isinstance(dtype, torch.dtype) else DTYPES.get(str(dtype).lower())
    if found is None or (allowed is not None and found not in allowed):
        raise ValueError(f"unknown {what} {dtype!r}; expected one of {', '.join(dtype_names(allowed))}")
    return found


def dtype_bytes(dtype: str | torch.dtype) -> int:
    """Bytes per element of a dtype given by name or as a torch dtype."""
    return parse_dtype(dtype).itemsize


#: ``--precision`` values and their dtypes (fp32: no autocast); the other names of these dtypes in
#: the one dtype table (:data:`treesdk.dtypes.DTYPES`: ``bfloat16``, ``float16``, ...) are accepted too
PRECISIONS: dict[str, torch.dtype] = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}


def parse_precision(name: str | None) -> torch.dtype | None:
    """``fp32|bf16|fp16`` (also ``no`` and the dtype names of :mod:`treesdk.dtypes`) -> autocast dtype or None."""
    if name is None or str(name).lower() == "no":
        return None
    try:
        dtype = parse_dtype(str(name), allowed=PRECISIONS.values())
    except ValueError:
        raise ValueError(f"--precision {name!r}: expected one of {', '.join(PRECISIONS)}") from None
    return None if dtype == torch.float32 else dtype
