"""Conformance suite for treesdk backends, built-in and third-party alike.

Two ways to run it against your backend:

* from Python (or your own tests)::

      from treesdk.testing import check_backend
      report = check_backend(lambda: MyBackend(...), batch_atol=1e-5)   # raises ConformanceError

* with pytest, against any registered backend name and its options (JSON)::

      TREESDK_BACKEND=my-backend TREESDK_BACKEND_OPTIONS='{"device": "cpu"}' \\
          pytest --pyargs treesdk.testing

  (no ``TREESDK_BACKEND``: the built-in ``digits`` backend).

What is checked (one function each in :mod:`treesdk.testing.checks`): shapes and dtypes of every
contract method; gradients reach the trainable parameters and nothing else; the trainable state
round-trips exactly and a broken one is refused; velocity batch invariance (``batch_atol``); the
adapter on/off (``reference()``) restores the base policy bit for bit; the sampler's NFE equals the
tree formula; and, given the model's own sampler (``reference_sampler``), ODE sampling through
treesdk reproduces it (``parity_atol``). Diffusers families add their own checks (LoRA export loads
in the pipeline with no unmatched key): :mod:`treesdk_backends.diffusers.conformance`.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

from ..interfaces import VelocityModel
from .checks import (
    ConformanceError,
    check_adapter_on_off,
    check_batch_invariance,
    check_gradients,
    check_nfe,
    check_ode_parity,
    check_shapes,
    check_state_roundtrip,
    perturbed,
)

__all__ = [
    "ConformanceError",
    "check_backend",
    "check_adapter_on_off",
    "check_batch_invariance",
    "check_gradients",
    "check_nfe",
    "check_ode_parity",
    "check_shapes",
    "check_state_roundtrip",
    "perturbed",
]


def check_backend(
    backend: VelocityModel | Callable[[], VelocityModel],
    *,
    prompts: Sequence[str] | None = None,
    steps: int = 3,
    batch_atol: float = 1e-5,
    reference_sampler: Callable[[list[str], int, int], Any] | None = None,
    parity_atol: float = 1e-5,
    extra: dict[str, Callable[[VelocityModel], dict[str, Any]]] | None = None,
) -> dict[str, Any]:
    """Run every conformance check on ``backend`` (or ``backend()`` when given a factory).

    Args:
        backend: the backend, or a no-argument factory building a small one.
        prompts: 2-3 prompts the backend accepts; None = the first three of its ``default_prompts()``.
        steps: sampling steps for the grid and parity checks.
        batch_atol: tolerance of the batch-invariance check (max abs difference).
        reference_sampler: ``(prompts, steps, seed) -> latents [B, *latent_shape]``, the model's own
            sampler; None skips the ODE parity check.
        parity_atol: tolerance of the parity check.
        extra: further checks ``name -> check(backend) -> numbers`` (e.g. export loading).

    Returns ``{check name: measured numbers}``; a check the backend does not support (no
    ``reference()``) is reported as ``{"skipped": reason}``. Raises :class:`ConformanceError`
    listing every failed check.
    """
    model = backend() if callable(backend) and not isinstance(backend, VelocityModel) else backend
    chosen = list(prompts) if prompts is not None else list(model.default_prompts()[:3])
    checks: dict[str, Callable[[], dict[str, Any]]] = {
        "shapes": lambda: check_shapes(model, chosen, steps),
        "gradients": lambda: check_gradients(model, chosen),
        "state_roundtrip": lambda: check_state_roundtrip(model),
        "batch_invariance": lambda: check_batch_invariance(model, chosen, batch_atol),
        "adapter_on_off": lambda: check_adapter_on_off(model, chosen),
        "nfe": lambda: check_nfe(model, chosen),
    }
    if reference_sampler is not None:
        checks["ode_parity"] = lambda: check_ode_parity(model, reference_sampler, chosen[:2], steps, parity_atol)
    for name, check in (extra or {}).items():
        checks[name] = lambda check=check: check(model)
    report: dict[str, Any] = {}
    failures: list[str] = []
    for name, run in checks.items():
        try:
            report[name] = run()
        except NotImplementedError as exc:
            report[name] = {"skipped": str(exc)}
        except ConformanceError as exc:
            report[name] = {"failed": str(exc)}
            failures.append(f"{name}: {exc}")
    if failures:
        raise ConformanceError(f"backend {model.name!r} fails {len(failures)} check(s):\n" + "\n".join(failures))
    return report
