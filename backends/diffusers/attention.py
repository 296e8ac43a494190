"""Which scaled-dot-product-attention kernels the transformer may use (``attention_kernels``).

PyTorch picks one of four SDPA kernels per call: ``flash``, ``efficient`` (memory-efficient),
``cudnn`` and ``math``. On an H200 with torch 2.11 (cuDNN 9.19) the cuDNN kernel's *backward*
returns NaN for a tiny FLUX transformer and fails outright (``mha_graph.execute ... is_good()``,
then an illegal memory access) for FLUX.1-dev's width, while the forward looks fine: sampling
works and the first training step breaks. SD3.5 trained with it. With cuDNN left out, every FLUX
training step ran with a finite loss (``benchmarks/README.md``, "findings").

So on CUDA the default (``"auto"``) allows every kernel but cuDNN, for sampling and training
alike: a node's velocity must come from the same kernel when it is sampled and when it is
trained, or the importance ratio starts away from 1 by the kernels' rounding differences. On
other devices ``"auto"`` leaves PyTorch's choice alone. ``"all"`` restores PyTorch's choice on
CUDA too; a comma-separated list (``"flash,math"``) allows exactly those kernels.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator, Sequence

import torch

__all__ = ["KERNELS", "attention_kernels", "attention_report", "restricted_attention"]

#: kernel names accepted in ``attention_kernels`` (torch.nn.attention.SDPBackend members)
KERNELS = {"flash": "FLASH_ATTENTION", "efficient": "EFFICIENT_ATTENTION", "cudnn": "CUDNN_ATTENTION", "math": "MATH"}
#: the default on CUDA: every kernel but cuDNN (see the module docstring)
CUDA_DEFAULT = ("flash", "efficient", "math")


def attention_kernels(value: str | Sequence[str] | None, device: torch.device) -> tuple[str, ...] | None:
    """The kernel names to allow, or None for PyTorch's own choice.

    ``value``: ``"auto"`` (or None): every kernel but cuDNN on CUDA, PyTorch's choice elsewhere;
    ``"all"``: PyTorch's choice; else kernel names, comma-separated or a sequence, from
    :data:`KERNELS`."""
    if value is None or value == "auto":
        return CUDA_DEFAULT if device.type == "cuda" else None
    if value == "all":
        return None
    names = [n.strip() for n in value.split(",")] if isinstance(value, str) else [str(n).strip() for n in value]
    names = [n for n in names if n]
    unknown = [n for n in names if n not in KERNELS]
    if unknown or not names:
        raise ValueError(
            f"attention_kernels {value!r}: expected 'auto', 'all' or comma-separated kernel names from "
            f"{sorted(KERNELS)}" + (f"; unknown {unknown}" if unknown else "; got none")
        )
    return tuple(dict.fromkeys(names))


@contextlib.contextmanager
def restricted_attention(kernels: tuple[str, ...] | None) -> Iterator[None]:
    """Inside: scaled-dot-product attention may use only ``kernels`` (None: no restriction). The
    choice is made at the forward call; autograd's backward follows the kernel the forward used."""
    if kernels is None:
        yield
        return
    from torch.nn.attention import SDPBackend, sdpa_kernel

    with sdpa_kernel([getattr(SDPBackend, KERNELS[name]) for name in kernels]):
        yield


def attention_report(kernels: tuple[str, ...] | None) -> dict[str, object]:
    """What SDPA may run, for benchmark reports: PyTorch's global CUDA switches (``enable_*_sdp``)
    and the backend's ``attention_kernels`` restriction (None: none)."""
    b = torch.backends.cuda
    switches = {"flash": b.flash_sdp_enabled(), "efficient": b.mem_efficient_sdp_enabled(), "math": b.math_sdp_enabled()}
    if hasattr(b, "cudnn_sdp_enabled"):
        switches["cudnn"] = b.cudnn_sdp_enabled()
    return {"sdpa_enabled": switches, "attention_kernels": list(kernels) if kernels is not None else None}
