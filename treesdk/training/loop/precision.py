"""Mixed precision (``--precision``) and CPU defaults.

Two separate knobs, as in the diffusers/accelerate training scripts:

* the **weights dtype** (``--dtype``, the backend's ``dtype`` option): what the model is stored
  and run in. LoRA adapters are kept in float32 by the diffusers backends whatever it is.
* the **compute precision** (``--precision fp32|bf16|fp16``): with ``bf16``/``fp16`` every
  velocity and decode call runs under ``torch.autocast(device, dtype)``, so matmuls run in low
  precision while the trainable weights, their gradients and the optimiser state stay in the
  weights dtype. With fp32 weights that is "autocast mixed precision with fp32 master weights".
  ``fp16`` has no loss scaling here (the update's backward is not scaled), so prefer ``bf16``;
  ``fp32`` disables autocast.

:class:`Autocast` wraps a backend (any :class:`~treesdk.interfaces.VelocityModel`) and forwards
everything else to it unchanged. :func:`cpu_defaults` picks a thread count and float32 weights
for CPU runs and says so in one line.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from typing import Any

import torch

from treesdk.dtypes import PRECISIONS, parse_dtype, parse_precision  # noqa: F401 - parse_precision re-exported

def default_precision(environ: Mapping[str, str] | None = None) -> str:
    """``--precision`` when not given: accelerate's ``--mixed_precision`` (``ACCELERATE_MIXED_PRECISION``,
    set by ``accelerate launch``) when it is ``bf16``/``fp16``, else ``fp32``."""
    env = os.environ if environ is None else environ
    value = env.get("ACCELERATE_MIXED_PRECISION", "").lower()
    return value if value in ("bf16", "fp16") else "fp32"


def backend_device(backend: Any) -> torch.device:
    """The device a backend computes on: its ``device`` attribute, or that of its first trainable parameter."""
    device = getattr(backend, "device", None) or getattr(backend, "_device", None)
    if device is not None:
        return torch.device(device)
    params = backend.trainable_parameters()
    return params[0].device if params else torch.device("cpu")


class Autocast:
    """``backend`` whose ``velocity`` and ``decode`` run under ``torch.autocast(device, dtype)``;
    every other attribute is the backend's own (``Autocast(b).name == b.name``)."""

    def __init__(self, backend: Any, dtype: torch.dtype) -> None:
        self.__dict__["_backend"] = backend
        self.__dict__["_dtype"] = dtype
        self.__dict__["_device_type"] = backend_device(backend).type

    @property
    def wrapped(self) -> Any:
        return self._backend

    def __getattr__(self, name: str) -> Any:
        return getattr(self._backend, name)

    def __setattr__(self, name: str, value: Any) -> None:
        setattr(self._backend, name, value)

    def velocity(self, *args: Any, **kwargs: Any) -> torch.Tensor:
        with torch.autocast(self._device_type, dtype=self._dtype):
            return self._backend.velocity(*args, **kwargs)

    def decode(self, *args: Any, **kwargs: Any) -> torch.Tensor:
        with torch.autocast(self._device_type, dtype=self._dtype):
            return self._backend.decode(*args, **kwargs)


def with_precision(backend: Any, precision: str | None) -> Any:
    """``backend`` itself for ``fp32``/None, else wrapped in :class:`Autocast`."""
    dtype = parse_precision(precision)
    return backend if dtype is None else Autocast(backend, dtype)


def cpu_threads(local_world_size: int = 1, environ: Mapping[str, str] | None = None, load: float | None = None) -> int | None:
    """Intra-op threads for one CPU process: None when ``OMP_NUM_THREADS`` is set (the user's
    choice), else the CPUs this process may use that other processes do not keep busy, divided by
    the processes on the node (at least 1).

    ``load`` is the number of CPUs other processes keep busy (default: the 1-minute load average,
    read before this run starts working). More threads than free CPUs do not add speed: torch's
    threads wait on each other's time slices, so an oversubscribed machine runs slower with more
    threads (``docs/performance.md``, "CPU threads").
    """
    env = os.environ if environ is None else environ
    if env.get("OMP_NUM_THREADS"):
        return None
    available = _available_cpus()
    busy = _load_average() if load is None else float(load)
    free = max(1, available - int(round(max(0.0, busy))))
    return max(1, free // max(1, local_world_size))


def _available_cpus() -> int:
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # pragma: no cover - not Linux
        return os.cpu_count() or 1


def _load_average() -> float:
    """The 1-minute load average (0 where the OS has none)."""
    try:
        return os.getloadavg()[0]
    except (AttributeError, OSError):  # pragma: no cover - not Unix
        return 0.0


def cpu_defaults(device: str | None, options: dict[str, Any], accepted: set[str] | None,
                 local_world_size: int = 1) -> str | None:
    """On a CPU run: set torch's thread count (see :func:`cpu_threads`) and, when the backend takes
    a ``dtype`` and none was given, float32 weights (bf16 matmuls are slow on most CPUs). Changes
    ``options`` in place; returns the one-line note to print, or None off the CPU."""
    on_cpu = (device or "").startswith("cpu") or (device is None and not torch.cuda.is_available())
    if not on_cpu:
        return None
    notes = []
    load = _load_average()  # read once: the thread count and the note agree
    threads = cpu_threads(local_world_size, load=load)
    if threads is not None:
        torch.set_num_threads(threads)
        notes.append(f"{threads} thread{'s' if threads != 1 else ''} of {_available_cpus()} CPUs, load {load:.1f} "
                     "(set OMP_NUM_THREADS to change)")
    if "dtype" not in options and (accepted is None or "dtype" in accepted):
        options["dtype"] = "float32"
        notes.append("float32 weights (--dtype to change)")
    if not notes:
        return None
    return "cpu: " + ", ".join(notes) + "; a small --resolution and --max-sequence-length keep CPU runs short"
