"""The generic diffusers flow-matching backend and its family adapters.

* :class:`DiffusersFlowBackend` (``--backend diffusers --model PATH``): any pipeline whose family is
  registered; the family is read from ``model_index.json``.
* :class:`FamilyAdapter`: what one family says about itself (see :mod:`.adapter`).
* :mod:`.families`: the registry (entry-point group ``treesdk.diffusers_families``) and the adapters.
"""

from __future__ import annotations

from .adapter import FamilyAdapter, calculate_shift
from .backend import DiffusersFlowBackend
from .families import adapter_class, detect_family, family_names

__all__ = ["DiffusersFlowBackend", "FamilyAdapter", "adapter_class", "calculate_shift", "detect_family", "family_names"]
