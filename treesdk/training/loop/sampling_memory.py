"""A run whose sampled latents alone cannot fit in memory is refused before any folder is written.

One iteration keeps every sampled latent of its forest until the update: about
``nfe_sampling_per_rank`` latents (one per velocity row of the plan, :func:`treesdk.plan_run`) of
``prod(latent_shape)`` elements each, twice (the state and the transition mean) in float32. When
that alone exceeds the memory available on the backend's device (``MemAvailable`` of
``/proc/meminfo`` on the CPU, the free memory of a CUDA device), the run could only end killed
for memory (exit 137) or in an allocator error deep inside sampling, after its folder was claimed.
The check is a lower bound on what the run needs: passing it does not promise the run fits.
"""

from __future__ import annotations

import math
import os
from pathlib import Path

import torch

from treesdk.errors import UserError
from treesdk.interfaces import VelocityModel
from treesdk.recipes import Recipe

__all__ = ["SamplingMemoryError", "available_bytes", "check_sampling_memory", "sampled_latent_bytes"]

#: bytes per stored latent element: the state and its transition mean, float32
BYTES_PER_ELEMENT = 2 * 4


class SamplingMemoryError(UserError):
    """The latents one iteration samples cannot fit in the device's memory."""


def available_bytes(device: torch.device) -> int | None:
    """Free memory of ``device`` in bytes (CPU: ``MemAvailable``; CUDA: free device memory); None if unknown."""
    if device.type == "cuda" and torch.cuda.is_available():
        return int(torch.cuda.mem_get_info(device)[0])
    if device.type == "cpu":
        meminfo = Path("/proc/meminfo")
        if meminfo.is_file():
            for line in meminfo.read_text().splitlines():
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
        try:
            return int(os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE"))
        except (ValueError, OSError, AttributeError):
            return None
    return None


def sampled_latent_bytes(backend: VelocityModel, recipe: Recipe, batch: int, world_size: int = 1) -> tuple[int, int, int]:
    """``(bytes, latents, elements per latent)`` one rank keeps for one iteration's forest."""
    import treesdk

    plan = treesdk.plan_run(recipe, None, batch=batch, world_size=world_size, iters=1, seed=0)
    latents = int(plan["nfe_sampling_per_rank"])
    elements = math.prod(int(n) for n in backend.latent_shape)
    return latents * elements * BYTES_PER_ELEMENT, latents, elements


def check_sampling_memory(backend: VelocityModel, recipe: Recipe, batch: int, world_size: int = 1,
                          available: int | None = None) -> None:
    """Raise :class:`SamplingMemoryError` when :func:`sampled_latent_bytes` exceeds the memory
    available on the backend's device (``available`` overrides the measured value)."""
    needed, latents, elements = sampled_latent_bytes(backend, recipe, batch, world_size)
    device = torch.device(getattr(backend, "device", "cpu"))
    free = available if available is not None else available_bytes(device)
    if free is None or needed <= free:
        return
    gib = 1024**3
    raise SamplingMemoryError(
        f"one iteration keeps about {needed / gib:.1f} GiB of sampled latents ({latents} latents of {elements} "
        f"elements, --batch {batch}) but {free / gib:.1f} GiB is available on {device}; lower --batch, "
        f"--resolution, the tree (--k, --d) or its roots")
