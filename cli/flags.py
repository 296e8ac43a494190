"""First-class flags that become backend options, and the check of ``--backend-opt``/``--reward-opt`` keys.

``--lora-rank 32`` is ``--backend-opt lora_rank=32``; ``--guidance 4.5`` (alias ``--cfg``) becomes
whichever of ``guidance`` / ``guidance_scale`` the backend takes. A flag the backend has no option
for, and an option key it does not take, are one-line errors listing the valid keys, closest first.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Any

from treesdk.suggest import closest_first

#: flag (Python name) -> backend option names tried in this order
FIRST_CLASS: dict[str, tuple[str, ...]] = {
    "lora_rank": ("lora_rank",),
    "lora_alpha": ("lora_alpha",),
    "lora_targets": ("lora_targets",),
    "gradient_checkpointing": ("gradient_checkpointing",),
    "guidance": ("guidance", "guidance_scale"),
    "max_sequence_length": ("max_sequence_length",),
    "dtype": ("dtype",),
}


def _flag(name: str) -> str:
    return "--" + name.replace("_", "-")


def apply_first_class(options: dict[str, Any], valid: Iterable[str] | None, backend: str, **values: Any) -> dict[str, Any]:
    """Put each given (not None) first-class flag into ``options`` under the option name the
    backend takes (``valid``; None: the backend takes any keyword). A flag the backend has no option
    for is a one-line error; an explicit ``--backend-opt`` of the same key wins over the flag."""
    accepted = set(valid) if valid is not None else None
    for flag, value in values.items():
        if value is None:
            continue
        names = FIRST_CLASS[flag]
        key = names[0] if accepted is None else next((n for n in names if n in accepted), None)
        if key is None:
            raise ValueError(f"{_flag(flag)}: backend {backend!r} has no {' / '.join(names)} option; its options are: "
                             f"{', '.join(sorted(accepted or ()))}")
        if flag == "lora_targets" and isinstance(value, (list, tuple)) and len(value) == 1:
            value = [t.strip() for t in str(value[0]).split(",") if t.strip()]
        options.setdefault(key, value)
    return options


def check_option_keys(flag: str, owner: str, options: Mapping[str, Any], valid: Iterable[str] | None) -> None:
    """Every key of ``options`` must be one of ``valid`` (None: not checkable, accept all):
    ``--backend-opt lora_rnak=...: backend 'flux' has no option 'lora_rnak'; its options are (closest first): lora_rank, ...``."""
    if valid is None:
        return
    allowed = set(valid)
    for key in options:
        if key not in allowed:
            ordered = closest_first(key, allowed)
            raise ValueError(f"{flag} {key}=...: {owner} has no option {key!r}; its options are (closest first): "
                             f"{', '.join(ordered)}")
